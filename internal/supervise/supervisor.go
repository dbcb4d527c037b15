package supervise

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise/proc"
	"github.com/tandemhq/tandem/internal/supervise/vip"
)

// Config configures one supervisor process: the node it runs on and the
// services it offers to host.
type Config struct {
	Node    string
	Cluster string
	// URL is where the others reach this supervisor's HTTP API (status,
	// metrics, and their liveness probe); Listen is the address it binds.
	URL    string
	Listen string
	// Addr is this node's address as fence hooks get it (default: URL's host).
	Addr string
	// Slots is how many services this node may run at once (default 1).
	Slots int
	// LeaseTTL is the lease of the supervisor, in whole seconds (default
	// 2s); SelfFenceMargin is how long before the lease's earliest expiry an
	// unrenewed supervisor kills its commands (default a quarter of it).
	LeaseTTL        time.Duration
	SelfFenceMargin time.Duration
	// CgroupParent is the cgroup v2 directory under which each service's
	// command gets a cgroup of its own (default <cgroup2 mount>/tandem);
	// NoCgroup runs commands in a process group instead (development
	// without root: a process that leaves its group escapes).
	CgroupParent string
	// LogDir receives each service's output (svc.log); "" discards it.
	LogDir string
	// Pool offers every service defined in etcd, not only Services.
	Pool bool
	// Update replaces a definition in etcd that differs from Services.
	Update bool
	// Services are the definitions this supervisor publishes and offers.
	Services []Service
	// ProbeInterval and ProbeFailures: the owner of a service this node
	// could run is probed every interval; that many refused connections in
	// a row (its supervisor is dead, its host alive) depose it at once
	// instead of waiting for its lease (default 100ms and 3).
	ProbeInterval time.Duration
	ProbeFailures int
	// Security secures the HTTP API: TLS, tokens and the audit log (the
	// zero value: plain http, open, no audit log).
	Security Security
	Log      *slog.Logger
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{Cluster: "default", Slots: 1, LeaseTTL: 2 * time.Second, ProbeInterval: 100 * time.Millisecond, ProbeFailures: 3}
}

