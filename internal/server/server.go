// Package server is a tandem server: a master that takes part in the
// election, keeps a hot view of the cluster, and, while active, accepts jobs.
//
// One goroutine (run) owns every HA state change: campaigning, becoming
// active, stepping down, manual transitions and hand-offs all happen there,
// in order. Request handlers read the state through Status and ask for
// changes through commands sent to that goroutine.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/store"
)

// Config configures a Server.
type Config struct {
	ID      string // unique server ID within the cluster, e.g. rm1
	Cluster string // cluster name; keys live under /tandem/<cluster>/
	URL     string // the URL other servers and clients reach this server at
	// LeaseTTL bounds how long a crashed active keeps the leader key. It is
	// rounded up to whole seconds (etcd leases count seconds); etcd itself
	// raises it to its minimum (2 s with etcd's default timing).
	LeaseTTL time.Duration
	// AutoFailover makes standbys campaign on their own. Off, servers stay
	// standby until an operator makes one active.
	AutoFailover bool
	// ProbeInterval is how often a standby checks that the active answers.
	ProbeInterval time.Duration
	// DeposeDead lets a standby depose an active whose port refuses
	// connections (its process is gone) without waiting for its lease.
	DeposeDead bool
	// AgentTimeout is how long an agent may be silent before the active
	// declares it lost and retries its attempts elsewhere.
	AgentTimeout time.Duration
	// Failpoint, for tests only, makes the server crash at a chosen point.
	Failpoint string
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
		AgentTimeout:  10 * time.Second,
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
	if c.LeaseTTL < time.Second {
		return fmt.Errorf("lease TTL %s is too short: etcd leases count whole seconds, so use at least 1s", c.LeaseTTL)
	}
	if c.LeaseTTL > 5*time.Minute {
		return fmt.Errorf("lease TTL %s is too long: a crashed active would block the cluster that long (at most 5m)", c.LeaseTTL)
	}
	if c.AgentTimeout < 100*time.Millisecond {
		return fmt.Errorf("agent timeout %s is too short (at least 100ms)", c.AgentTimeout)
	}
	if c.Failpoint != "" && c.Failpoint != FailpointExitAfterAssign {
		return fmt.Errorf("unknown failpoint %q", c.Failpoint)
	}
	if c.Etcd == nil {
		return errors.New("no etcd client")
	}
	if c.ProbeInterval <= 0 {
		return fmt.Errorf("probe interval %s must be positive", c.ProbeInterval)
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
	elect   *election.Election
	metrics *metrics
	ids     idGen
	started time.Time

	mu          sync.RWMutex
	state       tandem.HAState
	epoch       int64 // our epoch while active
	activeCtx   context.Context
	stopActive  context.CancelFunc
	session     *concurrency.Session
	sitOutUntil time.Time     // auto mode: after a manual transition-to-standby, don't campaign until then
	recorded    chan struct{} // closed once the current term's failover event is written

	agents  agentTable
	waiting waitReasons
	jobMu   sync.Mutex // serializes the active's job writes (see mutate)
	cmds    chan command
	probe   prober
	health  healthCache
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped chan struct{}
}

// New returns a Server; Start runs it.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("server", cfg.ID)
	layout := keys.New(cfg.Cluster)
	s := &Server{
		cfg:     cfg,
		log:     log,
		keys:    layout,
		store:   store.New(cfg.Etcd, layout, log),
		elect:   election.New(cfg.Etcd, layout, cfg.ID, cfg.URL),
		started: time.Now(),
		state:   tandem.StateInitializing,
		cmds:    make(chan command),
		stopped: make(chan struct{}),
	}
	s.metrics = newMetrics(s)
	return s, nil
}

// Store returns the server's view of the cluster (read-only use).
func (s *Server) Store() *store.Store { return s.store }

// Start loads the cluster's state, registers this server and starts taking
// part in the election. It returns once the server is standby; ctx bounds
// the start-up only.
func (s *Server) Start(ctx context.Context) error {
	if err := s.store.Start(ctx); err != nil {
		return err
	}
	if err := s.newSession(ctx, true); err != nil {
		s.store.Close()
		return err
	}
	s.setState(tandem.StateStandby)
	s.log.Info("server started", "state", tandem.StateStandby, "url", s.cfg.URL,
		"auto_failover", s.cfg.AutoFailover, "lease_ttl", s.cfg.LeaseTTL.String(), "cluster", s.cfg.Cluster)
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.run(runCtx) }()
	go func() { defer s.wg.Done(); s.probe.run(runCtx, s) }()
	return nil
}

