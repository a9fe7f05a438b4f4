package shard

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// GroupID names a replica group. Group 0 is not a group: a shard owned by
// NoGroup is served by nobody, which is the case exactly when a
// configuration has no groups.
type GroupID uint64

// NoGroup is the owner of every shard in a configuration without groups.
const NoGroup GroupID = 0

// Config is one numbered shard configuration. Configurations are made only
// by the controller; number 0 is the initial one (no groups, every shard
// owned by NoGroup) and each Join, Leave or Move makes the next.
//
// A Config returned by this package is the caller's own (a deep copy);
// history inside the controller is never shared.
type Config struct {
	// Num is the configuration's number.
	Num uint64 `json:"num"`
	// Shards[s] is the group that owns shard s. Its length is the cluster's
	// fixed shard count.
	Shards []GroupID `json:"shards"`
	// Groups maps each group to the addresses of its members. The
	// controller treats addresses as opaque, non-empty strings; one address
	// may appear in several groups (a process hosting replicas of many
	// groups serves them all on one listener).
	Groups map[GroupID][]string `json:"groups"`
}

// InitialConfig returns configuration 0 for a cluster of nShards shards: no
// groups, every shard owned by NoGroup.
func InitialConfig(nShards int) Config {
	return Config{Shards: make([]GroupID, nShards), Groups: map[GroupID][]string{}}
}

// Clone returns a deep copy of c. The copy's Groups map is never nil.
func (c Config) Clone() Config {
	out := Config{Num: c.Num, Shards: slices.Clone(c.Shards), Groups: make(map[GroupID][]string, len(c.Groups))}
	for gid, addrs := range c.Groups {
		out.Groups[gid] = slices.Clone(addrs)
	}
	return out
}

// Equal reports whether c and o are the same configuration (a nil and an
// empty Groups map are equal).
func (c Config) Equal(o Config) bool {
	return c.Num == o.Num && slices.Equal(c.Shards, o.Shards) &&
		maps.EqualFunc(c.Groups, o.Groups, slices.Equal[[]string])
}

// GroupIDs returns the configuration's groups in ascending order.
func (c Config) GroupIDs() []GroupID {
	return slices.Sorted(maps.Keys(c.Groups))
}

// ShardsOf returns the shards group gid owns, in ascending order.
func (c Config) ShardsOf(gid GroupID) []int {
	var out []int
	for s, g := range c.Shards {
		if g == gid {
			out = append(out, s)
		}
	}
	return out
}

// Owner returns the group that owns key's shard.
func (c Config) Owner(key []byte) GroupID {
	return c.Shards[ShardOf(key, len(c.Shards))]
}

// Validate checks that c is a configuration the controller could have
// made: a shard count in [1, MaxShards], nonzero group IDs, every group
// with at least one member, member addresses non-empty and distinct within
// their group, every shard owned by a group of the configuration, and
// NoGroup owning shards exactly when there are no groups. It does not
// check balance: a Move may leave a configuration uneven on purpose.
// Errors wrap ErrInvalidConfig.
func (c Config) Validate() error {
	if len(c.Shards) < 1 || len(c.Shards) > MaxShards {
		return fmt.Errorf("%w: %d shards, want 1 to %d", ErrInvalidConfig, len(c.Shards), MaxShards)
	}
	for _, gid := range c.GroupIDs() {
		if err := validateGroup(gid, c.Groups[gid]); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
	}
	for s, gid := range c.Shards {
		switch {
		case gid == NoGroup && len(c.Groups) > 0:
			return fmt.Errorf("%w: shard %d is unassigned although there are groups", ErrInvalidConfig, s)
		case gid != NoGroup && c.Groups[gid] == nil:
			return fmt.Errorf("%w: shard %d is owned by group %d, which is not in the configuration", ErrInvalidConfig, s, gid)
		}
	}
	return nil
}

