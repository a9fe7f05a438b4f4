package kv

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func TestValidate(t *testing.T) {
	nested := func(outer, inner int) *pb.TxnRequest {
		ops := manyPuts(outer - 1)
		innerOps := make([]*pb.RequestOp, inner)
		for i := range innerOps {
			innerOps[i] = opGet("r", "")
		}
		return &pb.TxnRequest{Success: append(ops, opTxn(&pb.TxnRequest{Success: innerOps}))}
	}
	tests := []struct {
		name string
		err  error
		got  error
	}{
		{"range ok", nil, ValidateRange(&pb.RangeRequest{Key: []byte("a")})},
		{"range empty key", rpctypes.ErrGRPCEmptyKey, ValidateRange(&pb.RangeRequest{RangeEnd: []byte("b")})},
		{"range nil", rpctypes.ErrGRPCEmptyKey, ValidateRange(nil)},
		{"range bad order", rpctypes.ErrGRPCInvalidSortOption, ValidateRange(&pb.RangeRequest{Key: []byte("a"), SortOrder: 3})},
		{"range bad target", rpctypes.ErrGRPCInvalidSortOption, ValidateRange(&pb.RangeRequest{Key: []byte("a"), SortTarget: -1})},
		{"put ok", nil, ValidatePut(&pb.PutRequest{Key: []byte("a"), Value: []byte("v")})},
		{"put empty key", rpctypes.ErrGRPCEmptyKey, ValidatePut(&pb.PutRequest{Value: []byte("v")})},
		{"put nil", rpctypes.ErrGRPCEmptyKey, ValidatePut(nil)},
		{"put ignore_value with value", rpctypes.ErrGRPCValueProvided, ValidatePut(&pb.PutRequest{Key: []byte("a"), Value: []byte("v"), IgnoreValue: true})},
		{"put ignore_lease with lease", rpctypes.ErrGRPCLeaseProvided, ValidatePut(&pb.PutRequest{Key: []byte("a"), Lease: 1, IgnoreLease: true})},
		{"delete ok", nil, ValidateDeleteRange(&pb.DeleteRangeRequest{Key: []byte("a")})},
		{"delete empty key", rpctypes.ErrGRPCEmptyKey, ValidateDeleteRange(&pb.DeleteRangeRequest{RangeEnd: []byte{0}})},
		{"append empty key", rpctypes.ErrGRPCEmptyKey, ValidateAppend(&AppendRequest{Value: []byte("x")})},
		{"txn ok", nil, ValidateTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("a", eq, 0)}, Success: []*pb.RequestOp{opPut("a", "1")}})},
		{"txn compare empty key", rpctypes.ErrGRPCEmptyKey, ValidateTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("", eq, 0)}})},
		{"txn 128 ops", nil, ValidateTxn(&pb.TxnRequest{Success: manyPuts(128), Failure: manyPuts(128)})},
		{"txn 129 ops", rpctypes.ErrGRPCTooManyOps, ValidateTxn(&pb.TxnRequest{Failure: manyPuts(129)})},
		{"txn 129 compares", rpctypes.ErrGRPCTooManyOps, ValidateTxn(&pb.TxnRequest{Compare: func() []*pb.Compare {
			c := make([]*pb.Compare, 129)
			for i := range c {
				c[i] = cmpVersion("a", eq, 0)
			}
			return c
		}()})},
		// A nested txn may use what its parent leaves of the 128.
		{"nested within budget", nil, ValidateTxn(nested(100, 28))},
		{"nested over budget", rpctypes.ErrGRPCTooManyOps, ValidateTxn(nested(100, 29))},
		{"txn too many ops before bad key", rpctypes.ErrGRPCTooManyOps, ValidateTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("", eq, 0)}, Success: manyPuts(129)})},
		{"txn empty op", rpctypes.ErrGRPCKeyNotFound, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{{}}})},
		{"txn nested bad put", rpctypes.ErrGRPCEmptyKey, ValidateTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("", "x")}})}})},
		{"txn put twice", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opPut("a", "2")}})},
		{"txn put and delete same key", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opDel("a", "")}})},
		{"txn delete then put same key", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", ""), opPut("a", "1")}})},
		{"txn put inside deleted range", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c"), opPut("b", "1")}})},
		{"txn put at range end", nil, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c"), opPut("c", "1")}})},
		// etcd takes range_end "\x00" literally here, so it never overlaps.
		{"txn put after from-key delete", nil, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "\x00"), opPut("b", "1")}})},
		{"txn overlapping deletes", nil, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c"), opDel("b", "d"), opDel("b", "")}})},
		{"txn same key in failure branch", nil, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1")}, Failure: []*pb.RequestOp{opPut("a", "2")}})},
		{"nested then/else same key", nil, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("k", "1")}, Failure: []*pb.RequestOp{opPut("k", "2")}})}})},
		{"nested put and outer put", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("k", "1")}}), opPut("k", "2")}})},
		{"nested put under outer delete", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "z"), opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("k", "1")}})}})},
		{"outer put under nested delete", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("k", "")}}), opPut("k", "1")}})},
		{"two nested txns put one key", rpctypes.ErrGRPCDuplicateKey, ValidateTxn(&pb.TxnRequest{Success: []*pb.RequestOp{
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("k", "1")}}),
			opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("k", "2")}}),
		}})},
	}
	for _, tc := range tests {
		sameErr(t, tc.name, tc.got, tc.err)
	}
}

func TestIntervalSet(t *testing.T) {
	var s intervalSet
	s.add(interval{[]byte("b"), []byte("d")})
	s.add(interval{[]byte("c"), []byte("f")})
	s.add(interval{[]byte("x"), []byte("x\x00")})
	s.add(interval{[]byte("q"), []byte("p")}) // inverted: covers nothing
	for key, want := range map[string]bool{"a": false, "b": true, "c": true, "e": true, "f": false, "p": false, "q": false, "x": true, "x\x00": false, "y": false} {
		if got := s.covers([]byte(key)); got != want {
			t.Errorf("covers(%q) = %v, want %v", key, got, want)
		}
	}
}
