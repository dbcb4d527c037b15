package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
)

// The scale benchmark (issue 14, point 4): many jobs through a cluster with
// retention on, and many agents long-polling the active. Both use simulated
// agents: goroutines of the bench that speak the agent's real HTTP protocol
// (POST /v1/agent/sync, one session per server, epochs, sequence numbers,
// done reports kept until acknowledged, kicks) but run no process: an
// assignment is reported succeeded in the next sync. A million real
// processes would measure fork and exec on two cores, not tandem.

// Scale phases.
const (
	ScalePhaseJobs   = "jobs"
	ScalePhaseAgents = "agents"
	ScalePhaseAll    = "all"
)

// Agent sessions of the simulated agents in the agents phase.
const (
	SessionsAll    = "all"    // one per server, as internal/agent keeps
	SessionsActive = "active" // the active's only: standbys' CPU left out
)

// ScaleConfig configures RunScale. Zero values take the defaults noted.
type ScaleConfig struct {
	Binary string // the tandem binary to run servers and etcd with (required)
	Phase  string // jobs, agents or all (default all)

	Servers     int    // servers (default 3)
	Etcd        string // embedded (default) or external
	EtcdMembers int    // external etcd members (default 3)

	// Jobs phase.
	Jobs    int // jobs to submit and run (default 1000000)
	Clients int // concurrent submitting clients (default 32)
	// Backlog bounds the jobs submitted but not yet reported finished: the
	// clients wait while that many are in flight, so the run goes at the
	// rate the cluster sustains instead of piling up pending jobs (default
	// 1000).
	Backlog   int
	JobAgents int // simulated agents that run the jobs (default 20)
	// JobsDuration stops the submissions once it has passed, even if fewer
	// than Jobs were submitted (0: no limit).
	JobsDuration time.Duration
	Sample       time.Duration // time between two samples (default 10s)
	// Transitions makes three graceful failovers (tandem admin failover) in
	// the jobs phase, before the load, half-way (half the jobs submitted or
	// half JobsDuration passed) and after it, and reports
	// each one's transition time with the state the new active took over.
	Transitions bool

	// Agents phase.
	Agents        int           // simulated agents (default 1000)
	AgentSessions string        // all (default: one session per server, as real agents) or active
	PollWait      time.Duration // how long a server may hold a sync (default 2s, the agent's)
	// IdlePollWait is how long a server that owns no shard may hold a sync
	// (default 5s, the agent's; never less than PollWait).
	IdlePollWait time.Duration
	// AgentsIdle is the window measured with every agent connected and no
	// job (default 15s); AgentsDuration the one with jobs submitted at Rate
	// (default 60s, Rate default 50 a second).
	AgentsIdle     time.Duration
	AgentsDuration time.Duration
	Rate           float64

	// Retention, passed to every server (docs/RETENTION.md); short enough
	// that retention works during the run. RetentionAge 0 takes the
	// default 30s (retention cannot be turned off here: it is what the
	// jobs phase measures); RetentionKeep is taken as given (0 keeps none
	// beyond the age).
	RetentionAge      time.Duration // default 30s
	RetentionKeep     int
	RetentionInterval time.Duration // default 10s
	TombstoneTTL      time.Duration // default 1m
	CompactInterval   time.Duration // default 30s
	DefragInterval    time.Duration // default 2m
	DefragMinFree     int64         // default 16 MiB

	ServerArgs []string  // extra flags for every server
	BasePort   int       // default 29070
	DataDir    string    // "" for a temporary directory, removed at the end
	Out        io.Writer // progress and tables (nil: discarded)

	// onSubmitted, if set, is called with the ID of every acknowledged
	// submission of the jobs phase, from several goroutines; beforeStop,
	// with a client of the cluster once the phases are over, before the
	// cluster stops. Tests check with them what became of each job.
	onSubmitted func(id string)
	beforeStop  func(ctx context.Context, cl *client.Client) error
}

func (c *ScaleConfig) withDefaults() (ScaleConfig, error) {
	cfg := *c
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	defDur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	if cfg.Binary == "" {
		return cfg, errors.New("bench scale: the tandem binary path is required")
	}
	if cfg.Phase == "" {
		cfg.Phase = ScalePhaseAll
	}
	if cfg.Etcd == "" {
		cfg.Etcd = "embedded"
	}
	if cfg.AgentSessions == "" {
		cfg.AgentSessions = SessionsAll
	}
	def(&cfg.Servers, 3)
	def(&cfg.EtcdMembers, 3)
	def(&cfg.Jobs, 1000000)
	def(&cfg.Clients, 32)
	def(&cfg.Backlog, 1000)
	def(&cfg.JobAgents, 20)
	def(&cfg.Agents, 1000)
	def(&cfg.BasePort, 29070)
	defDur(&cfg.Sample, 10*time.Second)
	defDur(&cfg.PollWait, 2*time.Second)
	defDur(&cfg.IdlePollWait, 5*time.Second)
	cfg.IdlePollWait = max(cfg.IdlePollWait, cfg.PollWait)
	defDur(&cfg.AgentsIdle, 15*time.Second)
	defDur(&cfg.AgentsDuration, time.Minute)
	defDur(&cfg.RetentionAge, 30*time.Second)
	defDur(&cfg.RetentionInterval, 10*time.Second)
	defDur(&cfg.TombstoneTTL, time.Minute)
	defDur(&cfg.CompactInterval, 30*time.Second)
	defDur(&cfg.DefragInterval, 2*time.Minute)
	if cfg.Rate == 0 {
		cfg.Rate = 50
	}
	if cfg.DefragMinFree == 0 {
		cfg.DefragMinFree = 16 << 20
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	switch {
	case cfg.Phase != ScalePhaseJobs && cfg.Phase != ScalePhaseAgents && cfg.Phase != ScalePhaseAll:
		return cfg, fmt.Errorf("bench scale: phase must be jobs, agents or all, not %q", cfg.Phase)
	case cfg.Servers < 1 || cfg.Servers > 9:
		return cfg, fmt.Errorf("bench scale: servers must be from 1 to 9, not %d", cfg.Servers)
	case cfg.Etcd != "embedded" && cfg.Etcd != "external":
		return cfg, fmt.Errorf("bench scale: etcd must be embedded or external, not %q", cfg.Etcd)
	case cfg.EtcdMembers < 1 || cfg.EtcdMembers > 9:
		return cfg, fmt.Errorf("bench scale: external etcd members must be from 1 to 9, not %d", cfg.EtcdMembers)
	case cfg.Jobs < 1 || cfg.Clients < 1 || cfg.Backlog < 1 || cfg.JobAgents < 1 || cfg.Agents < 1:
		return cfg, fmt.Errorf("bench scale: jobs, clients, backlog, job agents and agents must be positive (%d, %d, %d, %d, %d)",
			cfg.Jobs, cfg.Clients, cfg.Backlog, cfg.JobAgents, cfg.Agents)
	case cfg.Agents > maxScaleAgents || cfg.JobAgents > maxScaleAgents:
		return cfg, fmt.Errorf("bench scale: at most %d simulated agents (%d, %d)", maxScaleAgents, cfg.JobAgents, cfg.Agents)
	case cfg.AgentSessions != SessionsAll && cfg.AgentSessions != SessionsActive:
		return cfg, fmt.Errorf("bench scale: agent sessions must be all or active, not %q", cfg.AgentSessions)
	case cfg.JobsDuration < 0:
		return cfg, errors.New("bench scale: the jobs phase's duration must not be negative")
	case cfg.Sample < 100*time.Millisecond:
		return cfg, fmt.Errorf("bench scale: the sample interval %s is too short (at least 100ms)", cfg.Sample)
	case cfg.PollWait < 0 || cfg.PollWait > time.Minute:
		return cfg, fmt.Errorf("bench scale: poll wait %s must be from 0 to 1m", cfg.PollWait)
	case cfg.IdlePollWait > time.Minute:
		return cfg, fmt.Errorf("bench scale: idle poll wait %s must be at most 1m", cfg.IdlePollWait)
	case cfg.AgentsIdle < 0 || cfg.AgentsDuration < time.Second:
		return cfg, fmt.Errorf("bench scale: the agents' idle window (%s) must not be negative and their load window (%s) at least 1s", cfg.AgentsIdle, cfg.AgentsDuration)
	case cfg.Rate <= 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0) || cfg.Rate > 100000:
		return cfg, fmt.Errorf("bench scale: rate %g must be above 0 and at most 100000 jobs a second", cfg.Rate)
	case cfg.RetentionAge < 0 || cfg.RetentionKeep < 0 || cfg.RetentionInterval < 0 || cfg.CompactInterval < 0 || cfg.DefragInterval < 0 || cfg.DefragMinFree < 0:
		return cfg, errors.New("bench scale: retention settings must not be negative")
	case cfg.TombstoneTTL < time.Second:
		return cfg, fmt.Errorf("bench scale: tombstone TTL %s is too short (at least 1s)", cfg.TombstoneTTL)
	case cfg.CompactInterval < time.Second:
		return cfg, fmt.Errorf("bench scale: etcd compaction interval %s is too short (at least 1s)", cfg.CompactInterval)
	case cfg.BasePort < 1024 || cfg.BasePort+1000 > 65535:
		return cfg, fmt.Errorf("bench scale: base port %d must be from 1024 to %d", cfg.BasePort, 65535-1000)
	}
	return cfg, nil
}

