package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// ErrCorrupt is returned, wrapped with the file name and byte offset, when
// durable data fails its checksum or does not parse.
var ErrCorrupt = errors.New("wal: corrupt data")

// errShort means the buffer ends inside a record: a torn write if it is at
// the end of the last segment.
var errShort = errors.New("wal: truncated record")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record framing, all integers little-endian:
//
//	length u32   number of body bytes
//	crc    u32   CRC-32C (Castagnoli) of the type byte followed by the body
//	type   u8    never 0, so zero-filled space never parses as a record
//	body         uvarint(Index) followed by Data
//
// The index is in the body, under the checksum, so that on reopening the
// WAL knows the highest Raft index in each segment without decoding any
// payload; it needs that to name new segments and to release old ones.
const (
	recordHeaderSize = 9
	// maxRecordBody bounds a length read from disk, so a garbage length
	// cannot make recovery allocate or scan gigabytes.
	maxRecordBody = 1 << 30
)

// Record is one WAL record.
type Record struct {
	// Type is chosen by the user of the WAL; 0 is reserved.
	Type uint8
	// Index is the highest Raft log index the record refers to, or 0. The
	// WAL uses it only to decide which segments ReleaseTo may delete.
	Index uint64
	// Data is the payload. Records passed to Open's replay function alias
	// a read buffer: copy Data to keep it.
	Data []byte
}

// appendRecord appends the framed encoding of r to b.
func appendRecord(b []byte, r Record) []byte {
	start := len(b)
	b = append(b, make([]byte, recordHeaderSize)...)
	b[start+8] = r.Type
	b = binary.AppendUvarint(b, r.Index)
	b = append(b, r.Data...)
	body := len(b) - start - recordHeaderSize
	binary.LittleEndian.PutUint32(b[start:], uint32(body))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[start+8:], castagnoli))
	return b
}

// recordSize returns the framed size of r.
func recordSize(r Record) int {
	var tmp [binary.MaxVarintLen64]byte
	return recordHeaderSize + binary.PutUvarint(tmp[:], r.Index) + len(r.Data)
}

// decodeRecord decodes the record at the start of b and returns it with its
// framed size. It returns errShort if b ends inside the record and an
// error wrapping ErrCorrupt if the record is invalid. It never returns a
// record whose checksum does not match, and never panics.
func decodeRecord(b []byte) (Record, int, error) {
	if len(b) < recordHeaderSize {
		return Record{}, 0, errShort
	}
	n := binary.LittleEndian.Uint32(b)
	if n > maxRecordBody {
		return Record{}, 0, fmt.Errorf("%w: record length %d too large", ErrCorrupt, n)
	}
	if b[8] == 0 {
		return Record{}, 0, fmt.Errorf("%w: record type 0", ErrCorrupt)
	}
	end := recordHeaderSize + int(n)
	if len(b) < end {
		return Record{}, 0, errShort
	}
	if got, want := crc32.Checksum(b[8:end], castagnoli), binary.LittleEndian.Uint32(b[4:]); got != want {
		return Record{}, 0, fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x)", ErrCorrupt, want, got)
	}
	body := b[recordHeaderSize:end]
	idx, k := binary.Uvarint(body)
	if k <= 0 {
		return Record{}, 0, fmt.Errorf("%w: bad index varint", ErrCorrupt)
	}
	return Record{Type: b[8], Index: idx, Data: body[k:]}, end, nil
}

// validRecordAfter reports the offset of the first position after off at
// which a valid record starts, or -1. Recovery uses it to tell a torn tail
// (nothing valid follows the bad bytes) from corruption in the middle of
// the log (acknowledged records follow them).
func validRecordAfter(b []byte, off int) int {
	for p := off + 1; p+recordHeaderSize <= len(b); p++ {
		if _, _, err := decodeRecord(b[p:]); err == nil {
			return p
		}
	}
	return -1
}
