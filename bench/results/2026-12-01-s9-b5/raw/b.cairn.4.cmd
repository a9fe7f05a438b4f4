benchmark --precise --endpoints 127.0.0.1:24379,127.0.0.1:24389,127.0.0.1:24399 --clients 100 --conns 10 put --total 100000 --sequential-keys --key-space-size 100000 --key-size 8 --val-size 256
