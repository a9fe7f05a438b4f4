package apps

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

// SortKey is the sort app's key of a record: the text before the first
// tab, or the whole line.
func SortKey(line string) string {
	if i := strings.IndexByte(line, '\t'); i >= 0 {
		return line[:i]
	}
	return line
}

// Sort sorts records (lines) by key, ties broken by the whole line. Plan
// samples keys from the inputs and picks R-1 cut points at the sample's
// quantiles; the partitioner sends each key to the range it falls in, so
// part-00000, part-00001, ... concatenated are globally sorted, as in the
// paper's sort benchmark (§5.3).
func Sort() *job.App {
	return &job.App{
		Name:  "sort",
		Usage: "sort lines by key (text before the first tab); concatenated outputs are globally sorted",
		Flags: []job.Flag{{Name: "samples", Default: "10000", Usage: "keys to sample for the range partitioner"}},
		Plan: func(in job.PlanInput) (job.Args, error) {
			var n int
			if _, err := fmt.Sscan(in.Args["samples"], &n); err != nil || n < 1 {
				return nil, fmt.Errorf("bad --samples %q", in.Args["samples"])
			}
			keys, err := sampleKeys(in.Files, n)
			if err != nil {
				return nil, err
			}
			cuts := cutPoints(keys, in.NReduce)
			b, _ := json.Marshal(cuts)
			out := job.Args{}
			for k, v := range in.Args {
				out[k] = v
			}
			out["cuts"] = string(b)
			return out, nil
		},
		New: func(args job.Args) (*job.Funcs, error) {
			var cuts []string
			if c := args["cuts"]; c != "" {
				if err := json.Unmarshal([]byte(c), &cuts); err != nil {
					return nil, fmt.Errorf("bad cut points: %w", err)
				}
			}
			return &job.Funcs{
				Map: func(rec job.Record, out job.Output) error {
					out.Emit(SortKey(rec.Text), rec.Text)
					return nil
				},
				Partition: func(key string, nReduce int) int {
					return min(sort.SearchStrings(cuts, key), nReduce-1)
				},
				Reduce: func(_ string, values iter.Seq[string], out job.Output) error {
					vs := slices.Collect(values)
					slices.Sort(vs)
					for _, v := range vs {
						out.Emit("", v)
					}
					return nil
				},
			}, nil
		},
	}
}

// cutPoints returns nReduce-1 keys splitting the sorted sample into equal
// parts.
func cutPoints(keys []string, nReduce int) []string {
	slices.Sort(keys)
	var cuts []string
	for i := 1; i < nReduce && len(keys) > 0; i++ {
		cuts = append(cuts, keys[i*len(keys)/nReduce])
	}
	return cuts
}

// sampleKeys reads about n keys at evenly spaced offsets of the files,
// spread over the files in proportion to their sizes.
func sampleKeys(files []string, n int) ([]string, error) {
	var total int64
	sizes := make([]int64, len(files))
	for i, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return nil, err
		}
		sizes[i] = st.Size()
		total += st.Size()
	}
	var keys []string
	for i, name := range files {
		if sizes[i] == 0 {
			continue
		}
		k := int(int64(n) * sizes[i] / max(total, 1))
		k = max(k, 1)
		ks, err := sampleFile(name, sizes[i], k)
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
	}
	return keys, nil
}

func sampleFile(name string, size int64, k int) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var keys []string
	for j := 0; j < k; j++ {
		off := size * int64(j) / int64(k)
		r := bufio.NewReader(io.NewSectionReader(f, off, size-off))
		if off > 0 {
			// Skip to the start of the next line: the record at off may
			// be cut.
			if _, err := r.ReadString('\n'); err != nil {
				continue
			}
		}
		line, err := r.ReadString('\n')
		if err != nil && line == "" {
			continue
		}
		keys = append(keys, SortKey(strings.TrimSuffix(line, "\n")))
	}
	return keys, nil
}
