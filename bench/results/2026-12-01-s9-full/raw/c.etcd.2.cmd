benchmark --precise --endpoints 127.0.0.1:23379,127.0.0.1:23389,127.0.0.1:23399 --clients 100 --conns 10 range benchrangekey --consistency=l --total 100000
