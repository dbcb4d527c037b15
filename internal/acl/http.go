package acl

import (
	"context"
	"encoding/json"
	"errors"
	stdlog "log"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/pki"
)

// This file is the guard of an HTTP API: the rules of docs/SECURITY.md
// ("Roles on routes", "Tokens and policies", the audit log) as one piece
// every one of tandem's HTTP APIs puts in front of its routes: the servers'
// (internal/api: Name "server <id>", TokenHint ServerTokenHint, Target from
// the path values "id" and "accessor", Stamp from the server's HA status)
// and the supervisors' (internal/supervise/http.go).

// Authenticator checks a bearer token's secret. Authenticate returns an
// error matching ErrNoToken for an unknown or deleted token, wrapping
// ErrExpired (with the token) for an expired one, and any other error for a
// failure to read the tokens (etcd out of reach). *server.Server implements
// it, and Store.Authenticator adapts a Store.
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (Token, error)
}

// Authenticator returns s as an Authenticator that judges expiry at now()
// (time.Now when nil).
func (s *Store) Authenticator(now func() time.Time) Authenticator {
	if now == nil {
		now = time.Now
	}
	return storeAuth{s: s, now: now}
}

type storeAuth struct {
	s   *Store
	now func() time.Time
}

func (a storeAuth) Authenticate(ctx context.Context, secret string) (Token, error) {
	return a.s.Authenticate(ctx, secret, a.now())
}

// ServerTokenHint is the servers' TokenHint: how the CLI sends a token.
const ServerTokenHint = " (the CLI takes --token or $TANDEM_TOKEN)"

// Guard authenticates and authorizes the requests of an HTTP API, route by
// route, and writes its audit log. Its zero value guards nothing and audits
// nothing; set the fields before the first request and never after.
//
// With Cluster set (the API serves TLS), client certificates are checked
// first, before any token: a certificate of another cluster or that the
// handshake did not verify is refused (403); a CapAgent route needs an
// agent certificate (401 without one, 403 with another role); every other
// route that is not open refuses an agent certificate (403), so a stolen
// agent certificate is worth nothing beyond its own sync. A server or cli
// certificate authenticates the connection only.
//
// With Enforce, every route that needs CapRead or more needs an
// "Authorization: Bearer" token whose policy allows it: none, a malformed
// header, an unknown, deleted or expired token is 401 (with
// WWW-Authenticate), a weaker policy 403 naming what is missing ("token
// alice (read) lacks operator: ..."). Certificates never stand in for
// tokens: certificates say who is at the other end, tokens carry policy.
//
// The audit log gets one line for every denial, the guard's and its
// handlers' (Caller.Denied, Require), and one for every mutating request
// (not GET, HEAD or OPTIONS) once it is answered, except the allowed
// requests of CapAgent routes (the agents' heartbeat); with HandshakeLog as
// the server's ErrorLog, one for every refused TLS handshake too. Secrets
// never reach it: only a token's name, policy and accessor.
type Guard struct {
	// Name names the process in messages: "server rm1", "supervisor n1".
	Name string
	// TokenHint ends the answer that asks for a token, saying how to send
	// one (ServerTokenHint for the servers).
	TokenHint string
	// Tokens checks tokens; nil with Enforce answers that the process
	// cannot check tokens (503).
	Tokens Authenticator
	// Enforce requires tokens (--acl).
	Enforce bool
	// Cluster, not empty, turns the certificate checks on: the cluster
	// whose certificates are accepted.
	Cluster string
	// Audit gets the audit log's lines; nil writes none.
	Audit *AuditLog
	// Now is the audit log's clock (time.Now when nil).
	Now func() time.Time
	// Stamp, when set, fills an entry's fields about the process (Server,
	// HAState, Epoch) before it is written.
	Stamp func(*AuditEntry)
	// Target, when set, returns what a request acts on, for the audit log,
	// before the handler runs (which may refine it: Caller.Target).
	Target func(*http.Request) string
	// WriteError answers a refused request; nil writes the error envelope
	// (tandem.ErrorBody) with the status of the error's code.
	WriteError func(w http.ResponseWriter, r *http.Request, err error)
}

