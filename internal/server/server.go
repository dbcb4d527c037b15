// Package server is a tandem server: a master that keeps a hot view of the
// cluster, takes part in the ownership of its shards, and works for the
// shards it owns.
//
// A cluster has N shards, fixed when it is first started. With N = 1 (the
// default) it is active/standby: the owner of the one shard is the active,
// the others are hot standbys. With N > 1 it is active-active: every ready
// server owns some shards (a deterministic target map spreads them), serves
// the API, and schedules the jobs of its shards; a job belongs to one shard
// forever, and every write to it is fenced by its shard owner's epoch.
//
// One goroutine (run) owns every change of ownership: campaigning, handing
// off, manual transitions and recovery from a lost etcd session all happen
// there, in order. Winning a shard begins a term in the ha.Core; the work of
// an owner (history, scheduler, agent watch) is registered with the core and
// runs under the term's context, which ends the instant ownership does.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/schedule"
	"github.com/tandemhq/tandem/internal/store"
	"github.com/tandemhq/tandem/internal/transport"
)

// Config configures a Server.
type Config struct {
	ID      string // unique server ID within the cluster, e.g. rm1
	Cluster string // cluster name; keys live under /tandem/<cluster>/
	URL     string // the URL other servers and clients reach this server at
	// Shards is the cluster's number of shards: 0 takes the cluster's
	// setting (1 for a new cluster); another value must match the setting
	// the cluster was created with, or Start fails.
	Shards int
	// LeaseTTL bounds how long a crashed owner keeps its shards. It is
	// rounded up to whole seconds (etcd leases count seconds); etcd itself
	// raises it to its minimum (2 s with etcd's default timing).
	LeaseTTL time.Duration
	// AutoFailover makes servers campaign on their own. Off, servers stay
	// standby until an operator makes one active (one shard only).
	AutoFailover bool
	// ProbeInterval is how often a server checks that the owners answer.
	ProbeInterval time.Duration
	// DeposeDead lets a server depose an owner whose port refuses
	// connections (its process is gone) without waiting for its lease.
	DeposeDead bool
	// SuspectAfter is how long an owner's watch stream may stay silent
	// before this server votes that it is unresponsive (hung, paused, cut
	// off); a majority of the other live servers voting, unanswered by the
	// owner, deposes it (suspect.go). 0 turns voting off; with DeposeDead
	// off, so is it.
	SuspectAfter time.Duration
	// PeerAddrs, by server ID, reaches that server's watch stream and
	// probes at another host:port than its advertised URL's (tests cut one
	// link with it).
	PeerAddrs map[string]string
	// AgentTimeout is how long an agent may be silent before an owner
	// declares it lost and retries its attempts elsewhere.
	AgentTimeout time.Duration
	// Settle is how long a server must be up before it counts in the
	// shards' target map (active-active), so a server that restarts in a
	// loop does not pull shards back and forth.
	Settle time.Duration
	// MaxMoves bounds how many shards a server hands off at a time when the
	// target map moves them away from it.
	MaxMoves int
	// FreeGrace is how long a free shard waits for its target to take it
	// before any server may (its target may be hung).
	FreeGrace time.Duration
	// Failpoint, for tests only, makes the server crash at a chosen point.
	Failpoint string
	// ScheduleGrace: a schedule's nominal time less than this late always
	// fires, whatever the catch-up policy (a failover is never a misfire).
	// It must exceed a failover (detection, election, transition), so it
	// must be longer than LeaseTTL. Default schedule.DefaultGrace (1m).
	ScheduleGrace time.Duration
	// Clock is this server's wall clock as the schedule controller reads
	// it (nil: the local clock): nothing fires before its due time by it,
	// nor by the other servers' clocks as far as the controller knows them
	// (see peerClocks). Tests skew it (tandem server --clock-skew).
	Clock func() time.Time
	// FireHook, for tests only, is called by the schedule controller at
	// each point between planning a fire and committing it (FirePoint).
	FireHook func(FireEvent)
	// WorkflowHook, for tests only, is called by the workflow controller
	// just before and just after each commit (WorkflowPoint).
	WorkflowHook func(WorkflowEvent)
	// PeerTLS, when set, is how this server calls other servers over
	// https (its probes and the wait for a hand-off's taker): the CA to
	// verify them against and this server's certificate to present
	// (pki.ClientConfig with the server role). Nil: plain http.
	PeerTLS *tls.Config
	// Retention bounds the finished history kept, and keeps etcd compacted
	// and defragmented (retention.go, docs/RETENTION.md).
	Retention RetentionConfig
	Etcd      *clientv3.Client
	Logger    *slog.Logger
}

