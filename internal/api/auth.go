package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
)

// ACL is what the API needs to authenticate callers and manage tokens;
// *server.Server implements it.
type ACL interface {
	// Authenticate returns the token whose secret is secret: an error
	// matching acl.ErrNoToken for an unknown or deleted one, wrapping
	// acl.ErrExpired for an expired one, any other for etcd's failures.
	Authenticate(ctx context.Context, secret string) (acl.Token, error)
	// Tokens lists every token.
	Tokens(ctx context.Context) ([]acl.Token, error)
	// CreateToken, DeleteToken and Bootstrap write tokens under the fence
	// of shard 0's term; a server that does not hold it answers
	// tandem.ErrNotActive, a fenced write tandem.ErrFenced.
	CreateToken(ctx context.Context, req acl.CreateRequest, by string) (acl.NewToken, error)
	DeleteToken(ctx context.Context, accessor string) (acl.Token, error)
	Bootstrap(ctx context.Context) (acl.NewToken, error)
	// ACLOwner returns the server that writes tokens: the owner of shard 0.
	ACLOwner() (tandem.ServerRef, bool)
}

// Security configures tokens and the audit log (docs/SECURITY.md).
type Security struct {
	// ACL authenticates callers and serves the token routes; nil means the
	// token routes answer that ACLs are off.
	ACL ACL
	// Enforce makes every route whose capability is not open or agent
	// require a token whose policy allows it (tandem server --acl). Off,
	// nobody is authenticated and the token routes answer that ACLs are off.
	Enforce bool
	// ProtectMetrics makes /metrics need a read token (--acl-metrics).
	ProtectMetrics bool
	// Audit, when set, gets a line for every mutating request and every
	// denial (--audit-log).
	Audit *acl.AuditLog
	// Now is the clock the audit log uses (time.Now when nil).
	Now func() time.Time
}

// WithSecurity configures tokens and the audit log.
func WithSecurity(s Security) Option { return func(a *API) { a.sec = s } }

// Capabilities maps every route and method the API serves to the capability
// it needs. The API refuses to start with a route missing from it, so the
// map is the complete list. Reads need read; submissions and kills submit;
// HA changes operator; token management management. /isActive and /healthz
// stay open for load balancers, /metrics is open unless --acl-metrics makes
// it read, and the bootstrap is open (it works once). /v1/ha/watch, the
// servers' crash-detection stream, is open too: it says no more than
// /isActive (that the process is alive), and a server's peers must reach it
// with no token (with TLS on, a certificate of the cluster is still needed;
// the servers present theirs). The agents' sync is marked agent: it will need an agent certificate (mutual TLS, issue 10
// point 1), not a token: with TLS on (WithTLS) an agent certificate whose ID
// is the syncing agent's, and open without TLS.
var Capabilities = map[string]map[string]acl.Capability{
	"/isActive":                 {http.MethodGet: acl.CapOpen},
	"/healthz":                  {http.MethodGet: acl.CapOpen},
	"/metrics":                  {http.MethodGet: acl.CapOpen},
	"/about":                    {http.MethodGet: acl.CapRead},
	"/v1/ha/state":              {http.MethodGet: acl.CapRead},
	"/v1/ha/history":            {http.MethodGet: acl.CapRead},
	"/v1/ha/transition":         {http.MethodPost: acl.CapOperator},
	"/v1/ha/failover":           {http.MethodPost: acl.CapOperator},
	"/v1/ha/drain":              {http.MethodPost: acl.CapOperator},
	"/v1/ha/watch":              {http.MethodGet: acl.CapOpen},
	"/v1/cluster/servers":       {http.MethodGet: acl.CapRead},
	"/v1/cluster/shards":        {http.MethodGet: acl.CapRead},
	"/v1/cluster/agents":        {http.MethodGet: acl.CapRead},
	"/v1/agent/sync":            {http.MethodPost: acl.CapAgent},
	"/v1/jobs":                  {http.MethodGet: acl.CapRead, http.MethodPost: acl.CapSubmit},
	"/v1/jobs/{id}":             {http.MethodGet: acl.CapRead},
	"/v1/jobs/{id}/kill":        {http.MethodPost: acl.CapSubmit},
	"/v1/jobs/{id}/logs":        {http.MethodGet: acl.CapRead},
	"/v1/acl/bootstrap":         {http.MethodPost: acl.CapOpen},
	"/v1/acl/tokens":            {http.MethodGet: acl.CapManagement, http.MethodPost: acl.CapManagement},
	"/v1/acl/tokens/{accessor}": {http.MethodDelete: acl.CapManagement},
	"/v1/acl/token/self":        {http.MethodGet: acl.CapRead},
	// Schedules (schedules.go): a schedule starts jobs, so making, changing
	// and running one needs what submitting a job needs.
	"/v1/schedules":               {http.MethodGet: acl.CapRead, http.MethodPost: acl.CapSubmit},
	"/v1/schedules/{id}":          {http.MethodGet: acl.CapRead, http.MethodPatch: acl.CapSubmit, http.MethodDelete: acl.CapSubmit},
	"/v1/schedules/{id}/pause":    {http.MethodPost: acl.CapSubmit},
	"/v1/schedules/{id}/resume":   {http.MethodPost: acl.CapSubmit},
	"/v1/schedules/{id}/trigger":  {http.MethodPost: acl.CapSubmit},
	"/v1/schedules/{id}/backfill": {http.MethodPost: acl.CapSubmit},
	"/v1/schedules/{id}/runs":     {http.MethodGet: acl.CapRead},
	"/v1/schedules/{id}/next":     {http.MethodGet: acl.CapRead},
	// Workflows (workflows.go): a run starts jobs, so running, cancelling
	// and retrying one needs what submitting a job needs.
	"/v1/workflows":             {http.MethodGet: acl.CapRead, http.MethodPost: acl.CapSubmit},
	"/v1/workflows/{id}":        {http.MethodGet: acl.CapRead},
	"/v1/workflows/{id}/cancel": {http.MethodPost: acl.CapSubmit},
	"/v1/workflows/{id}/retry":  {http.MethodPost: acl.CapSubmit},
}

