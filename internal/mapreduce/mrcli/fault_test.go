package mrcli

import (
	"testing"

	"github.com/cairn-db/cairn/internal/mapreduce/worker"
)

func TestParseFaultRate(t *testing.T) {
	for _, salt := range []int64{0, 1, 7919, 123456} {
		hook, err := parseFault("rate=0.08,seed=11,kinds=hang", salt, 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for i := 0; i < 1000; i++ {
			if hook("map-mid", i) != worker.FaultNone {
				n++
			}
		}
		if n < 40 || n > 130 {
			t.Errorf("salt %d: %d faults in 1000 calls at rate 0.08", salt, n)
		}
	}
	if h, err := parseFault("rate=1,gens=2", 0, 2); h != nil || err != nil {
		t.Error("faults in a generation past gens")
	}
	if _, err := parseFault("rate=x", 0, 0); err == nil {
		t.Error("bad rate accepted")
	}
}