// DefaultConfig returns a Config with tandem's defaults; ID, URL and Etcd
// still have to be set.
func DefaultConfig() Config {
	return Config{
		Cluster:       "default",
		LeaseTTL:      2 * time.Second,
		AutoFailover:  true,
		ProbeInterval: 100 * time.Millisecond,
		DeposeDead:    true,
		SuspectAfter:  DefaultSuspectAfter,
		AgentTimeout:  10 * time.Second,
		Settle:        time.Second,
		MaxMoves:      8,
		FreeGrace:     time.Second,
		ScheduleGrace: schedule.DefaultGrace,
		Retention:     DefaultRetention(),
	}
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if err := keys.ValidateName("server", c.ID); err != nil {
		return err
	}
	if err := keys.ValidateName("cluster", c.Cluster); err != nil {
		return err
	}
	if c.URL == "" {
		return errors.New("server URL is empty: set --advertise-url")
	}
	if c.Shards < 0 || c.Shards > keys.MaxShards {
		return fmt.Errorf("shards %d: use 1 to %d (or 0 for the cluster's setting)", c.Shards, keys.MaxShards)
	}
	if c.Shards > 1 && !c.AutoFailover {
		return errors.New("manual failover (auto failover off) is for a cluster of one shard; with several shards, ownership follows the target map (use drain to move shards away)")
	}
	if c.LeaseTTL < time.Second {
		return fmt.Errorf("lease TTL %s is too short: etcd leases count whole seconds, so use at least 1s", c.LeaseTTL)
	}
	if c.LeaseTTL > 5*time.Minute {
		return fmt.Errorf("lease TTL %s is too long: a crashed active would block the cluster that long (at most 5m)", c.LeaseTTL)
	}
	if c.AgentTimeout < 100*time.Millisecond {
		return fmt.Errorf("agent timeout %s is too short (at least 100ms)", c.AgentTimeout)
	}
	if c.Settle < 0 || c.Settle > 10*time.Minute {
		return fmt.Errorf("settle time %s must be from 0 to 10m", c.Settle)
	}
	if c.MaxMoves < 1 || c.MaxMoves > 64 {
		return fmt.Errorf("max moves %d must be from 1 to 64", c.MaxMoves)
	}
	if c.FreeGrace < 0 || c.FreeGrace > 5*time.Minute {
		return fmt.Errorf("free grace %s must be from 0 to 5m", c.FreeGrace)
	}
	if c.ScheduleGrace < 0 || c.ScheduleGrace > 0 && c.ScheduleGrace <= c.LeaseTTL {
		return fmt.Errorf("schedule grace %s must exceed a failover, so be longer than the lease TTL %s", c.ScheduleGrace, c.LeaseTTL)
	}
	if !validFailpoint(c.Failpoint) {
		return fmt.Errorf("unknown failpoint %q", c.Failpoint)
	}
	if c.Etcd == nil {
		return errors.New("no etcd client")
	}
	if c.ProbeInterval <= 0 {
		return fmt.Errorf("probe interval %s must be positive", c.ProbeInterval)
	}
	if err := validateSuspicion(c.SuspectAfter, c.PeerAddrs); err != nil {
		return err
	}
	if err := c.Retention.Validate(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func (c *Config) ttlSeconds() int { return int(math.Ceil(c.LeaseTTL.Seconds())) }

// Server is one tandem server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	keys    keys.Layout
	store   *store.Store
	cand    *election.Candidate
	core    *ha.Core
	metrics *metrics
	ids     idGen
	started time.Time
	// timetables caches the compiled timetables of schedules; clocks
	// estimates how far this server's clock is ahead of its peers'.
	timetables timetables
	clocks     peerClocks
	// peerHC asks other servers whether they are active (waitServing).
	peerHC *http.Client

	// nshards is the cluster's number of shards, known once Start has read
	// the cluster's settings (the HTTP API may already be serving: it is
	// read atomically); jobMu serialises this server's writes to the jobs of
	// each shard (see mutate).
	nshards atomic.Int64
	jobMu   [keys.MaxShards]sync.Mutex

	mu          sync.RWMutex
	stopping    bool
	running     bool // Start has finished
	session     *concurrency.Session
	sitOutUntil time.Time // one shard, auto mode: after a manual transition-to-standby, don't campaign until then
	ready       bool      // counts in the target map (recorded in the membership record)
	joined      time.Time // when the current session began: the settle time counts from it
	draining    bool      // gives up its shards and takes none (recorded in the membership record)

	sessRetry time.Duration // run goroutine only: backoff of session renewal
	history   history

	agents  agentTable
	waiting waitReasons
	cmds    chan command
	probe   prober
	health  healthCache
	cancel  context.CancelFunc
	bg      group // goroutines of the server's own; Close waits for them
	// closeOnce makes Close safe to call concurrently; stopped is closed
	// once it has run.
	closeOnce sync.Once
	stopped   chan struct{}
	// wake asks the run goroutine to look again (a term ended elsewhere).
	wake chan struct{}
	// regKick asks keepRegistered to rewrite the membership record.
	regKick chan struct{}
	// freeSince is when each free shard was first seen free (run goroutine only).
	freeSince map[int]time.Time
	// retention is the state of retention and etcd maintenance (retention.go).
	retention retention
}

// New returns a Server; Start runs it.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("server", cfg.ID)
	layout := keys.New(cfg.Cluster)
	s := &Server{
		peerHC:    transport.NewHTTPClient(transport.HTTPOptions{Timeout: time.Second, NoProxy: true, TLS: cfg.PeerTLS}),
		cfg:       cfg,
		log:       log,
		keys:      layout,
		store:     store.New(cfg.Etcd, layout, log),
		cand:      election.NewCandidate(cfg.Etcd, cfg.ID, cfg.URL),
		core:      ha.New(log),
		started:   time.Now(),
		cmds:      make(chan command),
		stopped:   make(chan struct{}),
		wake:      make(chan struct{}, 1),
		regKick:   make(chan struct{}, 1),
		freeSince: make(map[int]time.Time),
	}
	if ttl := cfg.Retention.IdempotencyTTL; ttl != 0 {
		if err := s.store.SetIdempotencyTTL(ttl); err != nil {
			return nil, err
		}
	}
	s.metrics = newMetrics(s)
	// The work of an owner, registered once: the transition code below never
	// names it.
	s.core.OnTerm("history", s.recordTerm)
	s.core.WhileOwning("scheduler", s.schedule)
	s.core.WhileOwning("agent-watch", s.watchAgents)
	s.core.WhileOwning("schedules", s.runSchedules)
	s.core.WhileOwning("workflows", s.runWorkflows)
	s.initRetention()
	return s, nil
}