// Validate checks the configuration and every service's definition (but
// not this machine: see Service.Check).
func (c Config) Validate() error {
	if err := keys.ValidateName("node", c.Node); err != nil {
		return fmt.Errorf("--node: %w", err)
	}
	if err := keys.ValidateName("cluster", c.Cluster); err != nil {
		return fmt.Errorf("--cluster: %w", err)
	}
	if c.Slots < 1 {
		return fmt.Errorf("slots %d: must be at least 1", c.Slots)
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL%time.Second != 0 {
		return fmt.Errorf("lease TTL %s: use whole seconds, at least 1s", c.LeaseTTL)
	}
	if c.SelfFenceMargin < 0 || c.SelfFenceMargin >= c.LeaseTTL {
		return fmt.Errorf("self-fence margin %s: must be from 0 to less than the lease TTL %s", c.SelfFenceMargin, c.LeaseTTL)
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("advertise URL %q: want http://HOST:PORT", c.URL)
	}
	if err := c.Security.validate(u); err != nil {
		return err
	}
	if len(c.Services) == 0 && !c.Pool {
		return errors.New("no service: give one with --service and a command after --, services: in a config file, or --pool to host any service defined in etcd")
	}
	seen := map[string]bool{}
	for _, s := range c.Services {
		if err := s.Validate(); err != nil {
			return err
		}
		if seen[s.Name] {
			return fmt.Errorf("service %s defined twice", s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Cluster == "" {
		c.Cluster = d.Cluster
	}
	if c.Slots == 0 {
		c.Slots = d.Slots
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = d.LeaseTTL
	}
	if c.SelfFenceMargin == 0 {
		c.SelfFenceMargin = c.LeaseTTL / 4
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = d.ProbeInterval
	}
	if c.ProbeFailures == 0 {
		c.ProbeFailures = d.ProbeFailures
	}
	if c.Addr == "" {
		if u, err := url.Parse(c.URL); err == nil {
			c.Addr = u.Hostname()
		}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	for i := range c.Services {
		c.Services[i] = c.Services[i].WithDefaults()
	}
	return c
}

// NoCgroup as Config.CgroupParent runs commands without cgroups.
const NoCgroup = "none"

// Supervisor runs the services of one node.
type Supervisor struct {
	cfg  Config
	cli  *clientv3.Client
	keys keys.Layout
	log  *slog.Logger
	view *view
	core *ha.Core
	cand *election.Candidate
	met  *metrics

	mu        sync.Mutex
	lease     *lease
	idx       map[string]int // service name -> the "shard" number of its terms in core
	names     []string
	runs      map[int64]*run // by epoch
	sitOut    map[string]time.Time
	freeSince map[string]time.Time
	goneAt    map[string]gone

	placeMu   sync.Mutex
	placed    []string
	placedRev int64

	// instances are this node's instances of every-node services, by name;
	// stopping counts those stopping.
	instances map[string]*instance
	stopping  sync.WaitGroup

	probe *prober
	wake  chan struct{}
	// life ends when Run returns: the lease's keep-alive stops and revokes it.
	life    context.Context
	endLife context.CancelFunc
}

// gone is what this supervisor saw of a service's last owner going away.
type gone struct {
	prev *election.Owner
	at   time.Time
}

// New returns a supervisor for cfg using cli; Run starts it.
func New(cfg Config, cli *clientv3.Client) (*Supervisor, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CgroupParent == NoCgroup {
		cfg.Log.Warn("commands run in a process group, not a cgroup (--cgroup-parent none): a process that leaves its group escapes stop, kill and self-fencing; for development only")
	} else if cfg.CgroupParent == "" {
		mount, err := proc.CgroupMount()
		if err != nil {
			return nil, fmt.Errorf("find cgroup v2 (every command runs in a cgroup of its own, so it can be stopped or killed whole): %w", err)
		}
		cfg.CgroupParent = mount + "/tandem"
	}
	layout := keys.New(cfg.Cluster)
	log := cfg.Log.With("node", cfg.Node)
	s := &Supervisor{
		cfg: cfg, cli: cli, keys: layout, log: log,
		view:      newView(cli, layout, log),
		core:      ha.New(log),
		cand:      election.NewCandidate(cli, cfg.Node, cfg.URL),
		idx:       map[string]int{},
		runs:      map[int64]*run{},
		sitOut:    map[string]time.Time{},
		freeSince: map[string]time.Time{},
		goneAt:    map[string]gone{},
		instances: map[string]*instance{},
		wake:      make(chan struct{}, 1),
	}
	s.life, s.endLife = context.WithCancel(context.Background())
	s.met = newMetrics(s)
	s.probe = newProber(s)
	s.core.OnTerm("service", s.runTerm)
	return s, nil
}

// index returns the term number of svc, assigning one the first time.
func (s *Supervisor) index(svc string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.idx[svc]; ok {
		return i
	}
	i := len(s.names)
	s.idx[svc] = i
	s.names = append(s.names, svc)
	return i
}

func (s *Supervisor) nameOf(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.names[i]
}

func (s *Supervisor) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Handler is the supervisor's HTTP API.
func (s *Supervisor) Handler() http.Handler { return s.handler(s.guard()) }

// Run publishes the definitions, joins the pool and runs services until
// ctx ends; then it gives every service up cleanly (stopping its command
// first) and leaves. It returns an error only if it could not start.
func (s *Supervisor) Run(ctx context.Context) error {
	if err := s.publish(ctx); err != nil {
		return err
	}
	vctx, vcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.view.Run(vctx) }()
	defer func() { vcancel(); wg.Wait() }()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := s.view.WaitRev(sctx, 1)
	cancel()
	if err != nil {
		return fmt.Errorf("read the supervised services from etcd: %w", err)
	}
	s.cleanLeftovers()

	var srv *http.Server
	if s.cfg.Listen != "" {
		ln, err := net.Listen("tcp", s.cfg.Listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
		}
		if s.cfg.Security.TLS != nil {
			ln = tls.NewListener(ln, s.cfg.Security.TLS)
		}
		g := s.guard()
		srv = &http.Server{Handler: s.handler(g), ReadHeaderTimeout: 5 * time.Second,
			// Refused TLS handshakes among them, at debug (load balancers'
			// TCP checks would fill the log otherwise), and in the audit log.
			ErrorLog: g.HandshakeLog(s.log)}
		wg.Add(1)
		go func() { defer wg.Done(); _ = srv.Serve(ln) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.probe.run(vctx) }()

	s.loop(ctx)

	// Give every service up cleanly, stop the instances, then leave.
	s.releaseAll(tandem.CauseShutdown)
	s.stopInstances()
	s.core.Close()
	s.mu.Lock()
	l := s.lease
	s.mu.Unlock()
	s.endLife()
	if l != nil {
		<-l.Lost() // revoked
	}
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	return nil
}

// publish writes this node's service definitions to etcd. An existing
// definition that differs is an error unless Update: two nodes with
// different ideas of one service would otherwise overwrite each other.
func (s *Supervisor) publish(ctx context.Context) error {
	for _, svc := range s.cfg.Services {
		key := s.keys.SuperviseService(svc.Name)
		val, _ := json.Marshal(svc)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := s.cli.Txn(pctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).
			Then(clientv3.OpPut(key, string(val))).Else(clientv3.OpGet(key)).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("publish the definition of %s to etcd: %w", svc.Name, err)
		}
		if resp.Succeeded {
			s.log.Info("defined the service in etcd", "service", svc.Name)
			continue
		}
		var old Service
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) > 0 {
			_ = json.Unmarshal(kvs[0].Value, &old)
		}
		// Compared as JSON, the form stored: an empty list or map and none
		// are the same definition (a config file may spell either).
		if cur, _ := json.Marshal(old.WithDefaults()); string(cur) == string(val) {
			continue
		}
		if !s.cfg.Update {
			return fmt.Errorf("service %s is already defined in etcd differently (by another node's configuration); make the configurations agree, or pass --update to replace the definition with this one", svc.Name)
		}
		pctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		_, err = s.cli.Put(pctx, key, string(val))
		cancel()
		if err != nil {
			return fmt.Errorf("update the definition of %s in etcd: %w", svc.Name, err)
		}
		s.log.Info("replaced the service's definition in etcd", "service", svc.Name)
	}
	return nil
}

// offered returns the services this node offers, with their definitions.
func (s *Supervisor) offered() map[string]Service {
	defs := s.view.Services()
	if s.cfg.Pool {
		return defs
	}
	out := map[string]Service{}
	for _, svc := range s.cfg.Services {
		if d, ok := defs[svc.Name]; ok {
			out[svc.Name] = d
		}
	}
	return out
}

// cleanLeftovers kills what a previous supervisor of this node left in the
// services' cgroups (it was killed itself): this process owns nothing yet,
// so nothing there may run.
func (s *Supervisor) cleanLeftovers() {
	for name, svc := range s.offered() {
		// A VIP a killed supervisor left on this node would make every
		// other node's duplicate-address probe fail.
		if svc.VIP != "" {
			if v, err := vip.Parse(svc.VIP); err == nil {
				if held, err := v.Held(); err == nil && held {
					s.log.Warn("removing the VIP a previous supervisor left on this node", "service", name, "vip", svc.VIP)
					if err := v.Remove(); err != nil {
						s.log.Error("could not remove a leftover VIP", "service", name, "vip", svc.VIP, "err", err)
					}
				}
			}
		}
		if s.cfg.CgroupParent == NoCgroup {
			continue
		}
		cg, err := proc.OpenCgroup(s.cgroupPath(name))
		if err != nil {
			continue
		}
		if pids, _ := cg.Procs(); len(pids) > 0 {
			s.log.Warn("killing what a previous supervisor left running", "service", name, "pids", pids)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := cg.Kill(); err == nil {
				_ = cg.WaitEmpty(ctx)
			}
			cancel()
		}
	}
}

func (s *Supervisor) cgroupPath(svc string) string { return s.cfg.CgroupParent + "/" + svc }

// loop is the supervisor's state machine: it wakes on every change of the
// view, of its terms, of its lease, and on a timer, and decides again what
// this node should run.
func (s *Supervisor) loop(ctx context.Context) {
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		changed := s.view.Changed()
		terms := s.core.Changed()
		s.mu.Lock()
		l := s.lease
		s.mu.Unlock()
		var lost <-chan struct{}
		if l != nil {
			lost = l.Lost()
		}
		select {
		case <-ctx.Done():
			return
		case <-lost:
			s.leaseLost(l)
		case <-changed:
		case <-terms:
		case <-s.wake:
		case <-retry.C:
		}
		wait := s.step(ctx)
		if !retry.Stop() {
			select {
			case <-retry.C:
			default:
			}
		}
		// Every change wakes the loop; looking again at least once a lease
		// TTL is the safety net if a wake-up is ever missed.
		retry.Reset(min(wait, s.cfg.LeaseTTL))
	}
}

// leaseLost ends every term at once: the runners kill their commands' whole
// cgroups without waiting (self-fencing), since the others may take the
// services as soon as the lease expires.
func (s *Supervisor) leaseLost(l *lease) {
	s.mu.Lock()
	if s.lease == l {
		s.lease = nil
	}
	s.mu.Unlock()
	ended := s.core.EndAll(ha.ErrSessionLost)
	if len(ended) > 0 {
		s.log.Error("lease lost: killed every command at once (self-fencing)", "cause", l.Cause(), "services", len(ended),
			"lead_s", time.Until(l.EarliestExpiry()).Seconds())
	}
	s.placeMu.Lock()
	s.placed, s.placedRev = nil, 0
	s.placeMu.Unlock()
}

// step acts on the difference between what this node runs and what the
// view says, and returns how long to wait before looking again.
func (s *Supervisor) step(ctx context.Context) time.Duration {
	s.mu.Lock()
	l := s.lease
	s.mu.Unlock()
	if l == nil {
		return s.join(ctx)
	}
	wait := time.Hour
	s.checkTerms()
	offered := s.offered()
	s.syncInstances(ctx, offered)
	// A service held here but no longer offered (its definition was deleted)
	// is given up: the loop below only sees the offered ones.
	for _, t := range s.core.Held() {
		if name := s.nameOf(t.Shard); offered[name].Name == "" {
			s.checkOwned(name, t)
		}
	}
	names := make([]string, 0, len(offered))
	for n := range offered {
		names = append(names, n)
	}
	sort.Strings(names)
	now := time.Now()
	for _, name := range names {
		svc := offered[name]
		if svc.EveryNode() {
			continue // no owner: syncInstances runs this node's instance
		}
		i := s.index(name)
		owner := s.view.Owner(name)
		s.trackGone(name, owner)
		if t := s.core.Term(i); t != nil {
			s.checkOwned(name, t)
			continue
		}
		if owner != nil {
			delete(s.freeSince, name)
			continue
		}
		if s.leaving(name) {
			// The last term of it here is still killing its command and
			// dropping its VIP, which a new term would reuse: the run pokes
			// the loop once it has left.
			continue
		}
		h := s.view.Handoff(name)
		if h != nil && h.To != s.cfg.Node {
			continue // a hand-off to another node: its lease bounds the wait
		}
		if h == nil {
			if why := s.cannotTake(svc); why != "" {
				continue
			}
			if until := s.sitOut[name]; now.Before(until) {
				wait = min(wait, until.Sub(now))
				continue
			}
			// Nodes earlier in the service's list get a head start.
			since, ok := s.freeSince[name]
			if !ok {
				since = now
				s.freeSince[name] = now
			}
			if head := time.Duration(s.rank(svc)) * 200 * time.Millisecond; now.Sub(since) < head {
				wait = min(wait, head-now.Sub(since))
				continue
			}
		}
		if err := s.campaign(ctx, l, svc, h); err != nil {
			s.log.Warn("campaign failed", "service", name, "err", err)
			wait = min(wait, 250*time.Millisecond)
		}
	}
	return wait
}

// leaving reports whether a run of svc on this node has not finished yet
// (its term ended, and it is still leaving). A new term must wait for it:
// both use the same cgroup and VIP, and the old run's kill and VIP removal
// would hit the new run's command and address.
func (s *Supervisor) leaving(svc string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.runs {
		if r.svc.Name == svc {
			return true
		}
	}
	return false
}

// rank is how many live nodes that could take svc come before this one in
// its list of nodes: each gets a 200 ms head start on a free service. A
// dead or banned node ahead in the list delays nobody.
func (s *Supervisor) rank(svc Service) int {
	nodes := s.view.Nodes()
	rank := 0
	for _, n := range svc.Nodes {
		if n == s.cfg.Node {
			break
		}
		info, live := nodes[n]
		if !live || !info.offers(svc.Name) {
			continue
		}
		if _, banned := s.view.Banned(svc.Name, n); banned {
			continue
		}
		rank++
	}
	return rank
}

// join grants a new lease and registers this node, retrying until it can.
func (s *Supervisor) join(ctx context.Context) time.Duration {
	gctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
	defer cancel()
	l, err := grantLease(gctx, s.cli, s.cfg.LeaseTTL, s.cfg.SelfFenceMargin)
	if err != nil {
		s.log.Warn("cannot reach etcd; retrying", "err", err)
		return 500 * time.Millisecond
	}
	var services []string
	for _, svc := range s.cfg.Services {
		services = append(services, svc.Name)
	}
	info := NodeInfo{Node: s.cfg.Node, URL: s.cfg.URL, Addr: s.cfg.Addr, Slots: s.cfg.Slots, Services: services,
		Pool: s.cfg.Pool, Started: time.Now().UTC()}
	val, _ := json.Marshal(info)
	key := s.keys.SuperviseNode(s.cfg.Node)
	resp, err := s.cli.Txn(gctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(l.id))).Commit()
	if err != nil || !resp.Succeeded {
		_, _ = s.cli.Revoke(gctx, l.id)
		if err == nil {
			s.log.Error("another live supervisor is registered as this node; waiting for it to go", "key", key)
			return s.cfg.LeaseTTL
		}
		s.log.Warn("cannot register with etcd; retrying", "err", err)
		return 500 * time.Millisecond
	}
	s.mu.Lock()
	s.lease = l
	s.mu.Unlock()
	go l.keepAlive(s.life)
	// Self-fencing must not wait for the loop, which may be blocked on an
	// unreachable etcd: the lease's own goroutine ends every term.
	go func() {
		<-l.Lost()
		s.leaseLost(l)
		s.poke()
	}()
	s.log.Info("joined", "lease", fmt.Sprintf("%x", l.id), "slots", s.cfg.Slots, "services", services, "pool", s.cfg.Pool)
	return 0
}

// cannotTake says why this node may not take svc now ("" if it may).
func (s *Supervisor) cannotTake(svc Service) string {
	if !svc.canRunOn(s.cfg.Node) {
		return "not one of the service's nodes"
	}
	if b, ok := s.view.Banned(svc.Name, s.cfg.Node); ok {
		return "banned until " + b.Until.Format(time.RFC3339) + ": " + b.Reason
	}
	s.placeMu.Lock()
	placed := slices.Clone(s.placed)
	s.placeMu.Unlock()
	return placementConflict(svc, placed, s.cfg.Slots, s.view.Services())
}

// placementConflict says why a node holding placed, with slots, cannot take
// svc ("" if it can): no free slot, or anti-affinity either way.
func placementConflict(svc Service, placed []string, slots int, defs map[string]Service) string {
	if len(placed) >= slots {
		return fmt.Sprintf("no free slot (%d of %d used)", len(placed), slots)
	}
	for _, p := range placed {
		if slices.Contains(svc.AntiAffinity, p) || slices.Contains(defs[p].AntiAffinity, svc.Name) {
			return "anti-affinity with " + p + ", which it runs"
		}
	}
	return ""
}

// campaign makes one attempt to take svc: the owner key, and a slot in this
// node's placement record, in one transaction.
func (s *Supervisor) campaign(ctx context.Context, l *lease, svc Service, h *election.Handoff) error {
	s.placeMu.Lock()
	defer s.placeMu.Unlock()
	if why := placementConflict(svc, s.placed, s.cfg.Slots, s.view.Services()); why != "" {
		if h != nil && h.To == s.cfg.Node {
			// Handed here, but this node filled up since the move was
			// asked for: decline, so the service is free for any node
			// instead of waiting for this node's lease.
			s.log.Warn("declining a service handed to this node", "service", svc.Name, "why", why)
			key := s.keys.SuperviseOwnership(svc.Name).Handoff
			cctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
			defer cancel()
			_, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", h.ModRev)).Then(clientv3.OpDelete(key)).Commit()
			return err
		}
		return nil
	}
	placed := append(slices.Clone(s.placed), svc.Name)
	val, _ := json.Marshal(placed)
	pkey := s.keys.SupervisePlaced(s.cfg.Node)
	also := election.Cond{
		If:   []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(pkey), "=", s.placedRev)},
		Then: []clientv3.Op{clientv3.OpPut(pkey, string(val), clientv3.WithLease(l.id))},
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.LeaseTTL)
	defer cancel()
	wonAt := time.Now()
	fence, resp, err := s.cand.Acquire(cctx, s.keys.SuperviseOwnership(svc.Name), l.id, h, also)
	if err != nil {
		return err
	}
	if resp == nil {
		s.refreshPlaced(cctx)
		return nil
	}
	s.placed, s.placedRev = placed, resp.Header.Revision
	cause := ""
	if h != nil {
		cause = h.Reason
		if cause == "" {
			cause = tandem.CauseHandoff
		}
	}
	r := &run{s: s, svc: svc, fence: fence, wonAt: wonAt, cause: cause, gone: s.goneAt[svc.Name],
		stopCh: make(chan stopRequest, 1), finished: make(chan struct{})}
	s.mu.Lock()
	s.runs[fence.Rev] = r
	s.mu.Unlock()
	if _, err := s.core.Begin(s.index(svc.Name), fence); err != nil {
		s.mu.Lock()
		delete(s.runs, fence.Rev)
		s.mu.Unlock()
		return fmt.Errorf("begin the term of %s: %w", svc.Name, err)
	}
	s.log.Info("won the service", "service", svc.Name, "epoch", fence.Rev)
	return nil
}

