package apps

import (
	"os"
	"testing"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

// BenchmarkWordCountMap measures the wordcount map path (read split, map,
// in-mapper combine) on $CAIRN_MR_BENCH_FILE.
func BenchmarkWordCountMap(b *testing.B) {
	name := os.Getenv("CAIRN_MR_BENCH_FILE")
	if name == "" {
		b.Skip("set CAIRN_MR_BENCH_FILE")
	}
	st, err := os.Stat(name)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(st.Size())
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		f, _ := WordCount().New(nil)
		job.ReadSplit(job.Split{File: name, End: st.Size()}, false, func(r job.Record) error { return f.Map(r, nil) })
	}
}
