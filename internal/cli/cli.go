// Package cli implements the cairn command's subcommands. Each subcommand
// lives in its own file and binds its flags to a config struct.
package cli

import (
	"fmt"
	"io"
	"sort"
)

// Version is the cairn release, printed by --version.
const Version = "0.1.0-dev"

type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() map[string]command {
	return map[string]command{
		"version": {"print the version", runVersion},
		"sim":     {"run the deterministic Raft simulator over a seed range", runSim},
		"server":  {"run one member of a key/value cluster", runServer},
		"put":     {"set a key: put KEY VALUE", runPut},
		"get":     {"read a key or a prefix: get [--prefix] KEY", runGet},
		"del":     {"delete a key or a prefix: del [--prefix] KEY", runDel},
		"append":  {"append to a key's value: append KEY VALUE", runAppend},
		"status":  {"show each endpoint's member, leader, term and indexes", runStatus},
		"member":  {"list, add, remove or promote members", runMember},
		"shard":   {"sharded clusters: join, leave, move, config", runShard},
		"dev":     {"run a local 3-member cluster until Ctrl-C", runDev},
		"demo":    {"start a cluster, kill its leader, show nothing is lost", runDemo},
		"chaos":   {"fault-test a containerized cluster (Docker) from a seed", runChaos},
		"mr":      {"MapReduce: coordinator, worker, submit, status, run", runMR},
	}
}

// Main runs the cairn command with args (without the program name) and
// returns the process exit code: 0 success, 1 failure, 2 usage error.
func Main(args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-version" {
		return runVersion(nil, stdout, stderr)
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "cairn: unknown command %q (run 'cairn help' for the list)\n", args[0])
		return 2
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: cairn <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, cmds[n].summary)
	}
}

func runVersion(_ []string, stdout, _ io.Writer) int {
	fmt.Fprintf(stdout, "cairn %s\n", Version)
	return 0
}
