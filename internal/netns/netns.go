// Package netns builds small networks of Linux network namespaces for
// end-to-end tests, one namespace per node, so that a test can take one
// node's link down while everything else keeps talking.
//
// A Net has two bridges in the root namespace. Every node has a control
// link (device ControlDevice, on the control bridge: how it reaches etcd)
// and a service link (device ServiceDevice, on the service bridge: where its
// VIP lives and clients reach it). The root namespace has the first address
// of both subnets, so the test process itself (its etcd, its probing
// clients) reaches every node.
//
// Everything a Net creates is named after a random id held, for the Net's
// life, by a lock file under /run/tandem-netns: parallel test binaries
// never clash, and a New finds what killed test binaries left behind (their
// lock files are unlocked) and removes it. Subnets are chosen under a lock
// shared by all test binaries, among the 10.64.0.0/24 to 10.127.0.0/24 that
// no address or route of the root namespace overlaps.
//
// Everything here needs root; without it, or without network namespaces,
// New skips the test, unless the environment variable RequireEnv is set
// (as CI should), which makes the skip a failure. Open builds the same
// network outside tests (a benchmark's world) and returns errors instead;
// its Net is removed by Close.
package netns

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// ControlDevice is the name of every node's control link.
	ControlDevice = "ctl0"
	// ServiceDevice is the name of every node's service link.
	ServiceDevice = "svc0"
	// RequireEnv, when set to anything, turns New's skip for want of root
	// or network namespaces into a failure, so that CI skips nothing.
	RequireEnv = "TANDEM_REQUIRE_NETNS"

	skipPrefix = "needs root and network namespaces: "
	// stateDir holds one lock file per live Net, and the allocation lock.
	// It is under /run, beside /run/netns, so that everything that shares
	// the namespaces shares the locks.
	stateDir = "/run/tandem-netns"
	// nsPrefix starts every namespace's name: tdt-<id>-<node>.
	nsPrefix = "tdt-"
	// linkPrefix starts every root-namespace link's name: td<id>c and
	// td<id>s for the bridges, td<id>c<i> and td<id>s<i> for the host ends
	// of node i's veth pairs: at most 2+5+1+3 = 11 bytes, under IFNAMSIZ.
	linkPrefix = "td"
	idLen      = 5
	// firstHost is the host number of node 0; the root namespace is .1.
	firstHost = 10
	maxNodes  = 254 - firstHost + 1
)

// Net is a set of network namespaces, one per node, joined by a control
// and a service bridge in the root namespace. Its methods that name a node
// panic if the Net has no such node.
type Net struct {
	t     testing.TB // nil for a Net from Open
	logf  func(format string, args ...any)
	id    string
	lock  *os.File // flocked for the Net's life: it is alive
	ctl   netip.Prefix
	svc   netip.Prefix
	nodes map[string]*node

	// What exists, for cleanup, in the order created.
	namespaces []string
	links      []string
}

type node struct {
	index    int
	ns       string
	ctlHost  string // the host end of the control veth, in the root namespace
	svcHost  string
	ctl, svc netip.Addr
}

var (
	availOnce sync.Once
	availErr  error
)

// Available returns nil if this process can build a Net (it is root, has
// iproute2's ip, and can create a network namespace), or else why not.
func Available() error {
	availOnce.Do(func() { availErr = probe() })
	return availErr
}

func probe() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("no ip command (iproute2): %w", err)
	}
	// unshare on a thread that is thrown away with its goroutine.
	err := inThread(func() error { return unix.Unshare(unix.CLONE_NEWNET) })
	if err != nil {
		return fmt.Errorf("cannot create a network namespace: %w", err)
	}
	return nil
}

// Require skips t, or fails it if RequireEnv is set, unless Available.
func Require(t testing.TB) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s%v (and %s is set, so this is not skipped)", skipPrefix, err, RequireEnv)
	}
	t.Skipf("%s%v", skipPrefix, err)
}

