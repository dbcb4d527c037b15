package local

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandemhq/tandem/internal/pki"
	"github.com/tandemhq/tandem/internal/transport"
)

// TLSFiles are the certificates EnableTLS made for tests and tools: the
// cluster's CA and a cli certificate (ID "local").
type TLSFiles struct {
	Dir     string
	CACert  string
	CLICert string
	CLIKey  string
}

// Env returns the environment that points the CLI at the files:
// TANDEM_CACERT, TANDEM_CLIENT_CERT and TANDEM_CLIENT_KEY.
func (f *TLSFiles) Env() []string {
	return []string{"TANDEM_CACERT=" + f.CACert, "TANDEM_CLIENT_CERT=" + f.CLICert, "TANDEM_CLIENT_KEY=" + f.CLIKey}
}

// tlsValidity is how long EnableTLS's certificates last: a test's or a dev
// cluster's lifetime, with room.
const tlsValidity = 30 * 24 * time.Hour

// EnableTLS turns TLS between the cluster's processes on (docs/SECURITY.md,
// "TLS between processes"); call it after New and before Start. It makes in
// dir a CA for the cluster (or uses the one there) and a certificate for
// every server (server-rm1.pem, ...) and agent (agent-agent1.pem, ...),
// gives each process its certificate (--tls-cert, --tls-key, --tls-ca),
// switches every server and agent URL to https, and makes the cluster's own
// health checks present a server certificate (server-local.pem), as agents
// require. It also makes a cli certificate for the CLI (TLSFiles.Env).
// Supervisors serve their API over TLS too, and tandem lb's proxy serves
// TLS (LBURL is https) and calls the servers over TLS, with a server
// certificate "lb"; tandem lb's own status endpoint stays plain http on
// loopback.
func (c *Cluster) EnableTLS(dir string) (*TLSFiles, error) {
	ca, err := pki.LoadCA(dir)
	if errors.Is(err, fs.ErrNotExist) {
		ca, err = pki.CreateCA(dir, c.cfg.Cluster, tlsValidity)
	}
	if err != nil {
		return nil, fmt.Errorf("TLS between processes: %w", err)
	}
	caFile := filepath.Join(dir, pki.CACertFile)
	issue := func(role pki.Role, id string) (*pki.Issued, error) {
		name := string(role) + "-" + id
		if _, err := os.Stat(filepath.Join(dir, name+".pem")); err == nil {
			return &pki.Issued{CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+"-key.pem")}, nil
		}
		return pki.Issue(ca, role, id, nil, nil, tlsValidity, pki.WithOutput(dir, name))
	}
	local, err := issue(pki.RoleServer, "local")
	if err != nil {
		return nil, err
	}
	store, err := pki.NewStore(local.CertFile, local.KeyFile, caFile, nil)
	if err != nil {
		return nil, err
	}
	hc := transport.NewHTTPClient(transport.HTTPOptions{Timeout: 2 * time.Second, NoProxy: true,
		TLS: pki.ClientConfig(store, pki.ClientOptions{ServerRoles: []pki.Role{pki.RoleServer, pki.RoleAgent}})})
	for _, s := range c.Servers {
		is, err := issue(pki.RoleServer, s.ID)
		if err != nil {
			return nil, err
		}
		s.URL = httpsURL(s.URL)
		setArg(s.args, "--advertise-url", s.URL)
		s.args = append(s.args, "--tls-cert", is.CertFile, "--tls-key", is.KeyFile, "--tls-ca", caFile)
		s.hc = hc
	}
	servers := strings.Join(c.URLs(), ",")
	for _, a := range c.Agents {
		is, err := issue(pki.RoleAgent, a.ID)
		if err != nil {
			return nil, err
		}
		a.URL = httpsURL(a.URL)
		setArg(a.args, "--servers", servers)
		a.args = append(a.args, "--tls-cert", is.CertFile, "--tls-key", is.KeyFile, "--tls-ca", caFile)
		a.hc = hc
	}
	// Supervisors serve their API over TLS with a server certificate of
	// their node (they call no server).
	for _, p := range c.Supervisors {
		is, err := issue(pki.RoleServer, p.ID)
		if err != nil {
			return nil, err
		}
		p.URL = httpsURL(p.URL)
		setArg(p.args, "--advertise", p.URL)
		p.args = insertBefore(p.args, "--", "--tls-cert", is.CertFile, "--tls-key", is.KeyFile, "--tls-ca", caFile)
		p.hc = hc
	}
	if c.LB != nil {
		is, err := issue(pki.RoleServer, "lb")
		if err != nil {
			return nil, err
		}
		c.LB.args = append(c.LB.args, "--backend-ca", caFile, "--backend-cert", is.CertFile, "--backend-key", is.KeyFile,
			"--tls-cert", is.CertFile, "--tls-key", is.KeyFile)
		c.LBURL = httpsURL(c.LBURL)
	}
	cli, err := issue(pki.RoleCLI, "local")
	if err != nil {
		return nil, err
	}
	return &TLSFiles{Dir: dir, CACert: caFile, CLICert: cli.CertFile, CLIKey: cli.KeyFile}, nil
}

// client is how the cluster's own checks reach the process.
func (s *Proc) client() *http.Client {
	if s.hc != nil {
		return s.hc
	}
	return httpClient
}

func httpsURL(u string) string {
	if rest, ok := strings.CutPrefix(u, "http://"); ok {
		return "https://" + rest
	}
	return u
}

// insertBefore returns args with more inserted before the first mark (the
// "--" that ends a supervisor's flags), or appended if there is none.
func insertBefore(args []string, mark string, more ...string) []string {
	for i, a := range args {
		if a == mark {
			return append(append(append([]string(nil), args[:i]...), more...), args[i:]...)
		}
	}
	return append(args, more...)
}

// setArg sets the value that follows flag in args, if the flag is there.
func setArg(args []string, flag, value string) {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			args[i+1] = value
		}
	}
}
