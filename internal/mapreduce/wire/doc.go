// Package wire defines the MapReduce control protocol between
// coordinator, workers and clients: JSON request and reply bodies over
// HTTP, the paths they are posted to, and a small client that turns non-2xx
// replies into errors carrying the server's message. The shuffle is not
// here: reducers fetch map output with plain HTTP GETs of ShufflePath.
package wire