// New builds a Net with the given nodes (at most 245, named with letters,
// digits, '.', '_' and '-'). Node i (from 0) gets 10.C.0.(10+i) on its
// control link and 10.S.0.(10+i) on its service link; lo and both links are
// up. t.Cleanup removes everything New created, even after a failure. New
// skips t as Require does.
func New(t testing.TB, nodes ...string) *Net {
	t.Helper()
	Require(t)
	n := &Net{t: t, logf: t.Logf}
	// Registered before anything exists, so a failure half way still
	// removes what was made.
	t.Cleanup(func() {
		for _, err := range n.cleanup() {
			t.Errorf("netns cleanup: %v", err)
		}
	})
	if err := n.build(nodes); err != nil {
		t.Fatalf("netns: %v", err)
	}
	return n
}

// Open builds a Net as New does, outside a test: it returns an error where
// New would skip or fail the test (no root, no network namespaces, a bad
// node name), after removing whatever it had made. The caller must Close
// the Net; until then a dead caller's leftovers are swept by the next New
// or Open of any process, as for a killed test binary.
func Open(nodes ...string) (*Net, error) {
	if err := Available(); err != nil {
		return nil, fmt.Errorf("netns: %s%w", skipPrefix, err)
	}
	n := &Net{logf: func(string, ...any) {}}
	if err := n.build(nodes); err != nil {
		if cerr := errors.Join(n.cleanup()...); cerr != nil {
			err = fmt.Errorf("%w (and cleaning up: %v)", err, cerr)
		}
		return nil, fmt.Errorf("netns: %w", err)
	}
	return n, nil
}

// Close removes everything a Net from Open created: its links, bridges and
// namespaces, and its lock file. It may be called more than once. A Net
// from New is removed by its test's cleanup instead.
func (n *Net) Close() error { return errors.Join(n.cleanup()...) }

// build checks the node names, allocates the subnets and creates the
// bridges and every node. What it made stays recorded in n for cleanup,
// also when it fails half way.
func (n *Net) build(nodes []string) error {
	if len(nodes) > maxNodes {
		return fmt.Errorf("%d nodes, at most %d", len(nodes), maxNodes)
	}
	n.nodes = make(map[string]*node, len(nodes))
	for i, name := range nodes {
		if err := checkNodeName(name); err != nil {
			return err
		}
		if _, dup := n.nodes[name]; dup {
			return fmt.Errorf("node %q given twice", name)
		}
		n.nodes[name] = &node{index: i}
	}
	unlock, err := n.allocate()
	if err != nil {
		return err
	}
	defer unlock()
	for _, name := range nodes {
		if err := n.addNode(name, n.nodes[name]); err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
	}
	return nil
}

func checkNodeName(name string) error {
	if name == "" || len(name) > 32 {
		return fmt.Errorf("node name %q: want 1 to 32 bytes", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-", r)) {
			return fmt.Errorf("node name %q: want letters, digits, '.', '_' and '-'", name)
		}
	}
	return nil
}

