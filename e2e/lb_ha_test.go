package e2e

// The load balancer itself highly available (docs/LB.md): two nodes run
// `tandem supervise --service lb --vip ...` around `tandem lb`, which runs
// a real HAProxy in front of a real tandem server and of a service that
// `tandem supervise` runs on a third node. A client in the root namespace
// sends requests to the VIP all along; the owner of lb is killed with
// SIGKILL, then the service is moved back by `tandem supervise move`.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/netns"
	"github.com/tandemhq/tandem/internal/supervise"
	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// Where the proxy takes traffic on an lb node: every address, so the VIP
// whichever node holds it, and 127.0.0.1 for the service's health checks.
const (
	lbHAAPIPort = 9070 // tandem's own API
	lbHAWebPort = 9080 // the supervised service "web"
	// lbHAStatus is tandem lb's own --http (its default), inside each lb
	// node's network namespace.
	lbHAStatus = "127.0.0.1:7680"
)

// TestLBHA follows the recipe of docs/LB.md: "The load balancer itself
// highly available". Nodes lb1 and lb2 offer the service lb; b1 runs the
// ledger service web; a tandem server (rm1) runs in the root namespace on
// the control network. After kill -9 of the lb owner's supervisor the other
// lb node fences it (the fence hook kills its command tree and takes its
// VIP away), takes the VIP and starts tandem lb and HAProxy: the client's
// requests through VIP:PORT answer 200 again from rm1 and from web on b1,
// and only the new owner holds the VIP and runs the proxy. A clean move
// back does the same without fencing.
func TestLBHA(t *testing.T) {
	requireHAProxy(t)
	c := newSupCluster(t, "lb1", "lb2", "b1")
	vip := c.net.VIP(200)
	lbNodes := []string{"lb1", "lb2"}

	server := c.startTandemServer("rm1")
	c.start("b1", c.ledgerService("web")...)
	c.waitHealthy("web", failoverWithin)
	args := c.lbHAService(vip)
	for _, n := range lbNodes {
		c.start(n, args...)
	}
	stopWatch := c.watchRunning("lb")
	st := c.waitHealthy("lb", failoverWithin)
	owner := st.Node
	t.Logf("lb healthy on %s (epoch %d); the proxy fronts rm1 at %s and web on b1", owner, st.Epoch, server)

	probe := startLBProbe(t, []lbTarget{
		{name: "web", url: fmt.Sprintf("http://%s/", netip.AddrPortFrom(vip.Addr(), lbHAWebPort)), check: answeredByLedger("web", "b1")},
		{name: "api", url: fmt.Sprintf("http://%s/v1/ha/state", netip.AddrPortFrom(vip.Addr(), lbHAAPIPort)), check: answeredByActive("rm1")},
	})
	for _, target := range probe.targets() {
		probe.waitOK(t, target, time.Now(), failoverWithin)
	}

	t.Run("kill -9 of the lb owner", func(t *testing.T) {
		killedAt := time.Now()
		c.kill(owner)
		st2 := c.waitHealthy("lb", failoverWithin, owner)
		if !slices.Contains(lbNodes, st2.Node) {
			t.Fatalf("lb taken over by %s, want one of %v", st2.Node, lbNodes)
		}
		// The old node holds nothing any more: whatever answers through the
		// VIP from here on is the new owner's proxy.
		checkedAt := time.Now()
		if got := c.vipHolders(vip); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("VIP held by %v, want [%s]", got, st2.Node)
		}
		if got := c.runningOn("lb"); !slices.Equal(got, []string{st2.Node}) {
			t.Errorf("tandem lb and HAProxy run on %v, want [%s]", got, st2.Node)
		}
		probe.checkBack(t, checkedAt, killedAt, fmt.Sprintf("kill -9 of the supervisor on %s, lb taken over by %s", owner, st2.Node))

		ev := c.waitEvent("lb", st2.Epoch)
		t.Logf("failover record: %s", describeEvent(ev))
		if ev.Cause != tandem.CauseCrashed || ev.PrevNode != owner || ev.Fenced != owner {
			t.Errorf("failover record: cause %s, prev %s, fenced %q; want %s, %s, %s", ev.Cause, ev.PrevNode, ev.Fenced,
				tandem.CauseCrashed, owner, owner)
		}
		checkPhases(t, ev, "detection", "election", "fencing", "start", "healthy", "vip", "total")
		if f := c.fenced(); len(f) != 1 || !strings.Contains(f[0], st2.Node+" fences "+owner+" (lb,") {
			t.Errorf("fence hook calls: %q, want one by %s of %s for lb", f, st2.Node, owner)
		}
		owner = st2.Node
	})
	if t.Failed() {
		return
	}

	t.Run("move back", func(t *testing.T) {
		// The killed node's supervisor comes back (as its service manager
		// would restart it): a standby, no fail-back.
		back := lbNodes[0]
		if back == owner {
			back = lbNodes[1]
		}
		c.start(back, args...)
		if s, err := c.status("lb"); err != nil || s.Node != owner {
			t.Fatalf("after %s rejoined, lb is on %q (%v), want it left on %s", back, s.Node, err, owner)
		}
		fencedBefore := len(c.fenced())
		movedAt := time.Now()
		if out := c.run("move", "lb", back, "--wait", "30s"); !strings.Contains(out, "lb is healthy on "+back) {
			t.Errorf("move: %q", out)
		}
		checkedAt := time.Now()
		if got := c.vipHolders(vip); !slices.Equal(got, []string{back}) {
			t.Errorf("VIP held by %v, want [%s]", got, back)
		}
		if got := c.runningOn("lb"); !slices.Equal(got, []string{back}) {
			t.Errorf("tandem lb and HAProxy run on %v, want [%s]", got, back)
		}
		probe.checkBack(t, checkedAt, movedAt, fmt.Sprintf("tandem supervise move lb from %s to %s", owner, back))
		// A clean move stops tandem lb alone (--kill-mode mixed), which
		// soft-stops HAProxy: a connection is refused or waits for the VIP,
		// but none that was accepted is cut.
		for _, target := range probe.targets() {
			for _, r := range probe.since(target, movedAt) {
				// A reset while connecting is a connection the closing
				// listener never accepted, as good as refused.
				var op *net.OpError
				if r.err == nil || errors.As(r.err, &op) && op.Op == "dial" {
					continue
				}
				if k := errKind(r.err); k != "refused" && k != "timed out" {
					t.Errorf("move: a request for %s through the VIP was cut (%s): %v", target, k, r.err)
				}
			}
		}

		moved, err := c.status("lb")
		if err != nil {
			t.Fatal(err)
		}
		ev := c.waitEvent("lb", moved.Epoch)
		t.Logf("move record: %s", describeEvent(ev))
		if ev.Cause != supervise.CauseMove || ev.PrevNode != owner || ev.Node != back || ev.Fenced != "" {
			t.Errorf("move record: %s; want cause %s from %s to %s, nobody fenced", describeEvent(ev), supervise.CauseMove, owner, back)
		}
		if f := c.fenced(); len(f) != fencedBefore {
			t.Errorf("fence hook ran on a clean move: %q", f[fencedBefore:])
		}
	})

	probe.stop()
	if bad := stopWatch(); len(bad) > 0 {
		t.Errorf("two nodes ran tandem lb at once:\n%s", strings.Join(bad, "\n"))
	}
	// The backends never moved: what changed hands was the load balancer.
	if s, err := c.status("web"); err != nil || s.Node != "b1" || s.Restarts != 0 {
		t.Errorf("web: on %q with %d restarts (%v), want on b1, never restarted", s.Node, s.Restarts, err)
	}
}

