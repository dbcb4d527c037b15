package haproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// cookieName is the sticky-session cookie of a Backend with Sticky set.
const cookieName = "TANDEMLB"

// hardStopAfter bounds how long a worker of an earlier generation may keep
// draining its connections after a reload.
const hardStopAfter = 30 * time.Second

// A request whose connection is refused waits turnAround, then retries,
// up to retries times (the last on another server), each connect bounded
// by connectTimeout.
const (
	retries        = 2
	connectTimeout = 5 * time.Second
	turnAround     = time.Second // HAProxy's own, not configurable
)

// name is what HAProxy accepts as a proxy or server name. Checking it also
// keeps a name from smuggling configuration lines into the file.
var name = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)

// validate refuses a desired state that would render a configuration with
// more or other lines than the fields say, or that HAProxy's own check
// cannot catch (two frontends binding one address pass `haproxy -c`).
func validate(d lb.Desired) error {
	backends := map[string]bool{}
	listens := map[string]string{}
	for _, b := range d.Backends {
		if !name.MatchString(b.Name) {
			return fmt.Errorf("%w: backend name %q: want letters, digits, '_', '.', ':' or '-'", ErrInvalid, b.Name)
		}
		if backends[b.Name] {
			return fmt.Errorf("%w: backend %q listed twice", ErrInvalid, b.Name)
		}
		backends[b.Name] = true
		if b.Mode != lb.ModeActive && b.Mode != lb.ModeAll {
			return fmt.Errorf("%w: backend %q: mode %q: want %q or %q", ErrInvalid, b.Name, b.Mode, lb.ModeActive, lb.ModeAll)
		}
		if err := plainWord(b.Listen); err != nil {
			return fmt.Errorf("%w: backend %q: listen %q: %v", ErrInvalid, b.Name, b.Listen, err)
		}
		if _, _, err := net.SplitHostPort(b.Listen); err != nil {
			return fmt.Errorf("%w: backend %q: listen %q: %v", ErrInvalid, b.Name, b.Listen, err)
		}
		if other, dup := listens[b.Listen]; dup {
			return fmt.Errorf("%w: backends %q and %q both listen on %s", ErrInvalid, other, b.Name, b.Listen)
		}
		listens[b.Listen] = b.Name
		if b.Health != "" {
			if !strings.HasPrefix(b.Health, "/") {
				return fmt.Errorf("%w: backend %q: health %q: want a path starting with /", ErrInvalid, b.Name, b.Health)
			}
			if err := plainWord(b.Health); err != nil {
				return fmt.Errorf("%w: backend %q: health %q: %v", ErrInvalid, b.Name, b.Health, err)
			}
		}
		servers := map[string]bool{}
		for _, s := range b.Servers {
			if !name.MatchString(s.Name) {
				return fmt.Errorf("%w: backend %q: server name %q: want letters, digits, '_', '.', ':' or '-'", ErrInvalid, b.Name, s.Name)
			}
			if servers[s.Name] {
				return fmt.Errorf("%w: backend %q: server %q listed twice", ErrInvalid, b.Name, s.Name)
			}
			servers[s.Name] = true
			if err := plainWord(s.Addr); err != nil {
				return fmt.Errorf("%w: backend %q: server %q: addr %q: %v", ErrInvalid, b.Name, s.Name, s.Addr, err)
			}
			if _, port, err := net.SplitHostPort(s.Addr); err != nil || port == "" {
				return fmt.Errorf("%w: backend %q: server %q: addr %q: want host:port", ErrInvalid, b.Name, s.Name, s.Addr)
			}
		}
	}
	return nil
}

// plainWord refuses what would end a configuration word or line.
func plainWord(s string) error {
	if s == "" {
		return fmt.Errorf("empty")
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r == '#' || r == '\\' || r == '"' || r == '\'' {
			return fmt.Errorf("character %q not allowed", r)
		}
	}
	return nil
}

// normalized is a sorted deep copy, so the caller's slices are never ours.
func normalized(d lb.Desired) lb.Desired {
	out := lb.Desired{Rev: d.Rev, Backends: make([]lb.Backend, len(d.Backends))}
	for i, b := range d.Backends {
		b.Servers = slices.Clone(b.Servers)
		out.Backends[i] = b
	}
	out.Normalize()
	return out
}

