package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"go/parser"
	"go/token"
	"io"
	"strings"
	"testing"

	"github.com/cairn-db/cairn/raft"
)

func batchFrame(msgs ...raft.Message) []byte {
	var p []byte
	for i := range msgs {
		enc := raft.AppendMessage(nil, &msgs[i])
		p = binary.LittleEndian.AppendUint32(p, uint32(len(enc)))
		p = append(p, enc...)
	}
	return appendFrame(nil, frameBatch, p)
}

// FuzzReadFrame feeds arbitrary bytes to the frame reader and the batch
// decoder, as a hostile peer would after a valid handshake. They must
// never panic, never allocate beyond the frame limit, and must round-trip
// anything they accept.
//
//	go test -run '^$' -fuzz FuzzReadFrame -fuzztime 60s ./raft/transport
func FuzzReadFrame(f *testing.F) {
	f.Add(batchFrame(raft.Message{Type: raft.MsgHeartbeat, From: 1, To: 2, Term: 3, Commit: 9}))
	f.Add(batchFrame(
		raft.Message{Type: raft.MsgApp, From: 1, To: 2, Entries: []raft.Entry{{Term: 1, Index: 2, Data: []byte("x")}}},
		raft.Message{Type: raft.MsgAppResp, From: 2, To: 1, Reject: true, RejectHint: 4, Context: []byte("c")},
	))
	f.Add(appendFrame(nil, frameSnapChunk, []byte("chunk")))
	f.Add(appendFrame(nil, frameSnapAck, []byte{0, 'n', 'o'}))
	f.Add([]byte{frameBatch, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Add(append(batchFrame(raft.Message{Type: raft.MsgVote, From: 1, To: 2}), 1, 2, 3))
	const limit = 1 << 16
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := frameReader{r: bytes.NewReader(data), max: limit}
		for {
			typ, payload, err := fr.next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrProtocol) &&
					!errors.Is(err, ErrChecksum) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			if len(payload) > limit || cap(fr.buf) > 2*limit {
				t.Fatalf("payload %d, buffer %d over limit %d", len(payload), cap(fr.buf), limit)
			}
			if typ != frameBatch {
				continue
			}
			var msgs []raft.Message
			err = decodeBatch(payload, func(m raft.Message) error {
				msgs = append(msgs, m)
				return nil
			})
			if err != nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("unexpected error class: %v", err)
				}
				continue
			}
			// Accepted batches re-encode to a frame that decodes to the
			// same messages.
			var again []raft.Message
			if err := decodeBatch(batchFrame(msgs...)[frameHeaderSize:], func(m raft.Message) error {
				again = append(again, m)
				return nil
			}); err != nil || len(again) != len(msgs) {
				t.Fatalf("re-decode: %v, %d of %d messages", err, len(again), len(msgs))
			}
			for i := range msgs {
				if msgs[i].String() != again[i].String() {
					t.Fatalf("message %d: %v became %v", i, msgs[i], again[i])
				}
			}
		}
	})
}

// A hello or reply of garbage never panics and only a correct magic parses.
func FuzzHandshake(f *testing.F) {
	h := hello{version: protocolVersion, kind: kindMessages, cluster: 7, from: 1, to: 2}
	hb := h.marshal()
	f.Add(hb[:])
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < helloSize {
			return
		}
		var b [helloSize]byte
		copy(b[:], data)
		h, err := parseHello(&b)
		if err == nil && h.marshal() != b {
			// Reserved bytes are ignored; compare what is meaningful.
			again := h.marshal()
			h2, _ := parseHello(&again)
			if h2 != h {
				t.Fatalf("hello round trip: %+v != %+v", h2, h)
			}
		}
		var r [replySize]byte
		copy(r[:], data)
		parseReply(&r)
	})
}

func TestFrameReaderGrowsWithData(t *testing.T) {
	// A header announcing 16 MiB followed by 10 bytes must not allocate
	// 16 MiB.
	data := append([]byte{frameBatch, 0, 0, 0, 1, 0, 0, 0, 0}, make([]byte, 10)...)
	fr := frameReader{r: bytes.NewReader(data), max: 1 << 30}
	if _, _, err := fr.next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v", err)
	}
	if cap(fr.buf) > 2*growStep {
		t.Fatalf("allocated %d bytes for 10 received", cap(fr.buf))
	}
	// Frames round-trip, and a buffer is reused.
	var stream []byte
	for i := range 5 {
		stream = append(stream, batchFrame(raft.Message{Type: raft.MsgHeartbeat, From: 1, To: 2, Index: uint64(i)})...)
	}
	big := bytes.Repeat([]byte{7}, 300<<10)
	stream = appendFrame(stream, frameSnapChunk, big)
	fr = frameReader{r: bytes.NewReader(stream), max: 1 << 20}
	for i := range 5 {
		typ, p, err := fr.next()
		if err != nil || typ != frameBatch {
			t.Fatal(typ, err)
		}
		decodeBatch(p, func(m raft.Message) error {
			if m.Index != uint64(i) {
				t.Fatalf("index %d want %d", m.Index, i)
			}
			return nil
		})
	}
	if typ, p, err := fr.next(); err != nil || typ != frameSnapChunk || !bytes.Equal(p, big) {
		t.Fatalf("big frame: %d %d %v", typ, len(p), err)
	}
	if _, _, err := fr.next(); err != io.EOF {
		t.Fatalf("err = %v, want EOF at a frame boundary", err)
	}
}

func TestPackageDocumented(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.PackageClauseOnly|parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	if f.Doc == nil || !strings.HasPrefix(f.Doc.Text(), "Package transport ") {
		t.Fatal("doc.go lacks the package comment")
	}
}
