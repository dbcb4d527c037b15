package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/shard"
)

// SubmitConfig configures RunSubmit. Zero values take the defaults noted.
type SubmitConfig struct {
	Binary  string // the tandem binary to run servers, agents and etcd with (required)
	Servers int    // servers (default 3)
	// Shards, above 1, makes the cluster active-active with that many
	// shards (0 or 1: active/standby, and no --shards flag is passed, so an
	// older binary without it can be measured).
	Shards int
	// Etcd is "embedded" (default: a member in every server) or "external"
	// (EtcdMembers separate etcd processes, so etcd's CPU is measured apart
	// from the servers').
	Etcd        string
	EtcdMembers int           // external etcd members (default 3)
	Agents      int           // agents (default 2)
	Clients     int           // concurrent submitting clients in the throughput run (default 8)
	Duration    time.Duration // length of the throughput run and of the raw etcd run (default 10s)
	Jobs        int           // sequential submissions in the scheduling run (default 200)
	DataDir     string        // where the cluster keeps data and logs ("" for a temporary directory, removed at the end)
	BasePort    int           // server i listens on BasePort+i, an embedded etcd member on BasePort+100+i (default 17070)
	LeaseTTL    time.Duration // the servers' lease TTL (0: the server's default)
	// Secure runs the cluster with everything docs/SECURITY.md describes
	// (local.Config.Secure, in DataDir/secure): TLS between servers and
	// agents, etcd locked down with client certificates and
	// authentication, tokens enforced. Every client of the bench then uses the cluster's CA, its
	// cli certificate and management token, and etcd certificate.
	Secure bool
	// SchedDuration, above zero, adds the scheduling throughput run
	// (SubmitResult.Sched): clients submit jobs that are placed and run on
	// the agents for that long (0: no such run).
	SchedDuration time.Duration
	// SchedBacklog is the most jobs of the scheduling throughput run
	// submitted and not yet ended at a time (default 100).
	SchedBacklog int
	Out          io.Writer // progress and the result table (nil: discarded)
}

// SubmitResult is what RunSubmit measured; it is also the JSON output.
type SubmitResult struct {
	// Topology names the cluster: servers, shards and etcd.
	Topology string `json:"topology"`
	// Secure says the cluster ran with TLS, etcd locked down and tokens
	// (SubmitConfig.Secure).
	Secure      bool    `json:"secure"`
	Servers     int     `json:"servers"`
	Shards      int     `json:"shards"`
	Etcd        string  `json:"etcd"`
	EtcdMembers int     `json:"etcd_members"`
	Agents      int     `json:"agents"`
	Clients     int     `json:"clients"`
	DurationS   float64 `json:"duration_s"`
	// SubmitMode says what became of the submitted jobs in the throughput run.
	SubmitMode string `json:"submit_mode"`
	// Acknowledged counts submissions answered 201; Failed those that
	// returned an error (after the client's own retries).
	Acknowledged   int     `json:"acknowledged"`
	Failed         int     `json:"failed"`
	SubmitsPerS    float64 `json:"submits_per_s"`
	SubmitLatencyS Summary `json:"submit_latency_s"`
	// EtcdTxnsPerS is the rate of raw fenced transactions on the same etcd,
	// at the same concurrency and value size; Ratio is SubmitsPerS divided by it.
	EtcdTxnsPerS    float64 `json:"etcd_fenced_txns_per_s"`
	EtcdTxnLatencyS Summary `json:"etcd_fenced_txn_latency_s"`
	Ratio           float64 `json:"ratio"`
	// BatchJobs is how many jobs each transaction of the group-commit
	// baseline created (the throughput run's jobs per etcd revision,
	// rounded); EtcdBatchJobsPerS the jobs a second it reached, from as
	// many clients as the submit run, each with one transaction in flight;
	// BatchRatio that rate over EtcdTxnsPerS. It is etcd's own ceiling for
	// any group commit of tandem's records (a job and its idempotency key
	// per job): submissions cannot go faster on this etcd, and a
	// BatchRatio under 2 puts the 2x goal of issue 14 out of reach of
	// anything tandem does on top. BatchCPU is RawCPU's figure for it, per job.
	BatchJobs         int        `json:"etcd_batch_jobs_per_txn"`
	EtcdBatchJobsPerS float64    `json:"etcd_batch_jobs_per_s"`
	EtcdBatchLatencyS Summary    `json:"etcd_batch_txn_latency_s"`
	BatchRatio        float64    `json:"etcd_batch_ratio"`
	BatchCPU          *CPUReport `json:"batch_cpu,omitempty"`
	// EtcdTxnP50S is the median latency of one fenced transaction made alone.
	EtcdTxnP50S float64 `json:"etcd_txn_p50_s"`
	// SubmitToRunningS is, on an idle cluster, the time from starting a
	// submission to the job's attempt having started on an agent.
	SubmitToRunningS Summary `json:"submit_to_running_s"`
	// IdleSubmitLatencyS is, on the same idle cluster, the time a submission
	// took to be acknowledged (HTTP 201): what group commit must not slow
	// down when there is nothing to group.
	IdleSubmitLatencyS Summary `json:"idle_submit_latency_s"`
	// EtcdRevsPerS is the rate at which etcd's revision moved during the
	// throughput run: every write of the cluster, the submissions' own and
	// those the servers made because of them (a pending job's reason).
	EtcdRevsPerS float64 `json:"etcd_revisions_per_s"`
	// JobsPerRev is SubmitsPerS over EtcdRevsPerS: about how many jobs
	// one etcd transaction created during the throughput run (group
	// commit), counting every other write of the cluster as a transaction
	// of none.
	JobsPerRev float64 `json:"jobs_per_etcd_revision"`
	// SettleS is how long the servers went on writing after the throughput
	// run ended (the scheduler recording why each new job waits), -1 if
	// they had not stopped within a minute.
	SettleS float64 `json:"settle_s"`
	// ValueBytes is the size of a stored job record, used for the raw
	// transactions.
	ValueBytes int `json:"value_bytes"`
	// CPU is the CPU time each process (servers, etcd members, agents and
	// the bench itself, whose clients make the submissions) used during
	// the throughput run, from /proc/<pid>/stat, per acknowledged
	// submission. CPUWithSettle extends the window to the end of the
	// servers' own writes after the run (SettleS, plus the quiet second
	// that shows they ended). RawCPU is the same for the raw etcd run,
	// per raw transaction.
	CPU           *CPUReport `json:"cpu,omitempty"`
	CPUWithSettle *CPUReport `json:"cpu_with_settle,omitempty"`
	RawCPU        *CPUReport `json:"raw_cpu,omitempty"`
	// IdleCPU is the CPU the processes used in idleWindow before the
	// scheduling run, with no load at all: what the cluster costs just by
	// running (probes, agents' syncs, leases, etcd's heartbeats).
	IdleCPU *CPUReport `json:"idle_cpu,omitempty"`
	// LoadAvg is the machine's 1-minute load average just before the
	// cluster started: other work on the same cores skews every figure.
	LoadAvg float64 `json:"load_avg_1m"`
	// Sched is the scheduling throughput run, when SubmitConfig.SchedDuration
	// asked for one: jobs placed on the agents and run, the placements per
	// second, and the CPU per job of every process.
	Sched *SchedResult `json:"sched,omitempty"`
}

