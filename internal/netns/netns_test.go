package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// eventTimeout bounds every wait for something that should happen:
// generous, so that a loaded 2-core machine does not fail a slow test.
const eventTimeout = 10 * time.Second

// shortDial bounds a dial that should fail: long enough for a healthy
// veth to connect many times over.
const shortDial = time.Second

// dialEnv makes the test binary a tiny TCP client: it dials the address in
// the variable and prints what happened (see dialResult).
const dialEnv = "TANDEM_NETNS_TEST_DIAL"

func TestMain(m *testing.M) {
	if addr := os.Getenv(dialEnv); addr != "" {
		fmt.Println(dialResult(net.DialTimeout("tcp", addr, shortDial)))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dialResult classifies a dial's outcome: "connected", "refused" (the
// address was reached), "unreachable" (silence or no route: what a cut
// link gives), or "error: ..." for anything else.
func dialResult(c net.Conn, err error) string {
	var ne net.Error
	switch {
	case err == nil:
		c.Close()
		return "connected"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return "error: " + err.Error()
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listen starts a TCP server on addr (port 0: any) in node's namespace,
// or in the root namespace if node is "", that accepts and closes
// connections until the test ends. It returns the port.
func listen(t *testing.T, n *Net, node string, addr netip.Addr) uint16 {
	t.Helper()
	var ln net.Listener
	open := func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	}
	var err error
	if node == "" {
		err = open()
	} else {
		err = n.Do(node, open)
	}
	if err != nil {
		t.Fatalf("listen in %q on %s: %v", node, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// dialFromRoot dials from the test process, in the root namespace.
func dialFromRoot(ap netip.AddrPort) string {
	return dialResult(net.DialTimeout("tcp", ap.String(), shortDial))
}

// dialFromNode dials from node's namespace in a process started by
// Command, the way the end-to-end tests run their daemons.
func dialFromNode(n *Net, node string, ap netip.AddrPort) string {
	self, err := os.Executable()
	if err != nil {
		return "error: " + err.Error()
	}
	cmd := n.Command(node, self)
	// Under -race, a binary sleeps a second before it exits unless told not to.
	cmd.Env = append(os.Environ(), dialEnv+"="+ap.String(), "GORACE=atexit_sleep_ms=0")
	out, err := cmd.Output()
	if err != nil {
		return fmt.Sprintf("error: client in %s: %v (%s)", node, err, out)
	}
	return strings.TrimSpace(string(out))
}

// dialInNode dials from node's namespace in this process (Do).
func dialInNode(n *Net, node string, ap netip.AddrPort) string {
	var res string
	if err := n.Do(node, func() error {
		res = dialResult(net.DialTimeout("tcp", ap.String(), shortDial))
		return nil
	}); err != nil {
		return "error: " + err.Error()
	}
	return res
}

func check(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %s, want %s", what, got, want)
	}
}

func TestAddressesAndNamespaces(t *testing.T) {
	n := New(t, "a", "b")
	ctl, svc := n.ControlPrefix(), n.ServicePrefix()
	for _, c := range []struct {
		what      string
		got, want netip.Addr
	}{
		{"RootControlIP", n.RootControlIP(), hostAddr(ctl, 1)},
		{"RootServiceIP", n.RootServiceIP(), hostAddr(svc, 1)},
		{"ControlIP(a)", n.ControlIP("a"), hostAddr(ctl, 10)},
		{"ControlIP(b)", n.ControlIP("b"), hostAddr(ctl, 11)},
		{"ServiceIP(a)", n.ServiceIP("a"), hostAddr(svc, 10)},
		{"ServiceIP(b)", n.ServiceIP("b"), hostAddr(svc, 11)},
		{"VIP(200)", n.VIP(200).Addr(), hostAddr(svc, 200)},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %s, want %s", c.what, c.got, c.want)
		}
	}
	if ctl.Overlaps(svc) || ctl.Bits() != 24 || svc.Bits() != 24 || n.VIP(200).Bits() != 24 {
		t.Errorf("subnets: got control %s, service %s, VIP %s; want two distinct /24s", ctl, svc, n.VIP(200))
	}
	for _, p := range []netip.Prefix{ctl, svc} {
		if b := p.Addr().As4(); b[0] != 10 || b[1] < 64 || b[1] > 127 || b[2] != 0 || b[3] != 0 {
			t.Errorf("subnet %s: want 10.X.0.0/24 with X in 64-127", p)
		}
	}

	// Each node's devices, seen from inside its namespace by Do and by a
	// command, carry that node's addresses.
	for _, node := range []string{"a", "b"} {
		for dev, want := range map[string]netip.Addr{ControlDevice: n.ControlIP(node), ServiceDevice: n.ServiceIP(node)} {
			var got []netip.Addr
			err := n.Do(node, func() error {
				ifi, err := net.InterfaceByName(dev)
				if err != nil {
					return err
				}
				addrs, err := ifi.Addrs()
				for _, a := range addrs {
					got = append(got, netip.MustParsePrefix(a.String()).Addr())
				}
				return err
			})
			if err != nil {
				t.Fatalf("Do(%s): %v", node, err)
			}
			if !slices.Contains(got, want) {
				t.Errorf("Do(%s): %s has %v, want %s", node, dev, got, want)
			}
		}
		out, err := n.Command(node, "ip", "-o", "-4", "addr", "show", "dev", ControlDevice).CombinedOutput()
		if err != nil {
			t.Fatalf("Command(%s, ip addr): %v: %s", node, err, out)
		}
		if want := n.ControlIP(node).String() + "/24"; !strings.Contains(string(out), want) {
			t.Errorf("Command(%s, ip addr show dev %s): got %q, want it to contain %s", node, ControlDevice, out, want)
		}
		out, err = n.Command(node, "ip", "-o", "link", "show", "lo").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "UP") {
			t.Errorf("Command(%s, ip link show lo): got %q (%v), want lo up", node, out, err)
		}
	}
}

// A node's control link carries traffic from and to the root namespace
// and the other nodes; cutting it stops that traffic and nothing on the
// service link; healing it restores it. The same the other way round.
func TestCutAndHeal(t *testing.T) {
	n := New(t, "a", "b")
	port := listen(t, n, "a", netip.IPv4Unspecified())
	aCtl := netip.AddrPortFrom(n.ControlIP("a"), port)
	aSvc := netip.AddrPortFrom(n.ServiceIP("a"), port)
	etcd := netip.AddrPortFrom(n.RootControlIP(), listen(t, n, "", n.RootControlIP()))

	// b dials a's control IP from a process started by Command, as the
	// end-to-end tests run their daemons; the other dials are made from
	// this process. They run at once: those that should fail each take
	// shortDial.
	reachable := func(t *testing.T, ctlWant, svcWant string) {
		t.Helper()
		dials := []struct {
			what, want string
			dial       func() string
		}{
			{"root to a's control IP", ctlWant, func() string { return dialFromRoot(aCtl) }},
			{"b to a's control IP", ctlWant, func() string { return dialFromNode(n, "b", aCtl) }},
			{"a to the root's control IP", ctlWant, func() string { return dialInNode(n, "a", etcd) }},
			{"root to a's service IP", svcWant, func() string { return dialFromRoot(aSvc) }},
			{"b to a's service IP", svcWant, func() string { return dialInNode(n, "b", aSvc) }},
		}
		got := make([]chan string, len(dials))
		for i, d := range dials {
			got[i] = make(chan string, 1)
			go func() { got[i] <- d.dial() }()
		}
		for i, d := range dials {
			check(t, d.what, <-got[i], d.want)
		}
	}
	healed := func(t *testing.T) {
		t.Helper()
		waitFor(t, "a's links to work again", eventTimeout, func() bool {
			return dialFromRoot(aCtl) == "connected" && dialFromRoot(aSvc) == "connected" &&
				dialInNode(n, "a", etcd) == "connected"
		})
		reachable(t, "connected", "connected")
	}

	reachable(t, "connected", "connected")
	// A closed port on a reached node is refused, not unreachable: what
	// "unreachable" below means is the link, not the listener.
	check(t, "root to a closed port of a", dialFromRoot(netip.AddrPortFrom(n.ControlIP("a"), 1)), "refused")

	t.Run("control", func(t *testing.T) {
		n.CutControl("a")
		reachable(t, "unreachable", "connected")
		check(t, "root to b's control IP", dialFromRoot(netip.AddrPortFrom(n.ControlIP("b"), 1)), "refused")
		n.HealControl("a")
		healed(t)
	})
	t.Run("service", func(t *testing.T) {
		n.CutService("a")
		reachable(t, "connected", "unreachable")
		n.HealService("a")
		healed(t)
	})
}

// After a Net's cleanup nothing of it is left: no namespace, no link, no
// address in the root namespace, no lock file.
func TestCleanupLeavesNothing(t *testing.T) {
	var (
		namespaces, links []string
		prefixes          []netip.Prefix
		lock              string
	)
	t.Run("net", func(t *testing.T) {
		n := New(t, "a", "b", "c")
		namespaces = []string{n.Namespace("a"), n.Namespace("b"), n.Namespace("c")}
		links = slices.Clone(n.links)
		prefixes = []netip.Prefix{n.ControlPrefix(), n.ServicePrefix()}
		lock = n.lock.Name()
		if len(links) != 2+2*3 {
			t.Fatalf("links: got %v, want 2 bridges and 6 veths", links)
		}
		for _, ns := range namespaces {
			if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
				t.Fatalf("namespace %s: %v", ns, err)
			}
		}
	})
	if lock == "" {
		t.Fatal("the subtest did not get as far as building its Net")
	}

	list, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, list)
	}
	for _, ns := range namespaces {
		if strings.Contains(string(list), ns) {
			t.Errorf("namespace %s still in ip netns list:\n%s", ns, list)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("/run/netns/%s: got %v, want it gone", ns, err)
		}
	}
	for _, l := range links {
		if _, err := netlink.LinkByName(l); !errors.As(err, new(netlink.LinkNotFoundError)) {
			t.Errorf("link %s: got %v, want it gone", l, err)
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		for _, p := range prefixes {
			if ip, _ := netip.AddrFromSlice(a.IP); p.Contains(ip.Unmap()) {
				t.Errorf("address %s still in the root namespace", a.IPNet)
			}
		}
	}
	if _, err := os.Stat(lock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file %s: got %v, want it gone", lock, err)
	}
}

// Nets alive at once share no name and no subnet.
func TestNetsAreDistinct(t *testing.T) {
	var nets []*Net
	for range 3 {
		nets = append(nets, New(t, "a"))
	}
	seen := map[string]bool{}
	var prefixes []netip.Prefix
	for _, n := range nets {
		for _, name := range append(slices.Clone(n.links), n.Namespace("a")) {
			if seen[name] {
				t.Errorf("name %s used twice", name)
			}
			seen[name] = true
			if len(name) > 15 && !strings.HasPrefix(name, nsPrefix) {
				t.Errorf("link name %s: longer than 15 bytes", name)
			}
		}
		for _, p := range []netip.Prefix{n.ControlPrefix(), n.ServicePrefix()} {
			for _, q := range prefixes {
				if p.Overlaps(q) {
					t.Errorf("subnet %s overlaps %s", p, q)
				}
			}
			prefixes = append(prefixes, p)
		}
		// Each works on its own.
		check(t, "root to a's control IP", dialFromRoot(netip.AddrPortFrom(n.ControlIP("a"), 1)), "refused")
	}
}

// New removes what a dead process's Net left behind (its lock file is
// there but unlocked), and nothing of a live Net.
func TestSweepRemovesLeftovers(t *testing.T) {
	live := New(t, "a")

	// Leftovers of a Net whose process died: a lock file nobody holds, a
	// namespace, a bridge and a veth.
	id := randomID()
	ns, br, veth := nsPrefix+id+"-x", linkPrefix+id+"c", linkPrefix+id+"s0"
	t.Cleanup(func() {
		deleteLink(br)
		deleteLink(veth)
		deleteNamespace(ns)
		os.Remove(lockPath(id))
	})
	if err := os.WriteFile(lockPath(id), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: veth + "p"}); err != nil {
		t.Fatal(err)
	}

	New(t, "b") // sweeps

	if _, err := os.Stat(filepath.Join("/run/netns", ns)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover namespace %s: got %v, want it gone", ns, err)
	}
	for _, l := range []string{br, veth, veth + "p"} {
		if _, err := netlink.LinkByName(l); !errors.As(err, new(netlink.LinkNotFoundError)) {
			t.Errorf("leftover link %s: got %v, want it gone", l, err)
		}
	}
	if _, err := os.Stat(lockPath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover lock file: got %v, want it gone", err)
	}
	// The live Net is whole and works.
	if _, err := os.Stat(filepath.Join("/run/netns", live.Namespace("a"))); err != nil {
		t.Errorf("live namespace: %v", err)
	}
	for _, l := range live.links {
		if _, err := netlink.LinkByName(l); err != nil {
			t.Errorf("live link %s: %v", l, err)
		}
	}
	check(t, "root to the live Net's node", dialFromRoot(netip.AddrPortFrom(live.ControlIP("a"), 1)), "refused")
}

func TestCheckNodeName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"node-1.x_y", true},
		{strings.Repeat("n", 32), true},
		{"", false},
		{strings.Repeat("n", 33), false},
		{"a/b", false},
		{"a b", false},
		{"ä", false},
	} {
		if err := checkNodeName(c.name); (err == nil) != c.ok {
			t.Errorf("checkNodeName(%q): got %v, want ok=%v", c.name, err, c.ok)
		}
	}
}
