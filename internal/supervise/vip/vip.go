// Package vip puts a virtual IPv4 address, the address clients use to reach
// a supervised service, on a network device, takes it off again, and tells
// the network where it went.
//
// Every method acts in the network namespace of the calling thread (the
// root namespace in the daemon; tests switch a locked thread into another
// one) and does its network work in the calling goroutine, so that this
// stays true: no method starts a goroutine that opens a socket or looks up a
// device.
package vip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	// ErrInvalid is wrapped by every error that Parse and Validate return
	// for a VIP that is malformed in itself (not for a missing device).
	ErrInvalid = errors.New("invalid VIP")
	// ErrNoDevice is wrapped by the error of every method whose VIP names a
	// device that does not exist in the current network namespace.
	ErrNoDevice = errors.New("no device")
)

// VIP is a virtual IPv4 address with its prefix length, on a device.
type VIP struct {
	Prefix netip.Prefix // the address and its subnet's length, e.g. 10.0.0.50/24
	Dev    string       // the device it goes on, e.g. eth0
}

// Parse reads a VIP in the syntax of the --vip flag, ADDR/BITS@DEV, e.g.
// 10.0.0.50/24@eth0. Its errors wrap ErrInvalid and say what is wrong.
func Parse(s string) (VIP, error) {
	bad := func(format string, a ...any) (VIP, error) {
		return VIP{}, fmt.Errorf("%w %q: %s (want ADDR/BITS@DEV, e.g. 10.0.0.50/24@eth0)",
			ErrInvalid, s, fmt.Sprintf(format, a...))
	}
	// An address never holds "@"; a device name may (Linux allows it).
	addr, dev, ok := strings.Cut(s, "@")
	if !ok {
		return bad(`no "@DEV"`)
	}
	a, bits, ok := strings.Cut(addr, "/")
	if !ok {
		return bad(`no "/BITS" after the address`)
	}
	ip, err := netip.ParseAddr(a)
	if err != nil {
		return bad("%q is not an IP address", a)
	}
	if !ip.Is4() {
		return bad("%s is IPv6, which is not supported yet: it would need unsolicited neighbour advertisements", a)
	}
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		return bad("prefix length %q is not a number from 1 to 32", bits)
	}
	v := VIP{Prefix: p, Dev: dev}
	if reason := v.problem(); reason != "" {
		return bad("%s", reason)
	}
	return v, nil
}

// problem says what is wrong with v in itself, or "" if nothing is.
func (v VIP) problem() string {
	p, ip := v.Prefix, v.Prefix.Addr()
	switch {
	case !p.IsValid():
		return "no address"
	case !ip.Is4():
		return fmt.Sprintf("%s is not IPv4, and IPv6 is not supported yet: it would need unsolicited neighbour advertisements", ip)
	case p.Bits() < 1:
		return fmt.Sprintf("prefix length %d out of range 1-32", p.Bits())
	case ip.IsUnspecified(), ip.IsLoopback(), ip.IsMulticast(), ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Sprintf("%s cannot be a service's address", ip)
	case p.Bits() <= 30 && ip == p.Masked().Addr():
		return fmt.Sprintf("%s is the network address of %s, not a host's", ip, p.Masked())
	case p.Bits() <= 30 && ip == lastAddr(p):
		return fmt.Sprintf("%s is the broadcast address of %s, not a host's", ip, p.Masked())
	case v.Dev == "":
		return `empty device after "@"`
	case len(v.Dev) >= unix.IFNAMSIZ:
		return fmt.Sprintf("device name %q is longer than %d bytes", v.Dev, unix.IFNAMSIZ-1)
	case v.Dev == "." || v.Dev == ".." || strings.ContainsAny(v.Dev, "/: \t\n"):
		return fmt.Sprintf("%q is not a device name", v.Dev)
	}
	return ""
}

// lastAddr returns the highest address of p's subnet.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		a[i/8] |= 0x80 >> (i % 8)
	}
	return netip.AddrFrom4(a)
}

// String returns v in the syntax Parse reads: ADDR/BITS@DEV.
func (v VIP) String() string { return v.Prefix.String() + "@" + v.Dev }

// Validate checks that v is well formed and that its device exists in the
// current network namespace. A missing device gives an error wrapping
// ErrNoDevice: "VIP 10.0.0.50/24@eth9: no device eth9".
func (v VIP) Validate() error {
	if reason := v.problem(); reason != "" {
		return fmt.Errorf("%w %s: %s", ErrInvalid, v, reason)
	}
	_, err := v.link()
	return err
}