// Caller is what the guard learned of a request, for its handler: the
// caller's token and certificate, and, for the audit log, what the request
// acted on and why the handler refused what the route alone allowed.
type Caller struct {
	// Token is the caller's token, nil without one (or with Enforce off).
	Token *Token
	// Cert is the client certificate's identity, nil without one (or with
	// the certificate checks off).
	Cert *pki.Identity
	// Target is what the request acts on, as the audit log shows it.
	Target string
	// Denied, set by a handler that refuses the request, makes its audit
	// line a denial with this reason, whatever the route and method.
	Denied string
}

type callerKey struct{}

// CallerOf returns the guard's Caller of r: an empty one for a request no
// Guard saw. Handlers may set its Target and Denied; it belongs to the
// request, so no lock guards it.
func CallerOf(r *http.Request) *Caller {
	if c, ok := r.Context().Value(callerKey{}).(*Caller); ok {
		return c
	}
	return &Caller{}
}

// NeedsToken reports whether a route needing c needs a token (with
// Enforce): every capability but CapOpen and CapAgent.
func NeedsToken(c Capability) bool { return c != CapOpen && c != CapAgent }

// Mutating reports whether method changes something, so that its every
// request is audited.
func Mutating(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// Handler returns h guarded as a route whose pattern is route (the audit
// log's "route") and which needs need.
func (g *Guard) Handler(route string, need Capability, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &Caller{}
		if g.Target != nil {
			c.Target = g.Target(r)
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
		err := g.checkCert(r, need, c)
		if err == nil {
			err = g.checkToken(r, need, c)
			if tandem.ErrorCode(err) == tandem.EUNAUTHENTICATED {
				w.Header().Set("WWW-Authenticate", `Bearer realm="tandem"`)
			}
		}
		if err != nil {
			rec := NewStatusRecorder(w)
			g.writeError(rec, r, err)
			g.audit(r, route, need, c, Deny, rec.Status(), tandem.ErrorMessage(err))
			return
		}
		if g.Audit == nil {
			h.ServeHTTP(w, r)
			return
		}
		rec := NewStatusRecorder(w)
		h.ServeHTTP(rec, r)
		switch {
		case c.Denied != "":
			g.audit(r, route, need, c, Deny, rec.Status(), c.Denied)
		case Mutating(r.Method) && need != CapAgent:
			// The agents' sync is their heartbeat, several times a second
			// per agent: only its denials are audited.
			g.audit(r, route, need, c, Allow, rec.Status(), "")
		}
	})
}

// Require refuses r, with Enforce, unless its caller's token allows need:
// for what a handler learns only from the request's body, which what names
// ("a job that names its user"). The refusal, an EFORBIDDEN error, is also
// the reason of the request's audit line (Caller.Denied); the handler
// answers it. Without Enforce it allows everything.
func (g *Guard) Require(r *http.Request, need Capability, what string) error {
	if !g.Enforce {
		return nil
	}
	c := CallerOf(r)
	if c.Token != nil && c.Token.Policy.Allows(need) {
		return nil
	}
	who := "this request"
	if c.Token != nil {
		who = c.Token.Describe()
	}
	err := lacks(who, need, what)
	c.Denied = tandem.ErrorMessage(err)
	return err
}

// lacks is the refusal of who, whose token's policy is weaker than need,
// for what.
func lacks(who string, need Capability, what string) error {
	return tandem.Errorf(tandem.EFORBIDDEN, "%s lacks %s: %s needs a token whose policy is %s or stronger", who, need, what, need)
}

// checkCert applies the certificate rules (with Cluster set), recording
// the certificate's identity in c. A role that may not call the route is
// refused whatever token it brings.
func (g *Guard) checkCert(r *http.Request, need Capability, c *Caller) error {
	if g.Cluster == "" {
		return nil
	}
	id, err := pki.FromRequest(r, g.Cluster)
	if err != nil {
		return tandem.Errorf(tandem.EFORBIDDEN, "client certificate refused: %v", err)
	}
	c.Cert = id
	return g.checkRole(r, need, id)
}