// maxScaleAgents bounds the simulated agents: each keeps a connection to
// every server open, in this process and in the servers.
const maxScaleAgents = 5000

// retentionArgs are the servers' flags for cfg's retention.
func (c *ScaleConfig) retentionArgs() []string {
	return []string{
		"--retention-age", c.RetentionAge.String(), "--retention-keep", strconv.Itoa(c.RetentionKeep),
		"--retention-interval", c.RetentionInterval.String(), "--retention-tombstone-ttl", c.TombstoneTTL.String(),
		"--etcd-compact-interval", c.CompactInterval.String(), "--etcd-defrag-interval", c.DefragInterval.String(),
		"--etcd-defrag-min-free", strconv.FormatInt(c.DefragMinFree, 10),
	}
}

// ScaleResult is what RunScale measured; it is also the JSON output.
type ScaleResult struct {
	Date      time.Time    `json:"date"`
	Topology  string       `json:"topology"`
	Phase     string       `json:"phase"`
	Retention []string     `json:"retention_flags"`
	NumCPU    int          `json:"num_cpu"`
	LoadAvg   float64      `json:"load_avg_1m"`
	Jobs      *ScaleJobs   `json:"jobs,omitempty"`
	Agents    *ScaleAgents `json:"agents,omitempty"`
	// Violations lists attempts the simulated agents were assigned by more
	// than one agent (I4), at most a few.
	Violations []string `json:"violations,omitempty"`
}

// ScaleJobs is the jobs phase: the time series and what it says.
type ScaleJobs struct {
	Target    int    `json:"target"`
	Agents    int    `json:"simulated_agents"`
	Clients   int    `json:"clients"`
	Backlog   int    `json:"backlog"`
	Submitted int64  `json:"submitted"` // acknowledged
	Failed    int64  `json:"failed"`    // submissions that returned an error
	FirstErr  string `json:"first_error,omitempty"`
	Finished  int64  `json:"finished"` // done reports acknowledged by the owner
	// Resent counts assignments received again for an attempt already
	// reported (harmless: the agent's ledger ignores them).
	Resent int64 `json:"assignments_resent"`
	// LoadS is the time from the first submission until the last job
	// submitted was reported finished (or the drain gave up).
	LoadS           float64           `json:"load_s"`
	SubmitsPerS     float64           `json:"submits_per_s"`
	FinishedPerS    float64           `json:"finished_per_s"`
	Samples         []ScaleSample     `json:"samples"`
	RetentionFirstS float64           `json:"retention_first_s"` // first sample with a removal, -1 if none
	Flat            []Flatness        `json:"flatness"`
	Transitions     []ScaleTransition `json:"transitions,omitempty"`
	CPU             *CPUReport        `json:"cpu,omitempty"`
	Mode            string            `json:"mode"`
}

// ScaleSample is one point of the jobs phase's time series.
type ScaleSample struct {
	T         float64 `json:"t_s"`
	Load      bool    `json:"load"` // taken while jobs were being submitted or run
	Submitted int64   `json:"submitted"`
	Finished  int64   `json:"finished"`
	SubmitPS  float64 `json:"submits_per_s"`
	FinishPS  float64 `json:"finished_per_s"`
	Active    string  `json:"active"`
	// ViewJobs is the jobs in the active's view (ServerStatus.Jobs); Live
	// those of them not finished (tandem_jobs on the active's /metrics).
	ViewJobs int64 `json:"view_jobs"`
	Live     int64 `json:"live_jobs"`
	Pending  int64 `json:"pending_jobs"` // of Live, not placed yet
	// StoredJobs, Tombstones and IdemKeys count keys in etcd: job records,
	// retention's tombstones (removed/...) and idempotency keys (idem/...,
	// on 24h leases).
	StoredJobs int64 `json:"etcd_jobs"`
	Tombstones int64 `json:"etcd_tombstones"`
	IdemKeys   int64 `json:"etcd_idem_keys"`
	// EtcdDB and EtcdInUse are the largest member's database file and its
	// bytes in use (etcd Status).
	EtcdDB    int64 `json:"etcd_db_bytes"`
	EtcdInUse int64 `json:"etcd_db_in_use_bytes"`
	// RSS and Heap are every server's resident set (/proc/<pid>/status)
	// and Go heap in use (go_memstats_heap_inuse_bytes), by server ID; with
	// embedded etcd a server's RSS holds its etcd member. Heap counts
	// garbage not yet collected, so it swings by up to GOGC percent between
	// collections; LiveHeap is the heap the server's last collection found live
	// (go_gc_heap_live_bytes), what a leak moves.
	RSS      map[string]int64 `json:"rss_bytes"`
	Heap     map[string]int64 `json:"heap_inuse_bytes"`
	LiveHeap map[string]int64 `json:"heap_live_bytes"`
	// Removed is the jobs retention removed so far, over every server.
	Removed int64 `json:"retention_removed"`
	// ActiveCores is the CPU the active used since the previous sample, in
	// cores.
	ActiveCores float64 `json:"active_cores"`
}

// Flatness compares a measure's middle and last thirds of the samples
// taken under load after retention first removed something.
type Flatness struct {
	Measure string  `json:"measure"`
	Middle  float64 `json:"middle"`
	Last    float64 `json:"last"`
	// Change is (Last - Middle) / Middle.
	Change float64 `json:"change"`
	// Per100k is the change per 100000 jobs finished between the two thirds'
	// midpoints.
	Per100k float64 `json:"per_100k_jobs"`
	Unit    string  `json:"unit"`
	Verdict string  `json:"verdict"`
}

// ScaleTransition is one graceful failover of the jobs phase.
type ScaleTransition struct {
	When        string   `json:"when"`
	From        string   `json:"from"`
	To          string   `json:"to"`
	ViewJobs    int64    `json:"view_jobs"`
	StoredJobs  int64    `json:"etcd_jobs"`
	EtcdKeys    int64    `json:"etcd_keys"`
	ElectionS   *float64 `json:"election_s,omitempty"`
	TransitionS *float64 `json:"transition_s,omitempty"`
}

// ScaleAgents is the agents phase.
type ScaleAgents struct {
	Agents       int    `json:"agents"`
	Sessions     string `json:"sessions"`
	PollWait     string `json:"poll_wait"`
	IdlePollWait string `json:"idle_poll_wait"`
	Active       string `json:"active"`
	// RegisterS is how long it took every agent to have an answer from the
	// active.
	RegisterS float64 `json:"register_s"`
	// Baseline is the active with no agent; Idle with every agent
	// connected and no job; Load with jobs at Rate.
	Baseline AgentsWindow `json:"baseline"`
	Idle     AgentsWindow `json:"idle"`
	// MarginalPerSyncUS is the active's CPU per sync in the idle window
	// above the baseline's: what one long poll costs it.
	MarginalPerSyncUS float64        `json:"marginal_cpu_us_per_sync"`
	Load              AgentsWindow   `json:"load"`
	Rate              float64        `json:"rate"`
	Submitted         int            `json:"submitted"`
	Failed            int            `json:"failed"`
	Assigned          int            `json:"assigned"`
	Early             int            `json:"assigned_before_ack"`
	Latency           Summary        `json:"assignment_latency_s"`
	P99Goal           float64        `json:"p99_goal_s"`
	Unplaced          int            `json:"not_assigned_within_drain"`
	CPU               *CPUReport     `json:"cpu,omitempty"`
	IdleCPU           *CPUReport     `json:"idle_cpu,omitempty"`
	Errors            map[string]int `json:"sync_errors,omitempty"`
}

// AgentsWindow is one measured window of the agents phase.
type AgentsWindow struct {
	S float64 `json:"s"`
	// Syncs are the answers the active gave the simulated agents in the
	// window (counted by the agents), AllSyncs those of every server.
	Syncs    int64 `json:"active_syncs"`
	AllSyncs int64 `json:"all_syncs"`
	// ActiveCPUS is the active's CPU time in the window (user+sys); per sync
	// in microseconds; Cores over the window.
	ActiveCPUS   float64 `json:"active_cpu_s"`
	CPUPerSyncUS float64 `json:"active_cpu_us_per_sync"`
	Cores        float64 `json:"active_cores"`
	// Failovers counts changes of active in the window (the HA history):
	// with any, its figures mix servers.
	Failovers int `json:"failovers"`
}

