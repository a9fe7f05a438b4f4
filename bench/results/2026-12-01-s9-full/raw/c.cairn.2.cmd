benchmark --precise --endpoints 127.0.0.1:24379,127.0.0.1:24389,127.0.0.1:24399 --clients 100 --conns 10 range benchrangekey --consistency=l --total 100000
