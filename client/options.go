package client

// Option modifies a Get, Put or Delete.
type Option func(*options)

type options struct {
	prefix       bool
	end          string
	fromKey      bool
	limit        int64
	serializable bool
	keysOnly     bool
	countOnly    bool
	prevKV       bool
	sortByKey    bool
}

func collect(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

func (o options) rangeEnd(key string) []byte {
	switch {
	case o.prefix:
		return PrefixEnd(key)
	case o.fromKey:
		return []byte{0}
	case o.end != "":
		return []byte(o.end)
	}
	return nil
}

// PrefixEnd returns the range end that covers every key with prefix p,
// as etcd defines it: p with its last byte below 0xff incremented, or
// "\x00" (everything) if there is none.
func PrefixEnd(p string) []byte {
	end := []byte(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// WithPrefix selects every key starting with the given key.
func WithPrefix() Option { return func(o *options) { o.prefix = true } }

// WithRange selects keys in [key, end).
func WithRange(end string) Option { return func(o *options) { o.end = end } }

// WithFromKey selects every key >= key.
func WithFromKey() Option { return func(o *options) { o.fromKey = true } }

// WithLimit bounds the number of keys returned.
func WithLimit(n int64) Option { return func(o *options) { o.limit = n } }

// WithSerializable reads the member's local state without a ReadIndex
// round: faster, possibly stale.
func WithSerializable() Option { return func(o *options) { o.serializable = true } }

// WithKeysOnly omits values.
func WithKeysOnly() Option { return func(o *options) { o.keysOnly = true } }

// WithCountOnly returns only the count.
func WithCountOnly() Option { return func(o *options) { o.countOnly = true } }

// WithPrevKV returns the previous key-value of a Put or Delete.
func WithPrevKV() Option { return func(o *options) { o.prevKV = true } }

// WithSortByKey sorts a range ascending by key.
func WithSortByKey() Option { return func(o *options) { o.sortByKey = true } }
