package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cairn-db/cairn/client"
)

// clientFlags are shared by every client command.
type clientFlags struct {
	endpoints string
	timeout   time.Duration
	json      bool
}

func (c *clientFlags) bind(fs *flag.FlagSet) {
	def := os.Getenv("CAIRN_ENDPOINTS")
	if def == "" {
		def = "127.0.0.1:2379"
	}
	fs.StringVar(&c.endpoints, "endpoints", def, "comma-separated member client addresses (env CAIRN_ENDPOINTS)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "give up after this long")
	fs.BoolVar(&c.json, "json", false, "print JSON instead of plain text")
}

func (c *clientFlags) list() []string {
	var out []string
	for _, e := range strings.Split(c.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func (c *clientFlags) dial() (*client.Client, context.Context, context.CancelFunc, error) {
	cl, err := client.New(client.Config{Endpoints: c.list()})
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	return cl, ctx, cancel, nil
}

// clientCommand parses flags, checks the argument count and runs f.
func clientCommand(name, usage string, minArgs, maxArgs int, setup func(fs *flag.FlagSet),
	f func(ctx context.Context, cl *client.Client, cf *clientFlags, args []string, stdout io.Writer) error) func([]string, io.Writer, io.Writer) int {
	return func(args []string, stdout, stderr io.Writer) int {
		var cf clientFlags
		fs := flag.NewFlagSet("cairn "+name, flag.ContinueOnError)
		fs.SetOutput(stderr)
		cf.bind(fs)
		if setup != nil {
			setup(fs)
		}
		fs.Usage = func() {
			fmt.Fprintf(stderr, "usage: cairn %s %s\n", name, usage)
			fs.PrintDefaults()
		}
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() < minArgs || fs.NArg() > maxArgs {
			fs.Usage()
			return 2
		}
		cl, ctx, cancel, err := cf.dial()
		if err != nil {
			fmt.Fprintf(stderr, "cairn %s: %v\n", name, err)
			return 2
		}
		defer cl.Close()
		defer cancel()
		if err := f(ctx, cl, &cf, fs.Args(), stdout); err != nil {
			fmt.Fprintf(stderr, "cairn %s: %v\n", name, err)
			var ue usageError
			if errors.As(err, &ue) {
				return 2
			}
			return 1
		}
		return 0
	}
}

// usageError marks a malformed argument found by a command's function:
// the command exits with status 2, as for a flag error.
type usageError struct{ error }

func usageErrorf(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

var runPut = clientCommand("put", "KEY VALUE", 2, 2, nil,
	func(ctx context.Context, cl *client.Client, cf *clientFlags, args []string, out io.Writer) error {
		r, err := cl.Put(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(out, r)
		}
		fmt.Fprintln(out, "OK")
		return nil
	})

var runAppend = clientCommand("append", "KEY VALUE", 2, 2, nil,
	func(ctx context.Context, cl *client.Client, cf *clientFlags, args []string, out io.Writer) error {
		r, err := cl.Append(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(out, r)
		}
		fmt.Fprintf(out, "OK length=%d revision=%d\n", r.Length, r.Revision)
		return nil
	})

func runGet(args []string, stdout, stderr io.Writer) int {
	var prefix, serializable, keysOnly bool
	var limit int64
	return clientCommand("get", "[--prefix] KEY", 1, 1, func(fs *flag.FlagSet) {
		fs.BoolVar(&prefix, "prefix", false, "get every key with this prefix")
		fs.BoolVar(&serializable, "serializable", false, "read the member's local state (faster, possibly stale)")
		fs.BoolVar(&keysOnly, "keys-only", false, "print keys only")
		fs.Int64Var(&limit, "limit", 0, "at most this many keys (0: all)")
	}, func(ctx context.Context, cl *client.Client, cf *clientFlags, args []string, out io.Writer) error {
		var opts []client.Option
		if prefix {
			opts = append(opts, client.WithPrefix(), client.WithSortByKey())
		}
		if serializable {
			opts = append(opts, client.WithSerializable())
		}
		if keysOnly {
			opts = append(opts, client.WithKeysOnly())
		}
		if limit > 0 {
			opts = append(opts, client.WithLimit(limit))
		}
		r, err := cl.Get(ctx, args[0], opts...)
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(out, r)
		}
		if len(r.KVs) == 0 && !prefix {
			return fmt.Errorf("key %q not found", args[0])
		}
		for _, kv := range r.KVs {
			fmt.Fprintln(out, kv.Key)
			if !keysOnly {
				fmt.Fprintln(out, kv.Value)
			}
		}
		return nil
	})(args, stdout, stderr)
}

func runDel(args []string, stdout, stderr io.Writer) int {
	var prefix bool
	return clientCommand("del", "[--prefix] KEY", 1, 1, func(fs *flag.FlagSet) {
		fs.BoolVar(&prefix, "prefix", false, "delete every key with this prefix")
	}, func(ctx context.Context, cl *client.Client, cf *clientFlags, args []string, out io.Writer) error {
		var opts []client.Option
		if prefix {
			opts = append(opts, client.WithPrefix())
		}
		r, err := cl.Delete(ctx, args[0], opts...)
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(out, r)
		}
		fmt.Fprintln(out, r.Deleted)
		return nil
	})(args, stdout, stderr)
}

// statusJSON is one endpoint in `cairn status --json`: the member's
// status, plus its shard groups when the cluster is sharded.
type statusJSON struct {
	*client.Status
	Shard *client.ShardHostStatus `json:"Shard,omitempty"`
}

var runStatus = clientCommand("status", "", 0, 0, nil,
	func(ctx context.Context, cl *client.Client, cf *clientFlags, args []string, out io.Writer) error {
		var all []statusJSON
		var failed []string
		sharded := false
		for _, ep := range cf.list() {
			st, err := cl.Status(ctx, ep)
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", ep, err))
				continue
			}
			one := statusJSON{Status: st}
			sh, err := cl.ShardStatus(ctx, ep)
			switch {
			case err == nil:
				one.Shard, sharded = sh, true
			case !errors.Is(err, client.ErrNotSharded):
				failed = append(failed, fmt.Sprintf("%s: shard status: %v", ep, err))
			}
			all = append(all, one)
		}
		if cf.json {
			if err := printJSON(out, all); err != nil {
				return err
			}
		} else {
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ENDPOINT\tMEMBER\tLEADER\tTERM\tRAFT INDEX\tAPPLIED\tREVISION\tDB SIZE\tERRORS")
			for _, one := range all {
				st := one.Status
				fmt.Fprintf(tw, "%s\t%x\t%x\t%d\t%d\t%d\t%d\t%d\t%s\n", st.Endpoint, st.MemberID, st.Leader, st.Term,
					st.RaftIndex, st.AppliedIndex, st.Revision, st.DBSize, strings.Join(st.Errors, "; "))
			}
			tw.Flush()
			if sharded {
				printShardStatus(out, all)
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("unreachable: %s", strings.Join(failed, ", "))
		}
		return nil
	})

// printShardStatus prints each endpoint's shard group replicas.
func printShardStatus(out io.Writer, all []statusJSON) {
	fmt.Fprintln(out, "\nshard groups (the table above shows the controller's Raft group):")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tGROUP\tLEADER\tCONFIG\tSERVING\tPULLING\tHANDING OFF\tAWAITING GC\tKEYS")
	for _, one := range all {
		sh := one.Shard
		if sh == nil {
			continue
		}
		if len(sh.Groups) == 0 {
			fmt.Fprintf(tw, "%s\t-\t\t%d\t\t\t\t\t\n", one.Endpoint, sh.Latest)
		}
		for _, g := range sh.Groups {
			leader := "no"
			if g.Leader {
				leader = "yes"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\t%s\t%s\t%d\n", one.Endpoint, g.GID, leader, g.Config,
				len(g.Serving), ranges(g.Pulling), ranges(g.Handing), ranges(g.GCWait), g.Keys)
		}
	}
	tw.Flush()
}

func runMember(args []string, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, "usage: cairn member list | add PEER-URL [--learner] | remove ID | promote ID")
		return 2
	}
	if len(args) == 0 {
		return usage()
	}
	switch args[0] {
	case "list":
		return clientCommand("member list", "", 0, 0, nil, func(ctx context.Context, cl *client.Client, cf *clientFlags, _ []string, out io.Writer) error {
			ms, err := cl.MemberList(ctx)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(out, ms)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tPEER URLS\tCLIENT URLS\tLEARNER")
			for _, m := range ms {
				fmt.Fprintf(tw, "%x\t%s\t%s\t%s\t%v\n", m.ID, m.Name, strings.Join(m.PeerURLs, ","), strings.Join(m.ClientURLs, ","), m.IsLearner)
			}
			return tw.Flush()
		})(args[1:], stdout, stderr)
	case "add":
		var learner bool
		return clientCommand("member add", "PEER-URL [--learner]", 1, 1, func(fs *flag.FlagSet) {
			fs.BoolVar(&learner, "learner", false, "add as a non-voting learner")
		}, func(ctx context.Context, cl *client.Client, cf *clientFlags, a []string, out io.Writer) error {
			id, err := cl.MemberAdd(ctx, a[0], learner)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(out, map[string]any{"id": fmt.Sprintf("%x", id)})
			}
			fmt.Fprintf(out, "added member %x; start it with --listen-peer matching %s and --initial-cluster-state existing\n", id, a[0])
			return nil
		})(args[1:], stdout, stderr)
	case "remove", "promote":
		verb := args[0]
		return clientCommand("member "+verb, "ID", 1, 1, nil, func(ctx context.Context, cl *client.Client, cf *clientFlags, a []string, out io.Writer) error {
			id, err := strconv.ParseUint(a[0], 16, 64)
			if err != nil {
				return fmt.Errorf("member ID %q is not hexadecimal (as printed by 'cairn member list')", a[0])
			}
			if verb == "remove" {
				err = cl.MemberRemove(ctx, id)
			} else {
				err = cl.MemberPromote(ctx, id)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "member %x %sd\n", id, verb)
			return nil
		})(args[1:], stdout, stderr)
	}
	return usage()
}