// benchConstraint is a constraint no agent of the bench cluster matches:
// jobs submitted with it stay pending, so the throughput run measures
// submission alone, not the attempts that would follow.
var benchConstraint = map[string]string{"bench": "none"}

// seqTxns is how many sequential fenced transactions give EtcdTxnP50S.
const seqTxns = 200

// idleWindow is how long RunSubmit measures the CPU of the idle cluster.
const idleWindow = 3 * time.Second

const submitMode = "jobs kept pending (constraint bench=none matches no agent)"

func (c *SubmitConfig) withDefaults() (SubmitConfig, error) {
	cfg := *c
	if cfg.Binary == "" {
		return cfg, errors.New("bench submit: the tandem binary path is required")
	}
	if cfg.Servers == 0 {
		cfg.Servers = 3
	}
	if cfg.Shards == 0 {
		cfg.Shards = 1
	}
	if cfg.Etcd == "" {
		cfg.Etcd = "embedded"
	}
	if cfg.EtcdMembers == 0 {
		cfg.EtcdMembers = 3
	}
	if cfg.Agents == 0 {
		cfg.Agents = 2
	}
	if cfg.Clients == 0 {
		cfg.Clients = 8
	}
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Jobs == 0 {
		cfg.Jobs = 200
	}
	if cfg.BasePort == 0 {
		cfg.BasePort = 17070
	}
	if cfg.SchedBacklog == 0 {
		cfg.SchedBacklog = 100
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	switch {
	case cfg.Servers < 1 || cfg.Agents < 1 || cfg.Clients < 1 || cfg.Jobs < 1:
		return cfg, fmt.Errorf("bench submit: servers, agents, clients and jobs must be positive (%d, %d, %d, %d)", cfg.Servers, cfg.Agents, cfg.Clients, cfg.Jobs)
	case cfg.Duration < 0 || cfg.LeaseTTL < 0 || cfg.SchedDuration < 0:
		return cfg, errors.New("bench submit: durations and lease TTL must not be negative")
	case cfg.SchedBacklog < 1:
		return cfg, fmt.Errorf("bench submit: the scheduling run's backlog must be positive, not %d", cfg.SchedBacklog)
	case cfg.Etcd != "embedded" && cfg.Etcd != "external":
		return cfg, fmt.Errorf("bench submit: etcd must be embedded or external, not %q", cfg.Etcd)
	case cfg.Shards < 1 || cfg.Shards > keys.MaxShards:
		return cfg, fmt.Errorf("bench submit: shards must be from 1 to %d, not %d", keys.MaxShards, cfg.Shards)
	case cfg.EtcdMembers < 1 || cfg.EtcdMembers > 9:
		return cfg, fmt.Errorf("bench submit: external etcd members must be from 1 to 9, not %d", cfg.EtcdMembers)
	}
	return cfg, nil
}

// RunSubmit starts a local cluster (cfg.Servers server processes, with an
// embedded etcd member each or cfg.EtcdMembers separate etcd processes,
// cfg.Shards shards, and cfg.Agents agent processes), waits until every
// shard is on its target server, and measures, in this order:
//
//   - the CPU the idle cluster uses in idleWindow, with no load at all;
//   - the scheduling run: on the idle cluster, cfg.Jobs sequential
//     submissions of `true`, each timed from the start of SubmitJob until
//     it returned (the idle submit latency) and until the job's attempt has
//     started (seen through an etcd watch), each waited on until it has
//     ended before the next;
//   - with cfg.SchedDuration, scheduling throughput: cfg.Clients failover
//     clients submitting jobs of `true` that the owners place on the agents
//     and the agents run, at most cfg.SchedBacklog unfinished at a time,
//     for cfg.SchedDuration, then until every job has ended; the jobs
//     started per second, and the CPU time every process used per job;
//   - submission throughput: cfg.Clients goroutines, each with its own
//     failover client that starts at another server (round-robin), submitting
//     jobs that stay pending for cfg.Duration, and the CPU time every process
//     used meanwhile;
//   - the raw etcd baseline: fenced transactions of the same size from as
//     many goroutines for as long, through the etcd endpoints the servers'
//     writes go to (the active's own member with embedded etcd and one
//     shard);
//   - 200 sequential fenced transactions, for their median latency.
//
// It prints a table to cfg.Out and stops the cluster before returning, also
// when ctx ends or a step fails.
func RunSubmit(ctx context.Context, cfg SubmitConfig) (res *SubmitResult, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	out := cfg.Out
	dir := cfg.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tandem-bench-submit-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	} else if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	lcfg := local.Config{Binary: cfg.Binary, Servers: cfg.Servers, Agents: cfg.Agents,
		BasePort: cfg.BasePort, DataDir: dir, Cluster: benchCluster, LeaseTTL: cfg.LeaseTTL}
	if cfg.Secure {
		lcfg.Secure = filepath.Join(dir, secureDir)
	}
	if cfg.Shards > 1 {
		lcfg.Shards = cfg.Shards
	}
	if cfg.Etcd == "external" {
		lcfg.ExternalEtcd = cfg.EtcdMembers
	}
	lc, err := local.New(lcfg)
	if err != nil {
		return nil, fmt.Errorf("bench submit: %w", err)
	}
	topo := cfg.topology()
	load0 := LoadAvg()
	fmt.Fprintf(out, "starting %s and %d agents in %s\n", topo, cfg.Agents, dir)
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
	active, err := lc.WaitActive(waitCtx)
	cancel()
	if err != nil {
		return nil, err
	}

	layout := keys.New(benchCluster)
	cli, err := clusterEtcd(lc, lc.EtcdEndpoints()...)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	if cfg.Shards > 1 {
		if err := waitBalanced(ctx, cli, layout, cfg.Shards, lc, time.Minute); err != nil {
			return nil, err
		}
	}
	procs := clusterProcesses(lc)

	res = &SubmitResult{Topology: topo, Secure: cfg.Secure, Servers: cfg.Servers, Shards: cfg.Shards, Etcd: cfg.Etcd, Agents: cfg.Agents,
		Clients: cfg.Clients, DurationS: cfg.Duration.Seconds(), SubmitMode: submitMode, LoadAvg: load0}
	if cfg.Etcd == "external" {
		res.EtcdMembers = cfg.EtcdMembers
	}

	idle0, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(idleWindow):
	}
	idle1, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	idle := cpuBetween(procs, idle0, idle1, 0)
	res.IdleCPU = &idle

	// The scheduling run first, while the cluster holds no pending backlog
	// for the scheduler to walk through.
	fmt.Fprintf(out, "scheduling run: %d sequential submissions of `true` on the idle cluster\n", cfg.Jobs)
	s2r, idleSubmit, err := schedulingRun(ctx, lc, cli, layout, cfg.Jobs)
	if err != nil {
		return nil, fmt.Errorf("scheduling run: %w", err)
	}
	res.SubmitToRunningS = Summarize(s2r)
	res.IdleSubmitLatencyS = Summarize(idleSubmit)

	// Scheduling throughput before submit throughput too: the latter leaves
	// thousands of jobs pending for good, which the scheduler would look at
	// again whenever an agent gains room.
	if cfg.SchedDuration > 0 {
		fmt.Fprintf(out, "scheduling throughput: %d clients submitting for %s, %s\n", cfg.Clients, cfg.SchedDuration, schedMode(cfg.SchedBacklog))
		sr, err := schedThroughput(ctx, lc, cli, layout, procs, cfg.Clients, cfg.SchedBacklog, cfg.SchedDuration)
		if err != nil {
			return nil, fmt.Errorf("scheduling throughput run: %w", err)
		}
		res.Sched = sr
		fmt.Fprintf(out, "  %d jobs started in %.1fs (%.0f/s), %d of %d ended %.1fs after the start\n",
			sr.StartedInLoad, sr.LoadS, sr.PlacementsPerS, sr.Ended, sr.Submitted, sr.ElapsedS)
		if sr.Unfinished > 0 {
			fmt.Fprintf(out, "  note: %d jobs had not ended: %s\n", sr.Unfinished, sr.DrainErr)
		}
	}

	fmt.Fprintf(out, "throughput: %d clients submitting for %s, each starting at another server, %s\n", cfg.Clients, cfg.Duration, submitMode)
	rev0, err := etcdRevision(ctx, cli, layout)
	if err != nil {
		return nil, err
	}
	cpu0, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	tp, err := submitThroughput(ctx, lc, cfg.Clients, cfg.Duration)
	if err != nil {
		return nil, fmt.Errorf("throughput run: %w", err)
	}
	cpu1, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	rev1, err := etcdRevision(ctx, cli, layout)
	if err != nil {
		return nil, err
	}
	res.EtcdRevsPerS = float64(rev1-rev0) / tp.elapsed.Seconds()
	if rev1 > rev0 {
		res.JobsPerRev = float64(len(tp.lat)) / float64(rev1-rev0)
	}
	res.Acknowledged, res.Failed = len(tp.lat), tp.failed
	res.SubmitsPerS = float64(len(tp.lat)) / tp.elapsed.Seconds()
	res.SubmitLatencyS = Summarize(tp.lat)
	run := cpuBetween(procs, cpu0, cpu1, res.Acknowledged)
	res.CPU = &run
	if tp.firstID == "" {
		return nil, fmt.Errorf("throughput run: no submission was acknowledged (%d failed; first error: %v)", tp.failed, tp.firstErr)
	}
	if tp.firstErr != nil {
		fmt.Fprintf(out, "  %d submissions failed; first error: %v\n", tp.failed, tp.firstErr)
	}

	// The servers may go on writing because of the new jobs; let them
	// finish before etcd is measured alone.
	t0 := time.Now()
	if err := waitEtcdQuiet(ctx, cli, layout, time.Second, time.Minute); err != nil {
		res.SettleS = -1
		fmt.Fprintf(out, "  note: %v; measuring etcd anyway\n", err)
	} else {
		res.SettleS = max(0, time.Since(t0)-time.Second).Seconds()
		fmt.Fprintf(out, "  the servers' own writes went on %.1fs after the run\n", res.SettleS)
	}
	if cpu2, err := sampleCPU(procs); err == nil {
		settled := cpuBetween(procs, cpu0, cpu2, res.Acknowledged)
		res.CPUWithSettle = &settled
	}
	got, err := cli.Get(ctx, layout.Job(tp.firstID))
	if err != nil {
		return nil, fmt.Errorf("read job %s: %w", tp.firstID, err)
	}
	if len(got.Kvs) == 0 {
		return nil, fmt.Errorf("acknowledged job %s is not in etcd", tp.firstID)
	}
	res.ValueBytes = len(got.Kvs[0].Value)

	// The raw baseline goes where the servers' writes go: with embedded etcd
	// and one shard, the active's own member (which may be an etcd follower,
	// since the active moves raft leadership away from itself, and then
	// forwards to the leader); otherwise every endpoint, as each server's
	// client balances over them.
	endpoints, via := lc.EtcdEndpoints(), "every etcd member"
	if cfg.Etcd == "embedded" && cfg.Shards == 1 {
		if a := lc.Active(ctx); a >= 0 {
			active = a
		}
		endpoints, via = endpoints[active:active+1], lc.Servers[active].ID+"'s member"
	}
	raw, err := clusterEtcd(lc, endpoints...)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	prefix := benchPrefix(fmt.Sprintf("submit-%d", os.Getpid()))
	fmt.Fprintf(out, "raw etcd: fenced transactions of %d bytes from %d clients for %s via %s\n",
		res.ValueBytes, cfg.Clients, cfg.Duration, via)
	var ops int
	var lat []time.Duration
	res.RawCPU, err = measureCPU(procs, func(loadEnded func()) (n int, err error) {
		ops, lat, err = FencedTxnRate(ctx, raw, prefix+"rate/", cfg.Clients, cfg.Duration, res.ValueBytes, loadEnded)
		if err != nil {
			return 0, fmt.Errorf("raw fenced transactions: %w", err)
		}
		return ops, nil
	})
	if err != nil {
		return nil, err
	}
	res.EtcdTxnsPerS = float64(ops) / cfg.Duration.Seconds()
	res.EtcdTxnLatencyS = Summarize(lat)
	if res.EtcdTxnsPerS > 0 {
		res.Ratio = res.SubmitsPerS / res.EtcdTxnsPerS
	}

	res.BatchJobs = min(max(int(math.Round(res.JobsPerRev)), 1), GroupCommitMaxJobs)
	fmt.Fprintf(out, "raw etcd, the group commit's shape: %d jobs a transaction (a record of %d bytes and an idempotency record each) from %d clients for %s via %s\n",
		res.BatchJobs, res.ValueBytes, cfg.Clients, cfg.Duration, via)
	var created int
	var blat []time.Duration
	res.BatchCPU, err = measureCPU(procs, func(loadEnded func()) (n int, err error) {
		created, blat, err = FencedBatchRate(ctx, raw, prefix+"batch/", cfg.Clients, cfg.Duration, res.ValueBytes, res.BatchJobs, loadEnded)
		if err != nil {
			return 0, fmt.Errorf("raw fenced batches: %w", err)
		}
		return created, nil
	})
	if err != nil {
		return nil, err
	}
	res.EtcdBatchJobsPerS = float64(created) / cfg.Duration.Seconds()
	res.EtcdBatchLatencyS = Summarize(blat)
	if res.EtcdTxnsPerS > 0 {
		res.BatchRatio = res.EtcdBatchJobsPerS / res.EtcdTxnsPerS
	}

	seq, err := FencedTxnLatency(ctx, raw, prefix+"latency/", seqTxns, res.ValueBytes)
	if err != nil {
		return nil, fmt.Errorf("sequential fenced transactions: %w", err)
	}
	res.EtcdTxnP50S = Summarize(seq).P50

	fmt.Fprintln(out)
	res.Print(out)
	return res, nil
}