// refreshPlaced reads this node's placement record again after a failed
// comparison (another of this node's transactions changed it, or its lease
// did).
func (s *Supervisor) refreshPlaced(ctx context.Context) {
	resp, err := s.cli.Get(ctx, s.keys.SupervisePlaced(s.cfg.Node))
	if err != nil {
		return
	}
	if len(resp.Kvs) == 0 {
		s.placed, s.placedRev = nil, 0
		return
	}
	var p []string
	_ = json.Unmarshal(resp.Kvs[0].Value, &p)
	s.placed, s.placedRev = p, resp.Kvs[0].ModRevision
}

// placementOps returns, with placeMu held, the comparison and put that
// remove svc from this node's placement record.
func (s *Supervisor) placementWithout(svc string) (election.Cond, []string) {
	placed := slices.DeleteFunc(slices.Clone(s.placed), func(p string) bool { return p == svc })
	pkey := s.keys.SupervisePlaced(s.cfg.Node)
	val, _ := json.Marshal(placed)
	s.mu.Lock()
	l := s.lease
	s.mu.Unlock()
	var opts []clientv3.OpOption
	if l != nil {
		opts = append(opts, clientv3.WithLease(l.id))
	}
	return election.Cond{
		If:   []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(pkey), "=", s.placedRev)},
		Then: []clientv3.Op{clientv3.OpPut(pkey, string(val), opts...)},
	}, placed
}