// scaleMode is what the simulated agents do, said in every result.
const scaleMode = "simulated agents: real HTTP long polls (POST /v1/agent/sync), no process run; each assignment is reported succeeded in the next sync"

// Failed says whether a promise was broken: an attempt handed to two agents (I4).
func (r *ScaleResult) Failed() error {
	if len(r.Violations) > 0 {
		return fmt.Errorf("an attempt was assigned to more than one agent (I4): %s", strings.Join(r.Violations, "; "))
	}
	return nil
}

// RunScale starts a local cluster (cfg.Servers server processes with
// embedded or external etcd and the retention of cfg; no agent process)
// and runs the phases of cfg.Phase on it:
//
//   - jobs: cfg.JobAgents simulated agents; cfg.Clients failover clients
//     submit cfg.Jobs jobs, at most cfg.Backlog unfinished at a time; every
//     cfg.Sample the bench samples the rates, the jobs in etcd and in the
//     active's view, etcd's database, every server's RSS and Go heap, and
//     what retention removed; with cfg.Transitions, graceful failovers
//     before, half-way and after. It then compares the middle and last
//     thirds of the samples (after retention first removed something).
//   - agents: cfg.Agents simulated agents; the active's CPU per sync with
//     no job, then with jobs submitted at cfg.Rate for cfg.AgentsDuration,
//     and each job's assignment latency: from its submission's
//     acknowledgement to a simulated agent receiving its assignment.
//
// It prints tables to cfg.Out and stops the cluster before returning, also
// when ctx ends or a step fails.
func RunScale(ctx context.Context, cfg ScaleConfig) (res *ScaleResult, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	out := cfg.Out
	raiseFileLimit(out, 3*max(cfg.Agents, cfg.JobAgents)*cfg.Servers+4096)
	dir := cfg.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tandem-bench-scale-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	} else if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	lcfg := local.Config{Binary: cfg.Binary, Servers: cfg.Servers, BasePort: cfg.BasePort, DataDir: dir, Cluster: benchCluster,
		ExtraArgs: append(cfg.retentionArgs(), cfg.ServerArgs...)}
	if cfg.Etcd == "external" {
		lcfg.ExternalEtcd = cfg.EtcdMembers
	}
	lc, err := local.New(lcfg)
	if err != nil {
		return nil, fmt.Errorf("bench scale: %w", err)
	}
	topo := fmt.Sprintf("%d servers, 1 shard, %s etcd", cfg.Servers, cfg.Etcd)
	if cfg.Etcd == "external" {
		topo = fmt.Sprintf("%d servers, 1 shard, external etcd (%d)", cfg.Servers, cfg.EtcdMembers)
	}
	res = &ScaleResult{Date: time.Now().UTC(), Topology: topo, Phase: cfg.Phase, Retention: cfg.retentionArgs(),
		NumCPU: runtime.NumCPU(), LoadAvg: LoadAvg()}
	fmt.Fprintf(out, "starting %s in %s; retention %s\n", topo, dir, strings.Join(cfg.retentionArgs(), " "))
	startCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	err = lc.Start(startCtx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("start the cluster: %w", err)
	}
	defer func() {
		fmt.Fprintln(out, "stopping the cluster")
		lc.Stop(10 * time.Second)
	}()
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = lc.WaitActive(waitCtx)
	cancel()
	if err != nil {
		return nil, err
	}
	cli, err := clusterEtcd(lc, lc.EtcdEndpoints()...)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	admin, err := clusterClient(lc, lc.URLs())
	if err != nil {
		return nil, err
	}
	ledger := &simLedger{by: make(map[string]*simAgent)}
	env := &scaleEnv{cfg: cfg, lc: lc, cli: cli, admin: admin, layout: keys.New(benchCluster), ledger: ledger}

	if cfg.Phase == ScalePhaseJobs || cfg.Phase == ScalePhaseAll {
		res.Jobs, err = env.jobsPhase(ctx)
		if err != nil {
			return nil, fmt.Errorf("jobs phase: %w", err)
		}
	}
	if cfg.Phase == ScalePhaseAgents || cfg.Phase == ScalePhaseAll {
		res.Agents, err = env.agentsPhase(ctx)
		if err != nil {
			return nil, fmt.Errorf("agents phase: %w", err)
		}
	}
	res.Violations = ledger.violations()
	if cfg.beforeStop != nil {
		if err := cfg.beforeStop(ctx, admin); err != nil {
			return nil, err
		}
	}
	fmt.Fprintln(out)
	res.Print(out)
	return res, nil
}

// raiseFileLimit raises this process's open-file limit to at least want
// (up to the hard limit): every simulated session is a connection here.
// The servers started afterwards inherit it.
func raiseFileLimit(out io.Writer, want int) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur >= uint64(want) {
		return
	}
	rl.Cur = min(uint64(want), rl.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintf(out, "note: cannot raise the open-file limit to %d: %v\n", want, err)
		return
	}
	if rl.Cur < uint64(want) {
		fmt.Fprintf(out, "note: the open-file limit is %d (hard limit), below the %d this run may need\n", rl.Cur, want)
	}
}

// serveAgentAddress serves, on a loopback port, what a server may dial at a
// simulated agent's registered URL, and returns that URL. A server that
// sees an agent's poll cut dials it, and declares the agent crashed if the
// dial is refused (internal/server/crash.go): a fleet's address lives as
// long as the fleet, as a real agent's listener lives with its process.
func serveAgentAddress() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen for the simulated agents: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok","id":"simulated"}`+"\n")
	})}
	go func() { _ = srv.Serve(ln) }() // ends with Close
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// scaleEnv is what both phases share.
type scaleEnv struct {
	cfg    ScaleConfig
	lc     *local.Cluster
	cli    *clientv3.Client
	admin  *client.Client
	layout keys.Layout
	ledger *simLedger
	fleets int // simulated fleets started, for unique agent IDs
}

// ---- jobs phase ----

