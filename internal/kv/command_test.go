package kv

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/status"
)

func TestCommandRoundTrip(t *testing.T) {
	cmds := []*Command{
		{},
		{ClientID: 1<<64 - 1, Seq: 1, Time: -5},
		{Time: 1 << 62, Put: &pb.PutRequest{Key: []byte("k"), Value: []byte("v"), PrevKv: true}},
		{Put: &pb.PutRequest{}},
		{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, PrevKv: true}},
		{Txn: &pb.TxnRequest{Compare: []*pb.Compare{cmpValue("a", eq, "x")}, Success: []*pb.RequestOp{opPut("a", "b"), opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opDel("q", "")}})}}},
		{Append: &AppendRequest{Key: []byte("log"), Value: []byte("line\n")}},
		{Append: &AppendRequest{}},
		{ClientID: 3, Seq: 9, Put: &pb.PutRequest{Key: []byte("k")}, Append: &AppendRequest{Key: []byte("k")}},
	}
	for _, c := range cmds {
		b := c.Marshal()
		got, err := UnmarshalCommand(b)
		if err != nil {
			t.Fatalf("%s: %v", describe(c), err)
		}
		if !bytes.Equal(got.Marshal(), b) {
			t.Errorf("%s: round trip changed the encoding", describe(c))
		}
		if got.ClientID != c.ClientID || got.Seq != c.Seq || got.Time != c.Time ||
			(got.Put == nil) != (c.Put == nil) || (got.DeleteRange == nil) != (c.DeleteRange == nil) ||
			(got.Txn == nil) != (c.Txn == nil) || (got.Append == nil) != (c.Append == nil) {
			t.Errorf("round trip: got %+v, want %+v", got, c)
		}
	}
}

func TestUnmarshalCommandErrors(t *testing.T) {
	good := (&Command{ClientID: 1, Seq: 2, Put: &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}}).Marshal()
	bad := map[string][]byte{
		"empty":             nil,
		"unknown version":   {2, 0, 0, 0},
		"truncated varint":  {1, 0x80},
		"unknown tag":       {1, 0, 0, 0, 9, 0},
		"section too long":  {1, 0, 0, 0, tagPut, 5, 1},
		"bad protobuf":      {1, 0, 0, 0, tagPut, 2, 0xff, 0xff},
		"duplicate section": append(append([]byte(nil), good...), good[4:]...),
		"bad append":        {1, 0, 0, 0, tagAppend, 1, 9},
	}
	for name, b := range bad {
		if _, err := UnmarshalCommand(b); !errors.Is(err, ErrCorruptCommand) {
			t.Errorf("%s: error %v, want ErrCorruptCommand", name, err)
		}
	}
	for n := 0; n < len(good); n++ {
		if _, err := UnmarshalCommand(good[:n]); err == nil && n < 4 {
			t.Errorf("prefix of %d bytes decoded", n)
		}
	}
}

func TestResultRoundTrip(t *testing.T) {
	s, _ := busyStore(t, 11, 10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		r := s.Apply(uint64(100+i), randomCommand(rng, 0).Marshal())
		b := encodeResult(r)
		got, err := decodeResult(b)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(encodeResult(got), b) {
			t.Fatalf("result round trip differs: %+v", r)
		}
		if _, isStatus := status.FromError(r.Err); r.Err != nil && isStatus && !errors.Is(got.Err, r.Err) {
			t.Fatalf("decoded error %v does not match %v", got.Err, r.Err)
		}
	}
}

