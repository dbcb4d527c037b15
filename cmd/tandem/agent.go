package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/agent"
	"github.com/tandemhq/tandem/internal/pki"
)

// agentFlags are the flags of `tandem agent`.
type agentFlags struct {
	id, servers, workDir, listen, advertiseURL string
	cpu                                        float64
	memoryMB                                   int64
	labels                                     string
	pollWait, idlePollWait, killGrace          time.Duration
	logLevel, logFormat                        string
	runAs, allowUsers                          string
	allowRoot                                  bool
	tls                                        procTLS

	// getenv is os.Getenv; tests replace it.
	getenv func(string) string
}

func newAgentCmd() *cobra.Command {
	f := &agentFlags{getenv: os.Getenv}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a tandem agent: run the jobs the servers assign to this machine",
		Long: `Run a tandem agent. The agent keeps a long poll open to every server (the
configured ones, and every live server they name), launches the job attempts
the owners of the jobs' shards assign it as local processes, keeps their
output, and reports how they end. A server that owns nothing (a standby)
just holds the poll, so when ownership moves the new owner is heard at once;
attempts keep running through any change of server.

The work dir holds the agent's ledger of launched attempts (no attempt is ever
launched twice, even after a restart), the highest epoch it has seen for each
shard (an item from an older owner of a shard is refused), reports not yet
acknowledged, and each attempt's output.log.

Attempts do not run as root by accident. An agent running as root runs them
as --run-as (default nobody), with that user's groups, HOME and USER, in a
work dir it owns; their output.log stays the agent's. A job may name another
user (tandem job submit --user) only if --allow-users lists it, and root only
with --allow-root as well; an attempt naming any other user fails at once,
with the reason, and never runs. An agent not running as root runs attempts
as itself, and refuses to start if told to run them as anyone else.

  tandem agent --id worker1 --servers http://rm1:7070,http://rm2:7070,http://rm3:7070 \
    --listen 10.0.0.5:7080 --labels zone=a,disk=ssd --run-as tandem-job --allow-users etl,ml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.id, "id", "", "agent ID, unique in the cluster (required), e.g. worker1")
	fl.StringVar(&f.servers, "servers", "", "comma-separated server URLs (default $"+envServers+", else "+strings.Join(defaultServers, ",")+")")
	fl.StringVar(&f.workDir, "work-dir", "", "work dir: ledger, epoch, pending reports, attempt logs (default ./tandem-data/agent-<id>)")
	fl.StringVar(&f.listen, "listen", agent.DefaultListen, "host:port of the agent's HTTP server (attempt logs); port 0 picks a free one")
	fl.StringVar(&f.advertiseURL, "advertise-url", "", "URL servers use to reach this agent (default http://<listen address>, https with --tls-cert)")
	fl.Float64Var(&f.cpu, "cpu", 0, "CPU cores to offer (default: all of the machine's)")
	fl.Int64Var(&f.memoryMB, "memory", 0, "memory to offer, in MiB (default: all of the machine's)")
	fl.StringVar(&f.labels, "labels", "", "comma-separated key=value labels that jobs' constraints match, e.g. zone=a,gpu=true")
	fl.DurationVar(&f.pollWait, "poll-wait", agent.DefaultPollWait, "how long a server may hold a sync it has nothing to answer")
	fl.DurationVar(&f.idlePollWait, "idle-poll-wait", agent.DefaultIdlePollWait, "how long a server that owns no shard (a standby) may hold a sync; never less than --poll-wait (a standby answers at once when it takes a shard)")
	fl.DurationVar(&f.killGrace, "kill-grace", agent.DefaultKillGrace, "time between SIGTERM and SIGKILL when an attempt is killed or times out")
	fl.StringVar(&f.runAs, "run-as", "", "user attempts run as when their job names none (default: "+agent.DefaultRunAs+" if the agent runs as root, else the agent's own user)")
	fl.StringVar(&f.allowUsers, "allow-users", "", "comma-separated users a job may name with --user, besides the --run-as user (default: none)")
	fl.BoolVar(&f.allowRoot, "allow-root", false, "let attempts run as root: with --run-as root, or for jobs naming root if --allow-users lists it")
	f.tls.register(fl, "agent")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// config checks the flags and turns them into the agent's configuration
// (without its logger).
func (f *agentFlags) config() (agent.Config, error) {
	if f.id == "" {
		return agent.Config{}, usagef("--id is required: give each agent a unique ID, e.g. --id worker1")
	}
	servers, err := f.serverList()
	if err != nil {
		return agent.Config{}, err
	}
	if _, _, err := net.SplitHostPort(f.listen); err != nil {
		return agent.Config{}, usagef("--listen %q: want host:port, e.g. 127.0.0.1:7080 (port 0 picks a free one)", f.listen)
	}
	if f.advertiseURL != "" {
		u, err := url.Parse(f.advertiseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return agent.Config{}, usagef("--advertise-url %q: want http(s)://host:port", f.advertiseURL)
		}
	}
	if f.cpu < 0 {
		return agent.Config{}, usagef("--cpu %v: must not be negative (0 offers all of the machine's)", f.cpu)
	}
	if f.memoryMB < 0 {
		return agent.Config{}, usagef("--memory %d: must not be negative (0 offers all of the machine's)", f.memoryMB)
	}
	labels, err := parseLabels(f.labels)
	if err != nil {
		return agent.Config{}, err
	}
	if f.pollWait <= 0 {
		return agent.Config{}, usagef("--poll-wait %s: must be greater than zero", f.pollWait)
	}
	if f.idlePollWait <= 0 {
		return agent.Config{}, usagef("--idle-poll-wait %s: must be greater than zero", f.idlePollWait)
	}
	if f.killGrace <= 0 {
		return agent.Config{}, usagef("--kill-grace %s: must be greater than zero", f.killGrace)
	}
	if f.runAs != "" {
		if err := tandem.ValidateUserName(f.runAs); err != nil {
			return agent.Config{}, usagef("--run-as: %s", tandem.ErrorMessage(err))
		}
	}
	var allow []string
	for _, name := range strings.Split(f.allowUsers, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if err := tandem.ValidateUserName(name); err != nil {
			return agent.Config{}, usagef("--allow-users: %s", tandem.ErrorMessage(err))
		}
		allow = append(allow, name)
	}
	workDir := f.workDir
	if workDir == "" {
		workDir = filepath.Join("tandem-data", "agent-"+f.id)
	}
	return agent.Config{
		ID: f.id, Servers: servers, WorkDir: workDir, Listen: f.listen, AdvertiseURL: f.advertiseURL,
		Capacity: tandem.Resources{CPU: f.cpu, MemoryMB: f.memoryMB}, Labels: labels,
		PollWait: f.pollWait, IdlePollWait: f.idlePollWait, KillGrace: f.killGrace,
		RunAs: f.runAs, AllowUsers: allow, AllowRoot: f.allowRoot,
	}, nil
}

// serverList is --servers, else $TANDEM_SERVERS, else the tandem dev servers.
func (f *agentFlags) serverList() ([]string, error) {
	raw, from := f.servers, "--servers"
	if raw == "" {
		raw, from = f.getenv(envServers), "$"+envServers
	}
	if raw == "" {
		return defaultServers, nil
	}
	var out []string
	for _, s := range strings.Split(raw, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("%s: %q is not a server URL like http://127.0.0.1:7070", from, s)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, usagef("%s is empty: give at least one server URL, such as http://127.0.0.1:7070", from)
	}
	return out, nil
}

// parseLabels reads "k=v,k2=v2".
func parseLabels(s string) (map[string]string, error) {
	out := make(map[string]string)
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, usagef("--labels %q: %q is not key=value; want e.g. --labels zone=a,gpu=true", s, kv)
		}
		if _, dup := out[k]; dup {
			return nil, usagef("--labels %q: label %q is given twice", s, k)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

func runAgent(ctx context.Context, f *agentFlags) error {
	cfg, err := f.config()
	if err != nil {
		return err
	}
	log, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	cfg.Logger = log
	certs, err := f.tls.load(pki.RoleAgent, "", cfg.ID, log)
	if err != nil {
		return err
	}
	if certs != nil {
		for _, s := range cfg.Servers {
			if !strings.HasPrefix(s, "https://") {
				return usagef("--servers %q: with --tls-cert the agent syncs over https only", s)
			}
		}
		if cfg.AdvertiseURL != "" && !strings.HasPrefix(cfg.AdvertiseURL, "https://") {
			return usagef("--advertise-url %q: with --tls-cert the agent serves https only", cfg.AdvertiseURL)
		}
		// The sync presents the agent's certificate to servers; the
		// agent's own server (attempt logs) takes only servers.
		cfg.ClientTLS = pki.ClientConfig(certs, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer}})
		if cfg.ServerTLS, err = tlsServerConfig(certs, pki.ServerOptions{RequireClientCert: true, ClientRoles: []pki.Role{pki.RoleServer}}); err != nil {
			return err
		}
		defer watchTLS(ctx, certs, nil)()
	}
	a, err := agent.New(cfg)
	if err != nil {
		return usagef("%v", err)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	err = a.Start(startCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("start agent %s: %w", cfg.ID, err)
	}
	<-ctx.Done()
	log.Info("shutting down; running attempts die with this process", "agent", cfg.ID)
	return a.Close()
}