func (e *scaleEnv) jobsPhase(ctx context.Context) (*ScaleJobs, error) {
	cfg, out := e.cfg, e.cfg.Out
	res := &ScaleJobs{Target: cfg.Jobs, Agents: cfg.JobAgents, Clients: cfg.Clients, Backlog: cfg.Backlog, Mode: scaleMode, RetentionFirstS: -1}
	fmt.Fprintf(out, "\n== jobs phase: %d jobs, %d clients, at most %d unfinished, %d simulated agents (%s)\n",
		cfg.Jobs, cfg.Clients, cfg.Backlog, cfg.JobAgents, scaleMode)
	slots := make(chan struct{}, cfg.Backlog)
	fleet, err := e.startFleet(ctx, cfg.JobAgents, e.lc.URLs(), fleetOpts{onDone: func() {
		select {
		case <-slots:
		default:
		}
	}})
	if err != nil {
		return nil, err
	}
	defer fleet.stop()
	if err := fleet.waitRegistered(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	if cfg.Transitions {
		tr, err := e.switchover(ctx, "before the load")
		if err != nil {
			return nil, err
		}
		res.Transitions = append(res.Transitions, tr)
	}

	procs := clusterProcesses(e.lc)
	cpu0, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	var (
		next      atomic.Int64
		submitted atomic.Int64
		failed    atomic.Int64
		errMu     sync.Mutex
		firstErr  error
		wg        sync.WaitGroup
	)
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	if cfg.JobsDuration > 0 {
		time.AfterFunc(cfg.JobsDuration, stopLoad)
	}
	start := time.Now()
	for g := 0; g < cfg.Clients; g++ {
		cl, err := clusterClient(e.lc, rotate(e.lc.URLs(), g))
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				i := next.Add(1)
				if i > int64(cfg.Jobs) {
					return
				}
				select {
				case slots <- struct{}{}:
				case <-lctx.Done():
					return
				}
				spec := tandem.JobSpec{Name: fmt.Sprintf("scale-%d", i), Command: []string{"true"}}
				// A submission under way when the load stops is finished, so
				// that every job the cluster created is counted.
				job, err := cl.SubmitJob(ctx, spec, client.SubmitOptions{})
				if err != nil {
					select {
					case <-slots:
					default:
					}
					if ctx.Err() != nil {
						return
					}
					failed.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				submitted.Add(1)
				if cfg.onSubmitted != nil {
					cfg.onSubmitted(job.ID)
				}
			}
		}()
	}
	submitDone := make(chan struct{})
	go func() { wg.Wait(); close(submitDone) }()

	smp := &sampler{env: e, start: start, submitted: &submitted, finished: &fleet.finished}
	if err := smp.take(ctx, true); err != nil {
		return nil, err
	}
	tick := time.NewTicker(cfg.Sample)
	defer tick.Stop()
	midDone := !cfg.Transitions
	var loadEnd time.Time
	drainLimit := time.Duration(0)
	// Under load until every submission has returned and every job
	// submitted is reported finished; a drain that makes no progress for a
	// minute gives up.
	lastProgress, lastFinished := time.Now(), int64(-1)
	for loadEnd.IsZero() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		if err := smp.take(ctx, true); err != nil {
			return nil, err
		}
		s := smp.last()
		fmt.Fprintf(out, "  %5.0fs  submitted %d  finished %d  %.0f/s  live %d (pending %d)  etcd %s (in use %s)  active %s rss %s heap %s (live %s)  removed %d\n",
			s.T, s.Submitted, s.Finished, s.FinishPS, s.Live, s.Pending, mib(s.EtcdDB), mib(s.EtcdInUse), s.Active, mib(s.RSS[s.Active]), mib(s.Heap[s.Active]), mib(s.LiveHeap[s.Active]), s.Removed)
		half := submitted.Load() >= int64(cfg.Jobs)/2 || cfg.JobsDuration > 0 && time.Since(start) >= cfg.JobsDuration/2
		if !midDone && half {
			midDone = true
			tr, err := e.switchover(ctx, "half-way, under load")
			if err != nil {
				return nil, err
			}
			res.Transitions = append(res.Transitions, tr)
		}
		select {
		case <-submitDone:
			f := fleet.finished.Load()
			if f != lastFinished {
				lastFinished, lastProgress = f, time.Now()
			}
			if f >= submitted.Load() {
				loadEnd = time.Now()
			} else if time.Since(lastProgress) > time.Minute {
				loadEnd = time.Now()
				drainLimit = time.Minute
			}
		default:
		}
	}
	cpu1, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	res.Submitted, res.Failed, res.Finished = submitted.Load(), failed.Load(), fleet.finished.Load()
	res.Resent = fleet.resent.Load()
	if firstErr != nil {
		res.FirstErr = firstErr.Error()
	}
	res.LoadS = loadEnd.Sub(start).Seconds()
	res.SubmitsPerS = float64(res.Submitted) / res.LoadS
	res.FinishedPerS = float64(res.Finished) / res.LoadS
	c := cpuBetween(procs, cpu0, cpu1, int(res.Finished))
	res.CPU = &c
	if drainLimit > 0 {
		fmt.Fprintf(out, "  note: %d jobs submitted were not reported finished; no progress for %s\n", res.Submitted-res.Finished, drainLimit)
	}

	// After the load: retention takes the view and etcd down to what it
	// keeps; a few more samples show where they settle.
	settle := cfg.RetentionAge + 2*cfg.RetentionInterval
	fmt.Fprintf(out, "  load over after %.0fs; sampling %s more while retention settles\n", res.LoadS, settle)
	settleEnd := time.Now().Add(settle)
	for time.Now().Before(settleEnd) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		if err := smp.take(ctx, false); err != nil {
			return nil, err
		}
	}
	if cfg.Transitions {
		tr, err := e.switchover(ctx, "after the load, retention settled")
		if err != nil {
			return nil, err
		}
		res.Transitions = append(res.Transitions, tr)
	}
	res.Samples = smp.samples
	for _, s := range res.Samples {
		if s.Removed > 0 {
			res.RetentionFirstS = s.T
			break
		}
	}
	res.Flat = flatness(res.Samples, res.RetentionFirstS)
	if err := e.waitGone(ctx, fleet, time.Minute); err != nil {
		return nil, err
	}
	return res, nil
}

// switchover hands the active's leadership to the next server (tandem
// admin failover) and returns the failover's record, with the state the new
// active took over.
func (e *scaleEnv) switchover(ctx context.Context, when string) (ScaleTransition, error) {
	tr := ScaleTransition{When: when}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	a, err := e.lc.WaitActive(wctx)
	cancel()
	if err != nil {
		return tr, err
	}
	st, err := e.lc.Status(ctx, a)
	if err != nil {
		return tr, err
	}
	tr.ViewJobs = int64(st.Jobs)
	tr.StoredJobs, _ = e.count(ctx, e.layout.JobsPrefix())
	tr.EtcdKeys, _ = e.count(ctx, e.layout.Prefix())
	if len(e.lc.Servers) < 2 {
		return tr, errors.New("a failover needs at least 2 servers")
	}
	to := e.lc.Servers[(a+1)%len(e.lc.Servers)].ID
	tr.From, tr.To = st.ID, to
	fmt.Fprintf(e.cfg.Out, "  failover %s -> %s (%s; %d jobs in the view, %d in etcd)\n", st.ID, to, when, tr.ViewJobs, tr.StoredJobs)
	if _, err := e.admin.Failover(ctx, e.lc.Servers[a].URL, tandem.HandoffRequest{From: st.ID, To: to}); err != nil {
		return tr, fmt.Errorf("failover %s -> %s: %w", st.ID, to, err)
	}
	ev, err := eventAfter(ctx, e.admin, st.Epoch)
	if err != nil {
		return tr, err
	}
	tr.To, tr.ElectionS, tr.TransitionS = ev.ActiveID, ev.ElectionS, ev.TransitionS
	return tr, nil
}

// count counts the keys under prefix in etcd.
func (e *scaleEnv) count(ctx context.Context, prefix string) (int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := e.cli.Get(cctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", prefix, err)
	}
	return resp.Count, nil
}

// sampler takes the jobs phase's samples.
type sampler struct {
	env                 *scaleEnv
	start               time.Time
	submitted, finished *atomic.Int64
	samples             []ScaleSample
	prevCPU             map[int]time.Duration // by PID
	prevAt              time.Time
}

func (s *sampler) last() ScaleSample { return s.samples[len(s.samples)-1] }

// take appends a sample. Only a failure to read what must be there (the
// servers' processes) fails it; a figure that cannot be read this time
// (a server busy past the timeout) is left at zero.
func (s *sampler) take(ctx context.Context, load bool) error {
	e := s.env
	now := time.Now()
	sm := ScaleSample{T: now.Sub(s.start).Seconds(), Load: load, Submitted: s.submitted.Load(), Finished: s.finished.Load(),
		RSS: map[string]int64{}, Heap: map[string]int64{}, LiveHeap: map[string]int64{}}
	if n := len(s.samples); n > 0 {
		p := s.samples[n-1]
		if dt := sm.T - p.T; dt > 0 {
			sm.SubmitPS = float64(sm.Submitted-p.Submitted) / dt
			sm.FinishPS = float64(sm.Finished-p.Finished) / dt
		}
	}
	cpu := map[int]time.Duration{}
	activePID := 0
	for i, srv := range e.lc.Servers {
		pid := srv.PID()
		if pid == 0 {
			continue
		}
		if rss, err := ProcRSS(pid); err == nil {
			sm.RSS[srv.ID] = rss
		}
		if d, err := ProcCPU(pid); err == nil {
			cpu[pid] = d
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := e.lc.Status(sctx, i)
		m, merr := scrapeMetrics(sctx, e.lc, srv.URL)
		cancel()
		if merr == nil {
			sm.Heap[srv.ID] = int64(m.get("go_memstats_heap_inuse_bytes"))
			sm.LiveHeap[srv.ID] = int64(m.get("go_gc_heap_live_bytes"))
			sm.Removed += int64(m.get(`tandem_retention_removed_total{kind="jobs"}`))
		}
		if err == nil && st.State == tandem.StateActive {
			sm.Active, activePID = st.ID, pid
			sm.ViewJobs = int64(st.Jobs)
			if merr == nil {
				for _, state := range []tandem.JobState{tandem.JobPending, tandem.JobScheduled, tandem.JobRunning} {
					sm.Live += int64(m.get(`tandem_jobs{state="` + string(state) + `"}`))
				}
				sm.Pending = int64(m.get(`tandem_jobs{state="pending"}`))
			}
		}
	}
	if activePID != 0 && s.prevCPU != nil {
		if p, ok := s.prevCPU[activePID]; ok {
			sm.ActiveCores = (cpu[activePID] - p).Seconds() / now.Sub(s.prevAt).Seconds()
		}
	}
	s.prevCPU, s.prevAt = cpu, now
	sm.StoredJobs, _ = e.count(ctx, e.layout.JobsPrefix())
	sm.Tombstones, _ = e.count(ctx, e.layout.Prefix()+"removed/")
	sm.IdemKeys, _ = e.count(ctx, e.layout.IdemPrefix())
	for _, ep := range e.lc.EtcdEndpoints() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := e.cli.Status(sctx, ep)
		cancel()
		if err == nil {
			sm.EtcdDB = max(sm.EtcdDB, st.DbSize)
			sm.EtcdInUse = max(sm.EtcdInUse, st.DbSizeInUse)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.samples = append(s.samples, sm)
	return nil
}

// ProcRSS returns the resident set size of process pid, in bytes, from
// /proc/<pid>/status (VmRSS).
func ProcRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("read the memory of process %d: %w", pid, err)
	}
	return parseVmRSS(b)
}