// need returns the capability of a route's method on this server.
func (a *API) need(pattern, method string) acl.Capability {
	if pattern == "/metrics" && a.sec.ProtectMetrics {
		return acl.CapRead
	}
	return Capabilities[pattern][method]
}

// newGuard returns the guard of the API's routes (acl.Guard): the
// certificate checks with TLS on, the tokens with Enforce, and the audit log,
// whose lines name this server and its HA state.
func (a *API) newGuard() *acl.Guard {
	g := &acl.Guard{
		Name:      "server " + a.id,
		TokenHint: acl.ServerTokenHint,
		Enforce:   a.sec.Enforce,
		Cluster:   a.tls.Cluster,
		Audit:     a.sec.Audit,
		Now:       a.sec.Now,
		Stamp: func(e *acl.AuditEntry) {
			st := a.srv.Status()
			e.Server, e.HAState, e.Epoch = a.id, string(st.State), st.Epoch
		},
		Target:     func(r *http.Request) string { return cmp.Or(r.PathValue("id"), r.PathValue("accessor")) },
		WriteError: a.writeError,
	}
	if a.sec.ACL != nil {
		g.Tokens = a.sec.ACL
	}
	return g
}

// setTarget records what the request acted on, for the audit log.
func setTarget(r *http.Request, target string) { acl.CallerOf(r).Target = target }

// mayRunAs refuses, with ACLs enforced, a job that names the user its
// attempts run as unless the caller's token is operator or stronger: an
// agent decides which users it allows at all, and only operators choose
// among them.
func (a *API) mayRunAs(r *http.Request, spec tandem.JobSpec) error {
	if spec.User == "" {
		return nil
	}
	return a.guard.Require(r, acl.CapOperator, fmt.Sprintf("a job that names its user (%q)", spec.User))
}

// aclOn answers, and returns false, when this server does not serve tokens.
func (a *API) aclOn(w http.ResponseWriter, r *http.Request) bool {
	if a.sec.ACL == nil || !a.sec.Enforce {
		a.writeError(w, r, tandem.Errorf(tandem.ECONFLICT, "ACLs are off on server %s: start the servers with --acl to use tokens", a.id))
		return false
	}
	return true
}

// aclReader serves a token read on any server: it reads etcd directly.
func (a *API) aclReader(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.aclOn(w, r) {
			h(w, r)
		}
	}
}

// aclWriter serves a token write on the owner of shard 0, to which any other
// server sends the client (307, like a standby for jobs).
func (a *API) aclWriter(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.aclOn(w, r) {
			return
		}
		to, ok := a.sec.ACL.ACLOwner()
		switch {
		case ok && to.ID == a.id:
			h(w, r)
		case ok:
			a.redirect(w, r, to, fmt.Sprintf("server %s does not write tokens; %s, the owner of shard 0, does", a.id, to.ID))
		default:
			a.writeError(w, r, tandem.Errorf(tandem.ENOACTIVE, "no server owns shard 0 right now, and only its owner writes tokens; retry shortly"))
		}
	}
}

func (a *API) bootstrap(w http.ResponseWriter, r *http.Request) {
	nt, err := a.sec.ACL.Bootstrap(r.Context())
	if err != nil {
		if errors.Is(err, acl.ErrBootstrapped) {
			err = tandem.Errorf(tandem.ECONFLICT, "the ACL bootstrap has already been done: ask a holder of a management token for a token (docs/SECURITY.md tells how to reset a lost bootstrap)")
		}
		a.writeError(w, r, err)
		return
	}
	setTarget(r, "token "+nt.Name+" "+nt.Accessor)
	a.writeJSON(w, http.StatusOK, nt)
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := a.sec.ACL.Tokens(r.Context())
	if err != nil {
		a.writeError(w, r, tandem.Errorf(tandem.EUNAVAILABLE, "list tokens: %v", err))
		return
	}
	a.writeJSON(w, http.StatusOK, struct {
		Tokens []acl.Token `json:"tokens"`
	}{Tokens: nonNil(toks)})
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request) {
	var req acl.CreateRequest
	if !a.decode(w, r, &req) {
		return
	}
	setTarget(r, "token "+req.Name)
	by := ""
	if t := acl.CallerOf(r).Token; t != nil {
		by = t.Accessor
	}
	nt, err := a.sec.ACL.CreateToken(r.Context(), req, by)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	setTarget(r, "token "+nt.Name+" "+nt.Accessor)
	a.writeJSON(w, http.StatusCreated, nt)
}

func (a *API) deleteToken(w http.ResponseWriter, r *http.Request) {
	t, err := a.sec.ACL.DeleteToken(r.Context(), r.PathValue("accessor"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	setTarget(r, "token "+t.Name+" "+t.Accessor)
	a.writeJSON(w, http.StatusOK, t)
}

func (a *API) tokenSelf(w http.ResponseWriter, r *http.Request) {
	t := acl.CallerOf(r).Token
	if t == nil {
		a.writeError(w, r, tandem.Errorf(tandem.EUNAUTHENTICATED, "no token was sent"))
		return
	}
	a.writeJSON(w, http.StatusOK, t)
}
