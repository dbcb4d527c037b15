package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/lb"
	"github.com/tandemhq/tandem/internal/lb/nginx"
	"github.com/tandemhq/tandem/internal/local"
)

// Proxy modes RunLB compares.
const (
	LBHAProxyPush   = "haproxy-push"        // tandem lb driving HAProxy
	LBHAProxyChecks = "haproxy-checks"      // HAProxy with its own checks of /isActive alone (inter 2s fall 3 rise 2)
	LBHAProxyFast   = "haproxy-checks-fast" // the same with inter 100ms fall 2 rise 1
	LBNginxPush     = "nginx-push"          // tandem lb driving NGINX
	LBNginx307      = "nginx-307"           // NGINX round robin over every server, following 307
)

// LBModes lists the proxy modes, in the order they run.
var LBModes = []string{LBHAProxyPush, LBHAProxyChecks, LBHAProxyFast, LBNginxPush, LBNginx307}

// Events RunLB injects.
const (
	LBSwitchover = "switchover" // POST /v1/ha/failover to the active
	LBKill       = "kill"       // kill -9 of the active, restarted after
	LBStop       = "stop"       // SIGSTOP of the active past its lease, SIGCONT after the takeover
	LBAddRemove  = "add-remove" // a standby stopped and started again (push modes only)
)

// LBEvents lists the events, in the order they run.
var LBEvents = []string{LBSwitchover, LBKill, LBStop, LBAddRemove}

const (
	lbLease     = 2 * time.Second
	lbEvery     = 2 * time.Millisecond // one new-connection GET sent every lbEvery
	lbInARow    = 20                   // answers in a row by the new active that end a trial
	lbCycles    = 10                   // add-remove cycles
	lbMaxStops  = 3                    // stop trials at most (each costs a lease and more)
	lbTrialWait = 45 * time.Second
)

// LBConfig configures RunLB.
type LBConfig struct {
	Binary   string   // the tandem binary
	Modes    []string // proxy modes to measure (default LBModes)
	Events   []string // events to inject (default LBEvents)
	Trials   int      // trials of each event (stop: at most 3)
	BasePort int      // mode i uses the 1000 ports from BasePort+1000*i
	DataDir  string   // "" for a temporary directory
	Out      io.Writer
}

