package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/shard"
)

// Causes of a change of shard owners that RunShards measures. Join, drain
// and crash each have their way back, measured too: leave (the joined
// server stops gracefully), undrain and restart (the crashed server starts
// again and takes its share back, like a join).
const (
	CauseJoin    = "join"    // a server started into the running cluster takes its share by hand-off
	CauseLeave   = "leave"   // a server stops gracefully (SIGTERM): it resigns its shards
	CauseDrain   = "drain"   // POST /v1/ha/drain: the server hands every shard off
	CauseUndrain = "undrain" // the drained server takes shards again
	CauseCrash   = "crash"   // kill -9 of a server that owns shards
	CauseRestart = "restart" // the crashed server starts again
)

// ShardCauses lists the causes RunShards can be asked for; the ways back
// (undrain, restart) come with drain and crash.
var ShardCauses = []string{CauseJoin, CauseLeave, CauseDrain, CauseCrash}

// causeOrder is the order of the causes in a round and in the tables.
var causeOrder = []string{CauseJoin, CauseLeave, CauseDrain, CauseUndrain, CauseCrash, CauseRestart}

// ShardsConfig configures RunShards. Zero values take the defaults noted.
type ShardsConfig struct {
	Binary  string // the tandem binary to run servers, agents and etcd with (required)
	Servers int    // servers of the running cluster (default 3); join and leave add one more
	Shards  int    // shards (default 64, at least 2)
	Trials  int    // rounds; each has one trial of every cause (default 5)
	// Causes are the causes to measure, from ShardCauses (default all).
	Causes      []string
	LeaseTTL    time.Duration // the servers' lease TTL (default 2s)
	EtcdMembers int           // external etcd members (default 3)
	Agents      int           // agents running the load's jobs (default 2)
	Clients     int           // clients of the light load (default 2)
	// Every is how long each load client waits between an acknowledged
	// submission and its next (default 100ms).
	Every time.Duration
	Quiet time.Duration // between trials (default 2s)
	// SettleLimit bounds the wait for every shard to be on its target after
	// a trial (default 60s).
	SettleLimit time.Duration
	DataDir     string    // where the cluster keeps data and logs ("" for a temporary directory)
	BasePort    int       // first port of the cluster's port range (default 19070; it uses 1000)
	Out         io.Writer // progress and the result tables (nil: discarded)
	ServerArgs  []string  // extra flags for every server
}

func (c *ShardsConfig) withDefaults() (ShardsConfig, error) {
	cfg := *c
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&cfg.Servers, 3)
	def(&cfg.Shards, 64)
	def(&cfg.Trials, 5)
	def(&cfg.EtcdMembers, 3)
	def(&cfg.Agents, 2)
	def(&cfg.Clients, 2)
	def(&cfg.BasePort, 19070)
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 2 * time.Second
	}
	if cfg.Every == 0 {
		cfg.Every = 100 * time.Millisecond
	}
	if cfg.Quiet == 0 {
		cfg.Quiet = 2 * time.Second
	}
	if cfg.SettleLimit == 0 {
		cfg.SettleLimit = time.Minute
	}
	if len(cfg.Causes) == 0 {
		cfg.Causes = ShardCauses
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	for _, cause := range cfg.Causes {
		if !oneOfStrings(cause, ShardCauses) {
			return cfg, fmt.Errorf("bench shards: unknown cause %q: use %s", cause, strings.Join(ShardCauses, ", "))
		}
	}
	spare := 0
	if cfg.wants(CauseJoin) || cfg.wants(CauseLeave) {
		spare = 1
	}
	switch {
	case cfg.Binary == "":
		return cfg, errors.New("bench shards: the tandem binary path is required")
	case cfg.Servers < 2 || cfg.Servers+spare > 9:
		return cfg, fmt.Errorf("bench shards: servers must be from 2 to %d (drain and crash need another server to take the shards), not %d", 9-spare, cfg.Servers)
	case cfg.Shards < 2 || cfg.Shards > keys.MaxShards:
		return cfg, fmt.Errorf("bench shards: shards must be from 2 to %d, not %d", keys.MaxShards, cfg.Shards)
	case cfg.Trials < 1 || cfg.Clients < 1 || cfg.Agents < 1 || cfg.EtcdMembers < 1:
		return cfg, errors.New("bench shards: trials, clients, agents and etcd members must be at least 1")
	case cfg.LeaseTTL < time.Second || cfg.LeaseTTL%time.Second != 0:
		return cfg, fmt.Errorf("bench shards: lease TTL %s: use whole seconds, at least 1s", cfg.LeaseTTL)
	case cfg.Every < 0 || cfg.Quiet < 0 || cfg.SettleLimit < 0:
		return cfg, errors.New("bench shards: durations must not be negative")
	}
	return cfg, nil
}

