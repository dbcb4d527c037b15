package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tandemhq/tandem/internal/bench"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure tandem on a real local cluster",
		Long: `Measure tandem on a real local cluster: every server and agent its own
process of this binary, on loopback ports, with its data in a temporary
directory unless --data-dir is given. Ctrl-C (or SIGTERM) stops the run and
the cluster. docs/BENCHMARKS.md says what each figure means.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newBenchSubmitCmd(), newBenchFailoverCmd(), newBenchShardsCmd(), newBenchSuperviseCmd(),
		newBenchSuperviseServiceCmd(), newBenchLBCmd(), newBenchSchedulesCmd(), newBenchScaleCmd())
	return cmd
}

type benchSubmitFlags struct {
	clients     int
	duration    time.Duration
	jobs        int
	servers     int
	shards      int
	etcd        string
	etcdMembers int
	matrix      bool
	agents      int
	basePort    int
	leaseTTL    time.Duration
	dataDir     string
	jsonPath    string
	binary      string
	security    securityFlags
	// schedule adds the scheduling throughput run (on by default with
	// --matrix); schedDuration and schedBacklog shape it.
	schedule      bool
	schedDuration time.Duration
	schedBacklog  int
}

// securityFlags are the flags of bench submit and bench failover that
// choose how secured the measured cluster is.
type securityFlags struct {
	secure  bool // --secure
	compare bool // --compare-security
}

func (s *securityFlags) add(fl *pflag.FlagSet) {
	fl.BoolVar(&s.secure, "secure", false, "run the cluster secured, as docs/SECURITY.md describes: TLS between servers and agents, etcd locked down "+
		"(client certificates, etcd authentication confined to the cluster's prefix), tokens enforced; the bench's own clients, "+
		"etcd watchers and HTTP calls use the cluster's CA, cli and etcd certificates and a management token (kept under <data-dir>/secure)")
	fl.BoolVar(&s.compare, "compare-security", false, "run the benchmark twice, each on a new cluster: insecure, then as --secure; print their figures side by side "+
		"with the secure run's as a multiple of the insecure one's; --json holds both (insecure and secure), --data-dir gets insecure/ and secure/")
}

func (s *securityFlags) validate() error {
	if s.secure && s.compare {
		return usagef("--secure and --compare-security: pick one (--compare-security runs secure and insecure)")
	}
	return nil
}

func newBenchSubmitCmd() *cobra.Command {
	f := &benchSubmitFlags{}
	cmd := &cobra.Command{
		Use:   "submit",
		Short: "Submission throughput against raw etcd transactions, and submit-to-running latency",
		Long: `Start a local cluster and measure:

  - submit-to-running: on the idle cluster, --jobs sequential submissions of
    "true", each from the start of the submission until its attempt has
    started on an agent, and until it was acknowledged (idle submit latency);
  - submission throughput: --clients concurrent failover clients submitting
    for --duration; the jobs carry a constraint no agent matches, so they stay
    pending and the run measures submission alone; concurrent submissions
    share etcd transactions (group commit), and the jobs per etcd revision
    say how many;
  - the same etcd's rate of raw fenced transactions (one guarded put of a job
    record's size) at the same concurrency for as long, and the ratio;
  - with --schedule (the default with --matrix), scheduling throughput:
    --clients failover clients submit jobs of "true" (0.01 CPU each, so
    the agents' room never limits) that the shards' owners place on the
    agents and the agents run, at most --sched-backlog not yet ended at a
    time, for --sched-duration, then until all have ended; it reports the
    placements per second (jobs seen started during the load), the jobs
    ended per second, submit-to-running under that load, and the CPU time
    of every server, etcd and agent process per job, in the table;
  - the median latency of one fenced transaction made alone;
  - the CPU time (user+sys, from /proc/<pid>/stat) every server, etcd
    member and agent process, and the bench's own clients, used per
    acknowledged submission during the throughput run.

--secure measures a secured cluster (TLS, etcd locked down, tokens);
--compare-security measures an insecure and then a secured one and prints
submit throughput, submit latency and submit-to-running side by side. The
raw etcd transactions go under the cluster's prefix (/tandem/default/bench/)
in both, the only keys a secured cluster's etcd user may write.

Clients start at different servers (client i at server i, round-robin):
with --shards above 1 every server takes submissions; with one shard the
standbys redirect to the active. --etcd external runs etcd as separate
processes so its CPU is counted apart from the servers'.

--matrix runs the topologies 1 server/1 shard, 1/N, 2/N and 3/N (N from
--shards, 64 unless given), each on a new cluster, and prints them side by
side, with the CPU per job of every server and etcd process in the submit
and scheduling runs; it uses external etcd unless --etcd says otherwise,
and includes the scheduling run unless --schedule=false.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchSubmit(cmd.Context(), cmd.OutOrStdout(), f, cmd.Flags().Changed)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.clients, "clients", 8, "concurrent submitting clients (and raw etcd clients)")
	fl.DurationVar(&f.duration, "duration", 10*time.Second, "length of the throughput run and of the raw etcd run")
	fl.IntVar(&f.jobs, "jobs", 200, "sequential submissions in the submit-to-running run")
	fl.IntVar(&f.servers, "servers-n", 3, "number of servers (1 to 9)")
	fl.IntVar(&f.shards, "shards", 1, "number of shards: 1 is active/standby, more is active-active (with --matrix, N; default 64)")
	fl.StringVar(&f.etcd, "etcd", "embedded", "embedded (a member in every server) or external (separate etcd processes); --matrix defaults to external")
	fl.IntVar(&f.etcdMembers, "etcd-members", 3, "external etcd members (1 to 9)")
	fl.BoolVar(&f.matrix, "matrix", false, "run 1 server/1 shard, 1/N, 2/N and 3/N one after another and compare them")
	fl.BoolVar(&f.schedule, "schedule", false, "add the scheduling throughput run: jobs placed on the agents and run (default true with --matrix)")
	fl.DurationVar(&f.schedDuration, "sched-duration", 10*time.Second, "scheduling run: how long the clients submit")
	fl.IntVar(&f.schedBacklog, "sched-backlog", 100, "scheduling run: most jobs submitted and not yet ended at a time (each agent has room for 100 per core)")
	fl.IntVar(&f.agents, "agents", 2, "number of agents")
	fl.IntVar(&f.basePort, "base-port", 17070, "first of the 1000 ports the cluster uses: server i listens on base-port+i, an embedded etcd member on base-port+100+i and +200+i, an external one on base-port+700+i and +800+i")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every server (whole seconds)")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the cluster's data and logs here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	fl.StringVar(&f.binary, "binary", "", "run the cluster (servers, agents, etcd) with this tandem binary instead of this one, e.g. an older build to compare")
	_ = fl.MarkHidden("binary")
	f.security.add(fl)
	return cmd
}

