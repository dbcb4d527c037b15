// Package local runs a tandem cluster on this machine, each server its own
// OS process of the tandem binary, on loopback ports. `tandem dev` uses it
// to give users a cluster they can kill -9; the end-to-end tests use it to
// kill, pause and restart real server processes.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/pki"
	"github.com/tandemhq/tandem/internal/supervise/proc"
	"github.com/tandemhq/tandem/internal/transport"
)

// Config describes a local cluster.
type Config struct {
	Binary  string // path to the tandem binary
	Servers int    // number of servers, 1 to 9
	// Initial, when positive, is how many of the servers Start starts (the
	// first ones); the others stay stopped until StartServer, so a test can
	// add servers to a running cluster (with shared or external etcd).
	Initial  int
	BasePort int    // server i serves HTTP on BasePort+i; with embedded etcd, its member uses BasePort+100+i (client) and BasePort+200+i (peer)
	DataDir  string // each server keeps its data and log under DataDir/<id>
	Cluster  string // cluster name (default "default")
	// EtcdEndpoints, when set, points every server at an existing etcd
	// instead of giving each an embedded member.
	EtcdEndpoints string
	LeaseTTL      time.Duration // 0: the server's default
	// Shards, when above 1, makes the cluster active-active with that many
	// shards (0: the server's default, one shard).
	Shards       int
	AutoFailover *bool               // nil: the server's default (on)
	ExtraArgs    []string            // appended to every server's command line
	ServerArgs   map[string][]string // appended to one server's command line, by ID
	LogLevel     string              // log level of every process (default info)
	// Agents is the number of agents (agent1, ...); agent i serves its logs
	// on BasePort+300+i.
	Agents    int
	AgentArgs []string // appended to every agent's command line
	// ExternalEtcd, when positive, runs that many etcd members as separate
	// processes (e1, ...; client port BasePort+700+m, peer BasePort+800+m)
	// and points the servers at them.
	ExternalEtcd int
	EtcdArgs     []string // appended to every external etcd member's command line
	// Supervisors, when positive, runs that many `tandem supervise`
	// processes (nodes sv1, ...; HTTP on BasePort+380+i) against the
	// cluster's etcd, making a demo service HA: `tandem demo-service` on
	// BasePort+390, one node at a time. As root its command runs in a cgroup
	// under <cgroup2>/tandem-dev-<cluster>/<node>; otherwise in a process
	// group.
	Supervisors int
	// LB, when set (haproxy or nginx), runs `tandem lb` with that proxy in
	// front of the servers: the proxy takes API traffic on BasePort+395,
	// tandem lb's status is on BasePort+396.
	LB string
	// LBArgs are appended to tandem lb's command line (--check-inter,
	// --service, ...).
	LBArgs []string
	// Proxied puts every server's HTTP port and etcd connections behind
	// proxies (faultnet), so Partition can cut a server off. Proxies use
	// ports BasePort+400 to BasePort+999.
	Proxied bool
	// EtcdTLS, when set, locks the embedded etcd members down
	// (docs/SECURITY.md, "etcd locked down"): Start makes in this directory
	// a CA for the cluster (or uses the one there) and a server certificate
	// for every server (server-rm1.pem, ...), supervisor (server-sv1.pem,
	// ...), tandem lb (server-lb.pem) and one for tests and tools
	// (server-local.pem, EtcdFiles); the members speak TLS on https URLs
	// and the servers turn etcd authentication on, and every process that
	// talks to etcd is given its certificate. Embedded etcd only.
	EtcdTLS string
	// Secure, when set, turns on everything docs/SECURITY.md describes,
	// with the cluster's CA and certificates in this directory (made there
	// if absent, kept if present): TLS between the servers and agents
	// (EnableTLS), etcd locked down (EtcdTLS is taken to be this directory;
	// external members get certificates and Start sets their
	// authentication up; an etcd of EtcdEndpoints must already be locked
	// down for the cluster with this directory's CA), and tokens enforced
	// (--acl), Start bootstrapping a management token (Cluster.Token, kept
	// in TokenFile). Supervisors serve their API over TLS and take
	// tokens too; tandem lb's proxy serves TLS and calls the servers over
	// TLS.
	Secure string
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.Servers < 1 || c.Servers > 9 {
		return fmt.Errorf("servers must be from 1 to 9, not %d", c.Servers)
	}
	if c.Supervisors < 0 || c.Supervisors > 9 {
		return fmt.Errorf("supervisors must be from 0 to 9, not %d", c.Supervisors)
	}
	if c.LB != "" && c.LB != "haproxy" && c.LB != "nginx" {
		return fmt.Errorf("load balancer %q: want haproxy or nginx", c.LB)
	}
	if c.Agents < 0 || c.Agents > 99 {
		return fmt.Errorf("agents must be from 0 to 99, not %d", c.Agents)
	}
	if c.BasePort < 1024 || c.BasePort+1000 > 65535 {
		return fmt.Errorf("base port %d is out of range: a cluster uses ports %d to %d", c.BasePort, c.BasePort, c.BasePort+999)
	}
	if c.ExternalEtcd < 0 || c.ExternalEtcd > 9 || c.ExternalEtcd > 0 && c.EtcdEndpoints != "" {
		return fmt.Errorf("external etcd members must be from 0 to 9, and not with etcd endpoints")
	}
	if c.DataDir == "" {
		return errors.New("a data directory is required")
	}
	if c.Binary == "" {
		return errors.New("the tandem binary path is required")
	}
	if c.Initial < 0 || c.Initial > c.Servers {
		return fmt.Errorf("initial servers must be from 0 (all) to %d, not %d", c.Servers, c.Initial)
	}
	if c.Initial > 0 && c.Initial < c.Servers && c.EtcdEndpoints == "" && c.ExternalEtcd == 0 {
		return errors.New("servers added later need shared etcd (etcd endpoints or external etcd), not embedded members")
	}
	if c.Secure != "" {
		if c.EtcdTLS != "" && c.EtcdTLS != c.Secure {
			return errors.New("a secured cluster keeps its etcd certificates with the others: EtcdTLS must be empty or Secure's directory")
		}
		c.EtcdTLS = c.Secure
	}
	if c.EtcdTLS != "" && c.EtcdEndpoints != "" && c.Secure == "" {
		return errors.New("etcd TLS locks down the servers' embedded or external etcd members: not with etcd endpoints (Secure takes an etcd already locked down)")
	}
	if c.Shards < 0 || c.Shards > 1024 {
		return fmt.Errorf("shards must be from 1 to 1024, not %d", c.Shards)
	}
	if c.Cluster == "" {
		c.Cluster = "default"
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	return nil
}

// Proc is one process of the cluster: a server or an agent.
type Proc struct {
	ID      string
	URL     string
	LogPath string
	binary  string
	args    []string
	health  string // path that answers 200 once the process is ready

	// hc is how the cluster's checks reach it; nil means httpClient.
	// EnableTLS (tls.go) sets it.
	hc *http.Client

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // how the last process ended
}

// Cluster is a running local cluster.
type Cluster struct {
	cfg     Config
	Servers []*Proc
	Agents  []*Proc
	Etcd    []*Proc // external etcd members, if any
	// Supervisors run the demo service (Config.Supervisors); DemoURL is
	// where it answers, whichever node runs it.
	Supervisors []*Proc
	DemoURL     string
	// TLS and Token, for a cluster with Config.Secure, are the CLI's
	// certificate files and the management token (set by Start);
	// SecureEnv returns them as environment variables.
	TLS   *TLSFiles
	Token string
	// LB runs tandem lb (Config.LB); LBURL is where the proxy takes API
	// traffic.
	LB      *Proc
	LBURL   string
	lbDir   string // the proxy's files, removed by Stop
	proxies []proxySpec
	ports   []int // every port the cluster listens on
}

// AgentID returns the ID of agent i: agent1, agent2, ...
func AgentID(i int) string { return "agent" + strconv.Itoa(i+1) }

// ServerID returns the ID of server i: rm1, rm2, ...
func ServerID(i int) string { return "rm" + strconv.Itoa(i+1) }

// New lays out a cluster; Start starts it.
func New(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg}
	used := make(map[int]bool)
	port := func(off, i int) int {
		p := cfg.BasePort + off + i
		used[p] = true
		return p
	}
	defer func() {
		for p := range used {
			c.ports = append(c.ports, p)
		}
		sort.Ints(c.ports)
	}()
	url := func(p int) string { return fmt.Sprintf("http://127.0.0.1:%d", p) }
	// etcdURL is a URL of an embedded member's port, https when locked down.
	etcdURL := func(p int) string { return fmt.Sprintf("%s://127.0.0.1:%d", c.etcdScheme(), p) }

	// External etcd: members e1..eN, each its own process.
	var memberURLs []string
	if cfg.ExternalEtcd > 0 {
		var initial []string
		for m := 0; m < cfg.ExternalEtcd; m++ {
			initial = append(initial, fmt.Sprintf("e%d=%s", m+1, etcdURL(port(800, m))))
		}
		for m := 0; m < cfg.ExternalEtcd; m++ {
			id := fmt.Sprintf("e%d", m+1)
			dir := filepath.Join(cfg.DataDir, id)
			p := &Proc{ID: id, binary: cfg.Binary, URL: etcdURL(port(700, m)), LogPath: filepath.Join(dir, "etcd.log"), health: "/health"}
			p.args = []string{"etcd", "--name", id, "--data-dir", dir, "--client-url", p.URL,
				"--peer-url", etcdURL(port(800, m)), "--initial-cluster", strings.Join(initial, ","),
				"--cluster-token", "tandem-bench-" + cfg.Cluster}
			if f := c.etcdFiles(id); !f.IsZero() {
				p.args = append(p.args, "--cacert", f.CACert, "--cert", f.Cert, "--key", f.Key)
			}
			p.args = append(p.args, cfg.EtcdArgs...)
			c.Etcd = append(c.Etcd, p)
			memberURLs = append(memberURLs, p.URL)
		}
	}

	// Embedded etcd: member i lives in server i; with proxies, others reach
	// its peer port through a proxy.
	var initial []string
	for i := 0; i < cfg.Servers; i++ {
		peer := port(200, i)
		if cfg.Proxied {
			peer = port(600, i)
		}
		initial = append(initial, fmt.Sprintf("%s=%s", ServerID(i), etcdURL(peer)))
	}
	for i := 0; i < cfg.Servers; i++ {
		id := ServerID(i)
		dir := filepath.Join(cfg.DataDir, id)
		s := &Proc{ID: id, binary: cfg.Binary, URL: url(port(0, i)), LogPath: filepath.Join(dir, "server.log"), health: "/healthz"}
		listen := port(0, i)
		if cfg.Proxied {
			listen = port(400, i) // clients and peers reach it through the proxy at its URL
			c.proxies = append(c.proxies, proxySpec{server: i, listen: port(0, i), target: port(400, i)})
		}
		s.args = []string{"server", "--id", id, "--cluster", cfg.Cluster, "--advertise-url", s.URL,
			"--listen", fmt.Sprintf("127.0.0.1:%d", listen), "--data-dir", dir, "--log-level", cfg.LogLevel}
		switch {
		case cfg.EtcdEndpoints != "":
			s.args = append(s.args, "--etcd-endpoints", cfg.EtcdEndpoints)
			s.args = append(s.args, c.etcdCertArgs(id)...)
		case cfg.ExternalEtcd > 0:
			eps := memberURLs
			if cfg.Proxied {
				eps = nil
				for m := 0; m < cfg.ExternalEtcd; m++ {
					c.proxies = append(c.proxies, proxySpec{server: i, listen: port(900, i*10+m), target: port(700, m)})
					eps = append(eps, etcdURL(port(900, i*10+m)))
				}
			}
			s.args = append(s.args, "--etcd-endpoints", strings.Join(eps, ","))
			s.args = append(s.args, c.etcdCertArgs(id)...)
		default:
			s.args = append(s.args, "--embed-etcd",
				"--etcd-client-url", etcdURL(port(100, i)),
				"--etcd-peer-url", etcdURL(port(200, i)),
				"--initial-cluster", strings.Join(initial, ","),
				"--etcd-cluster-token", "tandem-dev-"+cfg.Cluster)
			if cfg.Proxied {
				c.proxies = append(c.proxies,
					proxySpec{server: i, listen: port(500, i), target: port(100, i)},
					proxySpec{server: i, listen: port(600, i), target: port(200, i)})
				s.args = append(s.args, "--etcd-endpoints", etcdURL(port(500, i)), "--etcd-advertise-peer-url", etcdURL(port(600, i)))
			}
			s.args = append(s.args, c.etcdCertArgs(id)...)
		}
		if cfg.LeaseTTL != 0 {
			s.args = append(s.args, "--lease-ttl", cfg.LeaseTTL.String())
		}
		if cfg.Shards > 0 {
			s.args = append(s.args, "--shards", strconv.Itoa(cfg.Shards))
		}
		if cfg.AutoFailover != nil {
			s.args = append(s.args, "--auto-failover="+strconv.FormatBool(*cfg.AutoFailover))
		}
		s.args = append(s.args, cfg.ExtraArgs...)
		s.args = append(s.args, cfg.ServerArgs[id]...)
		c.Servers = append(c.Servers, s)
	}
	servers := strings.Join(c.URLs(), ",")
	for i := 0; i < cfg.Agents; i++ {
		id := AgentID(i)
		dir := filepath.Join(cfg.DataDir, id)
		p := &Proc{ID: id, binary: cfg.Binary, URL: url(port(300, i)), LogPath: filepath.Join(dir, "agent.log"), health: "/healthz"}
		p.args = []string{"agent", "--id", id, "--servers", servers, "--work-dir", dir,
			"--listen", fmt.Sprintf("127.0.0.1:%d", port(300, i)), "--log-level", cfg.LogLevel}
		if os.Geteuid() == 0 {
			// A local cluster is one person's, on one machine, in their
			// private data dir (a 0700 temp dir for tandem dev and tests),
			// which nobody, the agent's default, could not even reach; its
			// attempts run as the person who started it, as they always
			// have, root included. AgentArgs may still say otherwise.
			p.args = append(p.args, "--run-as", "root", "--allow-root")
		}
		p.args = append(p.args, cfg.AgentArgs...)
		c.Agents = append(c.Agents, p)
	}
	if cfg.Supervisors > 0 {
		eps := c.EtcdEndpoints()
		demo := port(390, 0)
		c.DemoURL = url(demo)
		cgroups := "none"
		if os.Geteuid() == 0 {
			if mount, err := supervisedCgroupMount(); err == nil {
				cgroups = filepath.Join(mount, "tandem-dev-"+cfg.Cluster)
			}
		}
		for i := 0; i < cfg.Supervisors; i++ {
			id := SupervisorID(i)
			dir := filepath.Join(cfg.DataDir, id)
			p := &Proc{ID: id, binary: cfg.Binary, URL: url(port(380, i)), LogPath: filepath.Join(dir, "supervise.log"), health: "/healthz"}
			parent := cgroups
			if parent != "none" {
				parent = filepath.Join(parent, id)
			}
			p.args = []string{"supervise", "--service", "demo", "--node", id, "--cluster", cfg.Cluster,
				"--etcd-endpoints", strings.Join(eps, ","), "--listen", fmt.Sprintf("127.0.0.1:%d", port(380, i)),
				"--advertise", p.URL, "--fencing", "self", "--health", "http:" + c.DemoURL + "/",
				"--health-interval", "200ms", "--start-timeout", "10s", "--restarts", "2", "--ban", "30s",
				"--cgroup-parent", parent, "--log-dir", dir, "--log-level", cfg.LogLevel}
			p.args = append(p.args, c.etcdCertArgs(id)...)
			p.args = append(p.args, "--", cfg.Binary, "demo-service", "--listen", fmt.Sprintf("127.0.0.1:%d", demo))
			c.Supervisors = append(c.Supervisors, p)
		}
	}
	if cfg.LB != "" {
		dir := filepath.Join(cfg.DataDir, "lb")
		c.LBURL = url(port(395, 0))
		p := &Proc{ID: "lb", binary: cfg.Binary, URL: url(port(396, 0)), LogPath: filepath.Join(dir, "lb.log"), health: "/healthz"}
		// The proxy's own files go where its unprivileged workers can reach
		// them (NGINX's run as nobody; a data directory made by MkdirTemp
		// or t.TempDir is closed to them).
		c.lbDir = filepath.Join(os.TempDir(), fmt.Sprintf("tandem-lb-%s-%d", cfg.Cluster, port(395, 0)))
		p.args = []string{"lb", "--proxy", cfg.LB, "--listen", fmt.Sprintf("127.0.0.1:%d", port(395, 0)),
			"--cluster", cfg.Cluster, "--etcd-endpoints", strings.Join(c.EtcdEndpoints(), ","), "--dir", c.lbDir,
			"--http", fmt.Sprintf("127.0.0.1:%d", port(396, 0)), "--log-level", cfg.LogLevel}
		p.args = append(p.args, c.etcdCertArgs("lb")...)
		p.args = append(p.args, cfg.LBArgs...)
		c.LB = p
	}
	if err := c.secureOn(); err != nil {
		return nil, err
	}
	return c, nil
}