// allocate takes the allocation lock, removes what dead processes left,
// takes an id and two free subnets, and creates the bridges, so that
// another test binary allocating later sees the bridges' addresses and
// picks other subnets. It returns with the lock held: New creates the
// namespaces under it too, since concurrent first uses of `ip netns add`
// on a fresh machine can stack two mounts on /run/netns and hide one
// process's namespaces from the other.
func (n *Net) allocate() (unlock func(), err error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, err
	}
	al, err := os.OpenFile(filepath.Join(stateDir, "alloc.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	// Closing the file releases the flock.
	if err := unix.Flock(int(al.Fd()), unix.LOCK_EX); err != nil {
		al.Close()
		return nil, fmt.Errorf("lock %s: %w", al.Name(), err)
	}
	unlock = func() { al.Close() }
	defer func() {
		if err != nil {
			unlock()
		}
	}()
	sweep(n.logf)

	for tries := 0; n.lock == nil; tries++ {
		if tries == 10 {
			return nil, errors.New("no free id after 10 tries")
		}
		id := randomID()
		f, err := os.OpenFile(lockPath(id), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		n.id, n.lock = id, f
	}

	free, err := freeSubnets(2)
	if err != nil {
		return nil, err
	}
	n.ctl, n.svc = free[0], free[1]
	for name, nd := range n.nodes {
		nd.ns = nsPrefix + n.id + "-" + name
		nd.ctlHost = n.ctlBridge() + strconv.Itoa(nd.index)
		nd.svcHost = n.svcBridge() + strconv.Itoa(nd.index)
		nd.ctl = hostAddr(n.ctl, firstHost+nd.index)
		nd.svc = hostAddr(n.svc, firstHost+nd.index)
	}
	if err := n.addBridge(n.ctlBridge(), n.RootControlIP(), n.ctl); err != nil {
		return nil, err
	}
	if err := n.addBridge(n.svcBridge(), n.RootServiceIP(), n.svc); err != nil {
		return nil, err
	}
	return unlock, nil
}

func (n *Net) ctlBridge() string { return linkPrefix + n.id + "c" }
func (n *Net) svcBridge() string { return linkPrefix + n.id + "s" }

func lockPath(id string) string { return filepath.Join(stateDir, id+".lock") }

func randomID() string {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, idLen)
	for i := range b {
		b[i] = digits[rand.IntN(len(digits))]
	}
	return string(b)
}

// freeSubnets returns k distinct subnets 10.X.0.0/24, X from 64 to 127,
// that overlap no address or route of the root namespace.
func freeSubnets(k int) ([]netip.Prefix, error) {
	var used []netip.Prefix
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		used = append(used, toPrefix(a.IPNet))
	}
	routes, err := retryDump(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.IP.To4() != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 { // not a default route
				used = append(used, toPrefix(r.Dst))
			}
		}
	}
	var free []netip.Prefix
next:
	for _, x := range rand.Perm(64) {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(64 + x), 0, 0}), 24)
		for _, u := range used {
			if u.IsValid() && u.Overlaps(p) {
				continue next
			}
		}
		if free = append(free, p); len(free) == k {
			return free, nil
		}
	}
	return nil, fmt.Errorf("fewer than %d free subnets among 10.64.0.0/24 to 10.127.0.0/24", k)
}

func toPrefix(n *net.IPNet) netip.Prefix {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones).Masked()
}

func hostAddr(p netip.Prefix, host int) netip.Addr {
	a := p.Addr().As4()
	a[3] = byte(host)
	return netip.AddrFrom4(a)
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// retryDump calls list again while the kernel says the dump raced with a
// change and may be inconsistent.
func retryDump[T any](list func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range 10 {
		if v, err = list(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return v, err
}

func (n *Net) addBridge(name string, ip netip.Addr, p netip.Prefix) error {
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	n.links = append(n.links, name)
	br, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(ip, p.Bits())}); err != nil {
		return fmt.Errorf("address %s on %s: %w", ip, name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bridge %s up: %w", name, err)
	}
	return nil
}

func (n *Net) addNode(name string, nd *node) error {
	if out, err := exec.Command("ip", "netns", "add", nd.ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", nd.ns, err, bytes.TrimSpace(out))
	}
	n.namespaces = append(n.namespaces, nd.ns)
	ns, err := vnetns.GetFromName(nd.ns)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	for _, l := range []struct {
		host, bridge, dev string
		ip                netip.Addr
	}{
		{nd.ctlHost, n.ctlBridge(), ControlDevice, nd.ctl},
		{nd.svcHost, n.svcBridge(), ServiceDevice, nd.svc},
	} {
		br, err := netlink.LinkByName(l.bridge)
		if err != nil {
			return err
		}
		// The node's end is created in its namespace under its final name,
		// so that no two nodes' "ctl0" ever meet in the root namespace.
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: l.host, MasterIndex: br.Attrs().Index},
			PeerName:      l.dev,
			PeerNamespace: netlink.NsFd(ns),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s/%s: %w", l.host, l.dev, err)
		}
		n.links = append(n.links, l.host)
		host, err := netlink.LinkByName(l.host)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(host); err != nil {
			return fmt.Errorf("%s up: %w", l.host, err)
		}
		dev, err := h.LinkByName(l.dev)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(dev, &netlink.Addr{IPNet: ipNet(l.ip, 24)}); err != nil {
			return fmt.Errorf("address %s on %s: %w", l.ip, l.dev, err)
		}
		if err := h.LinkSetUp(dev); err != nil {
			return fmt.Errorf("%s up: %w", l.dev, err)
		}
	}
	return nil
}

