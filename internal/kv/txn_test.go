package kv

import (
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Builders for txn requests, in the spirit of clientv3's Op helpers.

func opPut(k, v string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(v)}}}
}

func opPutReq(p *pb.PutRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: p}}
}

func opGet(k, end string) *pb.RequestOp {
	return opRange(&pb.RangeRequest{Key: []byte(k), RangeEnd: bytesOrNil(end)})
}

func opRange(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opDel(k, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: bytesOrNil(end)}}}
}

func opTxn(t *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
}

func cmpVersion(k string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_VERSION, Result: r, TargetUnion: &pb.Compare_Version{Version: v}}
}

func cmpCreate(k string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_CREATE, Result: r, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: v}}
}

func cmpMod(k string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_MOD, Result: r, TargetUnion: &pb.Compare_ModRevision{ModRevision: v}}
}

func cmpValue(k string, r pb.Compare_CompareResult, v string) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_VALUE, Result: r, TargetUnion: &pb.Compare_Value{Value: []byte(v)}}
}

func cmpLease(k string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_LEASE, Result: r, TargetUnion: &pb.Compare_Lease{Lease: v}}
}

func withEnd(c *pb.Compare, end string) *pb.Compare { c.RangeEnd = []byte(end); return c }

const (
	eq  = pb.Compare_EQUAL
	neq = pb.Compare_NOT_EQUAL
	gt  = pb.Compare_GREATER
	lt  = pb.Compare_LESS
)

func respPut(rev int64, prev *mvccpb.KeyValue) *pb.ResponseOp {
	return &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: &pb.PutResponse{Header: &pb.ResponseHeader{Revision: rev}, PrevKv: prev}}}
}

func respRange(rev, count int64, kvs ...*mvccpb.KeyValue) *pb.ResponseOp {
	return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: rev}, Kvs: kvs, Count: count}}}
}

func respDel(rev, deleted int64, prev ...*mvccpb.KeyValue) *pb.ResponseOp {
	return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: rev}, Deleted: deleted, PrevKvs: prev}}}
}

// respTxn is a nested txn response: etcd leaves its header revision 0.
func respTxn(succeeded bool, resps ...*pb.ResponseOp) *pb.ResponseOp {
	return &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: &pb.TxnResponse{Header: &pb.ResponseHeader{}, Succeeded: succeeded, Responses: resps}}}
}

