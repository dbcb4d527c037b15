package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/tandemhq/tandem/internal/pki"
)

// procTLS is the certificate a server or agent serves and calls other
// tandem processes with (docs/SECURITY.md, "TLS between processes"): the
// flags --tls-cert, --tls-key and --tls-ca. Without them the process speaks
// plain http, as before.
type procTLS struct {
	cert, key, ca string
}

// register adds the three flags to fl; who names the certificate's holder
// in the help ("server", "agent").
func (t *procTLS) register(fl *pflag.FlagSet, who string) {
	fl.StringVar(&t.cert, "tls-cert", "", "this "+who+"'s certificate (tandem tls cert create --"+who+"); with --tls-key and --tls-ca, it serves and calls over TLS 1.3")
	fl.StringVar(&t.key, "tls-key", "", "the key of --tls-cert")
	fl.StringVar(&t.ca, "tls-ca", "", "the cluster's CA certificate (ca.pem), which peers' certificates must chain to")
}

// on reports whether any certificate flag is given.
func (t *procTLS) on() bool { return t.cert != "" || t.key != "" || t.ca != "" }

// load checks the flags and loads the store: all three or none (nil store,
// nil error), a certificate of role and cluster whose ID is id. Problems
// are usage errors naming the flag.
func (t *procTLS) load(role pki.Role, cluster, id string, log *slog.Logger) (*pki.Store, error) {
	if !t.on() {
		return nil, nil
	}
	var missing []string
	for flag, v := range map[string]string{"--tls-cert": t.cert, "--tls-key": t.key, "--tls-ca": t.ca} {
		if v == "" {
			missing = append(missing, flag)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, usagef("TLS needs --tls-cert, --tls-key and --tls-ca together, or none: %s missing", strings.Join(missing, " and "))
	}
	s, err := pki.NewStore(t.cert, t.key, t.ca, log)
	if err != nil {
		return nil, usagef("--tls-cert: %v", err)
	}
	got := s.Identity()
	switch {
	case got.Role != role:
		return nil, usagef("--tls-cert %s is a certificate of role %s (%s); a %s needs one of role %s", t.cert, got.Role, got, role, role)
	case cluster != "" && got.Cluster != cluster:
		return nil, usagef("--tls-cert %s is a certificate of cluster %q, not of --cluster %q", t.cert, got.Cluster, cluster)
	case got.ID != id:
		return nil, usagef("--tls-cert %s is %s's certificate, not %s's (--id): the ID in the certificate must be the %s's", t.cert, got.ID, id, role)
	}
	return s, nil
}

// httpsURL returns u with http:// made https://.
func httpsURL(u string) string {
	if rest, ok := strings.CutPrefix(u, "http://"); ok {
		return "https://" + rest
	}
	return u
}

// watchTLS reloads s on SIGHUP until ctx ends and registers its expiry
// metric in reg; the returned function stops the watcher.
func watchTLS(ctx context.Context, s *pki.Store, reg *prometheus.Registry) func() {
	if reg != nil {
		reg.MustRegister(pki.NewExpiryCollector(s))
	}
	return pki.WatchSIGHUP(ctx, s)
}

// tlsServerConfig is pki.ServerConfig for a process's listener, as a usage
// error if the store cannot serve.
func tlsServerConfig(s *pki.Store, o pki.ServerOptions) (*tls.Config, error) {
	c, err := pki.ServerConfig(s, o)
	if err != nil {
		return nil, usagef("--tls-cert: %v", err)
	}
	return c, nil
}
