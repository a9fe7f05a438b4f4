package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// part returns a predicate splitting keys into `of` parts by hash (a
// stand-in for shard.ShardOf, which kv does not import).
func part(n, of int) func([]byte) bool {
	return func(key []byte) bool {
		h := fnv.New32a()
		h.Write(key)
		return int(h.Sum32()%uint32(of)) == n
	}
}

func not(f func([]byte) bool) func([]byte) bool { return func(k []byte) bool { return !f(k) } }

var everything = &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}

// shardFixture is busyStore plus a few hundred more keys, so that every
// part holds many keys, sessions and a non-trivial revision.
func shardFixture(t testing.TB, seed uint64, n int) *Store {
	s, _ := busyStore(t, seed, n)
	rng := rand.New(rand.NewPCG(seed, 2))
	for i := 0; i < 300; i++ {
		c := &Command{ClientID: uint64(50 + i%5), Seq: uint64(1 + i/5), Time: int64(n)*int64(time.Second) + int64(i), Put: &pb.PutRequest{Key: []byte(fmt.Sprintf("x%03d", rng.IntN(400))), Value: randomValue(rng)}}
		if r := s.Apply(s.AppliedIndex()+1, c.Marshal()); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	return s
}

func export(t testing.TB, s *Store, match func([]byte) bool) []byte {
	t.Helper()
	blob, err := s.ExportShard(match)
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

func install(t testing.TB, s *Store, blob []byte) {
	t.Helper()
	if err := s.InstallShard(s.AppliedIndex()+1, blob); err != nil {
		t.Fatal(err)
	}
}

func rangeAll(t testing.TB, s *Store, keep func([]byte) bool) *pb.RangeResponse {
	t.Helper()
	resp, err := s.RangeFiltered(everything, keep)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// checkSessions checks the session table's invariants: the list holds
// exactly the map's sessions, its links are consistent, it is ordered by
// last use, and nothing was used after the clock.
func checkSessions(t testing.TB, s *Store) {
	t.Helper()
	n := 0
	var prev *session
	for sess := s.head; sess != nil; sess = sess.next {
		n++
		switch {
		case sess.prev != prev:
			t.Fatalf("session %d: broken prev link", sess.id)
		case s.sessions[sess.id] != sess:
			t.Fatalf("session %d in the list but not the map", sess.id)
		case prev != nil && prev.lastTime > sess.lastTime:
			t.Fatalf("list not ordered by last use: %d (%d) before %d (%d)", prev.id, prev.lastTime, sess.id, sess.lastTime)
		case sess.lastTime > s.clock:
			t.Fatalf("session %d used at %d, after the clock %d", sess.id, sess.lastTime, s.clock)
		}
		prev = sess
	}
	if s.tail != prev || n != len(s.sessions) {
		t.Fatalf("list has %d sessions (tail ok: %v), map %d", n, s.tail == prev, len(s.sessions))
	}
}

// sessionsOf returns a copy of the session table without links.
func sessionsOf(s *Store) map[uint64]session {
	out := map[uint64]session{}
	for id, sess := range s.sessions {
		out[id] = session{id: id, seq: sess.seq, lastTime: sess.lastTime, result: sess.result}
	}
	return out
}

func sameSession(a, b session) bool {
	return a.id == b.id && a.seq == b.seq && a.lastTime == b.lastTime && bytes.Equal(a.result, b.result)
}

func TestShardRoundTrip(t *testing.T) {
	src := shardFixture(t, 1, 1500)
	const parts = 4
	srcSessions := sessionsOf(src)
	if len(srcSessions) == 0 {
		t.Fatal("fixture has no sessions")
	}
	for n := 0; n < parts; n++ {
		match := part(n, parts)
		blob := export(t, src, match)
		if cap(blob) != len(blob) {
			t.Fatalf("blob of %d bytes sized for %d", len(blob), cap(blob))
		}
		want := rangeAll(t, src, match)
		if len(want.Kvs) < 20 {
			t.Fatalf("part %d has only %d keys", n, len(want.Kvs))
		}

		// Into an empty store: it ends up holding exactly the part.
		dst := NewStore(Options{SessionTTL: time.Minute})
		install(t, dst, blob)
		sameMsg(t, "installed keys", rangeAll(t, dst, nil), want)
		if dst.Revision() != src.Revision() || dst.clock != src.clock {
			t.Fatalf("revision %d clock %d, want %d %d", dst.Revision(), dst.clock, src.Revision(), src.clock)
		}
		keys, bytes_ := src.CountMatching(match)
		if st := dst.Stats(); st.Keys != keys || st.Bytes != bytes_ || st.Sessions != len(srcSessions) {
			t.Fatalf("stats %+v, want %d keys %d bytes %d sessions", st, keys, bytes_, len(srcSessions))
		}
		for id, want := range srcSessions {
			if got := sessionsOf(dst)[id]; !sameSession(got, want) {
				t.Fatalf("session %d: got %+v want %+v", id, got, want)
			}
		}
		checkSessions(t, dst)
		// It exports the very same bytes.
		if again := export(t, dst, nil); !bytes.Equal(again, blob) {
			t.Fatal("re-export of an installed part differs from the original blob")
		}

		// Into a store holding the other parts, at a higher revision: the
		// union is the source's data, keeping each key's metadata.
		other := shardFixture(t, 1, 1500)
		if _, err := other.DeleteShard(other.AppliedIndex()+1, match); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			other.Apply(other.AppliedIndex()+1, (&Command{Put: &pb.PutRequest{Key: []byte("zzz-other"), Value: []byte("o")}}).Marshal())
		}
		rev := other.Revision()
		install(t, other, blob)
		if other.Revision() != rev {
			t.Fatalf("revision went from %d to %d", rev, other.Revision())
		}
		notOther := func(k []byte) bool { return string(k) != "zzz-other" }
		got := rangeAll(t, other, func(k []byte) bool { return match(k) && notOther(k) })
		got.Header.Revision = want.Header.Revision
		sameMsg(t, "merged part", got, want)
		got = rangeAll(t, other, func(k []byte) bool { return !match(k) && notOther(k) })
		got.Header.Revision = want.Header.Revision
		sameMsg(t, "other parts", got, rangeAll(t, src, not(match)))
		checkStatsBytes(t, other)
	}
}

// checkStatsBytes checks the store's running byte count against a count
// from scratch, and against a restored copy.
func checkStatsBytes(t testing.TB, s *Store) {
	t.Helper()
	keys, b := s.CountMatching(nil)
	if st := s.Stats(); st.Keys != keys || st.Bytes != b {
		t.Fatalf("Stats %+v, counted %d keys %d bytes", st, keys, b)
	}
	r := NewStore(Options{})
	if err := r.Restore(bytes.NewReader(snapshotBytes(t, s))); err != nil {
		t.Fatal(err)
	}
	if r.Stats() != s.Stats() {
		t.Fatalf("Stats %+v, restored copy %+v", s.Stats(), r.Stats())
	}
}

func TestInstallRevisionNeverGoesBack(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	dst := NewStore(Options{})
	for i := 0; i < 60; i++ {
		src := NewStore(Options{})
		for j := rng.IntN(40); j > 0; j-- {
			src.Apply(src.AppliedIndex()+1, (&Command{Put: &pb.PutRequest{Key: []byte(fmt.Sprintf("s%d-%d", i, rng.IntN(5))), Value: []byte("v")}}).Marshal())
		}
		for j := rng.IntN(30); j > 0; j-- {
			dst.Apply(dst.AppliedIndex()+1, (&Command{Put: &pb.PutRequest{Key: []byte("d"), Value: []byte("v")}}).Marshal())
		}
		before := dst.Revision()
		install(t, dst, export(t, src, nil))
		if want := max(before, src.Revision()); dst.Revision() != want {
			t.Fatalf("step %d: revision %d after install, want max(%d, %d)", i, dst.Revision(), before, src.Revision())
		}
		// The next write is above every installed mod revision.
		r := dst.Apply(dst.AppliedIndex()+1, (&Command{Put: &pb.PutRequest{Key: []byte("d"), Value: []byte("w")}}).Marshal())
		if r.Err != nil || r.Put.Header.Revision != dst.Revision() {
			t.Fatalf("put after install: %+v", r)
		}
		for _, kv := range rangeAll(t, dst, nil).Kvs {
			if kv.ModRevision >= dst.Revision() && string(kv.Key) != "d" {
				t.Fatalf("key %q has mod revision %d, store revision %d", kv.Key, kv.ModRevision, dst.Revision())
			}
		}
	}
	checkStatsBytes(t, dst)
}

// sessionStore returns a store whose sessions were last used at the given
// times (client id -> seq, time), applied in time order.
func sessionStore(t testing.TB, ttl time.Duration, uses []sessUse) *Store {
	h := &harness{t: t, s: NewStore(Options{SessionTTL: ttl})}
	for _, u := range uses {
		h.must(sessionPut(u.id, u.seq, u.at, fmt.Sprintf("key-%d", u.id), fmt.Sprintf("%d@%d", u.seq, u.at)))
	}
	return h.s
}

type sessUse struct {
	id, seq uint64
	at      time.Duration
}

func TestShardSessionMerge(t *testing.T) {
	cases := []struct {
		name        string
		local, blob []sessUse
		wantSeq     uint64
		wantFrom    string // "local" or "blob": whose result is kept
		wantLast    time.Duration
	}{
		{"only in blob", nil, []sessUse{{1, 4, 10 * time.Second}}, 4, "blob", 10 * time.Second},
		// The extra clients make the two sides' cached results differ.
		{"blob ahead", []sessUse{{1, 2, 20 * time.Second}}, []sessUse{{3, 1, 0}, {1, 5, 10 * time.Second}}, 5, "blob", 20 * time.Second},
		{"local ahead", []sessUse{{2, 1, 0}, {1, 5, 10 * time.Second}}, []sessUse{{1, 2, 20 * time.Second}}, 5, "local", 20 * time.Second},
		{"same seq keeps local", []sessUse{{2, 1, 0}, {1, 3, 30 * time.Second}}, []sessUse{{1, 3, 20 * time.Second}}, 3, "local", 30 * time.Second},
		{"same seq, blob used later", []sessUse{{1, 3, 10 * time.Second}}, []sessUse{{2, 1, 0}, {1, 3, 20 * time.Second}}, 3, "local", 20 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			local := sessionStore(t, time.Hour, c.local)
			blobStore := sessionStore(t, time.Hour, c.blob)
			want := sessionsOf(local)[1].result
			if c.wantFrom == "blob" {
				want = sessionsOf(blobStore)[1].result
			}
			if bytes.Equal(sessionsOf(local)[1].result, sessionsOf(blobStore)[1].result) {
				t.Fatal("fixture: both sides cache the same result")
			}
			install(t, local, export(t, blobStore, func([]byte) bool { return false }))
			got := sessionsOf(local)[1]
			if got.seq != c.wantSeq || got.lastTime != int64(c.wantLast) || !bytes.Equal(got.result, want) {
				t.Fatalf("merged session seq %d last %v result %x; want seq %d last %v result of %s",
					got.seq, time.Duration(got.lastTime), got.result, c.wantSeq, c.wantLast, c.wantFrom)
			}
			checkSessions(t, local)
		})
	}
}

// TestExactlyOnceAcrossMove: a command applied by the old owner and
// retried at the new owner after the move returns the cached result and
// is not applied again.
func TestExactlyOnceAcrossMove(t *testing.T) {
	a := &harness{t: t, s: NewStore(Options{})}
	a.put("k", "0")
	first := a.must(sessionPut(7, 3, time.Second, "k", "1"))
	moved := func(k []byte) bool { return string(k) == "k" }

	b := &harness{t: t, s: NewStore(Options{})}
	b.put("other", "x")
	b.must(sessionPut(7, 1, 0, "other", "y")) // the same client used b before
	blob := export(t, a.s, moved)
	if _, err := a.s.DeleteShard(a.s.AppliedIndex()+1, moved); err != nil {
		t.Fatal(err)
	}
	b.index++
	if err := b.s.InstallShard(b.index, blob); err != nil {
		t.Fatal(err)
	}
	rev := b.s.Revision()
	dup := b.must(sessionPut(7, 3, 2*time.Second, "k", "different"))
	sameMsg(t, "retried result", dup.Put, first.Put)
	if b.s.Revision() != rev || string(b.get("k").Value) != "1" {
		t.Fatalf("retry was applied again: revision %d->%d, k=%q", rev, b.s.Revision(), b.get("k").Value)
	}
	if r := b.apply(sessionPut(7, 2, 3*time.Second, "k", "old")); !errors.Is(r.Err, ErrStaleSequence) {
		t.Fatalf("older sequence number after the move: %v", r.Err)
	}
	if r := b.must(sessionPut(7, 4, 4*time.Second, "k", "2")); r.Put.Header.Revision != rev+1 || string(r.Put.PrevKv.Value) != "1" {
		t.Fatalf("next command: %+v", r.Put)
	}
}

// TestSessionExpiryAfterMerge merges random session tables and checks that
// the use-order list stays ordered and that expiry then forgets exactly the
// sessions idle for longer than the TTL.
func TestSessionExpiryAfterMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 21))
	const ttl = time.Minute
	for round := 0; round < 200; round++ {
		gen := func() []sessUse {
			var uses []sessUse
			at := time.Duration(rng.IntN(30)) * time.Second
			for i := rng.IntN(12); i > 0; i-- {
				at += time.Duration(rng.IntN(3)) * time.Second // ties too
				uses = append(uses, sessUse{id: uint64(1 + rng.IntN(10)), seq: uint64(1 + rng.IntN(6)), at: at})
			}
			// sequence numbers must grow per client for the uses to apply
			last := map[uint64]uint64{}
			for i := range uses {
				if uses[i].seq <= last[uses[i].id] {
					uses[i].seq = last[uses[i].id] + 1
				}
				last[uses[i].id] = uses[i].seq
			}
			return uses
		}
		local := sessionStore(t, ttl, gen())
		remote := sessionStore(t, ttl, gen())
		want := sessionsOf(local)
		for id, r := range sessionsOf(remote) {
			l, ok := want[id]
			switch {
			case !ok:
				want[id] = r
			default:
				if r.seq > l.seq {
					l.seq, l.result = r.seq, r.result
				}
				l.lastTime = max(l.lastTime, r.lastTime)
				want[id] = l
			}
		}
		install(t, local, export(t, remote, nil))
		checkSessions(t, local)
		got := sessionsOf(local)
		if len(got) != len(want) {
			t.Fatalf("round %d: %d sessions, want %d", round, len(got), len(want))
		}
		for id, w := range want {
			if !sameSession(got[id], w) {
				t.Fatalf("round %d: session %d = %+v, want %+v", round, id, got[id], w)
			}
		}
		// Advance the clock to a random point: exactly the sessions idle for
		// longer than the TTL go.
		now := int64(ttl) + int64(rng.IntN(60))*int64(time.Second)
		local.Apply(local.AppliedIndex()+1, (&Command{Time: now, Put: &pb.PutRequest{Key: []byte("tick")}}).Marshal())
		clock := max(now, local.clock)
		for id, w := range want {
			_, kept := local.sessions[id]
			if expired := w.lastTime < clock-int64(ttl); kept == expired {
				t.Fatalf("round %d: session %d last used %v, clock %v: kept=%v", round, id, time.Duration(w.lastTime), time.Duration(clock), kept)
			}
		}
		checkSessions(t, local)
	}
}

