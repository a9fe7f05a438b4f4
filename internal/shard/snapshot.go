package shard

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"slices"
)

// Snapshot format (docs/sharding.md has the full description):
//
//	magic "CAIRNSC\n", uvarint format version (1)
//	uvarint shard count, varint clock
//	uvarint configuration count, then per configuration in number order:
//	    uvarint len, configuration encoding (Config.AppendBinary)
//	uvarint session count, then per session in client ID order:
//	    uvarint client ID, uvarint seq, varint last time,
//	    uvarint result code, then uvarint config number (code 0)
//	    or uvarint len, error message (other codes)
//	uint32 big-endian CRC-32C of every byte before it
const snapshotMagic = "CAIRNSC\n"

const snapshotVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot writes the controller's whole state (every configuration, the
// session clock and the session table) to w. Two controllers that applied
// the same commands write the same bytes.
func (c *Controller) Snapshot(w io.Writer) error {
	c.mu.RLock()
	b := []byte(snapshotMagic)
	b = binary.AppendUvarint(b, snapshotVersion)
	b = binary.AppendUvarint(b, uint64(c.nShards))
	b = binary.AppendVarint(b, c.clock)
	b = binary.AppendUvarint(b, uint64(len(c.configs)))
	var enc []byte
	for _, cfg := range c.configs {
		enc, _ = cfg.AppendBinary(enc[:0])
		b = binary.AppendUvarint(b, uint64(len(enc)))
		b = append(b, enc...)
	}
	b = binary.AppendUvarint(b, uint64(len(c.sessions)))
	for _, id := range slices.Sorted(maps.Keys(c.sessions)) {
		s := c.sessions[id]
		b = binary.AppendUvarint(b, id)
		b = binary.AppendUvarint(b, s.seq)
		b = binary.AppendVarint(b, s.lastTime)
		b = binary.AppendUvarint(b, s.code)
		if s.code == codeOK {
			b = binary.AppendUvarint(b, s.num)
		} else {
			b = binary.AppendUvarint(b, uint64(len(s.msg)))
			b = append(b, s.msg...)
		}
	}
	c.mu.RUnlock()
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("shard: write snapshot: %w", err)
	}
	return nil
}

// Restore replaces the controller's state with a snapshot written by
// Snapshot, including its shard count. It reads and checks the whole input
// (format, checksum, every configuration, session results) before touching
// the controller, so on any error the state is unchanged; format errors
// wrap ErrCorruptSnapshot. The session TTL stays the controller's own.
func (c *Controller) Restore(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("shard: read snapshot: %w", err)
	}
	st, err := decodeSnapshot(b)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorruptSnapshot, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nShards, c.clock, c.configs, c.sessions = st.nShards, st.clock, st.configs, st.sessions
	return nil
}

type snapState struct {
	nShards  int
	clock    int64
	configs  []Config
	sessions map[uint64]*session
}

func decodeSnapshot(b []byte) (*snapState, error) {
	if len(b) < len(snapshotMagic)+4 || !bytes.HasPrefix(b, []byte(snapshotMagic)) {
		return nil, fmt.Errorf("not a controller snapshot")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("checksum mismatch")
	}
	d := decoder{b: body[len(snapshotMagic):]}
	if v := d.uvarint(); d.err == nil && v != snapshotVersion {
		return nil, fmt.Errorf("format version %d, want %d", v, snapshotVersion)
	}
	st := &snapState{nShards: d.count(MaxShards, "shard count"), clock: d.varint()}
	if d.err == nil && st.nShards < 1 {
		return nil, fmt.Errorf("shard count 0")
	}
	nc := d.elems("configuration count")
	if d.err == nil && nc < 1 {
		return nil, fmt.Errorf("no configurations")
	}
	for i := 0; i < nc && d.err == nil; i++ {
		var cfg Config
		if err := cfg.UnmarshalBinary(d.bytes()); d.err == nil && err != nil {
			return nil, fmt.Errorf("configuration %d: %v", i, err)
		}
		if d.err == nil && (cfg.Num != uint64(i) || len(cfg.Shards) != st.nShards) {
			return nil, fmt.Errorf("configuration %d has number %d and %d shards, want %d and %d",
				i, cfg.Num, len(cfg.Shards), i, st.nShards)
		}
		st.configs = append(st.configs, cfg)
	}
	ns := d.elems("session count")
	st.sessions = make(map[uint64]*session, ns)
	var prev uint64
	for i := 0; i < ns && d.err == nil; i++ {
		id := d.uvarint()
		if d.err == nil && (id == 0 || (i > 0 && id <= prev)) {
			return nil, fmt.Errorf("session %d out of order or zero", id)
		}
		prev = id
		s := &session{seq: d.uvarint(), lastTime: d.varint(), code: d.uvarint()}
		if s.code == codeOK {
			s.num = d.uvarint()
			if d.err == nil && s.num >= uint64(len(st.configs)) {
				return nil, fmt.Errorf("session %d answered configuration %d of %d", id, s.num, len(st.configs))
			}
		} else {
			s.msg = string(d.bytes())
			if d.err == nil && codeSentinel(s.code) == nil {
				return nil, fmt.Errorf("session %d has unknown result code %d", id, s.code)
			}
		}
		if d.err == nil && s.seq == 0 {
			return nil, fmt.Errorf("session %d has sequence number 0", id)
		}
		st.sessions[id] = s
	}
	if d.err == nil && len(d.b) != 0 {
		return nil, fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return st, nil
}
