package shardkv

import (
	"errors"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-db/cairn/internal/kv"
)

// TestApplyOnServedShard: every kind of write on a served shard applies.
func TestApplyOnServedShard(t *testing.T) {
	const n = 4
	a := newReplica(t, 1, n)
	a.mustReconfigure(mkConfig(1, gids(1, 1, 2, 2)))
	k0, k0b, k1 := keyIn(n, 0, 0), keyIn(n, 0, 1), keyIn(n, 1, 0)

	if r := a.put(k0, "p"); r.Err != nil || r.Put == nil {
		t.Fatalf("put: %+v", r)
	}
	if r := a.appendKV(5, 1, k1, "ab"); r.Err != nil || r.Append == nil || r.Append.Length != 2 {
		t.Fatalf("append: %+v", r)
	}
	txn := &pb.TxnRequest{
		Compare: []*pb.Compare{cmpExists(k0)},
		Success: []*pb.RequestOp{opPut(k0b, "t"), opGet(k0, ""), opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut(k0, "nested")}})},
		Failure: []*pb.RequestOp{opDel(k0, "")},
	}
	r := a.kv(&kv.Command{Txn: txn})
	if r.Err != nil || r.Txn == nil || !r.Txn.Succeeded {
		t.Fatalf("txn: %+v", r)
	}
	if v, _ := a.get(k0b); v != "t" {
		t.Fatalf("%s = %q after txn", k0b, v)
	}
	if v, _ := a.get(k0); v != "nested" {
		t.Fatalf("%s = %q after txn", k0, v)
	}
	r = a.kv(&kv.Command{DeleteRange: &pb.DeleteRangeRequest{Key: []byte(k0)}})
	if r.Err != nil || r.DeleteRange.Deleted != 1 {
		t.Fatalf("point delete: %+v", r)
	}
	if _, ok := a.get(k0); ok {
		t.Fatal("key survived its delete")
	}
	if got := a.g.KeysPerShard(); !slices.Equal(got, []int{1, 1, 0, 0}) {
		t.Fatalf("KeysPerShard %v", got)
	}
}

