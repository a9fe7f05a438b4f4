benchmark --precise --endpoints 127.0.0.1:24379,127.0.0.1:24389,127.0.0.1:24399 --clients 100 --conns 10 txn-put --total 50000 --key-space-size 50000 --key-size 8 --val-size 256