func (f *benchSubmitFlags) validate() error {
	switch {
	case f.clients < 1:
		return usagef("--clients %d: must be at least 1", f.clients)
	case f.duration <= 0:
		return usagef("--duration %s: must be greater than zero", f.duration)
	case f.jobs < 1:
		return usagef("--jobs %d: must be at least 1", f.jobs)
	case f.servers < 1 || f.servers > 9:
		return usagef("--servers-n %d: must be from 1 to 9", f.servers)
	case f.shards < 1 || f.shards > 1024:
		return usagef("--shards %d: must be from 1 to 1024", f.shards)
	case !oneOf(f.etcd, benchEtcdModes):
		return usagef("--etcd %q: want embedded or external", f.etcd)
	case f.etcdMembers < 1 || f.etcdMembers > 9:
		return usagef("--etcd-members %d: must be from 1 to 9", f.etcdMembers)
	case f.agents < 1 || f.agents > 99:
		return usagef("--agents %d: must be from 1 to 99 (the submit-to-running run needs an agent)", f.agents)
	case f.matrix && f.security.compare:
		return usagef("--matrix and --compare-security: pick one (--matrix --secure runs the matrix secured)")
	case f.schedDuration <= 0:
		return usagef("--sched-duration %s: must be greater than zero (--schedule=false turns the scheduling run off)", f.schedDuration)
	case f.schedBacklog < 1 || f.schedBacklog > 10000:
		return usagef("--sched-backlog %d: must be from 1 to 10000", f.schedBacklog)
	}
	if err := f.security.validate(); err != nil {
		return err
	}
	if err := validateBasePort(f.basePort); err != nil {
		return err
	}
	return validateLeaseTTL(f.leaseTTL)
}

// schedRun reports whether the run includes the scheduling throughput run:
// when --schedule says so, and by default with --matrix, whose figures the
// issue asks for per topology.
func (f *benchSubmitFlags) schedRun(changed func(string) bool) bool {
	if changed("schedule") || !f.matrix {
		return f.schedule
	}
	return true
}

func validateBasePort(p int) error {
	if p < 1024 || p+1000 > 65535 {
		return usagef("--base-port %d: must be from 1024 to %d (a cluster uses the 1000 ports from it)", p, 65535-1000)
	}
	return nil
}

func validateLeaseTTL(d time.Duration) error {
	if d < time.Second || d%time.Second != 0 {
		return usagef("--lease-ttl %s: must be a whole number of seconds, at least 1s", d)
	}
	return nil
}

func runBenchSubmit(ctx context.Context, out io.Writer, f *benchSubmitFlags, changed func(string) bool) error {
	if err := f.validate(); err != nil {
		return err
	}
	bin := f.binary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the tandem binary: %w", err)
		}
		bin = exe
	}
	ctx, stop := benchContext(ctx)
	defer stop()
	cfg := bench.SubmitConfig{
		Binary: bin, Servers: f.servers, Shards: f.shards, Etcd: f.etcd, EtcdMembers: f.etcdMembers, Agents: f.agents,
		Clients: f.clients, Duration: f.duration, Jobs: f.jobs, DataDir: f.dataDir, BasePort: f.basePort,
		LeaseTTL: f.leaseTTL, Secure: f.security.secure, Out: out,
	}
	if f.schedRun(changed) {
		cfg.SchedDuration, cfg.SchedBacklog = f.schedDuration, f.schedBacklog
	}
	var res any
	var err error
	switch {
	case f.security.compare:
		res, err = bench.RunSubmitSecurity(ctx, cfg)
	case f.matrix:
		// The matrix compares CPU by process, so etcd runs apart unless the
		// user said otherwise; N is 64 unless given.
		if !changed("etcd") {
			cfg.Etcd = "external"
		}
		n := f.shards
		if !changed("shards") {
			n = 64
		}
		if n < 2 {
			return usagef("--shards %d: the matrix needs at least 2 shards for its active-active topologies", n)
		}
		res, err = bench.RunSubmitMatrix(ctx, cfg, bench.SubmitMatrix(n))
	default:
		res, err = bench.RunSubmit(ctx, cfg)
	}
	if err != nil {
		return interrupted(ctx, err)
	}
	if f.jsonPath != "" {
		if err := bench.WriteJSON(f.jsonPath, res); err != nil {
			return fmt.Errorf("write %s: %w", f.jsonPath, err)
		}
	}
	return nil
}

