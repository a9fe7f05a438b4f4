package shardkv

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/cairn-db/cairn/internal/kv"
	"github.com/cairn-db/cairn/internal/shard"
)

// propertySeeds returns the seeds to run: 1..30 by default (1..8 with
// -short). CAIRN_SHARDKV_SEEDS=N runs 1..N, CAIRN_SHARDKV_SEEDS=A-B runs
// A..B (use A-A to replay the one seed a failure printed).
func propertySeeds(t *testing.T) (lo, hi uint64) {
	if v := os.Getenv("CAIRN_SHARDKV_SEEDS"); v != "" {
		a, b, isRange := strings.Cut(v, "-")
		x, err1 := strconv.ParseUint(a, 10, 64)
		y, err2 := x, error(nil)
		if isRange {
			y, err2 = strconv.ParseUint(b, 10, 64)
		} else {
			x = 1
		}
		if err1 != nil || err2 != nil || x > y {
			t.Fatalf("CAIRN_SHARDKV_SEEDS=%q: want N or A-B", v)
		}
		return x, y
	}
	if testing.Short() {
		return 1, 8
	}
	return 1, 30
}

// TestMigrationProperty runs a controller making random configurations
// (joins, leaves, moves) over 3 or 4 groups, drives the migration protocol
// between the groups in random interleavings, with random client appends
// routed by the controller's latest configuration (and sometimes to the
// wrong group), lost acknowledgements, duplicate entries, stale and
// premature protocol entries, and snapshot restores. It checks after every
// step that no two groups serve the same shard and that every group
// serving a shard holds exactly the writes applied to it; and at the end,
// once every group has settled at the last configuration, that every
// write is in its final owner exactly once and no group holds keys of a
// shard it does not own.
func TestMigrationProperty(t *testing.T) {
	lo, hi := propertySeeds(t)
	for seed := lo; seed <= hi; seed++ {
		if err := runSim(t, seed); err != nil {
			t.Fatalf("seed %d: %v\nreplay: CAIRN_SHARDKV_SEEDS=%d-%d go test -run '%s' ./internal/shardkv",
				seed, err, seed, seed, t.Name())
		}
	}
}

// simFail aborts a simulation with an error.
type simFail struct{ err error }

type simGroup struct {
	r    *replica // the replica the protocol talks to (restored now and then)
	twin *replica // fed the same entries, never restored
}

// simOp is a client's outstanding append.
type simOp struct {
	seq     uint64
	key     string
	token   string
	applied bool              // the first apply happened
	result  kv.AppendResponse // its result
}

type simClient struct {
	id      uint64
	seq     uint64
	pending *simOp
}

type sim struct {
	t       *testing.T
	rng     *rand.Rand
	n       int
	ctrl    *shard.Controller
	groups  map[shard.GroupID]*simGroup
	gidList []shard.GroupID
	clients []*simClient
	keys    []string
	model   map[string]string // every applied append, in apply order
	acked   []*simOp
	trace   []string
	// confirmed[gid, num, sh]: the old owner answered Done to a delete.
	confirmed map[[3]uint64]bool
}

func (s *sim) fail(format string, args ...any) {
	tail := s.trace[max(0, len(s.trace)-15):]
	panic(simFail{fmt.Errorf("%s\nlast steps:\n  %s", fmt.Sprintf(format, args...), strings.Join(tail, "\n  "))})
}

func (s *sim) log(format string, args ...any) {
	s.trace = append(s.trace, fmt.Sprintf(format, args...))
}

