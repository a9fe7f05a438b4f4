package raft_test

import (
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

// fullMessage returns a message of type t with every field set to a
// distinct non-zero value, including entries of both types and a snapshot.
func fullMessage(t raft.MessageType) raft.Message {
	return raft.Message{
		Type:    t,
		To:      2,
		From:    math.MaxUint64,
		Term:    7,
		LogTerm: 6,
		Index:   1 << 40,
		Entries: []raft.Entry{
			{Term: 6, Index: 1<<40 + 1, Type: raft.EntryNormal, Data: []byte("put k v")},
			{Term: 7, Index: 1<<40 + 2, Type: raft.EntryConfChange,
				Data: raft.ConfChange{Type: raft.ConfChangeAddLearner, NodeID: 9, Context: []byte("10.0.0.9:7000")}.Marshal()},
			{Term: 7, Index: 1<<40 + 3, Type: raft.EntryNormal, Data: []byte{0}},
		},
		Commit:     1<<40 - 3,
		Reject:     true,
		RejectHint: 12345,
		Snapshot: &raft.Snapshot{
			Meta: raft.SnapshotMeta{Index: 99, Term: 5, ConfState: raft.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{math.MaxUint64}}},
			Data: []byte("state machine image"),
		},
		Context: []byte("read-ctx\x00\xff"),
	}
}

var allMessageTypes = []raft.MessageType{
	raft.MsgHup, raft.MsgProp, raft.MsgApp, raft.MsgAppResp, raft.MsgVote, raft.MsgVoteResp,
	raft.MsgPreVote, raft.MsgPreVoteResp, raft.MsgHeartbeat, raft.MsgHeartbeatResp, raft.MsgSnap,
	raft.MsgReadIndex, raft.MsgReadIndexResp, raft.MsgTransferLeader, raft.MsgTimeoutNow,
	raft.MsgSnapStatus, raft.MsgUnreachable, raft.MsgCheckQuorum, raft.MsgBeat,
}

func TestMessageRoundTrip(t *testing.T) {
	for _, typ := range allMessageTypes {
		t.Run(typ.String(), func(t *testing.T) {
			for _, m := range []raft.Message{fullMessage(typ), {Type: typ}} {
				b := raft.AppendMessage([]byte("prefix"), &m)
				got, err := raft.UnmarshalMessage(b[len("prefix"):])
				if err != nil {
					t.Fatalf("UnmarshalMessage(%v): %v", m, err)
				}
				if !reflect.DeepEqual(got, m) {
					t.Fatalf("round trip:\n got %#v\nwant %#v", got, m)
				}
				if n := raft.MessageSize(&m); n < len(b)-len("prefix") {
					t.Errorf("MessageSize %d < encoded size %d", n, len(b)-len("prefix"))
				}
			}
		})
	}
}

// TestMessageRoundTripEmptyValues pins down how absent values decode: an
// empty byte string or list decodes as nil, and a snapshot with no data
// as a non-nil snapshot.
func TestMessageRoundTripEmptyValues(t *testing.T) {
	m := raft.Message{Type: raft.MsgSnap, Context: []byte{}, Entries: []raft.Entry{{Data: []byte{}}}, Snapshot: &raft.Snapshot{}}
	got, err := raft.UnmarshalMessage(raft.AppendMessage(nil, &m))
	if err != nil {
		t.Fatal(err)
	}
	want := raft.Message{Type: raft.MsgSnap, Entries: []raft.Entry{{}}, Snapshot: &raft.Snapshot{}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %#v, want %#v", got, want)
	}
}

// TestUnmarshalMessageRejectsDamage checks that every truncation and
// every single-byte trailing addition of a valid encoding is refused.
func TestUnmarshalMessageRejectsDamage(t *testing.T) {
	m := fullMessage(raft.MsgApp)
	b := raft.AppendMessage(nil, &m)
	for i := range len(b) {
		if _, err := raft.UnmarshalMessage(b[:i]); !errors.Is(err, raft.ErrCorrupt) {
			t.Fatalf("prefix of %d/%d bytes: err %v, want ErrCorrupt", i, len(b), err)
		}
	}
	if _, err := raft.UnmarshalMessage(append(b, 0)); !errors.Is(err, raft.ErrCorrupt) {
		t.Fatalf("trailing byte: err %v, want ErrCorrupt", err)
	}
	bad := append([]byte{2}, b[1:]...) // version 2
	if _, err := raft.UnmarshalMessage(bad); !errors.Is(err, raft.ErrCorrupt) {
		t.Fatalf("unknown version: err %v, want ErrCorrupt", err)
	}
	bad = append([]byte{1, 200}, b[2:]...) // message type 200
	if _, err := raft.UnmarshalMessage(bad); !errors.Is(err, raft.ErrCorrupt) {
		t.Fatalf("unknown type: err %v, want ErrCorrupt", err)
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for _, e := range []raft.Entry{
		{},
		{Term: 1, Index: 1, Type: raft.EntryNormal, Data: []byte("x")},
		{Term: math.MaxUint64, Index: math.MaxUint64, Type: raft.EntryConfChange,
			Data: raft.ConfChange{Type: raft.ConfChangeRemove, NodeID: 3}.Marshal()},
	} {
		b := raft.AppendEntry(nil, &e)
		got, err := raft.DecodeEntry(b)
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Fatalf("DecodeEntry: %#v, %v; want %#v", got, err, e)
		}
		if _, err := raft.DecodeEntry(b[:len(b)-1]); !errors.Is(err, raft.ErrCorrupt) {
			t.Fatalf("truncated entry: err %v, want ErrCorrupt", err)
		}
	}
	// Entry type 2 does not exist.
	if _, err := raft.DecodeEntry([]byte{1, 1, 1, 2, 0}); !errors.Is(err, raft.ErrCorrupt) {
		t.Fatalf("unknown entry type: err %v, want ErrCorrupt", err)
	}
}

