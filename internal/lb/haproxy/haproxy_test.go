package haproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

func TestNewErrors(t *testing.T) {
	_, err := New(Config{Binary: "haproxy-not-installed-here", Dir: t.TempDir(), Managed: true})
	if !errors.Is(err, ErrNoBinary) || !strings.Contains(err.Error(), "apt-get install haproxy") {
		t.Errorf("missing binary: got %v, want ErrNoBinary saying apt-get install haproxy", err)
	}
	_, err = New(Config{Dir: t.TempDir()})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "ExternalConfigPath") {
		t.Errorf("external without paths: got %v, want ErrInvalid naming ExternalConfigPath", err)
	}

	needHAProxy(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Dir: filepath.Join(file, "dir"), Managed: true})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "directory") {
		t.Errorf("unusable dir: got %v, want ErrInvalid about the directory", err)
	}
}

// TestStartFailsClearly: a configuration haproxy -c rejects starts
// nothing; one it cannot run fails Start with its own words.
func TestStartFailsClearly(t *testing.T) {
	needHAProxy(t)
	a := newUpstream(t, "a", true)
	for _, tt := range []struct {
		listen string
		want   error
		says   string
	}{
		{"300.0.0.1:80", ErrRejected, "invalid address"},
		{"192.0.2.1:80", ErrExited, "cannot bind"},
	} {
		cfg := DefaultConfig(t.TempDir())
		cfg.Log = testLogger(t)
		drv, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = drv.Start(context.Background(), lb.Desired{Backends: []lb.Backend{{Name: "svc", Listen: tt.listen, Mode: lb.ModeAll, Servers: []lb.Server{a.server(true)}}}})
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("listen %s: got %v, want %v saying %q", tt.listen, err, tt.want, tt.says)
		}
		if tt.want == ErrRejected && drv.proc.Load() != nil {
			t.Errorf("listen %s: a proxy was started", tt.listen)
		}
		drv.Close()
	}
}