// requireHAProxy skips the test where haproxy is not in PATH (tandem lb
// looks for it there), unless CI or netns.RequireEnv is set, which makes
// that a failure.
func requireHAProxy(t *testing.T) {
	t.Helper()
	_, err := exec.LookPath("haproxy")
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" || os.Getenv(netns.RequireEnv) != "" {
		t.Fatalf("needs haproxy: %v (and CI or TANDEM_REQUIRE_NETNS is set, so this is not skipped)", err)
	}
	t.Skipf("needs haproxy (Debian package haproxy): %v", err)
}

// startTandemServer runs `tandem server` in the root namespace on the
// control network, where every node reaches it, against the cluster's etcd,
// and waits until it is active. It returns its address.
func (c *supCluster) startTandemServer(id string) string {
	t := c.t
	t.Helper()
	cg := filepath.Join(c.cgRoot, "server-"+id)
	if _, err := proc.NewCgroup(cg); err != nil {
		t.Fatal(err)
	}
	addr := freeAddrOn(t, c.net.RootControlIP())
	cmd := exec.Command(binary, "server", "--id", id, "--listen", addr, "--advertise-url", "http://"+addr,
		"--etcd-endpoints", c.etcd, "--data-dir", filepath.Join(c.dir, id), "--log-level", "debug")
	p := c.spawn(id, cmd, cg, filepath.Join(c.dir, id+".log"), nil)
	check := answeredByActive(id)
	hc := &http.Client{Timeout: 2 * time.Second}
	eventually(t, id+" active", 30*time.Second, func() error {
		select {
		case <-p.done:
			b, _ := os.ReadFile(filepath.Join(c.dir, id+".log"))
			t.Fatalf("tandem server %s exited: %s", id, tail(string(b), 20))
		default:
		}
		resp, err := hc.Get("http://" + addr + "/v1/ha/state")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		return check(resp.StatusCode, body)
	})
	return addr
}

