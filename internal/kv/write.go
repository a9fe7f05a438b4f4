package kv

import (
	"bytes"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// writer is one write transaction: every change it makes carries revision
// begin+1, and the store revision moves to begin+1 on commit if anything
// changed (etcd: one revision per write transaction, however many keys it
// touches). A writer that may fail half-way keeps an undo log so that
// rollback restores the store exactly.
type writer struct {
	s       *Store
	begin   int64
	changes int
	track   bool // keep an undo log
	undo    []undoRec
	bytes   int64 // s.bytes at begin, for rollback
}

type undoRec struct {
	key []byte
	old kvItem
	had bool
}

// beginWrite starts a write transaction; track asks for an undo log, which
// only a txn (the one write that can fail half-way) needs.
func (s *Store) beginWrite(track bool) *writer {
	return &writer{s: s, begin: s.rev, bytes: s.bytes, track: track}
}

// readRev is the revision a read inside the transaction reports: begin,
// or begin+1 once the transaction has changed something (etcd's
// storeTxnWrite.Range).
func (w *writer) readRev() int64 {
	if w.changes > 0 {
		return w.begin + 1
	}
	return w.begin
}

func (w *writer) commit() {
	if w.changes > 0 {
		w.s.rev = w.begin + 1
	}
	w.undo = nil
}

func (w *writer) rollback() {
	for i := len(w.undo) - 1; i >= 0; i-- {
		u := w.undo[i]
		if u.had {
			w.s.tree.replaceOrInsert(u.old)
		} else {
			w.s.tree.delete(u.key)
		}
	}
	w.s.bytes = w.bytes
	w.undo, w.changes = nil, 0
}

// A put is two calls, so that it searches the tree once: startPut finds
// (or makes) the key's slot and returns the item it holds, from which the
// caller works out the new value, lease and response; finishPut then
// stores the new item in the slot. Nothing may use the tree in between.

// startPut returns the tree slot for key and the key's live, visible item
// (cur, if had). The tree may hold an item for the key that is not visible
// (a key of a shard the group no longer serves): it is replaced as if
// absent, and the byte count and undo log follow what the tree really
// held.
func (w *writer) startPut(key []byte) (slot *kvItem, cur kvItem, had bool) {
	slot, inTree := w.s.tree.upsert(key)
	var old kvItem
	if inTree {
		old = *slot
		w.s.bytes -= int64(len(old.key) + len(old.value))
		had = w.s.isVisible(old.key)
		if had {
			cur = old
		}
	}
	if w.track {
		w.undo = append(w.undo, undoRec{key: key, old: old, had: inTree})
	}
	return slot, cur, had
}

// finishPut stores key=value in slot, over cur (the item startPut
// returned, if had), keeping the version and create_revision rules of
// etcd: a new key, or one re-created after a delete, starts at version 1
// with create_revision equal to its mod_revision. The slices must not be
// modified afterwards; keys and values come from freshly decoded commands,
// so nothing else holds them. The item keeps the new key rather than
// cur's equal one: a decoded put's key and value share one allocation
// (see presizePut), and keeping the old key would keep the old value's
// memory alive with it.
func (w *writer) finishPut(slot *kvItem, key, value []byte, lease int64, cur kvItem, had bool) {
	rev := w.begin + 1
	it := kvItem{key: key, value: value, create: rev, mod: rev, version: 1, lease: lease}
	if had {
		it.create = cur.create
		it.version = cur.version + 1
	}
	*slot = it
	w.s.bytes += int64(len(it.key) + len(it.value))
	w.changes++
}

// deleteRange deletes the visible keys in the range and returns them.
func (w *writer) deleteRange(key, end []byte) []kvItem {
	var victims []kvItem
	w.s.scan(key, end, func(it kvItem) bool {
		victims = append(victims, it)
		return true
	})
	for _, it := range victims {
		w.s.tree.delete(it.key)
		w.s.bytes -= int64(len(it.key) + len(it.value))
		if w.track {
			w.undo = append(w.undo, undoRec{key: it.key, old: it, had: true})
		}
		w.changes++
	}
	return victims
}

// putOp executes a put inside a writer (etcd's put), filling in resp and
// hdr, which becomes its header. The lease and ignore_* checks are the
// caller's. prev, if not nil, is where the previous key-value goes if
// p asks for it.
func (w *writer) putOp(p *pb.PutRequest, resp *pb.PutResponse, hdr *pb.ResponseHeader, prev *mvccpb.KeyValue) {
	slot, cur, ok := w.startPut(p.Key)
	value, lease := p.Value, p.Lease
	if p.IgnoreValue && ok {
		value = cur.value
	}
	if p.IgnoreLease && ok {
		lease = cur.lease
	}
	if p.PrevKv && ok {
		if prev == nil {
			prev = &mvccpb.KeyValue{}
		}
		fillKV(prev, cur)
		resp.PrevKv = prev
	}
	w.finishPut(slot, p.Key, value, lease, cur, ok)
	hdr.Revision = w.begin + 1
	resp.Header = hdr
}

// deleteOp executes a delete inside a writer (etcd's deleteRange).
func (w *writer) deleteOp(d *pb.DeleteRangeRequest) *pb.DeleteRangeResponse {
	victims := w.deleteRange(d.Key, d.RangeEnd)
	resp := &pb.DeleteRangeResponse{Deleted: int64(len(victims))}
	if d.PrevKv {
		resp.PrevKvs = toKVs(victims, false)
	}
	// Revision begin+1 if this transaction has changed anything so far,
	// else begin: a delete that deletes nothing writes nothing.
	resp.Header = header(w.readRev())
	return resp
}

// checkPut makes etcd's apply-time checks of a put: ignore_value and
// ignore_lease need an existing key, and a lease must exist (Cairn has no
// leases yet, so any lease is missing). leaseFirst picks etcd's order,
// which differs between a plain Put and a put inside a txn.
func (s *Store) checkPut(p *pb.PutRequest, leaseFirst bool) error {
	checkIgnore := func() error {
		if p.IgnoreValue || p.IgnoreLease {
			if _, ok := s.get(p.Key); !ok {
				return rpctypes.ErrGRPCKeyNotFound
			}
		}
		return nil
	}
	if !leaseFirst {
		if err := checkIgnore(); err != nil {
			return err
		}
	}
	if p.Lease != 0 {
		return rpctypes.ErrGRPCLeaseNotFound
	}
	return checkIgnore()
}

// putResult is a put's Result with the response and header it points to,
// so that applying a put allocates them together (the caller owns all
// three). putResultPrev adds room for the previous key-value, for puts
// that ask for it.
type putResult struct {
	res  Result
	resp pb.PutResponse
	hdr  pb.ResponseHeader
}

type putResultPrev struct {
	putResult
	prev mvccpb.KeyValue
}

func (s *Store) applyPut(p *pb.PutRequest) *Result {
	if err := ValidatePut(p); err != nil {
		return &Result{Err: err}
	}
	if err := s.checkPut(p, true); err != nil {
		return &Result{Err: err}
	}
	var r *putResult
	var prev *mvccpb.KeyValue
	if p.PrevKv {
		rp := &putResultPrev{}
		r, prev = &rp.putResult, &rp.prev
	} else {
		r = &putResult{}
	}
	w := s.beginWrite(false)
	w.putOp(p, &r.resp, &r.hdr, prev)
	w.commit()
	r.res.Put = &r.resp
	return &r.res
}

func (s *Store) applyDeleteRange(d *pb.DeleteRangeRequest) *Result {
	if err := ValidateDeleteRange(d); err != nil {
		return &Result{Err: err}
	}
	w := s.beginWrite(false)
	resp := w.deleteOp(d)
	w.commit()
	return &Result{DeleteRange: resp}
}

func (s *Store) applyAppend(a *AppendRequest) *Result {
	if err := ValidateAppend(a); err != nil {
		return &Result{Err: err}
	}
	w := s.beginWrite(false)
	var value []byte
	slot, cur, ok := w.startPut(a.Key)
	lease := int64(0)
	if ok {
		// A fresh slice: the old value may be shared with a snapshot or a
		// cached response and must never change.
		value = make([]byte, 0, len(cur.value)+len(a.Value))
		value = append(append(value, cur.value...), a.Value...)
		lease = cur.lease
	} else {
		value = a.Value
	}
	w.finishPut(slot, a.Key, value, lease, cur, ok)
	w.commit()
	return &Result{Append: &AppendResponse{Revision: w.begin + 1, Length: int64(len(value))}}
}

// applyTxn runs a txn the way etcd does: all compares, including those of
// nested txns on the chosen path, are evaluated against the state before
// the txn; then the chosen ops run in order, each seeing the writes before
// it. An error (a missing key for ignore_value, a lease, a read at an
// unavailable revision) rolls the whole txn back.
func (s *Store) applyTxn(r *pb.TxnRequest) *Result {
	if err := ValidateTxn(r); err != nil {
		return &Result{Err: err}
	}
	path := s.comparePath(r, nil)
	w := s.beginWrite(true)
	resp, _, err := w.execTxn(r, path)
	if err != nil {
		w.rollback()
		return &Result{Err: err}
	}
	w.commit()
	resp.Header.Revision = s.rev
	return &Result{Txn: resp}
}

// comparePath evaluates the compares of r and, depth first, of the nested
// txns on the branch they choose, appending one outcome per txn (etcd's
// compareToPath).
func (s *Store) comparePath(r *pb.TxnRequest, path []bool) []bool {
	ok := true
	for _, c := range r.Compare {
		if !s.compare(c) {
			ok = false
			break
		}
	}
	path = append(path, ok)
	for _, op := range branch(r, ok) {
		if t := op.GetRequestTxn(); t != nil {
			path = s.comparePath(t, path)
		}
	}
	return path
}

func branch(r *pb.TxnRequest, succeeded bool) []*pb.RequestOp {
	if succeeded {
		return r.Success
	}
	return r.Failure
}

// execTxn runs the branch path[0] chose and returns the unused rest of
// path. A nested txn's response header carries no revision, as in etcd.
func (w *writer) execTxn(r *pb.TxnRequest, path []bool) (*pb.TxnResponse, []bool, error) {
	ok := path[0]
	path = path[1:]
	ops := branch(r, ok)
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}, Succeeded: ok, Responses: make([]*pb.ResponseOp, len(ops))}
	for i, op := range ops {
		var out pb.ResponseOp
		switch v := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr := v.RequestRange
			switch {
			case rr.Revision > w.begin:
				return nil, nil, rpctypes.ErrGRPCFutureRev
			case rr.Revision > 0 && (rr.Revision < w.begin || w.changes > 0):
				// At begin after a write of this txn, etcd would read the
				// state before the txn: history Cairn does not keep.
				return nil, nil, errHistoricalRead(rr.Revision, w.readRev())
			}
			out.Response = &pb.ResponseOp_ResponseRange{ResponseRange: w.s.rangeLocked(rr, w.readRev(), nil)}
		case *pb.RequestOp_RequestPut:
			if err := w.s.checkPut(v.RequestPut, false); err != nil {
				return nil, nil, err
			}
			put := &pb.PutResponse{}
			w.putOp(v.RequestPut, put, &pb.ResponseHeader{}, nil)
			out.Response = &pb.ResponseOp_ResponsePut{ResponsePut: put}
		case *pb.RequestOp_RequestDeleteRange:
			out.Response = &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: w.deleteOp(v.RequestDeleteRange)}
		case *pb.RequestOp_RequestTxn:
			sub, rest, err := w.execTxn(v.RequestTxn, path)
			if err != nil {
				return nil, nil, err
			}
			path = rest
			out.Response = &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}
		}
		resp.Responses[i] = &out
	}
	return resp, path, nil
}