func TestStartAndClose(t *testing.T) {
	needHAProxy(t)
	a := newUpstream(t, "a", true)
	listen := freeAddr(t)
	drv := startManaged(t, slowChecks, lb.Desired{Backends: []lb.Backend{{
		Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{a.server(true)},
	}}})
	if err := allReach(listen, "a", 3); err != nil {
		t.Fatal(err)
	}
	p := showProc(t, drv)
	pids := append([]int{p.master}, p.workers...)
	if len(p.workers) != 1 {
		t.Fatalf("workers: got %v, want one", p.workers)
	}
	if err := drv.Start(context.Background(), lb.Desired{}); err == nil {
		t.Error("a second Start succeeded while the proxy runs")
	}
	if err := drv.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drv.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if !errors.Is(drv.Err(), ErrExited) {
		t.Errorf("Err: got %v, want ErrExited", drv.Err())
	}
	waitFor(t, 5*time.Second, "haproxy processes gone", func() error {
		for _, pid := range pids {
			if !gone(pid) {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
	if _, err := get(fresh, listen); err == nil {
		t.Error("the proxy still answers after Close")
	}
	if _, err := drv.Apply(context.Background(), lb.Desired{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close: got %v, want ErrClosed", err)
	}
}

func TestExitIsReportedAndStartRestarts(t *testing.T) {
	needHAProxy(t)
	a := newUpstream(t, "a", true)
	listen := freeAddr(t)
	d := lb.Desired{Backends: []lb.Backend{{Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{a.server(true)}}}}
	drv := startManaged(t, slowChecks, d)
	syscall.Kill(drv.proc.Load().pid, syscall.SIGKILL)
	select {
	case <-drv.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the master was killed")
	}
	if _, err := drv.Apply(context.Background(), d); !errors.Is(err, ErrExited) {
		t.Fatalf("Apply after exit: got %v, want ErrExited", err)
	}
	// The killed master's workers notice and leave; until they have, the
	// listen address is theirs.
	waitFor(t, 10*time.Second, "restart", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return drv.Start(ctx, d)
	})
	if err := allReach(listen, "a", 3); err != nil {
		t.Fatal(err)
	}
}

// TestChangeOfActive: after Apply returns, every new request goes to the
// new active. Checks are slow here (3s, fall 3, rise 2): only the runtime
// API can have moved the traffic.
func TestChangeOfActive(t *testing.T) {
	needHAProxy(t)
	a, b := newUpstream(t, "a", true), newUpstream(t, "b", false)
	listen := freeAddr(t)
	desired := func(active *upstream) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{
			Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeActive,
			Servers: []lb.Server{a.server(active == a), b.server(active == b)},
		}}}
	}
	drv := startManaged(t, slowChecks, desired(a))
	if err := allReach(listen, "a", 5); err != nil {
		t.Fatal(err)
	}
	before := showProc(t, drv)
	for i, next := range []*upstream{b, a, b, a, b} {
		other := map[*upstream]*upstream{a: b, b: a}[next]
		next.active.Store(true)
		other.active.Store(false)
		applied := apply(t, drv, desired(next))
		done := time.Now()
		got, err := get(fresh, listen)
		took := time.Since(done)
		if err != nil || got != next.name {
			t.Fatalf("flip %d: first request after Apply: got %q, %v, want %q", i, got, err, next.name)
		}
		t.Logf("flip %d to %s: Apply took %s (%d commands, reloaded %v); first request served by the new active %s after Apply returned",
			i, next.name, applied.Took, applied.Runtime, applied.Reloaded, took)
		if applied.Reloaded {
			t.Errorf("flip %d reloaded the proxy", i)
		}
		if err := allReach(listen, next.name, 20); err != nil {
			t.Fatalf("flip %d: %v", i, err)
		}
	}
	if after := showProc(t, drv); after.reloads != before.reloads {
		t.Errorf("reloads: got %d, want %d", after.reloads, before.reloads)
	}

	// The proxy drops the persistent connection (as its stats timeout
	// does): the next Apply reconnects and still flips at once.
	drv.mu.Lock()
	io.WriteString(drv.adm.conn, "quit\n")
	drv.mu.Unlock()
	waitFor(t, 5*time.Second, "connection closed by the proxy", func() error {
		drv.mu.Lock()
		defer drv.mu.Unlock()
		drv.adm.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := drv.adm.conn.Read(make([]byte, 1)); err != io.EOF {
			return fmt.Errorf("read: got %v, want EOF", err)
		}
		return nil
	})
	a.active.Store(true)
	b.active.Store(false)
	apply(t, drv, desired(a))
	if err := allReach(listen, "a", 20); err != nil {
		t.Fatalf("after reconnecting: %v", err)
	}
}

// TestMembershipWithoutReload: servers come, move and go through the
// runtime API; the master never reloads and the worker stays the same.
func TestMembershipWithoutReload(t *testing.T) {
	needHAProxy(t)
	a, b, c := newUpstream(t, "a", true), newUpstream(t, "b", true), newUpstream(t, "c", true)
	listen := freeAddr(t)
	desired := func(servers ...lb.Server) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{Name: "svc", Listen: listen, Health: "/isActive", Mode: lb.ModeAll, Servers: servers}}}
	}
	drv := startManaged(t, fastChecks, desired(a.server(true)))
	if err := allReach(listen, "a", 5); err != nil {
		t.Fatal(err)
	}
	before := showProc(t, drv)

	applied := apply(t, drv, desired(a.server(true), b.server(true)))
	if applied.Reloaded || applied.Runtime == 0 {
		t.Fatalf("add: got %+v, want runtime commands and no reload", applied)
	}
	t.Logf("adding a server: %+v", applied)
	seen := map[string]int{}
	for range 10 {
		got, err := get(fresh, listen)
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if seen["a"] == 0 || seen["b"] == 0 {
		t.Fatalf("after adding b: got %v, want both a and b", seen)
	}

	applied = apply(t, drv, desired(b.server(true)))
	if applied.Reloaded {
		t.Fatal("removing a reloaded the proxy")
	}
	t.Logf("removing a server: %+v", applied)
	if err := allReach(listen, "b", 10); err != nil {
		t.Fatalf("after removing a: %v", err)
	}

	// b moves to c's address.
	moved := lb.Server{Name: "b", Addr: c.addr, Up: true}
	if applied := apply(t, drv, desired(moved)); applied.Reloaded {
		t.Fatal("moving b reloaded the proxy")
	}
	if err := allReach(listen, "c", 10); err != nil {
		t.Fatalf("after moving b: %v", err)
	}
	actual, err := drv.Actual(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := actual.Backends[0].Servers; !reflect.DeepEqual(got, []lb.Server{moved}) {
		t.Errorf("actual servers: got %+v, want %+v", got, []lb.Server{moved})
	}
	after := showProc(t, drv)
	if after.reloads != before.reloads || !reflect.DeepEqual(after.workers, before.workers) {
		t.Errorf("proc: got reloads %d workers %v, want reloads %d workers %v", after.reloads, after.workers, before.reloads, before.workers)
	}
	// The file has followed, for the next restart.
	text, _ := os.ReadFile(drv.ConfigPath())
	if want := "server b " + c.addr + " "; !bytes.Contains(text, []byte(want)) || bytes.Contains(text, []byte("server a ")) {
		t.Errorf("configuration file was not rewritten: want %q and no server a in\n%s", want, text)
	}
}

// TestRemoveWithRequestInFlight: a removed server gets no new requests at
// once, finishes those in flight (Apply does not wait for them) and is
// deleted after; one whose request outlasts DrainTimeout has it cut.
// Nothing reloads.
func TestRemoveWithRequestInFlight(t *testing.T) {
	needHAProxy(t)
	slow, quick, stuck := newUpstream(t, "slow", true), newUpstream(t, "quick", true), newUpstream(t, "stuck", true)
	listen := freeAddr(t)
	desired := func(servers ...lb.Server) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{Name: "svc", Listen: listen, Health: "/isActive", Mode: lb.ModeAll, Servers: servers}}}
	}
	const drain = 1500 * time.Millisecond
	drv := startManaged(t, fastChecks, desired(slow.server(true)), func(c *Config) { c.DrainTimeout, c.DeleteGrace = drain, 200*time.Millisecond })
	before := showProc(t, drv)

	inFlight := func(u *upstream) <-chan error {
		done := make(chan error, 1)
		go func() {
			resp, err := fresh.Get("http://" + listen + "/slow")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(body) != u.name {
					err = fmt.Errorf("status %d, body %q", resp.StatusCode, body)
				}
			}
			done <- err
		}()
		select {
		case <-u.entered:
		case err := <-done:
			t.Fatalf("request to %s: %v", u.name, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("request to %s never arrived", u.name)
		}
		return done
	}
	servers := func() []string {
		t.Helper()
		names, err := proxyServers(drv)
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	onlyServers := func(want ...string) func() error {
		return func() error {
			if got := servers(); !reflect.DeepEqual(got, want) {
				return fmt.Errorf("servers: got %v, want %v", got, want)
			}
			return nil
		}
	}

	// slow's request is in flight while slow is removed.
	done := inFlight(slow)
	if applied := apply(t, drv, desired(quick.server(true), stuck.server(true))); applied.Reloaded {
		t.Error("removing a server with a request in flight reloaded")
	}
	select {
	case err := <-done:
		t.Fatalf("the request in flight ended before its server released it: %v", err)
	default:
	}
	for i := range 5 {
		if got, err := get(fresh, listen); err != nil || got == "slow" {
			t.Fatalf("request %d after removing slow: got %q, %v", i, got, err)
		}
	}
	close(slow.release)
	if err := <-done; err != nil {
		t.Errorf("the request in flight on the removed server: %v", err)
	}
	waitFor(t, 10*time.Second, "slow deleted", onlyServers("quick", "stuck"))

	// stuck's request never ends: DrainTimeout later it is cut.
	apply(t, drv, desired(stuck.server(true)))
	waitFor(t, 10*time.Second, "quick deleted", onlyServers("stuck"))
	done = inFlight(stuck)
	removed := time.Now()
	if applied := apply(t, drv, desired(quick.server(true))); applied.Reloaded {
		t.Error("removing a server with a stuck request reloaded")
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("the stuck request succeeded; want it cut")
		}
		if cut := time.Since(removed); cut < drain {
			t.Errorf("the stuck request was cut %s after the removal, before DrainTimeout %s", cut, drain)
		}
	case <-time.After(10 * time.Second):
		t.Error("the stuck request was not cut")
	}
	waitFor(t, 10*time.Second, "stuck deleted", onlyServers("quick"))

	// A name removed and added again while parked comes back.
	done = inFlight(quick)
	apply(t, drv, desired(stuck.server(true)))
	if got := servers(); !reflect.DeepEqual(got, []string{"quick", "stuck"}) {
		t.Fatalf("quick should be parked: servers %v", got)
	}
	apply(t, drv, desired(quick.server(true), stuck.server(true)))
	close(quick.release)
	if err := <-done; err != nil {
		t.Errorf("the request on the server removed and added back: %v", err)
	}
	seen := map[string]bool{}
	for range 10 {
		got, err := get(fresh, listen)
		if err != nil {
			t.Fatal(err)
		}
		seen[got] = true
	}
	if !seen["quick"] || !seen["stuck"] {
		t.Errorf("after adding quick back: got %v, want both", seen)
	}
	if after := showProc(t, drv); after.reloads != before.reloads {
		t.Errorf("reloads: got %d, want %d", after.reloads, before.reloads)
	}
}

