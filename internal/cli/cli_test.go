package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cairn-db/cairn/internal/devcluster"
)

// The test binary doubles as the cairn binary: devcluster starts it as
// `<test binary> server ...` with this variable set.
const execCLIEnv = "CAIRN_CLI_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execCLIEnv) == "1" {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Setenv(execCLIEnv, "1")
	os.Exit(m.Run())
}

// run runs the cairn command in-process.
func run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

func serverArgs(t *testing.T) []string {
	return []string{"server", "--data-dir", t.TempDir(), "--listen-client", "127.0.0.1:1", "--listen-peer", "127.0.0.1:2"}
}

func TestServerShardFlagValidation(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		code int
		want string
	}{
		{args: []string{"--shards", "8"}, code: 2, want: "--shards applies only to a sharded server"},
		{env: map[string]string{"CAIRN_SHARDS": "8"}, code: 2, want: "--shards applies only to a sharded server"},
		{args: []string{"--controller-endpoints", "127.0.0.1:9"}, code: 2, want: "--controller-endpoints applies only to a sharded server"},
		{args: []string{"--controller", "--shards", "abc"}, code: 2, want: "invalid value \"abc\" for flag -shards"},
		{args: []string{"--controller", "--shards", "0"}, code: 1, want: "--shards must be between 1 and"},
		{args: []string{"--shard-groups", "0", "--controller"}, code: 1, want: "--shard-groups entry \"0\" is not a positive group ID"},
		{args: []string{"--shard-groups", "1,x", "--controller"}, code: 1, want: "--shard-groups entry \"x\" is not a positive group ID"},
		{args: []string{"--shard-groups", "1,1", "--controller"}, code: 1, want: "--shard-groups lists group 1 twice"},
		{args: []string{"--shard-groups", "1"}, code: 1, want: "needs --controller or --controller-endpoints"},
	} {
		t.Run(strings.Join(tc.args, " ")+fmt.Sprint(tc.env), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, _, stderr := run(append(serverArgs(t), tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") > 0 && tc.code == 1 {
				t.Fatalf("want a one-line error, got %q", stderr)
			}
		})
	}
	code, _, stderr := run("server", "--help")
	for _, f := range []string{"-controller", "-shard-groups", "-controller-endpoints", "-shards", "Sharded mode"} {
		if code != 0 || !strings.Contains(stderr, f) {
			t.Fatalf("server --help (exit %d) lacks %q:\n%s", code, f, stderr)
		}
	}
}

func TestShardArgValidation(t *testing.T) {
	ep := "--endpoints=127.0.0.1:1"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"shard"}, "usage: cairn shard"},
		{[]string{"shard", "split"}, "unknown subcommand \"split\""},
		{[]string{"shard", "join", ep}, "usage: cairn shard join"},
		{[]string{"shard", "join", ep, "1"}, "\"1\" is not GID=ADDR"},
		{[]string{"shard", "join", ep, "0=127.0.0.1:5"}, "group \"0\" is not a positive group ID"},
		{[]string{"shard", "join", ep, "1=localhost"}, "group 1: member address \"localhost\" is not host:port"},
		{[]string{"shard", "join", ep, "1=a:1", "1=b:2"}, "group 1 is given twice"},
		{[]string{"shard", "leave", ep}, "usage: cairn shard leave"},
		{[]string{"shard", "leave", ep, "two"}, "group \"two\" is not a positive group ID"},
		{[]string{"shard", "move", ep, "3"}, "usage: cairn shard move"},
		{[]string{"shard", "move", ep, "x", "1"}, "shard \"x\" is not a shard number"},
		{[]string{"shard", "move", ep, "3", "0"}, "group \"0\" is not a positive group ID"},
		{[]string{"shard", "config", ep, "1", "2"}, "usage: cairn shard config"},
		{[]string{"shard", "config", ep, "latest"}, "configuration number \"latest\" is not a non-negative integer"},
		{[]string{"dev", "--groups", "-1"}, "--groups must be at least 1"},
		{[]string{"dev", "--shards", "8"}, "--shards needs --groups"},
	} {
		code, _, stderr := run(tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("cairn %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(tc.args, " "), code, stderr, tc.want)
		}
	}
}

