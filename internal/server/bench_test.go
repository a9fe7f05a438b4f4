package server

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"
)

// BenchmarkSession is the session lookup every write makes, with the
// metadata gRPC attaches to a request from etcd's client (no session) and
// from Cairn's (a session).
func BenchmarkSession(b *testing.B) {
	base := metadata.Pairs(":authority", "127.0.0.1:2379", "content-type", "application/grpc",
		"user-agent", "grpc-go/1.59.0", "te", "trailers")
	withSession := metadata.Join(base, metadata.Pairs(mdClientID, "12345", mdSeq, "678"))
	for _, c := range []struct {
		name string
		md   metadata.MD
	}{{"etcd-client", base}, {"cairn-session", withSession}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := metadata.NewIncomingContext(context.Background(), c.md)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := session(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
