package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem/internal/netns"
	"github.com/tandemhq/tandem/internal/supervise"
	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// supCluster is the backbone of the supervise tests: one network namespace
// per node, an etcd process in the root namespace on the control bridge,
// and a `tandem supervise` process per node, started inside its namespace
// and inside the cgroup <root>/<node>/sup, whose commands run under
// <root>/<node>/svc. Freezing <root>/<node> freezes a whole node: its
// supervisor and its commands. Everything it starts is killed, and every
// cgroup it made removed, at the test's end, even after a failure.
type supCluster struct {
	t      *testing.T
	net    *netns.Net
	nodes  []string
	dir    string // logs, hooks, the ledger
	cgRoot string // <cgroup2 mount>/tandem-e2e-<random>
	etcd   string // etcd's client URL
	etcdc  *clientv3.Client
	admin  *supervise.Admin
	ledger string
	fence  string // the fence hook

	mu   sync.Mutex
	sups map[string]*supProc
	all  []*supProc
}

// supProc is one supervisor process.
type supProc struct {
	node string
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been reaped
}

// newSupCluster builds the namespaces, the cgroups and etcd; start starts
// the supervisors.
func newSupCluster(t *testing.T, nodes ...string) *supCluster {
	t.Helper()
	netns.Require(t)
	mount, err := proc.CgroupMount()
	if err != nil {
		if os.Getenv(netns.RequireEnv) != "" {
			t.Fatalf("cgroup v2: %v (and %s is set, so this is not skipped)", err, netns.RequireEnv)
		}
		t.Skipf("needs cgroup v2: %v", err)
	}
	c := &supCluster{t: t, nodes: nodes, dir: t.TempDir(), sups: map[string]*supProc{}}
	c.ledger = filepath.Join(c.dir, "ledger")
	c.net = netns.New(t, nodes...)
	c.cgRoot = filepath.Join(mount, fmt.Sprintf("tandem-e2e-%08x", rand.Uint32()))
	// Registered after netns.New and t.TempDir, so it runs before their
	// cleanups: every process is gone before its namespace and files are.
	t.Cleanup(c.cleanup)
	for _, n := range nodes {
		for _, sub := range []string{"sup", "svc"} {
			if _, err := proc.NewCgroup(filepath.Join(c.cgRoot, n, sub)); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join(c.dir, "logs", n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := proc.NewCgroup(filepath.Join(c.cgRoot, "etcd")); err != nil {
		t.Fatal(err)
	}
	c.etcd = c.startEtcd(c.net.RootControlIP())
	c.etcdc, err = clientv3.New(clientv3.Config{Endpoints: []string{c.etcd}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	c.admin, err = supervise.NewAdmin(c.etcdc, "default")
	if err != nil {
		t.Fatal(err)
	}
	c.fence = c.writeFenceHook()
	return c
}

// cleanup kills every process the cluster started (cgroup.kill on the root
// kills every descendant, frozen ones too), waits until they are gone, and
// removes the cgroups.
func (c *supCluster) cleanup() {
	t := c.t
	if t.Failed() {
		c.dumpLogs()
	}
	if c.etcdc != nil {
		c.etcdc.Close()
	}
	root, err := proc.OpenCgroup(c.cgRoot)
	if err != nil {
		return
	}
	if err := root.Kill(); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := root.WaitEmpty(ctx); err != nil {
		t.Errorf("cleanup: %v", err)
	}
	c.mu.Lock()
	all := slices.Clone(c.all)
	c.mu.Unlock()
	for _, p := range all {
		select {
		case <-p.done:
		case <-ctx.Done():
			t.Errorf("cleanup: supervisor of %s (pid %d) not reaped", p.node, p.cmd.Process.Pid)
		}
	}
	// Thaw before removing: a frozen empty cgroup can be removed, but one
	// left frozen by a failed thaw would say more in an error.
	_ = os.WriteFile(filepath.Join(c.cgRoot, "cgroup.freeze"), []byte("0"), 0)
	if err := root.Remove(); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

func (c *supCluster) dumpLogs() {
	files, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	more, _ := filepath.Glob(filepath.Join(c.dir, "logs", "*", "*.log"))
	for _, f := range append(files, more...) {
		b, _ := os.ReadFile(f)
		c.t.Logf("---- %s ----\n%s", strings.TrimPrefix(f, c.dir+"/"), tail(string(b), 60))
	}
	if runs, _ := parseLedger(c.ledger); len(runs) > 0 {
		c.t.Logf("---- ledger runs ----%s", describeRuns(runs))
	}
}

// startEtcd runs `tandem etcd` in the root namespace, listening for
// clients on ip, in the cgroup <root>/etcd, and waits until it answers.
func (c *supCluster) startEtcd(ip netip.Addr) string {
	t := c.t
	t.Helper()
	for try := 0; ; try++ {
		url := "http://" + freeAddrOn(t, ip)
		dataDir := filepath.Join(c.dir, fmt.Sprintf("etcd%d", try))
		logPath := filepath.Join(c.dir, "etcd.log")
		cmd := exec.Command(binary, "etcd", "--name", "e2e", "--data-dir", dataDir, "--client-url", url,
			"--peer-url", "http://"+freeAddrOn(t, netip.MustParseAddr("127.0.0.1")),
			// Faster raft timing than etcd's default, as etcdtest uses.
			"--heartbeat", "50ms", "--election-timeout", "500ms")
		p := c.spawn("etcd", cmd, filepath.Join(c.cgRoot, "etcd"), logPath, nil)
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = cli.Get(ctx, "ready")
			cancel()
			if err == nil {
				cli.Close()
				return url
			}
			select {
			case <-p.done:
			case <-time.After(50 * time.Millisecond):
				if time.Now().Before(deadline) {
					continue
				}
				t.Fatalf("etcd does not answer at %s: %v", url, err)
			}
			break
		}
		cli.Close()
		b, _ := os.ReadFile(logPath)
		if try == 4 || !strings.Contains(string(b), "address already in use") {
			t.Fatalf("etcd exited: %s", tail(string(b), 20))
		}
	}
}

// freeAddrOn returns ip:port with a port that was free a moment ago.
func freeAddrOn(t *testing.T, ip netip.Addr) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// spawn starts cmd inside the cgroup dir (cloned into it, so nothing it
// forks ever runs outside), with its output appended to logPath; in inside,
// if set, to start it in a network namespace.
func (c *supCluster) spawn(name string, cmd *exec.Cmd, cgroup, logPath string, inside func(func() error) error) *supProc {
	t := c.t
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	fd, err := syscall.Open(cgroup, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if inside == nil {
		err = cmd.Start()
	} else {
		err = inside(cmd.Start)
	}
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &supProc{node: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	c.mu.Lock()
	c.all = append(c.all, p)
	c.mu.Unlock()
	return p
}

// supArgs are the flags every supervisor of node gets.
func (c *supCluster) supArgs(node string) []string {
	ip := c.net.ControlIP(node).String()
	return []string{"supervise", "--node", node, "--etcd-endpoints", c.etcd,
		"--listen", net.JoinHostPort(ip, "7480"), "--advertise", "http://" + net.JoinHostPort(ip, "7480"),
		"--cgroup-parent", c.svcParent(node), "--log-dir", filepath.Join(c.dir, "logs", node), "--log-level", "debug"}
}

// svcParent is node's --cgroup-parent.
func (c *supCluster) svcParent(node string) string { return filepath.Join(c.cgRoot, node, "svc") }

// start starts node's supervisor with args after the common flags (a
// service's flags, "--" and its command), and waits until it has joined.
//
// It is started with Net.Do rather than Net.Command: `ip netns exec`
// mounts a fresh sysfs on /sys in a mount namespace of its own, which hides
// the cgroup2 mount from the supervisor. Forking from a thread inside the
// node's network namespace changes the network namespace only.
func (c *supCluster) start(node string, args ...string) *supProc {
	c.t.Helper()
	p := c.startNoWait(node, args...)
	eventually(c.t, node+" joins", 20*time.Second, func() error {
		select {
		case <-p.done:
			b, _ := os.ReadFile(c.logPath(node))
			return fmt.Errorf("the supervisor exited: %s", tail(string(b), 15))
		default:
		}
		ns, err := c.admin.Nodes(context.Background())
		if err != nil {
			return err
		}
		for _, n := range ns {
			if n.Node == node {
				return nil
			}
		}
		return errors.New("not registered")
	})
	return p
}

func (c *supCluster) startNoWait(node string, args ...string) *supProc {
	c.t.Helper()
	cmd := exec.Command(binary, append(c.supArgs(node), args...)...)
	p := c.spawn(node, cmd, filepath.Join(c.cgRoot, node, "sup"), c.logPath(node), func(f func() error) error { return c.net.Do(node, f) })
	c.mu.Lock()
	c.sups[node] = p
	c.mu.Unlock()
	return p
}

func (c *supCluster) logPath(node string) string { return filepath.Join(c.dir, node+".log") }

func (c *supCluster) sup(node string) *supProc {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.sups[node]
	if p == nil {
		c.t.Fatalf("no supervisor started on %s", node)
	}
	return p
}

// kill sends SIGKILL to node's supervisor and waits until it is reaped.
func (c *supCluster) kill(node string) {
	c.t.Helper()
	p := c.sup(node)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("the supervisor of %s did not die of SIGKILL", node)
	}
}

// stop sends SIGTERM to node's supervisor and waits up to within for it to
// exit; it returns how long that took.
func (c *supCluster) stop(node string, within time.Duration) time.Duration {
	c.t.Helper()
	p := c.sup(node)
	at := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(within):
		c.t.Fatalf("the supervisor of %s did not exit within %s of SIGTERM", node, within)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		c.t.Errorf("the supervisor of %s exited with %d after SIGTERM, want 0", node, code)
	}
	return time.Since(at)
}

// freeze freezes (or thaws) the whole node: its supervisor and its commands.
func (c *supCluster) freeze(node string, frozen bool) {
	c.t.Helper()
	c.freezeCgroup(node, frozen)
}

// freezeCgroup freezes (or thaws) the cgroup rel of the cluster: "n1" for
// the node n1, "n1/sup" for its supervisor alone.
func (c *supCluster) freezeCgroup(rel string, frozen bool) {
	c.t.Helper()
	cg, err := proc.OpenCgroup(filepath.Join(c.cgRoot, rel))
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cg.Freeze(ctx, frozen); err != nil {
		c.t.Fatal(err)
	}
}

// commandPIDs returns the processes of svc's cgroup on node.
func (c *supCluster) commandPIDs(node, svc string) []int {
	c.t.Helper()
	cg, err := proc.OpenCgroup(filepath.Join(c.svcParent(node), svc))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	pids, err := cg.Procs()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		c.t.Fatal(err)
	}
	return pids
}

// runningOn returns the nodes whose cgroup of svc has a process.
func (c *supCluster) runningOn(svc string) []string {
	var out []string
	for _, n := range c.nodes {
		if len(c.commandPIDs(n, svc)) > 0 {
			out = append(out, n)
		}
	}
	return out
}

// vipHolders returns the nodes whose service link has the address v.
func (c *supCluster) vipHolders(v netip.Prefix) []string {
	c.t.Helper()
	var out []string
	for _, n := range c.nodes {
		if c.holdsVIP(n, v) {
			out = append(out, n)
		}
	}
	return out
}

func (c *supCluster) holdsVIP(node string, v netip.Prefix) bool {
	c.t.Helper()
	b, err := exec.Command("ip", "-n", c.net.Namespace(node), "-4", "-o", "addr", "show", "dev", netns.ServiceDevice).CombinedOutput()
	if err != nil {
		c.t.Fatalf("ip addr in %s: %v: %s", node, err, b)
	}
	return strings.Contains(string(b), " "+v.String()+" ")
}

// vipFlag is the --vip of a service on the service link.
func (c *supCluster) vipFlag(v netip.Prefix) string { return v.String() + "@" + netns.ServiceDevice }

// status returns svc's status as every supervisor's API and the CLI see it.
func (c *supCluster) status(svc string) (supervise.ServiceStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	all, err := c.admin.Status(ctx)
	if err != nil {
		return supervise.ServiceStatus{}, err
	}
	for _, s := range all {
		if s.Service == svc {
			return s, nil
		}
	}
	return supervise.ServiceStatus{}, fmt.Errorf("no service %s", svc)
}

// waitHealthy waits until svc is healthy on a node other than not, and
// returns its status.
func (c *supCluster) waitHealthy(svc string, within time.Duration, not ...string) supervise.ServiceStatus {
	c.t.Helper()
	var st supervise.ServiceStatus
	eventually(c.t, svc+" healthy", within, func() error {
		var err error
		st, err = c.status(svc)
		switch {
		case err != nil:
			return err
		case st.State != supervise.StateHealthy || slices.Contains(not, st.Node):
			return fmt.Errorf("%s on %q (%s)", st.State, st.Node, st.Reason)
		}
		return nil
	})
	return st
}

// run runs `tandem supervise ARGS --etcd-endpoints ...` in the root
// namespace and returns its stdout, failing the test unless it exits 0.
func (c *supCluster) run(args ...string) string {
	c.t.Helper()
	out, errOut, code := runCLI(c.t, nil, append(append([]string{"supervise"}, args...), "--etcd-endpoints", c.etcd)...)
	if code != 0 {
		c.t.Fatalf("tandem supervise %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// cliStatus is `tandem supervise status -o json`.
func (c *supCluster) cliStatus() []supervise.ServiceStatus {
	c.t.Helper()
	var st []supervise.ServiceStatus
	if err := json.Unmarshal([]byte(c.run("status", "-o", "json")), &st); err != nil {
		c.t.Fatal(err)
	}
	return st
}

// history is `tandem supervise history SVC -o json`.
func (c *supCluster) history(svc string) []supervise.Event {
	c.t.Helper()
	var evs []supervise.Event
	if err := json.Unmarshal([]byte(c.run("history", svc, "-o", "json")), &evs); err != nil {
		c.t.Fatal(err)
	}
	return evs
}

// writeFenceHook writes the fence hook of the cluster: it fences
// TANDEM_FENCE_NODE by killing the service's cgroup there (cgroup.kill
// works on a frozen cgroup too) and waiting until it is empty, then takes
// the VIP off the node's service link, as cutting its network would. It
// logs every call to fence.log (see fenceCall), with what it found on the
// fenced node before it acted.
func (c *supCluster) writeFenceHook() string {
	var cases strings.Builder
	for _, n := range c.nodes {
		fmt.Fprintf(&cases, "%s) parent=%s; ns=%s ;;\n", n, c.svcParent(n), c.net.Namespace(n))
	}
	script := `#!/bin/sh
set -u
now=$(date +%s.%N)
case "$TANDEM_FENCE_NODE" in
` + cases.String() + `*) echo "$now $TANDEM_NODE fences $TANDEM_FENCE_NODE ($TANDEM_SERVICE, epoch $TANDEM_FENCE_EPOCH): unknown node" >> ` + filepath.Join(c.dir, "fence.log") + `
   echo "fence: unknown node $TANDEM_FENCE_NODE" >&2; exit 1 ;;
esac
cg="$parent/$TANDEM_SERVICE"
running=0
grep -q '^populated 1' "$cg/cgroup.events" 2>/dev/null && running=1
vip=0
if [ -n "${TANDEM_VIP:-}" ] && ip -n "$ns" -4 -o addr show dev "${TANDEM_VIP#*@}" | grep -q " ${TANDEM_VIP%@*} "; then vip=1; fi
echo "$now $TANDEM_NODE fences $TANDEM_FENCE_NODE ($TANDEM_SERVICE, epoch $TANDEM_FENCE_EPOCH) addr=${TANDEM_FENCE_ADDR:--} prev=${TANDEM_PREV_NODE:--}@${TANDEM_PREV_EPOCH:--} cause=${TANDEM_CAUSE:--} vip=${TANDEM_VIP:--} deadline=${TANDEM_DEADLINE:--} found:running=$running,vip=$vip" >> ` + filepath.Join(c.dir, "fence.log") + `
if [ -e "$cg/cgroup.kill" ]; then
	echo 1 > "$cg/cgroup.kill" || exit 1
	n=0
	while grep -q '^populated 1' "$cg/cgroup.events"; do
		n=$((n+1))
		if [ "$n" -gt 1000 ]; then echo "fence: $cg is not empty" >&2; exit 1; fi
		sleep 0.01
	done
fi
if [ -n "$TANDEM_VIP" ]; then
	ip -n "$ns" addr del "${TANDEM_VIP%@*}" dev "${TANDEM_VIP#*@}" 2>/dev/null
fi
exit 0
`
	path := filepath.Join(c.dir, "fence")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// fenced returns the lines of fence.log: one per fence hook call.
func (c *supCluster) fenced() []string {
	b, err := os.ReadFile(filepath.Join(c.dir, "fence.log"))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// fenceCall is one line of fence.log: the fence hook's clock when it ran,
// who fenced whom, the variables it got (key=value) and what it found on the
// fenced node before acting (running, vip: "1" if the service's cgroup there
// had processes, if the node held the VIP).
type fenceCall struct {
	at           time.Time
	node, fenced string
	env, found   map[string]string
	line         string
}

// fenceCalls parses fence.log.
func (c *supCluster) fenceCalls() []fenceCall {
	c.t.Helper()
	var out []fenceCall
	for _, line := range c.fenced() {
		f := strings.Fields(line)
		if len(f) < 4 || f[2] != "fences" {
			c.t.Fatalf("fence.log: malformed line %q", line)
		}
		secs, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			c.t.Fatalf("fence.log: %q: %v", line, err)
		}
		fc := fenceCall{at: time.Unix(0, int64(secs*1e9)), node: f[1], fenced: f[3], env: map[string]string{}, found: map[string]string{},
			line: line}
		for _, kv := range f[4:] {
			if found, ok := strings.CutPrefix(kv, "found:"); ok {
				for _, p := range strings.Split(found, ",") {
					k, v, _ := strings.Cut(p, "=")
					fc.found[k] = v
				}
			} else if k, v, ok := strings.Cut(kv, "="); ok {
				fc.env[k] = v
			}
		}
		out = append(out, fc)
	}
	return out
}

// ledgerService returns the flags of a ledger service named svc: flags,
// then the command. Its health check is its /health; its fence the
// cluster's fence hook, unless flags choose --fencing self.
func (c *supCluster) ledgerService(svc string, flags ...string) []string {
	exe, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	epochFile := filepath.Join(c.dir, svc+".epoch")
	args := []string{"--service", svc,
		"--env", ledgerModeEnv + "=ledger", "--env", "LEDGER=" + c.ledger, "--env", "LEDGER_DIR=" + c.dir,
		"--env", "LEDGER_EPOCH_FILE=" + epochFile, "--env", "GOMAXPROCS=1", "--epoch-file", epochFile,
		"--health-interval", "100ms", "--health-rise", "1", "--start-timeout", "15s", "--stop-timeout", "3s"}
	if !slices.Contains(flags, "--fencing") {
		args = append(args, "--fence", "1:"+c.fence)
	}
	if !slices.ContainsFunc(flags, func(f string) bool { return f == "--health" }) {
		args = append(args, "--health", fmt.Sprintf("http:http://127.0.0.1:%d/health", ledgerPort))
	}
	args = append(args, flags...)
	return append(args, "--", exe)
}

// get fetches http://addr:ledgerPort/ from the root namespace: the answer
// of the ledger service behind addr, "<service> <node> <epoch> <pid>".
func getLedger(addr netip.Addr) (string, error) {
	hc := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + net.JoinHostPort(addr.String(), strconv.Itoa(ledgerPort)) + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// redisPing sends PING to the Redis server at addr:6379, speaking RESP,
// and wants +PONG.
func redisPing(addr netip.Addr) error {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr.String(), "6379"), 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q, want +PONG", line)
	}
	return nil
}

// redisPID asks the Redis server at addr:6379 for its process id (INFO
// server), to tell which node's redis-server answers through a VIP.
func redisPID(addr netip.Addr) (int, error) {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr.String(), "6379"), 500*time.Millisecond)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")); err != nil {
		return 0, err
	}
	r := bufio.NewReader(conn)
	head, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(head, "$")))
	if err != nil || !strings.HasPrefix(head, "$") {
		return 0, fmt.Errorf("INFO answered %q", head)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\r\n") {
		if v, ok := strings.CutPrefix(line, "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("INFO server has no process_id")
}

// requireRedis returns the path of redis-server, skipping the test if it is
// absent unless TANDEM_REQUIRE_REDIS is set, which makes that a failure.
func requireRedis(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err == nil {
		return path
	}
	if os.Getenv("TANDEM_REQUIRE_REDIS") != "" {
		t.Fatalf("needs redis-server: %v (and TANDEM_REQUIRE_REDIS is set, so this is not skipped)", err)
	}
	t.Skipf("needs redis-server (Debian package redis-server): %v", err)
	return ""
}

// watchRunning samples, every 10ms until stop is called, the nodes whose
// cgroup of svc has a live process, and stop returns every sample in which
// two nodes had one. A sample reads every node twice, one after the other,
// and counts only nodes seen running both times, so that a command killed
// between the reads of two nodes is not taken for one running alongside
// its successor.
func (c *supCluster) watchRunning(svc string) (stop func() []string) {
	done := make(chan struct{})
	var bad []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			first, second := c.liveOn(svc), c.liveOn(svc)
			var both []string
			for _, n := range first {
				if slices.Contains(second, n) {
					both = append(both, n)
				}
			}
			if len(both) > 1 {
				bad = append(bad, fmt.Sprintf("%s: %s runs on %v", time.Now().Format("15:04:05.000"), svc, both))
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop = func() []string {
		once.Do(func() { close(done); wg.Wait() })
		return bad
	}
	c.t.Cleanup(func() { stop() })
	return stop
}

// liveOn is runningOn without failing the test, for goroutines.
func (c *supCluster) liveOn(svc string) []string {
	var out []string
	for _, n := range c.nodes {
		if cg, err := proc.OpenCgroup(filepath.Join(c.svcParent(n), svc)); err == nil {
			if pids, _ := cg.Procs(); len(pids) > 0 {
				out = append(out, n)
			}
		}
	}
	return out
}

// alive returns those of pids that are still live processes (not zombies).
func alive(pids []int) []int {
	var out []int
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The state follows the command's name in parentheses.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X' {
			out = append(out, pid)
		}
	}
	return out
}