func TestRanges(t *testing.T) {
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, "-"}, {[]int{4}, "4"}, {[]int{0, 1, 2}, "0-2"}, {[]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12}, "0-9,12"},
		{[]int{1, 3, 4, 6, 8, 9, 10}, "1,3-4,6,8-10"},
	} {
		if got := ranges(tc.in); got != tc.want {
			t.Errorf("ranges(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestFlagsFirst(t *testing.T) {
	got := strings.Join(flagsFirst([]string{"3", "--json", "--endpoints", "a:1", "2", "-timeout=1s"}), " ")
	if want := "--json --endpoints a:1 -timeout=1s 3 2"; got != want {
		t.Fatalf("flagsFirst = %q, want %q", got, want)
	}
}

var fastArgs = []string{"--tick-interval", "20ms", "--request-timeout", "3s", "--log-level", "warn"}

func startSharded(t *testing.T, groups, shards int) *devcluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("runs real server processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := devcluster.StartSharded(ctx, devcluster.Options{Dir: t.TempDir(), Groups: groups, Shards: shards, ExtraArgs: fastArgs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.StopAll()
		if t.Failed() {
			for i, m := range c.Members {
				t.Logf("--- log of %s (tail) ---\n%s", m.Name, c.Log(i, 3000))
			}
		}
	})
	return c
}

