package chaos

import (
	"bytes"
	"io"
	"math"
	"net"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/cairn-db/cairn/client"
)

// The checkers must reject the anomalies they exist to find; these tests
// feed them hand-made histories with each anomaly.

func TestModelRejectsStaleRead(t *testing.T) {
	ops := []porcupine.Operation{
		{ClientId: 0, Input: Input{Op: "put", Key: "r", Value: "a"}, Call: 0, Output: Output{}, Return: 10},
		{ClientId: 1, Input: Input{Op: "put", Key: "r", Value: "b"}, Call: 20, Output: Output{}, Return: 30},
		// Starts after b was acknowledged, still sees a.
		{ClientId: 2, Input: Input{Op: "get", Key: "r"}, Call: 40, Output: Output{Value: "a"}, Return: 50},
	}
	if porcupine.CheckOperations(Model, ops) {
		t.Fatal("stale read accepted")
	}
	ops[2].Output = Output{Value: "b"}
	if !porcupine.CheckOperations(Model, ops) {
		t.Fatal("fresh read rejected")
	}
}

func TestModelUnknownWriteMayApplyLate(t *testing.T) {
	ents := []Entry{
		{Client: 0, Input: Input{Op: "put", Key: "r", Value: "a"}, Outcome: OutcomeUnknown, Call: 0, Return: 10},
		{Client: 1, Input: Input{Op: "get", Key: "r"}, Output: Output{Value: ""}, Outcome: OutcomeOK, Call: 20, Return: 30},
		{Client: 1, Input: Input{Op: "get", Key: "r"}, Output: Output{Value: "a"}, Outcome: OutcomeOK, Call: 40, Return: 50},
		{Client: 2, Input: Input{Op: "get", Key: "r"}, Output: Output{Value: "zzz"}, Outcome: OutcomeFail, Call: 40, Return: 50},
	}
	ops := Operations(ents)
	if len(ops) != 3 || ops[0].Return != math.MaxInt64 {
		t.Fatalf("operations: %+v", ops)
	}
	if !porcupine.CheckOperations(Model, ops) {
		t.Fatal("an unknown write that takes effect late was rejected")
	}
	// But once seen, it cannot disappear.
	ents = append(ents, Entry{Client: 1, Input: Input{Op: "get", Key: "r"}, Output: Output{Value: ""}, Outcome: OutcomeOK, Call: 60, Return: 70})
	if porcupine.CheckOperations(Model, Operations(ents)) {
		t.Fatal("a write that vanished after being read was accepted")
	}
}

func TestModelCASAndAppend(t *testing.T) {
	ok := []porcupine.Operation{
		{Input: Input{Op: "cas", Key: "r", Value: "x"}, Output: Output{Succeeded: true}, Call: 0, Return: 1},
		{Input: Input{Op: "cas", Key: "r", Expect: "y", Value: "z"}, Output: Output{Succeeded: false}, Call: 2, Return: 3},
		{Input: Input{Op: "append", Key: "l", Value: "a;"}, Output: Output{Length: 2}, Call: 0, Return: 1},
		{Input: Input{Op: "append", Key: "l", Value: "b;"}, Output: Output{Length: 4}, Call: 2, Return: 3},
	}
	if !porcupine.CheckOperations(Model, ok) {
		t.Fatal("valid history rejected")
	}
	bad := append([]porcupine.Operation(nil), ok...)
	bad[3].Output = Output{Length: 2} // as if the first append was lost
	if porcupine.CheckOperations(Model, bad) {
		t.Fatal("wrong append length accepted")
	}
	bad = append([]porcupine.Operation(nil), ok...)
	bad[1].Output = Output{Succeeded: true}
	if porcupine.CheckOperations(Model, bad) {
		t.Fatal("cas that succeeded against the wrong value accepted")
	}
}