func runSim(t *testing.T, seed uint64) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(simFail)
			if !ok {
				panic(r)
			}
			err = f.err
		}
	}()
	rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
	s := &sim{
		t:         t,
		rng:       rng,
		n:         []int{3, 4, 6, 8, 10}[rng.IntN(5)],
		groups:    map[shard.GroupID]*simGroup{},
		model:     map[string]string{},
		confirmed: map[[3]uint64]bool{},
	}
	s.ctrl = shard.NewController(shard.Options{Shards: s.n})
	nGroups := 3 + rng.IntN(2)
	for i := 1; i <= nGroups; i++ {
		gid := shard.GroupID(i)
		s.gidList = append(s.gidList, gid)
		s.groups[gid] = &simGroup{r: newReplica(t, gid, s.n), twin: newReplica(t, gid, s.n)}
	}
	for i := range 3 {
		s.clients = append(s.clients, &simClient{id: uint64(100 + i)})
	}
	for sh := range s.n {
		for i := range 2 {
			s.keys = append(s.keys, keyIn(s.n, sh, i))
		}
	}
	// Start with one or more groups.
	s.controller(true)

	steps := 250 + rng.IntN(100)
	maxConfigs := uint64(6 + rng.IntN(8))
	for step := range steps {
		switch p := rng.IntN(100); {
		case p < 5 && s.ctrl.Query(-1).Num < maxConfigs:
			s.controller(false)
		case p < 50:
			s.groupStep(s.gidList[rng.IntN(len(s.gidList))])
		case p < 52:
			s.restore(s.gidList[rng.IntN(len(s.gidList))])
		default:
			s.clientStep(s.clients[rng.IntN(len(s.clients))])
		}
		s.checkInvariants(step)
	}
	s.settle()
	s.finish()
	if os.Getenv("CAIRN_SHARDKV_STATS") != "" {
		count := func(sub string) int {
			n := 0
			for _, l := range s.trace {
				if strings.Contains(l, sub) {
					n++
				}
			}
			return n
		}
		t.Logf("seed %d: %d shards, %d groups, %d configs, %d installs (%d dup), %d deletes, %d gc-done, %d restores, %d applied, %d cached, %d wrong-group, %d acked",
			seed, s.n, len(s.gidList), s.ctrl.Query(-1).Num, count("install"), count("dup true"), count("delete shard"), count("gc-done"),
			count("restored"), count(": applied"), count("cached"), count("wrong group"), len(s.acked))
	}
	return nil
}

// controller applies a random join, leave or move to the controller.
func (s *sim) controller(joinOnly bool) {
	latest := s.ctrl.Query(-1)
	var members, others []shard.GroupID
	for _, gid := range s.gidList {
		if latest.Groups[gid] != nil {
			members = append(members, gid)
		} else {
			others = append(others, gid)
		}
	}
	var cmd *shard.Command
	switch p := s.rng.IntN(3); {
	case joinOnly || (p == 0 && len(others) > 0) || len(members) == 0:
		k := 1 + s.rng.IntN(len(others))
		s.rng.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
		cmd = &shard.Command{Op: shard.OpJoin, Groups: map[shard.GroupID][]string{}}
		for _, gid := range others[:k] {
			cmd.Groups[gid] = addrsOf(gid)
		}
	case p == 1 && len(members) == 1:
		// The controller refuses to remove the last group: its shards'
		// data would have nowhere to go (TestLastGroupCannotLeave).
		cmd = &shard.Command{Op: shard.OpLeave, GIDs: members}
		if res := s.ctrl.Apply(cmd.Marshal()); res.Err == nil {
			s.fail("the controller let the last group %d leave: config %+v", members[0], res.Config)
		}
		return
	case p == 1:
		cmd = &shard.Command{Op: shard.OpLeave, GIDs: []shard.GroupID{members[s.rng.IntN(len(members))]}}
	default:
		cmd = &shard.Command{Op: shard.OpMove, Shard: s.rng.IntN(s.n), GID: members[s.rng.IntN(len(members))]}
	}
	res := s.ctrl.Apply(cmd.Marshal())
	if res.Err != nil {
		s.fail("controller %v: %v", cmd.Op, res.Err)
	}
	s.log("controller %v -> config %d %v", cmd.Op, res.Config.Num, res.Config.Shards)
}

// apply applies payload to both replicas of gid and checks they agree.
func (s *sim) apply(gid shard.GroupID, payload []byte) any {
	g := s.groups[gid]
	res := g.r.apply(payload)
	tres := g.twin.apply(payload)
	if a, b := describeResult(res), describeResult(tres); a != b {
		s.fail("group %d: replica and twin answer differently: %s vs %s", gid, a, b)
	}
	return res
}

func (s *sim) status(gid shard.GroupID) Status { return s.groups[gid].r.g.Status() }

func settled(st Status) bool {
	for _, x := range st.States {
		if x == Pulling || x == HandingOff || x == GCPending {
			return false
		}
	}
	return true
}

