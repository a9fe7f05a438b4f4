package shard

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"testing"
)

func testConfig() Config {
	return Config{
		Num:    7,
		Shards: []GroupID{1, 1, 2, 2, 3, 1},
		Groups: map[GroupID][]string{
			1: {"a:1", "b:1", "c:1"},
			2: {"a:2", "b:2", "c:2"},
			3: {"a:1"}, // shares a listener with group 1
		},
	}
}

func TestConfigCloneIsDeep(t *testing.T) {
	c := testConfig()
	d := c.Clone()
	if !c.Equal(d) {
		t.Fatalf("clone differs: %+v vs %+v", c, d)
	}
	d.Shards[0] = 9
	d.Groups[1][0] = "changed"
	d.Groups[4] = []string{"x"}
	if c.Shards[0] != 1 || c.Groups[1][0] != "a:1" || c.Groups[4] != nil {
		t.Fatalf("mutating the clone changed the original: %+v", c)
	}
	if z := (Config{Shards: []GroupID{0}}).Clone(); z.Groups == nil {
		t.Fatal("clone of a nil Groups map is nil")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := testConfig()
	for _, tc := range []struct {
		name string
		edit func(c *Config)
		ok   bool
	}{
		{"valid", func(c *Config) {}, true},
		{"initial", func(c *Config) { *c = InitialConfig(64) }, true},
		{"no shards", func(c *Config) { c.Shards = nil }, false},
		{"too many shards", func(c *Config) { c.Shards = make([]GroupID, MaxShards+1); c.Groups = nil }, false},
		{"group 0", func(c *Config) { c.Groups[0] = []string{"x"} }, false},
		{"group without members", func(c *Config) { c.Groups[4] = []string{} }, false},
		{"empty address", func(c *Config) { c.Groups[2] = []string{"a", ""} }, false},
		{"duplicate address", func(c *Config) { c.Groups[2] = []string{"a", "a"} }, false},
		{"shard of unknown group", func(c *Config) { c.Shards[3] = 9 }, false},
		{"unassigned shard with groups", func(c *Config) { c.Shards[3] = NoGroup }, false},
		{"assigned shard without groups", func(c *Config) { c.Groups = nil }, false},
		{"group with no shards", func(c *Config) { c.Groups[5] = []string{"e:5"} }, true},
		{"uneven", func(c *Config) { c.Shards = []GroupID{1, 1, 1, 1, 1, 2} }, true},
	} {
		c := ok.Clone()
		tc.edit(&c)
		err := c.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v does not wrap ErrInvalidConfig", tc.name, err)
		}
	}
}

func TestConfigBinaryRoundTrip(t *testing.T) {
	for _, c := range []Config{testConfig(), InitialConfig(1), InitialConfig(64)} {
		b, err := c.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var d Config
		if err := d.UnmarshalBinary(b); err != nil {
			t.Fatalf("UnmarshalBinary: %v", err)
		}
		if !c.Equal(d) {
			t.Fatalf("round trip: %+v became %+v", c, d)
		}
	}
}

// TestConfigEncodingDeterministic builds the same configuration with its
// map filled in different orders (and so, usually, iterated differently).
func TestConfigEncodingDeterministic(t *testing.T) {
	want, _ := testConfig().MarshalBinary()
	for i := range 50 {
		c := testConfig()
		c.Groups = map[GroupID][]string{}
		gids := []GroupID{1, 2, 3}
		for j := range gids {
			gid := gids[(i+j)%3]
			c.Groups[gid] = testConfig().Groups[gid]
		}
		got, _ := c.MarshalBinary()
		if !bytes.Equal(got, want) {
			t.Fatalf("encoding depends on map order:\n%x\n%x", got, want)
		}
	}
}

func TestConfigUnmarshalRejects(t *testing.T) {
	good, _ := testConfig().MarshalBinary()
	bad := testConfig()
	bad.Shards[0] = 42
	invalid, _ := bad.MarshalBinary()
	for name, b := range map[string][]byte{
		"empty":         nil,
		"version":       append([]byte{9}, good[1:]...),
		"truncated":     good[:len(good)-1],
		"trailing":      append(slices.Clone(good), 0),
		"invalid":       invalid,
		"huge count":    {1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"groups order":  {1, 0, 1, 2, 2, 2, 1, 1, 'x', 1, 1, 1, 'y'},
		"string length": {1, 0, 1, 0, 1, 1, 1, 200, 'x'},
	} {
		c := testConfig()
		err := c.UnmarshalBinary(b)
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: UnmarshalBinary = %v, want ErrInvalidConfig", name, err)
		}
		if !c.Equal(testConfig()) {
			t.Errorf("%s: failed UnmarshalBinary changed the config", name)
		}
	}
}

func TestConfigJSON(t *testing.T) {
	c := testConfig()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"num":7,"shards":[1,1,2,2,3,1],"groups":{"1":["a:1","b:1","c:1"],"2":["a:2","b:2","c:2"],"3":["a:1"]}}`
	if string(b) != want {
		t.Fatalf("JSON:\n%s\nwant\n%s", b, want)
	}
	var d Config
	if err := json.Unmarshal(b, &d); err != nil || !c.Equal(d) {
		t.Fatalf("JSON round trip: %+v, %v", d, err)
	}
}

func TestConfigHelpers(t *testing.T) {
	c := testConfig()
	if got := c.GroupIDs(); !slices.Equal(got, []GroupID{1, 2, 3}) {
		t.Errorf("GroupIDs = %v", got)
	}
	if got := c.ShardsOf(1); !slices.Equal(got, []int{0, 1, 5}) {
		t.Errorf("ShardsOf(1) = %v", got)
	}
	if got := c.ShardsOf(9); got != nil {
		t.Errorf("ShardsOf(9) = %v", got)
	}
	key := []byte("greeting")
	if got, want := c.Owner(key), c.Shards[ShardOf(key, len(c.Shards))]; got != want {
		t.Errorf("Owner = %d, want %d", got, want)
	}
}

func FuzzConfigUnmarshal(f *testing.F) {
	good, _ := testConfig().MarshalBinary()
	f.Add(good)
	init, _ := InitialConfig(4).MarshalBinary()
	f.Add(init)
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Config
		if err := c.UnmarshalBinary(b); err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("decoded config is invalid: %v", err)
		}
		again, _ := c.MarshalBinary()
		if !bytes.Equal(again, b) {
			t.Fatalf("decode/encode is not the identity:\n%x\n%x", b, again)
		}
	})
}
