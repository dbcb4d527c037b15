package bench

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	vnetns "github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem/internal/netns"
	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// The world of RunSupervise: one network namespace per node (netns), an
// etcd in the root namespace on the control bridge, one supervisor per node
// inside its namespace and inside a cgroup of its node's, so that the whole
// node (supervisor and command) can be frozen at once:
//
//	<cgroup2>/tandem-bench-supervise-<pid>/<node>/supervisor   the supervisor
//	<cgroup2>/tandem-bench-supervise-<pid>/<node>/services/web the command (--cgroup-parent .../services)
//
// Processes are not started with `ip netns exec`: it remounts /sys in a
// mount namespace of its own, which hides the cgroup2 file system from the
// supervisor. Each node has instead a spawner, a goroutine locked to an OS
// thread that entered the node's network namespace only; every process of
// the node is forked from that thread, so it inherits the network namespace
// and nothing else, is cloned straight into its cgroup, and gets SIGKILL if
// the bench dies (Pdeathsig follows the forking thread, which lives as long
// as the world).

// cgroupPrefix starts the name of every cgroup a supervise bench makes; the
// pid of the bench follows, so a new run can tell a dead run's leftovers.
const cgroupPrefix = "tandem-bench-supervise-"

// superviseService is the name of the service the bench supervises.
const superviseService = "web"

// world is the running world of one RunSupervise.
type world struct {
	cfg      SuperviseConfig
	dir      string
	net      *netns.Net
	nodes    []string
	cgBase   string
	root     *spawner            // the root namespace's (etcd)
	spawners map[string]*spawner // by node
	etcd     *benchProc
	cli      *clientv3.Client
	etcdURL  string
	vip      netip.Prefix
	fence    string // the fence hook's path

	mu   sync.Mutex
	sups map[string]*benchProc // by node
}

// Ports of the world, from cfg.BasePort: etcd's client and peer ports in the
// root namespace, and the supervisor's and the service's in every node's
// own namespace (so every node uses the same two).
func (w *world) etcdPort() int       { return w.cfg.BasePort }
func (w *world) etcdPeerPort() int   { return w.cfg.BasePort + 1 }
func (w *world) supervisorPort() int { return w.cfg.BasePort + 10 }
func (w *world) servicePort() int    { return w.cfg.BasePort + 20 }

// serviceCgroup is the cgroup of node's command.
func (w *world) serviceCgroup(node string) string {
	return filepath.Join(w.cgBase, node, "services", superviseService)
}

// nodeCgroup is the cgroup holding all of node: supervisor and command.
func (w *world) nodeCgroup(node string) *proc.Cgroup {
	return &proc.Cgroup{Path: filepath.Join(w.cgBase, node)}
}

// newWorld builds the namespaces and cgroups and starts etcd. On error it
// removes whatever it made.
func newWorld(ctx context.Context, cfg SuperviseConfig, dir string) (w *world, err error) {
	w = &world{cfg: cfg, dir: dir, spawners: map[string]*spawner{}, sups: map[string]*benchProc{}}
	defer func() {
		if err != nil {
			if cerr := w.close(); cerr != nil {
				err = fmt.Errorf("%w (cleaning up: %v)", err, cerr)
			}
			w = nil
		}
	}()
	for i := 1; i <= cfg.Nodes; i++ {
		w.nodes = append(w.nodes, "n"+strconv.Itoa(i))
	}
	mount, err := proc.CgroupMount()
	if err != nil {
		return w, fmt.Errorf("cgroup v2 (the bench freezes a node through it): %w", err)
	}
	sweepCgroups(mount)
	w.cgBase = filepath.Join(mount, cgroupPrefix+strconv.Itoa(os.Getpid()))
	for _, n := range w.nodes {
		for _, sub := range []string{"supervisor", "services"} {
			if _, err := proc.NewCgroup(filepath.Join(w.cgBase, n, sub)); err != nil {
				return w, err
			}
		}
	}
	if w.net, err = netns.Open(w.nodes...); err != nil {
		return w, err
	}
	w.vip = w.net.VIP(200)
	if w.root, err = newSpawner(""); err != nil {
		return w, err
	}
	for _, n := range w.nodes {
		s, err := newSpawner(w.net.Namespace(n))
		if err != nil {
			return w, fmt.Errorf("node %s: %w", n, err)
		}
		w.spawners[n] = s
	}
	if w.fence, err = writeFenceHook(dir, w); err != nil {
		return w, err
	}
	if err := w.startEtcd(ctx); err != nil {
		return w, err
	}
	return w, nil
}

