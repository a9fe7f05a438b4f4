package shard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"
)

// busyController has configurations and sessions with both kinds of
// cached results.
func busyController(t testing.TB) *Controller {
	c := NewController(Options{Shards: 16})
	mustApply(t, c, withSession(join(1, 2, 3), 10, 1))
	mustApply(t, c, withSession(move(0, 2), 11, 4))
	mustApply(t, c, leave(1))
	if r := c.Apply(withSession(leave(7), 12, 1).Marshal()); !errors.Is(r.Err, ErrUnknownGroup) {
		t.Fatalf("leave 7: %v", r.Err)
	}
	mustApply(t, c, withSession(query(1), 13, 2))
	return c
}

func snapshotBytes(t testing.TB, c *Controller) []byte {
	var b bytes.Buffer
	if err := c.Snapshot(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestSnapshotRoundTrip(t *testing.T) {
	a := busyController(t)
	snap := snapshotBytes(t, a)
	b := NewController(Options{Shards: 64})
	if err := b.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if err := sameState(a, b); err != nil {
		t.Fatal(err)
	}
	if b.NumShards() != 16 || b.Sessions() != 4 {
		t.Fatalf("restored %d shards, %d sessions", b.NumShards(), b.Sessions())
	}
	// The restored session table answers retries as the original would,
	// including the cached refusal and the cached query answer.
	for _, cmd := range []*Command{
		withSession(join(1, 2, 3), 10, 1),
		withSession(leave(7), 12, 1),
		withSession(query(1), 13, 2),
		withSession(move(1, 3), 11, 3),
		withSession(join(4), 14, 1),
	} {
		if ra, rb := a.Apply(cmd.Marshal()), b.Apply(cmd.Marshal()); !sameResult(ra, rb) {
			t.Fatalf("%v after restore: %+v vs %+v", cmd.Op, ra, rb)
		}
	}
	if err := sameState(a, b); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreRejectsDamage(t *testing.T) {
	snap := snapshotBytes(t, busyController(t))
	victim := busyController(t)
	mustApply(t, victim, join(9))
	want := snapshotBytes(t, victim)
	try := func(name string, b []byte) {
		t.Helper()
		if err := victim.Restore(bytes.NewReader(b)); !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("%s: Restore = %v, want ErrCorruptSnapshot", name, err)
		}
		if got := snapshotBytes(t, victim); !bytes.Equal(got, want) {
			t.Fatalf("%s: failed Restore changed the state", name)
		}
	}
	for i := range snap {
		b := bytes.Clone(snap)
		b[i] ^= 0x20
		try("flipped byte", b)
	}
	for n := range len(snap) {
		try("truncated", snap[:n])
	}
	try("trailing", append(bytes.Clone(snap), 0))
}

// TestRestoreRejectsInconsistent checks contents that pass the checksum
// but could not come from a controller.
func TestRestoreRejectsInconsistent(t *testing.T) {
	cfg0, _ := InitialConfig(4).MarshalBinary()
	cfg1 := Config{Num: 1, Shards: []GroupID{1, 1, 1, 1}, Groups: map[GroupID][]string{1: {"a"}}}
	cfg1b, _ := cfg1.MarshalBinary()
	cfgWrongNum, _ := Config{Num: 5, Shards: make([]GroupID, 4)}.MarshalBinary()
	cfg8, _ := InitialConfig(8).MarshalBinary()
	build := func(nShards uint64, cfgs [][]byte, sessions func(b []byte) []byte) []byte {
		b := []byte(snapshotMagic)
		b = binary.AppendUvarint(b, snapshotVersion)
		b = binary.AppendUvarint(b, nShards)
		b = binary.AppendVarint(b, 0)
		b = binary.AppendUvarint(b, uint64(len(cfgs)))
		for _, c := range cfgs {
			b = binary.AppendUvarint(b, uint64(len(c)))
			b = append(b, c...)
		}
		b = sessions(b)
		return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	}
	none := func(b []byte) []byte { return binary.AppendUvarint(b, 0) }
	oneSession := func(code, num uint64) func(b []byte) []byte {
		return func(b []byte) []byte {
			b = binary.AppendUvarint(b, 1)
			b = append(b, 7, 1, 0) // id 7, seq 1, time 0
			b = binary.AppendUvarint(b, code)
			if code == codeOK {
				return binary.AppendUvarint(b, num)
			}
			return append(b, 1, 'x')
		}
	}
	if err := NewController(Options{}).Restore(bytes.NewReader(build(4, [][]byte{cfg0, cfg1b}, oneSession(codeOK, 1)))); err != nil {
		t.Fatalf("well-formed hand-built snapshot: %v", err)
	}
	for name, b := range map[string][]byte{
		"no configs":            build(4, nil, none),
		"zero shards":           build(0, [][]byte{cfg0}, none),
		"config numbering":      build(4, [][]byte{cfgWrongNum}, none),
		"config shard count":    build(4, [][]byte{cfg8}, none),
		"session config beyond": build(4, [][]byte{cfg0, cfg1b}, oneSession(codeOK, 2)),
		"session unknown code":  build(4, [][]byte{cfg0}, oneSession(77, 0)),
		"wrong version":         append([]byte(snapshotMagic), 9, 0, 0, 0, 0),
	} {
		if err := NewController(Options{}).Restore(bytes.NewReader(b)); !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("%s: Restore = %v, want ErrCorruptSnapshot", name, err)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestSnapshotWriteError(t *testing.T) {
	if err := busyController(t).Snapshot(failingWriter{}); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("Snapshot = %v", err)
	}
}

func FuzzRestore(f *testing.F) {
	f.Add(snapshotBytes(f, busyController(f)))
	f.Add(snapshotBytes(f, NewController(Options{Shards: 1})))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := NewController(Options{Shards: 4})
		if err := c.Restore(bytes.NewReader(b)); err != nil {
			return
		}
		// A snapshot that restores writes itself back byte for byte and
		// leaves a controller that applies commands without panicking.
		if got := snapshotBytes(t, c); !bytes.Equal(got, b) {
			t.Fatalf("restore/snapshot is not the identity")
		}
		c.Apply(join(1).Marshal())
		c.Apply(leave(1).Marshal())
	})
}