// TestInstallCorrupt refuses every truncation and many byte flips of a
// blob, leaving the store as it was apart from the applied index.
func TestInstallCorrupt(t *testing.T) {
	src := shardFixture(t, 3, 200)
	blob := export(t, src, part(0, 3))
	target := shardFixture(t, 4, 100)
	ref := NewStore(Options{SessionTTL: time.Minute}) // target's state, with the index bumped by RecordIndex
	if err := ref.Restore(bytes.NewReader(snapshotBytes(t, target))); err != nil {
		t.Fatal(err)
	}
	check := func(name string, data []byte) {
		t.Helper()
		idx := target.AppliedIndex() + 1
		err := target.InstallShard(idx, data)
		if !errors.Is(err, ErrCorruptShard) {
			t.Fatalf("%s: error %v, want ErrCorruptShard", name, err)
		}
		if target.AppliedIndex() != idx {
			t.Fatalf("%s: applied index %d, want %d", name, target.AppliedIndex(), idx)
		}
		if err := ref.RecordIndex(idx); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(snapshotBytes(t, target), snapshotBytes(t, ref)) {
			t.Fatalf("%s: refused blob changed the store", name)
		}
	}
	check("empty", nil)
	check("not a blob", []byte("hello, world, this is not a shard blob"))
	check("trailing byte", append(append([]byte(nil), blob...), 0))
	for n := 0; n < len(blob); n++ {
		check(fmt.Sprintf("truncated to %d bytes", n), blob[:n])
	}
	for pos := 0; pos < len(blob); pos++ {
		bad := append([]byte(nil), blob...)
		bad[pos] ^= byte(1 + pos%255)
		check(fmt.Sprintf("byte %d flipped", pos), bad)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for i := 0; i < 300; i++ {
		bad := append([]byte(nil), blob...)
		for j := 1 + rng.IntN(3); j > 0; j-- {
			bad[rng.IntN(len(bad))] ^= byte(1 + rng.IntN(255))
		}
		check(fmt.Sprintf("random flips %d", i), bad)
	}
	// An index already applied wins over everything, and changes nothing.
	before := snapshotBytes(t, target)
	for _, data := range [][]byte{blob, nil} {
		if err := target.InstallShard(target.AppliedIndex(), data); !errors.Is(err, ErrIndexApplied) {
			t.Fatalf("old index: %v", err)
		}
	}
	if !bytes.Equal(before, snapshotBytes(t, target)) {
		t.Fatal("install at an applied index changed the store")
	}
}

// rawShard encodes a shard blob from parts without any checks, so that
// tests can build blobs whose checksum is right but whose content is not.
type rawShard struct {
	version    uint64
	rev, clock int64
	items      []kvItem
	sessions   []session
	extra      []byte // after the sessions, before the checksum
	keyCount   int64  // -1: len(items)
}

func (r rawShard) body() []byte {
	b := binary.AppendUvarint(nil, r.version)
	b = binary.AppendVarint(b, r.rev)
	b = binary.AppendVarint(b, r.clock)
	n := uint64(len(r.items))
	if r.keyCount >= 0 {
		n = uint64(r.keyCount)
	}
	b = binary.AppendUvarint(b, n)
	for _, it := range r.items {
		b = binary.AppendUvarint(b, uint64(len(it.key)))
		b = append(b, it.key...)
		b = binary.AppendUvarint(b, uint64(len(it.value)))
		b = append(b, it.value...)
		for _, x := range []int64{it.create, it.mod, it.version, it.lease} {
			b = binary.AppendVarint(b, x)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(r.sessions)))
	for _, s := range r.sessions {
		b = binary.AppendUvarint(b, s.id)
		b = binary.AppendUvarint(b, s.seq)
		b = binary.AppendVarint(b, s.lastTime)
		b = binary.AppendUvarint(b, uint64(len(s.result)))
		b = append(b, s.result...)
	}
	return append(b, r.extra...)
}

// sealShard turns a body into a blob with a correct magic and checksum.
func sealShard(body []byte) []byte {
	b := append([]byte(shardMagic), body...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func TestInstallCorruptContent(t *testing.T) {
	okResult := encodeResult(&Result{Put: &pb.PutResponse{Header: header(2)}})
	good := func() rawShard {
		return rawShard{
			version: 1, rev: 5, clock: 100, keyCount: -1,
			items: []kvItem{
				{key: []byte("a"), value: []byte("1"), create: 2, mod: 3, version: 2},
				{key: []byte("b"), create: 5, mod: 5, version: 1, lease: 7},
			},
			sessions: []session{{id: 1, seq: 1, lastTime: 50, result: okResult}, {id: 9, seq: 4, lastTime: 100, result: okResult}},
		}
	}
	if err := NewStore(Options{}).InstallShard(1, sealShard(good().body())); err != nil {
		t.Fatalf("good blob refused: %v", err)
	}
	cases := map[string]func(r *rawShard){
		"version 2":          func(r *rawShard) { r.version = 2 },
		"revision 0":         func(r *rawShard) { r.rev = 0 },
		"empty key":          func(r *rawShard) { r.items[0].key = nil },
		"keys out of order":  func(r *rawShard) { r.items[0], r.items[1] = r.items[1], r.items[0] },
		"duplicate key":      func(r *rawShard) { r.items[1].key = []byte("a") },
		"create 1":           func(r *rawShard) { r.items[0].create = 1 },
		"mod below create":   func(r *rawShard) { r.items[0].mod = 1 },
		"mod above revision": func(r *rawShard) { r.items[1].mod = 6 },
		"version 0":          func(r *rawShard) { r.items[0].version = 0 },
		"huge key count":     func(r *rawShard) { r.keyCount = 1 << 60 },
		"key count too high": func(r *rawShard) { r.keyCount = 3 },
		"key count too low":  func(r *rawShard) { r.keyCount = 1 },
		"client id 0":        func(r *rawShard) { r.sessions[0].id = 0 },
		"sessions out of order": func(r *rawShard) {
			r.sessions[0], r.sessions[1] = r.sessions[1], r.sessions[0]
		},
		"seq 0":                func(r *rawShard) { r.sessions[1].seq = 0 },
		"used after the clock": func(r *rawShard) { r.sessions[1].lastTime = 101 },
		"bad cached result":    func(r *rawShard) { r.sessions[0].result = []byte{9} },
		"trailing bytes":       func(r *rawShard) { r.extra = []byte{0} },
	}
	for name, mutate := range cases {
		r := good()
		mutate(&r)
		s := NewStore(Options{})
		if err := s.InstallShard(1, sealShard(r.body())); !errors.Is(err, ErrCorruptShard) {
			t.Errorf("%s: error %v, want ErrCorruptShard", name, err)
		} else if s.AppliedIndex() != 1 || s.Stats() != (Stats{}) || s.Revision() != 1 {
			t.Errorf("%s: store changed: %+v", name, s.Stats())
		}
	}
	bad := sealShard(good().body())
	bad[len(bad)-1] ^= 1
	if err := NewStore(Options{}).InstallShard(1, bad); err == nil || !bytes.Contains([]byte(err.Error()), []byte("checksum")) {
		t.Fatalf("flipped checksum: %v", err)
	}
}

func TestDeleteShard(t *testing.T) {
	const parts = 3
	for n := 0; n < parts; n++ {
		s := shardFixture(t, 5, 800)
		match := part(n, parts)
		wantKeys, _ := s.CountMatching(match)
		rest := rangeAll(t, s, not(match))
		rev, sessions := s.Revision(), sessionsOf(s)
		got, err := s.DeleteShard(s.AppliedIndex()+1, match)
		if err != nil || got != wantKeys || wantKeys == 0 {
			t.Fatalf("DeleteShard = %d, %v; want %d", got, err, wantKeys)
		}
		if k, b := s.CountMatching(match); k != 0 || b != 0 {
			t.Fatalf("%d matching keys (%d bytes) left", k, b)
		}
		rest.Header.Revision = s.Revision()
		sameMsg(t, "remaining keys", rangeAll(t, s, nil), rest)
		if s.Revision() != rev {
			t.Fatalf("revision moved from %d to %d", rev, s.Revision())
		}
		if after := sessionsOf(s); len(after) != len(sessions) {
			t.Fatal("sessions changed")
		}
		checkStatsBytes(t, s)
		// Nothing left to delete.
		if got, err := s.DeleteShard(s.AppliedIndex()+1, match); got != 0 || err != nil {
			t.Fatalf("second delete: %d, %v", got, err)
		}
		// Index rules.
		before := snapshotBytes(t, s)
		if _, err := s.DeleteShard(s.AppliedIndex(), nil); !errors.Is(err, ErrIndexApplied) {
			t.Fatalf("old index: %v", err)
		}
		if !bytes.Equal(before, snapshotBytes(t, s)) {
			t.Fatal("delete at an applied index changed the store")
		}
	}
}

func TestRecordIndex(t *testing.T) {
	s := shardFixture(t, 6, 100)
	before := snapshotBytes(t, s)
	idx := s.AppliedIndex() + 5
	if err := s.RecordIndex(idx); err != nil {
		t.Fatal(err)
	}
	if s.AppliedIndex() != idx {
		t.Fatalf("applied %d, want %d", s.AppliedIndex(), idx)
	}
	if err := s.RecordIndex(idx); !errors.Is(err, ErrIndexApplied) {
		t.Fatalf("same index again: %v", err)
	}
	// Only the index changed.
	r := NewStore(Options{SessionTTL: time.Minute})
	if err := r.Restore(bytes.NewReader(before)); err != nil {
		t.Fatal(err)
	}
	r.Apply(idx, nil)
	if !bytes.Equal(snapshotBytes(t, r), snapshotBytes(t, s)) {
		t.Fatal("RecordIndex changed more than the index")
	}
}

func TestRangeFiltered(t *testing.T) {
	h := newHarness(t)
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		h.put(k, "v"+k)
	}
	keepACEG := func(k []byte) bool { return (k[0]-'a')%2 == 0 }
	type tc struct {
		name  string
		r     *pb.RangeRequest
		keep  func([]byte) bool
		keys  string
		count int64
		more  bool
	}
	all := func() *pb.RangeRequest { return &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}} }
	with := func(f func(r *pb.RangeRequest)) *pb.RangeRequest { r := all(); f(r); return r }
	cases := []tc{
		{"nil keep is Range", all(), nil, "abcdefgh", 8, false},
		{"filter", all(), keepACEG, "aceg", 4, false},
		{"limit below kept", with(func(r *pb.RangeRequest) { r.Limit = 2 }), keepACEG, "ac", 4, true},
		{"limit at kept", with(func(r *pb.RangeRequest) { r.Limit = 4 }), keepACEG, "aceg", 4, false},
		{"limit 3: hidden h does not set more", with(func(r *pb.RangeRequest) { r.Limit = 3; r.Key = []byte("c") }), keepACEG, "ceg", 3, false},
		{"count only", with(func(r *pb.RangeRequest) { r.CountOnly = true }), keepACEG, "", 4, false},
		{"descending with limit", with(func(r *pb.RangeRequest) { r.Limit = 3; r.SortOrder = pb.RangeRequest_DESCEND }), keepACEG, "gec", 4, true},
		{"single hidden key", &pb.RangeRequest{Key: []byte("b")}, keepACEG, "", 0, false},
		{"single kept key", &pb.RangeRequest{Key: []byte("c")}, keepACEG, "c", 1, false},
		{"range of hidden keys", &pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("c")}, keepACEG, "", 0, false},
		{"keep nothing", all(), func([]byte) bool { return false }, "", 0, false},
	}
	for _, c := range cases {
		resp, err := h.s.RangeFiltered(c.r, c.keep)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := ""
		for _, kv := range resp.Kvs {
			got += string(kv.Key)
		}
		if got != c.keys || resp.Count != c.count || resp.More != c.more {
			t.Errorf("%s: keys %q count %d more %v; want %q %d %v", c.name, got, resp.Count, resp.More, c.keys, c.count, c.more)
		}
	}
	if _, err := h.s.RangeFiltered(&pb.RangeRequest{Key: []byte("a"), Revision: 100}, keepACEG); !errors.Is(err, rpctypes.ErrGRPCFutureRev) {
		t.Fatalf("future revision: %v", err)
	}
}