// cleanup removes what the Net created: the veth pairs (deleting the host
// end deletes both), the bridges, the namespaces, and last the lock file.
// It returns what it could not remove, and forgets what it removed, so a
// second call does nothing.
func (n *Net) cleanup() []error {
	var errs []error
	for i := len(n.links) - 1; i >= 0; i-- {
		if err := deleteLink(n.links[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range n.namespaces {
		if err := deleteNamespace(ns); err != nil {
			errs = append(errs, err)
		}
	}
	n.links, n.namespaces = nil, nil
	if n.lock != nil {
		os.Remove(n.lock.Name())
		n.lock.Close()
		n.lock = nil
	}
	return errs
}

func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

func deleteNamespace(name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// sweep removes what Nets of dead processes left behind: a lock file that
// nobody holds belongs to a Net whose process died before its cleanup ran
// (a test binary killed by a timeout, say). The caller holds the allocation
// lock, so no Net is between creating its lock file and locking it.
func sweep(logf func(string, ...any)) {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return
	}
	var stale []string
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || len(id) != idLen || id == "alloc" {
			continue
		}
		f, err := os.OpenFile(lockPath(id), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		// flock locks belong to an open file description, so this fails
		// for a Net of this very process too, as it should.
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			stale = append(stale, id)
			defer f.Close() // held until the leftovers are gone
		} else {
			f.Close()
		}
	}
	if len(stale) == 0 {
		return
	}
	links, _ := retryDump(netlink.LinkList)
	namespaces, _ := os.ReadDir("/run/netns")
	for _, id := range stale {
		logf("netns: removing what a dead test process left behind (id %s)", id)
		for _, l := range links {
			name := l.Attrs().Name
			if rest, ok := strings.CutPrefix(name, linkPrefix+id); ok && isLinkSuffix(rest) {
				if err := deleteLink(name); err != nil {
					logf("netns: %v", err)
				}
			}
		}
		for _, e := range namespaces {
			if strings.HasPrefix(e.Name(), nsPrefix+id+"-") {
				if err := deleteNamespace(e.Name()); err != nil {
					logf("netns: %v", err)
				}
			}
		}
		os.Remove(lockPath(id))
	}
}

// isLinkSuffix reports whether s is what follows td<id> in a Net's link
// names: "c" or "s", then an optional node index.
func isLinkSuffix(s string) bool {
	if s == "" || (s[0] != 'c' && s[0] != 's') {
		return false
	}
	for _, r := range s[1:] {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func (n *Net) node(name string) *node {
	nd, ok := n.nodes[name]
	if !ok {
		panic(fmt.Sprintf("netns: no node %q in this Net", name))
	}
	return nd
}

// ControlIP returns the node's address on its control link.
func (n *Net) ControlIP(node string) netip.Addr { return n.node(node).ctl }

// ServiceIP returns the node's address on its service link.
func (n *Net) ServiceIP(node string) netip.Addr { return n.node(node).svc }

// RootControlIP returns the root namespace's address on the control bridge,
// 10.C.0.1: where the test runs etcd.
func (n *Net) RootControlIP() netip.Addr { return hostAddr(n.ctl, 1) }

// RootServiceIP returns the root namespace's address on the service bridge,
// 10.S.0.1: where the test's clients come from.
func (n *Net) RootServiceIP() netip.Addr { return hostAddr(n.svc, 1) }

// ControlPrefix returns the control subnet, 10.C.0.0/24.
func (n *Net) ControlPrefix() netip.Prefix { return n.ctl }

// ServicePrefix returns the service subnet, 10.S.0.0/24, where VIPs go.
func (n *Net) ServicePrefix() netip.Prefix { return n.svc }

// VIP returns 10.S.0.host/24, a VIP on the service subnet. Hosts 1 and 10
// to 10+len(nodes)-1 are taken by the root namespace and the nodes; 200 and
// up are safe.
func (n *Net) VIP(host byte) netip.Prefix {
	return netip.PrefixFrom(hostAddr(n.svc, int(host)), n.svc.Bits())
}

// Namespace returns the node's namespace's name, as `ip netns exec` takes
// it; its file is /run/netns/<name>.
func (n *Net) Namespace(node string) string { return n.node(node).ns }

// Command returns a command, not started, that runs name with args inside
// the node's namespace. It runs through `ip netns exec`, which execs the
// program in place, so the Cmd's process is the program itself: signals
// sent to it reach the program.
func (n *Net) Command(node string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.node(node).ns, name}, args...)...)
}

// Do runs f on an OS thread inside the node's namespace and returns its
// error. Sockets f opens stay in the namespace after f returns (a listener
// made in Do serves in the node's namespace); goroutines f starts do not
// run in it, and f must not call t.FailNow or its kin. The thread dies with
// f: it never goes back to the runtime's pool inside the namespace.
func (n *Net) Do(node string, f func() error) error {
	name := n.node(node).ns
	return inThread(func() error {
		ns, err := vnetns.GetFromName(name)
		if err != nil {
			return fmt.Errorf("netns %s: %w", name, err)
		}
		defer ns.Close()
		if err := vnetns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", name, err)
		}
		return f()
	})
}

