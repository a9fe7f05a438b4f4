package job

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultSplitSize is the target size of one map task's input, as in the
// paper (16-64 MB per piece).
const DefaultSplitSize = 64 << 20

// Spec is a job as a client submits it.
type Spec struct {
	// App names a registered app.
	App string `json:"app"`
	// Args are the app's flags; missing ones take the app's defaults.
	Args Args `json:"args,omitempty"`
	// Inputs are file paths, directories (their regular files) or glob
	// patterns. They must be readable from the coordinator and every
	// worker (one host, or a shared filesystem as GFS is in the paper).
	Inputs []string `json:"inputs"`
	// Output is the directory receiving part-NNNNN files; it must be
	// writable from every worker and the coordinator.
	Output string `json:"output"`
	// NReduce is R, the number of reduce tasks and output files.
	NReduce int `json:"nReduce"`
	// SplitSize is the target bytes per map task (default DefaultSplitSize).
	// Splits end at line boundaries.
	SplitSize int64 `json:"splitSize,omitempty"`
	// Overwrite allows an existing output directory: its part-* files are
	// removed first.
	Overwrite bool `json:"overwrite,omitempty"`
}

// Validate checks the fields that need no filesystem access.
func (s *Spec) Validate() error {
	switch {
	case s.App == "":
		return fmt.Errorf("%w: no app", ErrBadSpec)
	case len(s.Inputs) == 0:
		return fmt.Errorf("%w: no input", ErrBadSpec)
	case s.Output == "":
		return fmt.Errorf("%w: no output directory", ErrBadSpec)
	case s.NReduce < 1 || s.NReduce > 99999:
		return fmt.Errorf("%w: reduce tasks must be in [1, 99999], got %d", ErrBadSpec, s.NReduce)
	case s.SplitSize < 0:
		return fmt.Errorf("%w: negative split size", ErrBadSpec)
	}
	return nil
}

// Split is the input of one map task: bytes [Start, End) of File, which
// begin at a line start and end after a newline or at end of file.
type Split struct {
	File  string `json:"file"`
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	// FirstLine is the line number of the first line, when the app asked
	// for line numbers; 0 otherwise.
	FirstLine int64 `json:"firstLine,omitempty"`
}

// OutputName is the final name of reduce task r's output file.
func OutputName(r int) string { return fmt.Sprintf("part-%05d", r) }

// ExpandInputs turns paths, directories and globs into a sorted list of
// distinct regular files, checking each can be opened. A pattern that
// matches nothing gives an error wrapping ErrNoInput.
func ExpandInputs(patterns []string) ([]string, error) {
	seen := map[string]bool{}
	var files []string
	add := func(p string) error {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrNoInput, err)
		}
		if st.IsDir() {
			ents, err := os.ReadDir(p)
			if err != nil {
				return fmt.Errorf("input directory: %w", err)
			}
			for _, e := range ents {
				if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") && !strings.HasPrefix(e.Name(), "_") {
					fp := filepath.Join(p, e.Name())
					if !seen[fp] {
						seen[fp] = true
						files = append(files, fp)
					}
				}
			}
			return nil
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("input %s: not a regular file", p)
		}
		if !seen[p] {
			seen[p] = true
			files = append(files, p)
		}
		return nil
	}
	for _, pat := range patterns {
		if strings.ContainsAny(pat, "*?[") {
			m, err := filepath.Glob(pat)
			if err != nil {
				return nil, fmt.Errorf("input pattern %q: %w", pat, err)
			}
			if len(m) == 0 {
				return nil, fmt.Errorf("%w: input pattern %q matches no files", ErrNoInput, pat)
			}
			for _, p := range m {
				if err := add(p); err != nil {
					return nil, err
				}
			}
			continue
		}
		if err := add(pat); err != nil {
			return nil, err
		}
	}
	sort.Strings(files)
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("input unreadable: %w", err)
		}
		fh.Close()
	}
	return files, nil
}