// randomRange returns a random valid range request over the fixture keys.
func randomRange(rng *rand.Rand) *pb.RangeRequest {
	r := &pb.RangeRequest{Key: []byte(randomKey(rng))}
	switch rng.IntN(4) {
	case 0:
	case 1:
		r.RangeEnd = []byte{0}
	case 2:
		r.Key = []byte{0}
		r.RangeEnd = []byte{0}
	default:
		r.RangeEnd = []byte("x2")
	}
	r.Limit = int64(rng.IntN(6))
	r.CountOnly = rng.IntN(8) == 0
	r.KeysOnly = rng.IntN(8) == 0
	if rng.IntN(3) == 0 {
		r.SortOrder = pb.RangeRequest_SortOrder(rng.IntN(3))
		r.SortTarget = pb.RangeRequest_SortTarget(rng.IntN(5))
	}
	if rng.IntN(5) == 0 {
		r.MinModRevision = int64(rng.IntN(500))
	}
	return r
}

// TestRangeFilteredModel: a filtered range over a store answers exactly
// what Range answers over a store holding only the kept keys.
func TestRangeFilteredModel(t *testing.T) {
	s := shardFixture(t, 7, 600)
	rng := rand.New(rand.NewPCG(8, 8))
	for n := 0; n < 3; n++ {
		keep := part(n, 3)
		only := NewStore(Options{})
		install(t, only, export(t, s, keep))
		for i := 0; i < 500; i++ {
			r := randomRange(rng)
			got, err1 := s.RangeFiltered(r, keep)
			want, err2 := only.Range(r)
			if err1 != nil || err2 != nil {
				t.Fatalf("%v / %v", err1, err2)
			}
			sameMsg(t, fmt.Sprintf("range %v", r), got, want)
		}
	}
}

