package nginx

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// GenerationPath is the one path of every listening address that NGINX
// answers itself instead of proxying it: GET returns the generation of the
// configuration the worker that answers runs (a number; anyone who can
// reach the address can read it). It starts with "/." so that no
// application is likely to use it, and its exact-match location shadows
// nothing else.
const GenerationPath = "/.tandem-lb/generation"

// Marks in the comments of a rendered file: metadata that NGINX has no
// directive for (names, the health path) and that Actual reads back.
const (
	markHeader  = "# tandem-lb generation="
	markBackend = "# tandem-lb backend "
	markServer  = "# tandem-lb server "
)

// Prefixes of the names the driver gives its upstreams, named locations
// and variables, so that in an external NGINX they do not collide with the
// operator's own.
const (
	upstreamPrefix = "tandem_lb_"
	followPrefix   = "@tandem_lb_follow_"
	locationVar    = "$tandem_lb_location"
)

// backendMeta is what a backend's comment records.
type backendMeta struct {
	Name   string `json:"name"`
	Listen string `json:"listen"`
	Health string `json:"health,omitempty"`
	Mode   string `json:"mode"`
	Sticky bool   `json:"sticky,omitempty"`
	// ListenTLS: NGINX serves TLS on Listen.
	ListenTLS bool `json:"listen_tls,omitempty"`
	// NoneUp: no server was up, so every server is rendered as a normal
	// one (something answers, and the 307 safety net finds the active);
	// Actual reports them as not up, as they were applied.
	NoneUp bool `json:"none_up,omitempty"`
}

type serverMeta struct {
	Name string `json:"name"`
	TLS  bool   `json:"tls,omitempty"`
}

// settings are the parts of a rendered file that come from the driver's
// configuration, not from the desired state.
type settings struct {
	managed         bool
	dir             string // managed: the prefix, with pid, logs and temp paths
	workers         int    // 0: auto
	user            string
	shutdownTimeout time.Duration
	connectTimeout  time.Duration
	maxFails        int
	failTimeout     time.Duration
	keepalive       int // idle connections each worker keeps to each upstream
	tls             lb.TLS
}

var (
	// Backend names become parts of upstream and location names.
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// A listen address goes to NGINX as is, so that NGINX judges it (and
	// its message says what is wrong); only what could change the
	// configuration's structure is refused here.
	listenRE = regexp.MustCompile(`^[A-Za-z0-9._:%*\[\]-]+$`)
	hostRE   = regexp.MustCompile(`^[A-Za-z0-9._:%-]+$`)
)

// ErrBadDesired means a desired state cannot be rendered: a name or an
// address that NGINX's syntax cannot carry safely, or two backends on one
// address. NGINX was not asked.
var ErrBadDesired = errors.New("nginx: bad desired state")

// check validates d (normalized) before rendering.
func check(d lb.Desired) error {
	names := map[string]bool{}
	listens := map[string]string{}
	for _, b := range d.Backends {
		if !nameRE.MatchString(b.Name) {
			return fmt.Errorf("%w: backend name %q: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrBadDesired, b.Name)
		}
		if names[b.Name] {
			return fmt.Errorf("%w: backend %s given twice", ErrBadDesired, b.Name)
		}
		names[b.Name] = true
		if !listenRE.MatchString(b.Listen) {
			return fmt.Errorf("%w: backend %s: listen address %q: want HOST:PORT or :PORT", ErrBadDesired, b.Name, b.Listen)
		}
		// Two server blocks on one address would both be accepted by
		// NGINX, which would then route by Host header: the second
		// backend would silently get nothing.
		if other, ok := listens[b.Listen]; ok {
			return fmt.Errorf("%w: backends %s and %s both listen on %s", ErrBadDesired, other, b.Name, b.Listen)
		}
		listens[b.Listen] = b.Name
		switch b.Mode {
		case lb.ModeActive, lb.ModeAll:
		default:
			return fmt.Errorf("%w: backend %s: mode %q: want %q or %q", ErrBadDesired, b.Name, b.Mode, lb.ModeActive, lb.ModeAll)
		}
		servers := map[string]bool{}
		for _, s := range b.Servers {
			if s.Name == "" || servers[s.Name] {
				return fmt.Errorf("%w: backend %s: server name %q empty or given twice", ErrBadDesired, b.Name, s.Name)
			}
			servers[s.Name] = true
			if err := checkAddr(s.Addr); err != nil {
				return fmt.Errorf("%w: backend %s: server %s: %v", ErrBadDesired, b.Name, s.Name, err)
			}
		}
	}
	return nil
}

func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want HOST:PORT", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address %q: port must be 1 to 65535", addr)
	}
	if !hostRE.MatchString(host) {
		return fmt.Errorf("address %q: bad host", addr)
	}
	return nil
}

