package kv

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Revision rules, from etcd's documentation of the v3 data model: the store
// starts at revision 1; each write transaction that changes something moves
// it up by one; a key's version is 1 on creation and grows with each put;
// a delete removes the key, and re-creating it starts a new generation.
func TestRevisionRules(t *testing.T) {
	h := newHarness(t)
	if got := h.s.Revision(); got != 1 {
		t.Fatalf("initial revision %d, want 1 (etcd starts at 1)", got)
	}
	steps := []struct {
		name    string
		do      func() int64 // returns the response header revision
		wantRev int64
		wantKV  *mvccpb.KeyValue // state of "k" afterwards (nil = absent)
	}{
		{"create", func() int64 { return h.put("k", "v1").Header.Revision }, 2, kv("k", "v1", 2, 2, 1)},
		{"overwrite", func() int64 { return h.put("k", "v2").Header.Revision }, 3, kv("k", "v2", 2, 3, 2)},
		{"same value still writes", func() int64 { return h.put("k", "v2").Header.Revision }, 4, kv("k", "v2", 2, 4, 3)},
		{"other key", func() int64 { return h.put("other", "x").Header.Revision }, 5, kv("k", "v2", 2, 4, 3)},
		{"delete", func() int64 { return h.del("k", "").Header.Revision }, 6, nil},
		{"delete nothing", func() int64 { return h.del("k", "").Header.Revision }, 6, nil},
		{"re-create", func() int64 { return h.put("k", "v3").Header.Revision }, 7, kv("k", "v3", 7, 7, 1)},
		{"append", func() int64 {
			return h.must(&Command{Append: &AppendRequest{Key: []byte("k"), Value: []byte("+")}}).Append.Revision
		}, 8, kv("k", "v3+", 7, 8, 2)},
	}
	for _, st := range steps {
		if got := st.do(); got != st.wantRev {
			t.Errorf("%s: response revision %d, want %d", st.name, got, st.wantRev)
		}
		if got := h.s.Revision(); got != st.wantRev {
			t.Errorf("%s: store revision %d, want %d", st.name, got, st.wantRev)
		}
		got := h.get("k")
		switch {
		case st.wantKV == nil && got != nil:
			t.Errorf("%s: k = %v, want absent", st.name, got)
		case st.wantKV != nil && got == nil:
			t.Errorf("%s: k absent, want %v", st.name, st.wantKV)
		case st.wantKV != nil:
			sameMsg(t, st.name, got, st.wantKV)
		}
	}
}

// rangeFixture builds a small store; its final state is, at revision 8:
//
//	a  = "xx"  create 2  mod 5  version 2
//	ab = "w"   create 6  mod 6  version 1
//	b  = "b"   create 3  mod 8  version 3
//	c  = "y"   create 4  mod 4  version 1
func rangeFixture(t *testing.T) *harness {
	h := newHarness(t)
	for _, p := range [][2]string{{"a", "x"}, {"b", "zz"}, {"c", "y"}, {"a", "xx"}, {"ab", "w"}, {"b", "a"}, {"b", "b"}} {
		h.put(p[0], p[1])
	}
	return h
}

var (
	fxA  = kv("a", "xx", 2, 5, 2)
	fxAB = kv("ab", "w", 6, 6, 1)
	fxB  = kv("b", "b", 3, 8, 3)
	fxC  = kv("c", "y", 4, 4, 1)
)