// TestVisibleModel: a store that holds hidden keys answers every command
// and read exactly as a store that never held them.
func TestVisibleModel(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		rng := rand.New(rand.NewPCG(seed, 99))
		full := shardFixture(t, seed, 500)
		keep := part(int(seed%3), 3)
		only := NewStore(Options{SessionTTL: time.Minute})
		install(t, only, export(t, full, keep))
		full.SetVisible(keep)
		only.SetVisible(keep)
		idx := max(full.AppliedIndex(), only.AppliedIndex())
		for i := 0; i < 1500; i++ {
			idx++
			data := randomCommand(rng, int64(600+i)*int64(time.Second)).Marshal()
			a, b := full.Apply(idx, data), only.Apply(idx, data)
			if !bytes.Equal(encodeResult(a), encodeResult(b)) {
				c, _ := UnmarshalCommand(data)
				t.Fatalf("seed %d entry %d (%s): results differ:\n hidden keys: %+v\n none:        %+v", seed, i, describe(c), a, b)
			}
			r := randomRange(rng)
			ra, _ := full.Range(r)
			rb, _ := only.Range(r)
			sameMsg(t, "range", ra, rb)
		}
		if !bytes.Equal(export(t, full, keep), export(t, only, keep)) {
			t.Fatalf("seed %d: visible state differs", seed)
		}
		checkStatsBytes(t, full)
		checkStatsBytes(t, only)
	}
}