// nginxListen is Listen as NGINX writes it: Go's ":8080" is NGINX's
// "*:8080" (every IPv4 address).
func nginxListen(l string) string {
	if strings.HasPrefix(l, ":") {
		return "*" + l
	}
	return l
}

// probeAddr is where the driver connects to reach a listening address:
// the loopback address for a wildcard one.
func probeAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		if _, err := strconv.Atoi(listen); err == nil { // NGINX's "8080"
			return net.JoinHostPort("127.0.0.1", listen)
		}
		return listen
	}
	switch host {
	case "", "*", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// render returns the configuration for d (normalized and checked) at
// generation gen: a whole nginx.conf when managed, else the blocks that go
// inside the http block of the operator's configuration.
func render(d lb.Desired, gen int64, s settings) string {
	var w strings.Builder
	p := func(indent int, format string, args ...any) {
		w.WriteString(strings.Repeat("    ", indent))
		fmt.Fprintf(&w, format, args...)
		w.WriteByte('\n')
	}
	p(0, "# Written by tandem lb, and rewritten on every change: do not edit.")
	p(0, "%s%d rev=%d", markHeader, gen, d.Rev)
	in := 0
	if s.managed {
		p(0, "daemon off;")
		p(0, "master_process on;")
		if s.workers > 0 {
			p(0, "worker_processes %d;", s.workers)
		} else {
			p(0, "worker_processes auto;")
		}
		if s.user != "" {
			p(0, "user %s;", quote(s.user))
		}
		// Old workers keep in-flight requests after a reload at most
		// this long, so long requests cannot pile up old workers.
		p(0, "worker_shutdown_timeout %s;", dur(s.shutdownTimeout))
		p(0, "pid %s;", quote(s.dir+"/nginx.pid"))
		p(0, "error_log %s notice;", quote(s.dir+"/error.log"))
		p(0, "events {")
		p(1, "worker_connections 4096;")
		p(0, "}")
		p(0, "http {")
		in = 1
		p(in, "access_log off;")
		for _, t := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
			p(in, "%s_temp_path %s;", t, quote(s.dir+"/tmp/"+t))
		}
	}
	for _, b := range d.Backends {
		renderBackend(p, in, b, gen, s)
	}
	if s.managed {
		p(0, "}")
	}
	return w.String()
}

