package ui

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"time"

	"github.com/tandemhq/tandem/internal/pki"
	"github.com/tandemhq/tandem/internal/transport"
)

// ServerClient returns the client that forwards the UI's writes to other
// servers of the cluster. With TLS (agentTLS, the server's configuration for
// calling agents, not nil) it presents this server's certificate and
// accepts only a peer whose certificate is a server certificate of cluster:
// the caller's token goes to servers of the cluster and nowhere else (I9).
// Without TLS, plain HTTP to the members' advertised URLs.
func ServerClient(agentTLS *tls.Config, cluster string) *http.Client {
	var cfg *tls.Config
	if agentTLS != nil {
		cfg = agentTLS.Clone()
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			id, err := pki.FromConnectionState(&cs, cluster)
			if err != nil {
				return err
			}
			if id == nil {
				return pki.ErrUnverified
			}
			if id.Role != pki.RoleServer {
				return fmt.Errorf("ui: forwarding to a %s certificate (%s), not a server's: refused", id.Role, id.ID)
			}
			return nil
		}
	}
	return transport.NewHTTPClient(transport.HTTPOptions{NoProxy: true, ResponseHeaderTimeout: forwardTimeout + 5*time.Second, TLS: cfg})
}
