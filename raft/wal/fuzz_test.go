package wal

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"
)

// FuzzDecodeRecord checks that the record decoder never panics, never
// claims more bytes than it was given, and never returns a record whose
// checksum does not match.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, Record{Type: 1, Index: 5, Data: []byte("hello")}))
	f.Add(appendRecord(nil, Record{Type: 2}))
	f.Add(make([]byte, 20))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, n, err := decodeRecord(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n < recordHeaderSize || n > len(b) {
			t.Fatalf("n=%d for %d bytes", n, len(b))
		}
		if rec.Type == 0 {
			t.Fatal("decoded a record of type 0")
		}
		if got, want := crc32.Checksum(b[8:n], castagnoli), binary.LittleEndian.Uint32(b[4:]); got != want {
			t.Fatalf("returned a record whose checksum does not match: %08x != %08x", got, want)
		}
		if enc := appendRecord(nil, rec); !bytes.Equal(enc, b[:n]) {
			// Only a non-minimal index varint can re-encode differently.
			idx, k := binary.Uvarint(b[recordHeaderSize:n])
			if idx != rec.Index || k <= 0 || !bytes.Equal(rec.Data, b[recordHeaderSize+k:n]) {
				t.Fatalf("re-encoding %+v gives %x, input %x", rec, enc, b[:n])
			}
		}
	})
}
