package supervise

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// long bounds every wait for something that takes well under a second unless
// the machine is very loaded (2 cores, other suites alongside): only a
// failing test waits it out.
const long = 15 * time.Second

// ttl is the supervisors' lease in these tests: short, so that takeovers
// after a lost lease are quick, but not 1 s: its self-fence deadline (3/4 of
// it without an acknowledged renewal) must hold while another package's
// tests load the machine and etcd's disk, or leases are lost at random.
const ttl = 2 * time.Second

// helperEnv makes the test binary a tiny HTTP server instead (TestMain): a
// service with an http health check.
const (
	helperEnv     = "TANDEM_SUPERVISE_TEST_HELPER"
	helperAddrEnv = "TANDEM_SUPERVISE_TEST_ADDR"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "http" {
		httpHelper()
		return
	}
	os.Exit(m.Run())
}

// httpHelper serves GET /healthz with the node and epoch it runs at until
// it is killed (its supervisor stops it, or dies: PR_SET_PDEATHSIG).
func httpHelper() {
	ln, err := net.Listen("tcp", os.ExpandEnv(os.Getenv(helperAddrEnv))) // may name ${TANDEM_NODE_ADDR}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	body := "ok " + os.Getenv("TANDEM_NODE") + " " + os.Getenv("TANDEM_EPOCH") + "\n"
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, body) }))
	os.Exit(3)
}

// requireCgroup returns the cgroup v2 mount point, or skips the test where
// there is none or we are not root. In CI (CI set) a skip would hide a
// regression, so it fails instead.
func requireCgroup(t *testing.T) string {
	t.Helper()
	mount, err := proc.CgroupMount()
	if err == nil && os.Geteuid() != 0 {
		err = errors.New("not root")
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("needs cgroup v2 and root: %v (CI is set, so this is a failure)", err)
		}
		t.Skipf("needs cgroup v2 and root: %v", err)
	}
	return mount
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cluster is one etcd, a cgroup subtree and a directory for the
// supervisors ("nodes") of one test, all in this process. Commands and
// hooks are shell scripts that append what they see to a ledger file.
type cluster struct {
	t      *testing.T
	etcd   *etcdtest.Etcd
	cli    *clientv3.Client
	admin  *Admin
	keys   keys.Layout
	name   string
	base   string // <cgroup mount>/tandem-test-<random>: node N's commands run in base/N/<service>
	dir    string
	ledger string
	svcSh  string // the service script (svcScript)
	fence  string // the fence hook script (fenceScript)
	logs   *lockedBuffer
}

// svcScript is the command of the tests' services: it appends "start
// SERVICE NODE EPOCH EPOCHFILE OTHERS PID" to the ledger, where EPOCHFILE is
// the content of $EPOCH_FILE ("-" if unset) and OTHERS the number of other
// nodes' cgroups of the service that have processes at that instant (0
// unless two nodes run the command at once). Then, by $MODE: run (sleep),
// exit (exit 3 at once), ignore-term (a shell and two sleeps that ignore
// SIGTERM). $FAIL_ON lists nodes where it exits at once whatever the mode.
const svcScript = `#!/bin/sh
ledger=$1; base=$2
others=0
for cg in "$base"/*/"$TANDEM_SERVICE"; do
	[ -f "$cg/cgroup.events" ] || continue
	grep -qx "$$" "$cg/cgroup.procs" && continue
	grep -q "^populated 1" "$cg/cgroup.events" && others=$((others+1))
done
epoch=-
[ -n "$EPOCH_FILE" ] && epoch=$(cat "$EPOCH_FILE")
echo "start $TANDEM_SERVICE $TANDEM_NODE $TANDEM_EPOCH $epoch $others $$" >> "$ledger"
case ",$FAIL_ON," in *",$TANDEM_NODE,"*) exit 3 ;; esac
case "$MODE" in
exit) exit 3 ;;
ignore-term) trap '' TERM; sleep 1000 & sleep 1000 ;;
*) exec sleep 1000 ;;
esac
`