// TestReloadKeepsKeepAliveClients: ten shape changes, each a reload,
// while six keep-alive clients send requests that may not be retried.
func TestReloadKeepsKeepAliveClients(t *testing.T) {
	needHAProxy(t)
	a, b, c := newUpstream(t, "a", true), newUpstream(t, "b", true), newUpstream(t, "c", true)
	listen, extra := freeAddr(t), freeAddr(t)
	base := lb.Backend{Name: "svc", Listen: listen, Health: "/isActive", Mode: lb.ModeAll, Servers: []lb.Server{a.server(true), b.server(true)}}
	drv := startManaged(t, fastChecks, lb.Desired{Backends: []lb.Backend{base}})

	var ok, failed, conns, reused atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
				if info.Reused {
					reused.Add(1)
				} else {
					conns.Add(1)
				}
			}}
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A POST with a body is not replayable: the client does not
				// hide a connection the proxy closed under it.
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "POST", "http://"+listen+"/", strings.NewReader("x"))
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
				// Think time, so that some connections sit idle when a
				// reload comes: an old worker closing those races the
				// client's next request (idle-close-on-response is what
				// prevents it).
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	waitFor(t, 5*time.Second, "clients running", func() error {
		if ok.Load() < 10 {
			return fmt.Errorf("%d requests", ok.Load())
		}
		return nil
	})

	before := showProc(t, drv)
	for i := range 10 {
		d := lb.Desired{Backends: []lb.Backend{base}}
		if i%2 == 0 {
			d.Backends = append(d.Backends, lb.Backend{Name: "extra", Listen: extra, Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{c.server(true)}})
		}
		okBefore := ok.Load()
		applied := apply(t, drv, d)
		if !applied.Reloaded {
			t.Fatalf("change %d: did not reload", i)
		}
		t.Logf("reload %d took %s", i, applied.Took)
		if i%2 == 0 {
			if err := allReach(extra, "c", 3); err != nil {
				t.Fatalf("change %d: new backend: %v", i, err)
			}
		} else if _, err := get(fresh, extra); err == nil {
			t.Fatalf("change %d: removed backend still answers", i)
		}
		// The clients keep going across each reload.
		waitFor(t, 5*time.Second, "requests after reload", func() error {
			if ok.Load() < okBefore+5 {
				return fmt.Errorf("%d requests since", ok.Load()-okBefore)
			}
			return nil
		})
	}
	close(stop)
	wg.Wait()
	if after := showProc(t, drv); after.reloads != before.reloads+10 {
		t.Errorf("reloads: got %d, want %d", after.reloads, before.reloads+10)
	}
	t.Logf("%d requests, %d failed, %d connections opened, %d reused", ok.Load(), failed.Load(), conns.Load(), reused.Load())
	if n := failed.Load(); n != 0 {
		t.Errorf("keep-alive clients saw %d errors, the first: %v", n, firstErr.Load())
	}
	if reused.Load() == 0 || conns.Load() < 3 {
		t.Errorf("got %d reused and %d new connections; want keep-alive, and clients moved to new workers", reused.Load(), conns.Load())
	}
}