func (c *ShardsConfig) wants(cause string) bool { return oneOfStrings(cause, c.Causes) }

func oneOfStrings(v string, in []string) bool {
	for _, s := range in {
		if s == v {
			return true
		}
	}
	return false
}

// ShardTrial is one change of membership and what it did to the shards'
// ownership, as the bench's watch of the owner keys saw it.
type ShardTrial struct {
	N      int    `json:"n"`
	Cause  string `json:"cause"`
	Server string `json:"server"` // the server that joined, left, was drained or crashed
	// ServersBefore and ServersAfter count the servers in the target map.
	ServersBefore int `json:"servers_before"`
	ServersAfter  int `json:"servers_after"`
	// RevFrom is etcd's revision just before the action, RevTo the revision
	// at which every shard was on its target again.
	RevFrom int64 `json:"rev_from"`
	RevTo   int64 `json:"rev_to"`
	// SettledS is the time from the action to every shard on its target.
	SettledS float64 `json:"settled_s"`
	// DetectionS (crash) is the time from the kill to the first deletion of
	// the killed server's owner keys, DetectionLastS to the last.
	DetectionS     *float64 `json:"detection_s,omitempty"`
	DetectionLastS *float64 `json:"detection_last_s,omitempty"`
	// Moved counts the shards whose owner differs after the change;
	// NewTenures counts the owner keys created meanwhile (a shard taken by
	// one server and then handed to its target counts twice); TargetMoved is
	// shard.Moved of the two target maps; FairShare is N over the larger
	// number of servers, the least a change of one server can move.
	Moved       int     `json:"moved"`
	NewTenures  int     `json:"new_tenures"`
	TargetMoved int     `json:"target_map_moved"`
	FairShare   float64 `json:"fair_share"`
	// GapsMS is, per shard that changed owner, the time from its owner key's
	// deletion to the next owner key's creation as the watch received them;
	// GapRevs the same in etcd revisions (the new key's create revision
	// minus the deletion's).
	GapsMS  []float64 `json:"gaps_ms"`
	GapRevs []int64   `json:"gap_revs"`
	// AuditGapRevs are the gaps that etcd's history (history.AuditEtcd)
	// shows between tenures whose end falls in [RevFrom, RevTo].
	AuditGapRevs []int64 `json:"audit_gap_revs"`
	// DowntimeMS (crash) is, per shard of the killed server, the time from
	// the kill to its new owner's key.
	DowntimeMS []float64 `json:"downtime_ms,omitempty"`
	// ClientErrors counts submissions that failed (after the client's own
	// retries) from the action until the change settled.
	ClientErrors int `json:"client_errors"`
}

// CauseSummary is every trial of one cause together.
type CauseSummary struct {
	Cause  string `json:"cause"`
	Trials int    `json:"trials"`
	Change string `json:"change"` // servers in the target map, e.g. "3->4"
	// GapS and GapRevs are over every shard gap of every trial; GapRevs
	// from etcd's history (AuditGapRevs).
	GapS       Summary    `json:"gap_s"`
	GapRevs    IntSummary `json:"gap_revs"`
	DetectionS Summary    `json:"detection_s"` // crash
	DowntimeS  Summary    `json:"downtime_s"`  // crash
	SettledS   Summary    `json:"settled_s"`
	// Means per trial.
	Moved       float64 `json:"moved"`
	NewTenures  float64 `json:"new_tenures"`
	TargetMoved float64 `json:"target_map_moved"`
	FairShare   float64 `json:"fair_share"`
}