// TestApplyOnUnservedShard: writes on a shard the group does not serve
// (not owned, pulling, handing off) are refused with ErrWrongGroup and
// change nothing: not the data, not the revision, not the session table.
func TestApplyOnUnservedShard(t *testing.T) {
	const n = 4
	a, b := newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1, 2, 2))
	c2 := mkConfig(2, gids(2, 1, 1, 2)) // shard 0: 1 -> 2, shard 2: 2 -> 1
	a.mustReconfigure(c1)
	b.mustReconfigure(c1)
	k0, k2, k3 := keyIn(n, 0, 0), keyIn(n, 2, 0), keyIn(n, 3, 0)
	a.mustPut(k0, "a0")
	b.mustPut(k2, "b2")

	refused := func(r *replica, what string, c *kv.Command) {
		t.Helper()
		rev, stats, keys, fp := r.g.Revision(), r.g.Stats(), r.g.KeysPerShard(), r.fingerprint()
		res := r.kv(c)
		if !errors.Is(res.Err, ErrWrongGroup) {
			t.Fatalf("%s on group %d: err %v, want ErrWrongGroup", what, r.g.GID(), res.Err)
		}
		if res.Put != nil || res.Append != nil || res.Txn != nil || res.DeleteRange != nil {
			t.Fatalf("%s: refused result carries a response: %+v", what, res)
		}
		if r.g.Revision() != rev || r.g.Stats() != stats || !slices.Equal(r.g.KeysPerShard(), keys) {
			t.Fatalf("%s changed the store: rev %d->%d stats %+v->%+v", what, rev, r.g.Revision(), stats, r.g.Stats())
		}
		if r.g.AppliedIndex() != r.idx {
			t.Fatalf("%s: applied index %d, want %d", what, r.g.AppliedIndex(), r.idx)
		}
		if got := r.fingerprint(); got != fp {
			t.Fatalf("%s changed the group:\n%s\n%s", what, fp, got)
		}
	}
	writes := func(key string, client, seq uint64) map[string]*kv.Command {
		return map[string]*kv.Command{
			"put":          {Put: &pb.PutRequest{Key: []byte(key), Value: []byte("x")}},
			"append":       {ClientID: client, Seq: seq, Append: &kv.AppendRequest{Key: []byte(key), Value: []byte("x")}},
			"point delete": {DeleteRange: &pb.DeleteRangeRequest{Key: []byte(key)}},
			"txn":          {Txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut(key, "x")}}},
			"txn compare":  {Txn: &pb.TxnRequest{Compare: []*pb.Compare{cmpExists(key)}}},
			"txn get":      {Txn: &pb.TxnRequest{Success: []*pb.RequestOp{opGet(key, "")}}},
			"nested txn":   {Txn: &pb.TxnRequest{Failure: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel(key, "")}})}}},
		}
	}
	// Not owned.
	for what, c := range writes(k2, 7, 1) {
		refused(a, "not-owned "+what, c)
	}
	a.mustReconfigure(c2)
	b.mustReconfigure(c2)
	a.wantStates(HandingOff, Serving, Pulling, NotOwned)
	// Handing off (the data is still here, hidden), pulling, not owned.
	for _, key := range []string{k0, k2, k3} {
		for what, c := range writes(key, 7, 1) {
			refused(a, what+" "+key, c)
		}
	}
	// b handed shard 2 off: its copy is hidden.
	_, err := b.g.Range(&pb.RangeRequest{Key: []byte(k2)})
	wantErr(t, "read of handed-off key", err, ErrWrongGroup)
	if got := b.all(); len(got) != 0 {
		t.Fatalf("handed-off keys visible: %v", got)
	}

	// The refused session command applies once the shard arrives: the
	// refusal did not record client 7's Seq 1.
	a.install(2, 2, b.export(2, 2))
	a.wantStates(HandingOff, Serving, GCPending, NotOwned)
	res := a.appendKV(7, 1, k2, "x")
	if res.Err != nil || res.Append.Length != int64(len("b2x")) {
		t.Fatalf("append after install: %+v", res)
	}
	rev := a.g.Revision()
	again := a.appendKV(7, 1, k2, "x")
	if again.Err != nil || again.Append.Revision != res.Append.Revision || a.g.Revision() != rev {
		t.Fatalf("retry: %+v (revision %d -> %d)", again, rev, a.g.Revision())
	}
	if v, _ := a.get(k2); v != "b2x" {
		t.Fatalf("%s = %q, want b2x", k2, v)
	}
}

// TestCrossShardRefused: a transaction spanning shards, or using a range,
// is refused with ErrCrossShard even when the group serves every shard.
func TestCrossShardRefused(t *testing.T) {
	const n = 4
	a := newReplica(t, 1, n)
	a.mustReconfigure(mkConfig(1, gids(1, 1, 1, 1)))
	k0, k0b, k1 := keyIn(n, 0, 0), keyIn(n, 0, 1), keyIn(n, 1, 0)
	a.mustPut(k0, "v")
	cases := map[string]*pb.TxnRequest{
		"compare and put":  {Compare: []*pb.Compare{cmpExists(k0)}, Success: []*pb.RequestOp{opPut(k1, "x")}},
		"two puts":         {Success: []*pb.RequestOp{opPut(k0, "x"), opPut(k1, "x")}},
		"success/failure":  {Success: []*pb.RequestOp{opPut(k0, "x")}, Failure: []*pb.RequestOp{opPut(k1, "x")}},
		"nested":           {Success: []*pb.RequestOp{opPut(k0, "x"), opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opDel(k1, "")}})}},
		"range op":         {Success: []*pb.RequestOp{opGet(k0, k0+"\x00")}},
		"range delete op":  {Success: []*pb.RequestOp{opDel(k0, "\x00")}},
		"ranged compare":   {Compare: []*pb.Compare{{Key: []byte(k0), RangeEnd: []byte(k0b), Target: pb.Compare_VERSION, TargetUnion: &pb.Compare_Version{}}}},
		"nested range get": {Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opGet(k0, k0b)}})}},
	}
	for name, txn := range cases {
		rev, keys := a.g.Revision(), a.g.KeysPerShard()
		res := a.kv(&kv.Command{ClientID: 9, Seq: 1, Txn: txn})
		if !errors.Is(res.Err, ErrCrossShard) {
			t.Fatalf("%s: err %v, want ErrCrossShard", name, res.Err)
		}
		if a.g.Revision() != rev || !slices.Equal(keys, a.g.KeysPerShard()) {
			t.Fatalf("%s changed the store", name)
		}
	}
	// The session was never recorded: Seq 1 still applies.
	if res := a.appendKV(9, 1, k1, "z"); res.Err != nil || res.Append.Length != 1 {
		t.Fatalf("append after refusals: %+v", res)
	}
	if v, _ := a.get(k0); v != "v" {
		t.Fatalf("%s = %q", k0, v)
	}
}