// newSession grants a fresh lease and registers this server under it. At
// start-up a record left by an earlier process with the same ID is waited
// out (it dies with that process's lease); a live duplicate is an error.
func (s *Server) newSession(ctx context.Context, startup bool) error {
	sess, err := concurrency.NewSession(s.cfg.Etcd, concurrency.WithTTL(s.cfg.ttlSeconds()))
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
		if !errors.Is(err, store.ErrDuplicateServer) || !startup || time.Now().After(deadline) {
			_ = sess.Close()
			if errors.Is(err, store.ErrDuplicateServer) {
				return fmt.Errorf("%w; give each server a unique --id", err)
			}
			return err
		}
		select {
		case <-ctx.Done():
			_ = sess.Close()
			return ctx.Err()
		case <-s.store.Changed():
		case <-time.After(250 * time.Millisecond):
		}
	}
	s.mu.Lock()
	s.session = sess
	s.mu.Unlock()
	return nil
}

func (s *Server) info(lease clientv3.LeaseID) tandem.ServerInfo {
	s.mu.RLock()
	st := s.state
	s.mu.RUnlock()
	if st == tandem.StateInitializing {
		st = tandem.StateStandby
	}
	return tandem.ServerInfo{ID: s.cfg.ID, URL: s.cfg.URL, State: st, PID: os.Getpid(),
		Version: tandem.Version, StartedAt: s.started, Lease: int64(lease)}
}

// Close stops the server gracefully: an active resigns first, so a standby
// takes over at once instead of after the lease TTL. Close waits for the
// server's goroutines and releases its lease.
func (s *Server) Close() error {
	select {
	case <-s.stopped:
		return nil
	default:
	}
	defer close(s.stopped)
	s.mu.Lock()
	wasActive, epoch := s.state == tandem.StateActive, s.epoch
	s.state = tandem.StateStopping
	if s.stopActive != nil {
		s.stopActive()
	}
	sess := s.session
	s.mu.Unlock()
	s.metrics.setState(tandem.StateStopping)
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	// Two seconds for resigning and leaving: enough with a quorum, and
	// without one they cannot succeed anyway (the lease then expires).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if wasActive {
		s.waitRecorded(ctx)
		if err := s.elect.Resign(ctx, epoch, tandem.CauseShutdown); err != nil {
			s.log.Warn("resign on shutdown failed; the lease will expire instead", "epoch", epoch, "err", err)
		} else {
			s.log.Info("resigned on shutdown", "epoch", epoch)
		}
	}
	if sess != nil {
		_ = s.store.Deregister(ctx, sess.Lease(), s.cfg.ID)
		_ = sess.Close() // revokes the lease: anything still bound to it goes
	}
	s.store.Close()
	s.log.Info("server stopped")
	return nil
}

// Lease returns the lease this server's keys are bound to (0 before Start).
func (s *Server) Lease() clientv3.LeaseID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.session == nil {
		return 0
	}
	return s.session.Lease()
}

func (s *Server) setState(st tandem.HAState) {
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
	s.metrics.setState(st)
}

// State returns this server's HA state: a cheap read for every request's
// headers and for /isActive probes, where Status would do much more.
func (s *Server) State() tandem.HAState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.state
}

// ActiveEpoch returns this server's epoch and true while it is active.
func (s *Server) ActiveEpoch() (int64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.epoch, s.state == tandem.StateActive
}

// Status returns the server's account of itself and of the active it knows.
func (s *Server) Status() tandem.ServerStatus {
	s.mu.RLock()
	st := tandem.ServerStatus{
		ID: s.cfg.ID, Cluster: s.cfg.Cluster, URL: s.cfg.URL, State: s.state,
		AutoFailover: s.cfg.AutoFailover, PID: os.Getpid(), Version: tandem.Version, StartedAt: s.started,
	}
	if s.state == tandem.StateActive {
		st.Epoch, st.ActiveID, st.ActiveURL = s.epoch, s.cfg.ID, s.cfg.URL
	}
	s.mu.RUnlock()
	if st.ActiveID == "" {
		if l := s.store.Leader(); l != nil && l.ID != s.cfg.ID {
			st.Epoch, st.ActiveID, st.ActiveURL = l.Epoch, l.ID, l.URL
		}
	}
	st.Revision = s.store.Rev()
	st.Jobs = s.store.NumJobs()
	return st
}

// ActiveAnswering reports whether this standby's probes find the active of
// epoch answering (see prober.answering).
func (s *Server) ActiveAnswering(epoch int64) bool {
	return s.probe.answering(epoch, s.cfg.ProbeInterval)
}

// RetryAfter is what a client should wait before retrying when no active is known.
func (s *Server) RetryAfter() time.Duration { return s.cfg.LeaseTTL }

// Config returns the server's configuration.
func (s *Server) Config() Config { return s.cfg }