// Store returns the server's view of the cluster (read-only use).
func (s *Server) Store() *store.Store { return s.store }

// Start loads the cluster's state and settings, registers this server and
// starts taking part in the ownership of shards. It returns once the server
// is standby; ctx bounds the start-up only.
func (s *Server) Start(ctx context.Context) error {
	if err := s.store.Start(ctx); err != nil {
		return err
	}
	n, err := s.store.EnsureConfig(ctx, s.cfg.Shards)
	if err != nil {
		s.store.Close()
		if errors.Is(err, store.ErrShardsMismatch) {
			return fmt.Errorf("cluster %q: %w", s.cfg.Cluster, err)
		}
		return err
	}
	if n > 1 && !s.cfg.AutoFailover {
		s.store.Close()
		return fmt.Errorf("cluster %q has %d shards: manual failover (--auto-failover=false) is for a cluster of one shard", s.cfg.Cluster, n)
	}
	s.nshards.Store(int64(n))
	if err := s.newSession(ctx, true); err != nil {
		s.store.Close()
		return err
	}
	s.mu.Lock()
	s.running = true
	s.ready = s.cfg.Settle == 0
	s.mu.Unlock()
	s.log.Info("server started", "state", tandem.StateStandby, "url", s.cfg.URL, "shards", n,
		"auto_failover", s.cfg.AutoFailover, "lease_ttl", s.cfg.LeaseTTL.String(), "cluster", s.cfg.Cluster)
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.bg.Go(func() { s.run(runCtx) })
	s.bg.Go(func() { s.probe.run(runCtx, s) })
	s.bg.Go(func() { s.keepRegistered(runCtx) })
	return nil
}

