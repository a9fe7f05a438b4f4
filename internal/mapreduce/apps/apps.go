package apps

import (
	"fmt"
	"iter"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cairn-db/cairn/internal/mapreduce/job"
)

// Register adds every built-in app to r.
func Register(r *job.Registry) error {
	for _, a := range All() {
		if err := r.Register(a); err != nil {
			return err
		}
	}
	return nil
}

// All returns the built-in apps.
func All() []*job.App {
	return []*job.App{WordCount(), Grep(), Index(), Sort(), Streaming()}
}

// Words calls fn for every word of s. A word is a maximal run of Unicode
// letters and digits; case is kept.
func Words(s string, fn func(w string)) {
	start := -1
	for i := 0; i < len(s); {
		c := s[i]
		var isWord bool
		size := 1
		if c < utf8.RuneSelf {
			isWord = asciiWord[c]
		} else {
			var r rune
			r, size = utf8.DecodeRuneInString(s[i:])
			isWord = unicode.IsLetter(r) || unicode.IsDigit(r)
		}
		if isWord {
			if start < 0 {
				start = i
			}
		} else if start >= 0 {
			fn(s[start:i])
			start = -1
		}
		i += size
	}
	if start >= 0 {
		fn(s[start:])
	}
}

var asciiWord = func() (t [utf8.RuneSelf]bool) {
	for c := 0; c < utf8.RuneSelf; c++ {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	}
	return t
}()

// sum is the reducer and combiner of wordcount.
func sum(key string, values iter.Seq[string], out job.Output) error {
	var n int64
	for v := range values {
		x, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("not a count: %q", v)
		}
		n += x
	}
	out.Emit(key, strconv.FormatInt(n, 10))
	return nil
}

// WordCount counts words. Its map does in-mapper combining (it sums counts
// in memory and emits them at Flush), which keeps the shuffle to one record
// per distinct word per map task, so it needs no combiner.
func WordCount() *job.App {
	return &job.App{
		Name:  "wordcount",
		Usage: "count occurrences of each word (runs of letters and digits); output: word<TAB>count",
		New: func(job.Args) (*job.Funcs, error) {
			// One map lookup per word; a new word's key is cloned so the
			// map does not pin whole input lines.
			counts := map[string]*int64{}
			return &job.Funcs{
				Map: func(rec job.Record, _ job.Output) error {
					Words(rec.Text, func(w string) {
						if p := counts[w]; p != nil {
							*p++
						} else {
							n := int64(1)
							counts[strings.Clone(w)] = &n
						}
					})
					return nil
				},
				Flush: func(out job.Output) error {
					for w, n := range counts {
						out.Emit(w, strconv.FormatInt(*n, 10))
					}
					clear(counts)
					return nil
				},
				Reduce: sum,
			}, nil
		},
	}
}

// Grep emits the lines matching a regular expression as
// "file:line:text", sorted by file and line number.
func Grep() *job.App {
	return &job.App{
		Name:        "grep",
		Usage:       "lines matching --pattern (RE2 syntax); output: file:line:text",
		Flags:       []job.Flag{{Name: "pattern", Usage: "regular expression to search for (required)"}},
		LineNumbers: true,
		New: func(args job.Args) (*job.Funcs, error) {
			if args["pattern"] == "" {
				return nil, fmt.Errorf("grep needs --pattern")
			}
			re, err := regexp.Compile(args["pattern"])
			if err != nil {
				return nil, fmt.Errorf("bad --pattern: %w", err)
			}
			return &job.Funcs{
				Map: func(rec job.Record, out job.Output) error {
					if re.MatchString(rec.Text) {
						// The key sorts by file, then numerically by line.
						out.Emit(fmt.Sprintf("%s\x00%020d", rec.File, rec.Line), fmt.Sprintf("%s:%d:%s", rec.File, rec.Line, rec.Text))
						out.Count("matches", 1)
					}
					return nil
				},
				Reduce: func(_ string, values iter.Seq[string], out job.Output) error {
					for v := range values {
						out.Emit("", v)
					}
					return nil
				},
			}, nil
		},
	}
}

// Index builds an inverted index: each word and the sorted, comma-separated
// list of input files containing it.
func Index() *job.App {
	return &job.App{
		Name:  "index",
		Usage: "inverted index; output: word<TAB>file1,file2,...",
		New: func(job.Args) (*job.Funcs, error) {
			seen := map[string]map[string]bool{} // file -> words, per task
			return &job.Funcs{
				Map: func(rec job.Record, _ job.Output) error {
					ws := seen[rec.File]
					if ws == nil {
						ws = map[string]bool{}
						seen[rec.File] = ws
					}
					Words(rec.Text, func(w string) {
						if !ws[w] {
							ws[strings.Clone(w)] = true
						}
					})
					return nil
				},
				Flush: func(out job.Output) error {
					for f, ws := range seen {
						for w := range ws {
							out.Emit(w, f)
						}
					}
					clear(seen)
					return nil
				},
				Reduce: func(key string, values iter.Seq[string], out job.Output) error {
					var files []string
					for v := range values {
						files = append(files, v)
					}
					out.Emit(key, strings.Join(uniqSorted(files), ","))
					return nil
				},
			}, nil
		},
	}
}

func uniqSorted(s []string) []string {
	m := map[string]bool{}
	var out []string
	for _, x := range s {
		if !m[x] {
			m[x] = true
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}
