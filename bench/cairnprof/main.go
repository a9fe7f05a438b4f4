// Command cairnprof is cmd/cairn with net/http/pprof: bench/compare.sh
// --pprof builds it so the Cairn members it benchmarks can be profiled
// without a profiling flag in the server. CAIRN_BENCH_PPROF=host:port
// turns the listener on; everything else is the real cairn binary.
package main

import (
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"

	"github.com/cairn-db/cairn/internal/cli"
)

func main() {
	if addr := os.Getenv("CAIRN_BENCH_PPROF"); addr != "" {
		go func() {
			if err := http.ListenAndServe(addr, nil); err != nil {
				fmt.Fprintln(os.Stderr, "cairnprof: pprof listener:", err)
			}
		}()
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