func TestCheckLists(t *testing.T) {
	ents := []Entry{
		{Input: Input{Op: "append", Key: "l0", Value: "c0.0;"}, Outcome: OutcomeOK},
		{Input: Input{Op: "append", Key: "l0", Value: "c0.1;"}, Outcome: OutcomeOK},
		{Input: Input{Op: "append", Key: "l1", Value: "c1.0;"}, Outcome: OutcomeUnknown},
		{Input: Input{Op: "append", Key: "l1", Value: "c1.1;"}, Outcome: OutcomeUnknown},
		{Input: Input{Op: "append", Key: "l1", Value: "c1.2;"}, Outcome: OutcomeFail},
	}
	rep := CheckLists(ents, map[string]string{"l0": "c0.0;c0.1;", "l1": "c1.1;"})
	if !rep.OK() || rep.Acknowledged != 2 || rep.Present != 3 || rep.UnknownIn != 1 {
		t.Fatalf("clean lists: %s", rep)
	}
	rep = CheckLists(ents, map[string]string{"l0": "c0.1;c0.1;c1.2;", "l1": "c0.0x;"})
	want := ListReport{Acknowledged: 2, Present: 4,
		Lost:       []string{"l0:c0.0;"},
		Duplicated: []string{"l0:c0.1;"},
		Phantom:    []string{"l0:c1.2;", "l1:c0.0x;"}}
	if !reflect.DeepEqual(rep, want) {
		t.Fatalf("got  %+v\nwant %+v", rep, want)
	}
}

func TestScheduleIsDeterministic(t *testing.T) {
	cfg := ScheduleConfig{Duration: 3 * time.Minute, Kinds: AllKinds, MaxMembership: 2, ElectionTimeout: time.Second}
	a, b := Schedule(42, cfg), Schedule(42, cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed, different schedules")
	}
	if reflect.DeepEqual(a, Schedule(43, cfg)) {
		t.Fatal("different seeds, same schedule")
	}
	seen := map[Kind]int{}
	var end time.Duration
	for _, s := range a {
		seen[s.Kind]++
		if s.At < end {
			t.Fatalf("step %v overlaps the previous one (ends %v)", s, end)
		}
		end = s.At + s.Hold
		if end > cfg.Duration {
			t.Fatalf("step %v outlasts the run", s)
		}
		if (s.Kind == Pause || s.Kind == PauseLeader) && s.Hold <= cfg.ElectionTimeout {
			t.Fatalf("pause %v not longer than an election timeout", s)
		}
	}
	for _, k := range AllKinds {
		if seen[k] == 0 {
			t.Errorf("a 3-minute schedule never uses %v: %v", k, a)
		}
	}
	if seen[Membership] > 2 {
		t.Errorf("%d membership changes, want at most 2", seen[Membership])
	}
}

func TestParseKinds(t *testing.T) {
	if k, err := ParseKinds("all"); err != nil || len(k) != len(AllKinds) {
		t.Fatal(k, err)
	}
	if k, err := ParseKinds("kill, pause"); err != nil || !reflect.DeepEqual(k, []Kind{Kill, Pause}) {
		t.Fatal(k, err)
	}
	if _, err := ParseKinds("kill,nope"); err == nil {
		t.Fatal("unknown kind accepted")
	}
}

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func newTestProxy(t *testing.T) (*Proxy, string) {
	p := NewProxy(1, func(net.Addr) string { return "client" })
	t.Cleanup(p.Close)
	addr, err := p.Listen("n1", "127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	return p, addr
}

func roundTrip(c net.Conn, msg string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

func TestProxyForwardsAndDelays(t *testing.T) {
	p, addr := newTestProxy(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "hello", time.Second); err != nil || got != "hello" {
		t.Fatalf("round trip: %q %v", got, err)
	}
	p.Set("*", "n1", Faults{Delay: 100 * time.Millisecond})
	start := time.Now()
	if got, err := roundTrip(c, "slow", 2*time.Second); err != nil || got != "slow" {
		t.Fatalf("delayed round trip: %q %v", got, err)
	}
	// Both directions are delayed.
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("round trip took %v, want >= 200ms", d)
	}
	p.Heal()
	start = time.Now()
	if _, err := roundTrip(c, "fast", time.Second); err != nil || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("after heal: %v in %v", err, time.Since(start))
	}
}