func (c *LBConfig) validate() error {
	if len(c.Modes) == 0 {
		c.Modes = LBModes
	}
	if len(c.Events) == 0 {
		c.Events = LBEvents
	}
	for _, m := range c.Modes {
		if !contains(LBModes, m) {
			return fmt.Errorf("unknown mode %q: use %s", m, strings.Join(LBModes, ", "))
		}
	}
	for _, e := range c.Events {
		if !contains(LBEvents, e) {
			return fmt.Errorf("unknown event %q: use %s", e, strings.Join(LBEvents, ", "))
		}
	}
	if c.Trials < 1 {
		return errors.New("trials must be at least 1")
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// LBTrial is one event as the client behind the proxy saw it. Times are
// from the change: the creation of the new owner's leader key in etcd.
type LBTrial struct {
	N    int    `json:"n"`
	From string `json:"from"`
	To   string `json:"to"`
	// ChangeAfterS is the time from the injection to the change.
	ChangeAfterS float64 `json:"change_after_s"`
	// MovedS: from the change to the first 2xx answered by the new active.
	MovedS float64 `json:"moved_s"`
	// OldLastS: from the change to the sending of the last request the old
	// active answered (negative: none was sent after the change).
	OldLastS float64 `json:"old_last_s"`
	Wrong    int     `json:"wrong"`  // 2xx answers by a non-active, from the change to the end of the trial
	Errors   int     `json:"errors"` // non-2xx answers and transport errors, in the same window
	Requests int     `json:"requests"`
	// ErrorKinds counts the errors by kind: "HTTP <status>" or the
	// transport error.
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
}

// LBEventResult is one event in one mode.
type LBEventResult struct {
	Event   string    `json:"event"`
	Trials  []LBTrial `json:"trials,omitempty"`
	MovedS  Summary   `json:"moved_s"`
	OldLast Summary   `json:"old_last_s"`
	Wrong   int       `json:"wrong"`
	Errors  int       `json:"errors"`
	// Add-remove: requests sent during the cycles and those that failed.
	Requests int `json:"requests,omitempty"`
	Failed   int `json:"failed,omitempty"`
	Cycles   int `json:"cycles,omitempty"`
}

// LBModeResult is one proxy mode.
type LBModeResult struct {
	Mode    string          `json:"mode"`
	Skipped string          `json:"skipped,omitempty"` // why the mode did not run
	Events  []LBEventResult `json:"events,omitempty"`
}

// LBResult is what RunLB measured; it is also the JSON output.
type LBResult struct {
	Trials    int            `json:"trials"`
	LeaseTTLS float64        `json:"lease_ttl_s"`
	EveryMS   float64        `json:"every_ms"`
	Modes     []LBModeResult `json:"modes"`
	StartedAt time.Time      `json:"started_at"`
}

// RunLB runs, for each proxy mode in turn, a local cluster (3 servers
// with embedded etcd, 1 agent) behind that proxy, a client sending a
// new-connection GET /v1/ha/state through it every 2 ms, and injects each
// event cfg.Trials times. A mode whose proxy binary is absent is skipped;
// an error means the run could not be made.
func RunLB(ctx context.Context, cfg LBConfig) (*LBResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir := cfg.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "tandem-bench-lb-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	res := &LBResult{Trials: cfg.Trials, LeaseTTLS: lbLease.Seconds(), EveryMS: float64(lbEvery) / float64(time.Millisecond),
		StartedAt: time.Now().UTC()}
	for _, mode := range cfg.Modes {
		i := indexOf(LBModes, mode)
		mr := LBModeResult{Mode: mode}
		if bin := lbProxyBinary(mode); bin != "" {
			if _, err := exec.LookPath(bin); err != nil {
				mr.Skipped = fmt.Sprintf("%s not found in PATH", bin)
				fmt.Fprintf(cfg.Out, "%s: skipped: %s\n", mode, mr.Skipped)
				res.Modes = append(res.Modes, mr)
				continue
			}
		}
		evs, err := runLBMode(ctx, cfg, mode, cfg.BasePort+1000*i, filepath.Join(dir, mode))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", mode, err)
		}
		mr.Events = evs
		res.Modes = append(res.Modes, mr)
	}
	res.Print(cfg.Out)
	return res, nil
}

func indexOf(list []string, v string) int {
	for i, x := range list {
		if x == v {
			return i
		}
	}
	return -1
}

func lbProxyBinary(mode string) string {
	if strings.HasPrefix(mode, "haproxy") {
		return "haproxy"
	}
	return "nginx"
}

func lbPush(mode string) bool { return mode == LBHAProxyPush || mode == LBNginxPush }