func parseVmRSS(b []byte) (int64, error) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("VmRSS line %q: want <n> kB", line)
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS: %w", err)
		}
		return kb << 10, nil
	}
	return 0, errors.New("no VmRSS line (a kernel thread, or a zombie)")
}

// metricSet is a Prometheus text exposition: each series's value by its
// name and labels as written ("name" or `name{k="v"}`).
type metricSet map[string]float64

func (m metricSet) get(series string) float64 { return m[series] }

// scrapeMetrics reads a server's /metrics.
func scrapeMetrics(ctx context.Context, lc *local.Cluster, base string) (metricSet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	lc.Authorize(req)
	resp, err := lc.HTTPClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s/metrics: HTTP %d", base, resp.StatusCode)
	}
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (metricSet, error) {
	m := metricSet{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		// The value follows the series; label values may hold spaces, so
		// split after the closing brace when there is one.
		cut := strings.LastIndexByte(line, '}')
		if cut < 0 {
			cut = strings.IndexByte(line, ' ')
		} else {
			cut++
		}
		if cut <= 0 || cut >= len(line) {
			continue
		}
		f := strings.Fields(line[cut:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[strings.TrimSpace(line[:cut])] = v
	}
	return m, sc.Err()
}

// flatness compares the middle and last thirds of the samples taken under
// load from retentionFirst on, for each measure that should stay flat.
func flatness(samples []ScaleSample, retentionFirst float64) []Flatness {
	var use []ScaleSample
	for _, s := range samples {
		if s.Load && retentionFirst >= 0 && s.T >= retentionFirst {
			use = append(use, s)
		}
	}
	type measure struct {
		name, unit string
		v          func(ScaleSample) float64
	}
	ms := []measure{
		{"etcd db size", "MiB", func(s ScaleSample) float64 { return float64(s.EtcdDB) / (1 << 20) }},
		{"etcd db in use", "MiB", func(s ScaleSample) float64 { return float64(s.EtcdInUse) / (1 << 20) }},
		{"active RSS", "MiB", func(s ScaleSample) float64 { return float64(s.RSS[s.Active]) / (1 << 20) }},
		{"active Go heap", "MiB", func(s ScaleSample) float64 { return float64(s.Heap[s.Active]) / (1 << 20) }},
		{"active live heap (last GC)", "MiB", func(s ScaleSample) float64 { return float64(s.LiveHeap[s.Active]) / (1 << 20) }},
		{"largest live heap (last GC)", "MiB", func(s ScaleSample) float64 { return float64(maxOf(s.LiveHeap)) / (1 << 20) }},
		{"largest server RSS", "MiB", func(s ScaleSample) float64 { return float64(maxOf(s.RSS)) / (1 << 20) }},
		{"jobs in the active's view", "jobs", func(s ScaleSample) float64 { return float64(s.ViewJobs) }},
		{"job records in etcd", "keys", func(s ScaleSample) float64 { return float64(s.StoredJobs) }},
		{"tombstones in etcd", "keys", func(s ScaleSample) float64 { return float64(s.Tombstones) }},
		{"idempotency keys in etcd", "keys", func(s ScaleSample) float64 { return float64(s.IdemKeys) }},
		{"jobs finished a second", "/s", func(s ScaleSample) float64 { return s.FinishPS }},
		{"submissions a second", "/s", func(s ScaleSample) float64 { return s.SubmitPS }},
	}
	if len(use) < 6 {
		out := make([]Flatness, 0, len(ms))
		for _, m := range ms {
			out = append(out, Flatness{Measure: m.name, Unit: m.unit, Verdict: fmt.Sprintf("too few samples under load after retention began (%d, want 6)", len(use))})
		}
		return out
	}
	n := len(use) / 3
	mid, last := use[len(use)-2*n:len(use)-n], use[len(use)-n:]
	midJobs := float64(mid[len(mid)/2].Finished)
	lastJobs := float64(last[len(last)/2].Finished)
	var out []Flatness
	for _, m := range ms {
		f := Flatness{Measure: m.name, Unit: m.unit, Middle: meanOf(mid, m.v), Last: meanOf(last, m.v)}
		if f.Middle != 0 {
			f.Change = (f.Last - f.Middle) / math.Abs(f.Middle)
		}
		if lastJobs > midJobs {
			f.Per100k = (f.Last - f.Middle) / (lastJobs - midJobs) * 100000
		}
		switch {
		case math.Abs(f.Change) <= 0.10:
			f.Verdict = "flat (within 10%)"
		case f.Change > 0:
			f.Verdict = "growing"
		default:
			f.Verdict = "falling"
		}
		out = append(out, f)
	}
	return out
}

func meanOf(ss []ScaleSample, v func(ScaleSample) float64) float64 {
	var sum float64
	for _, s := range ss {
		sum += v(s)
	}
	return sum / float64(len(ss))
}

func maxOf(m map[string]int64) int64 {
	var best int64
	for _, v := range m {
		best = max(best, v)
	}
	return best
}

func mib(b int64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }

// ---- agents phase ----

func (e *scaleEnv) agentsPhase(ctx context.Context) (*ScaleAgents, error) {
	cfg, out := e.cfg, e.cfg.Out
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	a, err := e.lc.WaitActive(wctx)
	cancel()
	if err != nil {
		return nil, err
	}
	active := e.lc.Servers[a]
	res := &ScaleAgents{Agents: cfg.Agents, Sessions: cfg.AgentSessions, PollWait: cfg.PollWait.String(), IdlePollWait: cfg.IdlePollWait.String(), Active: active.ID,
		Rate: cfg.Rate, P99Goal: 0.100}
	urls := e.lc.URLs()
	follow := cfg.AgentSessions == SessionsActive
	sessions := len(urls)
	if follow {
		sessions = 1
	}
	fmt.Fprintf(out, "\n== agents phase: %d simulated agents, sessions with %s (%d each), poll wait %s (%s to a server that owns no shard); active %s (pid %d)\n",
		cfg.Agents, cfg.AgentSessions, sessions, cfg.PollWait, cfg.IdlePollWait, active.ID, active.PID())
	procs := clusterProcesses(e.lc)
	activeIdx := slices.Index(urls, active.URL)
	var fleet *simFleet
	syncs := func() (int64, int64) {
		if fleet == nil {
			return 0, 0
		}
		return fleet.syncs[activeIdx].Load(), fleet.allSyncs()
	}
	window := func(d time.Duration, during func(ctx context.Context)) (AgentsWindow, *CPUReport, error) {
		var w AgentsWindow
		c0, err := sampleCPU(procs)
		if err != nil {
			return w, nil, err
		}
		s0, all0 := syncs()
		dctx, cancel := context.WithTimeout(ctx, d)
		if during != nil {
			during(dctx)
		} else {
			<-dctx.Done()
		}
		cancel()
		if ctx.Err() != nil {
			return w, nil, ctx.Err()
		}
		c1, err := sampleCPU(procs)
		if err != nil {
			return w, nil, err
		}
		w.S = c1.at.Sub(c0.at).Seconds()
		if h, err := e.admin.History(ctx); err == nil {
			for _, ev := range h {
				if ev.Time.After(c0.at) {
					w.Failovers++
				}
			}
		}
		s1, all1 := syncs()
		w.Syncs, w.AllSyncs = s1-s0, all1-all0
		w.ActiveCPUS = (c1.cpu[active.ID] - c0.cpu[active.ID]).Seconds()
		w.Cores = w.ActiveCPUS / w.S
		if w.Syncs > 0 {
			w.CPUPerSyncUS = w.ActiveCPUS * 1e6 / float64(w.Syncs)
		}
		rep := cpuBetween(procs, c0, c1, int(w.Syncs))
		return w, &rep, nil
	}

	if cfg.AgentsIdle > 0 {
		// What the active costs with no agent at all (leases, probes, its
		// etcd member's heartbeats): the idle window's CPU above it is the
		// agents' long polls.
		fmt.Fprintf(out, "  baseline window: %s, no agent\n", cfg.AgentsIdle)
		if res.Baseline, _, err = window(cfg.AgentsIdle, nil); err != nil {
			return nil, err
		}
	}
	tr := &assignTracker{acked: map[string]time.Time{}, got: map[string]time.Time{}}
	t0 := time.Now()
	fleet, err = e.startFleet(ctx, cfg.Agents, urls, fleetOpts{follow: follow, active: a, track: tr})
	if err != nil {
		return nil, err
	}
	defer fleet.stop()
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	go func() { // ends with fctx
		for sleepFor(fctx, 500*time.Millisecond) {
			if i := e.lc.Active(fctx); i >= 0 {
				fleet.active.Store(int32(i))
			}
		}
	}()
	if err := fleet.waitRegistered(ctx, 3*time.Minute); err != nil {
		return nil, err
	}
	res.RegisterS = time.Since(t0).Seconds()
	fmt.Fprintf(out, "  every agent answered by the active after %.1fs\n", res.RegisterS)
	if cfg.AgentsIdle > 0 {
		fmt.Fprintf(out, "  idle window: %s, no job\n", cfg.AgentsIdle)
		var rep *CPUReport
		res.Idle, rep, err = window(cfg.AgentsIdle, nil)
		if err != nil {
			return nil, err
		}
		res.IdleCPU = rep
		if res.Idle.Syncs > 0 {
			extra := res.Idle.Cores - res.Baseline.Cores
			res.MarginalPerSyncUS = extra * res.Idle.S * 1e6 / float64(res.Idle.Syncs)
		}
	}
	cl, err := clusterClient(e.lc, e.lc.URLs())
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "  load window: %s, %g jobs a second (active %s, pid %d)\n", cfg.AgentsDuration, cfg.Rate, active.ID, active.PID())
	var (
		mu        sync.Mutex
		submitted []string
		failed    int
	)
	tr.on()
	var rep *CPUReport
	res.Load, rep, err = window(cfg.AgentsDuration, func(wctx context.Context) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		every := time.Duration(float64(time.Second) / cfg.Rate)
		tk := time.NewTicker(max(every, time.Microsecond))
		defer tk.Stop()
		for i := 0; ; i++ {
			select {
			case <-wctx.Done():
				wg.Wait()
				return
			case <-tk.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				mu.Lock()
				failed++ // the cluster is this far behind: counted, not queued
				mu.Unlock()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				// The submission is not cut short by the window's end: its
				// job is measured like the others.
				job, err := cl.SubmitJob(context.WithoutCancel(wctx), tandem.JobSpec{Name: fmt.Sprintf("scale-agents-%d", i), Command: []string{"true"}}, client.SubmitOptions{})
				at := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failed++
					return
				}
				submitted = append(submitted, job.ID)
				tr.submitted(job.ID, at)
			}()
		}
	})
	if err != nil {
		return nil, err
	}
	res.CPU = rep
	res.Submitted, res.Failed = len(submitted), failed
	// The last jobs' assignments may still be on their way.
	res.Unplaced = tr.waitAll(ctx, submitted, 30*time.Second)
	res.Assigned, res.Early, res.Latency = tr.summary()
	res.Errors = fleet.errorCounts()
	if n := fleet.refused.Load(); n > 0 {
		res.Errors["refused: older epoch"] = int(n)
	}
	return res, nil
}