func TestVisibleTable(t *testing.T) {
	h := newHarness(t)
	h.put("a", "1")
	h.put("h", "hidden")
	h.put("h", "hidden2")
	h.put("z", "2")
	h.s.SetVisible(func(k []byte) bool { return string(k) != "h" })
	if h.get("h") != nil {
		t.Fatal("hidden key readable")
	}
	if resp, _ := h.s.Range(everything); resp.Count != 2 {
		t.Fatalf("count %d", resp.Count)
	}
	txn := func(cmp *pb.Compare) bool {
		return h.must(&Command{Txn: &pb.TxnRequest{Compare: []*pb.Compare{cmp}}}).Txn.Succeeded
	}
	if !txn(cmpVersion("h", eq, 0)) || !txn(cmpCreate("h", eq, 0)) || txn(cmpValue("h", eq, "hidden2")) {
		t.Fatal("compares see the hidden key")
	}
	if !txn(withEnd(cmpVersion("a", eq, 1), "z")) {
		t.Fatal("range compare sees the hidden key")
	}
	sameErr(t, "ignore_value on a hidden key",
		h.apply(&Command{Put: &pb.PutRequest{Key: []byte("h"), IgnoreValue: true}}).Err, rpctypes.ErrGRPCKeyNotFound)
	rev := h.s.Revision()
	if d := h.del("a", "\x00"); d.Deleted != 2 {
		t.Fatalf("deleted %d, want a and z only", d.Deleted)
	}
	if k, _ := h.s.CountMatching(nil); k != 1 {
		t.Fatalf("%d keys held, want the hidden one", k)
	}
	// A write to the hidden key starts a new generation and replaces it.
	r := h.must(&Command{Put: &pb.PutRequest{Key: []byte("h"), Value: []byte("new"), PrevKv: true}})
	if r.Put.PrevKv != nil || r.Put.Header.Revision != rev+2 {
		t.Fatalf("put over hidden key: %+v", r.Put)
	}
	h.s.SetVisible(nil)
	sameMsg(t, "rewritten key", h.get("h"), kv("h", "new", rev+2, rev+2, 1))
	checkStatsBytes(t, h.s)

	// A failed txn that wrote over a hidden key restores it exactly.
	h.put("h", "old")
	h.s.SetVisible(func(k []byte) bool { return string(k) != "h" })
	before := snapshotBytes(t, h.s)
	res := h.apply(&Command{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{
		opPut("h", "x"), opPutReq(&pb.PutRequest{Key: []byte("q"), Lease: 5}),
	}}})
	sameErr(t, "txn", res.Err, rpctypes.ErrGRPCLeaseNotFound)
	// Align the applied index of both, then compare.
	if err := h.s.RecordIndex(h.index + 1); err != nil {
		t.Fatal(err)
	}
	b := NewStore(Options{})
	if err := b.Restore(bytes.NewReader(before)); err != nil {
		t.Fatal(err)
	}
	if err := b.RecordIndex(h.index + 1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, h.s), snapshotBytes(t, b)) {
		t.Fatal("rolled-back txn did not restore the hidden key")
	}
	checkStatsBytes(t, h.s)
}