func runLBMode(ctx context.Context, cfg LBConfig, mode string, base int, dir string) ([]LBEventResult, error) {
	const cluster = "benchlb"
	lc := local.Config{Binary: cfg.Binary, Servers: 3, Agents: 1, BasePort: base, DataDir: dir, Cluster: cluster,
		LeaseTTL: lbLease, LogLevel: "info"}
	switch mode {
	case LBHAProxyPush:
		lc.LB = "haproxy"
	case LBNginxPush:
		lc.LB = "nginx"
	}
	c, err := local.New(lc)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Out, "%s: starting 3 servers and 1 agent on ports from %d, data in %s\n", mode, base, dir)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = c.Start(sctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer c.Stop(10 * time.Second)
	if _, err := c.WaitActive(ctx); err != nil {
		return nil, err
	}
	proxyURL := c.LBURL
	if !lbPush(mode) {
		listen := fmt.Sprintf("127.0.0.1:%d", base+395)
		proxyURL = "http://" + listen
		stop, err := startStaticProxy(ctx, mode, listen, c)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	admin, err := client.New(client.Config{Servers: c.URLs()})
	if err != nil {
		return nil, err
	}
	w, err := newLeaderWatch(ctx, c.EtcdEndpoints(), keys.New(cluster).Leader())
	if err != nil {
		return nil, err
	}
	defer w.stop()

	// /v1/ha/state is answered by every server for itself; nginx-307's
	// round robin needs a path that standbys redirect to the active.
	path := "/v1/ha/state"
	if mode == LBNginx307 {
		path = "/v1/jobs?limit=1"
	}
	ld := startLBLoad(proxyURL, path)
	defer ld.stop()
	// Warm up: the proxy serves the active.
	a, err := c.WaitActive(ctx)
	if err != nil {
		return nil, err
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = ld.waitInARow(wctx, time.Now(), c.Servers[a].ID)
	wcancel()
	if err != nil {
		return nil, fmt.Errorf("proxy at %s never served the active %s: %w", proxyURL, c.Servers[a].ID, err)
	}

	var out []LBEventResult
	for _, ev := range cfg.Events {
		er := LBEventResult{Event: ev}
		if ev == LBAddRemove {
			if !lbPush(mode) {
				continue
			}
			if err := lbAddRemove(ctx, c, ld, &er); err != nil {
				return nil, fmt.Errorf("add-remove: %w", err)
			}
			fmt.Fprintf(cfg.Out, "%s add-remove: %d cycles, %d requests, %d failed\n", mode, er.Cycles, er.Requests, er.Failed)
			out = append(out, er)
			continue
		}
		n := cfg.Trials
		if ev == LBStop {
			n = min(n, lbMaxStops)
		}
		var moved, old []time.Duration
		for k := 1; k <= n; k++ {
			time.Sleep(time.Second)
			tr, err := lbTrial(ctx, ev, c, admin, w, ld, k)
			if err != nil {
				return nil, fmt.Errorf("%s trial %d: %w", ev, k, err)
			}
			kinds := ""
			if len(tr.ErrorKinds) > 0 {
				kinds = fmt.Sprintf(" %v", tr.ErrorKinds)
			}
			fmt.Fprintf(cfg.Out, "%s %s %d: %s -> %s, change %.0f ms after; moved %.1f ms, old last %.1f ms, wrong %d, errors %d%s\n",
				mode, ev, k, tr.From, tr.To, tr.ChangeAfterS*1000, tr.MovedS*1000, tr.OldLastS*1000, tr.Wrong, tr.Errors, kinds)
			er.Trials = append(er.Trials, *tr)
			moved = append(moved, secsDur(tr.MovedS))
			old = append(old, secsDur(tr.OldLastS))
			er.Wrong += tr.Wrong
			er.Errors += tr.Errors
		}
		er.MovedS, er.OldLast = Summarize(moved), Summarize(old)
		out = append(out, er)
	}
	return out, nil
}

// lbTrial injects one event into the active and measures it through the proxy.
func lbTrial(ctx context.Context, ev string, c *local.Cluster, admin *client.Client, w *leaderWatch, ld *lbLoad, n int) (*LBTrial, error) {
	a, err := c.WaitActive(ctx)
	if err != nil {
		return nil, err
	}
	from := c.Servers[a].ID
	tr := &LBTrial{N: n, From: from}
	t0 := time.Now()
	switch ev {
	case LBSwitchover:
		to := c.Servers[(a+1)%len(c.Servers)].ID
		_, err = admin.Failover(ctx, c.Servers[a].URL, tandem.HandoffRequest{From: from, To: to})
	case LBKill:
		err = c.Kill(a)
	case LBStop:
		err = c.Signal(a, syscall.SIGSTOP)
	}
	if err != nil {
		return nil, fmt.Errorf("inject: %w", err)
	}
	tctx, cancel := context.WithTimeout(ctx, lbTrialWait)
	defer cancel()
	change, err := w.createdAfter(tctx, t0)
	if err != nil {
		return nil, err
	}
	na, err := c.WaitActive(tctx, a)
	if err != nil {
		return nil, err
	}
	tr.To = c.Servers[na].ID
	end, err := ld.waitInARow(tctx, change, tr.To)
	if err != nil {
		return nil, fmt.Errorf("%s never answered %d in a row through the proxy: %w", tr.To, lbInARow, err)
	}
	tr.ChangeAfterS = change.Sub(t0).Seconds()
	m := measureLB(ld.snapshot(), change, end, from, tr.To)
	tr.MovedS, tr.OldLastS, tr.Wrong, tr.Errors, tr.Requests = m.moved.Seconds(), m.oldLast.Seconds(), m.wrong, m.errors, m.requests
	tr.ErrorKinds = m.kinds
	switch ev {
	case LBKill:
		if err := restartServer(ctx, c, a); err != nil {
			return nil, err
		}
	case LBStop:
		if err := c.Signal(a, syscall.SIGCONT); err != nil {
			return nil, err
		}
		waitState(ctx, c, a, tandem.StateStandby, 15*time.Second)
	}
	return tr, nil
}

// restartServer starts server i again, trying up to three times: a server
// restarted right after a kill -9 may exit at start-up while its embedded
// etcd member's ports are still being released.
func restartServer(ctx context.Context, c *local.Cluster, i int) error {
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			time.Sleep(time.Second)
		}
		if err = c.StartServer(i); err != nil {
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err = c.WaitHealthy(hctx, i)
		cancel()
		if err == nil {
			return nil
		}
	}
	return err
}

// lbAddRemove stops and starts a standby lbCycles times and counts the
// requests that failed meanwhile.
func lbAddRemove(ctx context.Context, c *local.Cluster, ld *lbLoad, er *LBEventResult) error {
	t0 := time.Now()
	for k := 0; k < lbCycles; k++ {
		a, err := c.WaitActive(ctx)
		if err != nil {
			return err
		}
		s := (a + 1 + k%2) % len(c.Servers)
		if err := c.StopServer(s, 10*time.Second); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		if err := restartServer(ctx, c, s); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		er.Cycles++
	}
	t1 := time.Now()
	for _, r := range ld.snapshot() {
		if r.start.Before(t0) || r.start.After(t1) {
			continue
		}
		er.Requests++
		if !r.ok() {
			er.Failed++
		}
	}
	return nil
}

// lbReq is one request the load generator sent.
type lbReq struct {
	start, end time.Time
	status     int    // 0: no answer
	id         string // who answered (X-Tandem-Server)
	state      string // its HA state (X-Tandem-State)
	err        string
}

func (r lbReq) ok() bool { return r.err == "" && r.status >= 200 && r.status < 300 }

// lbLoad sends a new-connection GET of its path every lbEvery, each in
// its own goroutine, so a request stuck on a stopped server does not hold
// the next ones back, and records every one.
type lbLoad struct {
	path   string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	reqs   []lbReq
	newReq chan struct{} // closed and replaced on every recorded request
}

func startLBLoad(url, path string) *lbLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &lbLoad{path: path, cancel: cancel, newReq: make(chan struct{})}
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	hc := &http.Client{Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := dialer.DialContext(ctx, network, addr)
				if tc, ok := conn.(*net.TCPConn); ok {
					// Close with a reset: 500 connections a second would
					// otherwise leave tens of thousands in TIME_WAIT.
					_ = tc.SetLinger(0)
				}
				return conn, err
			}}}
	l.wg.Go(func() {
		tick := time.NewTicker(lbEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				l.wg.Go(func() { l.get(ctx, hc, url) })
			}
		}
	})
	return l
}