// ShardsResult is what RunShards measured; it is also the JSON output.
type ShardsResult struct {
	Servers     int            `json:"servers"`
	Shards      int            `json:"shards"`
	Trials      int            `json:"trials"`
	LeaseTTLS   float64        `json:"lease_ttl_s"`
	EtcdMembers int            `json:"etcd_members"`
	Agents      int            `json:"agents"`
	Clients     int            `json:"clients"`
	Causes      []CauseSummary `json:"causes"`
	Details     []ShardTrial   `json:"trial_details"`

	Acknowledged int `json:"acknowledged"`
	ClientErrors int `json:"client_errors"`
	Lost         int `json:"lost"`
	Unfinished   int `json:"unfinished"`
	Launches     int `json:"launches"`
	Duplicates   int `json:"duplicate_launches"`
	// AuditProblems are the writes etcd's history shows not fenced by their
	// shard's owner (I1); AuditTenures and AuditGaps count what it read.
	AuditProblems    []string `json:"audit_problems"`
	AuditTenures     int      `json:"audit_tenures"`
	AuditGaps        int      `json:"audit_gaps"`
	AuditJobWrites   int      `json:"audit_job_writes"`
	AuditCompactedAt int64    `json:"audit_compacted_at,omitempty"`
	// GapMismatches counts gaps the bench's watch saw that etcd's history
	// does not show (a bench defect, not tandem's; reported, not failed).
	GapMismatches int       `json:"gap_mismatches"`
	StartedAt     time.Time `json:"started_at"`
	// MachineCores is how many cores the whole machine kept busy on
	// average during the rounds (this run's processes and anything else),
	// of NumCPU; LoadAvg the 1-minute load average before and after.
	MachineCores float64    `json:"machine_cores"`
	NumCPU       int        `json:"num_cpu"`
	LoadAvg      [2]float64 `json:"load_avg_1m"`
}

// Failed reports whether the run broke a promise: an acknowledged job lost,
// an attempt launched twice, or a write etcd's history shows unfenced.
func (r *ShardsResult) Failed() error {
	if r.Lost > 0 || r.Duplicates > 0 || len(r.AuditProblems) > 0 {
		return fmt.Errorf("%d acknowledged jobs lost, %d duplicate launches, %d fencing problems in etcd's history",
			r.Lost, r.Duplicates, len(r.AuditProblems))
	}
	return nil
}

// shardsRun is one RunShards run in progress.
type shardsRun struct {
	cfg    ShardsConfig
	c      *local.Cluster
	cli    *clientv3.Client
	w      *ownerWatch
	ld     *load
	admin  *client.Client
	spare  int          // index of the server that joins and leaves (-1: none)
	member map[int]bool // servers in the target map now (running, ready, not drained)
}