func renderBackend(p func(int, string, ...any), in int, b lb.Backend, gen int64, s settings) {
	meta := backendMeta{Name: b.Name, Listen: b.Listen, Health: b.Health, Mode: b.Mode, Sticky: b.Sticky, ListenTLS: b.ListenTLS}
	anyUp, backendTLS := false, false
	for _, srv := range b.Servers {
		anyUp = anyUp || srv.Up
		// One scheme per upstream (proxy_pass): https as soon as one
		// server is, so that nothing goes to a TLS server in plain text.
		backendTLS = backendTLS || srv.TLS
	}
	meta.NoneUp = !anyUp && len(b.Servers) > 0
	mj, _ := json.Marshal(meta)
	upstream := upstreamPrefix + b.Name
	p(0, "")
	p(in, "%s%s", markBackend, mj)
	if len(b.Servers) > 0 {
		p(in, "upstream %s {", upstream)
		// Stickiness by client address: NGINX open source has no cookie
		// stickiness. hash cannot have backup servers, and in ModeActive
		// only one server gets requests anyway, so it is ModeAll only.
		if b.Sticky && b.Mode == lb.ModeAll {
			p(in+1, "hash $remote_addr consistent;")
		}
		for _, srv := range b.Servers {
			flag := ""
			switch {
			case srv.Up || meta.NoneUp:
			case b.Mode == lb.ModeActive:
				// A backup gets requests only when every primary failed
				// (refused, timed out, 502, 503): the safety net if the
				// active dies before tandem lb moves traffic.
				flag = " backup"
			default:
				flag = " down"
			}
			sj, _ := json.Marshal(serverMeta{Name: srv.Name, TLS: srv.TLS})
			p(in+1, "server %s max_fails=%d fail_timeout=%s%s; %s%s", srv.Addr, s.maxFails, wholeSecs(s.failTimeout), flag, markServer, sj)
		}
		// After the balancing method, as NGINX requires.
		p(in+1, "keepalive %d;", s.keepalive)
		p(in, "}")
	}
	p(in, "server {")
	if b.ListenTLS {
		p(in+1, "listen %s default_server ssl;", nginxListen(b.Listen))
		p(in+1, "ssl_certificate %s;", quote(s.tls.Cert))
		p(in+1, "ssl_certificate_key %s;", quote(s.tls.Key))
		p(in+1, "ssl_protocols %s;", lb.MinTLSVersion)
	} else {
		p(in+1, "listen %s default_server;", nginxListen(b.Listen))
	}
	p(in+1, "location = %s {", GenerationPath)
	p(in+2, "default_type text/plain;")
	p(in+2, `return 200 "%d\n";`, gen)
	p(in+1, "}")
	if len(b.Servers) == 0 {
		p(in+1, "location / {")
		p(in+2, "return 503;")
		p(in+1, "}")
		p(in, "}")
		return
	}
	// Server level, so that the named location inherits them too.
	p(in+1, "proxy_http_version 1.1;")
	p(in+1, `proxy_set_header Connection "";`)
	p(in+1, "proxy_set_header Host $http_host;")
	p(in+1, "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")
	p(in+1, "proxy_set_header X-Forwarded-Proto $scheme;")
	p(in+1, "proxy_connect_timeout %s;", dur(s.connectTimeout))
	// No non_idempotent: a POST that may have reached a server is never
	// sent to another one.
	p(in+1, "proxy_next_upstream error timeout http_502 http_503;")
	scheme := "http"
	if backendTLS {
		scheme = "https"
		// Server level: the named location's proxy_pass to a Location
		// inherits them. TLS 1.3, the certificate verified against the
		// CA and checked for ServerName (one name for every server:
		// NGINX open source cannot vary it per server); no SNI.
		p(in+1, "proxy_ssl_protocols %s;", lb.MinTLSVersion)
		p(in+1, "proxy_ssl_trusted_certificate %s;", quote(s.tls.BackendCA))
		p(in+1, "proxy_ssl_verify on;")
		p(in+1, "proxy_ssl_verify_depth 2;")
		p(in+1, "proxy_ssl_name %s;", quote(serverName(s.tls)))
		p(in+1, "proxy_ssl_server_name off;")
		p(in+1, "proxy_ssl_session_reuse on;")
		if s.tls.BackendCert != "" {
			p(in+1, "proxy_ssl_certificate %s;", quote(s.tls.BackendCert))
			p(in+1, "proxy_ssl_certificate_key %s;", quote(s.tls.BackendKey))
		}
	}
	p(in+1, "location / {")
	p(in+2, "proxy_pass %s://%s;", scheme, upstream)
	p(in+2, "proxy_intercept_errors on;")
	p(in+2, "error_page 307 = %s%s;", followPrefix, b.Name)
	p(in+1, "}")
	// One hop: the named location does not intercept, so a second 307
	// goes to the client. Only a Location at one of the backend's own
	// servers is followed; any other goes to the client as a 307.
	p(in+1, "location %s%s {", followPrefix, b.Name)
	p(in+2, "set %s $upstream_http_location;", locationVar)
	p(in+2, `if (%s !~ "%s") {`, locationVar, followRE(scheme, b.Servers))
	p(in+3, "return 307 %s;", locationVar)
	p(in+2, "}")
	p(in+2, "proxy_pass %s;", locationVar)
	p(in+1, "}")
	p(in, "}")
}

