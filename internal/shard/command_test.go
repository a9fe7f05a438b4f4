package shard

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestCommandRoundTrip(t *testing.T) {
	for _, c := range []*Command{
		withSession(join(3, 1, 2), 7, 42),
		{Op: OpJoin, Time: -5, Groups: map[GroupID][]string{1: {"x"}}},
		leave(4, 2, 9),
		withSession(move(63, 5), 1, 1),
		move(-1, 0),
		query(-1),
		query(1 << 40),
	} {
		c.Time = 1_700_000_000_000_000_000
		b := c.Marshal()
		d, err := UnmarshalCommand(b)
		if err != nil {
			t.Fatalf("%v: %v", c.Op, err)
		}
		if !reflect.DeepEqual(c, d) {
			t.Fatalf("round trip:\n%+v\n%+v", c, d)
		}
	}
}

// TestCommandFieldsOfOtherOps checks that fields foreign to the op are
// not encoded.
func TestCommandFieldsOfOtherOps(t *testing.T) {
	a := &Command{Op: OpMove, Shard: 3, GID: 2, Num: 9, GIDs: []GroupID{1}}
	b := &Command{Op: OpMove, Shard: 3, GID: 2}
	if !bytes.Equal(a.Marshal(), b.Marshal()) {
		t.Fatal("foreign fields reached the encoding")
	}
}

func TestUnmarshalCommandRejects(t *testing.T) {
	good := withSession(join(1, 2), 1, 1).Marshal()
	dup := []byte{commandVersion, 0, 0, 0, byte(OpJoin), 2, 1, 1, 1, 'a', 1, 1, 1, 'b'}
	for name, b := range map[string][]byte{
		"empty":          {},
		"version":        append([]byte{2}, good[1:]...),
		"truncated":      good[:len(good)-1],
		"trailing":       append(append([]byte{}, good...), 0),
		"unknown op":     {commandVersion, 0, 0, 0, 77},
		"duplicate join": dup,
		"huge count":     {commandVersion, 0, 0, 0, byte(OpLeave), 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		if _, err := UnmarshalCommand(b); !errors.Is(err, ErrCorruptCommand) {
			t.Errorf("%s: %v, want ErrCorruptCommand", name, err)
		}
	}
}

func FuzzUnmarshalCommand(f *testing.F) {
	for _, c := range []*Command{withSession(join(1, 2), 3, 4), leave(1), move(5, 1), query(-1)} {
		f.Add(c.Marshal())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := UnmarshalCommand(b)
		if err != nil {
			if !errors.Is(err, ErrCorruptCommand) {
				t.Fatalf("error %v does not wrap ErrCorruptCommand", err)
			}
			return
		}
		// Whatever decodes must apply without panicking, identically on
		// two controllers.
		c1, c2 := NewController(Options{Shards: 8}), NewController(Options{Shards: 8})
		c1.Apply(join(1, 2).Marshal())
		c2.Apply(join(1, 2).Marshal())
		r1, r2 := c1.Apply(c.Marshal()), c2.Apply(b)
		if !r1.Config.Equal(r2.Config) || (r1.Err == nil) != (r2.Err == nil) {
			t.Fatalf("re-encoded command applied differently: %+v vs %+v", r1, r2)
		}
	})
}
