package kv

import (
	"bufio"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
)

// ErrCorrupt means a file is truncated or malformed.
var ErrCorrupt = errors.New("kv: corrupt or truncated file")

// File format: a sequence of records uvarint(len(key)+1) key
// uvarint(len(value)) value, then a single 0 byte as end marker.

// Writer writes records. Close writes the end marker and flushes; it does
// not close the underlying writer.
type Writer struct {
	w       *bufio.Writer
	scratch [binary.MaxVarintLen64]byte
	Records int64
	Bytes   int64
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: bufio.NewWriterSize(w, 256<<10)} }

// Write appends one record.
func (w *Writer) Write(k, v string) error {
	n := binary.PutUvarint(w.scratch[:], uint64(len(k))+1)
	w.w.Write(w.scratch[:n])
	w.w.WriteString(k)
	m := binary.PutUvarint(w.scratch[:], uint64(len(v)))
	w.w.Write(w.scratch[:m])
	_, err := w.w.WriteString(v)
	w.Records++
	w.Bytes += int64(n + m + len(k) + len(v))
	return err
}

// Close writes the end marker and flushes.
func (w *Writer) Close() error {
	w.w.WriteByte(0)
	return w.w.Flush()
}

// Reader reads records written by Writer.
type Reader struct {
	r   *bufio.Reader
	buf []byte
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 256<<10)} }

// Next returns the next record, io.EOF after the end marker, or an error
// wrapping ErrCorrupt if the data ends early or is malformed.
func (r *Reader) Next() (string, string, error) {
	kl, err := binary.ReadUvarint(r.r)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if kl == 0 {
		return "", "", io.EOF
	}
	k, err := r.read(int(kl - 1))
	if err != nil {
		return "", "", err
	}
	vl, err := binary.ReadUvarint(r.r)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	v, err := r.read(int(vl))
	if err != nil {
		return "", "", err
	}
	return k, v, nil
}

func (r *Reader) read(n int) (string, error) {
	if n < 0 || n > 1<<30 {
		return "", fmt.Errorf("%w: length %d", ErrCorrupt, n)
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		return "", fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return string(b), nil
}

// Source is a stream of records in key order.
type Source interface {
	Next() (key, value string, err error)
}

// Merge returns a Source yielding the records of all srcs, each sorted by
// key, in key order. Equal keys come in the order of srcs.
func Merge(srcs []Source) (Source, error) {
	m := &merger{}
	for i, s := range srcs {
		k, v, err := s.Next()
		if err == io.EOF {
			continue
		}
		if err != nil {
			return nil, err
		}
		m.h = append(m.h, head{k: k, v: v, i: i, src: s})
	}
	heap.Init(&m.h)
	return m, nil
}

type head struct {
	k, v string
	i    int
	src  Source
}

type heads []head

func (h heads) Len() int { return len(h) }
func (h heads) Less(a, b int) bool {
	if h[a].k != h[b].k {
		return h[a].k < h[b].k
	}
	return h[a].i < h[b].i
}
func (h heads) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *heads) Push(x any)   { *h = append(*h, x.(head)) }
func (h *heads) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type merger struct{ h heads }

func (m *merger) Next() (string, string, error) {
	if len(m.h) == 0 {
		return "", "", io.EOF
	}
	top := &m.h[0]
	k, v := top.k, top.v
	nk, nv, err := top.src.Next()
	switch {
	case err == io.EOF:
		heap.Pop(&m.h)
	case err != nil:
		return "", "", err
	default:
		top.k, top.v = nk, nv
		heap.Fix(&m.h, 0)
	}
	return k, v, nil
}

// Group calls fn once per distinct key of the sorted src with an iterator
// over that key's values. Values fn does not consume are skipped. It
// returns the number of groups and records read.
func Group(src Source, fn func(key string, values iter.Seq[string]) error) (groups, records int64, err error) {
	var k, v string
	var serr error
	advance := func() {
		k, v, serr = src.Next()
		if serr == nil {
			records++
		}
	}
	advance()
	for serr == nil {
		key := k
		groups++
		seq := func(yield func(string) bool) {
			for serr == nil && k == key {
				val := v
				advance()
				if !yield(val) {
					return
				}
			}
		}
		if err := fn(key, seq); err != nil {
			return groups, records, err
		}
		for serr == nil && k == key {
			advance()
		}
	}
	if serr != io.EOF {
		return groups, records, serr
	}
	return groups, records, nil
}

// SliceSource is a Source over an in-memory sorted slice.
type SliceSource struct {
	KVs []KV
	i   int
}

// KV is one key/value pair.
type KV struct{ Key, Value string }

// Next implements Source.
func (s *SliceSource) Next() (string, string, error) {
	if s.i >= len(s.KVs) {
		return "", "", io.EOF
	}
	kv := s.KVs[s.i]
	s.i++
	return kv.Key, kv.Value, nil
}