// followRE matches a Location at one of servers: SCHEME://ADDR followed
// by the end, a path or a query. The scheme is the backend's: a standby
// of a TLS cluster points at https://, and a Location of the other scheme
// goes to the client.
func followRE(scheme string, servers []lb.Server) string {
	alts := make([]string, len(servers))
	for i, s := range servers {
		alts[i] = regexp.QuoteMeta(s.Addr)
	}
	return `^` + scheme + `://(` + strings.Join(alts, "|") + `)(/|\?|$)`
}

// DefaultServerName is the name NGINX checks in servers' certificates
// when TLS.ServerName is empty: every certificate `tandem tls cert create`
// makes for a server carries it. NGINX open source checks one name for all
// the servers of an upstream (not each one's address), and only a
// certificate's DNS names and IP addresses (its common name only when it
// has no DNS name, and tandem's all have localhost), so it cannot tell a
// server's certificate from an agent's of the same cluster:
// give the servers a DNS name in common (--dns) and check that, where it
// matters.
const DefaultServerName = "localhost"

func serverName(t lb.TLS) string {
	if t.ServerName != "" {
		return t.ServerName
	}
	return DefaultServerName
}

// quote makes s one NGINX token.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// dur formats d as an NGINX time.
// wholeSecs is d rounded up to whole seconds, at least 1: fail_timeout
// takes seconds only (nginx -t refuses "400ms" there).
func wholeSecs(d time.Duration) string {
	return fmt.Sprintf("%ds", max(1, (d+time.Second-1)/time.Second))
}

func dur(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

// parsed is a rendered file read back.
type parsed struct {
	gen int64
	d   lb.Desired
}

// parse reads a file render wrote: the generation, the backends from their
// comments, and each server's address and whether it gets new requests
// from its server directive (not backup, not down, and not a stand-in
// for a backend with no server up).
func parse(text string) (parsed, error) {
	var out parsed
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	var cur *lb.Backend
	noneUp := false
	line := 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, markHeader):
			f := strings.Fields(strings.TrimPrefix(l, markHeader))
			if len(f) == 0 {
				return out, fmt.Errorf("line %d: bad header", line)
			}
			g, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return out, fmt.Errorf("line %d: bad generation: %v", line, err)
			}
			out.gen = g
			if len(f) > 1 {
				out.d.Rev, _ = strconv.ParseInt(strings.TrimPrefix(f[1], "rev="), 10, 64)
			}
		case strings.HasPrefix(l, markBackend):
			var m backendMeta
			if err := json.Unmarshal([]byte(strings.TrimPrefix(l, markBackend)), &m); err != nil {
				return out, fmt.Errorf("line %d: bad backend comment: %v", line, err)
			}
			out.d.Backends = append(out.d.Backends, lb.Backend{Name: m.Name, Listen: m.Listen, Health: m.Health, Mode: m.Mode, Sticky: m.Sticky, ListenTLS: m.ListenTLS})
			cur = &out.d.Backends[len(out.d.Backends)-1]
			noneUp = m.NoneUp
		case strings.HasPrefix(l, "server ") && strings.Contains(l, markServer):
			if cur == nil {
				return out, fmt.Errorf("line %d: server before any backend", line)
			}
			directive, comment, _ := strings.Cut(l, markServer)
			var m serverMeta
			if err := json.Unmarshal([]byte(comment), &m); err != nil {
				return out, fmt.Errorf("line %d: bad server comment: %v", line, err)
			}
			f := strings.Fields(strings.TrimSuffix(strings.TrimSpace(directive), ";"))
			if len(f) < 2 {
				return out, fmt.Errorf("line %d: bad server directive", line)
			}
			up := !noneUp
			for _, param := range f[2:] {
				if param == "backup" || param == "down" {
					up = false
				}
			}
			cur.Servers = append(cur.Servers, lb.Server{Name: m.Name, Addr: f[1], Up: up, TLS: m.TLS})
		}
	}
	if err := sc.Err(); err != nil {
		return out, err
	}
	if out.gen == 0 {
		return out, errors.New("no generation header: not written by tandem lb")
	}
	return out, nil
}
