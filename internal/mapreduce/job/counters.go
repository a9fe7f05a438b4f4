package job

import "sort"

// Names of the counters the engine maintains. User counters (Output.Count)
// are stored under "user." + name.
const (
	MapInputRecords     = "map.input.records"
	MapInputBytes       = "map.input.bytes"
	MapOutputRecords    = "map.output.records"
	MapOutputBytes      = "map.output.bytes"
	CombineInputRecords = "combine.input.records"
	CombineOutputRecs   = "combine.output.records"
	SpilledRecords      = "map.spilled.records"
	ShuffleBytes        = "reduce.shuffle.bytes"
	ReduceInputGroups   = "reduce.input.groups"
	ReduceInputRecords  = "reduce.input.records"
	ReduceOutputRecords = "reduce.output.records"
	ReduceOutputBytes   = "reduce.output.bytes"
	UserPrefix          = "user."
)

// Counters are named int64 totals.
type Counters map[string]int64

// Add adds every counter of o to c.
func (c Counters) Add(o Counters) {
	for k, v := range o {
		c[k] += v
	}
}

// Names returns the counter names, sorted, so that output does not depend
// on map iteration order.
func (c Counters) Names() []string {
	n := make([]string, 0, len(c))
	for k := range c {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}
