package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

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
	cmd.AddCommand(newBenchSubmitCmd(), newBenchFailoverCmd())
	return cmd
}

type benchSubmitFlags struct {
	clients  int
	duration time.Duration
	jobs     int
	servers  int
	agents   int
	basePort int
	leaseTTL time.Duration
	dataDir  string
	jsonPath string
}

func newBenchSubmitCmd() *cobra.Command {
	f := &benchSubmitFlags{}
	cmd := &cobra.Command{
		Use:   "submit",
		Short: "Submission throughput against raw etcd transactions, and submit-to-running latency",
		Long: `Start a local cluster and measure:

  - submit-to-running: on the idle cluster, --jobs sequential submissions of
    "true", each from the start of the submission until its attempt has
    started on an agent;
  - submission throughput: --clients concurrent failover clients submitting
    for --duration; the jobs carry a constraint no agent matches, so they stay
    pending and the run measures submission alone;
  - the same etcd's rate of raw fenced transactions (one guarded put of a job
    record's size) at the same concurrency for as long, and the ratio;
  - the median latency of one fenced transaction made alone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchSubmit(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.clients, "clients", 8, "concurrent submitting clients (and raw etcd clients)")
	fl.DurationVar(&f.duration, "duration", 10*time.Second, "length of the throughput run and of the raw etcd run")
	fl.IntVar(&f.jobs, "jobs", 200, "sequential submissions in the submit-to-running run")
	fl.IntVar(&f.servers, "servers-n", 3, "number of servers, each with an embedded etcd member (1 to 9)")
	fl.IntVar(&f.agents, "agents", 2, "number of agents")
	fl.IntVar(&f.basePort, "base-port", 17070, "first of the 1000 ports the cluster uses: server i listens on base-port+i, its etcd member on base-port+100+i and +200+i")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every server (whole seconds)")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the cluster's data and logs here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
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
	case f.agents < 1 || f.agents > 99:
		return usagef("--agents %d: must be from 1 to 99 (the submit-to-running run needs an agent)", f.agents)
	}
	if err := validateBasePort(f.basePort); err != nil {
		return err
	}
	return validateLeaseTTL(f.leaseTTL)
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

func runBenchSubmit(ctx context.Context, out io.Writer, f *benchSubmitFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the tandem binary: %w", err)
	}
	ctx, stop := benchContext(ctx)
	defer stop()
	res, err := bench.RunSubmit(ctx, bench.SubmitConfig{
		Binary: bin, Servers: f.servers, Agents: f.agents, Clients: f.clients, Duration: f.duration,
		Jobs: f.jobs, DataDir: f.dataDir, BasePort: f.basePort, LeaseTTL: f.leaseTTL, Out: out,
	})
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
checks that no acknowledged job was lost and no attempt launched twice.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchFailover(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.fault, "fault", "kill", "fault to inject: kill, stop, partition or switchover")
	fl.IntVar(&f.trials, "trials", 5, "faults to inject, one at a time")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every server (whole seconds)")
	fl.StringVar(&f.etcd, "etcd", "embedded", "embedded (a member in every server) or external (a separate etcd process)")
	fl.IntVar(&f.clients, "clients", 4, "concurrent submitting clients")
	fl.DurationVar(&f.quiet, "quiet", 3*time.Second, "quiet time between faults")
	fl.IntVar(&f.basePort, "base-port", 18070, "first port of the cluster's port range (it uses the 1000 ports from it)")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the cluster's data and logs here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	fl.StringArrayVar(&f.serverArgs, "server-arg", nil, "extra flag for every server, e.g. --server-arg=--etcd-leader-away=false (repeatable)")
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
		return usagef("--fault %q: want one of kill, stop, partition, switchover", f.fault)
	case !oneOf(f.etcd, benchEtcdModes):
		return usagef("--etcd %q: want embedded or external", f.etcd)
	case f.trials < 1:
		return usagef("--trials %d: must be at least 1", f.trials)
	case f.clients < 1:
		return usagef("--clients %d: must be at least 1", f.clients)
	case f.quiet < 0:
		return usagef("--quiet %s: must not be negative", f.quiet)
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
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the tandem binary: %w", err)
	}
	ctx, stop := benchContext(ctx)
	defer stop()
	res, err := bench.RunFailover(ctx, bench.FailoverConfig{
		Binary: bin, Fault: f.fault, Trials: f.trials, LeaseTTL: f.leaseTTL, Etcd: f.etcd, Clients: f.clients,
		Quiet: f.quiet, DataDir: f.dataDir, BasePort: f.basePort, Out: out, ServerArgs: f.serverArgs,
	})
	if err != nil {
		return interrupted(ctx, err)
	}
	if f.jsonPath != "" {
		if err := bench.WriteJSON(f.jsonPath, res); err != nil {
			return fmt.Errorf("write %s: %w", f.jsonPath, err)
		}
	}
	// A lost acknowledged job, a second launch or an old active that came
	// back unfenced is a broken promise (I2, I4, I1), not a slow figure: the
	// command fails, after the JSON is written.
	if err := res.Failed(); err != nil {
		return fmt.Errorf("bench failover: %w", err)
	}
	return nil
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
		return errors.New("bench: interrupted; the cluster was stopped")
	}
	return err
}