func TestShardCommands(t *testing.T) {
	c := startSharded(t, 2, 8)
	eps := "--endpoints=" + strings.Join(c.Endpoints(), ",")
	mustRun := func(args ...string) string {
		t.Helper()
		code, out, stderr := run(args...)
		if code != 0 {
			t.Fatalf("cairn %s: exit %d: %s", strings.Join(args, " "), code, stderr)
		}
		return out
	}

	// The configuration, readable and as JSON.
	out := mustRun("shard", "config", eps)
	if !strings.Contains(out, "configuration 1: 8 shards, 2 groups") || !strings.Contains(out, "GROUP  SHARDS") ||
		!strings.Contains(out, "0-3 ") || !strings.Contains(out, "4-7 ") || !strings.Contains(out, c.Members[2].ClientAddr) {
		t.Fatalf("shard config:\n%s", out)
	}
	var cfg shardConfigJSON
	if err := json.Unmarshal([]byte(mustRun("shard", "config", "1", eps, "--json")), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Num != 1 || len(cfg.Shards) != 8 || len(cfg.Groups) != 2 || len(cfg.Groups["1"].Members) != 3 ||
		len(cfg.Groups["1"].Shards)+len(cfg.Groups["2"].Shards) != 8 {
		t.Fatalf("shard config --json: %+v", cfg)
	}
	if out := mustRun("shard", "config", "0", eps); !strings.Contains(out, "configuration 0: 8 shards, 0 groups") {
		t.Fatalf("shard config 0:\n%s", out)
	}

	// Keys go through the ordinary commands.
	for i := range 20 {
		mustRun("put", eps, fmt.Sprintf("k%02d", i), fmt.Sprint(i))
	}
	if out := mustRun("get", eps, "k07"); out != "k07\n7\n" {
		t.Fatalf("get k07: %q", out)
	}

	// Move a shard of group 1 to group 2; status shows the groups settle.
	from := cfg.Shards[0]
	to := 3 - from
	out = mustRun("shard", "move", eps, "0", fmt.Sprint(to))
	if !strings.Contains(out, "configuration 2:") {
		t.Fatalf("shard move:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitSettled(ctx, 2); err != nil {
		t.Fatal(err)
	}
	var moved shardConfigJSON
	if err := json.Unmarshal([]byte(mustRun("shard", "config", eps, "--json")), &moved); err != nil {
		t.Fatal(err)
	}
	if moved.Num != 2 || moved.Shards[0] != to {
		t.Fatalf("after move: %+v", moved)
	}
	for i := range 20 {
		if out := mustRun("get", eps, fmt.Sprintf("k%02d", i)); out != fmt.Sprintf("k%02d\n%d\n", i, i) {
			t.Fatalf("get k%02d after the move: %q", i, out)
		}
	}

	out = mustRun("status", eps)
	if !strings.Contains(out, "shard groups") || !strings.Contains(out, "AWAITING GC") {
		t.Fatalf("status:\n%s", out)
	}
	for _, m := range c.Members {
		if n := strings.Count(out, m.ClientAddr+" "); n != 3 { // its member line, and one line per group
			t.Fatalf("status shows %s on %d lines, want 3:\n%s", m.ClientAddr, n, out)
		}
	}
	var st []statusJSON
	if err := json.Unmarshal([]byte(mustRun("status", eps, "--json")), &st); err != nil {
		t.Fatal(err)
	}
	keys := 0
	for _, s := range st {
		if s.Shard == nil || len(s.Shard.Groups) != 2 || s.Shard.Shards != 8 {
			t.Fatalf("status --json: %+v", s)
		}
		for _, g := range s.Shard.Groups {
			if g.Config != 2 {
				t.Fatalf("status --json: group %d at configuration %d", g.GID, g.Config)
			}
			keys += g.Keys
		}
	}
	if keys != 3*20 {
		t.Fatalf("status --json: the replicas hold %d keys, want 60", keys)
	}

	// Controller errors pass through as one clear line.
	code, _, stderr := run("shard", "move", eps, "70", "1")
	if code != 1 || !strings.Contains(stderr, "shard 70 is out of range [0, 8)") || strings.Contains(stderr, "rpc error") {
		t.Fatalf("move 70 1: exit %d: %q", code, stderr)
	}
	code, _, stderr = run("shard", "join", eps, "1="+c.Members[0].ClientAddr)
	if code != 1 || !strings.Contains(stderr, "group already joined") {
		t.Fatalf("join of a joined group: exit %d: %q", code, stderr)
	}
	code, _, stderr = run("shard", "config", eps, "99")
	if code != 1 || !strings.Contains(stderr, "configuration 99 does not exist yet (the newest is 2)") {
		t.Fatalf("config 99: exit %d: %q", code, stderr)
	}

	// Leave and join again.
	out = mustRun("shard", "leave", eps, "2")
	if !strings.Contains(out, "configuration 3: 8 shards, 1 groups") || !strings.Contains(out, "0-7 ") {
		t.Fatalf("shard leave:\n%s", out)
	}
	if err := c.WaitSettled(ctx, 3); err != nil {
		t.Fatal(err)
	}
	out = mustRun("shard", "join", eps, "2="+strings.Join(c.Endpoints(), ","))
	if !strings.Contains(out, "configuration 4: 8 shards, 2 groups") {
		t.Fatalf("shard join:\n%s", out)
	}
	if err := c.WaitSettled(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if out := mustRun("get", eps, "--prefix", "k"); strings.Count(out, "\n") != 40 {
		t.Fatalf("get --prefix k after leave and join:\n%s", out)
	}
}

func TestShardCommandsUnsharded(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real server processes")
	}
	c, err := devcluster.Start(devcluster.Options{Dir: t.TempDir(), Members: 1, ExtraArgs: fastArgs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.StopAll()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, probeRead); err != nil {
		t.Fatal(err)
	}
	eps := "--endpoints=" + strings.Join(c.Endpoints(), ",")
	for _, args := range [][]string{{"config"}, {"move", "1", "1"}, {"leave", "1"}, {"join", "1=127.0.0.1:5"}} {
		code, _, stderr := run(append([]string{"shard", args[0], eps}, args[1:]...)...)
		if code != 1 || !strings.Contains(stderr, "the cluster is not sharded") {
			t.Fatalf("shard %v on an unsharded cluster: exit %d: %q", args, code, stderr)
		}
	}
	code, out, stderr := run("status", eps)
	if code != 0 || strings.Contains(out, "shard") || strings.Count(out, "\n") != 2 {
		t.Fatalf("status: exit %d %q %q", code, out, stderr)
	}
	code, out, _ = run("status", eps, "--json")
	var st []map[string]any
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || len(st) != 1 {
		t.Fatalf("status --json: %v %q", err, out)
	}
	if _, ok := st[0]["Shard"]; ok {
		t.Fatalf("unsharded status --json has a Shard field: %s", out)
	}
	if _, ok := st[0]["MemberID"]; !ok {
		t.Fatalf("status --json lost its fields: %s", out)
	}
}
