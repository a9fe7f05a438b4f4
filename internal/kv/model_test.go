package kv

import (
	"flag"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

var modelSeed = flag.Uint64("kv.seed", 0, "seed for TestModel (0 = derive from the clock and print it)")

// model is the simplest possible implementation of the revision rules: a
// map and a counter.
type model struct {
	rev  int64
	keys map[string]*mvccpb.KeyValue
}

func (m *model) write(key, value string) {
	old := m.keys[key]
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: bytesOrNil(value), CreateRevision: m.rev + 1, ModRevision: m.rev + 1, Version: 1}
	if old != nil {
		kv.CreateRevision = old.CreateRevision
		kv.Version = old.Version + 1
	}
	m.keys[key] = kv
}

func (m *model) inRange(key, start, end string) bool {
	switch end {
	case "":
		return key == start
	case "\x00":
		return key >= start
	}
	return key >= start && key < end
}

func (m *model) deleteRange(start, end string) int {
	n := 0
	for k := range m.keys {
		if m.inRange(k, start, end) {
			delete(m.keys, k)
			n++
		}
	}
	return n
}

func (m *model) get(start, end string, limit int64, keysOnly, countOnly bool) *pb.RangeResponse {
	var names []string
	for k := range m.keys {
		if m.inRange(k, start, end) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: m.rev}, Count: int64(len(names))}
	if countOnly {
		return resp
	}
	if limit > 0 && int64(len(names)) > limit {
		names, resp.More = names[:limit], true
	}
	for _, k := range names {
		kv := *m.keys[k]
		if keysOnly {
			kv.Value = nil
		}
		resp.Kvs = append(resp.Kvs, &kv)
	}
	return resp
}

// TestModel runs random writes against the store and the model and
// compares random reads after every step. A failure prints the seed;
// replay it with -kv.seed.
func TestModel(t *testing.T) {
	seed := *modelSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay: go test ./internal/kv -run TestModel -kv.seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	h := newHarness(t)
	m := &model{rev: 1, keys: map[string]*mvccpb.KeyValue{}}
	randEnd := func() string {
		switch rng.IntN(4) {
		case 0:
			return ""
		case 1:
			return "\x00"
		default:
			return randomKey(rng)
		}
	}
	steps := 20000
	if testing.Short() {
		steps = 2000
	}
	for step := 0; step < steps; step++ {
		k := randomKey(rng)
		v := string(randomValue(rng))
		switch rng.IntN(5) {
		case 0, 1:
			h.put(k, v)
			m.write(k, v)
			m.rev++
		case 2:
			end := randEnd()
			resp := h.del(k, end)
			if n := m.deleteRange(k, end); n > 0 {
				m.rev++
			}
			if resp.Header.Revision != m.rev {
				t.Fatalf("seed %d step %d: delete revision %d, model %d", seed, step, resp.Header.Revision, m.rev)
			}
		case 3:
			h.must(&Command{Append: &AppendRequest{Key: []byte(k), Value: []byte(v)}})
			old := ""
			if kv := m.keys[k]; kv != nil {
				old = string(kv.Value)
			}
			m.write(k, old+v)
			m.rev++
		case 4:
			// Compare-and-swap on mod_revision, as etcd's robustness
			// traffic does: succeed -> put k, fail -> delete k2.
			var expect int64
			if kv := m.keys[k]; kv != nil && rng.IntN(2) == 0 {
				expect = kv.ModRevision
			} else {
				expect = int64(rng.IntN(int(m.rev) + 1))
			}
			k2 := randomKey(rng)
			r := h.must(&Command{Txn: &pb.TxnRequest{
				Compare: []*pb.Compare{cmpMod(k, eq, expect)},
				Success: []*pb.RequestOp{opPut(k, v)},
				Failure: []*pb.RequestOp{opDel(k2, "")},
			}})
			var mod int64
			if kv := m.keys[k]; kv != nil {
				mod = kv.ModRevision
			}
			if want := mod == expect; r.Txn.Succeeded != want {
				t.Fatalf("seed %d step %d: txn succeeded=%v, model %v", seed, step, r.Txn.Succeeded, want)
			}
			if r.Txn.Succeeded {
				m.write(k, v)
				m.rev++
			} else if m.deleteRange(k2, "") > 0 {
				m.rev++
			}
		}
		for q := 0; q < 3; q++ {
			start, end := randomKey(rng), randEnd()
			if rng.IntN(5) == 0 {
				start, end = "\x00", "\x00"
			}
			limit := int64(rng.IntN(5))
			keysOnly, countOnly := rng.IntN(4) == 0, rng.IntN(6) == 0
			got, err := h.s.Range(&pb.RangeRequest{Key: []byte(start), RangeEnd: bytesOrNil(end), Limit: limit, KeysOnly: keysOnly, CountOnly: countOnly})
			if err != nil {
				t.Fatalf("seed %d step %d: range: %v", seed, step, err)
			}
			sameMsg(t, "range", got, m.get(start, end, limit, keysOnly, countOnly))
			if t.Failed() {
				t.Fatalf("seed %d step %d: range [%q, %q) limit %d differs from the model", seed, step, start, end, limit)
			}
		}
	}
	if h.s.Revision() != m.rev || h.s.Stats().Keys != len(m.keys) {
		t.Fatalf("seed %d: revision %d keys %d, model %d %d", seed, h.s.Revision(), h.s.Stats().Keys, m.rev, len(m.keys))
	}
}