// TestRejectedConfiguration: what haproxy -c refuses changes neither the
// file nor the proxy's configuration; a reload the master fails is undone.
// Neither holds up a change of active among the servers the proxy has.
func TestRejectedConfiguration(t *testing.T) {
	needHAProxy(t)
	a, b := newUpstream(t, "a", true), newUpstream(t, "b", false)
	listen := freeAddr(t)
	desired := func(active *upstream, bad string) lb.Desired {
		d := lb.Desired{Backends: []lb.Backend{{
			Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeActive,
			Servers: []lb.Server{a.server(active == a), b.server(active == b)},
		}}}
		if bad != "" {
			d.Backends = append(d.Backends, lb.Backend{Name: "bad", Listen: bad, Mode: lb.ModeAll, Servers: []lb.Server{a.server(true)}})
		}
		return d
	}
	drv := startManaged(t, slowChecks, desired(a, ""))
	cfgBefore, err := os.ReadFile(drv.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	before := showProc(t, drv)
	backends := func() []string {
		t.Helper()
		actual, err := drv.Actual(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, b := range actual.Backends {
			names = append(names, b.Name)
		}
		return names
	}

	_, err = drv.Apply(context.Background(), desired(b, "300.0.0.1:80"))
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "invalid address") || !strings.Contains(err.Error(), "300.0.0.1") {
		t.Fatalf("got %v, want ErrRejected quoting haproxy's invalid address", err)
	}
	t.Logf("rejected: %v", err)
	if cfg, _ := os.ReadFile(drv.ConfigPath()); !bytes.Equal(cfg, cfgBefore) {
		t.Error("the configuration file changed")
	}
	if after := showProc(t, drv); after.reloads != before.reloads {
		t.Errorf("reloads: got %d, want %d", after.reloads, before.reloads)
	}
	if got := backends(); !reflect.DeepEqual(got, []string{"tandem"}) {
		t.Errorf("backends: got %v, want [tandem]", got)
	}
	if err := allReach(listen, "b", 5); err != nil {
		t.Fatalf("the change of active that came with the rejected backend: %v", err)
	}

	// haproxy -c does not bind: an address no interface has passes it and
	// fails the reload. The old worker keeps serving, the file is put back.
	_, err = drv.Apply(context.Background(), desired(a, "192.0.2.1:80"))
	if !errors.Is(err, ErrReload) || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("got %v, want ErrReload quoting haproxy's bind failure", err)
	}
	t.Logf("failed reload: %v", err)
	if cfg, _ := os.ReadFile(drv.ConfigPath()); !bytes.Equal(cfg, cfgBefore) {
		t.Error("the configuration file was not put back")
	}
	if got := backends(); !reflect.DeepEqual(got, []string{"tandem"}) {
		t.Errorf("backends: got %v, want [tandem]", got)
	}
	if err := allReach(listen, "a", 5); err != nil {
		t.Fatal(err)
	}
	apply(t, drv, desired(b, ""))
	if err := allReach(listen, "b", 5); err != nil {
		t.Fatal(err)
	}
}

