package vip_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/netns"
	"github.com/tandemhq/tandem/internal/supervise/vip"
	"github.com/vishvananda/netlink"
)

// eventTimeout bounds every wait for something that should happen:
// generous, so that a loaded 2-core machine does not fail a slow test.
const eventTimeout = 10 * time.Second

// probeWait is how long InUse listens for an answer; a veth answers in
// microseconds.
const probeWait = 500 * time.Millisecond

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

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    vip.VIP
		wantErr string // a part of the error's message; "" for none
	}{
		{in: "10.0.0.50/24@eth0", want: vip.VIP{Prefix: netip.MustParsePrefix("10.0.0.50/24"), Dev: "eth0"}},
		{in: "192.168.1.7/32@bond0.100", want: vip.VIP{Prefix: netip.MustParsePrefix("192.168.1.7/32"), Dev: "bond0.100"}},
		{in: "10.0.0.1/31@eth0", want: vip.VIP{Prefix: netip.MustParsePrefix("10.0.0.1/31"), Dev: "eth0"}},
		{in: "10.0.0.0/31@eth0", want: vip.VIP{Prefix: netip.MustParsePrefix("10.0.0.0/31"), Dev: "eth0"}},
		{in: "10.0.0.50/24", wantErr: `no "@DEV"`},
		{in: "10.0.0.50@eth0", wantErr: `no "/BITS"`},
		{in: "fd00::50/64@eth0", wantErr: "IPv6, which is not supported yet: it would need unsolicited neighbour advertisements"},
		{in: "::ffff:10.0.0.50/120@eth0", wantErr: "not supported yet"},
		{in: "10.0.0.50/33@eth0", wantErr: `prefix length "33" is not a number from 1 to 32`},
		{in: "10.0.0.50/x@eth0", wantErr: `prefix length "x"`},
		{in: "10.0.0.50/0@eth0", wantErr: "prefix length 0 out of range 1-32"},
		{in: "10.0.0.50/24@", wantErr: `empty device after "@"`},
		{in: "eth0/24@eth0", wantErr: `"eth0" is not an IP address`},
		{in: "/24@eth0", wantErr: `"" is not an IP address`},
		{in: "10.0.0.0/24@eth0", wantErr: "network address of 10.0.0.0/24"},
		{in: "10.0.0.255/24@eth0", wantErr: "broadcast address of 10.0.0.0/24"},
		{in: "0.0.0.0/24@eth0", wantErr: "cannot be a service's address"},
		{in: "127.0.0.5/8@lo", wantErr: "cannot be a service's address"},
		{in: "224.0.0.5/24@eth0", wantErr: "cannot be a service's address"},
		{in: "10.0.0.50/24@a-very-long-device-name", wantErr: "longer than 15 bytes"},
		{in: "10.0.0.50/24@eth0:1", wantErr: "not a device name"},
		{in: "10.0.0.50/24@eth 0", wantErr: "not a device name"},
	} {
		t.Run(c.in, func(t *testing.T) {
			got, err := vip.Parse(c.in)
			if c.wantErr == "" {
				if err != nil || got != c.want {
					t.Fatalf("got %+v, %v; want %+v, nil", got, err, c.want)
				}
				if s := got.String(); s != c.in {
					t.Errorf("String: got %q, want %q", s, c.in)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %+v, nil; want an error containing %q", got, c.wantErr)
			}
			if !errors.Is(err, vip.ErrInvalid) || !strings.Contains(err.Error(), c.wantErr) ||
				!strings.Contains(err.Error(), "ADDR/BITS@DEV") {
				t.Errorf("got %q, want an ErrInvalid naming the syntax and containing %q", err, c.wantErr)
			}
		})
	}
}

// in runs f in node's namespace of n, failing the test on an error.
func in(t *testing.T, n *netns.Net, node string, f func() error) {
	t.Helper()
	if err := n.Do(node, f); err != nil {
		t.Fatalf("in %s: %v", node, err)
	}
}

