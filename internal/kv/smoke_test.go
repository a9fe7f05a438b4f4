package kv

import "testing"

func TestSmoke(t *testing.T) {
	h := newHarness(t)
	r := h.put("a", "1")
	if r.Header.Revision != 2 {
		t.Fatalf("rev %d", r.Header.Revision)
	}
	h.put("a", "2")
	got := h.get("a")
	sameMsg(t, "a", got, kv("a", "2", 2, 3, 2))
	d := h.del("a", "")
	if d.Deleted != 1 || d.Header.Revision != 4 {
		t.Fatalf("%v", d)
	}
	s2 := NewStore(Options{})
	if err := s2.Restore(bytesReader(snapshotBytes(t, h.s))); err != nil {
		t.Fatal(err)
	}
}