// validateGroup checks one group's ID and members (shared by Validate and
// Join).
func validateGroup(gid GroupID, addrs []string) error {
	if gid == NoGroup {
		return fmt.Errorf("group 0 is reserved for unassigned shards")
	}
	if len(addrs) == 0 {
		return fmt.Errorf("group %d has no members", gid)
	}
	seen := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		if a == "" {
			return fmt.Errorf("group %d has an empty member address", gid)
		}
		if seen[a] {
			return fmt.Errorf("group %d lists member %q twice", gid, a)
		}
		seen[a] = true
	}
	return nil
}

// configVersion is the first byte of an encoded configuration.
const configVersion = 1

// AppendBinary appends c's encoding to b (encoding.BinaryAppender):
//
//	byte version (1), uvarint Num, uvarint shard count,
//	uvarint group ID per shard,
//	uvarint group count, then per group in ascending ID order:
//	    uvarint ID, uvarint member count, per member uvarint len, address
//
// Equal configurations encode to equal bytes. It never fails; the error is
// there to satisfy the interface.
func (c Config) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, configVersion)
	b = binary.AppendUvarint(b, c.Num)
	b = binary.AppendUvarint(b, uint64(len(c.Shards)))
	for _, gid := range c.Shards {
		b = binary.AppendUvarint(b, uint64(gid))
	}
	b = binary.AppendUvarint(b, uint64(len(c.Groups)))
	for _, gid := range c.GroupIDs() {
		b = binary.AppendUvarint(b, uint64(gid))
		b = appendStrings(b, c.Groups[gid])
	}
	return b, nil
}

// MarshalBinary encodes c (encoding.BinaryMarshaler); see AppendBinary.
func (c Config) MarshalBinary() ([]byte, error) {
	return c.AppendBinary(nil)
}

// UnmarshalBinary replaces *c with the configuration encoded in b, which
// must be exactly one encoding and pass Validate. On error *c is unchanged
// and the error wraps ErrInvalidConfig.
func (c *Config) UnmarshalBinary(b []byte) error {
	d := decoder{b: b}
	cfg := decodeConfig(&d)
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, d.err)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	*c = cfg
	return nil
}

// decodeConfig reads one encoded configuration from d (without validating
// it beyond what decoding needs).
func decodeConfig(d *decoder) Config {
	if v := d.byte(); d.err == nil && v != configVersion {
		d.fail("configuration version %d, want %d", v, configVersion)
	}
	cfg := Config{Num: d.uvarint()}
	n := d.elems("shard count")
	if n > MaxShards {
		d.fail("shard count %d exceeds %d", n, MaxShards)
		n = 0
	}
	cfg.Shards = make([]GroupID, n)
	for i := range cfg.Shards {
		cfg.Shards[i] = GroupID(d.uvarint())
	}
	ng := d.elems("group count")
	cfg.Groups = make(map[GroupID][]string, ng)
	var prev GroupID
	for i := 0; i < ng && d.err == nil; i++ {
		gid := GroupID(d.uvarint())
		if i > 0 && gid <= prev {
			d.fail("groups not in ascending order (%d after %d)", gid, prev)
		}
		prev = gid
		cfg.Groups[gid] = d.strings()
	}
	return cfg
}

// appendStrings appends a count and then each string with its length.
func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// decoder reads the package's varint encodings. The first error sticks;
// after it every read returns zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("unexpected end of data")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return x
}

// count reads a uvarint count and checks it against limit.
func (d *decoder) count(limit int, what string) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(limit) {
		d.fail("%s %d exceeds %d", what, n, limit)
		return 0
	}
	return int(n)
}

// elems reads the uvarint count of elements that each take at least one
// byte, so a count beyond the bytes left is corrupt and cannot ask for a
// huge allocation.
func (d *decoder) elems(what string) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail("%s %d exceeds the %d bytes left", what, n, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.elems("length")
	if d.err != nil {
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) strings() []string {
	n := d.elems("string count")
	if d.err != nil {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = string(d.bytes())
	}
	return out
}
