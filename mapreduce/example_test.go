package mapreduce_test

import (
	"iter"
	"os"
	"strconv"
	"strings"

	"github.com/cairn-db/cairn/mapreduce"
)

// A complete job binary: a word-length histogram. Build it and run
//
//	lengths run --app lengths --input 'books/*.txt' --output out --workers 4
//
// or start `lengths coordinator`, `lengths worker` on each host and
// `lengths submit --app lengths ...`.
func Example() {
	sum := func(key string, values iter.Seq[string], out mapreduce.Output) error {
		n := 0
		for v := range values {
			x, _ := strconv.Atoi(v)
			n += x
		}
		out.Emit(key, strconv.Itoa(n))
		return nil
	}
	mapreduce.MustRegister(&mapreduce.App{
		Name:  "lengths",
		Usage: "how many words have each length",
		New: func(mapreduce.Args) (*mapreduce.Funcs, error) {
			return &mapreduce.Funcs{
				Map: func(rec mapreduce.Record, out mapreduce.Output) error {
					for _, w := range strings.Fields(rec.Text) {
						out.Emit(strconv.Itoa(len(w)), "1")
					}
					return nil
				},
				Combine: sum, // partial sums on the map side
				Reduce:  sum,
			}, nil
		},
	})
	if len(os.Args) > 1 && os.Args[1] == "run" { // in a real main: always
		os.Exit(mapreduce.Main(os.Args[1:]))
	}
}