func (l *lbLoad) get(ctx context.Context, hc *http.Client, url string) {
	r := lbReq{start: time.Now()}
	req, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, url+l.path, nil)
	resp, err := hc.Do(req)
	if err != nil {
		r.err = err.Error()
	} else {
		// Every answer of a tandem server names it and its state.
		r.status = resp.StatusCode
		r.id, r.state = resp.Header.Get("X-Tandem-Server"), resp.Header.Get("X-Tandem-State")
		if _, err := io.Copy(io.Discard, resp.Body); err != nil && resp.StatusCode == http.StatusOK {
			r.err = err.Error()
		}
		resp.Body.Close()
	}
	r.end = time.Now()
	l.mu.Lock()
	l.reqs = append(l.reqs, r)
	close(l.newReq)
	l.newReq = make(chan struct{})
	l.mu.Unlock()
}

func (l *lbLoad) stop() { l.cancel(); l.wg.Wait() }

// snapshot returns the requests recorded so far, by sending time.
func (l *lbLoad) snapshot() []lbReq {
	l.mu.Lock()
	out := append([]lbReq(nil), l.reqs...)
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out
}

// waitInARow waits until the requests sent after since include lbInARow
// in a row (by sending time, among those answered) that id answered as
// active, and returns when the last of them ended.
func (l *lbLoad) waitInARow(ctx context.Context, since time.Time, id string) (time.Time, error) {
	for {
		l.mu.Lock()
		ch := l.newReq
		l.mu.Unlock()
		if end, ok := inARow(l.snapshot(), since, id, lbInARow); ok {
			return end, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-ch:
		}
	}
}

