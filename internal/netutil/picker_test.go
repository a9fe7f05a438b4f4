package netutil

import (
	"net"
	"testing"
)

// The kernel is free to repeat a port between probes; the Picker is not.
func TestPickerNeverRepeats(t *testing.T) {
	var p Picker
	seen := make(map[string]bool)
	for range 2000 {
		addr, err := p.Free()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
	}
}

func TestPickedAddressIsListenable(t *testing.T) {
	var p Picker
	addr, err := p.Free()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on picked %s: %v", addr, err)
	}
	ln.Close()
}