// RunShards starts an active-active cluster (cfg.Servers servers, one more
// stopped for joins, cfg.EtcdMembers external etcd members, cfg.Agents
// agents, every one its own process), keeps a light load of short jobs, and
// cfg.Trials times, cfg.Quiet apart, changes its membership once for each
// cause: join, leave, drain and undrain, crash and restart. A watch of the
// owner keys in the bench process timestamps every owner key's deletion and
// creation, and each trial reports the gaps between them, the crash's
// detection, and the shards moved against the target maps. Afterwards
// every acknowledged job must exist and no attempt may have launched twice,
// and etcd's history (history.AuditEtcd) must show every job write fenced
// by its shard's owner; the result says whether they were.
func RunShards(ctx context.Context, cfg ShardsConfig) (*ShardsResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	out := cfg.Out
	dir := cfg.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tandem-bench-shards-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	} else if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	load0 := LoadAvg()
	r := &shardsRun{cfg: cfg, spare: -1, member: map[int]bool{}}
	servers := cfg.Servers
	if cfg.wants(CauseJoin) || cfg.wants(CauseLeave) {
		r.spare, servers = cfg.Servers, cfg.Servers+1
	}
	lc := local.Config{Binary: cfg.Binary, Servers: servers, Initial: cfg.Servers, Agents: cfg.Agents,
		BasePort: cfg.BasePort, DataDir: dir, LeaseTTL: cfg.LeaseTTL, Shards: cfg.Shards,
		ExternalEtcd: cfg.EtcdMembers, ExtraArgs: cfg.ServerArgs, LogLevel: "info"}
	if cfg.LeaseTTL < 2*time.Second {
		// etcd's smallest lease TTL is 1.5 election timeouts: tune raft so 1 s is allowed.
		lc.EtcdArgs = []string{"--heartbeat", "50ms", "--election-timeout", "500ms"}
	}
	c, err := local.New(lc)
	if err != nil {
		return nil, fmt.Errorf("bench shards: %w", err)
	}
	r.c = c
	fmt.Fprintf(out, "starting %d servers (%d shards, lease TTL %s), %d external etcd members and %d agents in %s\n",
		cfg.Servers, cfg.Shards, cfg.LeaseTTL, cfg.EtcdMembers, cfg.Agents, dir)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = c.Start(sctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer func() {
		fmt.Fprintln(out, "stopping the cluster")
		c.Stop(10 * time.Second)
	}()
	for i := 0; i < cfg.Servers; i++ {
		r.member[i] = true
	}
	r.cli, err = clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer r.cli.Close()
	layout := keys.New("default")
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if r.w, err = watchOwners(wctx, r.cli, layout, cfg.Shards); err != nil {
		return nil, err
	}
	if _, err := r.w.waitFor(ctx, r.targets(), cfg.SettleLimit); err != nil {
		return nil, fmt.Errorf("initial ownership: %w", err)
	}
	if r.admin, err = client.New(client.Config{Servers: c.URLs()}); err != nil {
		return nil, err
	}

	res := &ShardsResult{Servers: cfg.Servers, Shards: cfg.Shards, Trials: cfg.Trials, LeaseTTLS: cfg.LeaseTTL.Seconds(),
		EtcdMembers: cfg.EtcdMembers, Agents: cfg.Agents, Clients: cfg.Clients, StartedAt: time.Now().UTC(),
		NumCPU: runtime.NumCPU(), LoadAvg: [2]float64{load0, -1}}

	// The light load: short jobs whose launches go to a ledger outside
	// tandem; each client starts at another server (any server accepts
	// submissions in an active-active cluster).
	ledger := filepath.Join(dir, "launches")
	spec := tandem.JobSpec{Command: []string{"sh", "-c", `echo "$TANDEM_ATTEMPT_ID" >> ` + ledger}, MaxAttempts: 3,
		RetryBackoff: tandem.Duration(100 * time.Millisecond)}
	r.ld = &load{newAt: make(chan struct{}), every: cfg.Every}
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopLoad(); wg.Wait() }()
	for i := 0; i < cfg.Clients; i++ {
		cl, err := client.New(client.Config{Servers: rotate(c.URLs()[:cfg.Servers], i)})
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() { defer wg.Done(); r.ld.run(lctx, cl, spec, i) }()
	}

	fmt.Fprintf(out, "%d rounds of %s, %s apart, under load from %d clients (one submission each every %s)\n",
		cfg.Trials, strings.Join(cfg.Causes, ", "), cfg.Quiet, cfg.Clients, cfg.Every)
	busy0, t0 := machineCPU(), time.Now()
	for n := 1; n <= cfg.Trials; n++ {
		trials, err := r.round(ctx, n)
		res.Details = append(res.Details, trials...)
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", n, err)
		}
	}
	if busy1 := machineCPU(); busy0 > 0 && busy1 > 0 {
		res.MachineCores = (busy1 - busy0).Seconds() / time.Since(t0).Seconds()
	}
	res.LoadAvg[1] = LoadAvg()
	stopLoad()
	wg.Wait()

	// Quiescence: every acknowledged job ends; then the checks.
	r.ld.mu.Lock()
	acks := append([]ack(nil), r.ld.acks...)
	res.ClientErrors = r.ld.errs
	first := append([]string(nil), r.ld.first...)
	r.ld.mu.Unlock()
	res.Acknowledged = len(acks)
	fmt.Fprintf(out, "load stopped: %d submissions acknowledged (%d client errors); waiting for every job to finish\n", len(acks), res.ClientErrors)
	for _, e := range first {
		fmt.Fprintf(out, "  client error: %s\n", e)
	}
	jobs, err := waitQuiet(ctx, r.admin, acks, 90*time.Second)
	if err != nil {
		return nil, err
	}
	for _, a := range acks {
		j, ok := jobs[a.id]
		switch {
		case !ok:
			res.Lost++
		case !j.State.Terminal():
			res.Unfinished++
		}
	}
	if res.Launches, res.Duplicates, err = countLaunches(ledger); err != nil {
		return nil, err
	}
	if err := r.audit(ctx, layout, res); err != nil {
		return nil, err
	}
	res.Causes = summarizeCauses(res.Details)
	fmt.Fprintln(out)
	res.Print(out)
	return res, nil
}

