// Package testnet serves fake peers for tests: a listener whose
// connections are each handed to a function, closed by the test's end.
package testnet

import (
	"net"
	"testing"
)

// Serve listens on network/addr and runs handle on each connection in its
// own goroutine, closing the connection when handle returns; the listener is
// closed when the test ends.
func Serve(tb testing.TB, network, addr string, handle func(net.Conn)) net.Listener {
	tb.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln
}