// fenceScript is the tests' fence hook, "fence.sh LEDGER BASE ok|fail": it
// appends "fence SERVICE NODE EPOCH ROLE FENCE_NODE FENCE_EPOCH FENCE_ADDR
// RESULT NOW DEADLINE PREV_NODE PREV_EPOCH CAUSE VIP CLUSTER" to the ledger
// (NOW its clock in seconds, an unset or empty variable "-"); then fails, or
// kills the fenced node's cgroup of the service and waits until it is empty,
// as a real hook would make sure the command is gone.
const fenceScript = `#!/bin/sh
ledger=$1; base=$2; result=$3
echo "fence $TANDEM_SERVICE $TANDEM_NODE $TANDEM_EPOCH $TANDEM_ROLE $TANDEM_FENCE_NODE $TANDEM_FENCE_EPOCH $TANDEM_FENCE_ADDR $result $(date +%s.%N) ${TANDEM_DEADLINE:--} ${TANDEM_PREV_NODE:--} ${TANDEM_PREV_EPOCH:--} ${TANDEM_CAUSE:--} ${TANDEM_VIP:--} ${TANDEM_CLUSTER:--}" >> "$ledger"
[ "$result" = ok ] || exit 1
cg=$base/$TANDEM_FENCE_NODE/$TANDEM_SERVICE
if [ -f "$cg/cgroup.kill" ]; then
	echo 1 > "$cg/cgroup.kill"
	while grep -q "^populated 1" "$cg/cgroup.events"; do sleep 0.02; done
fi
exit 0
`

