package supervise

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandemhq/tandem/internal/acl"
)

// Security secures a supervisor's HTTP API as the servers' API is secured
// (docs/SUPERVISE.md, "Security"; docs/SECURITY.md): TLS, tokens with
// policies, and the audit log. The zero value is plain http, open, with no
// audit log, as before.
type Security struct {
	// TLS, when set, makes the API serve TLS with it (pki.ServerConfig of a
	// server certificate of the cluster; client certificates verified if
	// given, not required, since tools bring tokens instead) and turns on
	// the certificate checks of acl.Guard: an agent certificate is refused
	// on every route but /healthz and an open /metrics. URL must then be
	// https.
	TLS *tls.Config
	// PeerTLS is how this supervisor probes the others' /healthz over
	// https (pki.ClientConfig, server role expected). Nil: the system's
	// roots, which will not know the cluster's CA.
	PeerTLS *tls.Config
	// Enforce requires a token on every route but /healthz and /metrics:
	// read for the GET routes, operator for move, ban and clear (--acl).
	// Tokens are the cluster's, read from etcd (acl.Store).
	Enforce bool
	// ProtectMetrics makes /metrics need a read token (--acl-metrics); it
	// needs Enforce.
	ProtectMetrics bool
	// Audit, when set, gets one JSON line per mutating request and per
	// denial (--audit-log).
	Audit *acl.AuditLog
	// Now is the audit log's and the token expiry's clock (time.Now when
	// nil).
	Now func() time.Time
}

// validate checks s against the advertise URL u.
func (s Security) validate(u *url.URL) error {
	if s.ProtectMetrics && !s.Enforce {
		return errors.New("protecting /metrics with a token (--acl-metrics) needs tokens enforced (--acl)")
	}
	if s.TLS != nil && u.Scheme != "https" {
		return errors.New("advertise URL " + u.String() + ": with TLS the API serves https only")
	}
	return nil
}

// Capabilities maps every route and method of a supervisor's API to the
// capability it needs; the API refuses to start with a route missing from
// it, so it is the complete list. Reads need read, moves, bans and clears
// operator (the policy that fails servers over, docs/SECURITY.md). /healthz
// stays open for the other supervisors' liveness probes and load
// balancers, /metrics is open unless ProtectMetrics makes it read.
var Capabilities = map[string]map[string]acl.Capability{
	"/healthz":                           {http.MethodGet: acl.CapOpen},
	"/metrics":                           {http.MethodGet: acl.CapOpen},
	"/v1/supervise/services":             {http.MethodGet: acl.CapRead},
	"/v1/supervise/history":              {http.MethodGet: acl.CapRead},
	"/v1/supervise/nodes":                {http.MethodGet: acl.CapRead},
	"/v1/supervise/services/{svc}/move":  {http.MethodPost: acl.CapOperator},
	"/v1/supervise/services/{svc}/ban":   {http.MethodPost: acl.CapOperator},
	"/v1/supervise/services/{svc}/clear": {http.MethodPost: acl.CapOperator},
}

// need returns the capability of a route's method on this supervisor.
func (s *Supervisor) need(route, method string) acl.Capability {
	if route == "/metrics" && s.cfg.Security.ProtectMetrics {
		return acl.CapRead
	}
	c, ok := Capabilities[route][method]
	if !ok {
		panic("supervise: route " + method + " " + route + " has no entry in Capabilities")
	}
	return c
}

// guard returns the guard of the API's routes.
func (s *Supervisor) guard() *acl.Guard {
	sec := s.cfg.Security
	g := &acl.Guard{
		Name:      "supervisor " + s.cfg.Node,
		TokenHint: ` (tokens are the cluster's: tandem acl token create)`,
		Enforce:   sec.Enforce,
		Audit:     sec.Audit,
		Now:       sec.Now,
		Stamp:     func(e *acl.AuditEntry) { e.Server = s.cfg.Node },
		Target: func(r *http.Request) string {
			if svc := r.PathValue("svc"); svc != "" {
				return "service " + svc
			}
			return ""
		},
		WriteError: func(w http.ResponseWriter, _ *http.Request, err error) { reply(w, nil, err) },
	}
	if sec.Enforce {
		g.Tokens = acl.NewStore(s.cli, s.keys).Authenticator(sec.Now)
	}
	if sec.TLS != nil {
		g.Cluster = s.cfg.Cluster
	}
	return g
}

// Registry is the supervisor's Prometheus registry, served on /metrics;
// cmd/ adds the certificates' expiry to it.
func (s *Supervisor) Registry() *prometheus.Registry { return s.met.reg }