type benchFailoverFlags struct {
	fault      string
	trials     int
	leaseTTL   time.Duration
	etcd       string
	clients    int
	quiet      time.Duration
	basePort   int
	dataDir    string
	jsonPath   string
	serverArgs []string
	security   securityFlags
}

var benchEtcdModes = []string{"embedded", "external"}

func newBenchFailoverCmd() *cobra.Command {
	f := &benchFailoverFlags{}
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Failover time and safety under injected faults",
		Long: `Start a local cluster, keep clients submitting, and inject --trials faults
into the active one at a time, --quiet apart: kill (SIGKILL), stop
(SIGSTOP), partition (cut off from etcd and peers) or switchover (graceful
hand-off). Reports each failover's phases and what the clients saw, and
checks that no acknowledged job was lost and no attempt launched twice.

agent-kill kills (SIGKILL) the agent running a long job instead, and
measures until the job's retried attempt runs on the other agent: the
attempt recorded lost, the retry recorded, the retry started.

standby-cut (one standby cut off from the active only), pause-200ms
(SIGSTOP of the active for 200 ms), cpu-hog (one busy process per CPU
for 5 s) and etcd-leader-kill (SIGKILL of the process holding etcd's
raft leader, never the active's) must NOT cause a failover: each trial
counts the changes of active and the longest stall the clients saw
(etcd-leader-kill also the time until etcd has a new leader).

--secure measures a secured cluster (TLS, etcd locked down, tokens);
--compare-security measures an insecure and then a secured one, the same
faults in each, and prints their phases side by side (the client-visible
unavailability first).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchFailover(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.fault, "fault", "kill", "fault to inject: "+strings.Join(bench.Faults, ", "))
	fl.IntVar(&f.trials, "trials", 5, "faults to inject, one at a time")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every server (whole seconds)")
	fl.StringVar(&f.etcd, "etcd", "embedded", "embedded (a member in every server) or external (a separate etcd process)")
	fl.IntVar(&f.clients, "clients", 4, "concurrent submitting clients")
	fl.DurationVar(&f.quiet, "quiet", 3*time.Second, "quiet time between faults")
	fl.IntVar(&f.basePort, "base-port", 18070, "first port of the cluster's port range (it uses the 1000 ports from it)")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the cluster's data and logs here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	fl.StringArrayVar(&f.serverArgs, "server-arg", nil, "extra flag for every server, e.g. --server-arg=--etcd-leader-away=false (repeatable)")
	f.security.add(fl)
	return cmd
}

func oneOf(v string, allowed []string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

func (f *benchFailoverFlags) validate() error {
	switch {
	case !oneOf(f.fault, bench.Faults):
		return usagef("--fault %q: want one of %s", f.fault, strings.Join(bench.Faults, ", "))
	case !oneOf(f.etcd, benchEtcdModes):
		return usagef("--etcd %q: want embedded or external", f.etcd)
	case f.trials < 1:
		return usagef("--trials %d: must be at least 1", f.trials)
	case f.clients < 1:
		return usagef("--clients %d: must be at least 1", f.clients)
	case f.quiet < 0:
		return usagef("--quiet %s: must not be negative", f.quiet)
	}
	if err := f.security.validate(); err != nil {
		return err
	}
	if err := validateBasePort(f.basePort); err != nil {
		return err
	}
	return validateLeaseTTL(f.leaseTTL)
}

func runBenchFailover(ctx context.Context, out io.Writer, f *benchFailoverFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	// A lost acknowledged job, a second launch or an old active that came
	// back unfenced is a broken promise (I2, I4, I1), not a slow figure.
	cfg := func(bin string) bench.FailoverConfig {
		return bench.FailoverConfig{
			Binary: bin, Fault: f.fault, Trials: f.trials, LeaseTTL: f.leaseTTL, Etcd: f.etcd, Clients: f.clients,
			Quiet: f.quiet, DataDir: f.dataDir, BasePort: f.basePort, Out: out, ServerArgs: f.serverArgs,
			Secure: f.security.secure,
		}
	}
	if f.security.compare {
		return runBench(ctx, "failover", f.jsonPath, func(ctx context.Context, bin string) (*bench.FailoverSecurity, error) {
			return bench.RunFailoverSecurity(ctx, cfg(bin))
		})
	}
	return runBench(ctx, "failover", f.jsonPath, func(ctx context.Context, bin string) (*bench.FailoverResult, error) {
		return bench.RunFailover(ctx, cfg(bin))
	})
}

type benchShardsFlags struct {
	servers     int
	shards      int
	trials      int
	causes      []string
	leaseTTL    time.Duration
	etcdMembers int
	agents      int
	clients     int
	every       time.Duration
	quiet       time.Duration
	basePort    int
	dataDir     string
	jsonPath    string
	serverArgs  []string
}

func newBenchShardsCmd() *cobra.Command {
	f := &benchShardsFlags{}
	cmd := &cobra.Command{
		Use:   "shards",
		Short: "Shard ownership gaps and movement when active-active membership changes",
		Long: `Start an active-active cluster (--servers-n servers, one more stopped, --shards
shards, external etcd) under a light load, and --trials times change its
membership once per cause, --quiet apart:

  join     the extra server starts and takes its share by hand-off
  leave    it stops gracefully (SIGTERM)
  drain    tandem admin drain of a server (then undrain, also measured)
  crash    kill -9 of a server that owns shards (then its restart, also measured)

A watch of the owner keys in this process timestamps every deletion and
creation: a gap is the next owner's key created minus the previous owner's
key deleted, in milliseconds and in etcd revisions (from etcd's history,
history.AuditEtcd). For a crash, detection is the kill to the deletion of
its keys. Shards moved per change are compared with N/S and with the target
maps. The command fails if an acknowledged job was lost, an attempt launched
twice, or etcd's history shows a write not fenced by its shard's owner.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchShards(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.servers, "servers-n", 3, "servers of the running cluster (2 to 8); join and leave add one more")
	fl.IntVar(&f.shards, "shards", 64, "number of shards (2 to 1024)")
	fl.IntVar(&f.trials, "trials", 5, "rounds: each makes one trial of every cause (and its way back)")
	fl.StringSliceVar(&f.causes, "cause", bench.ShardCauses, "causes to measure: join, leave, drain, crash (repeatable or comma-separated)")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every server (whole seconds)")
	fl.IntVar(&f.etcdMembers, "etcd-members", 3, "external etcd members, each its own process")
	fl.IntVar(&f.agents, "agents", 2, "agents running the load's jobs")
	fl.IntVar(&f.clients, "clients", 2, "clients of the light load")
	fl.DurationVar(&f.every, "every", 100*time.Millisecond, "how long each load client waits after an acknowledged submission")
	fl.DurationVar(&f.quiet, "quiet", 2*time.Second, "quiet time between trials")
	fl.IntVar(&f.basePort, "base-port", 19070, "first port of the cluster's port range (it uses the 1000 ports from it)")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the cluster's data and logs here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	fl.StringArrayVar(&f.serverArgs, "server-arg", nil, "extra flag for every server, e.g. --server-arg=--max-moves=4 (repeatable)")
	return cmd
}