func newCluster(t *testing.T) *cluster {
	t.Helper()
	mount := requireCgroup(t)
	e := etcdtest.Start(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	c := &cluster{t: t, etcd: e, cli: e.Client(t), name: "test", keys: keys.New("test"),
		base: filepath.Join(mount, "tandem-test-"+hex.EncodeToString(b[:])), dir: t.TempDir(), logs: &lockedBuffer{}}
	c.admin, _ = NewAdmin(c.cli, c.name)
	c.ledger = filepath.Join(c.dir, "ledger")
	c.svcSh = c.script("svc.sh", svcScript)
	c.fence = c.script("fence.sh", fenceScript)
	if err := os.Mkdir(c.base, 0o755); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last registered first: the nodes stop (registered later)
	// before the cgroups go, and those before etcd. The supervisors' logs
	// are shown only for a failed test.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("supervisors' logs:\n%s", c.logs.String())
		}
		top := &proc.Cgroup{Path: c.base}
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		for {
			if err := top.Kill(); err != nil {
				t.Errorf("cleanup: %v", err)
				return
			}
			if err := top.WaitEmpty(ctx); err == nil {
				break
			} else if ctx.Err() != nil {
				t.Errorf("cleanup: %v", err)
				return
			}
		}
		if err := top.Remove(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return c
}

// script writes an executable file into the test's directory.
func (c *cluster) script(name, text string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// service returns a service running svcScript in mode, with self fencing
// and a short stop timeout.
func (c *cluster) service(name, mode string) Service {
	return Service{Name: name, Command: []string{"/bin/sh", c.svcSh, c.ledger, c.base}, Env: map[string]string{"MODE": mode},
		Fencing: FencingSelf, StopTimeout: Duration(3 * time.Second)}
}

// fenceHook returns the fence hook of svc's definitions: fenceScript
// succeeding (ok) or failing.
func (c *cluster) fenceHook(ok bool) FenceHook {
	result := "fail"
	if ok {
		result = "ok"
	}
	return FenceHook{Level: 1, Hook: c.fence + " " + c.ledger + " " + c.base + " " + result, Timeout: Duration(10 * time.Second)}
}

// config returns node's configuration: its own cgroup subtree, a free
// port on the loopback for its API, a 1 s lease.
func (c *cluster) config(node string, svcs ...Service) Config {
	addr := freeAddr(c.t)
	return Config{Node: node, Cluster: c.name, URL: "http://" + addr, Listen: addr, Addr: "addr-" + node, LeaseTTL: ttl,
		CgroupParent: filepath.Join(c.base, node), Services: svcs,
		Log: slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

// node is one supervisor running in the test process.
type node struct {
	name   string
	cfg    Config
	sup    *Supervisor
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	once   sync.Once
}

// start runs a supervisor of cfg with its own etcd client (or cli), until
// the test ends or stop.
func (c *cluster) start(cfg Config, cli ...*clientv3.Client) *node {
	c.t.Helper()
	client := c.etcd.Client(c.t)
	if len(cli) > 0 {
		client = cli[0]
	}
	sup, err := New(cfg, client)
	if err != nil {
		c.t.Fatalf("New(%s): %v", cfg.Node, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{name: cfg.Node, cfg: sup.cfg, sup: sup, cancel: cancel, done: make(chan struct{})}
	go func() {
		n.err = sup.Run(ctx)
		close(n.done)
	}()
	c.t.Cleanup(func() { n.stop(c.t) })
	return n
}

// stop cancels the node's Run and waits for it to return: a clean shutdown.
func (n *node) stop(t *testing.T) {
	t.Helper()
	n.once.Do(func() {
		n.cancel()
		select {
		case <-n.done:
			if n.err != nil {
				t.Errorf("node %s: Run: %v", n.name, n.err)
			}
		case <-time.After(long):
			t.Errorf("node %s: Run did not return within %v of its context's end", n.name, long)
		}
	})
}

// cgroup returns the path of the node's cgroup of svc.
func (n *node) cgroup(svc string) string { return n.sup.cgroupPath(svc) }

// procs returns the processes in the node's cgroup of svc (none if it does
// not exist).
func (n *node) procs(svc string) []int {
	cg, err := proc.OpenCgroup(n.cgroup(svc))
	if err != nil {
		return nil
	}
	pids, _ := cg.Procs()
	return pids
}

// owner returns svc's owner record in etcd, or nil.
func (c *cluster) owner(svc string) *election.Owner {
	c.t.Helper()
	key := c.keys.SuperviseOwnership(svc).Owner
	resp, err := c.cli.Get(context.Background(), key)
	if err != nil {
		c.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	var o election.Owner
	if err := json.Unmarshal(resp.Kvs[0].Value, &o); err != nil {
		c.t.Fatal(err)
	}
	o.Epoch, o.Lease, o.Key = resp.Kvs[0].CreateRevision, resp.Kvs[0].Lease, key
	return &o
}

// status returns svc's status as Admin.Status gives it (State "" if svc is
// not defined).
func (c *cluster) status(svc string) ServiceStatus {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	st, err := c.admin.Status(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, s := range st {
		if s.Service == svc {
			return s
		}
	}
	return ServiceStatus{}
}

// waitHealthy waits until svc is healthy on node and returns its status.
func (c *cluster) waitHealthy(svc, node string) ServiceStatus {
	c.t.Helper()
	var st ServiceStatus
	waitFor(c.t, svc+" healthy on "+node, long, func() bool {
		st = c.status(svc)
		return st.Node == node && st.State == StateHealthy
	})
	return st
}

// events returns svc's failover records.
func (c *cluster) events(svc string) []Event {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	evs, err := c.admin.History(ctx, svc)
	if err != nil {
		c.t.Fatal(err)
	}
	return evs
}

// waitEvent waits for svc's failover record of epoch and returns it (the
// new owner writes it just after the service became healthy).
func (c *cluster) waitEvent(svc string, epoch int64) Event {
	c.t.Helper()
	var ev Event
	waitFor(c.t, fmt.Sprintf("the failover record of %s at epoch %d", svc, epoch), long, func() bool {
		for _, e := range c.events(svc) {
			if e.Epoch == epoch {
				ev = e
				return true
			}
		}
		return false
	})
	return ev
}

// states returns every value svc's run state has had, oldest first (etcd
// keeps the history: nothing compacts it in a test).
func (c *cluster) states(svc string) []RunState {
	c.t.Helper()
	key := c.keys.SuperviseState(svc)
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	resp, err := c.cli.Get(ctx, key)
	if err != nil {
		c.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	last := resp.Kvs[0].ModRevision
	var out []RunState
	for wr := range c.cli.Watch(ctx, key, clientv3.WithRev(1)) {
		if err := wr.Err(); err != nil {
			c.t.Fatal(err)
		}
		for _, ev := range wr.Events {
			var st RunState
			if err := json.Unmarshal(ev.Kv.Value, &st); err != nil {
				c.t.Fatal(err)
			}
			out = append(out, st)
			if ev.Kv.ModRevision >= last {
				return out
			}
		}
	}
	c.t.Fatalf("the history of %s ended early: %+v", key, out)
	return nil
}

// leaseOf returns the lease of node's supervisor, from its registration.
func (c *cluster) leaseOf(node string) clientv3.LeaseID {
	c.t.Helper()
	resp, err := c.cli.Get(context.Background(), c.keys.SuperviseNode(node))
	if err != nil || len(resp.Kvs) == 0 {
		c.t.Fatalf("node %s is not registered: %v", node, err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// entry is one line of the ledger: its kind (start, fence) and fields.
type entry struct {
	kind   string
	fields []string
}

// startEntry is a "start" line of svcScript.
type startEntry struct {
	service, node string
	epoch         int64
	epochFile     string
	others        int
	pid           int
}

func (c *cluster) entries() []entry {
	c.t.Helper()
	b, err := os.ReadFile(c.ledger)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	var out []entry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 {
			out = append(out, entry{kind: f[0], fields: f[1:]})
		}
	}
	return out
}

// starts returns the start lines of svc in the ledger, oldest first.
func (c *cluster) starts(svc string) []startEntry {
	c.t.Helper()
	var out []startEntry
	for _, e := range c.entries() {
		if e.kind != "start" || e.fields[0] != svc {
			continue
		}
		if len(e.fields) != 6 {
			c.t.Fatalf("ledger: malformed line %v", e)
		}
		epoch, _ := strconv.ParseInt(e.fields[2], 10, 64)
		others, _ := strconv.Atoi(e.fields[4])
		pid, _ := strconv.Atoi(e.fields[5])
		out = append(out, startEntry{service: e.fields[0], node: e.fields[1], epoch: epoch, epochFile: e.fields[3], others: others, pid: pid})
	}
	return out
}

// startsOn returns the start lines of svc by node.
func (c *cluster) startsOn(svc, node string) []startEntry {
	return slices.DeleteFunc(c.starts(svc), func(s startEntry) bool { return s.node != node })
}

// waitStart waits for a start line of svc on node at epoch (any epoch if
// 0) and returns it.
func (c *cluster) waitStart(svc, node string, epoch int64) startEntry {
	c.t.Helper()
	var got startEntry
	waitFor(c.t, fmt.Sprintf("%s started on %s", svc, node), long, func() bool {
		for _, s := range c.startsOn(svc, node) {
			if epoch == 0 || s.epoch == epoch {
				got = s
				return true
			}
		}
		return false
	})
	return got
}

// alive reports whether pid is a process that has not exited. A zombie is
// dead: where PID 1 does not reap orphans, killed grandchildren stay
// zombies.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command's closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers: the
// supervisors' log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proxy forwards TCP connections to an etcd member, and can cut them: a
// node whose client goes through it is partitioned from etcd (and only
// from etcd) on Cut.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: strings.TrimPrefix(target, "http://"), conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// URL is the proxy's address as an etcd endpoint.
func (p *proxy) URL() string { return "http://" + p.ln.Addr().String() }

// client returns an etcd client that goes through the proxy.
func (p *proxy) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.URL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns[in], p.conns[out] = true, true
		p.wg.Add(2)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

// Cut closes every connection and refuses new ones until Restore.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Restore lets connections through again.
func (p *proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// waitNodes waits until every one of names has a live supervisor
// registered in etcd.
func (c *cluster) waitNodes(names ...string) {
	c.t.Helper()
	waitFor(c.t, fmt.Sprintf("nodes %v registered", names), long, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		nodes, err := c.admin.Nodes(ctx)
		if err != nil {
			c.t.Fatal(err)
		}
		live := map[string]bool{}
		for _, n := range nodes {
			live[n.Node] = true
		}
		for _, n := range names {
			if !live[n] {
				return false
			}
		}
		return true
	})
}

// revoke revokes node's lease behind its supervisor's back: its keys go at
// once, as if etcd had expired the lease.
func (c *cluster) revoke(node string) clientv3.LeaseID {
	c.t.Helper()
	id := c.leaseOf(node)
	if _, err := c.cli.Revoke(context.Background(), id); err != nil {
		c.t.Fatal(err)
	}
	return id
}

// resignation returns svc's last resignation record, or nil.
func (c *cluster) resignation(svc string) *election.Resignation {
	c.t.Helper()
	resp, err := c.cli.Get(context.Background(), c.keys.SuperviseOwnership(svc).Resign)
	if err != nil {
		c.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	var r election.Resignation
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		c.t.Fatal(err)
	}
	return &r
}

// metric returns the value of the counter or gauge name with labels in the
// node's registry (0 if it has no such series yet).
func (n *node) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := n.sup.met.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// freeAddr returns a loopback address whose port was free a moment ago,
// below the ephemeral range: a port of that range (etcdtest.FreeAddr's) may
// become the local port of any outgoing connection before the supervisor
// binds it, which the many connections of a loaded machine make likely.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+mrand.IntN(20000))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port found")
	return ""
}
