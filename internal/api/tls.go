package api

import (
	"crypto/tls"
	stdlog "log"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/pki"
	"github.com/tandemhq/tandem/internal/transport"
)

// TLS configures the API for a server whose listener serves TLS
// (tandem server --tls-cert; docs/SECURITY.md, "TLS between processes").
type TLS struct {
	// Cluster is the cluster whose certificates the API accepts; a
	// certificate of another is refused. Not empty turns the role checks on:
	//
	//   - /v1/agent/sync needs an agent certificate whose ID is the agent
	//     ID the request carries (agent w1 cannot sync as w2); a server or
	//     cli certificate, or none, is refused.
	//   - Every other route that is not open refuses an agent certificate:
	//     an agent calls nothing but its sync, so a stolen agent
	//     certificate is worth nothing else, and can never act as a server
	//     or an operator.
	//   - A server or cli certificate authenticates the connection only:
	//     with tokens enforced (--acl) a request still needs a token whose
	//     policy allows the route. Certificates say who is at the other
	//     end of the connection; tokens carry policy.
	//
	// The certificate's role and ID go to the audit log.
	Cluster string
	// AgentClient is how the server calls agents over https (to fetch
	// attempt logs): pki.ClientConfig with the agent role, and this
	// server's certificate, which agents require. Nil: plain http only.
	AgentClient *tls.Config
}

// WithTLS turns on the certificate role checks and configures the calls the
// API makes to agents.
func WithTLS(t TLS) Option {
	return func(a *API) {
		a.tls = t
		a.logClient = newLogClient(t.AgentClient)
	}
}

// newLogClient returns the client that fetches attempt logs from agents. No
// overall timeout: a followed log stays open as long as the attempt runs.
func newLogClient(cfg *tls.Config) *http.Client {
	return transport.NewHTTPClient(transport.HTTPOptions{ResponseHeaderTimeout: 10 * time.Second, NoProxy: true, TLS: cfg})
}

// peer returns the identity of r's client certificate when TLS is on: nil
// for a request without one (or with TLS off), an EFORBIDDEN error for one
// of another cluster or that the handshake did not verify.
func (a *API) peer(r *http.Request) (*pki.Identity, error) {
	if a.tls.Cluster == "" {
		return nil, nil
	}
	id, err := pki.FromRequest(r, a.tls.Cluster)
	if err != nil {
		return nil, tandem.Errorf(tandem.EFORBIDDEN, "client certificate refused: %v", err)
	}
	return id, nil
}

// checkRole applies the role rules of TLS.Cluster's doc to a request to a
// route needing need, before any token is looked at.
func (a *API) checkRole(r *http.Request, need acl.Capability, id *pki.Identity) error {
	if a.tls.Cluster == "" || need == acl.CapOpen {
		return nil
	}
	if need == acl.CapAgent {
		switch {
		case id == nil:
			return tandem.Errorf(tandem.EUNAUTHENTICATED, "%s %s needs an agent certificate of cluster %s", r.Method, r.URL.Path, a.tls.Cluster)
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

// checkSyncAgent refuses a sync whose agent is not the one the client
// certificate names (agent w1 cannot sync as w2). With TLS off it allows all.
func (a *API) checkSyncAgent(r *http.Request, agentID string) error {
	id := info(r).cert
	if a.tls.Cluster == "" || id == nil {
		return nil // checkRole has required a certificate when TLS is on
	}
	if id.ID != agentID {
		return tandem.Errorf(tandem.EFORBIDDEN, "agent certificate of %s cannot sync as agent %q", id.ID, agentID)
	}
	return nil
}

// HandshakeLog returns the logger for the http.Server's ErrorLog, where
// net/http reports each failed TLS handshake as "http: TLS handshake error
// from ADDR: REASON". A refusal (a client certificate of another CA,
// expired or not yet valid, of a role the listener does not take, missing
// where one is required; a TLS version or protocol the server does not
// speak) becomes a deny line of the audit log, route "tls-handshake", with
// the client's address and the reason. A client that merely hung up or
// went silent (EOF, a reset, a timeout: load balancers' TCP checks do that)
// is no denial and is not audited. Every line also goes to log at debug.
func (a *API) HandshakeLog(log *slog.Logger) *stdlog.Logger {
	return stdlog.New(&handshakeAudit{a: a, next: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}, "", 0)
}

type handshakeAudit struct {
	a    *API
	next *stdlog.Logger
}

const handshakeErrorPrefix = "http: TLS handshake error from "

func (h *handshakeAudit) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	h.next.Print(line)
	rest, ok := strings.CutPrefix(line, handshakeErrorPrefix)
	if !ok || h.a.sec.Audit == nil {
		return len(p), nil
	}
	remote, reason, _ := strings.Cut(rest, ": ")
	if hungUp(reason) {
		return len(p), nil
	}
	st := h.a.srv.Status()
	h.a.sec.Audit.Write(acl.AuditEntry{
		Time: h.a.sec.Now().UTC(), Server: h.a.id, HAState: string(st.State), Epoch: st.Epoch,
		Remote: remote, Route: "tls-handshake", Decision: "deny", Reason: reason,
	})
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