// TestRangedDeleteOnlyServed: a ranged DeleteRange deletes only the keys of
// served shards; a handed-off shard's frozen data is untouched and still
// exported intact.
func TestRangedDeleteOnlyServed(t *testing.T) {
	const n = 4
	a, b := newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1, 1, 1), 2)
	c2 := mkConfig(2, gids(1, 1, 2, 2))
	a.mustReconfigure(c1)
	b.mustReconfigure(c1)
	for sh := range n {
		for i := range 3 {
			a.mustPut(keyIn(n, sh, i), "v")
		}
	}
	a.mustReconfigure(c2)
	b.mustReconfigure(c2)
	a.wantStates(Serving, Serving, HandingOff, HandingOff)
	rev := a.g.Revision()
	res := a.kv(&kv.Command{DeleteRange: &pb.DeleteRangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, PrevKv: true}})
	if res.Err != nil || res.DeleteRange.Deleted != 6 || len(res.DeleteRange.PrevKvs) != 6 {
		t.Fatalf("ranged delete: %+v", res)
	}
	for _, kv := range res.DeleteRange.PrevKvs {
		if sh := a.g.ShardOf(kv.Key); sh != 0 && sh != 1 {
			t.Fatalf("deleted %q of shard %d", kv.Key, sh)
		}
	}
	if a.g.Revision() != rev+1 {
		t.Fatalf("revision %d, want %d", a.g.Revision(), rev+1)
	}
	if got := a.g.KeysPerShard(); !slices.Equal(got, []int{0, 0, 3, 3}) {
		t.Fatalf("KeysPerShard %v, want [0 0 3 3]", got)
	}
	// A ranged delete over only hidden keys deletes nothing and, like
	// etcd's empty delete, spends no revision.
	k2 := keyIn(n, 2, 0)
	res = a.kv(&kv.Command{DeleteRange: &pb.DeleteRangeRequest{Key: []byte(k2), RangeEnd: []byte(k2 + "\x00")}})
	if res.Err != nil || res.DeleteRange.Deleted != 0 {
		t.Fatalf("ranged delete of hidden key: %+v", res)
	}
	for _, sh := range []int{2, 3} {
		b.install(2, sh, a.export(2, sh))
	}
	for _, sh := range []int{2, 3} {
		for i := range 3 {
			if v, ok := b.get(keyIn(n, sh, i)); !ok || v != "v" {
				t.Fatalf("installed %s = %q, %v", keyIn(n, sh, i), v, ok)
			}
		}
	}
}

func TestCommandShard(t *testing.T) {
	const n = 8
	k := func(sh, i int) []byte { return []byte(keyIn(n, sh, i)) }
	ks := func(sh, i int) string { return keyIn(n, sh, i) }
	cases := []struct {
		name string
		cmd  *kv.Command
		want int
		err  error
	}{
		{"put", &kv.Command{Put: &pb.PutRequest{Key: k(3, 0)}}, 3, nil},
		{"append", &kv.Command{Append: &kv.AppendRequest{Key: k(5, 0)}}, 5, nil},
		{"point delete", &kv.Command{DeleteRange: &pb.DeleteRangeRequest{Key: k(7, 0)}}, 7, nil},
		{"ranged delete", &kv.Command{DeleteRange: &pb.DeleteRangeRequest{Key: k(7, 0), RangeEnd: []byte{0}}}, -1, nil},
		{"empty command", &kv.Command{}, -1, nil},
		{"empty txn", &kv.Command{Txn: &pb.TxnRequest{}}, -1, nil},
		{"txn one shard", &kv.Command{Txn: &pb.TxnRequest{Compare: []*pb.Compare{cmpExists(ks(2, 0))},
			Success: []*pb.RequestOp{opPut(ks(2, 1), ""), opDel(ks(2, 2), "")}, Failure: []*pb.RequestOp{opGet(ks(2, 0), "")}}}, 2, nil},
		{"txn nested one shard", &kv.Command{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut(ks(4, 0), "")}})}}}, 4, nil},
		{"txn two shards", &kv.Command{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut(ks(1, 0), ""), opPut(ks(2, 0), "")}}}, -1, ErrCrossShard},
		{"txn nested two shards", &kv.Command{Txn: &pb.TxnRequest{Compare: []*pb.Compare{cmpExists(ks(1, 0))},
			Failure: []*pb.RequestOp{opTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpExists(ks(6, 0))}})}}}, -1, ErrCrossShard},
		{"txn range", &kv.Command{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{opGet(ks(1, 0), ks(1, 0)+"z")}}}, -1, ErrCrossShard},
	}
	for _, c := range cases {
		got, err := CommandShard(c.cmd, n)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: err %v, want %v", c.name, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: CommandShard = %d, %v; want %d", c.name, got, err, c.want)
		}
	}
}

