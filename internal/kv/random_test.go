package kv

import (
	"fmt"
	"math/rand/v2"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// randomKey draws from a small key space so that operations collide.
func randomKey(rng *rand.Rand) string {
	return fmt.Sprintf("k%02d", rng.IntN(30))
}

func randomValue(rng *rand.Rand) []byte {
	return []byte(fmt.Sprintf("v%d", rng.IntN(1000)))
}

// randomCommand returns a random valid-or-not command of any kind, with a
// session part some of the time.
func randomCommand(rng *rand.Rand, now int64) *Command {
	c := &Command{Time: now}
	if rng.IntN(3) == 0 {
		c.ClientID = uint64(1 + rng.IntN(5))
		c.Seq = uint64(1 + rng.IntN(40))
	}
	switch rng.IntN(6) {
	case 0, 1:
		c.Put = &pb.PutRequest{Key: []byte(randomKey(rng)), Value: randomValue(rng), PrevKv: rng.IntN(2) == 0, IgnoreValue: rng.IntN(10) == 0}
		if c.Put.IgnoreValue {
			c.Put.Value = nil
		}
	case 2:
		k := randomKey(rng)
		c.DeleteRange = &pb.DeleteRangeRequest{Key: []byte(k), PrevKv: rng.IntN(2) == 0}
		if rng.IntN(3) == 0 {
			c.DeleteRange.RangeEnd = []byte(randomKey(rng))
		}
	case 3:
		c.Append = &AppendRequest{Key: []byte(randomKey(rng)), Value: randomValue(rng)}
	default:
		k := randomKey(rng)
		c.Txn = &pb.TxnRequest{
			Compare: []*pb.Compare{cmpVersion(k, pb.Compare_CompareResult(rng.IntN(4)), int64(rng.IntN(3)))},
			Success: []*pb.RequestOp{opPut(k, string(randomValue(rng))), opGet(randomKey(rng), "")},
			Failure: []*pb.RequestOp{opDel(randomKey(rng), randomKey(rng)), opGet("k", "l")},
		}
	}
	return c
}