func TestShardDeterminism(t *testing.T) {
	a, b := shardFixture(t, 12, 1000), shardFixture(t, 12, 1000)
	for n := 0; n < 3; n++ {
		m := part(n, 3)
		x, y := export(t, a, m), export(t, b, m)
		if !bytes.Equal(x, y) || !bytes.Equal(x, export(t, a, m)) {
			t.Fatalf("part %d: same state, different blobs", n)
		}
	}
	// Installing the same blob into the same state gives the same state.
	blob := export(t, shardFixture(t, 13, 1000), part(1, 3))
	install(t, a, blob)
	install(t, b, blob)
	if !bytes.Equal(snapshotBytes(t, a), snapshotBytes(t, b)) {
		t.Fatal("same install, different snapshots")
	}
}

// TestSnapshotAfterInstall: a store that installed a shard snapshots,
// restores and then behaves exactly like the original.
func TestSnapshotAfterInstall(t *testing.T) {
	s := shardFixture(t, 14, 500)
	install(t, s, export(t, shardFixture(t, 15, 1200), part(2, 3)))
	if _, err := s.DeleteShard(s.AppliedIndex()+1, part(0, 3)); err != nil {
		t.Fatal(err)
	}
	snap := snapshotBytes(t, s)
	r := NewStore(Options{SessionTTL: time.Minute})
	if err := r.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, r), snap) || r.Stats() != s.Stats() {
		t.Fatal("restored store differs")
	}
	checkSessions(t, r)
	rng := rand.New(rand.NewPCG(16, 16))
	for i := 0; i < 500; i++ {
		data := randomCommand(rng, int64(2000+i)*int64(time.Second)).Marshal()
		idx := s.AppliedIndex() + 1
		if x, y := s.Apply(idx, data), r.Apply(idx, data); !bytes.Equal(encodeResult(x), encodeResult(y)) {
			t.Fatalf("entry %d: results differ after restore", idx)
		}
	}
	if !bytes.Equal(snapshotBytes(t, s), snapshotBytes(t, r)) {
		t.Fatal("diverged after restore")
	}
}