// link looks v's device up.
func (v VIP) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(v.Dev)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil, fmt.Errorf("VIP %s: %w %s", v, ErrNoDevice, v.Dev)
		}
		return nil, fmt.Errorf("VIP %s: device %s: %w", v, v.Dev, err)
	}
	return l, nil
}

func (v VIP) addr() *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{
		IP:   v.Prefix.Addr().AsSlice(),
		Mask: net.CIDRMask(v.Prefix.Bits(), 32),
	}}
}

// Add puts the address on the device. It is idempotent: an address already
// there (with the same prefix length) is not an error. Call InUse first:
// Add does not probe.
func (v VIP) Add() error {
	l, err := v.link()
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, v.addr()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add VIP %s: %w", v, err)
	}
	return nil
}

// Remove takes the address off the device. It is idempotent: an address
// that is not there is not an error; a device that is not there is
// (ErrNoDevice), since it more likely means a wrong name than a done job.
func (v VIP) Remove() error {
	l, err := v.link()
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(l, v.addr()); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove VIP %s: %w", v, err)
	}
	return nil
}

// Held reports whether the address, with v's prefix length, is on the
// device.
func (v VIP) Held() (bool, error) {
	l, err := v.link()
	if err != nil {
		return false, err
	}
	var addrs []netlink.Addr
	for range 5 {
		// A dump that raced with a change comes back marked interrupted
		// and may be inconsistent: ask again.
		addrs, err = netlink.AddrList(l, netlink.FAMILY_V4)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return false, fmt.Errorf("VIP %s: list addresses: %w", v, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if ok && ip.Unmap() == v.Prefix.Addr() && ones == v.Prefix.Bits() {
			return true, nil
		}
	}
	return false, nil
}

// InUse probes for another holder of the address before this node takes it,
// as RFC 5227 (and arping -D) does: it broadcasts ARP requests for the
// address from sender IP 0.0.0.0 on the device, a few over wait, and
// reports the address in use, with the MAC address that answered, as soon
// as any ARP packet whose sender IP is the address comes from a MAC other
// than the device's own. Nobody answering within wait means not in use.
//
// The device needs no IPv4 address of its own. The probe does not see the
// address held by this host itself, on any device: check Held for that.
// InUse blocks for up to wait; a cancelled ctx ends it early with ctx's
// error.
func (v VIP) InUse(ctx context.Context, wait time.Duration) (bool, net.HardwareAddr, error) {
	if wait <= 0 {
		return false, nil, fmt.Errorf("probe VIP %s: wait %v is not positive", v, wait)
	}
	c, err := v.dialARP()
	if err != nil {
		return false, nil, fmt.Errorf("probe VIP %s: %w", v, err)
	}
	defer c.Close()
	ip := v.Prefix.Addr()
	probe, err := arp.NewPacket(arp.OperationRequest, c.mac, netip.IPv4Unspecified(), zeroMAC, ip)
	if err != nil {
		return false, nil, fmt.Errorf("probe VIP %s: %w", v, err)
	}
	// A cancelled ctx wakes a blocked read; the loop then sees ctx.Err().
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	// More than one probe, so that one lost frame does not hide a holder.
	every := min(max(wait/3, 100*time.Millisecond), time.Second)
	end := time.Now().Add(wait)
	var next time.Time
	for {
		if err := ctx.Err(); err != nil {
			return false, nil, fmt.Errorf("probe VIP %s: %w", v, err)
		}
		now := time.Now()
		if !now.Before(end) {
			return false, nil, nil
		}
		if !now.Before(next) {
			if err := c.send(probe); err != nil {
				return false, nil, fmt.Errorf("probe VIP %s: %w", v, err)
			}
			next = now.Add(every)
		}
		wake := next
		if end.Before(wake) {
			wake = end
		}
		if err := c.SetReadDeadline(wake); err != nil {
			return false, nil, fmt.Errorf("probe VIP %s: %w", v, err)
		}
		// Checked after setting the deadline, so a cancellation is either
		// seen here or its AfterFunc comes later and wakes the read.
		if err := ctx.Err(); err != nil {
			return false, nil, fmt.Errorf("probe VIP %s: %w", v, err)
		}
		p, err := c.receive()
		if errors.Is(err, errNotARP) || isTimeout(err) {
			continue
		}
		if err != nil {
			return false, nil, fmt.Errorf("probe VIP %s: %w", v, err)
		}
		// A socket bound to ARP does not see this host's outgoing frames,
		// but one reflected back (a bridge loop, a bond) would carry our
		// MAC: that is not another holder. A probe from another node
		// (sender IP 0.0.0.0) is not an answer.
		if p.SenderIP == ip && !bytes.Equal(p.SenderHardwareAddr, c.mac) {
			return true, p.SenderHardwareAddr, nil
		}
	}
}

// Announce broadcasts count gratuitous ARP requests for the address (sender
// IP and target IP both the address, sender MAC the device's), interval
// apart, so that switches learn the port and neighbours replace the MAC in
// their ARP caches. Neighbours that had no entry for the address do not
// create one. A cancelled ctx ends it early with ctx's error.
func (v VIP) Announce(ctx context.Context, count int, interval time.Duration) error {
	if count < 1 || interval < 0 {
		return fmt.Errorf("announce VIP %s: count %d and interval %v: want at least one packet and no negative interval",
			v, count, interval)
	}
	c, err := v.dialARP()
	if err != nil {
		return fmt.Errorf("announce VIP %s: %w", v, err)
	}
	defer c.Close()
	ip := v.Prefix.Addr()
	// RFC 5227 section 2.3: the target hardware address is ignored and
	// should be zero.
	garp, err := arp.NewPacket(arp.OperationRequest, c.mac, ip, zeroMAC, ip)
	if err != nil {
		return fmt.Errorf("announce VIP %s: %w", v, err)
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetWriteDeadline(d)
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	for i := range count {
		if i > 0 {
			t.Reset(interval)
			select {
			case <-ctx.Done():
				return fmt.Errorf("announce VIP %s: sent %d of %d: %w", v, i, count, ctx.Err())
			case <-t.C:
			}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("announce VIP %s: sent %d of %d: %w", v, i, count, err)
		}
		if err := c.send(garp); err != nil {
			return fmt.Errorf("announce VIP %s: %w", v, err)
		}
	}
	return nil
}

var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

// errNotARP marks a frame that is not an ARP packet for IPv4 over Ethernet.
var errNotARP = errors.New("not an ARP packet")

// arpConn sends and receives ARP packets on one device. It is a datagram
// packet socket rather than an arp.Client because arp.Dial refuses a device
// that has no IPv4 address yet, and a device that will carry only the VIP
// is probed before it has one.
type arpConn struct {
	*packet.Conn
	mac net.HardwareAddr
	buf []byte
}

func (v VIP) dialARP() (*arpConn, error) {
	if reason := v.problem(); reason != "" {
		return nil, fmt.Errorf("%w %s: %s", ErrInvalid, v, reason)
	}
	l, err := v.link()
	if err != nil {
		return nil, err
	}
	attrs := l.Attrs()
	if len(attrs.HardwareAddr) != 6 || bytes.Equal(attrs.HardwareAddr, zeroMAC) {
		return nil, fmt.Errorf("device %s has no Ethernet address (%q) to send ARP from", v.Dev, attrs.HardwareAddr)
	}
	ifi := &net.Interface{Index: attrs.Index, Name: attrs.Name, HardwareAddr: attrs.HardwareAddr, MTU: attrs.MTU}
	pc, err := packet.Listen(ifi, packet.Datagram, int(ethernet.EtherTypeARP), nil)
	if err != nil {
		return nil, fmt.Errorf("open ARP socket on %s: %w", v.Dev, err)
	}
	return &arpConn{Conn: pc, mac: attrs.HardwareAddr, buf: make([]byte, 128)}, nil
}

// send broadcasts p; the kernel adds the Ethernet header.
func (c *arpConn) send(p *arp.Packet) error {
	b, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = c.WriteTo(b, &packet.Addr{HardwareAddr: ethernet.Broadcast})
	return err
}

// receive reads the next packet, or errNotARP for one to skip.
func (c *arpConn) receive() (*arp.Packet, error) {
	n, _, err := c.ReadFrom(c.buf)
	if err != nil {
		return nil, err
	}
	var p arp.Packet
	if err := p.UnmarshalBinary(c.buf[:n]); err != nil ||
		p.HardwareType != 1 || p.ProtocolType != uint16(ethernet.EtherTypeIPv4) || len(p.SenderHardwareAddr) != 6 {
		return nil, errNotARP
	}
	return &p, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