// inARow finds n consecutive requests sent after since answered 2xx by id
// as active, and returns the latest end among them.
func inARow(reqs []lbReq, since time.Time, id string, n int) (time.Time, bool) {
	run := 0
	var end time.Time
	for _, r := range reqs {
		if r.start.Before(since) {
			continue
		}
		if r.ok() && r.id == id && r.state == string(tandem.StateActive) {
			run++
			if r.end.After(end) {
				end = r.end
			}
			if run >= n {
				return end, true
			}
			continue
		}
		run, end = 0, time.Time{}
	}
	return time.Time{}, false
}

type lbMeasure struct {
	moved, oldLast          time.Duration
	wrong, errors, requests int
	kinds                   map[string]int
}

// measureLB computes a trial's figures from the requests: change is the
// instant of the change, end when the new active had answered lbInARow in
// a row; from and to are the old and new actives.
func measureLB(reqs []lbReq, change, end time.Time, from, to string) lbMeasure {
	var m lbMeasure
	var lastOld, firstNew time.Time
	for _, r := range reqs {
		if r.ok() && r.id == from && r.start.After(lastOld) {
			lastOld = r.start
		}
		if r.ok() && r.id == to && r.state == string(tandem.StateActive) && r.end.After(change) &&
			(firstNew.IsZero() || r.end.Before(firstNew)) {
			firstNew = r.end
		}
		if r.start.Before(change) || r.start.After(end) {
			continue
		}
		m.requests++
		switch {
		case !r.ok():
			m.errors++
			if m.kinds == nil {
				m.kinds = map[string]int{}
			}
			k := r.err
			if k == "" {
				k = fmt.Sprintf("HTTP %d", r.status)
			} else if i := strings.LastIndex(k, ": "); i >= 0 {
				k = k[i+2:] // "connect: connection refused", not the whole URL
			}
			m.kinds[k]++
		case r.state != string(tandem.StateActive):
			m.wrong++
		}
	}
	if !firstNew.IsZero() {
		m.moved = firstNew.Sub(change)
	}
	if !lastOld.IsZero() {
		m.oldLast = lastOld.Sub(change)
	}
	return m
}

// leaderWatch records when the leader key was created. It watches through
// every etcd member separately, since a watch through a member in a
// stopped server would see nothing, and keeps each creation's earliest
// sighting.
type leaderWatch struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	clients []*clientv3.Client
	mu      sync.Mutex
	seen    map[int64]time.Time // creation revision -> first seen
	newAt   chan struct{}
}

func newLeaderWatch(ctx context.Context, endpoints []string, key string) (*leaderWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &leaderWatch{cancel: cancel, seen: map[int64]time.Time{}, newAt: make(chan struct{})}
	for _, ep := range endpoints {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			w.stop()
			return nil, err
		}
		w.clients = append(w.clients, cli)
		ch := cli.Watch(ctx, key)
		w.wg.Go(func() {
			for resp := range ch {
				now := time.Now()
				for _, ev := range resp.Events {
					if ev.Type != clientv3.EventTypePut || ev.Kv.CreateRevision != ev.Kv.ModRevision {
						continue
					}
					w.mu.Lock()
					if t, ok := w.seen[ev.Kv.ModRevision]; !ok || now.Before(t) {
						w.seen[ev.Kv.ModRevision] = now
						close(w.newAt)
						w.newAt = make(chan struct{})
					}
					w.mu.Unlock()
				}
			}
		})
	}
	return w, nil
}

// createdAfter waits for a creation of the key after t.
func (w *leaderWatch) createdAfter(ctx context.Context, t time.Time) (time.Time, error) {
	for {
		w.mu.Lock()
		var first time.Time
		for _, c := range w.seen {
			if c.After(t) && (first.IsZero() || c.Before(first)) {
				first = c
			}
		}
		if !first.IsZero() {
			w.mu.Unlock()
			return first, nil
		}
		ch := w.newAt
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("no new leader key: %w", ctx.Err())
		case <-ch:
		}
	}
}