// ---- simulated agents ----

// simFleet is a set of simulated agents, each with a sync session per
// server of servers (index i in syncs is servers[i]).
type simFleet struct {
	hc       *http.Client
	servers  []string
	pollWait time.Duration
	idleWait time.Duration // for a session whose server owns no shard
	ledger   *simLedger
	track    *assignTracker // nil: latencies not measured
	onDone   func()         // called once per acknowledged done report
	agents   []*simAgent

	syncs    []atomic.Int64 // answers, by server index
	active   atomic.Int32   // index of the active in servers, for sessions that follow it
	finished atomic.Int64   // done reports acknowledged
	resent   atomic.Int64
	refused  atomic.Int64

	registered   atomic.Int64 // agents answered by an owner at least once
	registeredCh chan struct{}
	regOnce      sync.Once

	errMu    sync.Mutex
	errs     map[string]int // sync failures by kind
	cancel   context.CancelFunc
	stopAddr func()
	wg       sync.WaitGroup
}

func (f *simFleet) allSyncs() int64 {
	var n int64
	for i := range f.syncs {
		n += f.syncs[i].Load()
	}
	return n
}

func (f *simFleet) errorCounts() map[string]int {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return maps.Clone(f.errs)
}

func (f *simFleet) failed(err error) {
	kind := "other"
	var te *tandem.Error
	switch {
	case errors.As(err, &te):
		kind = string(te.Code)
	case errors.Is(err, context.DeadlineExceeded):
		kind = "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = "refused"
	}
	f.errMu.Lock()
	f.errs[kind]++
	f.errMu.Unlock()
}

// fleetOpts says what a fleet's agents do besides syncing.
type fleetOpts struct {
	// follow gives each agent one session, with the active (index active in
	// servers at first, then simFleet.active, which the caller keeps
	// current); otherwise each has one with every server.
	follow bool
	active int
	track  *assignTracker // if not nil, given every assignment's arrival
	onDone func()         // if not nil, called once per acknowledged done report
}

// startFleet starts n simulated agents syncing with servers.
func (e *scaleEnv) startFleet(ctx context.Context, n int, servers []string, o fleetOpts) (*simFleet, error) {
	e.fleets++
	addr, stopAddr, err := serveAgentAddress()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 2 * n,
		IdleConnTimeout:     90 * time.Second,
	}
	f := &simFleet{
		hc: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // each session talks to its one server
		}},
		servers: servers, pollWait: e.cfg.PollWait, idleWait: e.cfg.IdlePollWait, ledger: e.ledger, track: o.track, onDone: o.onDone, stopAddr: stopAddr,
		syncs: make([]atomic.Int64, len(servers)), registeredCh: make(chan struct{}), errs: map[string]int{},
	}
	f.active.Store(int32(o.active))
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = cancel
	started := time.Now().UTC()
	for i := 0; i < n; i++ {
		a := &simAgent{f: f, epochs: map[int]int64{}, done: map[string]tandem.AttemptReport{}}
		a.info = tandem.AgentInfo{ID: fmt.Sprintf("sim%d-%04d", e.fleets, i+1), URL: addr,
			Capacity: tandem.Resources{CPU: 1000, MemoryMB: 1 << 30}, Labels: map[string]string{"simulated": "true"},
			Version: tandem.Version, PID: os.Getpid(), StartedAt: started.Add(time.Duration(i) * time.Microsecond)}
		for k, base := range servers {
			if o.follow {
				a.sessions = append(a.sessions, &simSession{follow: true, kicked: make(chan struct{}, 1)})
				break
			}
			a.sessions = append(a.sessions, &simSession{idx: k, base: base, kicked: make(chan struct{}, 1)})
		}
		f.agents = append(f.agents, a)
	}
	go func() { // ends with ctx
		select {
		case <-ctx.Done():
			cancel()
		case <-fctx.Done():
		}
	}()
	for _, a := range f.agents {
		for _, s := range a.sessions {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				a.run(fctx, s)
			}()
		}
	}
	return f, nil
}

// waitRegistered waits until every agent has had an answer from an owner
// (the active), which has then registered it.
func (f *simFleet) waitRegistered(ctx context.Context, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-f.registeredCh:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%d of %d simulated agents answered by the active within %s (sync errors: %v)",
			f.registered.Load(), len(f.agents), limit, f.errorCounts())
	}
}

// stop ends the fleet as a killed agent process ends: its address refuses
// connections and every session's poll is cut. It waits for the sessions.
// It may be called more than once.
func (f *simFleet) stop() {
	f.stopAddr()
	f.cancel()
	f.wg.Wait()
	f.hc.CloseIdleConnections()
}