// PlanSplits cuts files into splits of about splitSize bytes that end at
// line boundaries. Empty files give no split. With lineNumbers, every file
// is read in full to count lines; otherwise only the bytes after each cut
// point are read, to find the end of the line there.
func PlanSplits(files []string, splitSize int64, lineNumbers bool) ([]Split, error) {
	if splitSize <= 0 {
		splitSize = DefaultSplitSize
	}
	var out []Split
	for _, f := range files {
		s, err := planFile(f, splitSize, lineNumbers)
		if err != nil {
			return nil, err
		}
		out = append(out, s...)
	}
	return out, nil
}

func planFile(name string, splitSize int64, lineNumbers bool) ([]Split, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("input unreadable: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	var splits []Split
	for start := int64(0); start < size; {
		end := start + splitSize
		if end >= size {
			end = size
		} else {
			// Extend to just after the newline ending the line that
			// contains byte end-1.
			nl, err := nextNewline(f, end-1)
			if err != nil {
				return nil, fmt.Errorf("input %s: %w", name, err)
			}
			if nl < 0 {
				end = size
			} else {
				end = nl + 1
			}
		}
		splits = append(splits, Split{File: name, Start: start, End: end})
		start = end
	}
	if lineNumbers && len(splits) > 0 {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		r := bufio.NewReaderSize(f, 1<<20)
		line := int64(1)
		for i := range splits {
			splits[i].FirstLine = line
			n, err := countNewlines(r, splits[i].End-splits[i].Start)
			if err != nil {
				return nil, fmt.Errorf("input %s: %w", name, err)
			}
			line += n
		}
	}
	return splits, nil
}

// nextNewline returns the offset of the first '\n' at or after off, or -1.
func nextNewline(f *os.File, off int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for {
		n, err := f.ReadAt(buf, off)
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			return off + int64(i), nil
		}
		off += int64(n)
		if err == io.EOF {
			return -1, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

func countNewlines(r *bufio.Reader, n int64) (int64, error) {
	var c int64
	buf := make([]byte, 256<<10)
	for n > 0 {
		k := int64(len(buf))
		if k > n {
			k = n
		}
		m, err := io.ReadFull(r, buf[:k])
		c += int64(bytes.Count(buf[:m], []byte{'\n'}))
		n -= int64(m)
		if err != nil {
			return c, err
		}
	}
	return c, nil
}

// ReadSplit calls fn for every line of s, in order, and returns the bytes
// read. Lines of any length are handled; the trailing newline is stripped.
//
// Lines are cut from blocks of about 1 MiB converted to a string at once,
// which saves an allocation per line; a Record's Text therefore shares
// memory with its neighbours, and a map function that keeps a small part
// of a line for long should keep a copy (strings.Clone).
func ReadSplit(s Split, lineNumbers bool, fn func(Record) error) (int64, error) {
	f, err := os.Open(s.File)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r := io.NewSectionReader(f, s.Start, s.End-s.Start)
	buf := make([]byte, min(1<<20, s.End-s.Start+1))
	off, line, carry := s.Start, s.FirstLine, 0
	for {
		if carry == len(buf) { // a line longer than the buffer
			nb := make([]byte, 2*len(buf))
			copy(nb, buf)
			buf = nb
		}
		n, err := io.ReadFull(r, buf[carry:])
		eof := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !eof {
			return off - s.Start, err
		}
		data := buf[:carry+n]
		end := len(data)
		if !eof {
			i := bytes.LastIndexByte(data, '\n')
			if i < 0 {
				carry = len(data)
				continue
			}
			end = i + 1
		}
		block := string(data[:end])
		for len(block) > 0 {
			text, rest := block, ""
			adv := len(block)
			if i := strings.IndexByte(block, '\n'); i >= 0 {
				text, rest, adv = block[:i], block[i+1:], i+1
			}
			rec := Record{File: s.File, Offset: off, Text: text}
			if lineNumbers {
				rec.Line = line
				line++
			}
			if err := fn(rec); err != nil {
				return off - s.Start, err
			}
			off += int64(adv)
			block = rest
		}
		carry = copy(buf, data[end:])
		if eof {
			return off - s.Start, nil
		}
	}
}
