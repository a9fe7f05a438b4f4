package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"google.golang.org/grpc/status"

	"github.com/cairn-db/cairn/client"
)

const shardUsage = `usage: cairn shard <subcommand> [flags] [args]

Administers a sharded cluster through its shard controller:

  join GID=ADDR[,ADDR...] [GID=...]   add shard groups (member client addresses); shards rebalance onto them
  leave GID [GID...]                  remove shard groups; their shards move to the others
  move SHARD GID                      assign one shard to one group
  config [NUM]                        show configuration NUM (default: the newest)

Each subcommand takes --endpoints (env CAIRN_ENDPOINTS), --timeout and
--json, and prints the resulting configuration.`

func runShard(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, shardUsage)
		return 2
	}
	sub, args := args[0], flagsFirst(args[1:])
	switch sub {
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, shardUsage)
		return 0
	case "join":
		return clientCommand("shard join", "GID=ADDR[,ADDR...] [GID=ADDR[,ADDR...]...]", 1, 1<<20, nil,
			func(ctx context.Context, cl *client.Client, cf *clientFlags, a []string, out io.Writer) error {
				groups, err := parseJoinArgs(a)
				if err != nil {
					return err
				}
				cfg, err := cl.ShardJoin(ctx, groups)
				return printShardConfig(out, cf, cfg, err)
			})(args, stdout, stderr)
	case "leave":
		return clientCommand("shard leave", "GID [GID...]", 1, 1<<20, nil,
			func(ctx context.Context, cl *client.Client, cf *clientFlags, a []string, out io.Writer) error {
				var gids []uint64
				for _, s := range a {
					gid, err := parseGID(s)
					if err != nil {
						return err
					}
					gids = append(gids, gid)
				}
				cfg, err := cl.ShardLeave(ctx, gids...)
				return printShardConfig(out, cf, cfg, err)
			})(args, stdout, stderr)
	case "move":
		return clientCommand("shard move", "SHARD GID", 2, 2, nil,
			func(ctx context.Context, cl *client.Client, cf *clientFlags, a []string, out io.Writer) error {
				sh, err := strconv.Atoi(a[0])
				if err != nil || sh < 0 {
					return usageErrorf("shard %q is not a shard number (0 to the shard count - 1)", a[0])
				}
				gid, err := parseGID(a[1])
				if err != nil {
					return err
				}
				cfg, err := cl.ShardMove(ctx, sh, gid)
				return printShardConfig(out, cf, cfg, err)
			})(args, stdout, stderr)
	case "config":
		return clientCommand("shard config", "[NUM]", 0, 1, nil,
			func(ctx context.Context, cl *client.Client, cf *clientFlags, a []string, out io.Writer) error {
				num := int64(-1)
				if len(a) == 1 {
					n, err := strconv.ParseInt(a[0], 10, 64)
					if err != nil || n < 0 {
						return usageErrorf("configuration number %q is not a non-negative integer", a[0])
					}
					num = n
				}
				cfg, err := cl.ShardConfigAt(ctx, num)
				if err == nil && num >= 0 && cfg.Num != uint64(num) {
					return fmt.Errorf("configuration %d does not exist yet (the newest is %d)", num, cfg.Num)
				}
				return printShardConfig(out, cf, cfg, err)
			})(args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "cairn shard: unknown subcommand %q\n\n%s\n", sub, shardUsage)
	return 2
}

// flagsFirst moves flags given after the positional arguments (as in
// "cairn shard config 3 --json") in front of them, since Go's flag package
// stops at the first positional argument. No shard subcommand argument
// starts with "-".
func flagsFirst(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if (name == "endpoints" || name == "timeout") && i+1 < len(args) {
			flags = append(flags, args[i+1])
			i++
		}
	}
	return append(flags, pos...)
}

// parseGID parses a shard group ID (a positive integer).
func parseGID(s string) (uint64, error) {
	gid, err := strconv.ParseUint(s, 10, 64)
	if err != nil || gid == 0 {
		return 0, usageErrorf("group %q is not a positive group ID", s)
	}
	return gid, nil
}

