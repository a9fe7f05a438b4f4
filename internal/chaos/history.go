package chaos

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/client"
)

// Input is one operation on one key: a register (get, put, cas) or an
// append-only list (append, get).
type Input struct {
	Op     string `json:"op"` // get, put, append, cas
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`  // put/append value, cas new value
	Expect string `json:"expect,omitempty"` // cas expected value ("" = key absent)
}

// Output is what the client saw. Unknown means the client gave up after
// the write may have happened: it may take effect at any point after its
// call, or never.
type Output struct {
	Value     string `json:"value,omitempty"`     // get
	Length    int64  `json:"length,omitempty"`    // append
	Succeeded bool   `json:"succeeded,omitempty"` // cas
	Unknown   bool   `json:"unknown,omitempty"`
}

// Outcomes of a recorded operation.
const (
	OutcomeOK      = "ok"      // acknowledged; checked against the model
	OutcomeFail    = "fail"    // certainly had no effect; not checked
	OutcomeUnknown = "unknown" // a write that may or may not have happened
)

// Model is a register per key, partitioned by key. A key used only with
// append behaves as an append-only list: its value is the concatenation
// of the appended tokens, and an append's reply (the new length) must
// match.
var Model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(Input).Key
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(string), input.(Input), output.(Output)
		switch in.Op {
		case "get":
			return out.Value == s, s
		case "put":
			return true, in.Value
		case "append":
			next := s + in.Value
			return out.Unknown || out.Length == int64(len(next)), next
		case "cas":
			if s == in.Expect {
				return out.Unknown || out.Succeeded, in.Value
			}
			return out.Unknown || !out.Succeeded, s
		}
		return false, s
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(Input), output.(Output)
		var res string
		switch {
		case out.Unknown:
			res = "unknown"
		case in.Op == "get":
			res = fmt.Sprintf("%q", out.Value)
		case in.Op == "append":
			res = fmt.Sprintf("len %d", out.Length)
		case in.Op == "cas":
			res = fmt.Sprint(out.Succeeded)
		default:
			res = "ok"
		}
		switch in.Op {
		case "cas":
			return fmt.Sprintf("cas(%s, %q->%q) -> %s", in.Key, in.Expect, in.Value, res)
		case "get":
			return fmt.Sprintf("get(%s) -> %s", in.Key, res)
		}
		return fmt.Sprintf("%s(%s, %q) -> %s", in.Op, in.Key, in.Value, res)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state) },
}

// Entry is one recorded operation, in the form saved as history.json.
// Times are nanoseconds since the recorder started.
type Entry struct {
	Client  int    `json:"client"`
	Input   Input  `json:"input"`
	Output  Output `json:"output"`
	Outcome string `json:"outcome"`
	Call    int64  `json:"call_ns"`
	Return  int64  `json:"return_ns"` // when the client saw the answer, also for unknown
	Err     string `json:"err,omitempty"`
}

// Recorder collects a concurrent history. Safe for concurrent use.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ents  []Entry
}

// NewRecorder starts the history clock now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Start is when the history clock started.
func (r *Recorder) Start() time.Time { return r.start }

// Now is the history clock: nanoseconds since the recorder started.
func (r *Recorder) Now() int64 { return time.Since(r.start).Nanoseconds() }

// Add records an operation invoked at call (from Now) that just returned.
func (r *Recorder) Add(client int, in Input, call int64, out Output, outcome string, err error) {
	e := Entry{Client: client, Input: in, Output: out, Outcome: outcome, Call: call, Return: r.Now()}
	if err != nil {
		e.Err = err.Error()
	}
	r.mu.Lock()
	r.ents = append(r.ents, e)
	r.mu.Unlock()
}

// Entries returns a copy of the history in completion order.
func (r *Recorder) Entries() []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Entry(nil), r.ents...)
}

// Operations converts a history for porcupine: acknowledged operations as
// they happened, unknown writes as ending at +infinity (they may take
// effect any time after their call), failed operations left out.
func Operations(ents []Entry) []porcupine.Operation {
	ops := make([]porcupine.Operation, 0, len(ents))
	for _, e := range ents {
		switch e.Outcome {
		case OutcomeOK:
			ops = append(ops, porcupine.Operation{ClientId: e.Client, Input: e.Input, Call: e.Call, Output: e.Output, Return: e.Return})
		case OutcomeUnknown:
			out := e.Output
			out.Unknown = true
			ops = append(ops, porcupine.Operation{ClientId: e.Client, Input: e.Input, Call: e.Call, Output: out, Return: math.MaxInt64})
		}
	}
	return ops
}

// Do runs one operation and classifies its outcome. A read that fails has
// no effect (fail); a write fails only when the error proves it was not
// applied, and is unknown otherwise. getOpts apply to reads.
func Do(ctx context.Context, cl *client.Client, in Input, getOpts ...client.Option) (Output, string, error) {
	switch in.Op {
	case "get":
		r, err := cl.Get(ctx, in.Key, getOpts...)
		if err != nil {
			return Output{}, OutcomeFail, err
		}
		if len(r.KVs) == 1 {
			return Output{Value: r.KVs[0].Value}, OutcomeOK, nil
		}
		return Output{}, OutcomeOK, nil
	case "put":
		_, err := cl.Put(ctx, in.Key, in.Value)
		return writeOutcome(Output{}, err)
	case "append":
		r, err := cl.Append(ctx, in.Key, in.Value)
		if err != nil {
			return writeOutcome(Output{}, err)
		}
		return Output{Length: r.Length}, OutcomeOK, nil
	case "cas":
		cmp := client.CompareValue(in.Key, "=", in.Expect)
		if in.Expect == "" {
			cmp = client.CompareVersion(in.Key, "=", 0)
		}
		r, err := cl.Txn().If(cmp).Then(client.OpPut(in.Key, in.Value)).Commit(ctx)
		if err != nil {
			return writeOutcome(Output{}, err)
		}
		return Output{Succeeded: r.Succeeded}, OutcomeOK, nil
	}
	panic("chaos: unknown op " + in.Op)
}

func writeOutcome(out Output, err error) (Output, string, error) {
	if err == nil {
		return out, OutcomeOK, nil
	}
	if !errors.Is(err, client.ErrOutcomeUnknown) {
		switch status.Code(err) {
		case codes.InvalidArgument, codes.FailedPrecondition, codes.NotFound, codes.OutOfRange,
			codes.ResourceExhausted, codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated:
			return out, OutcomeFail, err // refused: certainly not applied
		}
	}
	// Anything else may have been applied: the model lets an unknown
	// write take effect at any time after its call, or never.
	out.Unknown = true
	return out, OutcomeUnknown, err
}

// ListReport is the result of checking append-only lists at the end.
type ListReport struct {
	Acknowledged int      // appends acknowledged to the client
	Present      int      // tokens found in the final values
	Lost         []string // acknowledged but missing
	Duplicated   []string // present more than once
	Phantom      []string // present but never invoked
	UnknownIn    int      // unknown appends that did take effect
}

// OK reports whether no acknowledged append was lost, duplicated or
// invented.
func (l ListReport) OK() bool {
	return len(l.Lost) == 0 && len(l.Duplicated) == 0 && len(l.Phantom) == 0
}

func (l ListReport) String() string {
	return fmt.Sprintf("%d acknowledged appends, %d tokens present (%d from unknown appends), lost %d %v, duplicated %d %v, phantom %d %v",
		l.Acknowledged, l.Present, l.UnknownIn, len(l.Lost), head(l.Lost), len(l.Duplicated), head(l.Duplicated), len(l.Phantom), head(l.Phantom))
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

// CheckLists checks that every acknowledged append in ents appears exactly
// once in final (key -> final value), that an unknown append appears at
// most once, and that nothing else appears. Appended values must be
// unique tokens ending in ';'.
func CheckLists(ents []Entry, final map[string]string) ListReport {
	type tok struct{ key, outcome string }
	invoked := map[string]tok{}
	var rep ListReport
	for _, e := range ents {
		if e.Input.Op != "append" || e.Outcome == OutcomeFail {
			continue
		}
		invoked[e.Input.Value] = tok{e.Input.Key, e.Outcome}
		if e.Outcome == OutcomeOK {
			rep.Acknowledged++
		}
	}
	seen := map[string]int{}
	keys := make([]string, 0, len(final))
	for k := range final {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, t := range strings.SplitAfter(final[k], ";") {
			if t == "" {
				continue
			}
			rep.Present++
			seen[t]++
			inv, ok := invoked[t]
			switch {
			case !ok || inv.key != k:
				if seen[t] == 1 {
					rep.Phantom = append(rep.Phantom, k+":"+t)
				}
			case seen[t] == 2:
				rep.Duplicated = append(rep.Duplicated, k+":"+t)
			case seen[t] == 1 && inv.outcome == OutcomeUnknown:
				rep.UnknownIn++
			}
		}
	}
	for t, inv := range invoked {
		if _, checked := final[inv.key]; checked && inv.outcome == OutcomeOK && seen[t] == 0 {
			rep.Lost = append(rep.Lost, inv.key+":"+t)
		}
	}
	sort.Strings(rep.Lost)
	return rep
}
