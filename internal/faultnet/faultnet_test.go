package faultnet

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echoServer echoes lines back.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, msg string, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// A blocked proxy passes nothing, on old or new connections, and refuses
// nothing; unblocked, what waited is delivered.
func TestBlockStopsTrafficAndUnblockDelivers(t *testing.T) {
	p, err := Listen("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "one", 2*time.Second); err != nil || got != "one\n" {
		t.Fatalf("before block: %q %v", got, err)
	}
	p.Block()
	if got, err := roundTrip(c, "two", 300*time.Millisecond); err == nil {
		t.Fatalf("blocked proxy passed %q", got)
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatalf("a blocked proxy must accept (silence, not refusal): %v", err)
	}
	defer c2.Close()
	if got, err := roundTrip(c2, "three", 300*time.Millisecond); err == nil {
		t.Fatalf("blocked proxy passed %q on a new connection", got)
	}
	p.Unblock()
	c2.SetDeadline(time.Now().Add(2 * time.Second))
	if got, err := bufio.NewReader(c2).ReadString('\n'); err != nil || got != "three\n" {
		t.Fatalf("after unblock, the held connection: %q %v", got, err)
	}
}