// waitGone stops f and waits until the active has declared every one of
// its agents lost (or limit passes), so that no later job is placed on an
// agent that is gone.
func (e *scaleEnv) waitGone(ctx context.Context, f *simFleet, limit time.Duration) error {
	f.stop()
	ids := make(map[string]bool, len(f.agents))
	for _, a := range f.agents {
		ids[a.info.ID] = true
	}
	deadline := time.Now().Add(limit)
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		agents, err := e.admin.Agents(actx)
		cancel()
		left := 0
		for _, a := range agents {
			if ids[a.ID] && a.State != tandem.AgentLost {
				left++
			}
		}
		if err == nil && left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d simulated agents still ready %s after they stopped (last error: %v)", left, limit, err)
		}
		if !sleepFor(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// simAgent is one simulated agent.
type simAgent struct {
	f        *simFleet
	info     tandem.AgentInfo
	sessions []*simSession

	mu         sync.Mutex
	epochs     map[int]int64
	done       map[string]tandem.AttemptReport // finished, not acknowledged yet
	registered bool
}

// simSession is an agent's session with one server.
type simSession struct {
	idx      int    // in simFleet.servers
	base     string // the server's URL
	follow   bool   // SessionsActive: the session goes to the active, whichever it is
	kicked   chan struct{}
	seq      uint64             // guarded by simAgent.mu
	pollStop context.CancelFunc // the sync in flight; guarded by simAgent.mu
	// idle says the server's last answer, with no failure since, gave no
	// shard: its syncs ask for the idle wait. Guarded by simAgent.mu.
	idle bool
}

// minSyncGap paces a server that answers at once with nothing new, as
// internal/agent does (minEmptyGap).
const minSyncGap = 10 * time.Millisecond

// run is internal/agent's runSession: a sync in flight with s's server
// until ctx ends; a kick cuts it short.
func (a *simAgent) run(ctx context.Context, s *simSession) {
	failures := 0
	for ctx.Err() == nil {
		body, wait, pctx, stop, idx := a.compose(ctx, s)
		began := time.Now()
		resp, err := a.f.exchange(pctx, a.f.servers[idx], body, wait)
		kicked := pctx.Err() != nil && ctx.Err() == nil
		a.mu.Lock()
		s.pollStop = nil
		a.mu.Unlock()
		stop()
		if ctx.Err() != nil {
			return
		}
		if err != nil && kicked {
			continue // a local event: sync again at once
		}
		a.mu.Lock()
		s.idle = err == nil && len(resp.Terms) == 0
		a.mu.Unlock()
		if err != nil {
			a.f.failed(err)
			failures++
			if !sleepFor(ctx, simBackoff(failures)) {
				return
			}
			continue
		}
		failures = 0
		a.f.syncs[idx].Add(1)
		acted := a.apply(resp)
		if !acted && time.Since(began) < minSyncGap {
			a.pause(ctx, s, minSyncGap)
		}
	}
}

// simBackoff is internal/agent's backoff with its defaults: none after the
// first failure, then 20 ms doubling up to 250 ms (without jitter).
func simBackoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	return min(20*time.Millisecond<<min(n-2, 10), 250*time.Millisecond)
}

func sleepFor(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (a *simAgent) pause(ctx context.Context, s *simSession, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-s.kicked:
	}
}

// compose builds the next sync of session s, as internal/agent's
// composeSync does, and returns it with how long the server may hold it
// and the index of the server it goes to.
func (a *simAgent) compose(ctx context.Context, s *simSession) ([]byte, time.Duration, context.Context, context.CancelFunc, int) {
	pctx, stop := context.WithCancel(ctx)
	a.mu.Lock()
	select {
	case <-s.kicked:
	default:
	}
	if s.follow {
		s.idx = int(a.f.active.Load())
		s.base = a.f.servers[s.idx]
	}
	s.seq++ // one counter for every server the session goes to: always newer
	wait := a.f.pollWait
	if s.idle && !s.follow {
		wait = a.f.idleWait // as internal/agent's pollWaitLocked
	}
	req := tandem.SyncRequest{Agent: a.info, Epochs: maps.Clone(a.epochs), Running: []tandem.AttemptReport{},
		Done: make([]tandem.AttemptReport, 0, len(a.done)), WaitMS: int(wait / time.Millisecond), Session: s.base, Seq: s.seq}
	for _, r := range a.done {
		req.Done = append(req.Done, r)
	}
	s.pollStop = stop
	a.mu.Unlock()
	slices.SortFunc(req.Done, func(x, y tandem.AttemptReport) int { return strings.Compare(x.AttemptID, y.AttemptID) })
	body, err := json.Marshal(req)
	if err != nil {
		panic(fmt.Sprintf("marshal a sync request: %v", err)) // plain data always marshals
	}
	return body, wait, pctx, stop, s.idx
}

// exchange posts one sync to base and decodes the answer; it waits at most
// the sync's poll wait plus 3 s, as internal/agent does.
func (f *simFleet) exchange(ctx context.Context, base string, body []byte, wait time.Duration) (*tandem.SyncResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/agent/sync", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tandem-bench-simulated-agent")
	resp, err := f.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var eb tandem.ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if json.Unmarshal(b, &eb) == nil && eb.Error != nil {
			return nil, eb.Error
		}
		return nil, fmt.Errorf("%s: HTTP %d", base, resp.StatusCode)
	}
	var out tandem.SyncResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("%s: decode the answer: %w", base, err)
	}
	return &out, nil
}

// apply acts on an answer as internal/agent's apply does, item by item and
// fenced by the highest epoch seen per shard (I1), except that an assigned
// attempt is not run: it is recorded in the ledger (I4: at most once) and
// reported succeeded in the next sync of every session, which a kick sends
// at once. It reports whether anything in the answer was news.
func (a *simAgent) apply(resp *tandem.SyncResponse) bool {
	now := time.Now()
	f := a.f
	a.mu.Lock()
	raise := func(shard int, epoch int64) {
		if epoch > a.epochs[shard] {
			a.epochs[shard] = epoch
		}
	}
	for _, t := range resp.Terms {
		raise(t.Shard, t.Epoch)
	}
	for _, as := range resp.Assign {
		raise(as.Shard, as.Epoch)
	}
	for _, ack := range resp.Ack {
		raise(ack.Shard, ack.Epoch)
	}
	stale := func(shard int, epoch int64) bool {
		if epoch < a.epochs[shard] {
			f.refused.Add(1)
			return true
		}
		return false
	}
	if len(resp.Terms) > 0 && !a.registered {
		a.registered = true
		if int(f.registered.Add(1)) == len(f.agents) {
			f.regOnce.Do(func() { close(f.registeredCh) })
		}
	}
	acted, kick := false, false
	for _, ack := range resp.Ack {
		if stale(ack.Shard, ack.Epoch) {
			continue
		}
		if _, ok := a.done[ack.AttemptID]; !ok {
			continue
		}
		delete(a.done, ack.AttemptID)
		acted = true
		f.finished.Add(1)
		if f.onDone != nil {
			f.onDone()
		}
	}
	for _, as := range resp.Assign {
		if stale(as.Shard, as.Epoch) {
			continue
		}
		if !f.ledger.launch(as.AttemptID, a) {
			f.resent.Add(1)
			continue
		}
		if tr := f.track; tr != nil {
			tr.assigned(as.JobID, now)
		}
		zero := 0
		a.done[as.AttemptID] = tandem.AttemptReport{AttemptID: as.AttemptID, JobID: as.JobID, State: tandem.AttemptSucceeded,
			StartedAt: &now, EndedAt: &now, ExitCode: &zero}
		acted, kick = true, true
	}
	if len(resp.Kill) > 0 {
		acted = true // nothing runs: a killed attempt has already ended
	}
	if kick {
		// internal/agent's kick: every session's sync in flight is cut short
		// and sent again with the news.
		for _, s := range a.sessions {
			if s.pollStop != nil {
				s.pollStop()
			}
			select {
			case s.kicked <- struct{}{}:
			default:
			}
		}
	}
	a.mu.Unlock()
	return acted
}

// simLedger is the attempts every simulated agent was assigned: an attempt
// assigned to two agents breaks I4.
type simLedger struct {
	mu      sync.Mutex
	by      map[string]*simAgent
	doubled []string
}

// launch records that agent a was assigned attempt; it reports false if the
// attempt was assigned before (to a: a resend; to another agent: a
// violation, recorded).
func (l *simLedger) launch(attempt string, a *simAgent) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev, ok := l.by[attempt]
	if !ok {
		l.by[attempt] = a
		return true
	}
	if prev != a && len(l.doubled) < 10 {
		l.doubled = append(l.doubled, fmt.Sprintf("attempt %s assigned to %s and %s", attempt, prev.info.ID, a.info.ID))
	}
	return false
}

func (l *simLedger) violations() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.doubled)
}

// assignTracker pairs each job's acknowledgement with its assignment's
// arrival at an agent.
type assignTracker struct {
	mu      sync.Mutex
	enabled bool
	acked   map[string]time.Time // acknowledged, assignment not seen yet
	got     map[string]time.Time // assignment seen before the acknowledgement
	lat     []time.Duration
	early   int
	changed chan struct{}
}