// measureCPU runs run and returns the CPU procs used from its start until
// it calls loadEnded (or returns, if it never does), per unit of the work
// it reports having done: what a run does after its load (a clean-up) is
// not counted.
func measureCPU(procs []Process, run func(loadEnded func()) (int, error)) (*CPUReport, error) {
	c0, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	var (
		c1     cpuSample
		c1Err  error
		sample sync.Once
	)
	end := func() { sample.Do(func() { c1, c1Err = sampleCPU(procs) }) }
	n, err := run(end)
	if err != nil {
		return nil, err
	}
	end()
	if c1Err != nil {
		return nil, c1Err
	}
	r := cpuBetween(procs, c0, c1, n)
	return &r, nil
}

// topology names the cluster of cfg, e.g. "3 servers, 64 shards, external
// etcd (3)", with ", secure" for a secured one.
func (c *SubmitConfig) topology() string {
	s := fmt.Sprintf("%d server", c.Servers)
	if c.Servers > 1 {
		s += "s"
	}
	if c.Shards > 1 {
		s += fmt.Sprintf(", %d shards", c.Shards)
	} else {
		s += ", 1 shard"
	}
	if c.Etcd == "external" {
		s += fmt.Sprintf(", external etcd (%d)", c.EtcdMembers)
	} else {
		s += ", embedded etcd"
	}
	if c.Secure {
		s += ", secure"
	}
	return s
}