func (f *benchShardsFlags) validate() error {
	for _, c := range f.causes {
		if !oneOf(c, bench.ShardCauses) {
			return usagef("--cause %q: want join, leave, drain or crash", c)
		}
	}
	switch {
	case f.servers < 2 || f.servers > 8:
		return usagef("--servers-n %d: must be from 2 to 8", f.servers)
	case f.shards < 2 || f.shards > 1024:
		return usagef("--shards %d: must be from 2 to 1024", f.shards)
	case f.trials < 1:
		return usagef("--trials %d: must be at least 1", f.trials)
	case len(f.causes) == 0:
		return usagef("--cause: name at least one of join, leave, drain, crash")
	case f.etcdMembers < 1 || f.etcdMembers > 9:
		return usagef("--etcd-members %d: must be from 1 to 9", f.etcdMembers)
	case f.agents < 1 || f.agents > 99:
		return usagef("--agents %d: must be from 1 to 99", f.agents)
	case f.clients < 1:
		return usagef("--clients %d: must be at least 1", f.clients)
	case f.every <= 0:
		return usagef("--every %s: must be greater than zero", f.every)
	case f.quiet < 0:
		return usagef("--quiet %s: must not be negative", f.quiet)
	}
	if err := validateBasePort(f.basePort); err != nil {
		return err
	}
	return validateLeaseTTL(f.leaseTTL)
}

func runBenchShards(ctx context.Context, out io.Writer, f *benchShardsFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	// As in bench failover: a lost job, a second launch or an unfenced
	// write is a broken promise (I2, I4, I1).
	return runBench(ctx, "shards", f.jsonPath, func(ctx context.Context, bin string) (*bench.ShardsResult, error) {
		return bench.RunShards(ctx, bench.ShardsConfig{
			Binary: bin, Servers: f.servers, Shards: f.shards, Trials: f.trials, Causes: f.causes, LeaseTTL: f.leaseTTL,
			EtcdMembers: f.etcdMembers, Agents: f.agents, Clients: f.clients, Every: f.every, Quiet: f.quiet,
			DataDir: f.dataDir, BasePort: f.basePort, Out: out, ServerArgs: f.serverArgs,
		})
	})
}

// failer is a benchmark's result that can say a promise was broken.
type failer interface{ Failed() error }

// runBench is what every benchmark command does around its run: find this
// binary, end the run cleanly on SIGINT or SIGTERM, write the JSON, and
// fail the command, after the JSON is written, when the result says a
// promise was broken (not merely a slow figure).
func runBench[R any](ctx context.Context, name, jsonPath string, run func(ctx context.Context, bin string) (R, error)) error {
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the tandem binary: %w", err)
	}
	ctx, stop := benchContext(ctx)
	defer stop()
	res, err := run(ctx, bin)
	if err != nil {
		return interrupted(ctx, err)
	}
	if jsonPath != "" {
		if err := bench.WriteJSON(jsonPath, res); err != nil {
			return fmt.Errorf("write %s: %w", jsonPath, err)
		}
	}
	if f, ok := any(res).(failer); ok {
		if err := f.Failed(); err != nil {
			return fmt.Errorf("bench %s: %w", name, err)
		}
	}
	return nil
}

type benchSuperviseFlags struct {
	trials         int
	nodes          int
	leaseTTL       time.Duration
	faults         []string
	fencing        string
	healthInterval time.Duration
	probeEvery     time.Duration
	quiet          time.Duration
	basePort       int
	dataDir        string
	jsonPath       string
}