// SupervisorID returns the node name of supervisor i: sv1, sv2, ...
func SupervisorID(i int) string { return "sv" + strconv.Itoa(i+1) }

// supervisedCgroupMount finds the cgroup v2 mount, like package proc.
func supervisedCgroupMount() (string, error) {
	return proc.CgroupMount()
}

// proxySpec is a proxy of server's traffic: listen forwards to target.
type proxySpec struct {
	server, listen, target int
	p                      *faultnet.Proxy
}

// EtcdEndpoints returns the etcd client URLs, not through any proxy.
func (c *Cluster) EtcdEndpoints() []string {
	switch {
	case c.cfg.EtcdEndpoints != "":
		return strings.Split(c.cfg.EtcdEndpoints, ",")
	case len(c.Etcd) > 0:
		var out []string
		for _, e := range c.Etcd {
			out = append(out, e.URL)
		}
		return out
	default:
		var out []string
		for i := range c.Servers {
			out = append(out, fmt.Sprintf("%s://127.0.0.1:%d", c.etcdScheme(), c.cfg.BasePort+100+i))
		}
		return out
	}
}

// Partition cuts server i off: its HTTP port, its etcd connections and (with
// embedded etcd) its member's peer port go silent. It needs Proxied.
func (c *Cluster) Partition(i int) error { return c.setBlocked(i, true) }