// TestTxnCompare checks each compare target and result against one state:
//
//	a = "v"  create 2  mod 3  version 2
//	b = "w"  create 4  mod 4  version 1
func TestTxnCompare(t *testing.T) {
	h := newHarness(t)
	h.put("a", "u")
	h.put("a", "v")
	h.put("b", "w")
	tests := []struct {
		name string
		cmps []*pb.Compare
		want bool
	}{
		{"value equal", []*pb.Compare{cmpValue("a", eq, "v")}, true},
		{"value not equal", []*pb.Compare{cmpValue("a", neq, "v")}, false},
		{"value greater", []*pb.Compare{cmpValue("a", gt, "u")}, true},
		{"value less", []*pb.Compare{cmpValue("a", lt, "w")}, true},
		{"value less, equal", []*pb.Compare{cmpValue("a", lt, "v")}, false},
		{"version equal", []*pb.Compare{cmpVersion("a", eq, 2)}, true},
		{"version greater", []*pb.Compare{cmpVersion("a", gt, 1)}, true},
		{"version less", []*pb.Compare{cmpVersion("a", lt, 2)}, false},
		{"version not equal", []*pb.Compare{cmpVersion("a", neq, 2)}, false},
		{"create equal", []*pb.Compare{cmpCreate("a", eq, 2)}, true},
		{"mod equal", []*pb.Compare{cmpMod("a", eq, 3)}, true},
		{"mod greater", []*pb.Compare{cmpMod("a", gt, 3)}, false},
		{"lease is always 0", []*pb.Compare{cmpLease("a", eq, 0)}, true},
		{"missing key version 0", []*pb.Compare{cmpVersion("z", eq, 0)}, true},
		{"missing key create 0", []*pb.Compare{cmpCreate("z", eq, 0)}, true},
		{"missing key mod 0", []*pb.Compare{cmpMod("z", lt, 1)}, true},
		{"missing key value equal empty fails", []*pb.Compare{cmpValue("z", eq, "")}, false},
		{"missing key value not equal fails", []*pb.Compare{cmpValue("z", neq, "x")}, false},
		{"range: all versions > 0", []*pb.Compare{withEnd(cmpVersion("a", gt, 0), "c")}, true},
		{"range: not all versions > 1", []*pb.Compare{withEnd(cmpVersion("a", gt, 1), "c")}, false},
		{"range: all mods < 5", []*pb.Compare{withEnd(cmpMod("a", lt, 5), "c")}, true},
		{"range: values differ from x", []*pb.Compare{withEnd(cmpValue("a", neq, "x"), "c")}, true},
		{"range: one value equals w", []*pb.Compare{withEnd(cmpValue("a", eq, "w"), "c")}, false},
		{"empty range compares as a missing key", []*pb.Compare{withEnd(cmpVersion("x", eq, 0), "y")}, true},
		{"empty range value compare fails", []*pb.Compare{withEnd(cmpValue("x", eq, ""), "y")}, false},
		{"from key", []*pb.Compare{withEnd(cmpCreate("a", gt, 1), "\x00")}, true},
		{"all keys", []*pb.Compare{withEnd(cmpCreate("\x00", gt, 2), "\x00")}, false},
		{"all compares must hold", []*pb.Compare{cmpVersion("a", eq, 2), cmpVersion("b", eq, 2)}, false},
		{"no compares succeed", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := h.must(&Command{Txn: &pb.TxnRequest{Compare: tc.cmps, Success: []*pb.RequestOp{opGet("a", "")}, Failure: []*pb.RequestOp{opGet("b", "")}}})
			if r.Txn.Succeeded != tc.want {
				t.Fatalf("succeeded = %v, want %v", r.Txn.Succeeded, tc.want)
			}
			if h.s.Revision() != 4 {
				t.Fatalf("a read-only txn changed the revision to %d", h.s.Revision())
			}
		})
	}
}