// groupStep makes gid take one random protocol step: usually one that can
// make progress, sometimes any (a stale, duplicate or premature entry).
func (s *sim) groupStep(gid shard.GroupID) {
	st := s.status(gid)
	steps := []func(){
		func() { s.stepReconfigure(gid, st) },
		func() { s.stepPull(gid, st, false) },
		func() { s.stepPull(gid, st, true) },
		func() { s.stepDelete(gid, st) },
		func() { s.stepGCDone(gid, st) },
	}
	if s.rng.IntN(6) == 0 {
		steps[s.rng.IntN(len(steps))]()
		return
	}
	var useful []func()
	if settled(st) && st.Config.Num < s.ctrl.Query(-1).Num {
		useful = append(useful, steps[0])
	}
	for sh, x := range st.States {
		switch {
		case x == Pulling:
			useful = append(useful, steps[1])
		case x == GCPending && s.confirmed[[3]uint64{uint64(gid), st.Config.Num, uint64(sh)}]:
			useful = append(useful, steps[4])
		case x == GCPending:
			useful = append(useful, steps[3])
		}
	}
	if len(useful) == 0 {
		steps[s.rng.IntN(len(steps))]()
		return
	}
	useful[s.rng.IntN(len(useful))]()
}

func (s *sim) stepReconfigure(gid shard.GroupID, st Status) {
	latest := s.ctrl.Query(-1).Num
	num := st.Config.Num + 1
	junk := s.rng.IntN(5) == 0
	if junk {
		// A duplicate, or one from the future.
		num = []uint64{st.Config.Num, st.Config.Num + 2, 0}[s.rng.IntN(3)]
	}
	if num > latest {
		return
	}
	cfg := s.ctrl.Query(int64(num))
	payload, _ := EncodeReconfigure(cfg)
	s.apply(gid, payload)
	after := s.status(gid)
	moved := after.Config.Num != st.Config.Num
	want := !junk && settled(st)
	s.log("group %d: reconfigure %d (settled %v) -> config %d %v", gid, num, settled(st), after.Config.Num, after.States)
	if moved != want {
		s.fail("group %d at %d (states %v): reconfigure to %d moved=%v, want %v", gid, st.Config.Num, st.States, num, moved, want)
	}
	if moved && !after.Config.Equal(cfg) {
		s.fail("group %d: config %+v, want %+v", gid, after.Config, cfg)
	}
}

// stepPull pulls one Pulling shard (or, if dup, re-pulls a GCPending one).
func (s *sim) stepPull(gid shard.GroupID, st Status, dup bool) {
	want := Pulling
	if dup {
		want = GCPending
	}
	sh, ok := s.pick(st, want)
	if !ok {
		return
	}
	num := st.Config.Num
	from := st.Prev.Shards[sh]
	if from == shard.NoGroup || from == gid {
		s.fail("group %d pulls shard %d from %d", gid, sh, from)
	}
	blob, err := s.groups[from].r.g.Export(num, sh)
	fromSt := s.status(from)
	switch {
	case errors.Is(err, ErrNotReady):
		if fromSt.Config.Num >= num {
			s.fail("export(%d, %d) from group %d at config %d: %v", num, sh, from, fromSt.Config.Num, err)
		}
		return
	case errors.Is(err, ErrShardGone):
		if !dup {
			s.fail("export(%d, %d) from group %d (states %v) while %d pulls it: %v", num, sh, from, fromSt.States, gid, err)
		}
		return
	case err != nil:
		s.fail("export: %v", err)
	}
	if tb, err := s.groups[from].twin.g.Export(num, sh); err != nil || !bytes.Equal(tb, blob) {
		s.fail("group %d: twin exports shard %d differently (%v)", from, sh, err)
	}
	var before map[string]string
	if dup {
		before = s.groups[gid].r.all()
	}
	s.apply(gid, EncodeInstall(num, sh, blob))
	after := s.status(gid)
	s.log("group %d: install shard %d of config %d from %d (dup %v) -> %v", gid, sh, num, from, dup, after.States)
	if after.States[sh] != GCPending {
		s.fail("group %d: shard %d is %v after install", gid, sh, after.States[sh])
	}
	if dup {
		if got := s.groups[gid].r.all(); !mapsEqual(got, before) {
			s.fail("group %d: duplicate install of shard %d changed the data", gid, sh)
		}
	}
}