// Heal undoes Partition.
func (c *Cluster) Heal(i int) error { return c.setBlocked(i, false) }

func (c *Cluster) setBlocked(i int, blocked bool) error {
	if !c.cfg.Proxied {
		return errors.New("partitions need a cluster started with Proxied")
	}
	for _, ps := range c.proxies {
		if ps.server != i || ps.p == nil {
			continue
		}
		if blocked {
			ps.p.Block()
		} else {
			ps.p.Unblock()
		}
	}
	return nil
}

// URLs returns every server's URL.
func (c *Cluster) URLs() []string {
	out := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		out[i] = s.URL
	}
	return out
}

// Start starts every server process and waits until each answers /healthz
// or ctx ends.
func (c *Cluster) Start(ctx context.Context) error {
	// A port taken by another cluster would make this one's process exit
	// while the other answers its health checks: refuse at once instead.
	for _, p := range c.ports {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return fmt.Errorf("port %d is already in use (another tandem dev or cluster?); pick another --base-port: %w", p, err)
		}
		ln.Close()
	}
	for k := range c.proxies {
		ps := &c.proxies[k]
		p, err := faultnet.Listen(fmt.Sprintf("127.0.0.1:%d", ps.listen), fmt.Sprintf("127.0.0.1:%d", ps.target))
		if err != nil {
			c.Stop(time.Second)
			return fmt.Errorf("proxy for %s: %w", c.Servers[ps.server].ID, err)
		}
		ps.p = p
	}
	if err := c.makeEtcdCerts(); err != nil {
		c.Stop(time.Second)
		return err
	}
	if err := c.etcdChecks(); err != nil {
		c.Stop(time.Second)
		return err
	}
	for _, e := range c.Etcd {
		if err := e.Start(); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	for _, e := range c.Etcd {
		if err := e.WaitHealthy(ctx); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	if err := c.setupEtcdAuth(ctx); err != nil {
		c.Stop(5 * time.Second)
		return err
	}
	initial := len(c.Servers)
	if c.cfg.Initial > 0 {
		initial = c.cfg.Initial
	}
	for i := range initial {
		if err := c.StartServer(i); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	for i := range initial {
		if err := c.WaitHealthy(ctx, i); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	if err := c.bootstrapToken(ctx); err != nil {
		c.Stop(5 * time.Second)
		return err
	}
	for _, a := range c.Agents {
		if err := a.Start(); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	for _, a := range c.Agents {
		if err := a.WaitHealthy(ctx); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	for _, p := range c.Supervisors {
		if err := p.Start(); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	for _, p := range c.Supervisors {
		if err := p.WaitHealthy(ctx); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
	}
	if c.LB != nil {
		if err := c.LB.Start(); err != nil {
			c.Stop(5 * time.Second)
			return err
		}
		if err := c.LB.WaitHealthy(ctx); err != nil {
			c.Stop(5 * time.Second)
			return fmt.Errorf("%w (see %s)", err, c.LB.LogPath)
		}
	}
	return nil
}

// StartServer starts server i's process (again, if it has exited).
func (c *Cluster) StartServer(i int) error { return c.Servers[i].Start() }

// StopServer stops server i gracefully (SIGTERM: an owner resigns first),
// killing it if it has not exited within grace, and waits for it to be gone.
func (c *Cluster) StopServer(i int, grace time.Duration) error {
	if c.PID(i) == 0 {
		return fmt.Errorf("%s is not running", c.Servers[i].ID)
	}
	c.stopAll([]*Proc{c.Servers[i]}, grace)
	return nil
}

// Start starts the process (again, if it has exited).
func (s *Proc) Start() error { return s.start(s.args) }

// StartWith starts the process (again) with extra arguments after its own,
// for this run only (a test's failpoint).
func (s *Proc) StartWith(extra ...string) error {
	return s.start(append(slices.Clone(s.args), extra...))
}

func (s *Proc) start(args []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		select {
		case <-s.exited:
		default:
			return fmt.Errorf("%s is already running (pid %d)", s.ID, s.cmd.Process.Pid)
		}
	}
	if err := os.MkdirAll(filepath.Dir(s.LogPath), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with its parent, so a killed `tandem dev` or test
	// leaves nothing behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.ID, err)
	}
	exited := make(chan struct{})
	s.cmd, s.exited, s.err = cmd, exited, nil
	go func() {
		err := cmd.Wait()
		logf.Close()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(exited)
	}()
	return nil
}

// PID returns server i's process ID, or 0 if it is not running.
func (c *Cluster) PID(i int) int { return c.Servers[i].PID() }

// PID returns the process ID, or 0 if it is not running.
func (s *Proc) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || !running(s.exited) {
		return 0
	}
	return s.cmd.Process.Pid
}

func running(exited chan struct{}) bool {
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Exited returns a channel closed when server i's current process ends,
// and how it ended once it has.
func (c *Cluster) Exited(i int) (<-chan struct{}, func() error) { return c.Servers[i].Exited() }

// Exited returns a channel closed when the current process ends, and how it
// ended once it has.
func (s *Proc) Exited() (<-chan struct{}, func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.exited
	return ch, func() error { s.mu.Lock(); defer s.mu.Unlock(); return s.err }
}

// Signal sends sig to server i's process.
func (c *Cluster) Signal(i int, sig syscall.Signal) error { return c.Servers[i].Signal(sig) }

// Signal sends sig to the process.
func (s *Proc) Signal(sig syscall.Signal) error {
	pid := s.PID()
	if pid == 0 {
		return fmt.Errorf("%s is not running", s.ID)
	}
	return syscall.Kill(pid, sig)
}

// Kill kills server i with SIGKILL (a crash) and waits for it to be gone.
func (c *Cluster) Kill(i int) error { return c.Servers[i].Kill() }

// Kill kills the process with SIGKILL (a crash) and waits for it to be gone.
func (s *Proc) Kill() error {
	if err := s.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	ch, _ := s.Exited()
	<-ch
	return nil
}

// Stop asks every server to stop (SIGTERM), waits up to grace, then kills
// what is left. It resumes stopped (SIGSTOP) processes so they can exit.
func (c *Cluster) Stop(grace time.Duration) {
	defer func() {
		for _, ps := range c.proxies {
			if ps.p != nil {
				ps.p.Close()
			}
		}
	}()
	for _, ps := range c.proxies {
		if ps.p != nil {
			ps.p.Unblock()
		}
	}
	// Supervisors first, so they stop their commands and give their
	// services up while etcd (in the servers, or external) still answers.
	c.stopAll(c.Supervisors, grace)
	if c.LB != nil {
		c.stopAll([]*Proc{c.LB}, grace)
		_ = os.RemoveAll(c.lbDir)
	}
	all := append(append([]*Proc(nil), c.Agents...), c.Servers...)
	// etcd members stop last, after the servers have resigned.
	defer c.stopAll(c.Etcd, grace)
	c.stopAll(all, grace)
}

func (c *Cluster) stopAll(all []*Proc, grace time.Duration) {
	for _, p := range all {
		if p.PID() != 0 {
			_ = p.Signal(syscall.SIGCONT)
			_ = p.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(grace)
	for _, p := range all {
		ch, _ := p.Exited()
		if ch == nil {
			continue
		}
		select {
		case <-ch:
		case <-deadline:
			_ = p.Signal(syscall.SIGKILL)
			<-ch
		}
	}
}

var httpClient = transport.NewHTTPClient(transport.HTTPOptions{Timeout: 2 * time.Second, NoProxy: true})

// Status asks server i for its HA state.
func (c *Cluster) Status(ctx context.Context, i int) (tandem.ServerStatus, error) {
	var st tandem.ServerStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Servers[i].URL+"/v1/ha/state", nil)
	if err != nil {
		return st, err
	}
	c.authorize(req)
	resp, err := c.Servers[i].client().Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return st, fmt.Errorf("%s: HTTP %d: %s", c.Servers[i].ID, resp.StatusCode, b)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// WaitHealthy waits until server i answers /healthz with 200.
func (c *Cluster) WaitHealthy(ctx context.Context, i int) error { return c.Servers[i].WaitHealthy(ctx) }

// WaitHealthy waits until the process answers /healthz with 200.
func (s *Proc) WaitHealthy(ctx context.Context) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+s.health, nil)
		if resp, err := s.client().Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		ch, howEnded := s.Exited()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not become healthy (log: %s): %w", s.ID, s.LogPath, ctx.Err())
		case <-ch:
			return fmt.Errorf("%s exited during start-up (%v); see %s", s.ID, howEnded(), s.LogPath)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Active returns the index of the server that reports itself active, or -1.
func (c *Cluster) Active(ctx context.Context) int {
	for i := range c.Servers {
		if c.PID(i) == 0 {
			continue
		}
		if st, err := c.Status(ctx, i); err == nil && st.State == tandem.StateActive {
			return i
		}
	}
	return -1
}

// Shards asks server i for every shard's ownership.
func (c *Cluster) Shards(ctx context.Context, i int) ([]tandem.ShardInfo, error) {
	var out struct {
		Shards []tandem.ShardInfo `json:"shards"`
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Servers[i].URL+"/v1/cluster/shards", nil)
	if err != nil {
		return nil, err
	}
	c.authorize(req)
	resp, err := c.Servers[i].client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("%s: HTTP %d: %s", c.Servers[i].ID, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("%s: %w", c.Servers[i].ID, err)
	}
	return out.Shards, nil
}

// WaitOwned waits until some live server sees every shard owned.
func (c *Cluster) WaitOwned(ctx context.Context) error {
	for {
		for i := range c.Servers {
			if c.PID(i) == 0 {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			shards, err := c.Shards(sctx, i)
			cancel()
			owned := err == nil && len(shards) > 0
			for _, s := range shards {
				owned = owned && s.Owner != ""
			}
			if owned {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("some shard has no owner: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitActive waits until some server other than those in not reports itself active.
func (c *Cluster) WaitActive(ctx context.Context, not ...int) (int, error) {
	for {
		for i := range c.Servers {
			skip := false
			for _, n := range not {
				skip = skip || n == i
			}
			if skip || c.PID(i) == 0 {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := c.Status(sctx, i)
			cancel()
			if err == nil && st.State == tandem.StateActive {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no active server: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// etcdScheme is the scheme of the embedded members' URLs.
func (c *Cluster) etcdScheme() string {
	if c.cfg.EtcdTLS != "" {
		return "https"
	}
	return "http"
}

// etcdLocalID is the ID of the certificate EtcdFiles returns.
const etcdLocalID = "local"

// etcdFiles returns the files of process id's etcd certificate, or the
// zero Files without EtcdTLS.
func (c *Cluster) etcdFiles(id string) etcdauth.Files {
	dir := c.cfg.EtcdTLS
	if dir == "" {
		return etcdauth.Files{}
	}
	name := string(pki.RoleServer) + "-" + id
	return etcdauth.Files{
		CACert: filepath.Join(dir, pki.CACertFile),
		Cert:   filepath.Join(dir, name+".pem"),
		Key:    filepath.Join(dir, name+"-key.pem"),
	}
}

// EtcdFiles returns the certificate files with which a test or a tool
// outside the cluster reaches its etcd as the cluster's etcd user (a
// server certificate, ID "local"), or the zero Files without EtcdTLS.
func (c *Cluster) EtcdFiles() etcdauth.Files { return c.etcdFiles(etcdLocalID) }

// etcdCertArgs returns the certificate flags of process id, if any.
func (c *Cluster) etcdCertArgs(id string) []string {
	f := c.etcdFiles(id)
	if f.IsZero() {
		return nil
	}
	return []string{"--etcd-cacert", f.CACert, "--etcd-cert", f.Cert, "--etcd-key", f.Key}
}

// makeEtcdCerts makes, with EtcdTLS, the cluster's CA and the etcd
// certificate of every process that talks to etcd, keeping those already
// in the directory (a restarted tandem dev uses its certificates again).
func (c *Cluster) makeEtcdCerts() error {
	dir := c.cfg.EtcdTLS
	if dir == "" {
		return nil
	}
	ca, err := pki.LoadCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		ca, err = pki.CreateCA(dir, c.cfg.Cluster, 5*365*24*time.Hour)
	}
	if err != nil {
		return fmt.Errorf("etcd TLS: CA in %s: %w", dir, err)
	}
	if ca.Cluster != c.cfg.Cluster {
		return fmt.Errorf("etcd TLS: the CA in %s is cluster %q's, not %q's", dir, ca.Cluster, c.cfg.Cluster)
	}
	ids := []string{etcdLocalID}
	for _, e := range c.Etcd {
		ids = append(ids, e.ID)
	}
	for _, s := range c.Servers {
		ids = append(ids, s.ID)
	}
	for _, s := range c.Supervisors {
		ids = append(ids, s.ID)
	}
	if c.LB != nil {
		ids = append(ids, "lb")
	}
	for _, id := range ids {
		f := c.etcdFiles(id)
		_, errCert := os.Stat(f.Cert)
		_, errKey := os.Stat(f.Key)
		if errCert == nil && errKey == nil {
			continue
		}
		if _, err := pki.Issue(ca, pki.RoleServer, id, nil, nil, 365*24*time.Hour); err != nil {
			return fmt.Errorf("etcd TLS: certificate of %s: %w", id, err)
		}
	}
	return nil
}