func (t *assignTracker) on() {
	t.mu.Lock()
	t.enabled = true
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

func (t *assignTracker) signal() {
	if t.changed != nil {
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

func (t *assignTracker) submitted(id string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if g, ok := t.got[id]; ok {
		// The agent had it before the client had the answer: latency 0.
		delete(t.got, id)
		t.lat = append(t.lat, max(0, g.Sub(at)))
		t.early++
		t.signal()
		return
	}
	t.acked[id] = at
}

func (t *assignTracker) assigned(id string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.enabled {
		return
	}
	if a, ok := t.acked[id]; ok {
		delete(t.acked, id)
		t.lat = append(t.lat, at.Sub(a))
		t.signal()
		return
	}
	t.got[id] = at
}

// waitAll waits until every job of ids has been assigned, or limit passes,
// and returns how many were not.
func (t *assignTracker) waitAll(ctx context.Context, ids []string, limit time.Duration) int {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		t.mu.Lock()
		left := 0
		for _, id := range ids {
			if _, ok := t.acked[id]; ok {
				left++
			}
		}
		ch := t.changed
		t.mu.Unlock()
		if left == 0 {
			return 0
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return left
		case <-timer.C:
			return left
		}
	}
}

func (t *assignTracker) summary() (n, early int, s Summary) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.lat), t.early, Summarize(t.lat)
}

// ---- output ----

// Print writes the result as tables.
func (r *ScaleResult) Print(w io.Writer) {
	fmt.Fprintf(w, "tandem bench scale: %s, %s; %d CPUs, load average %.2f before the run\n", r.Topology, r.Date.Format(time.RFC3339), r.NumCPU, r.LoadAvg)
	fmt.Fprintf(w, "retention: %s\n", strings.Join(r.Retention, " "))
	if j := r.Jobs; j != nil {
		fmt.Fprintf(w, "\njobs phase (%s)\n", j.Mode)
		fmt.Fprintf(w, "%d of %d jobs submitted (%d failed), %d finished in %.0fs: %.0f submitted/s, %.0f finished/s; %d assignments re-sent\n",
			j.Submitted, j.Target, j.Failed, j.Finished, j.LoadS, j.SubmitsPerS, j.FinishedPerS, j.Resent)
		if j.FirstErr != "" {
			fmt.Fprintf(w, "first submission error: %s\n", j.FirstErr)
		}
		var rows []string
		for _, s := range j.Samples {
			standby := int64(0)
			for id, v := range s.RSS {
				if id != s.Active {
					standby = max(standby, v)
				}
			}
			mark := ""
			if !s.Load {
				mark = " (after)"
			}
			rows = append(rows, fmt.Sprintf("%.1f%s\t%d\t%d\t%.0f\t%.0f\t%d\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%d\t%.2f",
				s.T, mark, s.Submitted, s.Finished, s.SubmitPS, s.FinishPS, s.Live, s.Pending, s.ViewJobs, s.StoredJobs, s.Tombstones, s.IdemKeys,
				float64(s.EtcdDB)/(1<<20), float64(s.EtcdInUse)/(1<<20), s.Active, float64(s.RSS[s.Active])/(1<<20),
				float64(s.Heap[s.Active])/(1<<20), float64(s.LiveHeap[s.Active])/(1<<20), float64(standby)/(1<<20), s.Removed, s.ActiveCores))
		}
		Table(w, "T S\tSUBMITTED\tFINISHED\tSUBMIT/S\tFINISH/S\tLIVE\tPENDING\tVIEW JOBS\tETCD JOBS\tTOMBSTONES\tIDEM KEYS\tETCD DB MIB\tIN USE MIB\tACTIVE\tRSS MIB\tHEAP MIB\tLIVE HEAP MIB\tSTANDBY RSS MIB\tREMOVED\tACTIVE CORES", rows...)
		fmt.Fprintln(w)
		if j.RetentionFirstS >= 0 {
			fmt.Fprintf(w, "retention first removed jobs by t=%.0fs; middle vs last third of the samples under load from then on:\n", j.RetentionFirstS)
		} else {
			fmt.Fprintln(w, "retention removed nothing during the run:")
		}
		rows = rows[:0]
		for _, f := range j.Flat {
			if f.Middle == 0 && f.Last == 0 && f.Change == 0 {
				rows = append(rows, fmt.Sprintf("%s\t-\t-\t-\t-\t%s", f.Measure, f.Verdict))
				continue
			}
			rows = append(rows, fmt.Sprintf("%s\t%.1f\t%.1f\t%+.1f%%\t%+.1f %s\t%s", f.Measure, f.Middle, f.Last, f.Change*100, f.Per100k, f.Unit, f.Verdict))
		}
		Table(w, "MEASURE\tMIDDLE THIRD\tLAST THIRD\tCHANGE\tPER 100K JOBS\tVERDICT", rows...)
		if len(j.Transitions) > 0 {
			fmt.Fprintln(w)
			rows = rows[:0]
			for _, t := range j.Transitions {
				rows = append(rows, fmt.Sprintf("%s\t%s -> %s\t%d\t%d\t%d\t%s\t%s", t.When, t.From, t.To, t.ViewJobs, t.StoredJobs, t.EtcdKeys, msOf(t.ElectionS), msOf(t.TransitionS)))
			}
			Table(w, "GRACEFUL FAILOVER\tSERVERS\tVIEW JOBS\tETCD JOBS\tETCD KEYS\tELECTION MS\tTRANSITION MS", rows...)
		}
		if j.CPU != nil {
			fmt.Fprintf(w, "CPU over the load (ms per finished job): servers %.3f, etcd %.3f, bench (clients and simulated agents) %.3f; machine %.2f of %d cores busy\n",
				j.CPU.ByRole["server"].PerJobMS, j.CPU.ByRole["etcd"].PerJobMS, j.CPU.ByRole["bench"].PerJobMS, j.CPU.MachineCores, j.CPU.NumCPU)
		}
	}
	if a := r.Agents; a != nil {
		fmt.Fprintf(w, "\nagents phase: %d simulated agents, sessions with %s servers, poll wait %s (%s to a server that owns no shard), active %s (%s)\n", a.Agents, a.Sessions, a.PollWait, a.IdlePollWait, a.Active, scaleMode)
		rows := []string{}
		for _, x := range []struct {
			name string
			w    AgentsWindow
		}{{"baseline (no agent)", a.Baseline}, {"idle (no job)", a.Idle}, {fmt.Sprintf("load (%g jobs/s)", a.Rate), a.Load}} {
			if x.w.S == 0 {
				continue
			}
			rows = append(rows, fmt.Sprintf("%s\t%.0f\t%d\t%.0f\t%d\t%.2f\t%.3f\t%.0f\t%d", x.name, x.w.S, x.w.Syncs, float64(x.w.Syncs)/x.w.S, x.w.AllSyncs, x.w.ActiveCPUS, x.w.Cores, x.w.CPUPerSyncUS, x.w.Failovers))
		}
		Table(w, "WINDOW\tS\tACTIVE SYNCS\tSYNCS/S\tALL SERVERS' SYNCS\tACTIVE CPU S\tACTIVE CORES\tACTIVE CPU US/SYNC\tFAILOVERS", rows...)
		if a.Idle.Syncs > 0 && a.Baseline.S > 0 {
			fmt.Fprintf(w, "the active's CPU per sync above its baseline (idle window): %.0f us; %d agents cost it %.3f cores idle\n",
				a.MarginalPerSyncUS, a.Agents, a.Idle.Cores-a.Baseline.Cores)
		}
		verdict := "met"
		if a.Latency.N == 0 || a.Latency.P99 > a.P99Goal {
			verdict = "missed"
		}
		fmt.Fprintf(w, "jobs: %d submitted (%d failed or skipped), %d assigned (%d before the client had its answer), %d not assigned within 30s of the window's end\n",
			a.Submitted, a.Failed, a.Assigned, a.Early, a.Unplaced)
		Table(w, "ASSIGNMENT LATENCY (ack -> agent)\tN\tP50 MS\tP90 MS\tP99 MS\tMAX MS",
			fmt.Sprintf("submit acknowledged -> simulated agent has it\t%d\t%s", a.Latency.N, a.Latency.Row()))
		fmt.Fprintf(w, "goal p99 <= %.0f ms: %s (p99 %.1f ms)\n", a.P99Goal*1000, verdict, a.Latency.P99*1000)
		if a.CPU != nil {
			fmt.Fprintf(w, "CPU in the load window: servers %.2f cores, bench (%d agents) %.2f cores; machine %.2f of %d cores busy, %.2f other work\n",
				a.CPU.ByRole["server"].Cores, a.Agents, a.CPU.ByRole["bench"].Cores, a.CPU.MachineCores, a.CPU.NumCPU, a.CPU.OtherCores)
		}
		if len(a.Errors) > 0 {
			fmt.Fprintf(w, "sync errors by kind: %v\n", a.Errors)
		}
	}
	if len(r.Violations) > 0 {
		fmt.Fprintf(w, "\nVIOLATIONS (I4): %s\n", strings.Join(r.Violations, "; "))
	}
}
