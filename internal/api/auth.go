package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/pki"
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
// it read, and the bootstrap is open (it works once). The agents' sync is
// marked agent: it will need an agent certificate (mutual TLS, issue 10
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
}

// need returns the capability of a route's method on this server.
func (a *API) need(pattern, method string) acl.Capability {
	if pattern == "/metrics" && a.sec.ProtectMetrics {
		return acl.CapRead
	}
	return Capabilities[pattern][method]
}

// needsToken reports whether a capability needs a token.
func needsToken(c acl.Capability) bool { return c != acl.CapOpen && c != acl.CapAgent }

// reqInfo is what the guard learns of a request, for the handlers (the
// caller's token) and the audit log (the target the handler acted on).
type reqInfo struct {
	token  *acl.Token
	cert   *pki.Identity // the client certificate's, with TLS on
	target string
	denied string // why the handler refused what the route alone allowed
}

type reqInfoKey struct{}

func info(r *http.Request) *reqInfo {
	if ri, ok := r.Context().Value(reqInfoKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{}
}

// setTarget records what the request acted on, for the audit log.
func setTarget(r *http.Request, target string) { info(r).target = target }

// guard authenticates and authorizes a request to pattern (when enforcing)
// before h serves it, and writes the audit log: a line for every denial,
// and for every mutating request once it is answered. It runs before any
// redirect, so a standby refuses a request the caller may not make itself,
// and the server a redirect leads to checks the token again.
func (a *API) guard(pattern string, need acl.Capability, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ri := &reqInfo{target: firstNonEmpty(r.PathValue("id"), r.PathValue("accessor"))}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri))
		// Certificates first (tls.go): a role that may not call the route
		// is refused whatever token it brings.
		cert, err := a.peer(r)
		if err == nil {
			ri.cert = cert
			err = a.checkRole(r, need, cert)
		}
		if err != nil {
			rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
			a.writeError(rec, r, err)
			a.audit(r, pattern, need, ri, acl.Deny, rec.code, tandem.ErrorMessage(err))
			return
		}
		if a.sec.Enforce && needsToken(need) {
			tok, err := a.authenticate(r)
			if err == nil && !tok.Policy.Allows(need) {
				err = tandem.Errorf(tandem.EFORBIDDEN, "%s lacks %s: %s %s needs a token whose policy is %s or stronger",
					tok.Describe(), need, r.Method, r.URL.Path, need)
			}
			if tok.Accessor != "" {
				ri.token = &tok
			}
			if err != nil {
				rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
				if tandem.ErrorCode(err) == tandem.EUNAUTHENTICATED {
					rec.Header().Set("WWW-Authenticate", `Bearer realm="tandem"`)
				}
				a.writeError(rec, r, err)
				a.audit(r, pattern, need, ri, acl.Deny, rec.code, tandem.ErrorMessage(err))
				return
			}
		}
		if !mutating(r.Method) || need == acl.CapAgent || a.sec.Audit == nil {
			// The agents' sync is their heartbeat, several times a second
			// per agent: only its denials are audited (guard, sync).
			h(w, r)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		if ri.denied != "" {
			a.audit(r, pattern, need, ri, acl.Deny, rec.code, ri.denied)
			return
		}
		a.audit(r, pattern, need, ri, acl.Allow, rec.code, "")
	}
}

// mayRunAs refuses, with ACLs enforced, a job that names the user its
// attempts run as unless the caller's token is operator or stronger: an
// agent decides which users it allows at all, and only operators choose
// among them.
func (a *API) mayRunAs(r *http.Request, spec tandem.JobSpec) error {
	if !a.sec.Enforce || spec.User == "" {
		return nil
	}
	ri := info(r)
	if ri.token != nil && ri.token.Policy.Allows(acl.CapOperator) {
		return nil
	}
	who := "this request"
	if ri.token != nil {
		who = ri.token.Describe()
	}
	err := tandem.Errorf(tandem.EFORBIDDEN, "%s lacks %s: a job that names its user (%q) needs a token whose policy is %s or stronger",
		who, acl.CapOperator, spec.User, acl.CapOperator)
	ri.denied = tandem.ErrorMessage(err)
	return err
}

func mutating(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// authenticate returns the token of r's "Authorization: Bearer" header. Its
// errors are *tandem.Error values whose messages never include the secret.
// A token that expired is returned with the error, so the audit log names it.
func (a *API) authenticate(r *http.Request) (acl.Token, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return acl.Token{}, tandem.Errorf(tandem.EUNAUTHENTICATED,
			"server %s requires a token: send \"Authorization: Bearer <token>\" (the CLI takes --token or $TANDEM_TOKEN)", a.id)
	}
	scheme, secret, ok := strings.Cut(h, " ")
	secret = strings.TrimSpace(secret)
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
		return acl.Token{}, tandem.Errorf(tandem.EUNAUTHENTICATED, "the Authorization header must be \"Bearer <token>\"")
	}
	if a.sec.ACL == nil {
		return acl.Token{}, tandem.Errorf(tandem.EUNAVAILABLE, "server %s cannot check tokens", a.id)
	}
	tok, err := a.sec.ACL.Authenticate(r.Context(), secret)
	switch {
	case err == nil:
		return tok, nil
	case errors.Is(err, acl.ErrNoToken):
		return acl.Token{}, tandem.Errorf(tandem.EUNAUTHENTICATED, "unknown or revoked token")
	case errors.Is(err, acl.ErrExpired):
		return tok, tandem.Errorf(tandem.EUNAUTHENTICATED, "%s", strings.TrimSuffix(err.Error(), ": "+acl.ErrExpired.Error()))
	case tandem.ErrorCode(err) != tandem.EINTERNAL:
		return acl.Token{}, err
	default:
		return acl.Token{}, tandem.Errorf(tandem.EUNAVAILABLE, "server %s cannot check the token right now (etcd: %v); retry", a.id, err)
	}
}

// audit writes one line of the audit log.
func (a *API) audit(r *http.Request, pattern string, need acl.Capability, ri *reqInfo, decision string, status int, reason string) {
	if a.sec.Audit == nil {
		return
	}
	st := a.srv.Status()
	e := acl.AuditEntry{
		Time: a.sec.Now().UTC(), Server: a.id, HAState: string(st.State), Epoch: st.Epoch,
		Remote: r.RemoteAddr, Method: r.Method, Route: pattern, Path: r.URL.Path, Target: ri.target, Need: string(need),
		Decision: decision, Status: status, Reason: reason,
	}
	if ri.token != nil {
		e.Identity.TokenName, e.Identity.TokenPolicy, e.Identity.TokenAccessor = ri.token.Name, string(ri.token.Policy), ri.token.Accessor
	}
	if ri.cert != nil {
		e.Identity.CertRole, e.Identity.CertID = string(ri.cert.Role), ri.cert.ID
	}
	a.sec.Audit.Write(e)
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
	if t := info(r).token; t != nil {
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
	t := info(r).token
	if t == nil {
		a.writeError(w, r, tandem.Errorf(tandem.EUNAUTHENTICATED, "no token was sent"))
		return
	}
	a.writeJSON(w, http.StatusOK, t)
}