func (s *sim) stepDelete(gid shard.GroupID, st Status) {
	sh, ok := s.pick(st, GCPending)
	if !ok {
		// A duplicate delete of a shard already collected now and then.
		if sh, ok = s.pick(st, Serving); !ok || st.Prev.Shards[sh] == gid || st.Prev.Shards[sh] == shard.NoGroup || s.rng.IntN(3) != 0 {
			return
		}
	}
	num := st.Config.Num
	from := st.Prev.Shards[sh]
	if from == shard.NoGroup || from == gid {
		return
	}
	res, _ := s.apply(from, EncodeDelete(num, sh)).(*DeleteResult)
	s.log("group %d: delete shard %d of config %d at %d -> %+v", gid, sh, num, from, res)
	if res == nil || !res.Done || res.Err != nil {
		s.fail("delete(%d, %d) at group %d: %+v", num, sh, from, res)
	}
	fromSt := s.status(from)
	if fromSt.Config.Num == num && fromSt.States[sh] != NotOwned {
		s.fail("group %d: shard %d is %v after its delete", from, sh, fromSt.States[sh])
	}
	if k := s.groups[from].r.g.KeysPerShard()[sh]; k != 0 && !fromSt.States[sh].serves() {
		s.fail("group %d holds %d keys of shard %d after its delete", from, k, sh)
	}
	s.confirmed[[3]uint64{uint64(gid), num, uint64(sh)}] = true
}

func (s *sim) stepGCDone(gid shard.GroupID, st Status) {
	sh, ok := s.pickConfirmed(gid, st)
	if !ok {
		if sh, ok = s.pick(st, Serving); !ok {
			return // nothing to confirm; a stray duplicate below is harmless anyway
		}
	}
	num := st.Config.Num
	conf := s.confirmed[[3]uint64{uint64(gid), num, uint64(sh)}]
	if st.States[sh] == GCPending && !conf {
		return // the old owner has not deleted it yet
	}
	s.apply(gid, EncodeGCDone(num, sh))
	after := s.status(gid)
	s.log("group %d: gc-done shard %d of config %d -> %v", gid, sh, num, after.States)
	if after.States[sh] != Serving {
		s.fail("group %d: shard %d is %v after gc-done", gid, sh, after.States[sh])
	}
}

// pickConfirmed returns a random GCPending shard whose old owner has
// deleted it, or else any GCPending shard.
func (s *sim) pickConfirmed(gid shard.GroupID, st Status) (int, bool) {
	var c []int
	for sh, x := range st.States {
		if x == GCPending && s.confirmed[[3]uint64{uint64(gid), st.Config.Num, uint64(sh)}] {
			c = append(c, sh)
		}
	}
	if len(c) == 0 {
		return s.pick(st, GCPending)
	}
	return c[s.rng.IntN(len(c))], true
}

// pick returns a random shard in state want.
func (s *sim) pick(st Status, want State) (int, bool) {
	var c []int
	for sh, x := range st.States {
		if x == want {
			c = append(c, sh)
		}
	}
	if len(c) == 0 {
		return 0, false
	}
	return c[s.rng.IntN(len(c))], true
}

func (s *sim) restore(gid shard.GroupID) {
	g := s.groups[gid]
	g.r = g.r.restored()
	s.log("group %d: restored from a snapshot", gid)
}

// clientStep sends a client's outstanding append again, or a new one, to
// the owner the latest configuration names (now and then to a random
// group instead).
func (s *sim) clientStep(c *simClient) {
	if c.pending == nil {
		c.seq++
		key := s.keys[s.rng.IntN(len(s.keys))]
		c.pending = &simOp{seq: c.seq, key: key, token: fmt.Sprintf("<%d.%d>", c.id, c.seq)}
	}
	latest := s.ctrl.Query(-1)
	target := latest.Owner([]byte(c.pending.key))
	if s.rng.IntN(6) == 0 {
		target = s.gidList[s.rng.IntN(len(s.gidList))]
	}
	if target == shard.NoGroup {
		return
	}
	s.send(c, target, s.rng.IntN(5) != 0)
}