func TestActualMatchesDesired(t *testing.T) {
	needHAProxy(t)
	a, b := newUpstream(t, "a", true), newUpstream(t, "b", false)
	c, d := newUpstream(t, "c", true), newUpstream(t, "d", true)
	desired := lb.Desired{Rev: 42, Backends: []lb.Backend{
		{Name: "tandem", Listen: freeAddr(t), Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{a.server(true), b.server(false)}},
		// A TCP check: d is down by maintenance.
		{Name: "svc", Listen: freeAddr(t), Mode: lb.ModeAll, Servers: []lb.Server{d.server(false), c.server(true)}},
	}}
	drv := startManaged(t, fastChecks, desired)
	want := normalized(desired)
	check := func(when string) {
		t.Helper()
		got, err := drv.Actual(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: got %+v, want %+v", when, got, want)
		}
	}
	check("after start")
	if err := allReach(desired.Backends[1].Listen, "c", 5); err != nil {
		t.Fatal(err)
	}

	// Flip both, and add a backend (a reload).
	a.active.Store(false)
	b.active.Store(true)
	desired.Rev = 43
	desired.Backends[0].Servers = []lb.Server{a.server(false), b.server(true)}
	desired.Backends[1].Servers = []lb.Server{c.server(false), d.server(true)}
	desired.Backends = append(desired.Backends, lb.Backend{Name: "more", Listen: freeAddr(t), Mode: lb.ModeAll, Servers: []lb.Server{c.server(true)}})
	if applied := apply(t, drv, desired); !applied.Reloaded {
		t.Fatal("adding a backend did not reload")
	}
	want = normalized(desired)
	check("after reload")
	if err := allReach(desired.Backends[1].Listen, "d", 5); err != nil {
		t.Fatal(err)
	}
}

// TestSafetyNet: the proxy's own checks route correctly without tandem
// lb, and correct a stale forced state.
func TestSafetyNet(t *testing.T) {
	needHAProxy(t)
	a, b := newUpstream(t, "a", true), newUpstream(t, "b", false)
	listen := freeAddr(t)
	desired := func(aUp, bUp bool) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{
			Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeActive,
			Servers: []lb.Server{a.server(aUp), b.server(bUp)},
		}}}
	}
	drv := startManaged(t, fastChecks, desired(true, false))
	within := time.Duration(fastChecks.Fall+1) * fastChecks.Inter

	// A standby forced up fails its checks and falls.
	apply(t, drv, desired(true, true))
	start := time.Now()
	waitFor(t, 5*time.Second, "standby forced up falls", func() error { return allReach(listen, "a", 10) })
	t.Logf("a standby forced up stopped getting traffic after %s ((fall+1)*inter = %s)", time.Since(start), within)

	// tandem lb dies: its connection goes and nothing drives the proxy.
	// Then b becomes the active.
	drv.mu.Lock()
	drv.adm.close()
	drv.mu.Unlock()
	a.active.Store(false)
	b.active.Store(true)
	start = time.Now()
	waitFor(t, 5*time.Second, "checks move traffic to b", func() error { return allReach(listen, "b", 10) })
	t.Logf("the proxy's checks moved traffic to the new active after %s ((fall+1)*inter = %s)", time.Since(start), within)
}

