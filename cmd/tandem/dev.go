package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/supervise"
)

type devFlags struct {
	servers      int
	agents       int
	basePort     int
	dataDir      string
	leaseTTL     time.Duration
	shards       int
	restartDelay time.Duration
	logLevel     string
	supervisors  int
	lb           string
	insecure     bool
}

func newDevCmd() *cobra.Command {
	f := &devFlags{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local HA cluster: every server its own process, each with an embedded etcd member",
		Long: `Run a complete local tandem cluster on loopback with nothing else installed:
N servers, each its own OS process with an embedded etcd member, so you can
kill -9 the active and watch another server take over. Ctrl-C (or SIGTERM)
stops everything and leaves no process behind.

It is secured by default (docs/SECURITY.md): a throwaway CA and
certificates, TLS between every process, etcd locked to the cluster with
client certificates, and tokens enforced, with a management token
bootstrapped for you. It prints the export lines a shell needs to use it
(TANDEM_SERVERS, TANDEM_CACERT, TANDEM_CLIENT_CERT, TANDEM_CLIENT_KEY,
TANDEM_TOKEN, and the TANDEM_ETCD_* of tandem supervise's commands), and
writes them to env.sh in the data directory. --insecure turns all of it off.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd.Context(), cmd.OutOrStdout(), f) },
	}
	fl := cmd.Flags()
	fl.IntVar(&f.servers, "servers", 3, "number of servers (1 to 9; odd numbers tolerate the most failures)")
	fl.IntVar(&f.agents, "agents", 2, "number of agents, each its own process (serving attempt logs on base-port+300+i)")
	fl.IntVar(&f.basePort, "base-port", 7070, "server i listens on base-port+i; its etcd member on base-port+100+i and base-port+200+i")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep data and logs here (default: a temporary directory removed on exit)")
	fl.DurationVar(&f.leaseTTL, "lease-ttl", 2*time.Second, "lease TTL of every server")
	fl.IntVar(&f.shards, "shards", 1, "number of shards: 1 is active/standby, more is active-active (every server owns some)")
	fl.DurationVar(&f.restartDelay, "restart-delay", 3*time.Second, "restart a server this long after it dies (0: leave it dead)")
	fl.StringVar(&f.logLevel, "log-level", "info", "servers' log level")
	fl.StringVar(&f.lb, "lb", "", "put a load balancer in front of the servers, driven by tandem lb: haproxy (--lb alone) or nginx (--lb=nginx); it listens on base-port+395")
	fl.Lookup("lb").NoOptDefVal = "haproxy"
	fl.BoolVar(&f.insecure, "insecure", false, "no TLS, no etcd authentication, no tokens: plain http on loopback, as before security existed")
	fl.IntVar(&f.supervisors, "supervisors", 2, "tandem supervise processes (nodes sv1, ...) making a demo service highly available (0: none; ports base-port+380+i, the demo on base-port+390)")
	return cmd
}

func runDev(ctx context.Context, out io.Writer, f *devFlags) error {
	if f.restartDelay < 0 {
		return usagef("--restart-delay must not be negative")
	}
	if f.shards < 1 || f.shards > 1024 {
		return usagef("--shards %d: use 1 (active/standby) to 1024", f.shards)
	}
	if f.supervisors < 0 || f.supervisors > 9 {
		return usagef("--supervisors %d: use 0 to 9", f.supervisors)
	}
	if f.lb != "" && f.lb != "haproxy" && f.lb != "nginx" {
		return usagef("--lb %q: want haproxy or nginx", f.lb)
	}
	if f.lb != "" {
		if _, err := exec.LookPath(f.lb); err != nil {
			return usagef("--lb %s: %s is not installed (apt-get install %s)", f.lb, f.lb, map[string]string{"haproxy": "haproxy", "nginx": "nginx-light"}[f.lb])
		}
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the tandem binary: %w", err)
	}
	dir, keep := f.dataDir, f.dataDir != ""
	if !keep {
		if dir, err = os.MkdirTemp("", "tandem-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	cfg := local.Config{Binary: bin, Servers: f.servers, Agents: f.agents, BasePort: f.basePort, DataDir: dir,
		LeaseTTL: f.leaseTTL, LogLevel: f.logLevel, Shards: f.shards, Supervisors: f.supervisors, LB: f.lb}
	if !f.insecure {
		cfg.Secure = filepath.Join(dir, "tls")
	}
	c, err := local.New(cfg)
	if err != nil {
		return usagef("%v", err)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	mode := "active/standby"
	if f.shards > 1 {
		mode = fmt.Sprintf("active-active, %d shards", f.shards)
	}
	security := "secured: TLS, etcd auth, tokens"
	if f.insecure {
		security = "insecure: plain http, no tokens"
	}
	fmt.Fprintf(out, "tandem dev: starting %d servers (%s, %s) on loopback, each its own process with an embedded etcd member, %d agents and %d supervisors\n", f.servers, mode, security, f.agents, f.supervisors)
	startCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	err = c.Start(startCtx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	wait := func(ctx context.Context) error { _, err := c.WaitActive(ctx); return err }
	if f.shards > 1 {
		wait = c.WaitOwned
	}
	if err := wait(ctx); err != nil {
		c.Stop(10 * time.Second)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	waitDemo(ctx, c)
	printDevCluster(ctx, out, c, dir, keep, f)
	out = &lockedWriter{w: out} // the demo's watch prints too
	go watchDemo(ctx, out, c, f.restartDelay)
	watchDev(ctx, out, c, f.restartDelay)
	fmt.Fprintln(out, "\ntandem dev: stopping every server...")
	c.Stop(10 * time.Second)
	fmt.Fprintln(out, "tandem dev: stopped")
	return nil
}

func printDevCluster(ctx context.Context, out io.Writer, c *local.Cluster, dir string, keep bool, f *devFlags) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nID\tURL\tPID\tSTATE\tLOG")
	activePID := 0
	for i, s := range c.Servers {
		state := "unknown"
		if st, err := c.Status(ctx, i); err == nil {
			state = describeState(st)
			if st.State == "active" && activePID == 0 {
				activePID = c.PID(i)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", s.ID, s.URL, c.PID(i), state, s.LogPath)
	}
	for _, a := range c.Agents {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", a.ID, a.URL, a.PID(), "agent", a.LogPath)
	}
	demoNode := ""
	for _, p := range c.Supervisors {
		state := "supervisor"
		if st, err := demoStatus(ctx, c, p.URL); err == nil && st.Node == p.ID {
			state = "supervisor, runs demo (" + st.State + ")"
			demoNode = p.ID
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", p.ID, p.URL, p.PID(), state, p.LogPath)
	}
	if c.LB != nil {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", "lb", c.LB.URL, c.LB.PID(), "tandem lb driving "+f.lb+" at "+c.LBURL, c.LB.LogPath)
	}
	tw.Flush()
	if c.DemoURL != "" {
		fmt.Fprintf(out, "\ndemo service (made HA by tandem supervise): %s, run by %s\n", c.DemoURL, orDash(demoNode))
	}
	login := ""
	if c.Token != "" {
		login = " (log in with the TANDEM_TOKEN below)"
	}
	fmt.Fprintf(out, "\nweb UI: %s/ui/%s; every server serves it\n", c.Servers[0].URL, login)
	if c.LBURL != "" {
		fmt.Fprintf(out, "lb %s  (%s in front of the servers, kept in step by tandem lb: TANDEM_SERVERS=%s works through it)\n", c.LBURL, f.lb, c.LBURL)
	}
	if keep {
		fmt.Fprintf(out, "\ndata: %s (kept)\n", dir)
	} else {
		fmt.Fprintf(out, "\ndata: %s (removed on exit; --data-dir keeps it)\n", dir)
	}
	self := "tandem"
	if exe, err := os.Executable(); err == nil && strings.Contains(exe, "go-build") {
		self = "go run ./cmd/tandem"
	}
	env := devEnv(c, f)
	if len(env) > 0 {
		file := filepath.Join(dir, "env.sh")
		if err := os.WriteFile(file, []byte(strings.Join(env, "\n")+"\n"), 0o600); err != nil {
			fmt.Fprintf(out, "tandem dev: write %s: %v\n", file, err)
		}
		fmt.Fprintf(out, "\nThe cluster is secured. In another terminal, first (or: . %s):\n", file)
		for _, line := range env {
			fmt.Fprintf(out, "  %s\n", line)
		}
		fmt.Fprintln(out, "\nThen try:")
	} else {
		fmt.Fprintln(out, "\nTry, in another terminal:")
	}
	fmt.Fprintf(out, "  %s job submit -- echo hello        # prints the job ID\n", self)
	fmt.Fprintf(out, "  %s job logs <job-id>\n", self)
	fmt.Fprintf(out, "  %s job submit -- sleep 30; then kill -9 the active: the job keeps running and ends succeeded\n", self)
	fmt.Fprintf(out, "  %s job list\n", self)
	fmt.Fprintf(out, "  %s agent list\n", self)
	if f.shards > 1 {
		fmt.Fprintf(out, "  %s admin shards                   # every shard's owner and epoch\n", self)
		fmt.Fprintf(out, "  %s admin servers                  # how many shards each server owns\n", self)
		fmt.Fprintf(out, "  kill -9 %d            # a server: the others take its shards within about 0.1 s\n", activePID)
		fmt.Fprintf(out, "  %s admin drain rm1                # move rm1's shards away (--undo to bring it back)\n", self)
		fmt.Fprintf(out, "  %s admin history\n", self)
	} else {
		fmt.Fprintf(out, "  %s admin get-all-service-state\n", self)
		fmt.Fprintf(out, "  kill -9 %d            # the active: another server takes over within about 0.1 s\n", activePID)
		fmt.Fprintf(out, "  %s admin history\n", self)
		if len(c.Servers) > 1 {
			fmt.Fprintf(out, "  %s admin failover <active-id> <standby-id>   # graceful switch, no TTL wait\n", self)
		}
	}
	if c.DemoURL != "" {
		if c.TLS == nil {
			fmt.Fprintf(out, "  export TANDEM_ETCD_ENDPOINTS=%s\n", strings.Join(c.EtcdEndpoints(), ","))
		}
		fmt.Fprintf(out, "  curl %s                # says which node and epoch serve it\n", c.DemoURL)
		fmt.Fprintf(out, "  %s supervise status\n", self)
		other := "sv2"
		for _, p := range c.Supervisors {
			if p.ID == demoNode {
				fmt.Fprintf(out, "  kill -9 %d            # %s, the supervisor running demo: another node takes it over in about a second\n", p.PID(), p.ID)
			} else {
				other = p.ID
			}
		}
		fmt.Fprintf(out, "  %s supervise move demo %s --wait 10s\n", self, other)
		fmt.Fprintf(out, "  %s supervise history\n", self)
	}
	fmt.Fprintln(out, "\nCtrl-C stops everything. HA changes are printed below.")
}

// devEnv returns the export lines a shell needs to use the cluster: the
// servers' URLs when they are not the CLI's default, and with security the
// CLI's certificate, CA and token, and the etcd certificate and endpoints
// of tandem supervise's commands (which go to etcd directly).
func devEnv(c *local.Cluster, f *devFlags) []string {
	var env []string
	if f.basePort != 7070 || f.servers != 3 || c.TLS != nil {
		env = append(env, "export TANDEM_SERVERS="+strings.Join(c.URLs(), ","))
	}
	for _, kv := range c.SecureEnv() {
		env = append(env, "export "+kv)
	}
	if c.TLS != nil && c.DemoURL != "" {
		ef := c.EtcdFiles()
		env = append(env, "export TANDEM_ETCD_ENDPOINTS="+strings.Join(c.EtcdEndpoints(), ","),
			"export TANDEM_ETCD_CACERT="+ef.CACert, "export TANDEM_ETCD_CERT="+ef.Cert, "export TANDEM_ETCD_KEY="+ef.Key)
	}
	return env
}

// describeState is how tandem dev shows a server's state: the active's
// epoch with one shard, how many shards a server owns with several.
func describeState(st tandem.ServerStatus) string {
	switch {
	case st.Shards > 1 && st.Draining:
		return fmt.Sprintf("draining (%d shards)", len(st.Owned))
	case st.Shards > 1:
		return fmt.Sprintf("%s (%d of %d shards)", st.State, len(st.Owned), st.Shards)
	case st.State == tandem.StateActive:
		return fmt.Sprintf("active (epoch %d)", st.Epoch)
	}
	return string(st.State)
}

// watchDev prints every change of HA state and restarts servers and agents
// that die, until ctx ends.
func watchDev(ctx context.Context, out io.Writer, c *local.Cluster, restartDelay time.Duration) {
	last := make([]string, len(c.Servers))
	restartAt := make([]time.Time, len(c.Servers))
	agentDown := make([]time.Time, len(c.Agents))
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for i, a := range c.Agents {
			now := time.Now()
			if a.PID() != 0 {
				continue
			}
			if agentDown[i].IsZero() {
				_, howEnded := a.Exited()
				fmt.Fprintf(out, "%s %s exited (%v)", now.Format("15:04:05.000"), a.ID, howEnded())
				if restartDelay > 0 {
					fmt.Fprintf(out, "; restarting in %s", restartDelay)
				}
				fmt.Fprintln(out)
				agentDown[i] = now
			}
			if restartDelay > 0 && now.Sub(agentDown[i]) >= restartDelay {
				if err := a.Start(); err != nil {
					fmt.Fprintf(out, "%s restart %s: %v\n", now.Format("15:04:05.000"), a.ID, err)
				} else {
					fmt.Fprintf(out, "%s %s restarted (pid %d)\n", now.Format("15:04:05.000"), a.ID, a.PID())
				}
				agentDown[i] = time.Time{}
			}
		}
		for i, s := range c.Servers {
			now := time.Now()
			if c.PID(i) == 0 {
				if last[i] != "dead" {
					_, howEnded := c.Exited(i)
					fmt.Fprintf(out, "%s %s exited (%v)", now.Format("15:04:05.000"), s.ID, howEnded())
					if restartDelay > 0 {
						restartAt[i] = now.Add(restartDelay)
						fmt.Fprintf(out, "; restarting in %s", restartDelay)
					}
					fmt.Fprintln(out)
					last[i] = "dead"
				}
				if restartDelay > 0 && now.After(restartAt[i]) {
					if err := c.StartServer(i); err != nil {
						fmt.Fprintf(out, "%s restart %s: %v\n", now.Format("15:04:05.000"), s.ID, err)
						restartAt[i] = now.Add(restartDelay)
					} else {
						fmt.Fprintf(out, "%s %s restarted (pid %d)\n", now.Format("15:04:05.000"), s.ID, c.PID(i))
						last[i] = "restarted"
					}
				}
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := c.Status(sctx, i)
			cancel()
			if err != nil {
				continue
			}
			cur := describeState(st)
			if cur != last[i] && last[i] != "" {
				fmt.Fprintf(out, "%s %s is %s\n", now.Format("15:04:05.000"), s.ID, cur)
			}
			last[i] = cur
		}
	}
}

// demoStatus asks the supervisor at url where the demo service runs.
func demoStatus(ctx context.Context, c *local.Cluster, url string) (supervise.ServiceStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/supervise/services", nil)
	if err != nil {
		return supervise.ServiceStatus{}, err
	}
	c.Authorize(req)
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		return supervise.ServiceStatus{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return supervise.ServiceStatus{}, fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	var all []supervise.ServiceStatus
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		return supervise.ServiceStatus{}, err
	}
	for _, st := range all {
		if st.Service == "demo" {
			return st, nil
		}
	}
	return supervise.ServiceStatus{}, errors.New("no demo service")
}

// watchDemo prints every change of the demo service's node, epoch or state,
// and restarts supervisors that die, until ctx ends.
func watchDemo(ctx context.Context, out io.Writer, c *local.Cluster, restartDelay time.Duration) {
	if len(c.Supervisors) == 0 {
		return
	}
	down := make([]time.Time, len(c.Supervisors))
	last := ""
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		for i, p := range c.Supervisors {
			if p.PID() != 0 {
				continue
			}
			if down[i].IsZero() {
				_, howEnded := p.Exited()
				fmt.Fprintf(out, "%s supervisor %s exited (%v)\n", now.Format("15:04:05.000"), p.ID, howEnded())
				down[i] = now
			}
			if restartDelay > 0 && now.Sub(down[i]) >= restartDelay {
				if err := p.Start(); err == nil {
					fmt.Fprintf(out, "%s supervisor %s restarted (pid %d)\n", now.Format("15:04:05.000"), p.ID, p.PID())
				}
				down[i] = time.Time{}
			}
		}
		for _, p := range c.Supervisors {
			if p.PID() == 0 {
				continue
			}
			st, err := demoStatus(ctx, c, p.URL)
			if err != nil {
				continue
			}
			cur := fmt.Sprintf("demo is %s on %s (epoch %d)", st.State, orDash(st.Node), st.Epoch)
			if st.Node == "" {
				cur = "demo runs nowhere: " + orDash(st.Reason)
			}
			if cur != last && last != "" {
				fmt.Fprintf(out, "%s %s\n", now.Format("15:04:05.000"), cur)
			}
			last = cur
			break
		}
	}
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// waitDemo waits (up to 15 s) until the demo service is healthy somewhere,
// so the first table shows where it runs.
func waitDemo(ctx context.Context, c *local.Cluster) {
	if len(c.Supervisors) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if st, err := demoStatus(ctx, c, c.Supervisors[0].URL); err == nil && st.State == supervise.StateHealthy {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