// serverOpts are a server's options, the same for one written in the
// configuration and one added at run time: HAProxy 2.6 does not apply
// default-server to dynamic servers, so neither kind relies on it.
// pool-purge-delay (5s by default) is short so that the idle connections
// of a removed server, which `del server` waits for, close within moments.
// A server with TLS gets p's TLS options (tlsOpts).
func serverOpts(c lb.Checks, tls bool, p paths) string {
	opts := fmt.Sprintf("check inter %s fall %d rise %d pool-purge-delay %s", ms(c.Inter), c.Fall, c.Rise, ms(purgeDelay))
	if tls {
		opts += " " + p.tlsOpts()
	}
	return opts
}

// tlsOpts are the options of a server with TLS: TLS 1.3, the certificate
// verified against the CA and, with serverName, checked for that name
// (HAProxy 2.6 compares it with the certificate's DNS names and common
// name, never with its IP addresses, so an IP address there would refuse
// every server; tandem's server certificates all carry the common name
// tandem-<cluster>), the health checks over TLS too (check-ssl), and the
// client certificate if there is one. No SNI is sent: verifyhost applies
// only without one, and tandem's servers have one certificate each.
func (p paths) tlsOpts() string {
	opts := "ssl verify required ca-file " + p.backendCA
	if p.serverName != "" {
		opts += " verifyhost " + p.serverName
	}
	opts += " ssl-min-ver " + lb.MinTLSVersion + " check-ssl"
	if p.clientPEM != "" {
		opts += " crt " + p.clientPEM
	}
	return opts
}

// purgeDelay is each server's pool-purge-delay.
const purgeDelay = time.Second

func ms(d time.Duration) string {
	n := d.Milliseconds()
	if n < 1 {
		n = 1
	}
	return strconv.FormatInt(n, 10) + "ms"
}

// paths are where the rendered configuration points the proxy.
type paths struct {
	adminSocket string
	stateFile   string
	// TLS (Config.TLS): the CA that verifies servers with TLS, the name
	// their certificates must carry, and the combined certificate-and-key
	// files the driver writes for HAProxy's crt (the client certificate
	// presented to servers, the one served on ListenTLS frontends).
	backendCA, serverName  string
	clientPEM, frontendPEM string
}

// render writes the configuration for d's shape (Up plays no part: every
// server is written alike, with its checks on, and up or down is applied at
// run time). Equal shapes render equal bytes.
func render(d lb.Desired, c lb.Checks, p paths) []byte { return renderWith(d, c, p, false) }

// renderStart is render for a proxy about to start afresh: a server that
// is not up starts in maintenance ("disabled"), so that a new process gets
// no request to a standby in the moments before its up and down are
// applied (HAProxy counts a checked server up until its checks say
// otherwise).
func renderStart(d lb.Desired, c lb.Checks, p paths) []byte { return renderWith(d, c, p, true) }

func renderWith(d lb.Desired, c lb.Checks, p paths, start bool) []byte {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Written by tandem lb; every change rewrites it. Edit the desired state, not this file.")
	w("global")
	w("    master-worker")
	w("    stats socket %s mode 600 level admin expose-fd listeners", p.adminSocket)
	w("    stats timeout 2m")
	w("    server-state-file %s", p.stateFile)
	w("    hard-stop-after %s", ms(hardStopAfter))
	w("")
	w("defaults")
	w("    mode http")
	w("    option http-keep-alive")
	w("    option idle-close-on-response")
	w("    option redispatch")
	w("    retries %d", retries)
	w("    timeout connect %s", ms(connectTimeout))
	w("    timeout client 1m")
	w("    timeout server 1m")
	w("    timeout queue 10s")
	w("    timeout http-request 10s")
	w("    timeout http-keep-alive 10s")
	w("    load-server-state-from-file global")
	for _, be := range d.Backends {
		w("")
		w("frontend %s", be.Name)
		if be.ListenTLS {
			w("    bind %s ssl crt %s ssl-min-ver %s alpn http/1.1", be.Listen, p.frontendPEM, lb.MinTLSVersion)
			// Servers see how the client came (the proxy's own TLS ends
			// here; the connection to the server is TLS of its own).
			w("    http-request set-header X-Forwarded-Proto https")
		} else {
			w("    bind %s", be.Listen)
		}
		w("    default_backend %s", be.Name)
		w("")
		w("backend %s", be.Name)
		w("    balance roundrobin")
		if be.Health != "" {
			w("    option httpchk GET %s", be.Health)
			w("    http-check expect status 200-299")
		}
		if be.Sticky {
			w("    cookie %s insert indirect nocache", cookieName)
		}
		for _, s := range be.Servers {
			line := fmt.Sprintf("    server %s %s %s", s.Name, s.Addr, serverOpts(c, s.TLS, p))
			if be.Sticky {
				line += " cookie " + s.Name
			}
			if start && !s.Up {
				line += " disabled"
			}
			w("%s", line)
		}
	}
	return b.Bytes()
}

