package kv

import (
	"bytes"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// MaxTxnOps is the most compares, success ops or failure ops one txn may
// hold (etcd's default --max-txn-ops). Nested txns share the budget: a
// nested txn may hold at most MaxTxnOps minus its parent's count, which also
// bounds how deeply txns nest.
const MaxTxnOps = 128

// The Validate functions make the checks etcd's gRPC layer makes before a
// request is proposed, returning the same rpctypes errors. The server calls
// them to reject bad requests early; Apply and Range call them again so
// that a request that skipped them cannot put a replica into a state etcd
// would never reach.

// ValidateRange checks a RangeRequest as etcd does.
func ValidateRange(r *pb.RangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

// ValidatePut checks a PutRequest as etcd does.
func ValidatePut(r *pb.PutRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if r.IgnoreValue && len(r.Value) != 0 {
		return rpctypes.ErrGRPCValueProvided
	}
	if r.IgnoreLease && r.Lease != 0 {
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

// ValidateDeleteRange checks a DeleteRangeRequest as etcd does.
func ValidateDeleteRange(r *pb.DeleteRangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// ValidateAppend checks an AppendRequest: the key must not be empty.
func ValidateAppend(r *AppendRequest) error {
	if r == nil || len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// ValidateTxn checks a TxnRequest as etcd does: the op count limits, every
// nested request, and that no branch writes a key twice (two puts of one
// key, or a put of a key that a delete in the same branch covers). Puts of
// one key in the success and failure branches of the same nested txn are
// allowed, because only one branch runs.
func ValidateTxn(r *pb.TxnRequest) error {
	if err := checkTxn(r, MaxTxnOps); err != nil {
		return err
	}
	// Checked after the counts so a huge request cannot make this slow.
	if _, _, err := checkIntervals(r.GetSuccess()); err != nil {
		return err
	}
	if _, _, err := checkIntervals(r.GetFailure()); err != nil {
		return err
	}
	return nil
}

func checkTxn(r *pb.TxnRequest, maxOps int) error {
	if r == nil {
		return nil
	}
	opc := max(len(r.Compare), len(r.Success), len(r.Failure))
	if opc > maxOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.GetKey()) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, op := range r.Success {
		if err := checkRequestOp(op, maxOps-opc); err != nil {
			return err
		}
	}
	for _, op := range r.Failure {
		if err := checkRequestOp(op, maxOps-opc); err != nil {
			return err
		}
	}
	return nil
}

func checkRequestOp(op *pb.RequestOp, maxOps int) error {
	switch v := op.GetRequest().(type) {
	case *pb.RequestOp_RequestRange:
		return ValidateRange(v.RequestRange)
	case *pb.RequestOp_RequestPut:
		return ValidatePut(v.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return ValidateDeleteRange(v.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return checkTxn(v.RequestTxn, maxOps)
	default:
		// An empty op: etcd answers "key not found".
		return rpctypes.ErrGRPCKeyNotFound
	}
}

// interval is the half-open key interval [start, end) a delete covers.
type interval struct{ start, end []byte }

// intervalSet answers "does any delete cover this key" in O(log n).
type intervalSet struct {
	raw    []interval
	merged []interval // sorted, disjoint; built lazily
}

func (s *intervalSet) add(iv interval) {
	// An empty or inverted interval covers nothing. This includes a
	// range_end of "\x00" ("every key >= key"), which etcd's check also
	// takes literally and so never treats as overlapping a put.
	if bytes.Compare(iv.start, iv.end) < 0 {
		s.raw = append(s.raw, iv)
		s.merged = nil
	}
}

func (s *intervalSet) union(o *intervalSet) {
	for _, iv := range o.raw {
		s.add(iv)
	}
}

func (s *intervalSet) covers(key []byte) bool {
	if len(s.raw) == 0 {
		return false
	}
	if s.merged == nil {
		ivs := append([]interval(nil), s.raw...)
		sort.Slice(ivs, func(i, j int) bool { return bytes.Compare(ivs[i].start, ivs[j].start) < 0 })
		m := ivs[:1]
		for _, iv := range ivs[1:] {
			last := &m[len(m)-1]
			if bytes.Compare(iv.start, last.end) <= 0 {
				if bytes.Compare(iv.end, last.end) > 0 {
					last.end = iv.end
				}
				continue
			}
			m = append(m, iv)
		}
		s.merged = m
	}
	// The last interval starting at or before key is the only candidate.
	i := sort.Search(len(s.merged), func(i int) bool { return bytes.Compare(s.merged[i].start, key) > 0 })
	return i > 0 && bytes.Compare(key, s.merged[i-1].end) < 0
}

// pointEnd is the end of the interval holding only key: key + "\x00".
func pointEnd(key []byte) []byte {
	return append(append(make([]byte, 0, len(key)+1), key...), 0)
}

// checkIntervals returns the keys the ops put and the intervals they
// delete, or ErrGRPCDuplicateKey if a key is written twice. It follows
// etcd's rules: deletes of this level and of nested txns, then puts of
// nested txns, then puts of this level.
func checkIntervals(ops []*pb.RequestOp) (map[string]struct{}, *intervalSet, error) {
	dels := &intervalSet{}
	for _, op := range ops {
		d := op.GetRequestDeleteRange()
		if d == nil {
			continue
		}
		end := d.RangeEnd
		if len(end) == 0 {
			end = pointEnd(d.Key)
		}
		dels.add(interval{d.Key, end})
	}
	puts := map[string]struct{}{}
	for _, op := range ops {
		t := op.GetRequestTxn()
		if t == nil {
			continue
		}
		putsThen, delsThen, err := checkIntervals(t.Success)
		if err != nil {
			return nil, nil, err
		}
		putsElse, delsElse, err := checkIntervals(t.Failure)
		if err != nil {
			return nil, nil, err
		}
		for k := range putsThen {
			if _, dup := puts[k]; dup || dels.covers([]byte(k)) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		for k := range putsElse {
			if _, dup := puts[k]; dup {
				// A key both branches of this txn put is fine: only one runs.
				if _, safe := putsThen[k]; !safe {
					return nil, nil, rpctypes.ErrGRPCDuplicateKey
				}
			}
			if dels.covers([]byte(k)) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		dels.union(delsThen)
		dels.union(delsElse)
	}
	for _, op := range ops {
		p := op.GetRequestPut()
		if p == nil {
			continue
		}
		k := string(p.Key)
		if _, dup := puts[k]; dup || dels.covers(p.Key) {
			return nil, nil, rpctypes.ErrGRPCDuplicateKey
		}
		puts[k] = struct{}{}
	}
	return puts, dels, nil
}