func TestRange(t *testing.T) {
	h := rangeFixture(t)
	type req = pb.RangeRequest
	keysOnly := func(k *mvccpb.KeyValue) *mvccpb.KeyValue { c := *k; c.Value = nil; return &c }
	tests := []struct {
		name  string
		req   *req
		kvs   []*mvccpb.KeyValue
		count int64
		more  bool
		err   error
		code  codes.Code // for errors without an rpctypes sentinel
	}{
		{name: "single key", req: &req{Key: []byte("a")}, kvs: []*mvccpb.KeyValue{fxA}, count: 1},
		{name: "missing key", req: &req{Key: []byte("zz")}, count: 0},
		{name: "half-open range", req: &req{Key: []byte("a"), RangeEnd: []byte("b")}, kvs: []*mvccpb.KeyValue{fxA, fxAB}, count: 2},
		{name: "prefix a", req: &req{Key: []byte("a"), RangeEnd: []byte("b")}, kvs: []*mvccpb.KeyValue{fxA, fxAB}, count: 2},
		{name: "from key", req: &req{Key: []byte("ab"), RangeEnd: []byte{0}}, kvs: []*mvccpb.KeyValue{fxAB, fxB, fxC}, count: 3},
		{name: "all keys", req: &req{Key: []byte{0}, RangeEnd: []byte{0}}, kvs: []*mvccpb.KeyValue{fxA, fxAB, fxB, fxC}, count: 4},
		{name: "inverted range", req: &req{Key: []byte("c"), RangeEnd: []byte("a")}, count: 0},
		{name: "limit", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 2}, kvs: []*mvccpb.KeyValue{fxA, fxAB}, count: 4, more: true},
		{name: "limit equal to count", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 4}, kvs: []*mvccpb.KeyValue{fxA, fxAB, fxB, fxC}, count: 4},
		{name: "huge limit", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, Limit: math.MaxInt64}, kvs: []*mvccpb.KeyValue{fxA, fxAB, fxB, fxC}, count: 4},
		{name: "negative limit is no limit", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, Limit: -1}, kvs: []*mvccpb.KeyValue{fxA, fxAB, fxB, fxC}, count: 4},
		{name: "keys only", req: &req{Key: []byte("a"), RangeEnd: []byte("b"), KeysOnly: true}, kvs: []*mvccpb.KeyValue{keysOnly(fxA), keysOnly(fxAB)}, count: 2},
		{name: "count only", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true}, count: 4},
		{name: "count only ignores limit", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true, Limit: 1}, count: 4},
		{name: "sort key descend", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_DESCEND}, kvs: []*mvccpb.KeyValue{fxC, fxB, fxAB, fxA}, count: 4},
		{name: "sort key ascend", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_ASCEND}, kvs: []*mvccpb.KeyValue{fxA, fxAB, fxB, fxC}, count: 4},
		{name: "sort version descend", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_VERSION}, kvs: []*mvccpb.KeyValue{fxB, fxA, fxAB, fxC}, count: 4},
		{name: "sort mod ascend", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_ASCEND, SortTarget: pb.RangeRequest_MOD}, kvs: []*mvccpb.KeyValue{fxC, fxA, fxAB, fxB}, count: 4},
		{name: "sort create descend", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_CREATE}, kvs: []*mvccpb.KeyValue{fxAB, fxC, fxB, fxA}, count: 4},
		{name: "sort value ascend", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_ASCEND, SortTarget: pb.RangeRequest_VALUE}, kvs: []*mvccpb.KeyValue{fxB, fxAB, fxA, fxC}, count: 4},
		{name: "target without order sorts ascending", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_VERSION}, kvs: []*mvccpb.KeyValue{fxAB, fxC, fxA, fxB}, count: 4},
		// etcd reads limit+1 keys when sort_order is NONE and only then
		// sorts by the target: the first three keys are a, ab, b.
		{name: "target without order sorts only limit+1 keys", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_VERSION, Limit: 2}, kvs: []*mvccpb.KeyValue{fxAB, fxA}, count: 4, more: true},
		{name: "sort then limit", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_MOD, Limit: 2}, kvs: []*mvccpb.KeyValue{fxB, fxAB}, count: 4, more: true},
		{name: "min mod revision", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, MinModRevision: 5}, kvs: []*mvccpb.KeyValue{fxA, fxAB, fxB}, count: 4},
		{name: "max mod revision", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, MaxModRevision: 5}, kvs: []*mvccpb.KeyValue{fxA, fxC}, count: 4},
		{name: "create revision window", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, MinCreateRevision: 3, MaxCreateRevision: 4}, kvs: []*mvccpb.KeyValue{fxB, fxC}, count: 4},
		{name: "filter then limit", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, MinModRevision: 5, Limit: 1}, kvs: []*mvccpb.KeyValue{fxA}, count: 4, more: true},
		{name: "filter, count only", req: &req{Key: []byte{0}, RangeEnd: []byte{0}, MinModRevision: 100, CountOnly: true}, count: 4},
		{name: "current revision", req: &req{Key: []byte("a"), Revision: 8}, kvs: []*mvccpb.KeyValue{fxA}, count: 1},
		{name: "negative revision is current", req: &req{Key: []byte("a"), Revision: -3}, kvs: []*mvccpb.KeyValue{fxA}, count: 1},
		{name: "future revision", req: &req{Key: []byte("a"), Revision: 9}, err: rpctypes.ErrGRPCFutureRev},
		{name: "old revision", req: &req{Key: []byte("a"), Revision: 3}, code: codes.Unimplemented},
		{name: "empty key", req: &req{}, err: rpctypes.ErrGRPCEmptyKey},
		{name: "bad sort order", req: &req{Key: []byte("a"), SortOrder: 7}, err: rpctypes.ErrGRPCInvalidSortOption},
		{name: "bad sort target", req: &req{Key: []byte("a"), SortTarget: 9}, err: rpctypes.ErrGRPCInvalidSortOption},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := h.s.Range(tc.req)
			if tc.code != codes.OK {
				if status.Code(err) != tc.code {
					t.Fatalf("error %v, want code %v", err, tc.code)
				}
				return
			}
			sameErr(t, "range", err, tc.err)
			if tc.err != nil {
				return
			}
			want := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 8}, Kvs: tc.kvs, Count: tc.count, More: tc.more}
			sameMsg(t, "response", resp, want)
		})
	}
}