// mac returns the MAC address of node's service device.
func mac(t *testing.T, n *netns.Net, node string) net.HardwareAddr {
	t.Helper()
	var hw net.HardwareAddr
	in(t, n, node, func() error {
		ifi, err := net.InterfaceByName(netns.ServiceDevice)
		if ifi != nil {
			hw = ifi.HardwareAddr
		}
		return err
	})
	return hw
}

// held reports whether v is on its device in node, by netlink, not by
// Held.
func held(t *testing.T, n *netns.Net, node string, v vip.VIP) int {
	t.Helper()
	count := 0
	in(t, n, node, func() error {
		l, err := netlink.LinkByName(v.Dev)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if a.IPNet.String() == v.Prefix.String() {
				count++
			}
		}
		return err
	})
	return count
}

// dial connects from node to ap and says what happened: "connected",
// "refused" (the address answered) or "unreachable" (silence, or no route).
func dial(t *testing.T, n *netns.Net, node string, ap netip.AddrPort) string {
	t.Helper()
	var res string
	in(t, n, node, func() error {
		c, err := net.DialTimeout("tcp", ap.String(), time.Second)
		var ne net.Error
		switch {
		case err == nil:
			c.Close()
			res = "connected"
		case errors.Is(err, syscall.ECONNREFUSED):
			res = "refused"
		case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, syscall.EHOSTUNREACH):
			res = "unreachable"
		default:
			return err
		}
		return nil
	})
	return res
}

