package shardkv

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/internal/shard"
)

// replica is one Group fed entries at consecutive log indexes, as the
// apply goroutine of one replica would.
type replica struct {
	t   testing.TB
	g   *Group
	idx uint64
	log []logEntry // every entry applied, for replays
}

type logEntry struct {
	index   uint64
	payload []byte
}

func newReplica(t testing.TB, gid shard.GroupID, nShards int) *replica {
	return &replica{t: t, g: New(gid, nShards, kv.Options{})}
}

// apply applies payload at the next log index.
func (r *replica) apply(payload []byte) any {
	r.idx++
	r.log = append(r.log, logEntry{r.idx, append([]byte(nil), payload...)})
	return r.g.Apply(r.idx, payload)
}

// reconfigure applies cfg's Reconfigure entry; it reports whether the
// group moved to cfg.
func (r *replica) reconfigure(cfg shard.Config) bool {
	r.t.Helper()
	payload, err := EncodeReconfigure(cfg)
	if err != nil {
		r.t.Fatalf("encode config %d: %v", cfg.Num, err)
	}
	before := r.g.Status().Config.Num
	if res := r.apply(payload); res != nil {
		r.t.Fatalf("reconfigure %d: result %v, want nil", cfg.Num, res)
	}
	after := r.g.Status().Config.Num
	return after == cfg.Num && after != before
}

// mustReconfigure applies cfg and fails unless the group moved to it.
func (r *replica) mustReconfigure(cfg shard.Config) {
	r.t.Helper()
	if !r.reconfigure(cfg) {
		r.t.Fatalf("group %d did not move to configuration %d (status %+v)", r.g.GID(), cfg.Num, r.g.Status())
	}
}

// kv applies a kv command.
func (r *replica) kv(c *kv.Command) *kv.Result {
	r.t.Helper()
	out := r.apply(EncodeKV(c.Marshal()))
	if rr, ok := out.(*RangedResult); ok {
		out = rr.Result
	}
	res, ok := out.(*kv.Result)
	if !ok || res == nil {
		r.t.Fatalf("kv command: result is not a *kv.Result")
	}
	return res
}

func (r *replica) put(key, value string) *kv.Result {
	r.t.Helper()
	return r.kv(&kv.Command{Put: &pb.PutRequest{Key: []byte(key), Value: []byte(value)}})
}

func (r *replica) mustPut(key, value string) {
	r.t.Helper()
	if res := r.put(key, value); res.Err != nil {
		r.t.Fatalf("group %d: put %q: %v", r.g.GID(), key, res.Err)
	}
}

func (r *replica) appendKV(client, seq uint64, key, value string) *kv.Result {
	r.t.Helper()
	return r.kv(&kv.Command{ClientID: client, Seq: seq, Append: &kv.AppendRequest{Key: []byte(key), Value: []byte(value)}})
}

// get reads key; ok is false if it does not exist. It fails the test on a
// read error.
func (r *replica) get(key string) (string, bool) {
	r.t.Helper()
	resp, err := r.g.Range(&pb.RangeRequest{Key: []byte(key)})
	if err != nil {
		r.t.Fatalf("group %d: get %q: %v", r.g.GID(), key, err)
	}
	if len(resp.Kvs) == 0 {
		return "", false
	}
	return string(resp.Kvs[0].Value), true
}

// all returns every key the group returns for a full range read, with
// values.
func (r *replica) all() map[string]string {
	r.t.Helper()
	resp, err := r.g.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
	if err != nil {
		r.t.Fatalf("group %d: range all: %v", r.g.GID(), err)
	}
	if int(resp.Count) != len(resp.Kvs) {
		r.t.Fatalf("group %d: range all: count %d, %d kvs", r.g.GID(), resp.Count, len(resp.Kvs))
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

func (r *replica) states() []State { return r.g.Status().States }

func (r *replica) wantStates(want ...State) {
	r.t.Helper()
	if got := r.states(); !slices.Equal(got, want) {
		r.t.Fatalf("group %d states %v, want %v", r.g.GID(), got, want)
	}
}

func (r *replica) install(num uint64, sh int, blob []byte) {
	r.t.Helper()
	if res := r.apply(EncodeInstall(num, sh, blob)); res != nil {
		r.t.Fatalf("install: result %v, want nil", res)
	}
}

func (r *replica) del(num uint64, sh int) *DeleteResult {
	r.t.Helper()
	res, ok := r.apply(EncodeDelete(num, sh)).(*DeleteResult)
	if !ok || res == nil {
		r.t.Fatalf("delete: result is not a *DeleteResult")
	}
	return res
}

func (r *replica) gcDone(num uint64, sh int) {
	r.t.Helper()
	if res := r.apply(EncodeGCDone(num, sh)); res != nil {
		r.t.Fatalf("gc-done: result %v, want nil", res)
	}
}

// export calls Export and fails the test on error.
func (r *replica) export(num uint64, sh int) []byte {
	r.t.Helper()
	blob, err := r.g.Export(num, sh)
	if err != nil {
		r.t.Fatalf("group %d: export shard %d at %d: %v", r.g.GID(), sh, num, err)
	}
	return blob
}

// snapshot returns the group's snapshot bytes.
func (r *replica) snapshot() []byte {
	r.t.Helper()
	return snapshotOf(r.t, r.g)
}

func snapshotOf(t testing.TB, g *Group) []byte {
	t.Helper()
	write, err := g.CaptureSnapshot()
	if err != nil {
		t.Fatalf("capture snapshot: %v", err)
	}
	var buf bytes.Buffer
	if err := write(&buf); err != nil {
		t.Fatalf("write snapshot: %v", err)
	}
	return buf.Bytes()
}

// restored returns a fresh replica of the same group restored from r's
// snapshot.
func (r *replica) restored() *replica {
	r.t.Helper()
	c := newReplica(r.t, r.g.GID(), r.g.NumShards())
	if err := c.g.Restore(bytes.NewReader(r.snapshot())); err != nil {
		r.t.Fatalf("restore: %v", err)
	}
	c.idx = r.idx
	return c
}

// addrsOf returns member addresses for group gid.
func addrsOf(gid shard.GroupID) []string {
	return []string{fmt.Sprintf("g%d-a:2379", gid), fmt.Sprintf("g%d-b:2379", gid)}
}

// mkConfig returns configuration num with the given owners per shard; its
// groups are the owners plus extra (groups that own no shard).
func mkConfig(num uint64, owners []shard.GroupID, extra ...shard.GroupID) shard.Config {
	cfg := shard.Config{Num: num, Shards: slices.Clone(owners), Groups: map[shard.GroupID][]string{}}
	for _, gid := range append(slices.Clone(owners), extra...) {
		if gid != shard.NoGroup {
			cfg.Groups[gid] = addrsOf(gid)
		}
	}
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("mkConfig: %v", err))
	}
	return cfg
}