func TestHistoricalReadMessage(t *testing.T) {
	h := rangeFixture(t)
	_, err := h.s.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 2})
	st, _ := status.FromError(err)
	if st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "historical reads are not supported yet") {
		t.Fatalf("got %v", err)
	}
}

func TestRangeResponseOwnsMemory(t *testing.T) {
	h := rangeFixture(t)
	resp, err := h.s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		for i := range kv.Key {
			kv.Key[i] = '!'
		}
		for i := range kv.Value {
			kv.Value[i] = '!'
		}
	}
	sameMsg(t, "a after scribbling on a response", h.get("a"), fxA)
}

func TestPut(t *testing.T) {
	type req = pb.PutRequest
	tests := []struct {
		name    string
		req     *req
		err     error
		prev    *mvccpb.KeyValue // expected prev_kv
		after   *mvccpb.KeyValue // expected state of the key
		wantRev int64            // store revision afterwards
	}{
		{name: "prev_kv of existing key", req: &req{Key: []byte("a"), Value: []byte("2"), PrevKv: true}, prev: kv("a", "1", 2, 2, 1), after: kv("a", "2", 2, 3, 2), wantRev: 3},
		{name: "prev_kv of new key", req: &req{Key: []byte("n"), Value: []byte("2"), PrevKv: true}, after: kv("n", "2", 3, 3, 1), wantRev: 3},
		{name: "no prev_kv unless asked", req: &req{Key: []byte("a"), Value: []byte("2")}, after: kv("a", "2", 2, 3, 2), wantRev: 3},
		{name: "ignore_value keeps value", req: &req{Key: []byte("a"), IgnoreValue: true}, after: kv("a", "1", 2, 3, 2), wantRev: 3},
		{name: "ignore_value on missing key", req: &req{Key: []byte("n"), IgnoreValue: true}, err: rpctypes.ErrGRPCKeyNotFound, wantRev: 2},
		{name: "ignore_value with a value", req: &req{Key: []byte("a"), Value: []byte("v"), IgnoreValue: true}, err: rpctypes.ErrGRPCValueProvided, after: kv("a", "1", 2, 2, 1), wantRev: 2},
		{name: "ignore_lease", req: &req{Key: []byte("a"), Value: []byte("3"), IgnoreLease: true}, after: kv("a", "3", 2, 3, 2), wantRev: 3},
		{name: "ignore_lease on missing key", req: &req{Key: []byte("n"), IgnoreLease: true}, err: rpctypes.ErrGRPCKeyNotFound, wantRev: 2},
		{name: "ignore_lease with a lease", req: &req{Key: []byte("a"), Lease: 7, IgnoreLease: true}, err: rpctypes.ErrGRPCLeaseProvided, wantRev: 2},
		{name: "lease", req: &req{Key: []byte("a"), Value: []byte("x"), Lease: 7}, err: rpctypes.ErrGRPCLeaseNotFound, after: kv("a", "1", 2, 2, 1), wantRev: 2},
		// A plain Put looks up the lease before the previous key.
		{name: "lease before ignore_value", req: &req{Key: []byte("n"), Lease: 7, IgnoreValue: true}, err: rpctypes.ErrGRPCLeaseNotFound, wantRev: 2},
		{name: "empty key", req: &req{Value: []byte("x")}, err: rpctypes.ErrGRPCEmptyKey, wantRev: 2},
		{name: "empty value", req: &req{Key: []byte("a")}, after: kv("a", "", 2, 3, 2), wantRev: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.put("a", "1")
			r := h.apply(&Command{Put: tc.req})
			sameErr(t, "put", r.Err, tc.err)
			if tc.err == nil {
				want := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: tc.wantRev}, PrevKv: tc.prev}
				sameMsg(t, "response", r.Put, want)
			} else if r.Put != nil {
				t.Errorf("response %v with error", r.Put)
			}
			if got := h.s.Revision(); got != tc.wantRev {
				t.Errorf("revision %d, want %d", got, tc.wantRev)
			}
			if tc.after != nil {
				sameMsg(t, "state", h.get(string(tc.after.Key)), tc.after)
			}
		})
	}
}

