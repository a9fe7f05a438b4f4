package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Kind is a kind of fault.
type Kind string

// Fault kinds. "Leader" kinds target the member that leads when the fault
// starts (a seeded pick when none does); the others a seeded pick among
// the live members.
const (
	// PartitionLeader disconnects the leader from the network
	// (docker network disconnect): it is alone, the others are a majority.
	PartitionLeader Kind = "partition-leader"
	// PartitionOne disconnects one member: a minority/majority split.
	PartitionOne Kind = "partition-one"
	// OneWay drops everything the leader sends to its peers (proxy
	// blackhole on connections it opens) while it still hears them.
	OneWay Kind = "one-way"
	// Bridge cuts two members off from each other; a third still talks
	// to both (proxy blackhole both ways between the two).
	Bridge Kind = "bridge"
	// Kill and KillLeader send SIGKILL (docker kill) and restart the
	// member from its volume when the fault heals.
	Kill       Kind = "kill"
	KillLeader Kind = "kill-leader"
	// Pause and PauseLeader freeze the member (docker pause: the cgroup
	// freezer, like SIGSTOP) for longer than an election timeout.
	Pause       Kind = "pause"
	PauseLeader Kind = "pause-leader"
	// Latency delays every proxied byte stream (peers and clients).
	Latency Kind = "latency"
	// Loss cuts proxied connections at random (a lost message over TCP is
	// a lost connection).
	Loss Kind = "loss"
	// Membership removes a member and adds a fresh one (new address,
	// empty volume) while the workload runs.
	Membership Kind = "membership"
)

// AllKinds lists every fault kind, in schedule order of first use.
var AllKinds = []Kind{PartitionLeader, KillLeader, PauseLeader, OneWay, Latency, Membership,
	PartitionOne, Kill, Pause, Bridge, Loss}

// ParseKinds parses a comma-separated list of kinds; "" or "all" is every
// kind.
func ParseKinds(s string) ([]Kind, error) {
	if s == "" || s == "all" {
		return AllKinds, nil
	}
	var out []Kind
	for _, part := range strings.Split(s, ",") {
		k := Kind(strings.TrimSpace(part))
		ok := false
		for _, a := range AllKinds {
			ok = ok || a == k
		}
		if !ok {
			return nil, fmt.Errorf("chaos: unknown fault kind %q (known: %v)", k, AllKinds)
		}
		out = append(out, k)
	}
	return out, nil
}

// Step is one fault of a schedule: injected at At (from the start of the
// workload, or as soon as the previous step is over), held for Hold, then
// healed.
type Step struct {
	At    time.Duration `json:"at"`
	Kind  Kind          `json:"kind"`
	Hold  time.Duration `json:"hold"`
	Pick  uint64        `json:"pick"`            // chooses the victim at run time
	Delay time.Duration `json:"delay,omitempty"` // Latency
	Loss  float64       `json:"loss,omitempty"`  // Loss
}

func (s Step) String() string {
	switch s.Kind {
	case Latency:
		return fmt.Sprintf("%v at %v for %v (delay %v)", s.Kind, s.At, s.Hold, s.Delay)
	case Loss:
		return fmt.Sprintf("%v at %v for %v (p=%.3f per chunk)", s.Kind, s.At, s.Hold, s.Loss)
	case Membership:
		return fmt.Sprintf("%v at %v", s.Kind, s.At)
	}
	return fmt.Sprintf("%v at %v for %v", s.Kind, s.At, s.Hold)
}

// ScheduleConfig shapes a schedule.
type ScheduleConfig struct {
	Duration time.Duration
	Kinds    []Kind
	// MaxMembership bounds membership changes (one spare slot each).
	MaxMembership int
	// ElectionTimeout is the members' election timeout; pauses and
	// partitions last longer than it, so they cause elections.
	ElectionTimeout time.Duration
}

// Schedule derives a fault schedule from seed: the same seed and config
// always give the same steps. Kinds are used in a seeded order, each once
// before any repeats, so short runs still see many kinds. A quiet gap
// follows every fault, and the last fault heals before Duration.
func Schedule(seed uint64, cfg ScheduleConfig) []Step {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	et := cfg.ElectionTimeout
	if et == 0 {
		et = time.Second
	}
	between := func(lo, hi time.Duration) time.Duration {
		return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
	}
	var steps []Step
	var bag []Kind
	memberships := 0
	t := 2 * time.Second // let the workload warm up
	for {
		if len(bag) == 0 {
			bag = append(bag, cfg.Kinds...)
			rng.Shuffle(len(bag), func(i, j int) { bag[i], bag[j] = bag[j], bag[i] })
		}
		k := bag[0]
		bag = bag[1:]
		if k == Membership && memberships >= cfg.MaxMembership {
			if len(cfg.Kinds) == 1 {
				break
			}
			continue
		}
		s := Step{At: t, Kind: k, Pick: rng.Uint64()}
		switch k {
		case PartitionLeader, PartitionOne, OneWay, Bridge:
			s.Hold = between(2*et, 6*et)
		case Kill, KillLeader:
			s.Hold = between(et/2, 4*et)
		case Pause, PauseLeader:
			s.Hold = between(et+et/2, 4*et)
		case Latency:
			s.Hold = between(3*et, 8*et)
			s.Delay = between(10*time.Millisecond, 150*time.Millisecond)
		case Loss:
			s.Hold = between(3*et, 8*et)
			s.Loss = 0.005 + rng.Float64()*0.05
		case Membership:
			memberships++
		}
		end := t + s.Hold
		if k == Membership {
			end += 10 * time.Second // the change itself takes a while
		}
		if end > cfg.Duration-time.Second {
			break
		}
		steps = append(steps, s)
		t = end + between(et, 3*et)
	}
	return steps
}
