package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
)

// benchCluster is the cluster name of the submit and failover benches'
// local clusters; their etcd keys, the bench's own included, live under
// keys.New(benchCluster).Prefix().
const benchCluster = "default"

// secureDir is the subdirectory of a bench's data directory that holds a
// secured cluster's CA, certificates and management token
// (local.Config.Secure).
const secureDir = "secure"

// benchPrefix returns where a bench's own etcd keys go: under the cluster's
// prefix (/tandem/<cluster>/bench/<name>/), the only keys a secured
// cluster's etcd user may touch. Secure and insecure runs use the same
// keys, so both measure the same thing; the servers' watch of the prefix
// sees these writes too and ignores them.
func benchPrefix(name string) string {
	return keys.New(benchCluster).Prefix() + "bench/" + name + "/"
}

// clusterClient returns a Go client of lc's servers, tried in the order of
// servers, with the cluster's TLS and management token when it is secured
// (local.Config.Secure) and as any client would without.
func clusterClient(lc *local.Cluster, servers []string) (*client.Client, error) {
	cfg := client.Config{Servers: servers, UserAgent: "tandem-bench", Token: lc.Token}
	if lc.TLS != nil {
		tc, err := client.TLSFiles{CACert: lc.TLS.CACert, ClientCert: lc.TLS.CLICert, ClientKey: lc.TLS.CLIKey}.Config()
		if err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
		cfg.TLS = tc
	}
	return client.New(cfg)
}

// clusterEtcd returns an etcd client of endpoints (some of lc's) that
// presents lc's etcd certificate when its etcd is locked down, and none
// otherwise: the cluster's own etcd user, confined to its prefix.
func clusterEtcd(lc *local.Cluster, endpoints ...string) (*clientv3.Client, error) {
	cli, err := etcdauth.NewClient(endpoints, lc.EtcdFiles())
	if err != nil {
		return nil, fmt.Errorf("connect to etcd at %v: %w", endpoints, err)
	}
	return cli, nil
}

// securityLabel names the mode of a run in its tables.
func securityLabel(secure bool) string {
	if secure {
		return "secure"
	}
	return "insecure"
}

// runDir is the data directory of one of several runs: a subdirectory of
// dir when the user gave one, "" (a temporary directory) otherwise.
func runDir(dir, name string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name)
}

// SubmitSecurity is `tandem bench submit --compare-security`: the same
// benchmark on an insecure cluster and then on a secured one (TLS between
// servers and agents, etcd locked down with client certificates and
// authentication, tokens enforced). It is also the JSON output.
type SubmitSecurity struct {
	Insecure *SubmitResult `json:"insecure"`
	Secure   *SubmitResult `json:"secure"`
}

// RunSubmitSecurity runs RunSubmit with cfg twice, on new clusters, first
// insecure and then secure (in subdirectories insecure/ and secure/ of
// cfg.DataDir when that is set), and prints their figures side by side. It
// returns what was measured so far when a run fails.
func RunSubmitSecurity(ctx context.Context, cfg SubmitConfig) (*SubmitSecurity, error) {
	res := &SubmitSecurity{}
	var err error
	res.Insecure, res.Secure, err = runBoth(ctx, cfg.Out, cfg.DataDir, func(ctx context.Context, secure bool, dir string) (*SubmitResult, error) {
		c := cfg
		c.Secure, c.DataDir = secure, dir
		return RunSubmit(ctx, c)
	})
	if err != nil {
		return res, err
	}
	if cfg.Out != nil {
		fmt.Fprintln(cfg.Out)
		res.Print(cfg.Out)
	}
	return res, nil
}

// runBoth runs run insecure and then secure, each with its subdirectory of
// dir (runDir), announcing each on out (if not nil). When the second run
// fails, the first one's result is returned with the error.
func runBoth[R any](ctx context.Context, out io.Writer, dir string, run func(ctx context.Context, secure bool, dir string) (R, error)) (insecure, secure R, err error) {
	for _, sec := range []bool{false, true} {
		if out != nil {
			fmt.Fprintf(out, "\n=== %s\n", securityLabel(sec))
		}
		r, err := run(ctx, sec, runDir(dir, securityLabel(sec)))
		if err != nil {
			return insecure, secure, fmt.Errorf("%s run: %w", securityLabel(sec), err)
		}
		if sec {
			secure = r
		} else {
			insecure = r
		}
	}
	return insecure, secure, nil
}