func TestSticky(t *testing.T) {
	needHAProxy(t)
	a, b := newUpstream(t, "a", true), newUpstream(t, "b", true)
	listen := freeAddr(t)
	desired := func(servers ...lb.Server) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{Name: "svc", Listen: listen, Health: "/isActive", Mode: lb.ModeAll, Sticky: true, Servers: servers}}}
	}
	drv := startManaged(t, slowChecks, desired(a.server(true), b.server(true)))
	byName := map[string]*upstream{"a": a, "b": b}

	// stickyGet sends cookie (if any) and returns who answered and the
	// cookie the proxy set.
	stickyGet := func(cookie string) (string, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+listen+"/", nil)
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: cookieName, Value: cookie})
		}
		resp, err := fresh.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		set := ""
		for _, c := range resp.Cookies() {
			if c.Name == cookieName {
				set = c.Value
			}
		}
		return string(body), set
	}
	first, cookie := stickyGet("")
	if cookie != first {
		t.Fatalf("first request: answered by %q, cookie %q; want the cookie to name the server", first, cookie)
	}
	for i := range 10 {
		if got, _ := stickyGet(cookie); got != first {
			t.Fatalf("request %d with cookie %s: got %q, want %q", i, cookie, got, first)
		}
	}
	other := map[string]string{"a": "b", "b": "a"}[first]

	// Its server goes down: the client moves and is told so.
	byName[first].active.Store(false)
	apply(t, drv, desired(byName[first].server(false), byName[other].server(true)))
	got, set := stickyGet(cookie)
	if got != other || set != other {
		t.Fatalf("server %s down: got %q with cookie %q, want %q", first, got, set, other)
	}
	cookie = other

	// Both up again: the client stays where it is.
	byName[first].active.Store(true)
	apply(t, drv, desired(a.server(true), b.server(true)))
	for range 5 {
		if got, _ := stickyGet(cookie); got != other {
			t.Fatalf("with cookie %s: got %q", cookie, got)
		}
	}

	// Its server is removed (at run time): the client moves.
	if applied := apply(t, drv, desired(byName[first].server(true))); applied.Reloaded {
		t.Error("removing a server from a sticky backend reloaded")
	}
	if got, set := stickyGet(cookie); got != first || set != first {
		t.Fatalf("server %s removed: got %q with cookie %q, want %q", other, got, set, first)
	}
	// Adding one to a sticky backend needs a reload (2.6 dynamic servers
	// take no cookie); its cookie then works.
	if applied := apply(t, drv, desired(a.server(true), b.server(true))); !applied.Reloaded {
		t.Error("adding a server to a sticky backend did not reload")
	}
	for range 5 {
		if got, _ := stickyGet(other); got != other {
			t.Fatalf("with cookie %s after the reload: got %q", other, got)
		}
	}
}