func TestDeleteRange(t *testing.T) {
	type req = pb.DeleteRangeRequest
	tests := []struct {
		name    string
		req     *req
		err     error
		deleted int64
		prev    []*mvccpb.KeyValue
		left    []string
		wantRev int64
	}{
		{name: "single key", req: &req{Key: []byte("a")}, deleted: 1, left: []string{"ab", "b", "c"}, wantRev: 9},
		{name: "single key prev_kv", req: &req{Key: []byte("b"), PrevKv: true}, deleted: 1, prev: []*mvccpb.KeyValue{fxB}, left: []string{"a", "ab", "c"}, wantRev: 9},
		{name: "missing key does not write", req: &req{Key: []byte("zz"), PrevKv: true}, deleted: 0, left: []string{"a", "ab", "b", "c"}, wantRev: 8},
		{name: "range", req: &req{Key: []byte("a"), RangeEnd: []byte("b"), PrevKv: true}, deleted: 2, prev: []*mvccpb.KeyValue{fxA, fxAB}, left: []string{"b", "c"}, wantRev: 9},
		{name: "from key", req: &req{Key: []byte("b"), RangeEnd: []byte{0}}, deleted: 2, left: []string{"a", "ab"}, wantRev: 9},
		{name: "all", req: &req{Key: []byte{0}, RangeEnd: []byte{0}}, deleted: 4, wantRev: 9},
		{name: "empty range", req: &req{Key: []byte("b0"), RangeEnd: []byte("b9")}, deleted: 0, left: []string{"a", "ab", "b", "c"}, wantRev: 8},
		{name: "empty key", req: &req{}, err: rpctypes.ErrGRPCEmptyKey, left: []string{"a", "ab", "b", "c"}, wantRev: 8},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := rangeFixture(t)
			r := h.apply(&Command{DeleteRange: tc.req})
			sameErr(t, "delete", r.Err, tc.err)
			if tc.err == nil {
				want := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: tc.wantRev}, Deleted: tc.deleted, PrevKvs: tc.prev}
				sameMsg(t, "response", r.DeleteRange, want)
			}
			if got := h.s.Revision(); got != tc.wantRev {
				t.Errorf("revision %d, want %d", got, tc.wantRev)
			}
			resp, _ := h.s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, KeysOnly: true})
			var left []string
			for _, kv := range resp.Kvs {
				left = append(left, string(kv.Key))
			}
			if fmt.Sprint(left) != fmt.Sprint(tc.left) {
				t.Errorf("keys left %q, want %q", left, tc.left)
			}
			if st := h.s.Stats(); st.Keys != len(tc.left) {
				t.Errorf("Stats.Keys %d, want %d", st.Keys, len(tc.left))
			}
		})
	}
}

