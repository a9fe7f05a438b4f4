package netutil

import (
	"fmt"
	"net"
	"sync"
)

// maxTries bounds the search for an address not handed out before; the
// kernel repeats a port rarely, so a second try almost always succeeds.
const maxTries = 100

// Picker hands out free loopback TCP addresses and never the same one
// twice. An address is found by listening on port 0 and closing the
// listener, so the port is free again when it is returned: the kernel may
// give it to the very next probe as well, and a cluster whose members are
// given addresses one after another would then list one address twice.
// The zero value is ready to use; a Picker is safe for concurrent use.
type Picker struct {
	mu    sync.Mutex
	given map[string]bool
}

// Free returns a loopback address ("127.0.0.1:port") that nothing listened
// on when it was picked and that this Picker has not returned before.
func (p *Picker) Free() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.given == nil {
		p.given = make(map[string]bool)
	}
	for range maxTries {
		addr, err := probe()
		if err != nil {
			return "", err
		}
		if !p.given[addr] {
			p.given[addr] = true
			return addr, nil
		}
	}
	return "", fmt.Errorf("no unused loopback port after %d tries", maxTries)
}

func probe() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