func gids(ids ...shard.GroupID) []shard.GroupID { return ids }

var (
	keysMu    sync.Mutex
	keysCache = map[int][][]string{}
)

// keyIn returns the i-th test key (in a fixed order) that falls in shard sh
// of a cluster of nShards shards.
func keyIn(nShards, sh, i int) string {
	keysMu.Lock()
	defer keysMu.Unlock()
	ks := keysCache[nShards]
	if ks == nil {
		ks = make([][]string, nShards)
		keysCache[nShards] = ks
	}
	for j := 0; len(ks[sh]) <= i; j++ {
		k := fmt.Sprintf("key-%04d", j)
		s := shard.ShardOf([]byte(k), nShards)
		if !slices.Contains(ks[s], k) {
			ks[s] = append(ks[s], k)
		}
	}
	return ks[sh][i]
}

func wantErr(t testing.TB, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want %v", what, err, target)
	}
}

func wantOK(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Txn builders.

func opPut(k, v string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(v)}}}
}

func opGet(k, end string) *pb.RequestOp {
	var e []byte
	if end != "" {
		e = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k), RangeEnd: e}}}
}

func opDel(k, end string) *pb.RequestOp {
	var e []byte
	if end != "" {
		e = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: e}}}
}

func opTxn(t *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
}

func cmpExists(k string) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_VERSION, Result: pb.Compare_GREATER,
		TargetUnion: &pb.Compare_Version{Version: 0}}
}

func kvOpts() kv.Options { return kv.Options{} }

// fingerprint describes the group's state apart from its applied index:
// configurations, shard states, revision, sizes, the data of every shard
// (hidden ones through Export where possible, else through the key count)
// and the visible data.
func (r *replica) fingerprint() string {
	r.t.Helper()
	st := r.g.Status()
	var b strings.Builder
	fmt.Fprintf(&b, "cfg %+v prev %+v states %v rev %d stats %+v keys %v\n",
		st.Config, st.Prev, st.States, r.g.Revision(), r.g.Stats(), r.g.KeysPerShard())
	all := r.all()
	for _, k := range slices.Sorted(maps.Keys(all)) {
		fmt.Fprintf(&b, "%q=%q ", k, all[k])
	}
	for sh, s := range st.States {
		if s == HandingOff {
			blob, err := r.g.Export(st.Config.Num, sh)
			fmt.Fprintf(&b, "\nshard %d: %x %v", sh, blob, err)
		}
	}
	return b.String()
}

// describeResult renders an Apply result by value, for comparisons.
func describeResult(res any) string {
	switch r := res.(type) {
	case nil:
		return "nil"
	case *DeleteResult:
		return fmt.Sprintf("delete{done %v err %v}", r.Done, r.Err)
	case *kv.Result:
		var b strings.Builder
		if r.Put != nil {
			fmt.Fprintf(&b, "put{%v} ", r.Put.String())
		}
		if r.DeleteRange != nil {
			fmt.Fprintf(&b, "delete{%v} ", r.DeleteRange.String())
		}
		if r.Txn != nil {
			fmt.Fprintf(&b, "txn{%v} ", r.Txn.String())
		}
		if r.Append != nil {
			fmt.Fprintf(&b, "append{%+v} ", *r.Append)
		}
		fmt.Fprintf(&b, "err %v", r.Err)
		return b.String()
	}
	return fmt.Sprintf("%T %+v", res, res)
}

// delCmd is a point delete of key.
func delCmd(key string) *kv.Command {
	return &kv.Command{DeleteRange: &pb.DeleteRangeRequest{Key: []byte(key)}}
}