// rotate returns urls starting at the i-th (modulo its length).
func rotate(urls []string, i int) []string {
	i %= len(urls)
	return append(append([]string(nil), urls[i:]...), urls[:i]...)
}

// targets is the target map of the servers now in r.member.
func (r *shardsRun) targets() []string {
	return shard.Targets(r.cfg.Shards, r.memberIDs())
}

func (r *shardsRun) memberIDs() []string {
	var ids []string
	for i, in := range r.member {
		if in {
			ids = append(ids, local.ServerID(i))
		}
	}
	sort.Strings(ids)
	return ids
}

// round runs one trial of each cause asked for, in causeOrder, and the ways
// back, and returns the trials made.
func (r *shardsRun) round(ctx context.Context, n int) ([]ShardTrial, error) {
	var done []ShardTrial
	step := func(cause string, server int, act func() error, in bool) error {
		if err := r.pause(ctx); err != nil {
			return err
		}
		tr, err := r.trial(ctx, n, cause, server, act, in)
		if err != nil {
			return fmt.Errorf("%s of %s: %w", cause, local.ServerID(server), err)
		}
		done = append(done, *tr)
		fmt.Fprintln(r.cfg.Out, tr.line())
		return nil
	}
	// The victim of drain and crash moves round the initial servers.
	victim := (n - 1) % r.cfg.Servers
	startSpare := func() error { return r.c.StartServer(r.spare) }
	stopSpare := func() error { return r.c.StopServer(r.spare, 10*time.Second) }
	if r.spare >= 0 {
		if r.cfg.wants(CauseJoin) {
			if err := step(CauseJoin, r.spare, startSpare, true); err != nil {
				return done, err
			}
		} else if err := r.unmeasured(ctx, startSpare, r.spare, true); err != nil {
			return done, err
		}
		if r.cfg.wants(CauseLeave) {
			if err := step(CauseLeave, r.spare, stopSpare, false); err != nil {
				return done, err
			}
		} else if err := r.unmeasured(ctx, stopSpare, r.spare, false); err != nil {
			return done, err
		}
	}
	if r.cfg.wants(CauseDrain) {
		url := r.c.Servers[victim].URL
		drain := func(on bool) func() error {
			return func() error {
				dctx, cancel := context.WithTimeout(ctx, r.cfg.SettleLimit)
				defer cancel()
				_, err := r.admin.Drain(dctx, url, tandem.DrainRequest{Drain: on, WaitMS: int(r.cfg.SettleLimit.Milliseconds())})
				return err
			}
		}
		if err := step(CauseDrain, victim, drain(true), false); err != nil {
			return done, err
		}
		if err := step(CauseUndrain, victim, drain(false), true); err != nil {
			return done, err
		}
	}
	if r.cfg.wants(CauseCrash) {
		if err := step(CauseCrash, victim, func() error { return r.c.Kill(victim) }, false); err != nil {
			return done, err
		}
		if err := step(CauseRestart, victim, func() error { return r.c.StartServer(victim) }, true); err != nil {
			return done, err
		}
	}
	return done, nil
}

func (r *shardsRun) pause(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(r.cfg.Quiet):
		return nil
	}
}

