package shard

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"testing"
)

// TestKeyHashGolden pins the key hash: it is part of the storage format,
// so any change to these values moves keys between shards in a running
// cluster and must be a deliberate, migrated format change.
func TestKeyHashGolden(t *testing.T) {
	for _, tc := range []struct {
		key   string
		hash  uint64
		shard int // of 64
	}{
		{"", 0xefd01f60ba992926, 59},
		{"a", 0x82a2a958a9bece5b, 32},
		{"foo", 0xaf85ea5569581d4c, 43},
		{"greeting", 0x151fd25d2d4fb978, 5},
		{"user/000001", 0x213f2f6a20198dae, 8},
		{"user/000002", 0x2e142feafde99ef2, 11},
	} {
		if h := KeyHash([]byte(tc.key)); h != tc.hash {
			t.Errorf("KeyHash(%q) = %#x, want %#x", tc.key, h, tc.hash)
		}
		if s := ShardOf([]byte(tc.key), 64); s != tc.shard {
			t.Errorf("ShardOf(%q, 64) = %d, want %d", tc.key, s, tc.shard)
		}
	}
}

// TestKeyHashIsFNV1aPlusFmix checks the hand-written FNV-1a against the
// standard library's.
func TestKeyHashIsFNV1aPlusFmix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		key := make([]byte, rng.IntN(40))
		for i := range key {
			key[i] = byte(rng.Uint32())
		}
		f := fnv.New64a()
		f.Write(key)
		h := f.Sum64()
		h ^= h >> 33
		h *= 0xff51afd7ed558ccd
		h ^= h >> 33
		h *= 0xc4ceb9fe1a85ec53
		h ^= h >> 33
		if got := KeyHash(key); got != h {
			t.Fatalf("KeyHash(%x) = %#x, want %#x", key, got, h)
		}
	}
}

func TestShardOfRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 3, 7, 64, 1000, MaxShards} {
		for range 2000 {
			key := []byte(fmt.Sprint(rng.Uint64()))
			if s := ShardOf(key, n); s < 0 || s >= n {
				t.Fatalf("ShardOf(%q, %d) = %d", key, n, s)
			}
		}
	}
}

func TestShardOfPanicsOnBadCount(t *testing.T) {
	for _, n := range []int{0, -1, MaxShards + 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("ShardOf(_, %d) did not panic", n)
				}
			}()
			ShardOf([]byte("k"), n)
		}()
	}
}

// TestShardOfSpread checks that key families that defeat weak hashes
// (sequential numbers, keys differing only in bits FNV-1a's low bits
// ignore, a shared long prefix) still spread evenly over 64 shards: a
// chi-squared statistic far below what a skew would produce.
func TestShardOfSpread(t *testing.T) {
	const n, keys = 64, 64 * 500
	families := map[string]func(i int) string{
		"sequential":  func(i int) string { return fmt.Sprintf("user/%06d", i) },
		"decimal":     func(i int) string { return fmt.Sprint(i) },
		"long prefix": func(i int) string { return fmt.Sprintf("tenant-42/orders/2026/01/01/%d", i) },
		"top bits only": func(i int) string {
			// Only the top two bits of each byte vary: bare FNV-1a mod 64
			// would put every one of these keys in the same shard.
			b := make([]byte, 8)
			for j := range b {
				b[j] = byte(i>>(2*j)) << 6
			}
			return string(b)
		},
		"last byte":    func(i int) string { return fmt.Sprintf("k%c%c", byte(i), byte(i>>8)) },
		"random bytes": func(i int) string { return fmt.Sprintf("%x", rand.New(rand.NewPCG(uint64(i), 9)).Uint64()) },
	}
	for name, gen := range families {
		var counts [n]int
		for i := range keys {
			counts[ShardOf([]byte(gen(i)), n)]++
		}
		want := float64(keys) / n
		chi2 := 0.0
		for _, c := range counts {
			d := float64(c) - want
			chi2 += d * d / want
		}
		// 63 degrees of freedom: mean 63, sd ~11.2; p(chi2 > 130) < 1e-6.
		if chi2 > 130 || math.IsNaN(chi2) {
			t.Errorf("%s: chi-squared %.1f over %d shards (counts %v)", name, chi2, n, counts)
		}
	}
}

func BenchmarkShardOf(b *testing.B) {
	key := []byte("tenant-42/orders/2026/01/01/123456")
	b.ReportAllocs()
	b.SetBytes(int64(len(key)))
	for b.Loop() {
		ShardOf(key, DefaultShards)
	}
}