func (w *leaderWatch) stop() {
	w.cancel()
	for _, c := range w.clients {
		c.Close()
	}
	w.wg.Wait()
}

// startStaticProxy starts the proxy of a mode without tandem lb and returns
// what stops it.
func startStaticProxy(ctx context.Context, mode, listen string, c *local.Cluster) (func(), error) {
	var addrs []string
	for _, s := range c.Servers {
		addrs = append(addrs, strings.TrimPrefix(s.URL, "http://"))
	}
	dir, err := os.MkdirTemp("", "tandem-bench-lb-proxy-")
	if err != nil {
		return nil, err
	}
	if mode == LBNginx307 {
		// The nginx driver renders and starts it once, every server up,
		// round robin (ModeAll); nothing applies anything after.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, err
		}
		cfg := nginx.DefaultConfig()
		cfg.Dir = dir
		cfg.Log = slog.New(slog.DiscardHandler)
		d, err := nginx.New(cfg)
		if err != nil {
			return nil, err
		}
		b := lb.Backend{Name: "tandem", Listen: listen, Health: "/isActive", Mode: lb.ModeAll}
		for i, a := range addrs {
			b.Servers = append(b.Servers, lb.Server{Name: c.Servers[i].ID, Addr: a, Up: true})
		}
		if err := d.Start(ctx, lb.Desired{Backends: []lb.Backend{b}}); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		return func() { _ = d.Close(); os.RemoveAll(dir) }, nil
	}
	checks := "inter 2s fall 3 rise 2"
	if mode == LBHAProxyFast {
		checks = "inter 100ms fall 2 rise 1"
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(haproxyChecksConfig(listen, addrs, checks)), 0o644); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("haproxy", "-f", path, "-db")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGUSR1) // soft stop
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		log.Close()
		os.RemoveAll(dir)
	}
	// Wait until it listens.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if conn, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
			conn.Close()
			return stop, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(log.Name())
			stop()
			return nil, fmt.Errorf("haproxy exited at start: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, errors.New("haproxy did not listen within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// haproxyChecksConfig renders HAProxy's configuration with health checks
// of /isActive alone: no tandem lb.
func haproxyChecksConfig(listen string, addrs []string, checks string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 8192

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend tandem
    bind %s
    default_backend tandem

backend tandem
    option httpchk GET /isActive
    http-check expect status 200
    default-server %s
`, listen, checks)
	for i, a := range addrs {
		fmt.Fprintf(&b, "    server rm%d %s check\n", i+1, a)
	}
	return b.String()
}

// Print writes a table per event: rows are modes.
func (r *LBResult) Print(w io.Writer) {
	fmt.Fprintf(w, "\nnew-connection GET /v1/ha/state every %.0f ms through each proxy; lease TTL %gs; %d trials (stop: at most %d); times from the leader key's re-creation\n",
		r.EveryMS, r.LeaseTTLS, r.Trials, lbMaxStops)
	for _, ev := range LBEvents {
		var rows []string
		for _, m := range r.Modes {
			for _, e := range m.Events {
				if e.Event != ev {
					continue
				}
				if ev == LBAddRemove {
					rows = append(rows, fmt.Sprintf("%s\t%d\t%d\t%d", m.Mode, e.Cycles, e.Requests, e.Failed))
					continue
				}
				rows = append(rows, fmt.Sprintf("%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d", m.Mode, e.MovedS.N,
					lbMS(e.MovedS.P50), lbMS(e.MovedS.P99), lbMS(e.OldLast.P50), lbMS(e.OldLast.P99), e.Wrong, e.Errors))
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s\n", ev)
		if ev == LBAddRemove {
			Table(w, "MODE\tCYCLES\tREQUESTS\tFAILED", rows...)
			continue
		}
		Table(w, "MODE\tTRIALS\tMOVED P50\tMOVED P99\tOLD-LAST P50\tOLD-LAST P99\tWRONG\tERRORS", rows...)
	}
	for _, m := range r.Modes {
		if m.Skipped != "" {
			fmt.Fprintf(w, "%s: skipped (%s)\n", m.Mode, m.Skipped)
		}
	}
}

func lbMS(s float64) string { return fmt.Sprintf("%.1f", s*1000) }