// TestTxn checks whole transactions, with expectations derived from etcd's
// txn semantics: one revision for the whole txn, inner responses carry the
// revision the txn writes (or the one it read, before any write), reads see
// earlier writes of the same txn, and compares of nested txns are evaluated
// before anything runs.
func TestTxn(t *testing.T) {
	// Each case starts from: a = "1" (create 2, mod 2, version 1),
	// b = "2" (create 3, mod 3, version 1); revision 3.
	a1 := kv("a", "1", 2, 2, 1)
	b2 := kv("b", "2", 3, 3, 1)
	tests := []struct {
		name    string
		txn     *pb.TxnRequest
		want    *pb.TxnResponse
		wantRev int64
		state   []*mvccpb.KeyValue
	}{
		{
			name: "writes and reads in one txn",
			txn: &pb.TxnRequest{
				Compare: []*pb.Compare{cmpValue("a", eq, "1")},
				Success: []*pb.RequestOp{opGet("a", ""), opPut("a", "10"), opGet("a", ""), opPut("c", "3"), opGet("a", "d")},
			},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respRange(3, 1, a1),
				respPut(4, nil),
				respRange(4, 1, kv("a", "10", 2, 4, 2)),
				respPut(4, nil),
				respRange(4, 3, kv("a", "10", 2, 4, 2), b2, kv("c", "3", 4, 4, 1)),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{kv("a", "10", 2, 4, 2), b2, kv("c", "3", 4, 4, 1)},
		},
		{
			name: "read-only txn keeps the revision",
			txn:  &pb.TxnRequest{Success: []*pb.RequestOp{opGet("a", ""), opGet("zz", "")}},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 3}, Succeeded: true, Responses: []*pb.ResponseOp{
				respRange(3, 1, a1), respRange(3, 0),
			}},
			wantRev: 3,
			state:   []*mvccpb.KeyValue{a1, b2},
		},
		{
			name: "failure branch",
			txn: &pb.TxnRequest{
				Compare: []*pb.Compare{cmpVersion("a", gt, 5)},
				Success: []*pb.RequestOp{opPut("x", "never")},
				Failure: []*pb.RequestOp{&pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("b"), PrevKv: true}}}},
			},
			want:    &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Responses: []*pb.ResponseOp{respDel(4, 1, b2)}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{a1},
		},
		{
			name:    "delete of nothing writes nothing",
			txn:     &pb.TxnRequest{Success: []*pb.RequestOp{opDel("x", ""), opGet("a", "")}},
			want:    &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 3}, Succeeded: true, Responses: []*pb.ResponseOp{respDel(3, 0), respRange(3, 1, a1)}},
			wantRev: 3,
			state:   []*mvccpb.KeyValue{a1, b2},
		},
		{
			name: "delete of nothing after a write reports the new revision",
			txn:  &pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "x"), opDel("x", "")}},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respPut(4, nil), respDel(4, 0),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{a1, b2, kv("c", "x", 4, 4, 1)},
		},
		{
			name: "many keys, one revision",
			txn:  &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "x"), opPut("b", "y"), opDel("a0", "a9"), opPut("c", "z")}},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respPut(4, nil), respPut(4, nil), respDel(4, 0), respPut(4, nil),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{kv("a", "x", 2, 4, 2), kv("b", "y", 3, 4, 2), kv("c", "z", 4, 4, 1)},
		},
		{
			name: "delete then read and re-create a different key",
			txn:  &pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", ""), opGet("a", ""), opPut("c", "1")}},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respDel(4, 1), respRange(4, 0), respPut(4, nil),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{b2, kv("c", "1", 4, 4, 1)},
		},
		{
			name: "put prev_kv inside a txn",
			txn:  &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("a"), Value: []byte("9"), PrevKv: true})}},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respPut(4, a1),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{kv("a", "9", 2, 4, 2), b2},
		},
		{
			// The nested compare sees x missing, because compares run
			// before the outer put of x.
			name: "nested compares see the state before the txn",
			txn: &pb.TxnRequest{
				Compare: []*pb.Compare{cmpCreate("a", gt, 0)},
				Success: []*pb.RequestOp{
					opPut("x", "new"),
					opTxn(&pb.TxnRequest{
						Compare: []*pb.Compare{cmpValue("x", eq, "new")},
						Success: []*pb.RequestOp{opPut("y", "then")},
						Failure: []*pb.RequestOp{opPut("y", "else"), opGet("x", "")},
					}),
				},
			},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respPut(4, nil),
				respTxn(false, respPut(4, nil), respRange(4, 1, kv("x", "new", 4, 4, 1))),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{a1, b2, kv("x", "new", 4, 4, 1), kv("y", "else", 4, 4, 1)},
		},
		{
			name: "nested txns two levels deep",
			txn: &pb.TxnRequest{
				Success: []*pb.RequestOp{
					opTxn(&pb.TxnRequest{
						Compare: []*pb.Compare{cmpVersion("b", eq, 1)},
						Success: []*pb.RequestOp{
							opTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("a", eq, 7)}, Failure: []*pb.RequestOp{opPut("deep", "1")}}),
							opGet("b", ""),
						},
					}),
					opPut("after", "2"),
				},
			},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respTxn(true, respTxn(false, respPut(4, nil)), respRange(4, 1, b2)),
				respPut(4, nil),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{a1, kv("after", "2", 4, 4, 1), b2, kv("deep", "1", 4, 4, 1)},
		},
		{
			name: "same key in both branches of a nested txn",
			txn: &pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpValue("a", eq, "1")},
				Success: []*pb.RequestOp{opPut("k", "then")},
				Failure: []*pb.RequestOp{opPut("k", "else")},
			})}},
			want: &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 4}, Succeeded: true, Responses: []*pb.ResponseOp{
				respTxn(true, respPut(4, nil)),
			}},
			wantRev: 4,
			state:   []*mvccpb.KeyValue{a1, b2, kv("k", "then", 4, 4, 1)},
		},
		{
			name:    "empty txn",
			txn:     &pb.TxnRequest{},
			want:    &pb.TxnResponse{Header: &pb.ResponseHeader{Revision: 3}, Succeeded: true, Responses: []*pb.ResponseOp{}},
			wantRev: 3,
			state:   []*mvccpb.KeyValue{a1, b2},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.put("a", "1")
			h.put("b", "2")
			r := h.must(&Command{Txn: tc.txn})
			sameMsg(t, "txn response", r.Txn, tc.want)
			if got := h.s.Revision(); got != tc.wantRev {
				t.Errorf("revision %d, want %d", got, tc.wantRev)
			}
			resp, _ := h.s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
			sameMsg(t, "state", resp, &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: tc.wantRev}, Kvs: tc.state, Count: int64(len(tc.state))})
		})
	}
}