// Shards returns the cluster's number of shards (0 before Start).
func (s *Server) Shards() int { return int(s.nshards.Load()) }

// newSession grants a fresh lease and registers this server under it. At
// start-up a record left by an earlier process with the same ID is waited
// out (it dies with that process's lease); a live duplicate is an error.
// Every etcd call honours ctx, so an unreachable etcd makes it fail when ctx
// ends rather than block.
func (s *Server) newSession(ctx context.Context, startup bool) error {
	sess, err := election.NewSession(ctx, s.cfg.Etcd, s.cfg.ttlSeconds())
	for startup && err != nil && ctx.Err() == nil && store.Retryable(err) {
		// A busy or electing etcd at start-up is waited out until ctx ends.
		s.log.Warn("creating the etcd session failed; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
			sess, err = election.NewSession(ctx, s.cfg.Etcd, s.cfg.ttlSeconds())
		}
	}
	if err != nil {
		return fmt.Errorf("create etcd session: %w", err)
	}
	deadline := time.Now().Add(2*s.cfg.LeaseTTL + time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = s.store.Register(rctx, sess.Lease(), s.info(sess.Lease()))
		cancel()
		if err == nil {
			break
		}
		transient := startup && !errors.Is(err, store.ErrDuplicateServer) && ctx.Err() == nil && store.Retryable(err)
		if !transient && (!errors.Is(err, store.ErrDuplicateServer) || !startup || time.Now().After(deadline)) {
			s.closeSession(sess)
			if errors.Is(err, store.ErrDuplicateServer) {
				return fmt.Errorf("%w; give each server a unique --id", err)
			}
			return err
		}
		select {
		case <-ctx.Done():
			s.closeSession(sess)
			return ctx.Err()
		case <-s.store.Changed():
		case <-time.After(250 * time.Millisecond):
		}
	}
	s.mu.Lock()
	s.session, s.joined = sess, time.Now()
	s.mu.Unlock()
	return nil
}

// closeSession revokes sess's lease, giving up after a second: with etcd
// unreachable the lease expires on its own.
func (s *Server) closeSession(sess *concurrency.Session) {
	sess.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _ = s.cfg.Etcd.Revoke(ctx, sess.Lease())
}

// info is this server's membership record.
func (s *Server) info(lease clientv3.LeaseID) tandem.ServerInfo {
	s.mu.RLock()
	ready, draining := s.ready, s.draining
	s.mu.RUnlock()
	return tandem.ServerInfo{ID: s.cfg.ID, URL: s.cfg.URL, State: s.State(), PID: os.Getpid(),
		Version: tandem.Version, StartedAt: s.started, Lease: int64(lease), Ready: ready && !draining, Draining: draining}
}

// Close stops the server gracefully: an owner resigns first, so other
// servers take over at once instead of after the lease TTL. Close waits for
// the server's goroutines and releases its lease; it returns within a few
// seconds even with etcd unreachable. It is safe to call more than once and
// from several goroutines at once: the first call stops the server, and
// every call returns once it has stopped.
func (s *Server) Close() error {
	s.closeOnce.Do(s.close)
	return nil
}

// close is Close, run once.
func (s *Server) close() {
	defer close(s.stopped)
	s.mu.Lock()
	s.stopping = true
	sess := s.session
	s.mu.Unlock()
	// Stop the run goroutine first, so it campaigns no more; then give up
	// every term: stop its work, record why, and delete its key.
	if s.cancel != nil {
		s.cancel()
	}
	s.bg.Close()
	// Two seconds for resigning and leaving: enough with a quorum, and
	// without one they cannot succeed anyway (the lease then expires).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	held := s.core.EndAll(ha.ErrStopping)
	s.resignAll(ctx, held, tandem.CauseShutdown)
	s.core.Close()
	if sess != nil {
		_ = s.store.Deregister(ctx, sess.Lease(), s.cfg.ID)
		s.closeSession(sess) // revokes the lease: anything still bound to it goes
	}
	s.store.Close()
	s.log.Info("server stopped")
}