// TestShardOpsConcurrentReaders runs reads while shards move; run with -race.
func TestShardOpsConcurrentReaders(t *testing.T) {
	s := shardFixture(t, 17, 300)
	src := shardFixture(t, 18, 300)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				switch g {
				case 0:
					_, _ = s.RangeFiltered(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 10}, part(1, 3))
				case 1:
					_, _ = s.CountMatching(part(0, 3))
					_, _ = s.ExportShard(part(2, 3))
				default:
					_, _ = s.Range(everything)
				}
			}
		}(g)
	}
	rng := rand.New(rand.NewPCG(19, 19))
	for i := 0; i < 300; i++ {
		idx := s.AppliedIndex() + 1
		switch i % 5 {
		case 0:
			_ = s.InstallShard(idx, export(t, src, part(i%3, 3)))
		case 1:
			_, _ = s.DeleteShard(idx, part(i%3, 3))
		case 2:
			s.SetVisible(part(i%3, 3))
		default:
			s.Apply(idx, randomCommand(rng, int64(i)).Marshal())
		}
	}
	close(stop)
	wg.Wait()
}

func FuzzDecodeShard(f *testing.F) {
	src := shardFixture(f, 1, 150)
	for n := 0; n < 3; n++ {
		blob, _ := src.ExportShard(part(n, 3))
		f.Add(blob)
		f.Add(blob[len(shardMagic) : len(blob)-4]) // body only: the target seals it
	}
	f.Add([]byte{})
	f.Add([]byte(shardMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, blob := range [][]byte{data, sealShard(data)} {
			st, err := decodeShard(blob)
			if err != nil {
				if !errors.Is(err, ErrCorruptShard) {
					t.Fatalf("error %v does not wrap ErrCorruptShard", err)
				}
				continue
			}
			s := NewStore(Options{})
			if err := s.InstallShard(1, blob); err != nil {
				t.Fatalf("decodes but does not install: %v", err)
			}
			checkSessions(t, s)
			// What was installed exports to a blob that decodes to the same
			// content.
			st2, err := decodeShard(export(t, s, nil))
			if err != nil {
				t.Fatalf("re-export does not decode: %v", err)
			}
			if st2.rev != st.rev || st2.clock != max(0, st.clock) || len(st2.items) != len(st.items) || len(st2.sessions) != len(st.sessions) {
				t.Fatal("re-export differs")
			}
			for i := range st.items {
				a, b := st.items[i], st2.items[i]
				if !bytes.Equal(a.key, b.key) || !bytes.Equal(a.value, b.value) || a.create != b.create || a.mod != b.mod || a.version != b.version || a.lease != b.lease {
					t.Fatalf("key %d differs after install", i)
				}
			}
			for i := range st.sessions {
				if !sameSession(*st.sessions[i], *st2.sessions[i]) {
					t.Fatalf("session %d differs after install", i)
				}
			}
			var buf bytes.Buffer
			if err := s.Snapshot(&buf); err != nil {
				t.Fatal(err)
			}
			if err := NewStore(Options{}).Restore(&buf); err != nil {
				t.Fatalf("snapshot after install does not restore: %v", err)
			}
		}
	})
}

// shardBenchStore is a store of 100k keys with 256-byte values and a
// thousand sessions.
func shardBenchStore(b *testing.B) *Store {
	s := NewStore(Options{})
	value := make([]byte, 256)
	for i := 0; i < 100_000; i++ {
		c := &Command{Put: &pb.PutRequest{Key: benchKey(i), Value: value}}
		if i%100 == 0 {
			c.ClientID, c.Seq = uint64(1+i/100), 1
		}
		if r := s.Apply(uint64(i+1), c.Marshal()); r.Err != nil {
			b.Fatal(r.Err)
		}
	}
	return s
}

// BenchmarkExportShard exports 100k keys (~28 MB) and 1000 sessions.
func BenchmarkExportShard(b *testing.B) {
	s := shardBenchStore(b)
	blob := export(b, s, nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(blob)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.ExportShard(nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInstallShard installs 100k keys (~28 MB) and 1000 sessions
// into an empty store: decode, check, copy, insert, merge.
func BenchmarkInstallShard(b *testing.B) {
	blob := export(b, shardBenchStore(b), nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(blob)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := NewStore(Options{}).InstallShard(1, blob); err != nil {
			b.Fatal(err)
		}
	}
}
