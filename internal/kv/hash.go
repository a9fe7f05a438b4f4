package kv

import (
	"encoding/binary"
	"hash/crc32"
)

// Hash returns a CRC-32C of every key the store holds, in key order, with
// its value, create and mod revision, version and lease, and the revision
// it describes. Two replicas that have applied the same log prefix return
// the same hash, so comparing members' hashes at the same revision checks
// that they hold the same data (etcd's HashKV; etcd hashes its history
// too, so the numbers differ between the two systems). The store is
// cloned under the lock and hashed outside it, so writes go on while a
// large store is hashed.
func (s *Store) Hash() (hash uint32, rev int64) {
	s.mu.Lock()
	items := s.tree.clone()
	rev = s.rev
	s.mu.Unlock()

	h := crc32.New(castagnoli)
	var buf []byte
	items.ascend(func(it kvItem) bool {
		buf = binary.AppendUvarint(buf[:0], uint64(len(it.key)))
		buf = append(buf, it.key...)
		buf = binary.AppendUvarint(buf, uint64(len(it.value)))
		buf = append(buf, it.value...)
		for _, x := range [...]int64{it.create, it.mod, it.version, it.lease} {
			buf = binary.AppendVarint(buf, x)
		}
		_, _ = h.Write(buf) // a hash.Hash never fails to write
		return true
	})
	return h.Sum32(), rev
}