// checkToken applies the token rules (with Enforce), recording the token in
// c, even an expired one, so the audit log names it.
func (g *Guard) checkToken(r *http.Request, need Capability, c *Caller) error {
	if !g.Enforce || !NeedsToken(need) {
		return nil
	}
	tok, err := g.authenticate(r)
	if tok.Accessor != "" {
		c.Token = &tok
	}
	if err == nil && !tok.Policy.Allows(need) {
		err = lacks(tok.Describe(), need, r.Method+" "+r.URL.Path)
	}
	return err
}

// checkRole applies the role rules of the Guard's doc to a request needing
// need, before any token is looked at.
func (g *Guard) checkRole(r *http.Request, need Capability, id *pki.Identity) error {
	if need == CapOpen {
		return nil
	}
	if need == CapAgent {
		switch {
		case id == nil:
			return tandem.Errorf(tandem.EUNAUTHENTICATED, "%s %s needs an agent certificate of cluster %s", r.Method, r.URL.Path, g.Cluster)
		case id.Role != pki.RoleAgent:
			return tandem.Errorf(tandem.EFORBIDDEN, "%s %s needs an agent certificate, not a %s certificate (%s)", r.Method, r.URL.Path, id.Role, id.ID)
		}
		return nil
	}
	if id != nil && id.Role == pki.RoleAgent {
		return tandem.Errorf(tandem.EFORBIDDEN, "agent certificates (%s) may only sync; %s %s is not an agent route", id.ID, r.Method, r.URL.Path)
	}
	return nil
}

// authenticate returns the token of r's "Authorization: Bearer" header. Its
// errors are *tandem.Error values whose messages never include the secret.
// A token that expired is returned with the error, so the audit log names it.
func (g *Guard) authenticate(r *http.Request) (Token, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return Token{}, tandem.Errorf(tandem.EUNAUTHENTICATED,
			"%s requires a token: send \"Authorization: Bearer <token>\"%s", g.Name, g.TokenHint)
	}
	scheme, secret, ok := strings.Cut(h, " ")
	secret = strings.TrimSpace(secret)
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
		return Token{}, tandem.Errorf(tandem.EUNAUTHENTICATED, "the Authorization header must be \"Bearer <token>\"")
	}
	if g.Tokens == nil {
		return Token{}, tandem.Errorf(tandem.EUNAVAILABLE, "%s cannot check tokens", g.Name)
	}
	tok, err := g.Tokens.Authenticate(r.Context(), secret)
	switch {
	case err == nil:
		return tok, nil
	case errors.Is(err, ErrNoToken):
		return Token{}, tandem.Errorf(tandem.EUNAUTHENTICATED, "unknown or revoked token")
	case errors.Is(err, ErrExpired):
		return tok, tandem.Errorf(tandem.EUNAUTHENTICATED, "%s", strings.TrimSuffix(err.Error(), ": "+ErrExpired.Error()))
	case tandem.ErrorCode(err) != tandem.EINTERNAL:
		return Token{}, err
	default:
		return Token{}, tandem.Errorf(tandem.EUNAVAILABLE, "%s cannot check the token right now (etcd: %v); retry", g.Name, err)
	}
}

// audit writes one line of the audit log.
func (g *Guard) audit(r *http.Request, route string, need Capability, c *Caller, decision string, status int, reason string) {
	if g.Audit == nil {
		return
	}
	e := AuditEntry{
		Time: g.now().UTC(), Remote: r.RemoteAddr, Method: r.Method, Route: route, Path: r.URL.Path, Target: c.Target, Need: string(need),
		Decision: decision, Status: status, Reason: reason,
	}
	if orig, ok := ForwardedFor(r, c.Cert); ok {
		e.Remote, e.Via = orig, "server "+c.Cert.ID+" ("+r.RemoteAddr+")"
	}
	if g.Stamp != nil {
		g.Stamp(&e)
	}
	if c.Token != nil {
		e.Identity.TokenName, e.Identity.TokenPolicy, e.Identity.TokenAccessor = c.Token.Name, string(c.Token.Policy), c.Token.Accessor
	}
	if c.Cert != nil {
		e.Identity.CertRole, e.Identity.CertID = string(c.Cert.Role), c.Cert.ID
	}
	g.Audit.Write(e)
}

// maxForwardedFor bounds the address taken from X-Forwarded-For.
const maxForwardedFor = 256

