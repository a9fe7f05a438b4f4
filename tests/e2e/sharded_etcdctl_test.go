package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-db/cairn/client"
)

// TestShardedEtcdctlAndRange drives a sharded cluster with etcdctl:
// processes A host the controller and group 1, processes B host group 2,
// so a request to one member for a key of the other group is forwarded.
// Puts and gets through any single member work; get --prefix gathers
// keys from both groups in key order and honours --limit; a transaction
// whose keys fall in two shards is refused with a clear error.
func TestShardedEtcdctlAndRange(t *testing.T) {
	bin := etcdctl(t)
	const nShards = 8
	a, b := startTwoSets(t, "sharded-ctl", nShards)
	all := append(a.endpoints(), b.endpoints()...)
	admin := shardClient(t, a.endpoints(), time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg, err := retryAdmin(ctx, func(ctx context.Context) (client.ShardConfig, error) {
		return admin.ShardJoin(ctx, map[uint64][]string{1: a.endpoints(), 2: b.endpoints()})
	})
	if err != nil {
		t.Fatal(err)
	}
	waitShardSettled(t, ctx, all, cfg.Num)

	run := func(ep, stdin string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--endpoints", ep, "--dial-timeout", "5s", "--command-timeout", "10s"}, args...)...)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return out.String() + errb.String(), fmt.Errorf("etcdctl --endpoints %s %s: %w: %s", ep, strings.Join(args, " "), err, errb.String())
		}
		return out.String(), nil
	}
	must := func(want, ep, stdin string, args ...string) {
		t.Helper()
		out, err := run(ep, stdin, args...)
		if err != nil {
			t.Fatal(err)
		}
		if out != want {
			t.Fatalf("etcdctl --endpoints %s %s printed %q, want %q", ep, strings.Join(args, " "), out, want)
		}
	}

	// Keys of both groups, all written through one member of A.
	var keys []string
	groupsOf := map[uint64]int{}
	for i := range 16 {
		k := fmt.Sprintf("ctl/k%02d", i)
		keys = append(keys, k)
		groupsOf[cfg.Shards[client.ShardOf(k, nShards)]]++
	}
	if groupsOf[1] == 0 || groupsOf[2] == 0 {
		t.Fatalf("keys do not span both groups: %v", groupsOf)
	}
	t.Logf("keys per group: %v", groupsOf)
	a1, b1 := a.procs[0].ClientAddr, b.procs[1].ClientAddr
	for _, k := range keys {
		must("OK\n", a1, "", "put", k, "v-"+k)
	}
	must("OK\n", b1, "", "put", "ctm", "outside") // just past the prefix
	// Every key reads back through a member of either set.
	for i, k := range keys {
		ep := all[i%len(all)]
		must(k+"\nv-"+k+"\n", ep, "", "get", k)
	}
	// get --prefix gathers both groups in key order.
	var full strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&full, "%s\nv-%s\n", k, k)
	}
	for _, ep := range []string{a1, b1} {
		must(full.String(), ep, "", "get", "ctl/", "--prefix")
		var first3 strings.Builder
		for _, k := range keys[:3] {
			fmt.Fprintf(&first3, "%s\nv-%s\n", k, k)
		}
		must(first3.String(), ep, "", "get", "ctl/", "--prefix", "--limit", "3")
		// JSON: count is the total over both groups, more is set.
		out, err := run(ep, "", "get", "ctl/", "--prefix", "--limit", "3", "-w", "json")
		if err != nil {
			t.Fatal(err)
		}
		var gj struct {
			Kvs   []struct{ Key []byte } `json:"kvs"`
			More  bool                   `json:"more"`
			Count int                    `json:"count"`
		}
		if err := json.Unmarshal([]byte(out), &gj); err != nil {
			t.Fatalf("get -w json: %v: %q", err, out)
		}
		if gj.Count != len(keys) || !gj.More || len(gj.Kvs) != 3 || string(gj.Kvs[2].Key) != keys[2] {
			t.Fatalf("get ctl/ --prefix --limit 3 -w json via %s: count %d more %v kvs %d, want count %d more true 3 kvs: %s", ep, gj.Count, gj.More, len(gj.Kvs), len(keys), out)
		}
		var keysOnly strings.Builder
		rev := slices.Clone(keys)
		slices.Reverse(rev)
		for _, k := range rev[:2] {
			fmt.Fprintf(&keysOnly, "%s\n\n", k)
		}
		must(keysOnly.String(), ep, "", "get", "ctl/", "--prefix", "--keys-only", "--limit", "2", "--order", "DESCEND")
	}
	// A range over everything from "ctl/k05" to "ctm" (exclusive).
	var tail strings.Builder
	for _, k := range keys[5:] {
		fmt.Fprintf(&tail, "%s\nv-%s\n", k, k)
	}
	must(tail.String(), a1, "", "get", "ctl/k05", "ctm")

	// A transaction in one shard works; across two shards it is refused.
	k1 := keys[0]
	var k2 string
	for _, k := range keys {
		if client.ShardOf(k, nShards) != client.ShardOf(k1, nShards) {
			k2 = k
			break
		}
	}
	must("SUCCESS\n\nOK\n", b1, fmt.Sprintf("value(%q) = %q\n\nput %s txn\n\n\n", k1, "v-"+k1, k1), "txn")
	must(k1+"\ntxn\n", a1, "", "get", k1)
	out, err := run(a1, fmt.Sprintf("\nput %s x\nput %s y\n\n\n", k1, k2), "txn")
	if err == nil || !strings.Contains(out, "cross-shard") || !strings.Contains(out, "InvalidArgument") {
		t.Fatalf("txn over shards %d and %d: err %v, output %q; want a refusal naming cross-shard transactions",
			client.ShardOf(k1, nShards), client.ShardOf(k2, nShards), err, out)
	}
	t.Logf("cross-shard txn refused: %s", strings.TrimSpace(out))
	must(k1+"\ntxn\n", b1, "", "get", k1)
	must(k2+"\nv-"+k2+"\n", b1, "", "get", k2)
	// del --prefix runs in every group.
	must(fmt.Sprintf("%d\n", len(keys)), b1, "", "del", "ctl/", "--prefix")
	must("", a1, "", "get", "ctl/", "--prefix")
	must("ctm\noutside\n", a1, "", "get", "ctm")
	// No group keeps history: compaction succeeds and changes nothing.
	must("compacted revision 1\n", a1, "", "compaction", "1")
	must("ctm\noutside\n", b1, "", "get", "ctm")
}