// Lease returns the lease this server's keys are bound to (0 without a session).
func (s *Server) Lease() clientv3.LeaseID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.session == nil {
		return 0
	}
	return s.session.Lease()
}

// State returns this server's HA state: active while it owns a shard. It is
// a cheap read, for every request's headers and for /isActive probes.
func (s *Server) State() tandem.HAState {
	s.mu.RLock()
	stopping, running := s.stopping, s.running
	s.mu.RUnlock()
	switch {
	case stopping:
		return tandem.StateStopping
	case !running:
		return tandem.StateInitializing
	case s.core.Count() > 0:
		return tandem.StateActive
	}
	return tandem.StateStandby
}

// ActiveEpoch returns this server's epoch and true while it is the active
// of a cluster of one shard (the owner of shard 0).
func (s *Server) ActiveEpoch() (int64, bool) {
	if s.Shards() != 1 {
		return 0, false
	}
	if t := s.core.Term(0); t != nil && s.State() == tandem.StateActive {
		return t.Epoch(), true
	}
	return 0, false
}

// Status returns the server's account of itself and of the active it knows
// (one shard), or of the shards it owns (several).
func (s *Server) Status() tandem.ServerStatus {
	s.mu.RLock()
	ready, draining := s.ready, s.draining
	s.mu.RUnlock()
	st := tandem.ServerStatus{
		ID: s.cfg.ID, Cluster: s.cfg.Cluster, URL: s.cfg.URL, State: s.State(),
		AutoFailover: s.cfg.AutoFailover, PID: os.Getpid(), Version: tandem.Version, StartedAt: s.started,
		Shards: s.Shards(), Owned: s.core.Owned(), Ready: ready && !draining, Draining: draining,
	}
	if s.Shards() == 1 {
		if epoch, ok := s.ActiveEpoch(); ok {
			st.Epoch, st.ActiveID, st.ActiveURL = epoch, s.cfg.ID, s.cfg.URL
		} else if o := s.store.Owner(0); o != nil && o.ID != s.cfg.ID {
			st.Epoch, st.ActiveID, st.ActiveURL = o.Epoch, o.ID, o.URL
		}
	}
	st.Revision = s.store.Rev()
	st.Jobs = s.store.NumJobs()
	return st
}

// ActiveAnswering reports whether this server's probes find the server id
// answering (see prober.answering).
func (s *Server) ActiveAnswering(id string) bool {
	// Of id's ownership now: what the probes found of an earlier one does
	// not count.
	var lease, epoch int64
	for _, o := range s.store.Owners() {
		if o.ID == id {
			lease, epoch = o.Lease, max(epoch, o.Epoch)
		}
	}
	return s.probe.answering(id, lease, epoch, s.cfg.ProbeInterval)
}

// HandoffTarget returns, in a cluster of one shard with no active, the
// server a graceful failover under way hands the shard to (the hand-off key
// names it, and it is a live member), and whether there is one.
func (s *Server) HandoffTarget() (tandem.ServerRef, bool) {
	if s.Shards() != 1 || s.store.Owner(0) != nil {
		return tandem.ServerRef{}, false
	}
	h := s.store.Handoff(0)
	if h == nil {
		return tandem.ServerRef{}, false
	}
	si, ok := s.store.Server(h.To)
	if !ok || si.URL == "" {
		return tandem.ServerRef{}, false
	}
	return tandem.ServerRef{ID: si.ID, URL: si.URL}, true
}

// TermsChanged returns a channel closed the next time this server begins or
// ends a term.
func (s *Server) TermsChanged() <-chan struct{} { return s.core.Changed() }

// Changed returns a channel closed at the next change of this server's view.
func (s *Server) Changed() <-chan struct{} { return s.store.Changed() }

// RetryAfter is what a client should wait before retrying when no owner is known.
func (s *Server) RetryAfter() time.Duration { return s.cfg.LeaseTTL }

// Config returns the server's configuration.
func (s *Server) Config() Config { return s.cfg }

// group runs goroutines that Close waits for, and refuses new ones once
// Close has begun, so a request goroutine can never add to it while Close
// waits (a WaitGroup must not grow from zero during Wait).
type group struct {
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed bool
}

// Go runs f in a goroutine unless the group is closed; it reports whether it did.
func (g *group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Close refuses new goroutines and waits for the running ones.
func (g *group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