// checkTerms ends every term the view shows lost: the owner key is gone or
// someone else's.
func (s *Supervisor) checkTerms() {
	rev := s.view.Rev()
	for _, t := range s.core.Held() {
		if rev < t.Epoch() {
			continue
		}
		if o := s.view.Owner(s.nameOf(t.Shard)); o == nil || o.Epoch != t.Epoch() {
			s.core.End(t, ha.ErrDeposed)
		}
	}
}

// checkOwned asks the run of an owned service to give it up when an
// operator moved or banned it, or its definition is gone.
func (s *Supervisor) checkOwned(name string, t *ha.Term) {
	s.mu.Lock()
	r := s.runs[t.Epoch()]
	s.mu.Unlock()
	if r == nil {
		return
	}
	if _, ok := s.view.Service(name); !ok {
		r.requestStop(stopRequest{cause: CauseUndefined})
		return
	}
	if b, ok := s.view.Banned(name, s.cfg.Node); ok {
		r.requestStop(stopRequest{cause: CauseBanned, reason: b.Reason})
		return
	}
	if m := s.view.Move(name); m != nil && m.To != s.cfg.Node {
		r.requestStop(stopRequest{cause: CauseMove, to: m.To, moveRev: m.rev})
	} else if m != nil {
		// Already here (it came here by the move, or by a failover since):
		// the request is done; left in place it would move the service
		// again from a later owner.
		key := s.keys.SuperviseMove(name)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, _ = s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", m.rev)).Then(clientv3.OpDelete(key)).Commit()
		}()
	}
}