// listen starts a TCP server on every address of node's namespace that
// accepts and closes connections until the test ends, and returns its
// port.
func listen(t *testing.T, n *netns.Net, node string) uint16 {
	t.Helper()
	var ln net.Listener
	in(t, n, node, func() (err error) {
		ln, err = net.Listen("tcp", "0.0.0.0:0")
		return err
	})
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

func TestValidate(t *testing.T) {
	n := netns.New(t, "a")
	good := vip.VIP{Prefix: n.VIP(200), Dev: netns.ServiceDevice}
	in(t, n, "a", good.Validate)

	missing := vip.VIP{Prefix: netip.MustParsePrefix("10.0.0.50/24"), Dev: "eth9"}
	var errs []error
	in(t, n, "a", func() error {
		errs = []error{missing.Validate(), missing.Add(), missing.Remove()}
		_, err := missing.Held()
		errs = append(errs, err)
		_, _, err = missing.InUse(context.Background(), probeWait)
		errs = append(errs, err)
		errs = append(errs, missing.Announce(context.Background(), 1, 0))
		return nil
	})
	for i, err := range errs {
		if !errors.Is(err, vip.ErrNoDevice) || !strings.Contains(err.Error(), "VIP 10.0.0.50/24@eth9: no device eth9") {
			t.Errorf("call %d: got %v, want ErrNoDevice saying \"VIP 10.0.0.50/24@eth9: no device eth9\"", i, err)
		}
	}
	if err := errs[0]; err.Error() != "VIP 10.0.0.50/24@eth9: no device eth9" {
		t.Errorf("Validate: got %q, want %q", err, "VIP 10.0.0.50/24@eth9: no device eth9")
	}

	for _, bad := range []vip.VIP{
		{Dev: netns.ServiceDevice},
		{Prefix: netip.MustParsePrefix("fd00::1/64"), Dev: netns.ServiceDevice},
		{Prefix: n.VIP(200)},
	} {
		var err error
		in(t, n, "a", func() error { err = bad.Validate(); return nil })
		if !errors.Is(err, vip.ErrInvalid) {
			t.Errorf("Validate(%+v): got %v, want ErrInvalid", bad, err)
		}
	}
}

// Add makes the address reachable from the other node, Remove makes it
// unreachable again, and both are idempotent.
func TestAddRemove(t *testing.T) {
	n := netns.New(t, "a", "b")
	v := vip.VIP{Prefix: n.VIP(200), Dev: netns.ServiceDevice}
	ap := netip.AddrPortFrom(v.Prefix.Addr(), listen(t, n, "a"))
	isHeld := func() bool {
		t.Helper()
		var h bool
		in(t, n, "a", func() (err error) { h, err = v.Held(); return err })
		return h
	}

	if got := dial(t, n, "b", ap); got != "unreachable" {
		t.Fatalf("before Add, b to the VIP: got %s, want unreachable", got)
	}
	if isHeld() {
		t.Fatal("before Add, Held: got true, want false")
	}

	in(t, n, "a", v.Add)
	in(t, n, "a", v.Add)
	if got := held(t, n, "a", v); got != 1 {
		t.Fatalf("after Add twice: the address is on the device %d times, want 1", got)
	}
	if !isHeld() {
		t.Fatal("after Add, Held: got false, want true")
	}
	waitFor(t, "b to reach the VIP", eventTimeout, func() bool { return dial(t, n, "b", ap) == "connected" })
	if got := held(t, n, "b", v); got != 0 {
		t.Fatalf("Add in a put the address in b %d times, want 0", got)
	}

	in(t, n, "a", v.Remove)
	in(t, n, "a", v.Remove)
	if got := held(t, n, "a", v); got != 0 {
		t.Fatalf("after Remove twice: the address is on the device %d times, want 0", got)
	}
	if isHeld() {
		t.Fatal("after Remove, Held: got true, want false")
	}
	if got := dial(t, n, "b", ap); got != "unreachable" {
		t.Fatalf("after Remove, b to the VIP: got %s, want unreachable", got)
	}
	// The node itself is still there: only the VIP went.
	if got := dial(t, n, "b", netip.AddrPortFrom(n.ServiceIP("a"), ap.Port())); got != "connected" {
		t.Fatalf("after Remove, b to a's own address: got %s, want connected", got)
	}

	// Held compares the prefix length too.
	in(t, n, "a", v.Add)
	other := vip.VIP{Prefix: netip.PrefixFrom(v.Prefix.Addr(), 32), Dev: v.Dev}
	in(t, n, "a", func() error {
		if h, err := other.Held(); h || err != nil {
			t.Errorf("Held of %s while %s is on the device: got %v, %v; want false, nil", other, v, h, err)
		}
		return nil
	})
}

// InUse sees another node holding the address, and the MAC it holds it
// with; nobody holding it is not in use.
func TestInUse(t *testing.T) {
	n := netns.New(t, "a", "b")
	v := vip.VIP{Prefix: n.VIP(200), Dev: netns.ServiceDevice}
	macA := mac(t, n, "a")
	probe := func(node string) (bool, net.HardwareAddr, time.Duration) {
		t.Helper()
		var (
			used bool
			hw   net.HardwareAddr
		)
		start := time.Now()
		in(t, n, node, func() (err error) {
			used, hw, err = v.InUse(context.Background(), probeWait)
			return err
		})
		return used, hw, time.Since(start)
	}

	if used, hw, took := probe("b"); used || hw != nil || took < probeWait {
		t.Fatalf("nobody holding it: got %v, %v after %v; want false, nil after the whole %v", used, hw, took, probeWait)
	}

	in(t, n, "a", v.Add)
	if used, hw, took := probe("b"); !used || hw.String() != macA.String() || took >= probeWait {
		t.Fatalf("a holding it: got %v, %q after %v; want true, a's %s before %v", used, hw, took, macA, probeWait)
	}
	// A host does not answer its own probe (Held is the check for that),
	// and its own announcements do not count.
	announced := make(chan error, 1)
	go func() {
		announced <- n.Do("a", func() error { return v.Announce(context.Background(), 10, probeWait/10) })
	}()
	if used, hw, _ := probe("a"); used {
		t.Fatalf("probing from the holder itself while it announces: got true, %s; want false", hw)
	}
	if err := <-announced; err != nil {
		t.Fatalf("Announce: %v", err)
	}

	in(t, n, "a", v.Remove)
	if used, hw, _ := probe("b"); used {
		t.Fatalf("after a removed it: got true, %s; want false", hw)
	}

	// A device with no IPv4 address of its own can probe.
	in(t, n, "a", v.Add)
	in(t, n, "b", func() error {
		l, err := netlink.LinkByName(netns.ServiceDevice)
		if err != nil {
			return err
		}
		return netlink.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{
			IP: n.ServiceIP("b").AsSlice(), Mask: net.CIDRMask(24, 32)}})
	})
	if used, hw, _ := probe("b"); !used || hw.String() != macA.String() {
		t.Fatalf("from a device without an address, a holding it: got %v, %q; want true, %s", used, hw, macA)
	}
}

