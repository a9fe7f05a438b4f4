package sim

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// seedCount is the number of seeds the sweep test runs; CI runs the larger
// sweep through `cairn sim` (see .ci/run).
func seedCount(t *testing.T) int {
	if v := os.Getenv("CAIRN_SIM_SEEDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("CAIRN_SIM_SEEDS=%q: %v", v, err)
		}
		return n
	}
	if testing.Short() {
		return 20
	}
	return 100
}

func TestSweep(t *testing.T) {
	n := seedCount(t)
	for seed := uint64(1); seed <= uint64(n); seed++ {
		res, err := Run(Default(seed))
		if err != nil {
			t.Fatalf("%v\nreplay: go run ./cmd/cairn sim -seeds %d -v", err, seed)
		}
		if res.Committed == 0 {
			t.Fatalf("seed %d committed nothing", seed)
		}
	}
}

func TestNoFaultsMakesProgress(t *testing.T) {
	o := Default(7)
	o.LossRate, o.DupRate, o.PartitionRate, o.CrashRate, o.MembershipRate, o.TransferRate = 0, 0, 0, 0, 0, 0
	res, err := Run(o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Acked < 100 {
		t.Fatalf("only %d writes acknowledged without faults: %+v", res.Acked, res)
	}
	if res.Elections != 1 {
		t.Fatalf("%d elections without faults, want 1", res.Elections)
	}
}

func TestReplayIsDeterministic(t *testing.T) {
	for _, seed := range []uint64{3, 42} {
		a, errA := Run(Default(seed))
		b, errB := Run(Default(seed))
		if fmt.Sprint(errA) != fmt.Sprint(errB) || a != b {
			t.Fatalf("seed %d replayed differently:\n%+v %v\n%+v %v", seed, a, errA, b, errB)
		}
		c, _ := Run(Default(seed + 1000))
		if c.TraceHash == a.TraceHash {
			t.Fatalf("seeds %d and %d gave the same trace hash", seed, seed+1000)
		}
	}
}