// unmeasured makes a change the run needs but was not asked to measure, and
// waits for it to settle.
func (r *shardsRun) unmeasured(ctx context.Context, act func() error, server int, in bool) error {
	if err := act(); err != nil {
		return err
	}
	r.member[server] = in
	_, err := r.w.waitFor(ctx, r.targets(), r.cfg.SettleLimit)
	return err
}

// trial makes one change (act), after which server is in the target map or
// not (in), waits until every shard is on its new target, and reads what
// happened from the watch's log.
func (r *shardsRun) trial(ctx context.Context, n int, cause string, server int, act func() error, in bool) (*ShardTrial, error) {
	before := r.w.snapshot()
	targetsBefore := r.targets()
	if shard.Moved(before, targetsBefore) != 0 {
		return nil, fmt.Errorf("the owners are not on their targets before the trial (%s)", ownerCounts(before))
	}
	sBefore := len(r.memberIDs())
	rev0, err := etcdRevision(ctx, r.cli, keys.New("default"))
	if err != nil {
		return nil, err
	}
	i0 := r.w.mark()
	r.ld.mu.Lock()
	errs0 := r.ld.errs
	r.ld.mu.Unlock()

	t0 := time.Now()
	if err := act(); err != nil {
		return nil, err
	}
	r.member[server] = in
	targetsAfter := r.targets()
	rev1, err := r.w.waitFor(ctx, targetsAfter, r.cfg.SettleLimit)
	if err != nil {
		return nil, err
	}
	settled := time.Since(t0)
	events := r.w.since(i0)
	// Only the events up to the settled state: the next trial's start later.
	for i, e := range events {
		if e.Rev > rev1 {
			events = events[:i]
			break
		}
	}
	r.ld.mu.Lock()
	errs1 := r.ld.errs
	r.ld.mu.Unlock()

	sAfter := len(r.memberIDs())
	tr := &ShardTrial{N: n, Cause: cause, Server: local.ServerID(server), ServersBefore: sBefore, ServersAfter: sAfter,
		RevFrom: rev0, RevTo: rev1, SettledS: settled.Seconds(), Moved: shard.Moved(before, targetsAfter),
		NewTenures: creationsOf(events), TargetMoved: shard.Moved(targetsBefore, targetsAfter),
		FairShare: float64(r.cfg.Shards) / float64(max(sBefore, sAfter)), ClientErrors: errs1 - errs0,
		GapsMS: []float64{}, GapRevs: []int64{}, AuditGapRevs: []int64{}}
	gaps, open := gapsOf(events)
	if len(open) > 0 {
		return nil, fmt.Errorf("shard %d's owner key was deleted but none created after, although the owners match the targets", open[0].Shard)
	}
	for _, g := range gaps {
		tr.GapsMS = append(tr.GapsMS, ms(g.Duration()))
		tr.GapRevs = append(tr.GapRevs, g.Revs)
	}
	if cause == CauseCrash {
		victim := local.ServerID(server)
		if dels := deletionsOf(events, victim); len(dels) > 0 {
			d0, d1 := dels[0].At.Sub(t0).Seconds(), dels[len(dels)-1].At.Sub(t0).Seconds()
			tr.DetectionS, tr.DetectionLastS = &d0, &d1
		}
		tr.DowntimeMS = []float64{}
		for _, g := range gaps {
			if g.From == victim {
				tr.DowntimeMS = append(tr.DowntimeMS, ms(g.Created.Sub(t0)))
			}
		}
	}
	return tr, nil
}

