package health

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventTimeout bounds every wait for an event: generous, so that a loaded
// 2-core machine does not fail a test that is merely slow.
const eventTimeout = 10 * time.Second

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nextEvent returns the next event from ch, failing the test if none comes
// within eventTimeout or ch is closed.
func nextEvent(t testing.TB, ch <-chan Event) Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("event channel closed, want an event")
		}
		t.Logf("event: %s check=%q reason=%q notRunning=%v", e.State, e.Check, e.Reason, e.NotRunning)
		return e
	case <-time.After(eventTimeout):
		t.Fatalf("no event within %v", eventTimeout)
	}
	panic("unreachable")
}

// wantEvent returns the next event from ch, failing the test unless its
// state is want.
func wantEvent(t testing.TB, ch <-chan Event, want State) Event {
	t.Helper()
	e := nextEvent(t, ch)
	if e.State != want {
		t.Fatalf("got event %s (%s), want %s", e.State, e.Reason, want)
	}
	return e
}

// runMonitor starts a Monitor of checks. Its cleanup ends Run and waits for
// the channel to close, so no probe of one test outlives it.
func runMonitor(t testing.TB, checks []Check, startTimeout time.Duration) (<-chan Event, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := NewMonitor(checks, startTimeout).Run(ctx)
	t.Cleanup(func() {
		cancel()
		waitClosed(t, ch)
	})
	return ch, cancel
}

// waitClosed drains ch until it is closed, failing the test if that takes
// longer than eventTimeout.
func waitClosed(t testing.TB, ch <-chan Event) {
	t.Helper()
	timeout := time.After(eventTimeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("event channel not closed within %v of cancel", eventTimeout)
		}
	}
}

// statusServer is a real HTTP server whose answers' statuses the test
// chooses: the nth request gets script[n-1], and every request after the
// script the current default.
type statusServer struct {
	*httptest.Server

	mu     sync.Mutex
	script []int
	dflt   int
	n      int
}

func newStatusServer(t testing.TB, dflt int, script ...int) *statusServer {
	t.Helper()
	s := &statusServer{script: script, dflt: dflt}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.n++
		n, status := s.n, s.dflt
		if n <= len(s.script) {
			status = s.script[n-1]
		}
		s.mu.Unlock()
		w.WriteHeader(status)
		fmt.Fprintf(w, "request %d: status %d\n", n, status)
	}))
	t.Cleanup(s.Close)
	return s
}

// served returns how many requests the server has answered or is answering.
func (s *statusServer) served() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// setDefault sets the status of every request after the script.
func (s *statusServer) setDefault(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dflt = status
}

// httpCheck returns a fast http check of url.
func httpCheck(url string) Check {
	return Check{Kind: KindHTTP, Target: url, Interval: 10 * time.Millisecond, Timeout: time.Second}.WithDefaults()
}

// listen returns a real TCP listener on the loopback that accepts and
// closes connections until the test ends or the listener is closed.
func listen(t testing.TB) net.Listener {
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
			c.Close()
		}
	}()
	return ln
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// writeScript writes an executable shell script with body to a file in
// dir and returns its path. Tests that exec scripts do not run in parallel:
// a script still open for writing in a concurrently forked child cannot be
// executed (ETXTBSY, golang/go#22315).
func writeScript(t testing.TB, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// processGone says whether process pid has exited: it no longer exists, or
// it is a zombie that its (new) parent has not reaped.
func processGone(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	state := stat[i+2]
	return state == 'Z' || state == 'X'
}

// readPID reads the pid a script wrote to path.
func readPID(t testing.TB, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read pid the script wrote: %v", err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		t.Fatalf("read pid from %q: %v", b, err)
	}
	return pid
}

// readFileIfExists reads path, returning nothing and no error if it does
// not exist yet.
func readFileIfExists(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
