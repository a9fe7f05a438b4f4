package shard

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// Op is a controller operation.
type Op uint8

// The controller's operations. Every successful Join, Leave and Move makes
// a new configuration; Query changes nothing.
const (
	// OpJoin adds the groups in Command.Groups and rebalances.
	OpJoin Op = 1
	// OpLeave removes the groups in Command.GIDs and rebalances their
	// shards onto the remaining groups.
	OpLeave Op = 2
	// OpMove gives shard Command.Shard to group Command.GID, without
	// rebalancing anything else.
	OpMove Op = 3
	// OpQuery answers configuration Command.Num (-1, or a number beyond
	// the latest, means the latest).
	OpQuery Op = 4
)

func (o Op) String() string {
	switch o {
	case OpJoin:
		return "join"
	case OpLeave:
		return "leave"
	case OpMove:
		return "move"
	case OpQuery:
		return "query"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Command is one controller command, encoded into a Raft log entry with
// Marshal and decoded by Controller.Apply on every replica. Only the fields
// of its Op are encoded; the others are ignored.
type Command struct {
	// ClientID names an exactly-once session; 0 means no session.
	ClientID uint64
	// Seq is the client's sequence number for this command, starting at 1.
	Seq uint64
	// Time is the proposer's wall clock in Unix nanoseconds, the only time
	// the controller sees (it expires idle sessions).
	Time int64

	Op Op
	// Groups are the groups a Join adds, with their member addresses.
	Groups map[GroupID][]string
	// GIDs are the groups a Leave removes.
	GIDs []GroupID
	// Shard and GID are a Move's shard and its new owner.
	Shard int
	GID   GroupID
	// Num is the configuration a Query asks for.
	Num int64
}

// commandVersion is the first byte of an encoded command.
const commandVersion = 1

// Marshal encodes c:
//
//	byte version (1), uvarint ClientID, uvarint Seq, varint Time, byte Op,
//	then by Op:
//	    join:  uvarint group count, per group in ascending ID order
//	           uvarint ID, uvarint member count, per member uvarint len, address
//	    leave: uvarint count, uvarint ID each (in the order given)
//	    move:  varint shard, uvarint group ID
//	    query: varint Num
//
// Equal commands encode to equal bytes. Marshal does not validate; Apply
// does.
func (c *Command) Marshal() []byte {
	b := make([]byte, 0, 64)
	b = append(b, commandVersion)
	b = binary.AppendUvarint(b, c.ClientID)
	b = binary.AppendUvarint(b, c.Seq)
	b = binary.AppendVarint(b, c.Time)
	b = append(b, byte(c.Op))
	switch c.Op {
	case OpJoin:
		gids := slices.Sorted(maps.Keys(c.Groups))
		b = binary.AppendUvarint(b, uint64(len(gids)))
		for _, gid := range gids {
			b = binary.AppendUvarint(b, uint64(gid))
			b = appendStrings(b, c.Groups[gid])
		}
	case OpLeave:
		b = binary.AppendUvarint(b, uint64(len(c.GIDs)))
		for _, gid := range c.GIDs {
			b = binary.AppendUvarint(b, uint64(gid))
		}
	case OpMove:
		b = binary.AppendVarint(b, int64(c.Shard))
		b = binary.AppendUvarint(b, uint64(c.GID))
	case OpQuery:
		b = binary.AppendVarint(b, c.Num)
	}
	return b
}

// UnmarshalCommand decodes a command encoded by Marshal. It never panics;
// every error wraps ErrCorruptCommand. A Join that names a group twice does
// not decode (Marshal cannot produce one).
func UnmarshalCommand(b []byte) (*Command, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != commandVersion {
		d.fail("command version %d, want %d", v, commandVersion)
	}
	c := &Command{ClientID: d.uvarint(), Seq: d.uvarint(), Time: d.varint(), Op: Op(d.byte())}
	switch c.Op {
	case OpJoin:
		n := d.elems("group count")
		c.Groups = make(map[GroupID][]string, n)
		for i := 0; i < n && d.err == nil; i++ {
			gid := GroupID(d.uvarint())
			if _, dup := c.Groups[gid]; dup {
				d.fail("group %d appears twice", gid)
			}
			c.Groups[gid] = d.strings()
		}
	case OpLeave:
		n := d.elems("group count")
		c.GIDs = make([]GroupID, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			c.GIDs = append(c.GIDs, GroupID(d.uvarint()))
		}
	case OpMove:
		// Clamp so that int conversion cannot bring a wild value into
		// range on a 32-bit machine; Apply refuses both bounds.
		c.Shard = int(min(max(d.varint(), -1), MaxShards))
		c.GID = GroupID(d.uvarint())
	case OpQuery:
		c.Num = d.varint()
	default:
		if d.err == nil {
			d.fail("unknown operation %d", c.Op)
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptCommand, d.err)
	}
	return c, nil
}