// lbHAService returns the supervise flags and command of the service lb:
// the same on both lb nodes (the definition in etcd must agree). Its
// checks are tandem lb's /healthz and a connection to the proxy's web
// frontend on 127.0.0.1, which answers because the proxy binds every
// address. Both nodes share one --dir here, as they share a file system;
// only one ever runs tandem lb (watchRunning checks it), and a proxy that
// still answered on that dir's admin socket would make tandem lb refuse
// to start. On real nodes each has its own disk.
func (c *supCluster) lbHAService(vip netip.Prefix) []string {
	return []string{"--service", "lb",
		"--health", "http:http://" + lbHAStatus + "/healthz",
		"--health", "tcp:127.0.0.1:" + strconv.Itoa(lbHAWebPort),
		"--health-interval", "100ms", "--health-rise", "1", "--start-timeout", "15s", "--stop-timeout", "5s",
		"--kill-mode", "mixed", "--vip", c.vipFlag(vip), "--fence", "1:" + c.fence,
		"--", binary, "lb", "--proxy", "haproxy", "--stop-timeout", "4s",
		"--listen", ":" + strconv.Itoa(lbHAAPIPort),
		"--service", fmt.Sprintf("web=:%d,port=%d,health=/health", lbHAWebPort, ledgerPort),
		"--etcd-endpoints", c.etcd, "--dir", filepath.Join(c.dir, "lb"),
		"--check-inter", "200ms", "--check-fall", "2", "--check-rise", "1"}
}

// answeredByLedger accepts the answer of the ledger service svc on node.
func answeredByLedger(svc, node string) func(int, []byte) error {
	return func(code int, body []byte) error {
		if code != http.StatusOK {
			return &badAnswer{code, fmt.Sprintf("%.200s", body)}
		}
		if f := strings.Fields(string(body)); len(f) < 2 || f[0] != svc || f[1] != node {
			return &badAnswer{code, fmt.Sprintf("answered %q, want %s on %s", body, svc, node)}
		}
		return nil
	}
}

// answeredByActive accepts GET /v1/ha/state answered by the active server id.
func answeredByActive(id string) func(int, []byte) error {
	return func(code int, body []byte) error {
		if code != http.StatusOK {
			return &badAnswer{code, fmt.Sprintf("%.200s", body)}
		}
		var st tandem.ServerStatus
		if err := json.Unmarshal(body, &st); err != nil {
			return &badAnswer{code, fmt.Sprintf("answered %.200q: %v", body, err)}
		}
		if st.ID != id || st.State != tandem.StateActive {
			return &badAnswer{code, fmt.Sprintf("answered by %s, %s; want %s, active", st.ID, st.State, id)}
		}
		return nil
	}
}

// badAnswer is an answer that is not the backend's good one.
type badAnswer struct {
	code int
	msg  string
}

func (e *badAnswer) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.msg) }

// lbTarget is one URL the probe requests, and what a good answer is.
type lbTarget struct {
	name, url string
	check     func(code int, body []byte) error
}

// lbResult is one request of the probe.
type lbResult struct {
	target     string
	start, end time.Time
	err        error // nil: a good answer
}

// lbProbe is a client of the VIP: one goroutine per target sends a request,
// on a new connection each time (a client arriving during a takeover), waits
// for its answer, pauses 20ms and sends the next, until stop.
type lbProbe struct {
	ts   []lbTarget
	stop func()

	mu      sync.Mutex
	results []lbResult
}

