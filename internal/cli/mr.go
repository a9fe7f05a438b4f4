package cli

import (
	"fmt"
	"io"

	"github.com/cairn-db/cairn/internal/mapreduce/apps"
	"github.com/cairn-db/cairn/internal/mapreduce/job"
	"github.com/cairn-db/cairn/internal/mapreduce/mrcli"
)

// runMR runs `cairn mr <subcommand>` with the built-in apps; `run` starts
// its workers as `cairn mr worker` processes of this same binary.
func runMR(args []string, stdout, stderr io.Writer) int {
	reg := &job.Registry{}
	if err := apps.Register(reg); err != nil {
		fmt.Fprintf(stderr, "cairn mr: %v\n", err)
		return 1
	}
	return mrcli.Main(mrcli.Env{
		Prog: "cairn mr", Registry: reg, WorkerSubcommand: []string{"mr", "worker"},
		Stdout: stdout, Stderr: stderr,
	}, args)
}
