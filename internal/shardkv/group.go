package shardkv

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/internal/shard"
)

// State is what a group does with one shard under its current
// configuration.
type State uint8

const (
	// NotOwned: the shard belongs to another group (or none); the group
	// holds no data for it.
	NotOwned State = iota
	// Serving: the group owns the shard and serves it.
	Serving
	// Pulling: the group owns the shard in its current configuration but
	// waits for the data from the previous owner; requests are refused.
	Pulling
	// HandingOff: the group owned the shard in the previous configuration;
	// its data is frozen (invisible to requests) until the new owner
	// confirms it installed it.
	HandingOff
	// GCPending: the shard was installed here and is served; the previous
	// owner has not yet confirmed that it deleted its copy.
	GCPending
)

func (s State) String() string {
	switch s {
	case NotOwned:
		return "not-owned"
	case Serving:
		return "serving"
	case Pulling:
		return "pulling"
	case HandingOff:
		return "handing-off"
	case GCPending:
		return "gc-pending"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// serves reports whether requests for a shard in this state are served.
func (s State) serves() bool { return s == Serving || s == GCPending }

// Errors. Results carry them wrapped; test with errors.Is.
var (
	// ErrWrongGroup: the request's shard is not served by this group under
	// its current configuration (it belongs elsewhere, or is still being
	// pulled). The client should fetch a newer configuration and retry.
	ErrWrongGroup = errors.New("shardkv: wrong group")
	// ErrCrossShard: a request touches keys of more than one shard.
	ErrCrossShard = errors.New("shardkv: request spans shards")
	// ErrNotReady: the shard is not yet frozen here at that configuration;
	// the puller should retry later.
	ErrNotReady = errors.New("shardkv: shard not ready")
	// ErrShardGone: this group no longer holds the shard for that
	// configuration (it was already handed off and deleted).
	ErrShardGone = errors.New("shardkv: shard already handed off")
	// ErrCorruptEntry: an entry or snapshot does not decode.
	ErrCorruptEntry = errors.New("shardkv: corrupt entry")
)

// Entry kinds: the first byte of every payload Apply takes.
const (
	opKV          byte = 1 // a kv.Command
	opReconfigure byte = 2 // the next shard configuration
	opInstall     byte = 3 // a pulled shard's data
	opDelete      byte = 4 // the new owner confirmed it installed a shard
	opGCDone      byte = 5 // the old owner confirmed it deleted a shard
)

// Group is one shard group's replicated state. Apply, Restore and the
// snapshot capture run on the goroutine that applies the log; the read
// methods may run concurrently with them.
type Group struct {
	gid     shard.GroupID
	nShards int

	mu     sync.RWMutex
	store  *kv.Store
	cur    shard.Config // the configuration the group is in
	prev   shard.Config // the one before it (where pulled shards come from)
	states []State
}

// New returns the state of group gid in a cluster of nShards shards, at
// configuration 0 (no shard owned).
func New(gid shard.GroupID, nShards int, opts kv.Options) *Group {
	g := &Group{
		gid:     gid,
		nShards: nShards,
		store:   kv.NewStore(opts),
		cur:     shard.InitialConfig(nShards),
		prev:    shard.InitialConfig(nShards),
		states:  make([]State, nShards),
	}
	g.updateVisibility()
	return g
}

// GID returns the group's ID.
func (g *Group) GID() shard.GroupID { return g.gid }

// NumShards returns the cluster's shard count.
func (g *Group) NumShards() int { return g.nShards }

// ShardOf returns the shard of key.
func (g *Group) ShardOf(key []byte) int { return shard.ShardOf(key, g.nShards) }

// updateVisibility makes the store show exactly the keys of served shards.
// It runs with g.mu held for writing, whenever states change.
func (g *Group) updateVisibility() {
	served := make([]bool, g.nShards)
	for i, st := range g.states {
		served[i] = st.serves()
	}
	n := g.nShards
	g.store.SetVisible(func(key []byte) bool { return served[shard.ShardOf(key, n)] })
}

// EncodeKV wraps an encoded kv.Command as a payload for Apply.
func EncodeKV(cmd []byte) []byte { return append([]byte{opKV}, cmd...) }

// EncodeReconfigure is the payload that moves the group to cfg.
func EncodeReconfigure(cfg shard.Config) ([]byte, error) {
	return cfg.AppendBinary([]byte{opReconfigure})
}

// EncodeInstall is the payload that installs a pulled shard's blob (from
// kv.Store.ExportShard via Export) in configuration num.
func EncodeInstall(num uint64, sh int, blob []byte) []byte {
	b := []byte{opInstall}
	b = binary.AppendUvarint(b, num)
	b = binary.AppendUvarint(b, uint64(sh))
	return append(b, blob...)
}

// EncodeDelete is the payload with which an old owner deletes shard sh
// of configuration num after the new owner installed it.
func EncodeDelete(num uint64, sh int) []byte { return encodeNumShard(opDelete, num, sh) }

// EncodeGCDone is the payload with which the new owner records that the
// old owner deleted shard sh of configuration num.
func EncodeGCDone(num uint64, sh int) []byte { return encodeNumShard(opGCDone, num, sh) }

func encodeNumShard(op byte, num uint64, sh int) []byte {
	b := []byte{op}
	b = binary.AppendUvarint(b, num)
	return binary.AppendUvarint(b, uint64(sh))
}

func decodeNumShard(b []byte, nShards int) (num uint64, sh int, rest []byte, err error) {
	num, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, 0, nil, fmt.Errorf("%w: configuration number", ErrCorruptEntry)
	}
	b = b[n:]
	s, n := binary.Uvarint(b)
	if n <= 0 || s >= uint64(nShards) {
		return 0, 0, nil, fmt.Errorf("%w: shard number", ErrCorruptEntry)
	}
	return num, int(s), b[n:], nil
}

// DeleteResult answers an opDelete entry.
type DeleteResult struct {
	// Done: the shard's data is gone from this group (now or earlier).
	Done bool
	Err  error
}

// Apply applies one payload at a log index. Its result is a *kv.Result
// for kv commands (with Err wrapping ErrWrongGroup or ErrCrossShard when
// refused) or a *RangedResult for a ranged delete, a *DeleteResult for
// shard deletes, and nil otherwise.
func (g *Group) Apply(index uint64, payload []byte) any {
	g.mu.Lock()
	defer g.mu.Unlock()
	if applied := g.store.AppliedIndex(); index <= applied {
		// Replayed: every entry takes effect once, as in kv.Store.
		return &kv.Result{Err: fmt.Errorf("%w: index %d, applied index %d", kv.ErrIndexApplied, index, applied)}
	}
	if len(payload) == 0 {
		g.store.RecordIndex(index)
		return nil
	}
	switch payload[0] {
	case opKV:
		return g.applyKV(index, payload[1:])
	case opReconfigure:
		var cfg shard.Config
		if err := cfg.UnmarshalBinary(payload[1:]); err == nil {
			g.reconfigure(cfg)
		}
		g.store.RecordIndex(index)
		return nil
	case opInstall:
		num, sh, blob, err := decodeNumShard(payload[1:], g.nShards)
		if err != nil || num != g.cur.Num || g.states[sh] != Pulling {
			g.store.RecordIndex(index) // a duplicate or a stale retry
			return nil
		}
		if g.store.InstallShard(index, blob) == nil {
			g.states[sh] = GCPending
			g.updateVisibility()
		}
		return nil
	case opDelete:
		num, sh, _, err := decodeNumShard(payload[1:], g.nShards)
		if err != nil {
			g.store.RecordIndex(index)
			return &DeleteResult{Err: err}
		}
		switch {
		case num > g.cur.Num:
			g.store.RecordIndex(index)
			return &DeleteResult{Err: fmt.Errorf("%w: group %d is at configuration %d, behind %d", ErrNotReady, g.gid, g.cur.Num, num)}
		case num == g.cur.Num && g.states[sh] == HandingOff:
			n := g.nShards
			g.store.DeleteShard(index, func(key []byte) bool { return shard.ShardOf(key, n) == sh })
			g.states[sh] = NotOwned
			return &DeleteResult{Done: true}
		}
		// Deleted earlier: the group cannot leave configuration num
		// while it still hands the shard off.
		g.store.RecordIndex(index)
		return &DeleteResult{Done: true}
	case opGCDone:
		num, sh, _, err := decodeNumShard(payload[1:], g.nShards)
		if err == nil && num == g.cur.Num && g.states[sh] == GCPending {
			g.states[sh] = Serving
		}
		g.store.RecordIndex(index)
		return nil
	}
	g.store.RecordIndex(index)
	return &kv.Result{Err: fmt.Errorf("%w: unknown entry kind %d", ErrCorruptEntry, payload[0])}
}

// Settled reports whether no shard is in transit, so the next
// configuration may apply.
func (g *Group) settledLocked() bool {
	for _, st := range g.states {
		if st == Pulling || st == HandingOff || st == GCPending {
			return false
		}
	}
	return true
}

// reconfigure moves to cfg if it is the next configuration and every
// shard is settled; otherwise the entry is a duplicate or premature and
// changes nothing.
func (g *Group) reconfigure(cfg shard.Config) {
	if cfg.Num != g.cur.Num+1 || len(cfg.Shards) != g.nShards || !g.settledLocked() {
		return
	}
	for sh := range g.nShards {
		was, now := g.cur.Shards[sh], cfg.Shards[sh]
		switch {
		case now == g.gid && was == g.gid:
			g.states[sh] = Serving
		case now == g.gid && was == shard.NoGroup:
			g.states[sh] = Serving // a fresh shard: nothing to fetch
		case now == g.gid:
			g.states[sh] = Pulling
		case was == g.gid:
			g.states[sh] = HandingOff
		default:
			g.states[sh] = NotOwned
		}
	}
	g.prev, g.cur = g.cur, cfg.Clone()
	g.updateVisibility()
}

// applyKV applies a client command if its shard is served here.
func (g *Group) applyKV(index uint64, data []byte) any {
	cmd, err := kv.UnmarshalCommand(data)
	if err != nil {
		return g.store.Apply(index, data) // the store reports corruption
	}
	sh, err := CommandShard(cmd, g.nShards)
	if err != nil {
		g.store.RecordIndex(index)
		return &kv.Result{Err: err}
	}
	if sh >= 0 && !g.states[sh].serves() {
		g.store.RecordIndex(index)
		return &kv.Result{Err: g.wrongGroup(sh)}
	}
	if sh < 0 {
		return &RangedResult{Result: g.store.Apply(index, data), Served: g.servedLocked()}
	}
	return g.store.Apply(index, data)
}

// RangedResult answers a kv command that names no single key (a ranged
// delete): the store's result, and which shards the group served when it
// applied, so a caller running it in every group can tell whether some
// shard (in transit) was served by none of them.
type RangedResult struct {
	*kv.Result
	Served []bool
}

func (g *Group) servedLocked() []bool {
	served := make([]bool, g.nShards)
	for i, st := range g.states {
		served[i] = st.serves()
	}
	return served
}

func (g *Group) wrongGroup(sh int) error {
	return fmt.Errorf("%w: shard %d is %s in group %d at configuration %d", ErrWrongGroup, sh, g.states[sh], g.gid, g.cur.Num)
}

// CommandShard returns the one shard a command's keys fall in, -1 if it
// names no single key (a ranged delete, which acts on the served shards'
// keys in the range), or an error wrapping ErrCrossShard if its keys fall
// in more than one shard or a transaction uses a range.
func CommandShard(cmd *kv.Command, nShards int) (int, error) {
	switch {
	case cmd.Put != nil:
		return shard.ShardOf(cmd.Put.Key, nShards), nil
	case cmd.Append != nil:
		return shard.ShardOf(cmd.Append.Key, nShards), nil
	case cmd.DeleteRange != nil:
		if len(cmd.DeleteRange.RangeEnd) == 0 {
			return shard.ShardOf(cmd.DeleteRange.Key, nShards), nil
		}
		return -1, nil
	case cmd.Txn != nil:
		return TxnShard(cmd.Txn, nShards)
	}
	return -1, nil
}

// TxnShard returns the one shard all keys of a transaction fall in, or an
// error wrapping ErrCrossShard.
func TxnShard(t *pb.TxnRequest, nShards int) (int, error) {
	sh := -1
	add := func(key, end []byte) error {
		if len(end) != 0 {
			return fmt.Errorf("%w: a transaction in a sharded cluster may use single keys only; the range [%q, %q) spans shards", ErrCrossShard, key, end)
		}
		s := shard.ShardOf(key, nShards)
		if sh >= 0 && s != sh {
			return fmt.Errorf("%w: the transaction's keys fall in shards %d and %d; cross-shard transactions are not supported yet", ErrCrossShard, sh, s)
		}
		sh = s
		return nil
	}
	var walk func(t *pb.TxnRequest) error
	walk = func(t *pb.TxnRequest) error {
		for _, c := range t.Compare {
			if err := add(c.Key, c.RangeEnd); err != nil {
				return err
			}
		}
		for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
			for _, op := range ops {
				var err error
				switch r := op.Request.(type) {
				case *pb.RequestOp_RequestRange:
					err = add(r.RequestRange.Key, r.RequestRange.RangeEnd)
				case *pb.RequestOp_RequestPut:
					err = add(r.RequestPut.Key, nil)
				case *pb.RequestOp_RequestDeleteRange:
					err = add(r.RequestDeleteRange.Key, r.RequestDeleteRange.RangeEnd)
				case *pb.RequestOp_RequestTxn:
					err = walk(r.RequestTxn)
				}
				if err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(t); err != nil {
		return -1, err
	}
	return sh, nil
}

// Range answers a read from local state: the caller has already waited
// for a read index if the read is linearizable. A single-key read of a
// shard not served here fails with ErrWrongGroup; a ranged read returns
// the keys of the served shards only.
func (g *Group) Range(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if len(r.RangeEnd) == 0 {
		if sh := shard.ShardOf(r.Key, g.nShards); !g.states[sh].serves() {
			return nil, g.wrongGroup(sh)
		}
	}
	return g.store.Range(r)
}

// RangeServed answers a ranged read like Range, and also says which
// shards were served at the moment of the read, so a caller gathering a
// range from every group can tell whether some shard (in transit) was
// served by none of them.
func (g *Group) RangeServed(r *pb.RangeRequest) (*pb.RangeResponse, []bool, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	served := g.servedLocked()
	if len(r.RangeEnd) == 0 {
		if sh := shard.ShardOf(r.Key, g.nShards); !g.states[sh].serves() {
			return nil, served, g.wrongGroup(sh)
		}
	}
	resp, err := g.store.Range(r)
	return resp, served, err
}

// Export returns shard sh's data as of configuration num, for the group
// that pulls it. Any replica that has applied configuration num can
// answer, since the shard is frozen there: ErrNotReady if this replica is
// not there yet, ErrShardGone if the shard was already handed off.
func (g *Group) Export(num uint64, sh int) ([]byte, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if sh < 0 || sh >= g.nShards {
		return nil, fmt.Errorf("%w: no shard %d", ErrShardGone, sh)
	}
	switch {
	case g.cur.Num < num:
		return nil, fmt.Errorf("%w: group %d is at configuration %d, not yet %d", ErrNotReady, g.gid, g.cur.Num, num)
	case g.cur.Num > num || g.states[sh] != HandingOff:
		return nil, fmt.Errorf("%w: group %d at configuration %d holds shard %d as %s", ErrShardGone, g.gid, g.cur.Num, sh, g.states[sh])
	}
	n := g.nShards
	return g.store.ExportShard(func(key []byte) bool { return shard.ShardOf(key, n) == sh })
}

// Status is a group's view of its shards.
type Status struct {
	GID    shard.GroupID
	Config shard.Config // current
	Prev   shard.Config
	States []State
}

// Status returns a copy of the group's configuration and shard states.
func (g *Group) Status() Status {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return Status{GID: g.gid, Config: g.cur.Clone(), Prev: g.prev.Clone(), States: append([]State(nil), g.states...)}
}

// KeysPerShard counts the keys the store holds per shard, hidden ones
// included (so garbage collection can be observed).
func (g *Group) KeysPerShard() []int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	counts := make([]int, g.nShards)
	n := g.nShards
	g.store.CountMatching(func(key []byte) bool {
		counts[shard.ShardOf(key, n)]++
		return false
	})
	return counts
}

// Revision is the group's store revision.
func (g *Group) Revision() int64 { return g.store.Revision() }

// Stats summarises the group's store.
func (g *Group) Stats() kv.Stats { return g.store.Stats() }

// AppliedIndex is the last log index applied.
func (g *Group) AppliedIndex() uint64 { return g.store.AppliedIndex() }

// Skip records a log index that carries nothing for the group.
func (g *Group) Skip(index uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.store.RecordIndex(index)
}

const snapMagic = "CAIRNSKV1"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CaptureSnapshot takes the group's state now and returns the function
// that writes it: a checksummed header (group, shard count, current and
// previous configuration, shard states), then the store's snapshot.
func (g *Group) CaptureSnapshot() (func(io.Writer) error, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	hdr := []byte(snapMagic)
	hdr = binary.AppendUvarint(hdr, uint64(g.gid))
	hdr = binary.AppendUvarint(hdr, uint64(g.nShards))
	for _, c := range []shard.Config{g.cur, g.prev} {
		cb, err := c.MarshalBinary()
		if err != nil {
			return nil, err
		}
		hdr = binary.AppendUvarint(hdr, uint64(len(cb)))
		hdr = append(hdr, cb...)
	}
	for _, st := range g.states {
		hdr = append(hdr, byte(st))
	}
	hdr = binary.BigEndian.AppendUint32(hdr, crc32.Checksum(hdr, castagnoli))
	writeStore := g.store.CaptureSnapshot()
	return func(w io.Writer) error {
		bw := bufio.NewWriter(w)
		bw.Write(binary.AppendUvarint(nil, uint64(len(hdr))))
		bw.Write(hdr)
		if err := writeStore(bw); err != nil {
			return err
		}
		return bw.Flush()
	}, nil
}

// Restore replaces the group's state with a snapshot's. On error the
// state is unchanged.
func (g *Group) Restore(r io.Reader) error {
	br := bufio.NewReader(r)
	n, err := binary.ReadUvarint(br)
	if err != nil || n < uint64(len(snapMagic))+4 || n > 1<<30 {
		return fmt.Errorf("%w: snapshot header length", ErrCorruptEntry)
	}
	hdr := make([]byte, n)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return fmt.Errorf("%w: snapshot header truncated: %v", ErrCorruptEntry, err)
	}
	body, sum := hdr[:len(hdr)-4], binary.BigEndian.Uint32(hdr[len(hdr)-4:])
	if crc32.Checksum(body, castagnoli) != sum || string(body[:len(snapMagic)]) != snapMagic {
		return fmt.Errorf("%w: snapshot header checksum or magic", ErrCorruptEntry)
	}
	b := body[len(snapMagic):]
	next := func() uint64 {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			b = nil
			return 0
		}
		b = b[k:]
		return v
	}
	gid, nShards := shard.GroupID(next()), int(next())
	if gid != g.gid || nShards != g.nShards {
		return fmt.Errorf("%w: snapshot of group %d with %d shards, this is group %d with %d", ErrCorruptEntry, gid, nShards, g.gid, g.nShards)
	}
	var cfgs [2]shard.Config
	for i := range cfgs {
		l := next()
		if b == nil || l > uint64(len(b)) {
			return fmt.Errorf("%w: snapshot configuration", ErrCorruptEntry)
		}
		if err := cfgs[i].UnmarshalBinary(b[:l]); err != nil {
			return fmt.Errorf("%w: snapshot configuration: %v", ErrCorruptEntry, err)
		}
		b = b[l:]
	}
	if len(b) != nShards {
		return fmt.Errorf("%w: snapshot shard states", ErrCorruptEntry)
	}
	states := make([]State, nShards)
	for i, v := range b {
		if State(v) > GCPending {
			return fmt.Errorf("%w: snapshot shard state %d", ErrCorruptEntry, v)
		}
		states[i] = State(v)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.store.Restore(br); err != nil {
		return err
	}
	g.cur, g.prev, g.states = cfgs[0], cfgs[1], states
	g.updateVisibility()
	return nil
}
