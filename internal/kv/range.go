package kv

import (
	"bytes"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Range reads the current state. It is safe to call concurrently with
// Apply and with other Ranges. The response owns all its memory. Reads at
// a revision above the current one fail with rpctypes.ErrGRPCFutureRev,
// reads at an older revision with a gRPC Unimplemented error (only the
// latest version of each key is kept); a revision of 0 or below, or equal
// to the current one, reads the current state.
func (s *Store) Range(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return s.RangeFiltered(r, nil)
}

// RangeFiltered is Range over a store in which the keys for which keep
// returns false do not exist, on top of the SetVisible predicate: they are
// not returned, not counted, do not use up the limit and do not set More.
// A nil keep makes it Range. keep is called under the store's read lock,
// possibly from several goroutines at once, so it must be a pure function
// of the key that does not call back into the store.
func (s *Store) RangeFiltered(r *pb.RangeRequest, keep func(key []byte) bool) (*pb.RangeResponse, error) {
	if err := ValidateRange(r); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case r.Revision > s.rev:
		return nil, rpctypes.ErrGRPCFutureRev
	case r.Revision > 0 && r.Revision < s.rev:
		return nil, errHistoricalRead(r.Revision, s.rev)
	}
	return s.rangeLocked(r, s.rev, keep), nil
}

// scan calls fn for each live, visible item in the range of key and end,
// in key order, until fn returns false. An empty end means the single key;
// end "\x00" means every key >= key; otherwise the range is [key, end).
// Keys hidden by SetVisible are skipped as if they did not exist.
func (s *Store) scan(key, end []byte, fn func(kvItem) bool) {
	if vis := s.visible; vis != nil {
		inner := fn
		fn = func(it kvItem) bool { return !vis(it.key) || inner(it) }
	}
	switch {
	case len(end) == 0:
		if it, ok := s.tree.get(key); ok {
			fn(it)
		}
	case len(end) == 1 && end[0] == 0:
		s.tree.ascendFrom(key, fn)
	default:
		if bytes.Compare(key, end) < 0 {
			s.tree.ascendRange(key, end, fn)
		}
	}
}

// rangeLocked answers a validated range request against the current tree,
// following etcd's executeRange step by step so that limit, count, more,
// the revision filters and sorting combine exactly as they do there:
//
//   - count is the number of keys in the range, before limit and before
//     the revision filters;
//   - with no sort order and no filters only limit+1 keys are read (the
//     extra one decides more); otherwise all are read, filtered, sorted and
//     then cut to limit. (So a sort_target other than KEY with sort_order
//     NONE sorts only the first limit+1 keys, as etcd does.)
//
// Keys for which keep (if not nil) returns false are skipped before any of
// this, as if they did not exist.
func (s *Store) rangeLocked(r *pb.RangeRequest, rev int64, keep func([]byte) bool) *pb.RangeResponse {
	resp := &pb.RangeResponse{Header: header(rev)}
	filtered := r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
	// Read up to limit+1 items, or all of them.
	fetchAll := r.Limit <= 0 || r.SortOrder != pb.RangeRequest_NONE || filtered
	var items []kvItem
	count := 0
	s.scan(r.Key, r.RangeEnd, func(it kvItem) bool {
		if keep != nil && !keep(it.key) {
			return true
		}
		count++
		if !r.CountOnly && (fetchAll || int64(len(items)) <= r.Limit) {
			items = append(items, it)
		}
		return true
	})
	resp.Count = int64(count)
	if r.CountOnly {
		return resp
	}
	if filtered {
		keep := items[:0]
		for _, it := range items {
			if (r.MaxModRevision != 0 && it.mod > r.MaxModRevision) ||
				(r.MinModRevision != 0 && it.mod < r.MinModRevision) ||
				(r.MaxCreateRevision != 0 && it.create > r.MaxCreateRevision) ||
				(r.MinCreateRevision != 0 && it.create < r.MinCreateRevision) {
				continue
			}
			keep = append(keep, it)
		}
		items = keep
	}
	sortItems(items, r.SortOrder, r.SortTarget)
	if r.Limit > 0 && len(items) > int(r.Limit) {
		items = items[:r.Limit]
		resp.More = true
	}
	resp.Kvs = toKVs(items, r.KeysOnly)
	return resp
}

// sortItems sorts key-ordered items as etcd does: a target other than KEY
// with order NONE means ASCEND; KEY ASCEND (and KEY NONE) is the order the
// items are already in. The sort is stable, so ties stay in key order
// (etcd's sort is not stable; its tie order is unspecified).
func sortItems(items []kvItem, order pb.RangeRequest_SortOrder, target pb.RangeRequest_SortTarget) {
	if target != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	if order == pb.RangeRequest_NONE || (target == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND) {
		return
	}
	var cmp func(a, b *kvItem) int
	switch target {
	case pb.RangeRequest_KEY:
		cmp = func(a, b *kvItem) int { return bytes.Compare(a.key, b.key) }
	case pb.RangeRequest_VERSION:
		cmp = func(a, b *kvItem) int { return cmpInt(a.version, b.version) }
	case pb.RangeRequest_CREATE:
		cmp = func(a, b *kvItem) int { return cmpInt(a.create, b.create) }
	case pb.RangeRequest_MOD:
		cmp = func(a, b *kvItem) int { return cmpInt(a.mod, b.mod) }
	case pb.RangeRequest_VALUE:
		cmp = func(a, b *kvItem) int { return bytes.Compare(a.value, b.value) }
	default:
		return // rejected by ValidateRange
	}
	if order == pb.RangeRequest_DESCEND {
		sort.SliceStable(items, func(i, j int) bool { return cmp(&items[i], &items[j]) > 0 })
	} else {
		sort.SliceStable(items, func(i, j int) bool { return cmp(&items[i], &items[j]) < 0 })
	}
}