// parseJoinArgs parses GID=addr1,addr2,... arguments.
func parseJoinArgs(args []string) (map[uint64][]string, error) {
	groups := map[uint64][]string{}
	for _, a := range args {
		id, list, ok := strings.Cut(a, "=")
		if !ok {
			return nil, usageErrorf("%q is not GID=ADDR[,ADDR...]", a)
		}
		gid, err := parseGID(id)
		if err != nil {
			return nil, err
		}
		if _, dup := groups[gid]; dup {
			return nil, usageErrorf("group %d is given twice", gid)
		}
		var addrs []string
		for _, addr := range strings.Split(list, ",") {
			addr = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(addr), "http://"), "https://")
			if _, _, err := net.SplitHostPort(addr); err != nil {
				return nil, usageErrorf("group %d: member address %q is not host:port", gid, addr)
			}
			addrs = append(addrs, addr)
		}
		groups[gid] = addrs
	}
	return groups, nil
}

// shardErr makes a shard administration error readable: it explains a
// cluster that is not sharded and strips gRPC's "rpc error: code = ..."
// wrapping from the controller's answer.
func shardErr(err error) error {
	if errors.Is(err, client.ErrNotSharded) {
		return errors.New("the cluster is not sharded (its servers run without --controller and --shard-groups)")
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		if msg := se.GRPCStatus().Message(); msg != "" {
			return errors.New(strings.TrimPrefix(msg, "cairn: "))
		}
	}
	return err
}

// shardConfigJSON is `cairn shard ... --json` output.
type shardConfigJSON struct {
	Num uint64 `json:"num"`
	// Shards maps shard -> owning group (0: unassigned).
	Shards []uint64                  `json:"shards"`
	Groups map[string]shardGroupJSON `json:"groups"`
	Free   []int                     `json:"unassigned,omitempty"`
}

type shardGroupJSON struct {
	Members []string `json:"members"`
	Shards  []int    `json:"shards"`
}

// groupShards returns each group's shards, and the unassigned ones.
func groupShards(cfg client.ShardConfig) (map[uint64][]int, []int) {
	owned := map[uint64][]int{}
	var free []int
	for sh, gid := range cfg.Shards {
		if gid == 0 {
			free = append(free, sh)
			continue
		}
		owned[gid] = append(owned[gid], sh)
	}
	return owned, free
}

func sortedGroupIDs(cfg client.ShardConfig) []uint64 {
	var ids []uint64
	for gid := range cfg.Groups {
		ids = append(ids, gid)
	}
	slices.Sort(ids)
	return ids
}

func printShardConfig(out io.Writer, cf *clientFlags, cfg client.ShardConfig, err error) error {
	if err != nil {
		return shardErr(err)
	}
	owned, free := groupShards(cfg)
	if cf.json {
		j := shardConfigJSON{Num: cfg.Num, Shards: cfg.Shards, Groups: map[string]shardGroupJSON{}, Free: free}
		for gid, addrs := range cfg.Groups {
			j.Groups[strconv.FormatUint(gid, 10)] = shardGroupJSON{Members: addrs, Shards: orEmpty(owned[gid])}
		}
		return printJSON(out, j)
	}
	fmt.Fprintf(out, "configuration %d: %d shards, %d groups\n", cfg.Num, len(cfg.Shards), len(cfg.Groups))
	if len(cfg.Groups) == 0 {
		fmt.Fprintln(out, "no groups have joined; every shard is unassigned (add groups with 'cairn shard join')")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tSHARDS\tCOUNT\tMEMBERS")
	for _, gid := range sortedGroupIDs(cfg) {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", gid, ranges(owned[gid]), len(owned[gid]), strings.Join(cfg.Groups[gid], ","))
	}
	if len(free) > 0 {
		fmt.Fprintf(tw, "-\t%s\t%d\t(unassigned)\n", ranges(free), len(free))
	}
	return tw.Flush()
}

func orEmpty(s []int) []int {
	if s == nil {
		return []int{}
	}
	return s
}

// ranges compacts sorted shard numbers as "0-9,12"; "-" when empty.
func ranges(s []int) string {
	if len(s) == 0 {
		return "-"
	}
	var parts []string
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(s[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", s[i], s[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
