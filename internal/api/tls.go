package api

import (
	"crypto/tls"
	stdlog "log"
	"log/slog"
	"net/http"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
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
	// The certificate's role and ID go to the audit log. acl.Guard applies
	// these rules; the sync's agent ID is checked here (checkSyncAgent).
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

// checkSyncAgent refuses a sync whose agent is not the one the client
// certificate names (agent w1 cannot sync as w2), making the refusal the
// reason of the sync's audit line. With TLS off it allows all.
func (a *API) checkSyncAgent(r *http.Request, agentID string) error {
	c := acl.CallerOf(r)
	if c.Cert == nil {
		return nil // none with TLS off; with TLS on the guard has required one
	}
	if c.Cert.ID != agentID {
		err := tandem.Errorf(tandem.EFORBIDDEN, "agent certificate of %s cannot sync as agent %q", c.Cert.ID, agentID)
		c.Denied = tandem.ErrorMessage(err)
		return err
	}
	return nil
}

// HandshakeLog returns the logger for the http.Server's ErrorLog: the
// guard's (acl.Guard.HandshakeLog), which puts refused TLS handshakes in
// the audit log and every line in log at debug.
func (a *API) HandshakeLog(log *slog.Logger) *stdlog.Logger { return a.guard.HandshakeLog(log) }