// TestExternal attaches to a proxy started the way systemd starts it.
func TestExternal(t *testing.T) {
	needHAProxy(t)
	a, b := newUpstream(t, "a", true), newUpstream(t, "b", false)
	listen := freeAddr(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "etc", "haproxy.cfg")
	admin, master := filepath.Join(dir, "admin.sock"), filepath.Join(dir, "master.sock")
	if err := os.MkdirAll(filepath.Dir(cfgPath), 0o755); err != nil {
		t.Fatal(err)
	}
	// What an operator installs before tandem lb first runs.
	bootstrap := "global\n    stats socket " + admin + " mode 600 level admin expose-fd listeners\n" +
		"defaults\n    mode http\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n"
	if err := os.WriteFile(cfgPath, []byte(bootstrap), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("haproxy", "-Ws", "-S", master, "-f", cfgPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	waitFor(t, 10*time.Second, "external proxy up", func() error {
		_, err := masterCmd(context.Background(), master, time.Second, "show proc")
		return err
	})

	newDriver := func() *Driver {
		drv, err := New(Config{Dir: filepath.Join(dir, "lb"), Checks: slowChecks, ExternalConfigPath: cfgPath, AdminSocket: admin, MasterSocket: master, Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { drv.Close() })
		return drv
	}
	desired := func(active *upstream) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{
			Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeActive,
			Servers: []lb.Server{a.server(active == a), b.server(active == b)},
		}}}
	}

	// Unreachable sockets are refused before anything changes.
	wrong, err := New(Config{Dir: filepath.Join(dir, "lb"), ExternalConfigPath: cfgPath, AdminSocket: filepath.Join(dir, "nothing.sock"), MasterSocket: master})
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.Start(context.Background(), desired(a)); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("start on a missing admin socket: got %v, want ErrUnreachable", err)
	}

	drv := newDriver()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := drv.Start(ctx, desired(a)); err != nil {
		t.Fatal(err)
	}
	if err := allReach(listen, "a", 5); err != nil {
		t.Fatal(err)
	}
	b.active.Store(true)
	a.active.Store(false)
	if applied := apply(t, drv, desired(b)); applied.Reloaded {
		t.Error("a change of active reloaded")
	}
	if err := allReach(listen, "b", 10); err != nil {
		t.Fatal(err)
	}
	// Someone else reloads it (systemctl reload): the driver's connection
	// is to the old worker now, and the next change must reach the new one.
	before, err := parseProcsOf(master)
	if err != nil {
		t.Fatal(err)
	}
	masterCmd(context.Background(), master, time.Second, "reload")
	waitFor(t, 10*time.Second, "external reload", func() error {
		p, err := parseProcsOf(master)
		if err != nil || p.reloads == before.reloads || len(p.workers) != 1 || p.workers[0] == before.workers[0] {
			return fmt.Errorf("show proc: %+v, %v", p, err)
		}
		return nil
	})
	a.active.Store(true)
	b.active.Store(false)
	if applied := apply(t, drv, desired(a)); applied.Reloaded {
		t.Error("a change of active reloaded")
	}
	if err := allReach(listen, "a", 10); err != nil {
		t.Fatalf("after an external reload: %v", err)
	}
	if drv.proc.Load() != nil || drv.Done() != nil {
		t.Error("the driver started a proxy in external mode")
	}
	if err := drv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := allReach(listen, "a", 3); err != nil {
		t.Fatalf("after Close the external proxy must still serve: %v", err)
	}

	// A new tandem lb attaches to a proxy already current: no reload.
	before, err = parseProcsOf(master)
	if err != nil {
		t.Fatal(err)
	}
	again := newDriver()
	if err := again.Start(ctx, desired(a)); err != nil {
		t.Fatal(err)
	}
	if after, err := parseProcsOf(master); err != nil || after.reloads != before.reloads {
		t.Errorf("attach to a current proxy: got reloads %d (%v), want %d", after.reloads, err, before.reloads)
	}
	again.Close()

	// Without a master socket: a reload command, as systemd's ExecReload.
	byCommand, err := New(Config{Dir: filepath.Join(dir, "lb"), Checks: slowChecks, ExternalConfigPath: cfgPath, AdminSocket: admin,
		ReloadCommand: []string{"kill", "-USR2", strconv.Itoa(cmd.Process.Pid)}, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer byCommand.Close()
	if err := byCommand.Start(ctx, desired(a)); err != nil {
		t.Fatal(err)
	}
	extra := freeAddr(t)
	more := desired(a)
	more.Backends = append(more.Backends, lb.Backend{Name: "more", Listen: extra, Mode: lb.ModeAll, Servers: []lb.Server{b.server(true)}})
	if applied := apply(t, byCommand, more); !applied.Reloaded {
		t.Error("adding a backend did not reload")
	}
	if err := allReach(extra, "b", 3); err != nil {
		t.Fatalf("reloaded by command: %v", err)
	}
	if n := ourHAProxies(t); n != 1 {
		t.Errorf("haproxy masters started by this process: got %d, want 1 (the test's)", n)
	}
}

func parseProcsOf(master string) (procs, error) {
	out, err := masterCmd(context.Background(), master, time.Second, "show proc")
	if err != nil {
		return procs{}, err
	}
	return parseProcs(out)
}

// ourHAProxies counts running haproxy processes whose parent is this one.
func ourHAProxies(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil || gone(pid) {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < 0 || s[open+1:close] != "haproxy" {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			n++
		}
	}
	return n
}

// TestConcurrentApply: Apply and Actual from many goroutines run one at
// a time and all succeed.
func TestConcurrentApply(t *testing.T) {
	needHAProxy(t)
	a, b := newUpstream(t, "a", true), newUpstream(t, "b", true)
	listen, extra := freeAddr(t), freeAddr(t)
	desired := func(active *upstream, withExtra bool) lb.Desired {
		d := lb.Desired{Backends: []lb.Backend{{
			Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeActive,
			Servers: []lb.Server{a.server(active == a), b.server(active == b)},
		}}}
		if withExtra {
			d.Backends = append(d.Backends, lb.Backend{Name: "extra", Listen: extra, Mode: lb.ModeAll, Servers: []lb.Server{a.server(true)}})
		}
		return d
	}
	drv := startManaged(t, slowChecks, desired(a, false))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := drv.Apply(ctx, desired(map[bool]*upstream{true: a, false: b}[i%2 == 0], i%3 == 0))
			errs <- err
		}()
		go func() {
			defer wg.Done()
			_, err := drv.Actual(context.Background())
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	final := desired(b, true)
	apply(t, drv, final)
	if err := allReach(listen, "b", 10); err != nil {
		t.Fatal(err)
	}
	if err := allReach(extra, "a", 3); err != nil {
		t.Fatal(err)
	}
	got, err := drv.Actual(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := normalized(final); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// TestRemoveServerWithRetryingStreams: streams waiting to retry a refused
// connection (HAProxy counts them neither as sessions nor as queued) hold
// the server they will retry. HAProxy 2.6.12 lets `del server` free it
// under them, and its worker then crashes (haproxy#2298, fixed upstream
// only in later releases). A removed server must outlive such streams.
func TestRemoveServerWithRetryingStreams(t *testing.T) {
	needHAProxy(t)
	// glibc fills freed memory with this byte: a use after free crashes at
	// once instead of when the memory happens to be reused.
	t.Setenv("MALLOC_PERTURB_", "85")
	live := newUpstream(t, "live", true)
	listen, dead := freeAddr(t), freeAddr(t) // nothing listens on dead
	desired := func(servers ...lb.Server) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{Name: "svc", Listen: listen, Health: "/isActive", Mode: lb.ModeAll, Servers: servers}}}
	}
	// Longer than a turn-around, shorter than the default for a quick test.
	const grace = 3 * time.Second
	drv := startManaged(t, slowChecks, desired(lb.Server{Name: "dead", Addr: dead, Up: true}),
		func(c *Config) { c.DeleteGrace = grace })
	before := showProc(t, drv)

	// Requests to dead are refused and wait a second before their retry.
	results := make(chan error, 20)
	for range cap(results) {
		go func() {
			_, err := get(fresh, listen)
			results <- err
		}()
	}
	waitFor(t, 5*time.Second, "refused connections", func() error {
		st, err := drv.adm.run(context.Background(), "show stat")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(st[0], "\n") {
			if f := strings.Split(l, ","); len(f) > 15 && f[0] == "svc" && f[1] == "dead" && f[15] != "" && f[15] != "0" {
				return nil
			}
		}
		return fmt.Errorf("no retry on dead yet")
	})
	apply(t, drv, desired(live.server(true)))
	for range cap(results) {
		<-results // whatever they got; the proxy must still be there
	}
	if err := allReach(listen, "live", 5); err != nil {
		t.Fatalf("after removing a server with streams waiting to retry it: %v", err)
	}
	waitFor(t, 3*grace, "dead deleted", func() error {
		names, err := proxyServers(drv)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(names, []string{"live"}) {
			return fmt.Errorf("servers %v, want live alone", names)
		}
		return nil
	})
	if err := allReach(listen, "live", 5); err != nil {
		t.Fatalf("after deleting the removed server: %v", err)
	}
	after := showProc(t, drv)
	if len(after.workers) != 1 || len(before.workers) != 1 || after.workers[0] != before.workers[0] {
		t.Fatalf("workers before %+v, after %+v: want the same one (did it crash?)", before.workers, after.workers)
	}
}

