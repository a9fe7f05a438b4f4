package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/cairn-db/cairn/client"
	"github.com/cairn-db/cairn/internal/chaos"
)

// runRegisterClient is one client of the porcupine-checked workload: until
// ctx ends it picks a key and an operation (40% get, 20% put, appendPct%
// append, the rest compare-and-swap expecting what a recent serializable
// read saw, so some succeed) and records every call with its outcome.
func runRegisterClient(ctx context.Context, rng *rand.Rand, cl *client.Client, id int, keys []string, appendPct int, rec *chaos.Recorder) {
	for n := 0; ctx.Err() == nil; n++ {
		in := chaos.Input{Key: keys[rng.IntN(len(keys))]}
		token := fmt.Sprintf("c%d.%d;", id, n)
		switch p := rng.IntN(100); {
		case p < 40:
			in.Op = "get"
		case p < 60:
			in.Op, in.Value = "put", token
		case p < 60+appendPct:
			in.Op, in.Value = "append", token
		default:
			in.Op, in.Value = "cas", token
			gctx, gcancel := context.WithTimeout(ctx, time.Second)
			if r, err := cl.Get(gctx, in.Key, client.WithSerializable()); err == nil && len(r.KVs) == 1 {
				in.Expect = r.KVs[0].Value
			}
			gcancel()
		}
		opCtx, opCancel := context.WithTimeout(context.Background(), 4*time.Second)
		call := rec.Now()
		out, outcome, err := chaos.Do(opCtx, cl, in)
		opCancel()
		rec.Add(id, in, call, out, outcome, err)
	}
}