// Print writes the main figures of both runs side by side, with the
// secure run's as a multiple of the insecure one's. Times in milliseconds.
func (s *SubmitSecurity) Print(w io.Writer) {
	in, se := s.Insecure, s.Secure
	if in == nil || se == nil {
		return
	}
	ms := func(v float64) float64 { return v * 1000 }
	cpu := func(r *SubmitResult, role string) float64 {
		if r.CPU == nil {
			return 0
		}
		return r.CPU.ByRole[role].PerJobMS
	}
	row := func(name, format string, a, b float64) string {
		ratio := "-"
		if a > 0 {
			ratio = fmt.Sprintf("%.2f", b/a)
		}
		return fmt.Sprintf("%s\t"+format+"\t"+format+"\t%s", name, a, b, ratio)
	}
	fmt.Fprintf(w, "cost of security: %s, %d agents, %d clients for %gs, %d sequential jobs\n",
		in.Topology, in.Agents, in.Clients, in.DurationS, in.SubmitToRunningS.N)
	rows := []string{
		row("submit throughput (jobs/s)", "%.0f", in.SubmitsPerS, se.SubmitsPerS),
		row("submit latency p50 (ms)", "%.1f", ms(in.SubmitLatencyS.P50), ms(se.SubmitLatencyS.P50)),
		row("submit latency p99 (ms)", "%.1f", ms(in.SubmitLatencyS.P99), ms(se.SubmitLatencyS.P99)),
		row("submit-to-running p50 (ms)", "%.1f", ms(in.SubmitToRunningS.P50), ms(se.SubmitToRunningS.P50)),
		row("submit-to-running p99 (ms)", "%.1f", ms(in.SubmitToRunningS.P99), ms(se.SubmitToRunningS.P99)),
		row("raw etcd fenced txn/s", "%.0f", in.EtcdTxnsPerS, se.EtcdTxnsPerS),
		row("ratio submit/raw", "%.2f", in.Ratio, se.Ratio),
		row("etcd fenced txn alone p50 (ms)", "%.2f", ms(in.EtcdTxnP50S), ms(se.EtcdTxnP50S)),
	}
	if in.Etcd == "external" {
		rows = append(rows, row("CPU ms/job, servers", "%.3f", cpu(in, "server"), cpu(se, "server")),
			row("CPU ms/job, etcd", "%.3f", cpu(in, "etcd"), cpu(se, "etcd")))
	} else {
		rows = append(rows, row("CPU ms/job, servers (etcd members inside)", "%.3f", cpu(in, "server"), cpu(se, "server")))
	}
	idle := func(r *SubmitResult) float64 {
		if r.IdleCPU == nil {
			return 0
		}
		return r.IdleCPU.ByRole["all"].Cores - r.IdleCPU.ByRole["bench"].Cores
	}
	rows = append(rows,
		row("CPU ms/job, agents", "%.3f", cpu(in, "agent"), cpu(se, "agent")),
		row("CPU ms/job, bench clients", "%.3f", cpu(in, "bench"), cpu(se, "bench")),
		row("CPU ms/job, all", "%.3f", cpu(in, "all"), cpu(se, "all")),
		row("idle cluster CPU (cores)", "%.3f", idle(in), idle(se)))
	Table(w, "MEASURE\tINSECURE\tSECURE\tSECURE/INSECURE", rows...)
	other := func(r *SubmitResult) string {
		if r.CPU == nil {
			return "-"
		}
		return fmt.Sprintf("%.2f", r.CPU.OtherCores)
	}
	fmt.Fprintf(w, "other work on the machine during the submit runs: %s (insecure) and %s (secure) of %d cores; load average before: %.2f and %.2f\n",
		other(in), other(se), numCPU(in, se), in.LoadAvg, se.LoadAvg)
}

func numCPU(rs ...*SubmitResult) int {
	for _, r := range rs {
		if r.CPU != nil {
			return r.CPU.NumCPU
		}
	}
	return 0
}

// FailoverSecurity is `tandem bench failover --compare-security`: the same
// faults on an insecure cluster and then on a secured one. It is also the
// JSON output.
type FailoverSecurity struct {
	Insecure *FailoverResult `json:"insecure"`
	Secure   *FailoverResult `json:"secure"`
}

// RunFailoverSecurity runs RunFailover with cfg twice, on new clusters,
// first insecure and then secure (in subdirectories insecure/ and secure/
// of cfg.DataDir when that is set), and prints their figures side by side.
// It returns what was measured so far when a run fails.
func RunFailoverSecurity(ctx context.Context, cfg FailoverConfig) (*FailoverSecurity, error) {
	res := &FailoverSecurity{}
	var err error
	res.Insecure, res.Secure, err = runBoth(ctx, cfg.Out, cfg.DataDir, func(ctx context.Context, secure bool, dir string) (*FailoverResult, error) {
		c := cfg
		c.Secure, c.DataDir = secure, dir
		return RunFailover(ctx, c)
	})
	if err != nil {
		return res, err
	}
	if cfg.Out != nil {
		fmt.Fprintln(cfg.Out)
		res.Print(cfg.Out)
	}
	return res, nil
}

// Print writes both runs' figures side by side. Times in milliseconds.
func (s *FailoverSecurity) Print(w io.Writer) {
	in, se := s.Insecure, s.Secure
	if in == nil || se == nil {
		return
	}
	row := func(name string, a, b Summary) string {
		return fmt.Sprintf("%s\t%s\t%s", name, a.Row(), b.Row())
	}
	fmt.Fprintf(w, "cost of security: %s x %d, lease TTL %gs, %s etcd, %d clients\n", in.Fault, in.Trials, in.LeaseTTLS, in.Etcd, in.Clients)
	Table(w, "PHASE (ms)\tINSECURE P50\tP90\tP99\tMAX\tSECURE P50\tP90\tP99\tMAX",
		row("unavailability (client)", in.UnavailabilityS, se.UnavailabilityS),
		row("detection", in.DetectionS, se.DetectionS),
		row("election", in.ElectionS, se.ElectionS),
		row("transition", in.TransitionS, se.TransitionS),
		fmt.Sprintf("etcd fenced txn alone\t%.2f\t-\t-\t-\t%.2f\t-\t-\t-", in.EtcdTxnP50S*1000, se.EtcdTxnP50S*1000),
	)
	for _, r := range []*FailoverResult{in, se} {
		fmt.Fprintf(w, "%s: acknowledged %d, lost %d, unfinished %d, launches %d, duplicate launches %d, old actives not fenced %d\n",
			securityLabel(r.Secure), r.Acknowledged, r.Lost, r.Unfinished, r.Launches, r.Duplicates, r.NotFenced)
	}
}

// Failed reports whether either run broke a promise (FailoverResult.Failed).
func (s *FailoverSecurity) Failed() error {
	var errs []error
	for _, r := range []*FailoverResult{s.Insecure, s.Secure} {
		if r == nil {
			continue
		}
		if err := r.Failed(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", securityLabel(r.Secure), err))
		}
	}
	return errors.Join(errs...)
}