// ForwardedFor returns the original caller's address of a request that a
// server of the cluster forwarded on the caller's behalf: the last address
// of its X-Forwarded-For header, which the forwarding server sets to the
// address it received the request from (internal/ui's forward). It is
// trusted only when the connection's verified client certificate, cert, is
// a server certificate of the cluster (the guard checked cluster and
// chain): anyone else could write any address there. Without TLS no peer is
// authenticated, so the header is never trusted, and the audit log keeps
// the connection's peer.
func ForwardedFor(r *http.Request, cert *pki.Identity) (string, bool) {
	if cert == nil || cert.Role != pki.RoleServer {
		return "", false
	}
	xff := strings.Join(r.Header.Values("X-Forwarded-For"), ",")
	if i := strings.LastIndexByte(xff, ','); i >= 0 {
		xff = xff[i+1:]
	}
	xff = strings.TrimSpace(xff)
	if xff == "" || len(xff) > maxForwardedFor || strings.ContainsFunc(xff, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return "", false
	}
	return xff, true
}

func (g *Guard) now() time.Time {
	if g.Now != nil {
		return g.Now()
	}
	return time.Now()
}

// HandshakeRoute is the audit log's route of a refused TLS handshake.
const HandshakeRoute = "tls-handshake"

// HandshakeLog returns the logger for an http.Server's ErrorLog, where
// net/http reports each failed TLS handshake as "http: TLS handshake error
// from ADDR: REASON". A refusal (a client certificate of another CA or
// cluster, expired or not yet valid, of a role the listener does not take,
// missing where one is required; a TLS version or protocol the server does
// not speak) becomes a deny line of the audit log, route HandshakeRoute,
// with the client's address and the reason: no request was read, so no
// route, token or certificate is known. A client that merely hung up or
// stayed silent (EOF, a reset, a timeout: load balancers' TCP checks) is no
// denial and is not audited. Every line also goes to log at debug.
func (g *Guard) HandshakeLog(log *slog.Logger) *stdlog.Logger {
	return stdlog.New(&handshakeAudit{g: g, next: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}, "", 0)
}

type handshakeAudit struct {
	g    *Guard
	next *stdlog.Logger
}

const handshakeErrorPrefix = "http: TLS handshake error from "

func (h *handshakeAudit) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	h.next.Print(line)
	rest, ok := strings.CutPrefix(line, handshakeErrorPrefix)
	if !ok || h.g.Audit == nil {
		return len(p), nil
	}
	remote, reason, _ := strings.Cut(rest, ": ")
	if hungUp(reason) {
		return len(p), nil
	}
	e := AuditEntry{Time: h.g.now().UTC(), Remote: remote, Route: HandshakeRoute, Decision: Deny, Reason: reason}
	if h.g.Stamp != nil {
		h.g.Stamp(&e)
	}
	h.g.Audit.Write(e)
	return len(p), nil
}

// hungUp reports whether a handshake error says only that the client went
// away or stayed silent, rather than that the server refused it.
func hungUp(reason string) bool {
	for _, s := range []string{"EOF", "connection reset by peer", "i/o timeout", "broken pipe", "use of closed network connection"} {
		if strings.HasSuffix(reason, s) {
			return true
		}
	}
	return false
}

func (g *Guard) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if g.WriteError != nil {
		g.WriteError(w, r, err)
		return
	}
	code := tandem.ErrorCode(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(tandem.HTTPStatus(code))
	_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: &tandem.Error{Code: code, Message: tandem.ErrorMessage(err)}})
}

// StatusRecorder is an http.ResponseWriter that remembers the status its
// handler answered: the Guard's, for the audit log, and an API's, for its
// metrics.
type StatusRecorder struct {
	http.ResponseWriter
	code int
}

// NewStatusRecorder returns a StatusRecorder writing to w.
func NewStatusRecorder(w http.ResponseWriter) *StatusRecorder {
	return &StatusRecorder{ResponseWriter: w, code: http.StatusOK}
}

// Status returns the status answered: 200 unless WriteHeader said another.
func (s *StatusRecorder) Status() int { return s.code }

// WriteHeader records code and writes it.
func (s *StatusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *StatusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Flush flushes the real writer, if it can.
func (s *StatusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