func TestInUseStopsWithContext(t *testing.T) {
	n := netns.New(t, "a")
	v := vip.VIP{Prefix: n.VIP(200), Dev: netns.ServiceDevice}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	var err error
	in(t, n, "a", func() error { _, _, err = v.InUse(ctx, time.Minute); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("returned %v after the cancel, want promptly", took)
	}
	in(t, n, "a", func() error {
		if _, _, err := v.InUse(context.Background(), 0); err == nil {
			t.Error("wait 0: got nil, want an error")
		}
		return nil
	})
}

// After the VIP moves from a to c, c's Announce makes b's ARP cache point
// at c, which nothing else would do while b has a fresh entry for a.
func TestAnnounce(t *testing.T) {
	n := netns.New(t, "a", "b", "c")
	v := vip.VIP{Prefix: n.VIP(200), Dev: netns.ServiceDevice}
	macA, macC := mac(t, n, "a"), mac(t, n, "c")
	// A port with no listener: reaching it gets a refusal, from whoever
	// holds the VIP.
	ap := netip.AddrPortFrom(v.Prefix.Addr(), 9)
	neighbour := func() string {
		t.Helper()
		var hw string
		in(t, n, "b", func() error {
			l, err := netlink.LinkByName(netns.ServiceDevice)
			if err != nil {
				return err
			}
			neighs, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
			for _, e := range neighs {
				if ip, _ := netip.AddrFromSlice(e.IP); ip.Unmap() == v.Prefix.Addr() {
					hw = e.HardwareAddr.String()
				}
			}
			return err
		})
		return hw
	}

	in(t, n, "a", v.Add)
	if got := dial(t, n, "b", ap); got != "refused" {
		t.Fatalf("b to the VIP on a: got %s, want refused", got)
	}
	if got := neighbour(); got != macA.String() {
		t.Fatalf("b's neighbour entry for the VIP: got %q, want a's %s", got, macA)
	}

	in(t, n, "a", v.Remove)
	in(t, n, "c", v.Add)
	if got := neighbour(); got != macA.String() {
		t.Fatalf("after the move, before Announce: b's entry got %q, want still a's %s", got, macA)
	}

	in(t, n, "c", func() error { return v.Announce(context.Background(), 3, 20*time.Millisecond) })
	waitFor(t, "b's entry for the VIP to show c's MAC", eventTimeout, func() bool { return neighbour() == macC.String() })
	if got := dial(t, n, "b", ap); got != "refused" {
		t.Fatalf("b to the VIP on c: got %s, want refused", got)
	}
}

func TestAnnounceStopsWithContext(t *testing.T) {
	n := netns.New(t, "a")
	v := vip.VIP{Prefix: n.VIP(200), Dev: netns.ServiceDevice}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	var err error
	in(t, n, "a", func() error { err = v.Announce(ctx, 100, time.Second); return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("returned after %v, want soon after the deadline", took)
	}
	in(t, n, "a", func() error {
		for _, count := range []int{0, -1} {
			if err := v.Announce(context.Background(), count, 0); err == nil {
				t.Errorf("count %d: got nil, want an error", count)
			}
		}
		return nil
	})
}