// plan is how to go from the shape the proxy runs to the next one.
type plan struct {
	reload string // why a reload is needed; "" when the runtime API can do it all
	del    []ref
	add    []ref // with the server's address in addr
	addr   []ref // servers that stay but move
}

type ref struct {
	backend, server, addr string
	tls                   bool
}

func (r ref) String() string { return r.backend + "/" + r.server }

// key is r without its address, to index servers by.
func (r ref) key() ref { return ref{backend: r.backend, server: r.server} }

// diff plans the change from cur to next, both normalized. Servers come
// and go at run time (HAProxy 2.6 dynamic servers); the rest needs a
// reload.
func diff(cur, next lb.Desired) plan {
	var p plan
	curB := map[string]lb.Backend{}
	for _, b := range cur.Backends {
		curB[b.Name] = b
	}
	if len(cur.Backends) != len(next.Backends) {
		p.reload = "backends added or removed"
		return p
	}
	for _, nb := range next.Backends {
		cb, ok := curB[nb.Name]
		switch {
		case !ok:
			p.reload = fmt.Sprintf("backend %s added", nb.Name)
		case cb.Listen != nb.Listen:
			p.reload = fmt.Sprintf("backend %s: listen changed", nb.Name)
		case cb.Health != nb.Health:
			p.reload = fmt.Sprintf("backend %s: health check changed", nb.Name)
		case cb.Sticky != nb.Sticky:
			p.reload = fmt.Sprintf("backend %s: sticky changed", nb.Name)
		case cb.ListenTLS != nb.ListenTLS:
			p.reload = fmt.Sprintf("backend %s: TLS on its listener changed", nb.Name)
		}
		if p.reload != "" {
			return p
		}
		curS := map[string]lb.Server{}
		for _, s := range cb.Servers {
			curS[s.Name] = s
		}
		nextS := map[string]bool{}
		for _, s := range nb.Servers {
			nextS[s.Name] = true
			r := ref{nb.Name, s.Name, s.Addr, s.TLS}
			old, ok := curS[s.Name]
			switch {
			case ok && old.TLS != s.TLS:
				// Rare (a server turning TLS on): not worth `set server
				// ssl`, whose check settings would need care too.
				p.reload = fmt.Sprintf("server %s: TLS turned on or off", r)
			case ok && sameAddr(old.Addr, s.Addr):
			case !literal(s.Addr):
				// The runtime API takes addresses, not names to resolve.
				p.reload = fmt.Sprintf("server %s: address %s is not an IP address", r, s.Addr)
			case ok:
				if !literal(old.Addr) {
					p.reload = fmt.Sprintf("server %s: moves from name %s", r, old.Addr)
				}
				p.addr = append(p.addr, r)
			case nb.Sticky:
				// HAProxy 2.6 refuses "cookie" on a dynamic server.
				p.reload = fmt.Sprintf("server %s added to sticky backend %s", r, nb.Name)
			default:
				p.add = append(p.add, r)
			}
			if p.reload != "" {
				return p
			}
		}
		for _, s := range cb.Servers {
			if !nextS[s.Name] {
				p.del = append(p.del, ref{nb.Name, s.Name, s.Addr, s.TLS})
			}
		}
	}
	return p
}

// sameAddr compares two host:port the way the proxy reads them.
func sameAddr(a, b string) bool {
	x, err1 := netip.ParseAddrPort(a)
	y, err2 := netip.ParseAddrPort(b)
	if err1 != nil || err2 != nil {
		return a == b
	}
	return x.Addr().Unmap() == y.Addr().Unmap() && x.Port() == y.Port()
}

// literal says whether addr is an IP address and port.
func literal(addr string) bool {
	_, err := netip.ParseAddrPort(addr)
	return err == nil
}