// TestRangeOwnership: a single-key read of a shard not served here fails
// with ErrWrongGroup; a ranged read returns only the served shards' keys.
func TestRangeOwnership(t *testing.T) {
	const n = 4
	a, b := newReplica(t, 1, n), newReplica(t, 2, n)
	c1 := mkConfig(1, gids(1, 1, 1, 2))
	c2 := mkConfig(2, gids(1, 2, 1, 1)) // shard 1: 1 -> 2; shard 3: 2 -> 1
	a.mustReconfigure(c1)
	b.mustReconfigure(c1)
	want := map[string]string{}
	for sh := range 3 {
		for i := range 2 {
			a.mustPut(keyIn(n, sh, i), "a")
			want[keyIn(n, sh, i)] = "a"
		}
	}
	b.mustPut(keyIn(n, 3, 0), "b")
	if got := a.all(); len(got) != 6 {
		t.Fatalf("a reads %v", got)
	}
	a.mustReconfigure(c2)
	b.mustReconfigure(c2)
	a.wantStates(Serving, HandingOff, Serving, Pulling)
	read := func(r *replica, key string) error {
		_, err := r.g.Range(&pb.RangeRequest{Key: []byte(key)})
		return err
	}
	wantErr(t, "read handing-off key", read(a, keyIn(n, 1, 0)), ErrWrongGroup)
	wantErr(t, "read pulling key", read(a, keyIn(n, 3, 0)), ErrWrongGroup)
	wantErr(t, "read not-owned key", read(b, keyIn(n, 0, 0)), ErrWrongGroup)
	wantErr(t, "read handing-off key at b", read(b, keyIn(n, 3, 0)), ErrWrongGroup)
	wantOK(t, "read served key", read(a, keyIn(n, 0, 0)))
	wantOK(t, "read served absent key", read(a, keyIn(n, 0, 5)))

	got := a.all()
	for k, v := range want {
		if sh := a.g.ShardOf([]byte(k)); sh == 1 {
			if _, ok := got[k]; ok {
				t.Fatalf("ranged read returned %q of handing-off shard 1", k)
			}
		} else if got[k] != v {
			t.Fatalf("ranged read: %q = %q, want %q", k, got[k], v)
		}
	}
	if len(got) != 4 {
		t.Fatalf("ranged read returned %d keys, want 4: %v", len(got), got)
	}
	// Count-only and limits see only served keys too.
	resp, err := a.g.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true})
	if err != nil || resp.Count != 4 {
		t.Fatalf("count: %v, %v", resp, err)
	}
	resp, err = a.g.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 4})
	if err != nil || len(resp.Kvs) != 4 || resp.More {
		t.Fatalf("limit 4: %d kvs, more %v, err %v", len(resp.Kvs), resp.More, err)
	}
	if got := b.all(); len(got) != 0 {
		t.Fatalf("b (pulling 1, handing off 3) reads %v", got)
	}
	// Installed: b reads shard 1 (GCPending serves).
	b.install(2, 1, a.export(2, 1))
	if got := b.all(); len(got) != 2 {
		t.Fatalf("b after install reads %v", got)
	}
	wantOK(t, "read gc-pending key", read(b, keyIn(n, 1, 0)))
}