// send applies c's pending append at group target; if ack, a success is
// acknowledged to the client (otherwise the reply is lost and the client
// will retry).
func (s *sim) send(c *simClient, target shard.GroupID, ack bool) bool {
	op := c.pending
	cmd := &kv.Command{ClientID: c.id, Seq: op.seq, Time: 1, Append: &kv.AppendRequest{Key: []byte(op.key), Value: []byte(op.token)}}
	payload := EncodeKV(cmd.Marshal())
	times := 1
	if s.rng.IntN(8) == 0 {
		times = 2 // a duplicated log entry
	}
	var res *kv.Result
	for range times {
		res, _ = s.apply(target, payload).(*kv.Result)
		st := s.status(target)
		sh := shard.ShardOf([]byte(op.key), s.n)
		switch {
		case res == nil:
			s.fail("append result is not a *kv.Result")
		case errors.Is(res.Err, ErrWrongGroup):
			if st.States[sh].serves() {
				s.fail("group %d refused shard %d that it serves (%v)", target, sh, st.States[sh])
			}
			s.log("client %d seq %d %s at group %d: wrong group", c.id, op.seq, op.key, target)
			return false
		case res.Err != nil:
			s.fail("client %d seq %d at group %d: %v", c.id, op.seq, target, res.Err)
		}
		if !st.States[sh].serves() {
			s.fail("group %d applied a write of shard %d in state %v", target, sh, st.States[sh])
		}
		if !op.applied {
			op.applied = true
			s.model[op.key] += op.token
			op.result = *res.Append
			if res.Append.Length != int64(len(s.model[op.key])) {
				s.fail("client %d seq %d at group %d: length %d, model %q", c.id, op.seq, target, res.Append.Length, s.model[op.key])
			}
			s.log("client %d seq %d %s at group %d: applied (rev %d)", c.id, op.seq, op.key, target, res.Append.Revision)
		} else if *res.Append != op.result {
			s.fail("client %d seq %d at group %d: retry answered %+v, first apply %+v (applied twice?)", c.id, op.seq, target, *res.Append, op.result)
		} else {
			s.log("client %d seq %d at group %d: cached", c.id, op.seq, target)
		}
	}
	if ack {
		s.acked = append(s.acked, op)
		c.pending = nil
	}
	return true
}

// checkInvariants: at most one group serves each shard, a group serves a
// shard only if its configuration gives it that shard, and every serving
// group holds exactly the applied writes of its shards.
func (s *sim) checkInvariants(step int) {
	server := make([]shard.GroupID, s.n)
	for _, gid := range s.gidList {
		st := s.status(gid)
		for sh, x := range st.States {
			if !x.serves() {
				continue
			}
			if server[sh] != shard.NoGroup {
				s.fail("step %d: shard %d served by groups %d and %d", step, sh, server[sh], gid)
			}
			server[sh] = gid
			if st.Config.Shards[sh] != gid {
				s.fail("step %d: group %d serves shard %d, owned by %d in its config %d", step, gid, sh, st.Config.Shards[sh], st.Config.Num)
			}
		}
	}
	for _, key := range s.keys {
		gid := server[shard.ShardOf([]byte(key), s.n)]
		if gid == shard.NoGroup {
			continue
		}
		got, _ := s.groups[gid].r.get(key)
		if got != s.model[key] {
			s.fail("step %d: group %d serving %s has %q, applied writes %q", step, gid, key, got, s.model[key])
		}
	}
}

// settle drives every group to the last configuration, settled; it
// fails if that takes too long (a liveness bug).
func (s *sim) settle() {
	last := s.ctrl.Query(-1)
	for round := 0; ; round++ {
		if round > 100 {
			var sts []string
			for _, gid := range s.gidList {
				st := s.status(gid)
				sts = append(sts, fmt.Sprintf("group %d at %d: %v", gid, st.Config.Num, st.States))
			}
			s.fail("groups do not settle at config %d:\n%s", last.Num, strings.Join(sts, "\n"))
		}
		done := true
		for _, gid := range s.gidList {
			st := s.status(gid)
			if st.Config.Num != last.Num || !settled(st) {
				done = false
			}
			if settled(st) && st.Config.Num < last.Num {
				s.stepReconfigure(gid, st)
				continue
			}
			for sh, x := range st.States {
				switch x {
				case Pulling:
					s.stepPullShard(gid, sh)
				case GCPending:
					st := s.status(gid)
					s.stepDeleteShard(gid, st, sh)
					s.stepGCDone(gid, s.status(gid))
				}
			}
			s.checkInvariants(-round)
		}
		if done {
			return
		}
	}
}