// stateCmds are the runtime commands that make the proxy route as d says,
// the servers to bring up first so that a change of active never leaves a
// moment with none. They never turn checks off:
//
//   - up: leave maintenance, force the health up;
//   - down, HTTP check: force the health down, ready, and down again
//     (leaving maintenance makes a new server run whatever was forced
//     before); stay ready so the
//     proxy's own check (which asks the server whether it should serve)
//     takes over if tandem lb is gone;
//   - down, TCP check: maintenance. A connect check cannot tell an active
//     from a standby and would bring a forced-down standby back after
//     Rise checks, so here tandem lb's word must hold until it changes it.
func stateCmds(d lb.Desired) []string {
	var up, down []string
	for _, b := range d.Backends {
		for _, s := range b.Servers {
			r := b.Name + "/" + s.Name
			switch {
			case s.Up:
				up = append(up, "set server "+r+" state ready", "set server "+r+" health up")
			case b.Health != "":
				// Leaving maintenance (a server just added) makes a server
				// run whatever health was forced before, so the health is
				// forced down again right after. No weight changes: HAProxy
				// 2.6.12's worker crashed (exit 139) twice in CI, with every
				// server down, only after weight changes were added here
				// (suspected, not proven).
				down = append(down, "set server "+r+" health down", "set server "+r+" state ready",
					"set server "+r+" health down")
			default:
				down = append(down, "set server "+r+" state maint")
			}
		}
	}
	return append(up, down...)
}

// serverState is one line of `show servers state`.
type serverState struct {
	backend, server string
	addr            string // host:port
	op              int    // 0 stopped, 1 starting, 2 running, 3 stopping
	admin           int    // bits: maintenance and drain of all kinds
	weight          int
	line            string
}

// routable says whether the proxy would send the server new requests.
func (s serverState) routable() bool {
	return (s.op == 1 || s.op == 2) && s.admin == 0 && s.weight > 0
}

// parseServersState reads `show servers state` (the server-state-file
// format), finding columns by the header so that added ones do no harm.
func parseServersState(out string) (version string, header string, states []serverState, err error) {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	col := map[string]int{}
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			continue
		case version == "":
			version = line
			continue
		case strings.HasPrefix(line, "#"):
			header = line
			for i, f := range strings.Fields(strings.TrimPrefix(line, "#")) {
				col[f] = i
			}
			continue
		}
		if len(col) == 0 {
			return "", "", nil, fmt.Errorf("show servers state: data before header: %q", line)
		}
		f := strings.Fields(line)
		get := func(k string) (string, error) {
			i, ok := col[k]
			if !ok || i >= len(f) {
				return "", fmt.Errorf("show servers state: no %s in %q", k, line)
			}
			return f[i], nil
		}
		num := func(k string) (int, error) {
			v, err := get(k)
			if err != nil {
				return 0, err
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				return 0, fmt.Errorf("show servers state: %s %q: %v", k, v, err)
			}
			return n, nil
		}
		var s serverState
		s.line = line
		var e [8]error
		s.backend, e[0] = get("be_name")
		s.server, e[1] = get("srv_name")
		host, e2 := get("srv_addr")
		port, e3 := get("srv_port")
		e[2], e[3] = e2, e3
		if host == "-" {
			host, e[4] = get("srv_fqdn")
		}
		s.addr = net.JoinHostPort(host, port)
		s.op, e[5] = num("srv_op_state")
		s.admin, e[6] = num("srv_admin_state")
		s.weight, e[7] = num("srv_uweight")
		for _, err := range e {
			if err != nil {
				return "", "", nil, err
			}
		}
		states = append(states, s)
	}
	if version == "" {
		return "", "", nil, fmt.Errorf("show servers state: empty reply")
	}
	return version, header, states, nil
}

// stateFile keeps the lines of servers that the next configuration has at
// the same address, for load-server-state-from-file: a server that moved
// or went must not be handed an old address or state.
func stateFile(version, header string, states []serverState, next lb.Desired) []byte {
	want := map[string]string{}
	for _, b := range next.Backends {
		for _, s := range b.Servers {
			want[b.Name+"/"+s.Name] = s.Addr
		}
	}
	var buf bytes.Buffer
	buf.WriteString(version + "\n" + header + "\n")
	for _, s := range states {
		addr, ok := want[s.backend+"/"+s.server]
		if ok && (sameAddr(addr, s.addr) || !literal(addr)) {
			buf.WriteString(s.line + "\n")
		}
	}
	return buf.Bytes()
}