func newBenchSuperviseCmd() *cobra.Command {
	f := &benchSuperviseFlags{}
	cmd := &cobra.Command{
		Use:   "supervise",
		Short: "Failover of a supervised service (tandem supervise) under injected faults",
		Long: `Build a small world of network namespaces (one per node, on a control
bridge to etcd and a service bridge with the VIP), run an etcd and one
tandem supervise per node, each in a cgroup of its node's, supervising a
small HTTP service with a VIP, a health check and, under --fencing strict, a
fence hook that kills the fenced node's command cgroup and takes the VIP off
it. A client in the root namespace opens a new connection to the VIP every
--probe-every. Then --trials times for each fault, one at a time with
recovery between, into the node that runs the service:

  kill-command     kill -9 of the command (restarted in place)
  kill-supervisor  kill -9 of the supervisor (its command dies with it)
  freeze           the node's whole cgroup frozen past the lease, thawed after the takeover
  isolate          the node's control link cut (no etcd), its service link up; healed after

Reports per phase (the failover record: detection, election, fencing,
start, start to healthy, VIP), the VIP to the client's first answer, the
client-visible outage and, where the old node must fence itself, the
self-fence lead (its lease's expiry minus its command's death). Fails if two
nodes ran the command at once, the VIP was not on exactly one node after a
trial, or a self-fence lead was not positive. Needs root, network namespaces
and cgroup v2; everything is removed at the end, also on Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchSupervise(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.trials, "trials", 20, "trials of each fault")
	fl.IntVar(&f.nodes, "nodes", 3, "nodes, each a network namespace with a supervisor (2 to 9)")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every supervisor (whole seconds)")
	fl.StringSliceVar(&f.faults, "fault", bench.SuperviseFaults, "faults to inject: kill-command, kill-supervisor, freeze, isolate (repeatable or comma-separated)")
	fl.StringVar(&f.fencing, "fencing", bench.FencingStrict, "the service's fencing: strict (the bench's fence hook) or self")
	fl.DurationVar(&f.healthInterval, "health-interval", 100*time.Millisecond, "interval of the service's HTTP health check (rise 2, fall 3)")
	fl.DurationVar(&f.probeEvery, "probe-every", 5*time.Millisecond, "how often the client opens a new connection to the VIP and sends a request")
	fl.DurationVar(&f.quiet, "quiet", time.Second, "pause between trials, once everything has settled")
	fl.IntVar(&f.basePort, "base-port", 20070, "first port of the world: etcd on base-port and +1, supervisors on +10 and the service on +20 in each node's namespace")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep etcd's data and every log here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	return cmd
}

func (f *benchSuperviseFlags) validate() error {
	for _, x := range f.faults {
		if !oneOf(x, bench.SuperviseFaults) {
			return usagef("--fault %q: want kill-command, kill-supervisor, freeze or isolate", x)
		}
	}
	switch {
	case len(f.faults) == 0:
		return usagef("--fault: name at least one of kill-command, kill-supervisor, freeze, isolate")
	case f.trials < 1:
		return usagef("--trials %d: must be at least 1", f.trials)
	case f.nodes < 2 || f.nodes > 9:
		return usagef("--nodes %d: must be from 2 to 9", f.nodes)
	case f.fencing != bench.FencingStrict && f.fencing != bench.FencingSelf:
		return usagef("--fencing %q: want strict or self", f.fencing)
	case f.healthInterval <= 0:
		return usagef("--health-interval %s: must be greater than zero", f.healthInterval)
	case f.probeEvery <= 0:
		return usagef("--probe-every %s: must be greater than zero", f.probeEvery)
	case f.quiet < 0:
		return usagef("--quiet %s: must not be negative", f.quiet)
	}
	if err := validateBasePort(f.basePort); err != nil {
		return err
	}
	return validateLeaseTTL(f.leaseTTL)
}

func runBenchSupervise(ctx context.Context, out io.Writer, f *benchSuperviseFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	// Two commands at once, a VIP on more or fewer than one node, or a
	// command that outlived its node's lease are broken promises
	// (docs/SUPERVISE.md), not slow figures.
	return runBench(ctx, "supervise", f.jsonPath, func(ctx context.Context, bin string) (*bench.SuperviseResult, error) {
		return bench.RunSupervise(ctx, bench.SuperviseConfig{
			Binary: bin, Nodes: f.nodes, Trials: f.trials, Faults: f.faults, LeaseTTL: f.leaseTTL, Fencing: f.fencing,
			HealthInterval: f.healthInterval, ProbeEvery: f.probeEvery, Quiet: f.quiet, BasePort: f.basePort,
			DataDir: f.dataDir, Out: out,
		})
	})
}

// newBenchSuperviseServiceCmd is the service `tandem bench supervise`
// supervises: an HTTP server that answers every request with the node and
// epoch it runs under (from the supervisor's environment) and its pid, so
// the bench's client can tell which run answered.
func newBenchSuperviseServiceCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "supervise-service",
		Short:  "The small HTTP service of tandem bench supervise",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			answer := fmt.Sprintf("%s %s %d\n", orDefault(os.Getenv("TANDEM_NODE"), "-"), orDefault(os.Getenv("TANDEM_EPOCH"), "0"), os.Getpid())
			srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, answer)
			})}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() { <-ctx.Done(); _ = srv.Close() }()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":7490", "address to serve on")
	return cmd
}

// benchContext is ctx cancelled on SIGINT or SIGTERM, so a run stops and its
// cluster is cleaned up instead of the process dying with it.
func benchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// interrupted says plainly that a run was stopped by a signal rather than
// showing the context error of whichever step it was in.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errors.New("bench: interrupted; everything the run started was stopped and removed")
	}
	return err
}

type benchSchedulesFlags struct {
	schedules int
	every     time.Duration
	aligned   bool
	duration  time.Duration
	faults    []string
	trials    int
	servers   int
	agents    int
	leaseTTL  time.Duration
	jobCPU    float64
	basePort  int
	dataDir   string
	jsonPath  string
	output    string
}

func newBenchSchedulesCmd() *cobra.Command {
	f := &benchSchedulesFlags{}
	cmd := &cobra.Command{
		Use:   "schedules",
		Short: "Schedule fire lateness, and exactly-once fires, in steady state and across failovers",
		Long: `Start a local cluster (--servers-n servers with an embedded etcd member
each, --agents agents, every one its own process), create --schedules
schedules of "true" every --every (overlap allow, catch-up all), each ending
--duration after the bench starts creating them, and for each --fault inject
it into the schedules' owner (the active) --trials times, evenly spread:

  none       no fault: steady state only
  kill9      kill -9 of the owner; restarted once the new owner has fired
  sigstop    SIGSTOP of the owner; SIGCONT once the new owner has fired
  partition  the owner cut off from etcd and its peers; healed once the new owner has fired

Several faults (--fault none,kill9,sigstop) run one after another, each on a
new cluster, and are printed side by side.

Reports, per fault, the lateness of the fires, p50/p99/max, in steady state
and for the fires of a failover (nominal time no later than the new owner's
first commit, committed after the fault): commit minus nominal time (when the
bench's etcd watch, one per member, saw the run record), the run record's own
committed_at minus nominal time (the server's clock, held back by its clock
correction), and launch minus nominal time (the fired job's first attempt's
started_at); and, as the fault suite checks them, the nominal times expected,
fired, skipped by reason, missed and doubled. With no process killed it also
reports the CPU every process used per fire. The command fails if a nominal
time was missed or doubled, or an old owner came back unfenced.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchSchedules(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.schedules, "schedules", 40, fmt.Sprintf("schedules to create (1 to %d)", bench.MaxBenchSchedules))
	fl.DurationVar(&f.every, "every", time.Second, "interval of every schedule (at least 1s)")
	fl.BoolVar(&f.aligned, "aligned", false, "put every schedule on one grid, so all fall due at once (default: anchors spread evenly over --every)")
	fl.DurationVar(&f.duration, "duration", time.Minute, "how long the schedules fire (each ends this long after the bench starts creating them)")
	fl.StringSliceVar(&f.faults, "fault", []string{bench.SchedFaultNone}, "faults to inject: none, kill9, sigstop, partition (repeatable or comma-separated; each runs on a new cluster)")
	fl.IntVar(&f.trials, "trials", 3, "faults injected per run, evenly spread over --duration (ignored for none)")
	fl.IntVar(&f.servers, "servers-n", 3, "number of servers (1 to 9; at least 3 with a fault)")
	fl.IntVar(&f.agents, "agents", 2, "number of agents (1 to 99)")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every server (whole seconds)")
	fl.Float64Var(&f.jobCPU, "job-cpu", 0.01, "CPU each fired job asks for: small, so the agents' room does not limit how many run at once")
	fl.IntVar(&f.basePort, "base-port", 26070, "first port; the run of the i-th fault uses the 1000 ports from base-port+1000*i")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the clusters' data and logs here, one subdirectory per fault (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	fl.StringVarP(&f.output, "output", "o", "text", "output: text (progress and tables on stdout) or json (the result as JSON on stdout, progress on stderr)")
	return cmd
}

func (f *benchSchedulesFlags) validate() error {
	for _, x := range f.faults {
		if !oneOf(x, bench.ScheduleFaults) {
			return usagef("--fault %q: want none, kill9, sigstop or partition", x)
		}
	}
	faulty := false
	for _, x := range f.faults {
		faulty = faulty || x != bench.SchedFaultNone
	}
	switch {
	case len(f.faults) == 0:
		return usagef("--fault: name at least one of none, kill9, sigstop, partition")
	case f.output != "text" && f.output != "json":
		return usagef("-o %q: want text or json", f.output)
	case f.output == "json" && f.jsonPath == "-":
		return usagef("-o json already writes the JSON to stdout: drop --json -")
	case f.schedules < 1 || f.schedules > bench.MaxBenchSchedules:
		return usagef("--schedules %d: must be from 1 to %d", f.schedules, bench.MaxBenchSchedules)
	case f.every < time.Second:
		return usagef("--every %s: must be at least 1s", f.every)
	case f.duration < 3*time.Second || f.duration < 2*f.every:
		return usagef("--duration %s: must be at least 3s and at least twice --every (%s)", f.duration, f.every)
	case f.trials < 1:
		return usagef("--trials %d: must be at least 1", f.trials)
	case faulty && f.duration < time.Duration(f.trials+1)*bench.MinSchedulesTrialGap:
		return usagef("--duration %s: too short for --trials %d; each fault needs %s (at least %s)",
			f.duration, f.trials, bench.MinSchedulesTrialGap, time.Duration(f.trials+1)*bench.MinSchedulesTrialGap)
	case f.servers < 1 || f.servers > 9:
		return usagef("--servers-n %d: must be from 1 to 9", f.servers)
	case faulty && f.servers < 3:
		return usagef("--servers-n %d: a fault needs at least 3 servers (each embeds an etcd member, and etcd must keep a quorum)", f.servers)
	case f.agents < 1 || f.agents > 99:
		return usagef("--agents %d: must be from 1 to 99", f.agents)
	case f.jobCPU <= 0 || f.jobCPU > 64:
		return usagef("--job-cpu %g: must be above 0 and at most 64", f.jobCPU)
	}
	if err := validateBasePort(f.basePort); err != nil {
		return err
	}
	if f.basePort+1000*len(f.faults) > 65535 {
		return usagef("--base-port %d: %d faults need the %d ports from it", f.basePort, len(f.faults), 1000*len(f.faults))
	}
	return validateLeaseTTL(f.leaseTTL)
}

func runBenchSchedules(ctx context.Context, stdout, stderr io.Writer, f *benchSchedulesFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	out, jsonPath, alsoFile := stdout, f.jsonPath, ""
	if f.output == "json" {
		out, jsonPath, alsoFile = stderr, "-", f.jsonPath
	}
	// A missed or doubled nominal time (I7), or an old owner back
	// unfenced (I1), is a broken promise, not a slow figure.
	return runBench(ctx, "schedules", jsonPath, func(ctx context.Context, bin string) (*bench.SchedulesReport, error) {
		rep, err := bench.RunSchedulesFaults(ctx, bench.SchedulesConfig{
			Binary: bin, Schedules: f.schedules, Every: f.every, Aligned: f.aligned, Duration: f.duration,
			Trials: f.trials, Servers: f.servers, Agents: f.agents, LeaseTTL: f.leaseTTL, JobCPU: f.jobCPU, BasePort: f.basePort,
			DataDir: f.dataDir, Out: out,
		}, f.faults)
		if err == nil && alsoFile != "" {
			if werr := bench.WriteJSON(alsoFile, rep); werr != nil {
				return nil, fmt.Errorf("write %s: %w", alsoFile, werr)
			}
		}
		return rep, err
	})
}

type benchScaleFlags struct {
	phase          string
	servers        int
	etcd           string
	etcdMembers    int
	jobs           int
	clients        int
	backlog        int
	jobAgents      int
	jobsDuration   time.Duration
	sample         time.Duration
	transitions    bool
	agents         int
	sessions       string
	pollWait       time.Duration
	idlePollWait   time.Duration
	agentsIdle     time.Duration
	agentsDuration time.Duration
	rate           float64
	retentionAge   time.Duration
	retentionKeep  int
	retentionEvery time.Duration
	tombstoneTTL   time.Duration
	compactEvery   time.Duration
	defragEvery    time.Duration
	defragMinFree  int64
	serverArgs     []string
	basePort       int
	dataDir        string
	jsonPath       string
}

func newBenchScaleCmd() *cobra.Command {
	f := &benchScaleFlags{}
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "A million jobs with retention on, and a thousand agents long-polling the active",
		Long: `Start a local cluster (--servers-n server processes, embedded or external
etcd, no agent process) with retention short enough to work during the run,
and measure at scale with simulated agents: goroutines of this process that
speak the agent's real HTTP protocol (POST /v1/agent/sync, one session per
server, epochs, done reports kept until acknowledged) but run no process;
each assignment is reported succeeded in the next sync.

  jobs    --clients failover clients submit --jobs jobs, at most --backlog
          unfinished at a time, run by --job-agents simulated agents. Every
          --sample: submissions and finishes a second, the jobs in the
          active's view and in etcd, tombstones and idempotency keys in
          etcd, etcd's database size, every server's RSS and Go heap, what
          retention removed, the active's CPU. Then the middle and last
          thirds of the samples taken since retention first removed jobs
          are compared (printed, not asserted). With --transitions, a
          graceful failover before, half-way and after the load reports
          each transition time with the state the new active took over.
  agents  --agents simulated agents long-poll (--poll-wait) the servers
          (--agent-sessions all: one session per server, as real agents;
          active: the active's only). The active's CPU (user+sys from
          /proc) per sync it answered, with no job (--agents-idle) and with
          --rate jobs a second for --agents-duration; and every job's
          assignment latency, from its submission's acknowledgement to a
          simulated agent receiving it (goal: p99 <= 100 ms).

--phase all runs both, on the same cluster. The command fails if an attempt
was assigned to two agents (I4).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchScale(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.phase, "phase", bench.ScalePhaseAll, "what to run: jobs, agents or all")
	fl.IntVar(&f.servers, "servers-n", 3, "number of servers (2 to 9)")
	fl.StringVar(&f.etcd, "etcd", "embedded", "embedded (a member in every server) or external (separate etcd processes)")
	fl.IntVar(&f.etcdMembers, "etcd-members", 3, "external etcd members (1 to 9)")
	fl.IntVar(&f.jobs, "jobs", 1000000, "jobs phase: jobs to submit and run")
	fl.IntVar(&f.clients, "clients", 32, "jobs phase: concurrent submitting clients")
	fl.IntVar(&f.backlog, "backlog", 1000, "jobs phase: most jobs submitted and not yet finished at a time")
	fl.IntVar(&f.jobAgents, "job-agents", 20, "jobs phase: simulated agents that run the jobs")
	fl.DurationVar(&f.jobsDuration, "jobs-duration", 0, "jobs phase: stop submitting after this long even if fewer than --jobs were submitted (0: no limit)")
	fl.DurationVar(&f.sample, "sample", 10*time.Second, "jobs phase: time between two samples")
	fl.BoolVar(&f.transitions, "transitions", true, "jobs phase: graceful failovers before, half-way and after the load, timed")
	fl.IntVar(&f.agents, "agents", 1000, "agents phase: simulated agents")
	fl.StringVar(&f.sessions, "agent-sessions", bench.SessionsAll, "agents phase: sessions of each simulated agent: all (one per server, as real agents) or active")
	fl.DurationVar(&f.pollWait, "poll-wait", 2*time.Second, "how long a server may hold a simulated agent's sync (as tandem agent --poll-wait)")
	fl.DurationVar(&f.idlePollWait, "idle-poll-wait", 5*time.Second, "how long a server that owns no shard may hold a simulated agent's sync (as tandem agent --idle-poll-wait)")
	fl.DurationVar(&f.agentsIdle, "agents-idle", 15*time.Second, "agents phase: window measured with every agent connected and no job (0: none)")
	fl.DurationVar(&f.agentsDuration, "agents-duration", time.Minute, "agents phase: window with jobs submitted at --rate")
	fl.Float64Var(&f.rate, "rate", 50, "agents phase: jobs submitted a second")
	fl.DurationVar(&f.retentionAge, "retention-age", 30*time.Second, "every server's --retention-age")
	fl.IntVar(&f.retentionKeep, "retention-keep", 10000, "every server's --retention-keep")
	fl.DurationVar(&f.retentionEvery, "retention-interval", 10*time.Second, "every server's --retention-interval")
	fl.DurationVar(&f.tombstoneTTL, "retention-tombstone-ttl", time.Minute, "every server's --retention-tombstone-ttl")
	fl.DurationVar(&f.compactEvery, "etcd-compact-interval", 30*time.Second, "every server's --etcd-compact-interval")
	fl.DurationVar(&f.defragEvery, "etcd-defrag-interval", 2*time.Minute, "every server's --etcd-defrag-interval")
	fl.Int64Var(&f.defragMinFree, "etcd-defrag-min-free", 16<<20, "every server's --etcd-defrag-min-free")
	fl.StringArrayVar(&f.serverArgs, "server-arg", nil, "extra flag for every server (repeatable)")
	fl.IntVar(&f.basePort, "base-port", 29070, "first port of the cluster's port range (it uses the 1000 ports from it)")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the cluster's data and logs here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	return cmd
}

func (f *benchScaleFlags) validate() error {
	switch {
	case !oneOf(f.phase, []string{bench.ScalePhaseJobs, bench.ScalePhaseAgents, bench.ScalePhaseAll}):
		return usagef("--phase %q: want jobs, agents or all", f.phase)
	case f.servers < 2 || f.servers > 9:
		return usagef("--servers-n %d: must be from 2 to 9", f.servers)
	case !oneOf(f.etcd, benchEtcdModes):
		return usagef("--etcd %q: want embedded or external", f.etcd)
	case f.etcdMembers < 1 || f.etcdMembers > 9:
		return usagef("--etcd-members %d: must be from 1 to 9", f.etcdMembers)
	case f.jobs < 1:
		return usagef("--jobs %d: must be at least 1", f.jobs)
	case f.clients < 1:
		return usagef("--clients %d: must be at least 1", f.clients)
	case f.backlog < 1:
		return usagef("--backlog %d: must be at least 1", f.backlog)
	case f.jobAgents < 1 || f.jobAgents > 5000:
		return usagef("--job-agents %d: must be from 1 to 5000", f.jobAgents)
	case f.jobsDuration < 0:
		return usagef("--jobs-duration %s: must not be negative", f.jobsDuration)
	case f.sample < 100*time.Millisecond:
		return usagef("--sample %s: must be at least 100ms", f.sample)
	case f.agents < 1 || f.agents > 5000:
		return usagef("--agents %d: must be from 1 to 5000", f.agents)
	case !oneOf(f.sessions, []string{bench.SessionsAll, bench.SessionsActive}):
		return usagef("--agent-sessions %q: want all or active", f.sessions)
	case f.pollWait <= 0 || f.pollWait > time.Minute:
		return usagef("--poll-wait %s: must be above 0 and at most 1m", f.pollWait)
	case f.idlePollWait <= 0 || f.idlePollWait > time.Minute:
		return usagef("--idle-poll-wait %s: must be above 0 and at most 1m", f.idlePollWait)
	case f.agentsIdle < 0:
		return usagef("--agents-idle %s: must not be negative", f.agentsIdle)
	case f.agentsDuration < time.Second:
		return usagef("--agents-duration %s: must be at least 1s", f.agentsDuration)
	case !(f.rate > 0 && f.rate <= 100000):
		return usagef("--rate %g: must be above 0 and at most 100000", f.rate)
	case f.retentionAge <= 0:
		return usagef("--retention-age %s: must be above 0 (the jobs phase measures retention at work)", f.retentionAge)
	case f.retentionKeep < 0:
		return usagef("--retention-keep %d: must not be negative", f.retentionKeep)
	case f.retentionEvery <= 0:
		return usagef("--retention-interval %s: must be above 0", f.retentionEvery)
	case f.tombstoneTTL < time.Second:
		return usagef("--retention-tombstone-ttl %s: must be at least 1s", f.tombstoneTTL)
	case f.compactEvery < time.Second:
		return usagef("--etcd-compact-interval %s: must be at least 1s", f.compactEvery)
	case f.defragEvery < 0:
		return usagef("--etcd-defrag-interval %s: must not be negative (0: never)", f.defragEvery)
	case f.defragMinFree < 0:
		return usagef("--etcd-defrag-min-free %d: must not be negative", f.defragMinFree)
	}
	return validateBasePort(f.basePort)
}

func runBenchScale(ctx context.Context, out io.Writer, f *benchScaleFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	// An attempt assigned to two agents is a broken promise (I4), not a
	// slow figure.
	return runBench(ctx, "scale", f.jsonPath, func(ctx context.Context, bin string) (*bench.ScaleResult, error) {
		return bench.RunScale(ctx, bench.ScaleConfig{
			Binary: bin, Phase: f.phase, Servers: f.servers, Etcd: f.etcd, EtcdMembers: f.etcdMembers,
			Jobs: f.jobs, Clients: f.clients, Backlog: f.backlog, JobAgents: f.jobAgents, JobsDuration: f.jobsDuration,
			Sample: f.sample, Transitions: f.transitions,
			Agents: f.agents, AgentSessions: f.sessions, PollWait: f.pollWait, IdlePollWait: f.idlePollWait, AgentsIdle: f.agentsIdle,
			AgentsDuration: f.agentsDuration, Rate: f.rate,
			RetentionAge: f.retentionAge, RetentionKeep: f.retentionKeep, RetentionInterval: f.retentionEvery,
			TombstoneTTL: f.tombstoneTTL, CompactInterval: f.compactEvery, DefragInterval: f.defragEvery,
			DefragMinFree: f.defragMinFree, ServerArgs: f.serverArgs, BasePort: f.basePort, DataDir: f.dataDir, Out: out,
		})
	})
}
