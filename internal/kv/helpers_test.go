package kv

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// harness applies commands to a store at consecutive log indexes.
type harness struct {
	t     testing.TB
	s     *Store
	index uint64
}

func newHarness(t testing.TB) *harness {
	return &harness{t: t, s: NewStore(Options{})}
}

func (h *harness) apply(c *Command) *Result {
	h.t.Helper()
	h.index++
	return h.s.Apply(h.index, c.Marshal())
}

// must applies c and fails the test on a request error.
func (h *harness) must(c *Command) *Result {
	h.t.Helper()
	r := h.apply(c)
	if r.Err != nil {
		h.t.Fatalf("apply %v: %v", describe(c), r.Err)
	}
	return r
}

func (h *harness) put(key, value string) *pb.PutResponse {
	h.t.Helper()
	return h.must(&Command{Put: &pb.PutRequest{Key: []byte(key), Value: []byte(value)}}).Put
}

func (h *harness) del(key, end string) *pb.DeleteRangeResponse {
	h.t.Helper()
	return h.must(&Command{DeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: bytesOrNil(end)}}).DeleteRange
}

func (h *harness) get(key string) *mvccpb.KeyValue {
	h.t.Helper()
	resp, err := h.s.Range(&pb.RangeRequest{Key: []byte(key)})
	if err != nil {
		h.t.Fatalf("range %q: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}

func bytesOrNil(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

func describe(c *Command) string {
	switch {
	case c.Put != nil:
		return "put " + c.Put.String()
	case c.DeleteRange != nil:
		return "delete " + c.DeleteRange.String()
	case c.Txn != nil:
		return "txn " + c.Txn.String()
	case c.Append != nil:
		return fmt.Sprintf("append %q %q", c.Append.Key, c.Append.Value)
	}
	return "empty command"
}

// kv builds an expected KeyValue.
func kv(key, value string, create, mod, version int64) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(key), Value: bytesOrNil(value), CreateRevision: create, ModRevision: mod, Version: version}
}

type sizedMarshaler interface{ Marshal() ([]byte, error) }

// sameMsg compares protobuf messages by their deterministic wire bytes.
func sameMsg(t testing.TB, what string, got, want sizedMarshaler) {
	t.Helper()
	g, err := got.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	w, err := want.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}

func sameErr(t testing.TB, what string, got, want error) {
	t.Helper()
	if want == nil {
		if got != nil {
			t.Errorf("%s: unexpected error %v", what, got)
		}
		return
	}
	if !errors.Is(got, want) {
		t.Errorf("%s: error %v, want %v", what, got, want)
	}
}

// snapshotBytes returns the store's snapshot.
func snapshotBytes(t testing.TB, s *Store) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