// TestTxnErrors checks that a txn failing at apply time changes nothing.
func TestTxnErrors(t *testing.T) {
	tests := []struct {
		name string
		txn  *pb.TxnRequest
		err  error
		code codes.Code
	}{
		{name: "ignore_value on a missing key", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut("x", "1"), opPutReq(&pb.PutRequest{Key: []byte("y"), IgnoreValue: true})}}, err: rpctypes.ErrGRPCKeyNotFound},
		{name: "lease", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut("x", "1"), opPutReq(&pb.PutRequest{Key: []byte("y"), Lease: 5})}}, err: rpctypes.ErrGRPCLeaseNotFound},
		// Inside a txn etcd checks ignore_value before the lease.
		{name: "ignore_value before lease", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("y"), IgnoreValue: true, Lease: 5})}}, err: rpctypes.ErrGRPCKeyNotFound},
		{name: "future revision", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut("x", "1"), opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 4})}}, err: rpctypes.ErrGRPCFutureRev},
		{name: "old revision", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 2})}}, code: codes.Unimplemented},
		{name: "begin revision after a write", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut("x", "1"), opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 3})}}, code: codes.Unimplemented},
		{name: "error in a nested txn", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", ""), opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("y"), IgnoreLease: true})}})}}, err: rpctypes.ErrGRPCKeyNotFound},
		// etcd's duplicate-key check takes range_end "\x00" literally, so
		// this txn passes validation; etcd then panics applying it.
		{name: "ignore_value after a from-key delete", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "\x00"), opPutReq(&pb.PutRequest{Key: []byte("a"), IgnoreValue: true})}}, err: rpctypes.ErrGRPCKeyNotFound},
		{name: "duplicate key", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut("x", "1"), opPut("x", "2")}}, err: rpctypes.ErrGRPCDuplicateKey},
		{name: "too many ops", txn: &pb.TxnRequest{Success: manyPuts(MaxTxnOps + 1)}, err: rpctypes.ErrGRPCTooManyOps},
		{name: "empty op", txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut("x", "1"), {}}}, err: rpctypes.ErrGRPCKeyNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.put("a", "1")
			h.put("b", "2")
			before := snapshotBytes(t, h.s)
			h.index++
			r := h.s.Apply(h.index, (&Command{Txn: tc.txn}).Marshal())
			if tc.code != codes.OK {
				if status.Code(r.Err) != tc.code {
					t.Fatalf("error %v, want code %v", r.Err, tc.code)
				}
			} else {
				sameErr(t, "txn", r.Err, tc.err)
			}
			if r.Txn != nil {
				t.Errorf("response with error: %v", r.Txn)
			}
			after := NewStore(Options{})
			if err := after.Restore(bytesReader(before)); err != nil {
				t.Fatal(err)
			}
			after.applied = h.index // the failed entry still counts as applied
			if got, want := snapshotBytes(t, h.s), snapshotBytes(t, after); string(got) != string(want) {
				t.Errorf("failed txn changed the store")
			}
		})
	}
}

func TestTxnAllowedReads(t *testing.T) {
	h := newHarness(t)
	h.put("a", "1")
	// A read at the current revision before any write of the txn is fine,
	// and so is a negative revision (etcd treats it as current).
	r := h.must(&Command{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{
		opRange(&pb.RangeRequest{Key: []byte("a"), Revision: 2}),
		opPut("b", "1"),
		opRange(&pb.RangeRequest{Key: []byte("a"), Revision: -1}),
	}}})
	if n := len(r.Txn.Responses); n != 3 {
		t.Fatalf("%d responses", n)
	}
}

func manyPuts(n int) []*pb.RequestOp {
	ops := make([]*pb.RequestOp, n)
	for i := range ops {
		ops[i] = opPut(strings.Repeat("k", i+1), "v")
	}
	return ops
}
