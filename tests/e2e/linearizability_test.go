package e2e

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/client"
)

// kvInput is one operation on one key.
type kvInput struct {
	Op     string // get, put, append, cas
	Key    string
	Value  string // put/append value, cas new value
	Expect string // cas expected value ("" = key absent)
}

// kvOutput is what the client saw. Unknown means the client gave up after
// the write may have happened: it may take effect at any point after its
// call, or never.
type kvOutput struct {
	Value     string // get
	Length    int64  // append
	Succeeded bool   // cas
	Unknown   bool
}

// kvModel is a register per key, partitioned by key.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).Key
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(string), input.(kvInput), output.(kvOutput)
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
		in, out := input.(kvInput), output.(kvOutput)
		res := ""
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

type recorder struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (r *recorder) now() int64 { return time.Since(r.start).Nanoseconds() }

func (r *recorder) add(client int, in kvInput, call int64, out kvOutput) {
	ret := r.now()
	if out.Unknown {
		ret = math.MaxInt64 // may take effect any time after the call
	}
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	r.mu.Unlock()
}

// TestLinearizableUnderCrashes runs concurrent clients doing get, put,
// append and compare-and-swap on a few keys while members are killed with
// SIGKILL, paused and restarted, and checks the history with porcupine.
func TestLinearizableUnderCrashes(t *testing.T) {
	c := startCluster(t, 3)
	rng := rand.New(rand.NewPCG(seed(t), 7))
	duration := 10 * time.Second
	if v := os.Getenv("CAIRN_E2E_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		duration = d
	}
	statusClient := newClient(t, c, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var nem sync.WaitGroup
	nem.Add(1)
	nemRng := rand.New(rand.NewPCG(rng.Uint64(), 1))
	go func() {
		defer nem.Done()
		nemesis(ctx, t, c, nemRng, func() int { return leaderOf(statusClient, c) })
	}()

	rec := &recorder{start: time.Now()}
	keys := []string{"x", "y", "z"}
	const clients = 6
	var wg sync.WaitGroup
	for id := range clients {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(id)))
		cl := newClient(t, c, client.Config{AttemptTimeout: 700 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				in := kvInput{Key: keys[crng.IntN(len(keys))]}
				token := fmt.Sprintf("c%d.%d;", id, n)
				switch p := crng.IntN(10); {
				case p < 4:
					in.Op = "get"
				case p < 6:
					in.Op, in.Value = "put", token
				case p < 8:
					in.Op, in.Value = "append", token
				default:
					in.Op, in.Value = "cas", token
					// Expect what a recent read saw, to make some succeed.
					if r, err := cl.Get(ctx, in.Key, client.WithSerializable()); err == nil && len(r.KVs) == 1 {
						in.Expect = r.KVs[0].Value
					}
				}
				opCtx, opCancel := context.WithTimeout(context.Background(), 4*time.Second)
				call := rec.now()
				out, ok := doOp(opCtx, cl, in)
				opCancel()
				if ok {
					rec.add(id, in, call, out)
				}
			}
		}()
	}
	wg.Wait()
	nem.Wait()
	// Heal: every member up, then a final read of every key.
	for i := range c.Members {
		if !c.Running(i) {
			if err := c.Restart(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	final := newClient(t, c, client.Config{})
	fctx, fcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer fcancel()
	for _, k := range keys {
		call := rec.now()
		out, ok := doOp(fctx, final, kvInput{Op: "get", Key: k})
		if !ok {
			t.Fatalf("cluster did not serve a read of %s within 30s after the faults stopped", k)
		}
		rec.add(clients, kvInput{Op: "get", Key: k}, call, out)
	}

	counts := map[string]int{}
	for _, op := range rec.ops {
		o := op.Output.(kvOutput)
		switch {
		case o.Unknown:
			counts["unknown"]++
		default:
			counts[op.Input.(kvInput).Op]++
		}
	}
	t.Logf("history: %d operations %v", len(rec.ops), counts)
	if counts["put"]+counts["append"]+counts["cas"] < 20 {
		t.Fatalf("too few writes completed (%v): the cluster was unavailable most of the time", counts)
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, rec.ops, 2*time.Minute)
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Logf("porcupine timed out; history not fully checked")
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("cairn-porcupine-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(kvModel, info, path); err != nil {
			t.Logf("writing visualization: %v", err)
		}
		t.Fatalf("history is not linearizable; visualization: %s", path)
	}
}

// doOp runs one operation. ok is false for a failed read (no effect, not
// recorded); writes that may have happened are recorded as unknown.
func doOp(ctx context.Context, cl *client.Client, in kvInput) (kvOutput, bool) {
	switch in.Op {
	case "get":
		r, err := cl.Get(ctx, in.Key)
		if err != nil {
			return kvOutput{}, false
		}
		if len(r.KVs) == 1 {
			return kvOutput{Value: r.KVs[0].Value}, true
		}
		return kvOutput{}, true
	case "put":
		_, err := cl.Put(ctx, in.Key, in.Value)
		return writeOutcome(err, kvOutput{})
	case "append":
		r, err := cl.Append(ctx, in.Key, in.Value)
		if err != nil {
			return writeOutcome(err, kvOutput{})
		}
		return kvOutput{Length: r.Length}, true
	case "cas":
		cmp := client.CompareValue(in.Key, "=", in.Expect)
		if in.Expect == "" {
			cmp = client.CompareVersion(in.Key, "=", 0)
		}
		r, err := cl.Txn().If(cmp).Then(client.OpPut(in.Key, in.Value)).Commit(ctx)
		if err != nil {
			return writeOutcome(err, kvOutput{})
		}
		return kvOutput{Succeeded: r.Succeeded}, true
	}
	panic("unknown op " + in.Op)
}

func writeOutcome(err error, out kvOutput) (kvOutput, bool) {
	if err == nil {
		return out, true
	}
	switch status.Code(errors.Unwrap(err)) {
	case codes.InvalidArgument, codes.FailedPrecondition:
		if !isUnknown(err) {
			return kvOutput{}, false // refused: certainly not applied
		}
	}
	// Anything else may have been applied: record it as unknown, which
	// the model lets take effect at any time after the call, or never.
	out.Unknown = true
	return out, true
}
