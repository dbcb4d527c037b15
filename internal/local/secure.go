package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/transport"
)

// TokenFile is where, in Config.Secure's directory, Start keeps the
// management token it bootstrapped: a restarted cluster (tandem dev
// --data-dir) finds it there, as the bootstrap works only once.
const TokenFile = "token"

// secureOn is Config.Secure's work in New, once every process is laid out:
// the servers enforce tokens and every process gets its certificates
// (EnableTLS; etcd's are made by Start, Config.EtcdTLS being Secure).
func (c *Cluster) secureOn() error {
	if c.cfg.Secure == "" {
		return nil
	}
	for _, s := range c.Servers {
		s.args = append(s.args, "--acl")
	}
	for _, p := range c.Supervisors {
		p.args = insertBefore(p.args, "--", "--acl")
	}
	files, err := c.EnableTLS(c.cfg.Secure)
	if err != nil {
		return err
	}
	c.TLS = files
	return nil
}

// SecureEnv returns the environment a shell or the CLI needs to use a
// secured cluster: TANDEM_CACERT, TANDEM_CLIENT_CERT, TANDEM_CLIENT_KEY and
// TANDEM_TOKEN (docs/SECURITY.md); nil for a cluster without Config.Secure.
// Its token is known once Start has returned.
func (c *Cluster) SecureEnv() []string {
	if c.TLS == nil {
		return nil
	}
	env := c.TLS.Env()
	if c.Token != "" {
		env = append(env, "TANDEM_TOKEN="+c.Token)
	}
	return env
}

// Client returns a Go client of the cluster's servers with the TLS and
// token of a secured cluster.
func (c *Cluster) Client() (*client.Client, error) {
	cfg := client.Config{Servers: c.URLs(), Token: c.Token}
	if c.TLS != nil {
		tc, err := client.TLSFiles{CACert: c.TLS.CACert, ClientCert: c.TLS.CLICert, ClientKey: c.TLS.CLIKey}.Config()
		if err != nil {
			return nil, err
		}
		cfg.TLS = tc
	}
	return client.New(cfg)
}

// bootstrapToken gives a secured cluster its management token: the one
// kept in TokenFile, or a new one from the ACL bootstrap (docs/SECURITY.md,
// "Tokens"), which needs an active server and so is retried until one
// answers or ctx ends.
func (c *Cluster) bootstrapToken(ctx context.Context) error {
	if c.cfg.Secure == "" {
		return nil
	}
	path := filepath.Join(c.cfg.Secure, TokenFile)
	if b, err := os.ReadFile(path); err == nil {
		c.Token = strings.TrimSpace(string(b))
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("management token: %w", err)
	}
	cli, err := c.Client()
	if err != nil {
		return err
	}
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		nt, err := cli.Bootstrap(actx)
		cancel()
		if err == nil {
			if err := os.WriteFile(path, []byte(nt.Secret+"\n"), 0o600); err != nil {
				return fmt.Errorf("management token: %w", err)
			}
			c.Token = nt.Secret
			return nil
		}
		if tandem.ErrorCode(err) == tandem.ECONFLICT {
			return fmt.Errorf("the cluster's ACL bootstrap was done already but %s, which kept its token, is gone: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bootstrap the management token: %w (last: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// setupEtcdAuth turns etcd authentication on for the cluster on its
// external members (the servers do it themselves on embedded ones), as
// `tandem etcd auth setup` would: before it is on, anyone may.
func (c *Cluster) setupEtcdAuth(ctx context.Context) error {
	if c.cfg.EtcdTLS == "" || len(c.Etcd) == 0 {
		return nil
	}
	cli, err := etcdauth.NewClient(c.EtcdEndpoints(), c.EtcdFiles())
	if err != nil {
		return fmt.Errorf("etcd auth setup: %w", err)
	}
	defer cli.Close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := etcdauth.Setup(sctx, cli, c.cfg.Cluster, etcdauth.Options{}); err != nil {
		return fmt.Errorf("etcd auth setup: %w", err)
	}
	return nil
}

// etcdChecks gives the health checks of locked-down external members the
// certificate of the cluster's tests and tools.
func (c *Cluster) etcdChecks() error {
	if c.cfg.EtcdTLS == "" || len(c.Etcd) == 0 {
		return nil
	}
	tc, err := c.EtcdFiles().TLSConfig()
	if err != nil {
		return fmt.Errorf("etcd TLS: %w", err)
	}
	hc := transport.NewHTTPClient(transport.HTTPOptions{Timeout: 2 * time.Second, NoProxy: true, TLS: tc})
	for _, e := range c.Etcd {
		e.hc = hc
	}
	return nil
}

// HTTPClient returns the client with which the cluster's own checks reach
// its processes (TLS with the cluster's CA and a server certificate when
// secured); Authorize adds the token to such a request.
func (c *Cluster) HTTPClient() *http.Client {
	if len(c.Servers) > 0 {
		return c.Servers[0].client()
	}
	return httpClient
}

// Authorize adds the cluster's token, if any, to req.
func (c *Cluster) Authorize(req *http.Request) { c.authorize(req) }

// authorize adds the cluster's token, if any, to a request of its checks.
func (c *Cluster) authorize(req *http.Request) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
}