// clusterProcesses lists the processes of lc whose CPU a run measures, and
// this process (the clients).
func clusterProcesses(lc *local.Cluster) []Process {
	var ps []Process
	for _, s := range lc.Servers {
		ps = append(ps, Process{Name: s.ID, Role: "server", PID: s.PID()})
	}
	for _, e := range lc.Etcd {
		ps = append(ps, Process{Name: e.ID, Role: "etcd", PID: e.PID()})
	}
	for _, a := range lc.Agents {
		ps = append(ps, Process{Name: a.ID, Role: "agent", PID: a.PID()})
	}
	return append(ps, Process{Name: "bench", Role: "bench"})
}

// waitBalanced waits until every shard of an active-active cluster is owned
// by its target among all of lc's servers, so a measurement starts with
// every server doing its share.
func waitBalanced(ctx context.Context, cli *clientv3.Client, layout keys.Layout, shards int, lc *local.Cluster, limit time.Duration) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := watchOwners(wctx, cli, layout, shards)
	if err != nil {
		return err
	}
	var ids []string
	for _, s := range lc.Servers {
		ids = append(ids, s.ID)
	}
	if _, err := w.waitFor(ctx, shard.Targets(shards, ids), limit); err != nil {
		return fmt.Errorf("wait for every shard on its target: %w", err)
	}
	return nil
}