func (s *sim) stepPullShard(gid shard.GroupID, sh int) {
	st := s.status(gid)
	if st.States[sh] != Pulling {
		return
	}
	num, from := st.Config.Num, st.Prev.Shards[sh]
	blob, err := s.groups[from].r.g.Export(num, sh)
	if err != nil {
		if errors.Is(err, ErrNotReady) {
			return
		}
		s.fail("settle: export(%d, %d) from %d: %v", num, sh, from, err)
	}
	s.apply(gid, EncodeInstall(num, sh, blob))
	s.log("settle: group %d installs shard %d of %d", gid, sh, num)
}

func (s *sim) stepDeleteShard(gid shard.GroupID, st Status, sh int) {
	num, from := st.Config.Num, st.Prev.Shards[sh]
	res, _ := s.apply(from, EncodeDelete(num, sh)).(*DeleteResult)
	if res == nil || !res.Done {
		s.fail("settle: delete(%d, %d) at %d: %+v", num, sh, from, res)
	}
	s.confirmed[[3]uint64{uint64(gid), num, uint64(sh)}] = true
}

// finish completes the outstanding appends and checks the final state.
func (s *sim) finish() {
	last := s.ctrl.Query(-1)
	for _, c := range s.clients {
		if c.pending != nil && !s.send(c, last.Owner([]byte(c.pending.key)), true) {
			s.fail("client %d: settled owner refused its append", c.id)
		}
	}
	s.checkInvariants(-1)
	for _, gid := range s.gidList {
		st := s.status(gid)
		keys := s.groups[gid].r.g.KeysPerShard()
		for sh, x := range st.States {
			owns := last.Shards[sh] == gid
			if owns && x != Serving || !owns && x != NotOwned {
				s.fail("group %d: shard %d is %v at the end (owner %d)", gid, sh, x, last.Shards[sh])
			}
			if !owns && keys[sh] != 0 {
				s.fail("group %d holds %d keys of shard %d, owned by %d", gid, keys[sh], sh, last.Shards[sh])
			}
		}
		// The replica that was restored along the way and the one that was
		// not are the same, byte for byte.
		g := s.groups[gid]
		if !bytes.Equal(snapshotOf(s.t, g.r.g), snapshotOf(s.t, g.twin.g)) {
			s.fail("group %d: restored replica and twin differ", gid)
		}
	}
	// Every acknowledged write is in its final owner exactly once, and no
	// other group answers for its key.
	for _, op := range s.acked {
		owner := last.Owner([]byte(op.key))
		v, _ := s.groups[owner].r.get(op.key)
		if strings.Count(v, op.token) != 1 {
			s.fail("acknowledged %s of %s appears %d times in %q at owner %d", op.token, op.key, strings.Count(v, op.token), v, owner)
		}
		for _, gid := range s.gidList {
			if gid == owner {
				continue
			}
			_, err := s.groups[gid].r.g.Range(&pb.RangeRequest{Key: []byte(op.key)})
			if !errors.Is(err, ErrWrongGroup) {
				s.fail("group %d answers for %s (owner %d): %v", gid, op.key, owner, err)
			}
		}
	}
	total := 0
	for _, gid := range s.gidList {
		total += len(s.groups[gid].r.all())
	}
	if total != len(s.model) {
		s.fail("groups show %d keys in all, %d were written", total, len(s.model))
	}
	for _, key := range s.keys {
		owner := last.Owner([]byte(key))
		if v, _ := s.groups[owner].r.get(key); v != s.model[key] {
			s.fail("%s at owner %d = %q, applied %q", key, owner, v, s.model[key])
		}
	}
	if len(s.acked) == 0 {
		s.fail("no write was acknowledged: the simulation tests nothing")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