// inThread runs f in a new goroutine locked to its OS thread and never
// unlocked, so that the runtime ends the thread when f returns, whatever f
// did to it.
func inThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- f()
	}()
	return <-errc
}

// CutControl takes the node's control link down at the bridge's end, as a
// cable pulled at the switch: frames stop both ways and the node's device
// loses carrier, but keeps its address, so connections time out rather than
// being refused. The service link is untouched. If the link cannot be
// changed it fails the test with t.Errorf, so it may be called from any
// goroutine; on a Net from Open, which has no test to fail, it panics: use
// SetControl there, which returns the error.
func (n *Net) CutControl(node string) { n.report(n.SetControl(node, false)) }

// HealControl puts the node's control link back up.
func (n *Net) HealControl(node string) { n.report(n.SetControl(node, true)) }

// CutService takes the node's service link down, as CutControl does the
// control link.
func (n *Net) CutService(node string) { n.report(n.SetService(node, false)) }

// HealService puts the node's service link back up.
func (n *Net) HealService(node string) { n.report(n.SetService(node, true)) }

// SetControl takes the node's control link down (up false) at the
// bridge's end, as CutControl does, or puts it back up, and returns an
// error if the link cannot be changed.
func (n *Net) SetControl(node string, up bool) error { return setLink(n.node(node).ctlHost, up) }

// SetService does for the node's service link what SetControl does for its
// control link.
func (n *Net) SetService(node string, up bool) error { return setLink(n.node(node).svcHost, up) }

func (n *Net) report(err error) {
	if err == nil {
		return
	}
	if n.t == nil {
		panic(err)
	}
	n.t.Helper()
	n.t.Errorf("%v", err)
}

func setLink(name string, up bool) error {
	l, err := netlink.LinkByName(name)
	if err == nil {
		if up {
			err = netlink.LinkSetUp(l)
		} else {
			err = netlink.LinkSetDown(l)
		}
	}
	if err != nil {
		return fmt.Errorf("netns: set %s up=%v: %w", name, up, err)
	}
	return nil
}
