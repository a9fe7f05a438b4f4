benchmark --precise --endpoints 127.0.0.1:23379,127.0.0.1:23389,127.0.0.1:23399 --clients 1 --conns 1 put --total 10000 --sequential-keys --key-space-size 10000 --key-size 8 --val-size 256