// TestCloseDrains: Close stops a managed proxy gracefully: it takes no new
// connection at once, and the request in flight completes.
func TestCloseDrains(t *testing.T) {
	needHAProxy(t)
	slow := newUpstream(t, "slow", true)
	listen := freeAddr(t)
	d := lb.Desired{Backends: []lb.Backend{{Name: "svc", Listen: listen, Health: "/isActive", Mode: lb.ModeAll, Servers: []lb.Server{slow.server(true)}}}}
	drv := startManaged(t, slowChecks, d)
	done := make(chan error, 1)
	go func() {
		resp, err := fresh.Get("http://" + listen + "/slow")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != "slow" {
				err = fmt.Errorf("status %d, body %q", resp.StatusCode, body)
			}
		}
		done <- err
	}()
	select {
	case <-slow.entered:
	case err := <-done:
		t.Fatalf("the slow request: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the slow request never arrived")
	}
	closed := make(chan error, 1)
	go func() { closed <- drv.Close() }()
	// New connections are refused once the listener is closed, while the
	// request in flight is still running.
	waitFor(t, 5*time.Second, "listener closed", func() error {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("%s still accepts connections", listen)
		}
		return nil
	})
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the request in flight ended", err)
	default:
	}
	close(slow.release)
	if err := <-done; err != nil {
		t.Errorf("the request in flight during Close: %v", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
}