func TestHardStateRoundTrip(t *testing.T) {
	for _, hs := range []raft.HardState{{}, {Term: 3, Vote: 2, Commit: 17}, {Term: math.MaxUint64, Vote: math.MaxUint64, Commit: math.MaxUint64}} {
		b := raft.AppendHardState(nil, hs)
		got, err := raft.DecodeHardState(b)
		if err != nil || got != hs {
			t.Fatalf("DecodeHardState: %+v, %v; want %+v", got, err, hs)
		}
		if _, err := raft.DecodeHardState(append(b, 0)); !errors.Is(err, raft.ErrCorrupt) {
			t.Fatalf("trailing byte: err %v, want ErrCorrupt", err)
		}
	}
}

func TestSnapshotMetaRoundTrip(t *testing.T) {
	for _, m := range []raft.SnapshotMeta{
		{},
		{Index: 10, Term: 2, ConfState: raft.ConfState{Voters: []uint64{1, 2, 3}}},
		{Index: math.MaxUint64, Term: 9, ConfState: raft.ConfState{Voters: []uint64{4}, Learners: []uint64{5, 6}}},
	} {
		b := raft.AppendSnapshotMeta(nil, m)
		got, err := raft.DecodeSnapshotMeta(b)
		if err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("DecodeSnapshotMeta: %#v, %v; want %#v", got, err, m)
		}
		if _, err := raft.DecodeSnapshotMeta(b[:len(b)-1]); !errors.Is(err, raft.ErrCorrupt) {
			t.Fatalf("truncated: err %v, want ErrCorrupt", err)
		}
	}
}

func TestConfChangeRoundTrip(t *testing.T) {
	for _, cc := range []raft.ConfChange{
		{Type: raft.ConfChangeAddVoter, NodeID: 1},
		{Type: raft.ConfChangeAddLearner, NodeID: math.MaxUint64, Context: []byte("addr")},
		{Type: raft.ConfChangeRemove, NodeID: 7},
	} {
		got, err := raft.UnmarshalConfChange(cc.Marshal())
		if err != nil || !reflect.DeepEqual(got, cc) {
			t.Fatalf("UnmarshalConfChange: %#v, %v; want %#v", got, err, cc)
		}
	}
	bad := raft.ConfChange{Type: raft.ConfChangeRemove + 1, NodeID: 1}.Marshal()
	if _, err := raft.UnmarshalConfChange(bad); !errors.Is(err, raft.ErrCorrupt) {
		t.Fatalf("unknown change type: err %v, want ErrCorrupt", err)
	}
}

// FuzzUnmarshalMessage checks that decoding arbitrary bytes never panics
// and that any message that decodes re-encodes to bytes that decode to
// the same message.
func FuzzUnmarshalMessage(f *testing.F) {
	for _, typ := range allMessageTypes {
		m := fullMessage(typ)
		f.Add(raft.AppendMessage(nil, &m))
		f.Add(raft.AppendMessage(nil, &raft.Message{Type: typ, To: 1, From: 2, Term: 3}))
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := raft.UnmarshalMessage(b)
		if err != nil {
			if !errors.Is(err, raft.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		enc := raft.AppendMessage(nil, &m)
		again, err := raft.UnmarshalMessage(enc)
		if err != nil {
			t.Fatalf("re-encoding of a decoded message does not decode: %v\nmessage %#v", err, m)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encoded message differs:\nfirst  %#v\nsecond %#v", m, again)
		}
		if len(enc) > len(b) {
			// Re-encoding is canonical and never longer than the input.
			t.Fatalf("re-encoding is %d bytes, input was %d", len(enc), len(b))
		}
	})
}

// TestMessageSizeIsUpperBound checks MessageSize's documented promise, an
// upper bound on the encoded size, for typical messages and for messages
// whose numbers take the most varint bytes.
func TestMessageSizeIsUpperBound(t *testing.T) {
	for _, typ := range allMessageTypes {
		m := fullMessage(typ)
		if n, enc := raft.MessageSize(&m), len(raft.AppendMessage(nil, &m)); n < enc {
			t.Errorf("%s: MessageSize %d < encoded size %d", typ, n, enc)
		}
	}
	const maxU = math.MaxUint64
	m := raft.Message{
		Type: raft.MsgHeartbeat, To: maxU, From: maxU, Term: maxU, LogTerm: maxU, Index: maxU, Commit: maxU,
		Reject: true, RejectHint: maxU, Context: make([]byte, 200),
	}
	if n, enc := raft.MessageSize(&m), len(raft.AppendMessage(nil, &m)); n < enc {
		t.Errorf("max-valued heartbeat: MessageSize %d < encoded size %d", n, enc)
	}
}