// startEtcd runs `tandem etcd` in the root namespace, on the control
// bridge, and connects to it.
func (w *world) startEtcd(ctx context.Context) error {
	ip := w.net.RootControlIP().String()
	w.etcdURL = fmt.Sprintf("http://%s:%d", ip, w.etcdPort())
	p := &benchProc{name: "etcd", logPath: filepath.Join(w.dir, "etcd.log")}
	args := []string{"etcd", "--name", "bench", "--data-dir", filepath.Join(w.dir, "etcd"),
		"--client-url", w.etcdURL, "--peer-url", fmt.Sprintf("http://127.0.0.1:%d", w.etcdPeerPort())}
	if err := p.start(w.root, w.cfg.Binary, args, ""); err != nil {
		return err
	}
	w.etcd = p
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{w.etcdURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	w.cli = cli
	deadline := time.Now().Add(30 * time.Second)
	for {
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(gctx, "/tandem-bench-ping")
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-p.done:
			return fmt.Errorf("etcd exited at start (see %s)", p.logPath)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd at %s did not answer within 30s: %w (see %s)", w.etcdURL, err, p.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// supervisorArgs are the arguments of node's `tandem supervise`.
func (w *world) supervisorArgs(node string) []string {
	ip := w.net.ControlIP(node).String()
	listen := fmt.Sprintf("%s:%d", ip, w.supervisorPort())
	args := []string{"supervise", "--node", node, "--cluster", "bench", "--etcd-endpoints", w.etcdURL,
		"--listen", listen, "--advertise", "http://" + listen, "--addr", ip,
		"--lease-ttl", w.cfg.LeaseTTL.String(), "--cgroup-parent", filepath.Join(w.cgBase, node, "services"),
		"--log-dir", filepath.Join(w.dir, node), "--log-format", "json",
		"--service", superviseService,
		"--health", fmt.Sprintf("http:http://127.0.0.1:%d/", w.servicePort()),
		"--health-interval", w.cfg.HealthInterval.String(),
		"--vip", fmt.Sprintf("%s@%s", w.vip, netns.ServiceDevice),
		"--fencing", w.cfg.Fencing,
		// kill-command trials restart the command in place, many times: no
		// limit may end them in a ban.
		"--restarts", "1000000", "--restart-window", "1h",
		"--stop-timeout", "2s", "--start-timeout", "10s"}
	if w.cfg.Fencing == FencingStrict {
		args = append(args, "--fence", "1:"+w.fence)
	}
	return append(args, "--", w.cfg.Binary, "bench", "supervise-service", "--listen", fmt.Sprintf(":%d", w.servicePort()))
}

// startSupervisor starts (or restarts) node's supervisor in its namespace
// and its node's cgroup.
func (w *world) startSupervisor(node string) error {
	if err := os.MkdirAll(filepath.Join(w.dir, node), 0o755); err != nil {
		return err
	}
	p := &benchProc{name: "supervisor " + node, logPath: filepath.Join(w.dir, node, "supervisor.log")}
	if err := p.start(w.spawners[node], w.cfg.Binary, w.supervisorArgs(node), filepath.Join(w.cgBase, node, "supervisor")); err != nil {
		return err
	}
	w.mu.Lock()
	w.sups[node] = p
	w.mu.Unlock()
	return nil
}

func (w *world) supervisor(node string) *benchProc {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sups[node]
}

// servicePIDs returns the processes of node's command cgroup (none if it
// does not exist yet).
func (w *world) servicePIDs(node string) []int {
	return readPIDs(filepath.Join(w.serviceCgroup(node), "cgroup.procs"))
}

// readPIDs reads a cgroup.procs file; a missing file is no process.
func readPIDs(path string) []int {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// freeze freezes (or thaws) the whole of node.
func (w *world) freeze(ctx context.Context, node string, frozen bool) error {
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return w.nodeCgroup(node).Freeze(fctx, frozen)
}

// close stops every process and removes every namespace and cgroup, in an
// order that works from any state the run was left in (nodes frozen, links
// cut, supervisors dead): thaw, stop the supervisors (they give the service
// up cleanly), kill what is left in the cgroups, stop etcd, remove the
// cgroups and the namespaces. It returns every problem it met but never
// stops half way.
func (w *world) close() error {
	var errs []error
	if w.cgBase != "" {
		for _, n := range w.nodes {
			if _, err := os.Stat(filepath.Join(w.cgBase, n)); err == nil {
				_ = w.nodeCgroup(n).Freeze(context.Background(), false)
			}
		}
	}
	if w.net != nil {
		for _, n := range w.nodes {
			_ = w.net.SetControl(n, true)
		}
	}
	w.mu.Lock()
	sups := make([]*benchProc, 0, len(w.sups))
	for _, p := range w.sups {
		sups = append(sups, p)
	}
	w.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range sups {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(5 * time.Second) }()
	}
	wg.Wait()
	if w.cgBase != "" {
		if err := removeCgroupTree(w.cgBase); err != nil {
			errs = append(errs, err)
		}
	}
	if w.cli != nil {
		w.cli.Close()
	}
	if w.etcd != nil {
		w.etcd.stop(5 * time.Second)
	}
	for _, s := range w.spawners {
		s.close()
	}
	if w.root != nil {
		w.root.close()
	}
	if w.net != nil {
		if err := w.net.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCgroupTree kills every process left under path (thawing first),
// waits for them and removes the cgroups, children first.
func removeCgroupTree(path string) error {
	cg, err := proc.OpenCgroup(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	dirs, _ := cgroupDirs(path)
	for _, d := range dirs {
		_ = os.WriteFile(filepath.Join(d, "cgroup.freeze"), []byte("0"), 0)
	}
	if err := cg.Kill(); err != nil {
		return fmt.Errorf("kill what is left in %s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cg.WaitEmpty(ctx); err != nil {
		return err
	}
	return cg.Remove()
}

func cgroupDirs(path string) ([]string, error) {
	var dirs []string
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	return dirs, err
}

// sweepCgroups removes the cgroups of supervise benches whose process is
// gone (killed before it could clean up). Namespaces of such runs are swept
// by netns itself.
func sweepCgroups(mount string) {
	entries, err := os.ReadDir(mount)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := strings.CutPrefix(e.Name(), cgroupPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		n, err := strconv.Atoi(pid)
		if err != nil || n == os.Getpid() {
			continue
		}
		if syscall.Kill(n, 0) == syscall.ESRCH {
			_ = removeCgroupTree(filepath.Join(mount, e.Name()))
		}
	}
}

// writeFenceHook writes the fence hook of the bench into dir (see
// fenceHook).
func writeFenceHook(dir string, w *world) (string, error) {
	namespaces := map[string]string{}
	for _, n := range w.nodes {
		namespaces[n] = w.net.Namespace(n)
	}
	path := filepath.Join(dir, "fence-hook")
	script := fenceHook(w.nodes, namespaces, w.cgBase, w.vip.String(), netns.ServiceDevice)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		return "", fmt.Errorf("write the fence hook: %w", err)
	}
	return path, nil
}

// fenceHook is the fence hook of the bench: it does to the fenced node
// ($TANDEM_FENCE_NODE) what a power fence would, from outside: kill its
// command's cgroup (<cgBase>/<node>/services/<service>; cgroup.kill works on
// a frozen cgroup too) and wait until it is empty, then take the VIP off the
// node's service link. The second part matters: a node whose processes are
// frozen, or whose supervisor was killed, still holds the address, and its
// kernel still answers ARP for it, so without it the next owner's
// duplicate-address probe would find the VIP in use. It exits 1 for a node
// it does not know or a cgroup that does not empty within 10 s.
func fenceHook(nodes []string, namespaces map[string]string, cgBase, vip, dev string) string {
	var cases strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&cases, "%s) ns=%s ;;\n", n, namespaces[n])
	}
	return fmt.Sprintf(`#!/bin/sh
# Fence hook of tandem bench supervise (generated): kill the fenced node's
# command cgroup and take the VIP off it, as powering the node off would.
set -u
case "$TANDEM_FENCE_NODE" in
%s*) echo "fence: unknown node $TANDEM_FENCE_NODE" >&2; exit 1 ;;
esac
cg=%s/"$TANDEM_FENCE_NODE"/services/"$TANDEM_SERVICE"
if [ -d "$cg" ]; then
	echo 1 > "$cg/cgroup.kill" || exit 1
	i=0
	while grep -q '^populated 1' "$cg/cgroup.events"; do
		i=$((i + 1))
		if [ "$i" -gt 1000 ]; then echo "fence: $cg is not empty after 10s" >&2; exit 1; fi
		sleep 0.01
	done
fi
ip -n "$ns" addr del %s dev %s 2>/dev/null
exit 0
`, cases.String(), cgBase, vip, dev)
}

// spawner forks processes from one OS thread that entered a network
// namespace (or stayed in the root one), and lives until close: see the
// comment at the top of this file.
type spawner struct {
	reqs chan spawnReq
	once sync.Once
}

type spawnReq struct {
	cmd   *exec.Cmd
	reply chan error
}

// newSpawner starts a spawner in the named network namespace ("" for the
// root namespace).
func newSpawner(ns string) (*spawner, error) {
	s := &spawner{reqs: make(chan spawnReq)}
	ready := make(chan error, 1)
	go func() {
		// Never unlocked: the thread may be in another namespace, and it
		// must outlive every process it forks (Pdeathsig). It ends with
		// this goroutine, at close.
		runtime.LockOSThread()
		if ns != "" {
			h, err := vnetns.GetFromName(ns)
			if err == nil {
				err = vnetns.Set(h)
				h.Close()
			}
			if err != nil {
				ready <- fmt.Errorf("enter network namespace %s: %w", ns, err)
				return
			}
		}
		ready <- nil
		for r := range s.reqs {
			r.reply <- r.cmd.Start()
		}
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return s, nil
}

func (s *spawner) start(cmd *exec.Cmd) error {
	reply := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, reply: reply}
	return <-reply
}

func (s *spawner) close() { s.once.Do(func() { close(s.reqs) }) }

// benchProc is one process of the world: etcd or a supervisor.
type benchProc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// start starts binary with args from spawner sp, in cgroup (a directory;
// "" for the bench's own), in its own process group (a Ctrl-C at the
// terminal reaches the bench alone, which stops everything in order), with
// its output appended to its log.
func (p *benchProc) start(sp *spawner, binary string, args []string, cgroup string) error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if cgroup != "" {
		dir, err := os.Open(cgroup)
		if err != nil {
			return fmt.Errorf("start %s: %w", p.name, err)
		}
		defer dir.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(dir.Fd())
	}
	if err := sp.start(cmd); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.done) }()
	return nil
}

func (p *benchProc) pid() int { return p.cmd.Process.Pid }

// alive reports whether the process has not been reaped yet.
func (p *benchProc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill kills the process with SIGKILL and waits until it is reaped.
func (p *benchProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop asks the process to stop (SIGTERM), and kills it after grace.
func (p *benchProc) stop(grace time.Duration) {
	if !p.alive() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}