func TestProxyBlackholeThenHealClosesHoledConnections(t *testing.T) {
	p, addr := newTestProxy(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, "a", time.Second); err != nil {
		t.Fatal(err)
	}
	p.Set("client", "n1", Faults{Blackhole: true})
	if _, err := roundTrip(c, "lost", 200*time.Millisecond); err == nil {
		t.Fatal("blackholed bytes came back")
	}
	// A new connection during the blackhole is accepted but silent.
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := roundTrip(c2, "lost", 200*time.Millisecond); err == nil {
		t.Fatal("new connection got through a blackhole")
	}
	p.Heal()
	// Both connections lost bytes: they are closed, never resumed.
	for _, conn := range []net.Conn{c, c2} {
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := conn.Read(make([]byte, 16)); err == nil {
			t.Fatal("a connection with a hole in its stream was resumed")
		}
	}
	c3, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if got, err := roundTrip(c3, "again", time.Second); err != nil || got != "again" {
		t.Fatalf("after heal: %q %v", got, err)
	}
}

func TestProxyRulesAreDirected(t *testing.T) {
	p, addr := newTestProxy(t)
	p.Set("n2", "n1", Faults{Blackhole: true}) // not our source
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "ok", time.Second); err != nil || got != "ok" {
		t.Fatalf("a rule for another source applied: %q %v", got, err)
	}
}

func TestProxyLossCutsConnections(t *testing.T) {
	p, addr := newTestProxy(t)
	p.Set("*", "n1", Faults{Loss: 1})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, "x", time.Second); err == nil {
		t.Fatal("loss=1 let a chunk through")
	}
}

func TestProxyRefusesWithoutTarget(t *testing.T) {
	p := NewProxy(1, func(net.Addr) string { return "client" })
	defer p.Close()
	addr, err := p.Listen("n9", "127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatal("a link without a target served a connection")
	}
	p.SetTarget(addr, echoServer(t))
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, "now", time.Second); err != nil || !bytes.Equal([]byte(got), []byte("now")) {
		t.Fatalf("after SetTarget: %q %v", got, err)
	}
}

func TestShardScheduleIsDeterministic(t *testing.T) {
	a, b := ShardSchedule(7, 90*time.Second), ShardSchedule(7, 90*time.Second)
	if !reflect.DeepEqual(a, b) || len(a) < 15 {
		t.Fatalf("schedules differ or are short: %d vs %d ops", len(a), len(b))
	}
	ops := map[string]int{}
	for i, o := range a {
		ops[o.Op]++
		if o.At > 87*time.Second || (i > 0 && o.At-a[i-1].At < 1500*time.Millisecond) {
			t.Fatalf("op %d at %v: outside the run or too close to the previous one", i, o.At)
		}
	}
	if ops["join"] == 0 || ops["leave"] == 0 || ops["move"] == 0 {
		t.Fatalf("a 90 s schedule lacks a kind of shard operation: %v", ops)
	}
}

func TestWorkloadKeysForShards(t *testing.T) {
	keys := keysInDistinctShards("r", 8, 16)
	seen := map[int]bool{}
	for _, k := range keys {
		sh := client.ShardOf(k, 16)
		if seen[sh] {
			t.Fatalf("%v: two keys in shard %d", keys, sh)
		}
		seen[sh] = true
	}
	if len(keys) != 8 {
		t.Fatalf("got %d keys", len(keys))
	}
	if n := len(keysInDistinctShards("r", 5, 2)); n != 5 {
		t.Fatalf("more keys than shards: got %d, want 5", n)
	}
	bank := keysInOneShard("chaos/bank/", 5, 16)
	if len(bank) != 5 || !sort.StringsAreSorted(bank) {
		t.Fatalf("bank keys %v", bank)
	}
	for _, k := range bank {
		if !strings.HasPrefix(k, "chaos/bank/") || client.ShardOf(k, 16) != client.ShardOf(bank[0], 16) {
			t.Fatalf("bank keys %v are not in one shard under the prefix", bank)
		}
	}
}