// Print writes the result as a table. Times are in milliseconds.
func (r *SubmitResult) Print(w io.Writer) {
	fmt.Fprintf(w, "%s, %d agents\n", r.Topology, r.Agents)
	Table(w, "MEASURE\tN\tPER S\tP50 MS\tP90 MS\tP99 MS\tMAX MS",
		fmt.Sprintf("tandem submit (%d clients, %d failed)\t%d\t%.0f\t%s", r.Clients, r.Failed, r.Acknowledged, r.SubmitsPerS, r.SubmitLatencyS.Row()),
		fmt.Sprintf("raw etcd fenced txn (%d clients, %d B)\t%d\t%.0f\t%s", r.Clients, r.ValueBytes, r.EtcdTxnLatencyS.N, r.EtcdTxnsPerS, r.EtcdTxnLatencyS.Row()),
		fmt.Sprintf("ratio submit/raw\t-\t%.2f\t-\t-\t-\t-", r.Ratio),
		fmt.Sprintf("raw etcd, group commit's shape (jobs/s; %d a txn)\t%d\t%.0f\t%s", r.BatchJobs, r.EtcdBatchLatencyS.N, r.EtcdBatchJobsPerS, r.EtcdBatchLatencyS.Row()),
		fmt.Sprintf("ratio its jobs/raw (etcd's ceiling)\t-\t%.2f\t-\t-\t-\t-", r.BatchRatio),
		fmt.Sprintf("etcd revisions during submit run\t-\t%.0f\t-\t-\t-\t-", r.EtcdRevsPerS),
		fmt.Sprintf("jobs per etcd revision (group commit)\t-\t%.1f\t-\t-\t-\t-", r.JobsPerRev),
		fmt.Sprintf("submit (idle, sequential)\t%d\t-\t%s", r.IdleSubmitLatencyS.N, r.IdleSubmitLatencyS.Row()),
		fmt.Sprintf("submit-to-running (idle, sequential)\t%d\t-\t%s", r.SubmitToRunningS.N, r.SubmitToRunningS.Row()),
		fmt.Sprintf("etcd fenced txn (sequential)\t%d\t-\t%.1f\t-\t-\t-", seqTxns, r.EtcdTxnP50S*1000),
	)
	fmt.Fprintf(w, "submissions: %s\n", r.SubmitMode)
	if r.CPU != nil {
		fmt.Fprintln(w)
		var rows []string
		for _, p := range r.CPU.Processes {
			rows = append(rows, cpuRow(p.Name, p, r.CPUWithSettle.byName(p.Name), r.RawCPU.byName(p.Name), r.BatchCPU.byName(p.Name)))
		}
		for _, role := range r.CPU.roles() {
			rows = append(rows, cpuRow(role+" (total)", r.CPU.ByRole[role], r.CPUWithSettle.role(role), r.RawCPU.role(role), r.BatchCPU.role(role)))
		}
		Table(w, "CPU (user+sys)\tSUBMIT RUN S\tCORES\tMS/JOB\tWITH SETTLE MS/JOB\tRAW RUN CORES\tRAW MS/TXN\tBATCH RUN CORES\tBATCH MS/JOB", rows...)
		fmt.Fprintf(w, "machine: %.2f of %d cores busy during the submit run, %.2f of them other work than this run's; load average %.2f before the run\n",
			r.CPU.MachineCores, r.CPU.NumCPU, r.CPU.OtherCores, r.LoadAvg)
		if r.IdleCPU != nil {
			fmt.Fprintf(w, "idle cluster (%.0fs, no load): %.3f cores (servers %.3f, agents %.3f)\n",
				r.IdleCPU.WindowS, r.IdleCPU.ByRole["all"].Cores-r.IdleCPU.ByRole["bench"].Cores,
				r.IdleCPU.ByRole["server"].Cores, r.IdleCPU.ByRole["agent"].Cores)
		}
		if r.RawCPU != nil {
			fmt.Fprintf(w, "machine: %.2f cores busy during the raw etcd run, %.2f of them other work\n", r.RawCPU.MachineCores, r.RawCPU.OtherCores)
		}
		if r.BatchCPU != nil {
			fmt.Fprintf(w, "machine: %.2f cores busy during the group commit's baseline, %.2f of them other work\n", r.BatchCPU.MachineCores, r.BatchCPU.OtherCores)
		}
	}
	if r.Sched != nil {
		fmt.Fprintln(w)
		r.Sched.Print(w)
	}
}