func startLBProbe(t *testing.T, targets []lbTarget) *lbProbe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &lbProbe{ts: targets}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		// A SYN to a node that no longer holds the VIP is dropped: give up
		// on it soon and try again, so that the first answer after a
		// takeover comes soon after the takeover.
		DialContext: (&net.Dialer{Timeout: 250 * time.Millisecond}).DialContext,
	}}
	var wg sync.WaitGroup
	for _, tg := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				r := lbResult{target: tg.name, start: time.Now()}
				r.err = lbGet(ctx, hc, tg)
				r.end = time.Now()
				if ctx.Err() != nil {
					return
				}
				p.mu.Lock()
				p.results = append(p.results, r)
				p.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
	}
	var once sync.Once
	p.stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(p.stop)
	return p
}

func lbGet(ctx context.Context, hc *http.Client, tg lbTarget) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tg.url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return tg.check(resp.StatusCode, body)
}

func (p *lbProbe) targets() []string {
	var names []string
	for _, tg := range p.ts {
		names = append(names, tg.name)
	}
	return names
}

// since returns target's requests started at or after at, in order.
func (p *lbProbe) since(target string, at time.Time) []lbResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []lbResult
	for _, r := range p.results {
		if r.target == target && !r.start.Before(at) {
			out = append(out, r)
		}
	}
	return out
}

// waitOK waits until a request to target started at or after at got a
// good answer, and returns that request.
func (p *lbProbe) waitOK(t *testing.T, target string, at time.Time, within time.Duration) lbResult {
	t.Helper()
	var ok lbResult
	eventually(t, fmt.Sprintf("a good answer through the VIP for %s", target), within, func() error {
		rs := p.since(target, at)
		for _, r := range rs {
			if r.err == nil {
				ok = r
				return nil
			}
		}
		if len(rs) == 0 {
			return errors.New("no request yet")
		}
		return rs[len(rs)-1].err
	})
	return ok
}

// checkBack checks that every target answers well through the VIP for
// requests started after checkedAt (when the new owner alone held the VIP
// and ran the proxy), and keeps answering well for ten more requests. It
// logs, per target, what a client saw from the event at on: the gap from
// the event to the first good answer after the first failure (the service
// answering again), and how many requests failed.
func (p *lbProbe) checkBack(t *testing.T, checkedAt, at time.Time, what string) {
	t.Helper()
	for _, target := range p.targets() {
		first := p.waitOK(t, target, checkedAt, failoverWithin)
		var after []lbResult
		eventually(t, "ten more requests through the VIP for "+target, failoverWithin, func() error {
			if after = p.since(target, first.end); len(after) < 10 {
				return fmt.Errorf("%d so far", len(after))
			}
			return nil
		})
		for _, r := range after {
			if r.err != nil {
				t.Errorf("%s: a request for %s through the VIP failed after it had answered again: %v", what, target, r.err)
			}
		}

		failed := 0
		kinds := map[string]int{}
		var backAt time.Time
		var lastErr error
		for _, r := range p.since(target, at) {
			if r.err != nil {
				failed++
				kinds[errKind(r.err)]++
				lastErr = r.err
			} else if failed > 0 || backAt.IsZero() {
				backAt = r.end
				if failed > 0 {
					break
				}
			}
		}
		if failed == 0 {
			t.Logf("%s: %s through the VIP: no request failed; first good answer %s after", what, target, backAt.Sub(at).Round(time.Millisecond))
			continue
		}
		var seen []string
		for k, n := range kinds {
			seen = append(seen, fmt.Sprintf("%d %s", n, k))
		}
		slices.Sort(seen)
		t.Logf("%s: %s through the VIP answered again %s after; %d requests failed (%s), the last with: %v",
			what, target, backAt.Sub(at).Round(time.Millisecond), failed, strings.Join(seen, ", "), lastErr)
	}
}

// errKind names how a request failed, for the log: a refused connection
// (a node holds the VIP but no proxy listens there), a timeout (nobody
// answers for the VIP), a connection cut, a bad answer.
func errKind(err error) string {
	var ne net.Error
	var bad *badAnswer
	switch {
	case errors.As(err, &bad):
		return fmt.Sprintf("HTTP %d", bad.code)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	default:
		return "other"
	}
}