// compare evaluates one txn compare against the current state (etcd's
// applyCompare): every key in the range must satisfy it; a missing key
// compares as zero revisions and version, except that a value compare on a
// missing key always fails.
func (s *Store) compare(c *pb.Compare) bool {
	matched := false
	ok := true
	s.scan(c.Key, c.RangeEnd, func(it kvItem) bool {
		matched = true
		ok = compareItem(c, it)
		return ok
	})
	if !matched {
		if c.Target == pb.Compare_VALUE {
			return false
		}
		return compareItem(c, kvItem{})
	}
	return ok
}

func compareItem(c *pb.Compare, it kvItem) bool {
	var res int
	switch c.Target {
	case pb.Compare_VALUE:
		res = bytes.Compare(it.value, c.GetValue())
	case pb.Compare_CREATE:
		res = cmpInt(it.create, c.GetCreateRevision())
	case pb.Compare_MOD:
		res = cmpInt(it.mod, c.GetModRevision())
	case pb.Compare_VERSION:
		res = cmpInt(it.version, c.GetVersion())
	case pb.Compare_LEASE:
		res = cmpInt(it.lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return res == 0
	case pb.Compare_NOT_EQUAL:
		return res != 0
	case pb.Compare_GREATER:
		return res > 0
	case pb.Compare_LESS:
		return res < 0
	}
	return true
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// fillKV sets kv to a copy of it that the caller owns, with the key and
// the value in one allocation. An empty value stays nil, as in toKVs.
func fillKV(kv *mvccpb.KeyValue, it kvItem) {
	buf := make([]byte, len(it.key)+len(it.value))
	n := copy(buf, it.key)
	copy(buf[n:], it.value)
	*kv = mvccpb.KeyValue{
		Key:            buf[:n:n],
		CreateRevision: it.create,
		ModRevision:    it.mod,
		Version:        it.version,
		Lease:          it.lease,
	}
	if len(it.value) > 0 {
		kv.Value = buf[n:]
	}
}

// toKVs converts items into KeyValues the caller owns, with all keys and
// values in one allocation.
func toKVs(items []kvItem, keysOnly bool) []*mvccpb.KeyValue {
	if len(items) == 0 {
		return nil
	}
	n := 0
	for _, it := range items {
		n += len(it.key)
		if !keysOnly {
			n += len(it.value)
		}
	}
	buf := make([]byte, 0, n)
	kvs := make([]mvccpb.KeyValue, len(items))
	out := make([]*mvccpb.KeyValue, len(items))
	for i, it := range items {
		kv := &kvs[i]
		start := len(buf)
		buf = append(buf, it.key...)
		kv.Key = buf[start:len(buf):len(buf)]
		if !keysOnly && len(it.value) > 0 {
			start = len(buf)
			buf = append(buf, it.value...)
			kv.Value = buf[start:len(buf):len(buf)]
		}
		kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease = it.create, it.mod, it.version, it.lease
		out[i] = kv
	}
	return out
}