func cpuRow(name string, run ProcessCPU, settle, raw, batch *ProcessCPU) string {
	s := fmt.Sprintf("%s\t%.2f\t%.2f\t%.3f", name, run.CPUS, run.Cores, run.PerJobMS)
	if settle != nil {
		s += fmt.Sprintf("\t%.3f", settle.PerJobMS)
	} else {
		s += "\t-"
	}
	for _, c := range []*ProcessCPU{raw, batch} {
		if c != nil {
			s += fmt.Sprintf("\t%.2f\t%.3f", c.Cores, c.PerJobMS)
		} else {
			s += "\t-\t-"
		}
	}
	return s
}

func (r *CPUReport) byName(name string) *ProcessCPU {
	if r == nil {
		return nil
	}
	for i := range r.Processes {
		if r.Processes[i].Name == name {
			return &r.Processes[i]
		}
	}
	return nil
}

func (r *CPUReport) role(role string) *ProcessCPU {
	if r == nil {
		return nil
	}
	if p, ok := r.ByRole[role]; ok {
		return &p
	}
	return nil
}

// submitRun is what submitThroughput saw.
type submitRun struct {
	lat      []time.Duration // of acknowledged submissions
	failed   int
	firstErr error
	firstID  string // an acknowledged job
	elapsed  time.Duration
}

