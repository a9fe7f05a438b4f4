package shard

import "math/bits"

// DefaultShards is the number of shards of a cluster created without an
// explicit count. The count is fixed for the life of a cluster: changing it
// would move almost every key to another shard.
const DefaultShards = 64

// MaxShards bounds the number of shards a configuration may have. It keeps
// a corrupt or hostile encoding from asking for a huge allocation.
const MaxShards = 1 << 16

// FNV-1a 64-bit parameters.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// KeyHash returns the 64-bit hash that places key in a shard: FNV-1a 64
// over every byte of the key, then the MurmurHash3 fmix64 finalizer.
//
// The algorithm is part of the storage format: every process of a cluster,
// of every version, must compute the same value for the same key, which is
// why it is spelled out here rather than taken from hash/maphash (seeded
// per process) or a library whose output could change. FNV-1a alone is
// weak in its low bits (the low k bits of the result depend only on the low
// k bits of each input byte), so the finalizer mixes every input bit into
// every output bit before ShardOf reduces the hash to a shard number.
func KeyHash(key []byte) uint64 {
	h := uint64(fnvOffset64)
	for _, c := range key {
		h ^= uint64(c)
		h *= fnvPrime64
	}
	// fmix64 from MurmurHash3.
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// ShardOf returns the shard, in [0, nShards), that holds key. It reduces
// KeyHash(key) with a multiply-shift (the high 64 bits of hash × nShards),
// which uses the hash's high bits and costs no division. It panics if
// nShards is not in [1, MaxShards]: a shard count is fixed configuration,
// so a bad one is a programming error.
func ShardOf(key []byte, nShards int) int {
	if nShards < 1 || nShards > MaxShards {
		panic("shard: ShardOf: shard count out of range")
	}
	hi, _ := bits.Mul64(KeyHash(key), uint64(nShards))
	return int(hi)
}