// FuzzUnmarshalCommand checks that no input makes UnmarshalCommand or
// Apply panic, that errors wrap ErrCorruptCommand, and that whatever
// decodes re-encodes stably.
func FuzzUnmarshalCommand(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 20; i++ {
		f.Add(randomCommand(rng, int64(i)).Marshal())
	}
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, tagTxn, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := UnmarshalCommand(data)
		if err != nil {
			if !errors.Is(err, ErrCorruptCommand) {
				t.Fatalf("error %v does not wrap ErrCorruptCommand", err)
			}
		} else {
			b := c.Marshal()
			c2, err := UnmarshalCommand(b)
			if err != nil {
				t.Fatalf("re-encoded command does not decode: %v", err)
			}
			if !bytes.Equal(c2.Marshal(), b) {
				t.Fatal("encoding is not stable")
			}
		}
		s := NewStore(Options{})
		s.Apply(1, (&Command{Put: &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}}).Marshal())
		r := s.Apply(2, data)
		if r == nil {
			t.Fatal("nil result")
		}
		if r.Err != nil && s.Revision() != 2 {
			t.Fatalf("failed entry changed the revision: %v", r.Err)
		}
		var buf bytes.Buffer
		if err := s.Snapshot(&buf); err != nil {
			t.Fatal(err)
		}
		if err := NewStore(Options{}).Restore(&buf); err != nil {
			t.Fatalf("snapshot after entry does not restore: %v", err)
		}
	})
}

// TestPresizePut checks that decoding a put into the buffers presizePut
// prepares gives what the generated decoder gives on its own (nil and empty
// fields included), on well-formed, repeated-field, unusual and truncated
// encodings, and that the key and value never overlap.
func TestPresizePut(t *testing.T) {
	enc := func(p *pb.PutRequest) []byte {
		b, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	full := enc(&pb.PutRequest{Key: []byte("key"), Value: bytes.Repeat([]byte("v"), 300), Lease: 7, PrevKv: true, IgnoreLease: true})
	bodies := [][]byte{
		nil,
		full,
		enc(&pb.PutRequest{Key: []byte("k")}),
		enc(&pb.PutRequest{Value: []byte("v")}),
		{0x0a, 1, 'k', 0x12, 0}, // an explicitly empty value
		{0x0a, 0, 0x12, 1, 'v'}, // an explicitly empty key
		cat(full, enc(&pb.PutRequest{Key: []byte("a-longer-key"), Value: []byte("short")})), // repeated fields: the last wins
		cat(enc(&pb.PutRequest{Key: []byte("a-longer-key"), Value: []byte("long value")}), enc(&pb.PutRequest{Key: []byte("k"), Value: []byte("v")})),
		cat(full, []byte{0x12, 0}),                      // a value, then an empty one
		cat(full, []byte{0x3d, 1, 2, 3, 4}),             // an unknown fixed32 field
		cat([]byte{0x39, 1, 2, 3, 4, 5, 6, 7, 8}, full), // an unknown fixed64 field first
		cat(full, []byte{0x52, 3, 'x', 'y', 'z'}),       // an unknown length-delimited field
		{0x08, 'k'},  // the key with the wrong wire type
		{0x0a, 0x80}, // a truncated length
	}
	for i := range full {
		bodies = append(bodies, full[:i])
	}
	for i, body := range bodies {
		var want, got pb.PutRequest
		werr := want.Unmarshal(body)
		presizePut(&got, body)
		gerr := got.Unmarshal(body)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("body %d (%x): error %v, want %v", i, body, gerr, werr)
		}
		if werr != nil {
			continue
		}
		if !bytes.Equal(got.Key, want.Key) || (got.Key == nil) != (want.Key == nil) ||
			!bytes.Equal(got.Value, want.Value) || (got.Value == nil) != (want.Value == nil) {
			t.Fatalf("body %d (%x): decoded key %q (nil %v) value %q (nil %v), want %q (nil %v) %q (nil %v)", i, body,
				got.Key, got.Key == nil, got.Value, got.Value == nil, want.Key, want.Key == nil, want.Value, want.Value == nil)
		}
		if got.Lease != want.Lease || got.PrevKv != want.PrevKv || got.IgnoreValue != want.IgnoreValue ||
			got.IgnoreLease != want.IgnoreLease || !bytes.Equal(got.XXX_unrecognized, want.XXX_unrecognized) {
			t.Fatalf("body %d (%x): decoded %v, want %v", i, body, &got, &want)
		}
		value := append([]byte(nil), got.Value...)
		_ = append(got.Key, bytes.Repeat([]byte{'!'}, 512)...) // must not write into the value
		if !bytes.Equal(got.Value, value) {
			t.Fatalf("body %d: appending to the key changed the value", i)
		}
	}
}