// submitThroughput runs clients goroutines, each with its own failover
// client over every server (client g starting at server g, round-robin), submitting jobs that stay pending back to back
// until d has passed. A submission under way at the end is waited for and
// counted, and the rate is taken over the time until the last one returned.
func submitThroughput(ctx context.Context, lc *local.Cluster, clients int, d time.Duration) (submitRun, error) {
	var (
		mu  sync.Mutex
		res submitRun
		wg  sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for g := 0; g < clients; g++ {
		// Each client starts at another server: with several shards every
		// server takes submissions, and with one a standby redirects the
		// client to the active, which it then sticks to.
		cl, err := clusterClient(lc, rotate(lc.URLs(), g))
		if err != nil {
			return res, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			var failed int
			var firstErr error
			firstID := ""
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				spec := tandem.JobSpec{Name: fmt.Sprintf("bench-%d-%d", g, i), Command: []string{"true"}, Constraints: benchConstraint}
				t0 := time.Now()
				job, err := cl.SubmitJob(ctx, spec, client.SubmitOptions{})
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					failed++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				lat = append(lat, time.Since(t0))
				if firstID == "" {
					firstID = job.ID
				}
			}
			mu.Lock()
			defer mu.Unlock()
			res.lat = append(res.lat, lat...)
			res.failed += failed
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
			if res.firstID == "" {
				res.firstID = firstID
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res, ctx.Err()
}

// schedulingRun submits n jobs of `true` one at a time and returns, for
// each, the time from the start of SubmitJob until the bench saw its attempt
// started, and until SubmitJob returned. Before each submission the
// previous job has ended, so every measurement starts on an idle cluster.
// A few warm-up jobs, not counted, make sure the agents are connected.
func schedulingRun(ctx context.Context, lc *local.Cluster, cli *clientv3.Client, layout keys.Layout, n int) (toRunning, submit []time.Duration, err error) {
	cl, err := clusterClient(lc, lc.URLs())
	if err != nil {
		return nil, nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := watchJobs(wctx, cli, layout)
	if err != nil {
		return nil, nil, err
	}
	const warmup = 3
	toRunning, submit = make([]time.Duration, 0, n), make([]time.Duration, 0, n)
	for i := 0; i < warmup+n; i++ {
		spec := tandem.JobSpec{Name: fmt.Sprintf("bench-run-%d", i), Command: []string{"true"}}
		t0 := time.Now()
		job, err := cl.SubmitJob(ctx, spec, client.SubmitOptions{})
		if err != nil {
			return nil, nil, err
		}
		acked := time.Since(t0)
		limit := 10 * time.Second
		if i < warmup {
			limit = time.Minute // the agents may still be connecting
		}
		started, err := w.wait(ctx, job.ID, limit, func(s jobSeen) bool { return !s.started.IsZero() })
		if err != nil {
			return nil, nil, err
		}
		if i >= warmup {
			toRunning = append(toRunning, started.started.Sub(t0))
			submit = append(submit, acked)
		}
		if _, err := w.wait(ctx, job.ID, limit, func(s jobSeen) bool { return s.ended }); err != nil {
			return nil, nil, err
		}
	}
	return toRunning, submit, nil
}

// jobSeen is what the bench has seen of one job through its watch.
type jobSeen struct {
	started time.Time // when the bench first saw the latest attempt started
	ended   bool      // the job is in a terminal state
	state   tandem.JobState
	reason  string
}

// jobWatch follows every job record of a cluster through one etcd watch,
// started before any job it is asked about is submitted, so no change can
// slip between a submission and the start of its observation.
type jobWatch struct {
	mu      sync.Mutex
	seen    map[string]jobSeen
	changed chan struct{} // closed and replaced on every change
	err     error         // why the watch ended
}

func watchJobs(ctx context.Context, cli *clientv3.Client, layout keys.Layout) (*jobWatch, error) {
	rev, err := etcdRevision(ctx, cli, layout)
	if err != nil {
		return nil, err
	}
	w := &jobWatch{seen: make(map[string]jobSeen), changed: make(chan struct{})}
	// Watching from the next revision sees every later change.
	wch := cli.Watch(ctx, layout.JobsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	go func() { // ends with ctx, which closes wch
		for wr := range wch {
			now := time.Now()
			if err := wr.Err(); err != nil {
				w.fail(err)
				return
			}
			w.mu.Lock()
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var j tandem.Job
				if json.Unmarshal(ev.Kv.Value, &j) != nil {
					continue
				}
				s := w.seen[j.ID]
				if a := j.LastAttempt(); a != nil && a.StartedAt != nil && s.started.IsZero() {
					s.started = now
				}
				s.ended, s.state, s.reason = j.State.Terminal(), j.State, j.Reason
				w.seen[j.ID] = s
			}
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
		w.fail(errors.New("the etcd watch ended"))
	}()
	return w, nil
}

func (w *jobWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		close(w.changed)
	}
}

// wait blocks until done holds for what the watch has seen of job id, and
// returns that; it fails after limit, or when ctx ends or the watch breaks.
func (w *jobWatch) wait(ctx context.Context, id string, limit time.Duration, done func(jobSeen) bool) (jobSeen, error) {
	timeout := time.NewTimer(limit)
	defer timeout.Stop()
	for {
		w.mu.Lock()
		s, ch, werr := w.seen[id], w.changed, w.err
		w.mu.Unlock()
		if done(s) {
			return s, nil
		}
		if werr != nil {
			return s, fmt.Errorf("watch job %s: %w", id, werr)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s, ctx.Err()
		case <-timeout.C:
			return s, fmt.Errorf("job %s: not there within %s (state %q, reason %q)", id, limit, s.state, s.reason)
		}
	}
}

// etcdRevision returns etcd's current revision.
func etcdRevision(ctx context.Context, cli *clientv3.Client, layout keys.Layout) (int64, error) {
	resp, err := cli.Get(ctx, layout.Leader(), clientv3.WithKeysOnly()) // any read carries the revision
	if err != nil {
		return 0, fmt.Errorf("read the etcd revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// waitEtcdQuiet waits until etcd's revision has not moved for quiet, which
// means the servers have finished the writes a run left them to do. It
// gives up after limit.
func waitEtcdQuiet(ctx context.Context, cli *clientv3.Client, layout keys.Layout, quiet, limit time.Duration) error {
	var last int64
	since := time.Now()
	end := since.Add(limit)
	for time.Now().Before(end) {
		rev, err := etcdRevision(ctx, cli, layout)
		if err != nil {
			return err
		}
		if rev != last {
			last, since = rev, time.Now()
		} else if time.Since(since) >= quiet {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("etcd was still being written %s after the run", limit)
}

// Topology is one cluster shape of a submit matrix.
type Topology struct {
	Servers int `json:"servers"`
	Shards  int `json:"shards"`
}

// SubmitMatrix is the topologies `tandem bench submit --matrix` runs: one
// server with one shard and with shards shards (what per-shard locks alone
// change), then two and three servers with shards shards (what spreading
// the shards over servers changes).
func SubmitMatrix(shards int) []Topology {
	return []Topology{{1, 1}, {1, shards}, {2, shards}, {3, shards}}
}

// RunSubmitMatrix runs RunSubmit once per topology, each on a new cluster
// (in its own subdirectory of cfg.DataDir when that is set), then prints a
// table of them side by side. It stops at the first run that fails and
// returns the results so far.
func RunSubmitMatrix(ctx context.Context, cfg SubmitConfig, topologies []Topology) ([]*SubmitResult, error) {
	var out []*SubmitResult
	for i, t := range topologies {
		c := cfg
		c.Servers, c.Shards = t.Servers, t.Shards
		if cfg.DataDir != "" {
			c.DataDir = filepath.Join(cfg.DataDir, fmt.Sprintf("%d-%ds-%dsh", i+1, t.Servers, t.Shards))
		}
		if cfg.Out != nil {
			fmt.Fprintf(cfg.Out, "\n=== %d of %d: %d servers, %d shards\n", i+1, len(topologies), t.Servers, t.Shards)
		}
		res, err := RunSubmit(ctx, c)
		if err != nil {
			return out, fmt.Errorf("%d servers, %d shards: %w", t.Servers, t.Shards, err)
		}
		out = append(out, res)
	}
	if cfg.Out != nil {
		fmt.Fprintln(cfg.Out)
		PrintMatrix(cfg.Out, out)
	}
	return out, nil
}

// PrintMatrix writes the main figures of several runs side by side: the
// submission rate and latency, submit-to-running, the raw etcd rate and the
// ratio, and the CPU per acknowledged submission by role (servers, etcd,
// agents, the bench's clients) during the throughput run. Runs with a
// scheduling throughput run add its figures, and every run adds the CPU
// per job of each server and etcd process (printSchedMatrix).
func PrintMatrix(w io.Writer, rs []*SubmitResult) {
	var rows []string
	for _, r := range rs {
		cpu := func(role string) string {
			if r.CPU == nil {
				return "-"
			}
			p, ok := r.CPU.ByRole[role]
			if !ok {
				return "-"
			}
			return fmt.Sprintf("%.3f", p.PerJobMS)
		}
		cores, other := "-", "-"
		if r.CPU != nil {
			cores, other = fmt.Sprintf("%.2f", r.CPU.ByRole["all"].Cores), fmt.Sprintf("%.2f", r.CPU.OtherCores)
		}
		rows = append(rows, fmt.Sprintf("%d/%d\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s",
			r.Servers, r.Shards, r.SubmitsPerS, r.SubmitLatencyS.P50*1000, r.SubmitLatencyS.P99*1000,
			r.SubmitToRunningS.P50*1000, r.SubmitToRunningS.P99*1000, r.EtcdTxnsPerS, r.Ratio,
			cpu("server"), cpu("etcd"), cpu("agent"), cpu("bench"), cpu("all"), cores, other))
	}
	Table(w, "SERVERS/SHARDS\tSUBMITS/S\tSUBMIT P50 MS\tP99 MS\tS2R P50 MS\tP99 MS\tRAW TXN/S\tRATIO\tCPU MS/JOB SERVERS\tETCD\tAGENTS\tBENCH\tALL\tCORES BUSY\tOTHER WORK", rows...)
	printSchedMatrix(w, rs)
}