// machineCPU is MachineCPU, 0 where it cannot be read.
func machineCPU() time.Duration {
	d, _ := MachineCPU()
	return d
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (t *ShardTrial) line() string {
	g := make([]time.Duration, len(t.GapsMS))
	for i, v := range t.GapsMS {
		g[i] = time.Duration(v * float64(time.Millisecond))
	}
	s := Summarize(g)
	r := SummarizeInts(t.GapRevs)
	det := ""
	if t.DetectionS != nil {
		det = fmt.Sprintf(", detection %.0f ms", *t.DetectionS*1000)
	}
	return fmt.Sprintf("round %d: %-7s %s (%d->%d servers): moved %d (%d new tenures; target maps %d, N/S %.1f), gaps p50 %.1f max %.1f ms / p50 %d max %d revs%s, settled in %.2f s, %d client errors",
		t.N, t.Cause, t.Server, t.ServersBefore, t.ServersAfter, t.Moved, t.NewTenures, t.TargetMoved, t.FairShare,
		s.P50*1000, s.Max*1000, r.P50, r.Max, det, t.SettledS, t.ClientErrors)
}

// audit reads etcd's history of the whole run: its fencing problems, its
// gaps between tenures (attributed to the trial whose revisions hold the
// gap's start), and whether it confirms every gap the watch saw.
func (r *shardsRun) audit(ctx context.Context, layout keys.Layout, res *ShardsResult) error {
	upTo, err := etcdRevision(ctx, r.cli, layout)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	a, err := history.AuditEtcd(actx, r.cli, layout, r.cfg.Shards, upTo)
	if err != nil {
		return fmt.Errorf("audit etcd's history: %w", err)
	}
	res.AuditProblems = append([]string{}, a.Problems...)
	res.AuditTenures, res.AuditGaps, res.AuditJobWrites, res.AuditCompactedAt = len(a.Tenures), len(a.Gaps()), a.JobWrites, a.CompactedAt
	hist := tenureGaps(a.Tenures)
	for i := range res.Details {
		t := &res.Details[i]
		for _, g := range hist {
			if g.Ended >= t.RevFrom && g.Ended <= t.RevTo {
				t.AuditGapRevs = append(t.AuditGapRevs, g.Revs)
			}
		}
	}
	// The watch and the history must agree on every trial's gaps (unless
	// the history of that trial was compacted away).
	for _, t := range res.Details {
		if t.RevFrom > a.CompactedAt {
			res.GapMismatches += multisetDiff(t.GapRevs, t.AuditGapRevs)
		}
	}
	return nil
}

// multisetDiff counts the elements of a and b that the other lacks.
func multisetDiff(a, b []int64) int {
	n := map[int64]int{}
	for _, v := range a {
		n[v]++
	}
	for _, v := range b {
		n[v]--
	}
	d := 0
	for _, c := range n {
		d += max(c, -c)
	}
	return d
}

// histGap is a gap between two consecutive tenures of a shard in etcd's
// history.
type histGap struct {
	Shard int
	Ended int64 // the revision at which the earlier tenure's key went
	Revs  int64 // the next tenure's epoch minus Ended
}

// tenureGaps is history.Audit.Gaps with the revision each gap started at,
// so that gaps can be attributed to trials.
func tenureGaps(ts []history.Tenure) []histGap {
	last := map[int]history.Tenure{}
	var out []histGap
	for _, t := range ts { // in order of epoch
		if p, ok := last[t.Shard]; ok && p.Ended != 0 {
			out = append(out, histGap{Shard: t.Shard, Ended: p.Ended, Revs: t.Epoch - p.Ended})
		}
		last[t.Shard] = t
	}
	return out
}

// summarizeCauses puts the trials of each cause together, in causeOrder.
func summarizeCauses(trials []ShardTrial) []CauseSummary {
	var out []CauseSummary
	for _, cause := range causeOrder {
		var cs CauseSummary
		var gaps, det, down, settled []time.Duration
		var revs []int64
		changes := map[string]bool{}
		for _, t := range trials {
			if t.Cause != cause {
				continue
			}
			cs.Trials++
			changes[fmt.Sprintf("%d->%d", t.ServersBefore, t.ServersAfter)] = true
			for _, g := range t.GapsMS {
				gaps = append(gaps, msDur(g))
			}
			for _, g := range t.DowntimeMS {
				down = append(down, msDur(g))
			}
			revs = append(revs, t.AuditGapRevs...)
			if t.DetectionS != nil {
				det = append(det, secsDur(*t.DetectionS))
			}
			settled = append(settled, secsDur(t.SettledS))
			cs.Moved += float64(t.Moved)
			cs.NewTenures += float64(t.NewTenures)
			cs.TargetMoved += float64(t.TargetMoved)
			cs.FairShare += t.FairShare
		}
		if cs.Trials == 0 {
			continue
		}
		cs.Cause = cause
		var ch []string
		for c := range changes {
			ch = append(ch, c)
		}
		sort.Strings(ch)
		cs.Change = strings.Join(ch, ",")
		n := float64(cs.Trials)
		cs.Moved, cs.NewTenures, cs.TargetMoved, cs.FairShare = cs.Moved/n, cs.NewTenures/n, cs.TargetMoved/n, cs.FairShare/n
		cs.GapS, cs.GapRevs, cs.DetectionS, cs.DowntimeS, cs.SettledS =
			Summarize(gaps), SummarizeInts(revs), Summarize(det), Summarize(down), Summarize(settled)
		out = append(out, cs)
	}
	return out
}

func msDur(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// Print writes the result tables.
func (r *ShardsResult) Print(w io.Writer) {
	fmt.Fprintf(w, "%d servers (+1 to join), %d shards, lease TTL %gs, %d external etcd members, %d agents, %d clients, %d rounds\n",
		r.Servers, r.Shards, r.LeaseTTLS, r.EtcdMembers, r.Agents, r.Clients, r.Trials)
	var rows []string
	for _, c := range r.Causes {
		rows = append(rows, fmt.Sprintf("%s\t%d\t%d\t%s\t%s", c.Cause, c.Trials, c.GapS.N, c.GapS.Row3(), c.GapRevs.Row()))
	}
	for _, c := range r.Causes {
		if c.Cause == CauseCrash {
			rows = append(rows,
				fmt.Sprintf("crash: kill -> keys deleted (detection)\t%d\t-\t%s\t-\t-\t-", c.DetectionS.N, c.DetectionS.Row3()),
				fmt.Sprintf("crash: kill -> shard's new owner\t%d\t%d\t%s\t-\t-\t-", c.Trials, c.DowntimeS.N, c.DowntimeS.Row3()))
		}
	}
	Table(w, "OWNERSHIP GAP\tTRIALS\tGAPS\tP50 MS\tP99 MS\tMAX MS\tP50 REVS\tP99 REVS\tMAX REVS", rows...)
	fmt.Fprintln(w)
	rows = rows[:0]
	for _, c := range r.Causes {
		rows = append(rows, fmt.Sprintf("%s\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%.2f",
			c.Cause, c.Change, c.Moved, c.NewTenures, c.TargetMoved, c.FairShare, ratio(c.Moved, c.FairShare), c.SettledS.P50, c.SettledS.Max))
	}
	Table(w, "SHARDS MOVED\tSERVERS\tMOVED\tNEW TENURES\tTARGET MAP\tN/S\tMOVED/(N/S)\tSETTLED P50 S\tMAX S", rows...)
	fmt.Fprintf(w, "\netcd history: %d tenures, %d gaps, %d job writes checked, %d fencing problems", r.AuditTenures, r.AuditGaps, r.AuditJobWrites, len(r.AuditProblems))
	if r.AuditCompactedAt != 0 {
		fmt.Fprintf(w, " (compacted at revision %d: earlier trials not audited)", r.AuditCompactedAt)
	}
	fmt.Fprintln(w)
	for i, p := range r.AuditProblems {
		if i == 5 {
			fmt.Fprintf(w, "  ... and %d more\n", len(r.AuditProblems)-5)
			break
		}
		fmt.Fprintf(w, "  %s\n", p)
	}
	fmt.Fprintf(w, "machine: %.2f of %d cores busy on average during the rounds (everything on it); load average %.2f before, %.2f after\n",
		r.MachineCores, r.NumCPU, r.LoadAvg[0], r.LoadAvg[1])
	if r.GapMismatches > 0 {
		fmt.Fprintf(w, "warning: %d gaps seen by the watch and in etcd's history do not match\n", r.GapMismatches)
	}
	fmt.Fprintf(w, "acknowledged %d (%d client errors), lost %d, unfinished %d, launches %d, duplicate launches %d\n",
		r.Acknowledged, r.ClientErrors, r.Lost, r.Unfinished, r.Launches, r.Duplicates)
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
