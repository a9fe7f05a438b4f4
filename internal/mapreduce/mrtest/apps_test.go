package mrtest

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

// Every app's output equals a sequential reference on a generated corpus
// with many files, empty files, unicode and a very long line; inputs are
// cut into many splits so every reducer merges many map outputs.
func TestAppsMatchReference(t *testing.T) {
	c := Start(t, Options{Workers: 3})
	files := GenCorpus(t, filepath.Join(t.TempDir(), "in"), 1, 6, 40<<10)
	in := []string{filepath.Join(filepath.Dir(files[0]), "*.txt")}
	cases := []struct {
		name    string
		spec    job.Spec
		want    []string
		ordered bool
	}{
		{"wordcount", job.Spec{App: "wordcount"}, RefWordCount(t, files), false},
		{"grep", job.Spec{App: "grep", Args: job.Args{"pattern": `f[oö]x|日本`}}, RefGrep(t, files, `f[oö]x|日本`), false},
		{"index", job.Spec{App: "index"}, RefIndex(t, files), false},
		{"sort", job.Spec{App: "sort", Args: job.Args{"samples": "500"}}, RefSort(t, files), true},
		{"streaming", job.Spec{App: "streaming", Args: job.Args{
			"mapper":  `awk '{ for (i = 1; i <= NF; i++) print $i "\t1" }'`,
			"reducer": `awk -F'\t' '{ c[$1] += $2 } END { for (k in c) print k "\t" c[k] }'`,
		}}, RefBlankWordCount(t, files), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec
			spec.Inputs = in
			spec.Output = filepath.Join(t.TempDir(), "out")
			spec.NReduce = 3
			spec.SplitSize = 16 << 10
			st := c.Run(spec, 60*time.Second)
			got := ReadOutput(t, spec.Output, 3)
			SameLines(t, tc.name, got, tc.want, tc.ordered)
			if st.Counters[job.MapInputRecords] == 0 || st.Counters[job.ReduceOutputRecords] != int64(len(got)) {
				t.Errorf("counters %v, want reduce output records %d", st.Counters, len(got))
			}
		})
	}
}
