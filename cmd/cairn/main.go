// Command cairn runs Cairn servers, a local development cluster, client
// commands, the Raft simulator and MapReduce jobs.
package main

import (
	"os"

	"github.com/cairn-db/cairn/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
