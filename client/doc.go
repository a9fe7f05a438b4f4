// Package client is Cairn's Go client.
//
// It talks to any member of a cluster over the etcd v3 gRPC API plus
// Cairn's extensions, rotates through the endpoints on failures, retries
// only errors that are safe to retry, and by default attaches an
// exactly-once session to every write: a retried write carries the same
// client ID and sequence number, so the cluster applies it once and
// returns the original answer. When it gives up after a write may have
// happened, it returns an error matching ErrOutcomeUnknown.
//
//	c, err := client.New(client.Config{Endpoints: []string{"127.0.0.1:2379"}})
//	defer c.Close()
//	_, err = c.Put(ctx, "greeting", "hello")
//	res, err := c.Get(ctx, "greeting")
package client