// trackGone remembers when this supervisor saw a service's owner go, and
// who it was, for the next owner's failover record.
func (s *Supervisor) trackGone(name string, owner *election.Owner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.goneAt[name]
	if owner != nil {
		s.goneAt[name] = gone{prev: owner}
		return
	}
	if g.prev != nil && g.at.IsZero() {
		g.at = time.Now()
		s.goneAt[name] = g
	}
}

// releaseAll gives every service up cleanly, at most the stop timeouts.
func (s *Supervisor) releaseAll(cause string) {
	var wg sync.WaitGroup
	for _, t := range s.core.Held() {
		s.mu.Lock()
		r := s.runs[t.Epoch()]
		s.mu.Unlock()
		if r == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.requestStop(stopRequest{cause: cause})
			<-r.finished
		}()
	}
	wg.Wait()
}

// grantBan grants a lease of the ban's length for a ban key.
func (s *Supervisor) grantBan(ctx context.Context, d time.Duration) (clientv3.LeaseID, error) {
	return grantBanLease(ctx, s.cli, d)
}

func grantBanLease(ctx context.Context, cli *clientv3.Client, d time.Duration) (clientv3.LeaseID, error) {
	ttl := int64((d + time.Second - 1) / time.Second)
	resp, err := cli.Grant(ctx, max(ttl, 1))
	if err != nil {
		return 0, fmt.Errorf("grant the ban's lease: %w", err)
	}
	return resp.ID, nil
}

// isRefused reports whether err is a refused connection: the port is
// closed on a live host, so the process that had it is gone.
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