func TestAppend(t *testing.T) {
	h := newHarness(t)
	ap := func(k, v string) *Result {
		return h.apply(&Command{Append: &AppendRequest{Key: []byte(k), Value: []byte(v)}})
	}
	r := ap("log", "a")
	if r.Err != nil || *r.Append != (AppendResponse{Revision: 2, Length: 1}) {
		t.Fatalf("first append: %+v %v", r.Append, r.Err)
	}
	r = ap("log", "bc")
	if r.Err != nil || *r.Append != (AppendResponse{Revision: 3, Length: 3}) {
		t.Fatalf("second append: %+v %v", r.Append, r.Err)
	}
	r = ap("log", "")
	if r.Err != nil || *r.Append != (AppendResponse{Revision: 4, Length: 3}) {
		t.Fatalf("empty append still writes: %+v %v", r.Append, r.Err)
	}
	sameMsg(t, "log", h.get("log"), kv("log", "abc", 2, 4, 3))
	sameErr(t, "empty key", ap("", "x").Err, rpctypes.ErrGRPCEmptyKey)
	if h.s.Revision() != 4 {
		t.Fatalf("revision %d after failed append", h.s.Revision())
	}
}

func TestApplyEntries(t *testing.T) {
	s := NewStore(Options{})
	if r := s.Apply(1, nil); r == nil || r.Err != nil || s.AppliedIndex() != 1 || s.Revision() != 1 {
		t.Fatalf("no-op entry: %+v, applied %d, revision %d", r, s.AppliedIndex(), s.Revision())
	}
	put := (&Command{Put: &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}}).Marshal()
	if r := s.Apply(3, put); r.Err != nil || s.AppliedIndex() != 3 {
		t.Fatalf("gap in indexes must be allowed (conf changes are not passed in): %v", r.Err)
	}
	if r := s.Apply(3, put); !errors.Is(r.Err, ErrIndexApplied) || s.Revision() != 2 {
		t.Fatalf("re-applied index: %v, revision %d", r.Err, s.Revision())
	}
	if r := s.Apply(2, put); !errors.Is(r.Err, ErrIndexApplied) {
		t.Fatalf("old index: %v", r.Err)
	}
	if r := s.Apply(4, []byte{0xff, 1, 2}); !errors.Is(r.Err, ErrCorruptCommand) || s.AppliedIndex() != 4 || s.Revision() != 2 {
		t.Fatalf("garbage entry: %v, applied %d", r.Err, s.AppliedIndex())
	}
	if r := s.Apply(5, (&Command{}).Marshal()); status.Code(r.Err) != codes.InvalidArgument {
		t.Fatalf("command without request: %v", r.Err)
	}
	two := &Command{Put: &pb.PutRequest{Key: []byte("k")}, DeleteRange: &pb.DeleteRangeRequest{Key: []byte("k")}}
	if r := s.Apply(6, two.Marshal()); status.Code(r.Err) != codes.InvalidArgument || s.Revision() != 2 {
		t.Fatalf("command with two requests: %v", r.Err)
	}
}

func TestStats(t *testing.T) {
	h := newHarness(t)
	h.put("ab", "xyz")
	h.put("c", "1")
	h.put("ab", "x")
	st := h.s.Stats()
	if st.Keys != 2 || st.Bytes != int64(2+1+1+1)+2*itemOverhead || st.Sessions != 0 {
		t.Fatalf("stats %+v", st)
	}
	h.del("ab", "")
	if st := h.s.Stats(); st.Keys != 1 || st.Bytes != 2+itemOverhead {
		t.Fatalf("stats after delete %+v", st)
	}
}
