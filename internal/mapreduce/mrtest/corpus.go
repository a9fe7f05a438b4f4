package mrtest

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/cairn-db/cairn/internal/mapreduce/apps"
)

var vocabulary = []string{
	"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "MapReduce",
	"map", "reduce", "Map", "über", "naïve", "café", "日本語", "Ωμέγα", "straße",
	"x1", "42", "2004", "OSDI", "a", "I", "zebra", "ünïcödé", "😀", "e\u0301",
}

var seps = []string{" ", " ", " ", "  ", ", ", ". ", "\t", " - ", "\xff"}

// GenCorpus writes a test corpus into dir and returns its files: files of
// random lines of words (unicode included, and a byte of invalid UTF-8),
// empty files, a file of empty lines, a file without a final newline and a
// file with a line longer than the worker's read buffer. size is roughly
// the bytes per ordinary file.
func GenCorpus(t testing.TB, dir string, seed int64, nFiles, size int) []string {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var files []string
	write := func(name, content string) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	line := func(words int) string {
		var b strings.Builder
		for i := 0; i < words; i++ {
			if i > 0 {
				b.WriteString(seps[rng.Intn(len(seps))])
			}
			b.WriteString(vocabulary[rng.Intn(len(vocabulary))])
		}
		return b.String()
	}
	for i := 0; i < nFiles; i++ {
		var b strings.Builder
		for b.Len() < size {
			b.WriteString(line(rng.Intn(12)))
			b.WriteByte('\n')
		}
		write(fmt.Sprintf("text-%02d.txt", i), b.String())
	}
	write("empty-1.txt", "")
	write("empty-2.txt", "")
	write("blank-lines.txt", "\n\n\n")
	write("no-final-newline.txt", line(5)+"\n"+line(7))
	write("long-line.txt", line(3)+"\n"+line(250000)+"\n"+line(3)+"\n")
	sort.Strings(files)
	return files
}

// FileLines returns a file's lines as the engine sees them.
func FileLines(t testing.TB, name string) []string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func isWordSep(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }

// RefWordCount is a sequential word count, written independently of the
// wordcount app: sorted "word<TAB>count" lines.
func RefWordCount(t testing.TB, files []string) []string {
	counts := map[string]int{}
	for _, f := range files {
		for _, l := range FileLines(t, f) {
			for _, w := range strings.FieldsFunc(l, isWordSep) {
				counts[w]++
			}
		}
	}
	var out []string
	for w, n := range counts {
		out = append(out, w+"\t"+strconv.Itoa(n))
	}
	sort.Strings(out)
	return out
}

// RefBlankWordCount counts fields separated by spaces and tabs, what the
// awk mapper of the streaming test does.
func RefBlankWordCount(t testing.TB, files []string) []string {
	counts := map[string]int{}
	for _, f := range files {
		for _, l := range FileLines(t, f) {
			for _, w := range strings.FieldsFunc(l, func(r rune) bool { return r == ' ' || r == '\t' }) {
				counts[w]++
			}
		}
	}
	var out []string
	for w, n := range counts {
		out = append(out, w+"\t"+strconv.Itoa(n))
	}
	sort.Strings(out)
	return out
}

// RefGrep returns "file:line:text" for matching lines, sorted by file then
// line.
func RefGrep(t testing.TB, files []string, pattern string) []string {
	re := regexp.MustCompile(pattern)
	var out []string
	for _, f := range files {
		for i, l := range FileLines(t, f) {
			if re.MatchString(l) {
				out = append(out, fmt.Sprintf("%s:%d:%s", f, i+1, l))
			}
		}
	}
	return out
}

// RefIndex returns sorted "word<TAB>file,file" lines.
func RefIndex(t testing.TB, files []string) []string {
	idx := map[string]map[string]bool{}
	for _, f := range files {
		for _, l := range FileLines(t, f) {
			for _, w := range strings.FieldsFunc(l, isWordSep) {
				if idx[w] == nil {
					idx[w] = map[string]bool{}
				}
				idx[w][f] = true
			}
		}
	}
	var out []string
	for w, fs := range idx {
		var names []string
		for f := range fs {
			names = append(names, f)
		}
		sort.Strings(names)
		out = append(out, w+"\t"+strings.Join(names, ","))
	}
	sort.Strings(out)
	return out
}

// RefSort returns every line sorted by the sort app's key, then by line.
func RefSort(t testing.TB, files []string) []string {
	var out []string
	for _, f := range files {
		out = append(out, FileLines(t, f)...)
	}
	slices.SortFunc(out, func(a, b string) int {
		if c := strings.Compare(apps.SortKey(a), apps.SortKey(b)); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return out
}

// SameLines fails the test unless got equals want; unordered compares
// sorted copies.
func SameLines(t testing.TB, what string, got, want []string, ordered bool) {
	t.Helper()
	if !ordered {
		got = slices.Clone(got)
		want = slices.Clone(want)
		sort.Strings(got)
		sort.Strings(want)
	}
	if len(want) == 0 {
		t.Fatalf("%s: empty reference, test is vacuous", what)
	}
	if slices.Equal(got, want) {
		return
	}
	for i := 0; i < len(got) && i < len(want); i++ {
		if got[i] != want[i] {
			t.Fatalf("%s: %d lines, want %d; first difference at line %d:\n got  %.200q\n want %.200q", what, len(got), len(want), i, got[i], want[i])
		}
	}
	t.Fatalf("%s: %d lines, want %d", what, len(got), len(want))
}
