package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/etcdauth"
)

// etcdTLS is the certificate a process presents to etcd (docs/SECURITY.md,
// "etcd locked down"): the flags --etcd-cacert, --etcd-cert and --etcd-key
// that tandem server, supervise and lb share. Without them a process
// speaks plain http to etcd, as before.
type etcdTLS struct {
	files etcdauth.Files
	fs    *pflag.FlagSet // where the flags are, to tell defaults from given values
}

// register adds the three flags to fl, their defaults taken from
// $TANDEM_ETCD_CACERT, $TANDEM_ETCD_CERT and $TANDEM_ETCD_KEY.
func (t *etcdTLS) register(fl *pflag.FlagSet) {
	t.fs = fl
	fl.StringVar(&t.files.CACert, "etcd-cacert", os.Getenv("TANDEM_ETCD_CACERT"),
		"CA file that verifies etcd's certificate; with --etcd-cert and --etcd-key, etcd is reached over TLS (default $TANDEM_ETCD_CACERT)")
	fl.StringVar(&t.files.Cert, "etcd-cert", os.Getenv("TANDEM_ETCD_CERT"),
		"server certificate of this cluster presented to etcd: its common name tandem-<cluster> is the etcd user (default $TANDEM_ETCD_CERT)")
	fl.StringVar(&t.files.Key, "etcd-key", os.Getenv("TANDEM_ETCD_KEY"), "the key of --etcd-cert (default $TANDEM_ETCD_KEY)")
}

// on reports whether certificates are given.
func (t *etcdTLS) on() bool { return !t.files.IsZero() }

// defaultURL returns u, an http:// default, as https:// when certificates
// are given: a locked-down etcd speaks nothing else.
func (t *etcdTLS) defaultURL(u string) string {
	if t.on() {
		if rest, ok := strings.CutPrefix(u, "http://"); ok {
			return "https://" + rest
		}
	}
	return u
}

// validate checks the certificate flags for a process of cluster, with a
// usage error (exit status 2) naming the flag at fault: all three or none;
// the files readable, the key the certificate's; the certificate a server
// certificate of cluster (its common name is the etcd user, so another
// cluster's would be another cluster's user). With certificates, each URL
// in urls (comma-separated lists allowed), keyed by its flag's name, is
// switched to https if its flag was not given, and must be https if it was.
// Without certificates it changes nothing.
func (t *etcdTLS) validate(cluster string, urls map[string]*string) error {
	if !t.on() {
		return nil
	}
	f := t.files
	if f.CACert == "" || f.Cert == "" || f.Key == "" {
		var missing []string
		for flag, v := range map[string]string{"--etcd-cacert": f.CACert, "--etcd-cert": f.Cert, "--etcd-key": f.Key} {
			if v == "" {
				missing = append(missing, flag)
			}
		}
		sort.Strings(missing)
		return usagef("etcd TLS needs --etcd-cacert, --etcd-cert and --etcd-key together, or none: %s missing", strings.Join(missing, " and "))
	}
	if _, err := f.TLSConfig(); err != nil {
		return usagef("%v", err)
	}
	got, err := f.Cluster()
	if err != nil {
		return usagef("--etcd-cert: %v", err)
	}
	if got != cluster {
		return usagef("--etcd-cert %s is a certificate of cluster %q, not of --cluster %q: it would be etcd user %s",
			f.Cert, got, cluster, etcdauth.User(got))
	}
	names := make([]string, 0, len(urls))
	for name := range urls {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		u := urls[name]
		if t.fs == nil || !t.fs.Changed(name) {
			var out []string
			for _, one := range strings.Split(*u, ",") {
				out = append(out, t.defaultURL(one))
			}
			*u = strings.Join(out, ",")
			continue
		}
		for _, one := range strings.Split(*u, ",") {
			if !strings.HasPrefix(one, "https://") {
				return usagef("--%s %q: with --etcd-cacert, --etcd-cert and --etcd-key, use an https:// URL", name, one)
			}
		}
	}
	return nil
}

// newEtcdClient returns a client of endpoints for a process of cluster,
// with t's certificates if any (validated as by etcdTLS.validate, which
// it calls). Bad endpoints or files are usage errors.
func newEtcdClient(endpoints []string, t *etcdTLS, cluster string) (*clientv3.Client, error) {
	if err := t.validate(cluster, nil); err != nil {
		return nil, err
	}
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, usagef("--etcd-endpoints: %q is not a URL like http://127.0.0.1:2379", ep)
		}
		if t.on() && u.Scheme != "https" {
			return nil, usagef("--etcd-endpoints: %q: with --etcd-cacert, --etcd-cert and --etcd-key, use an https:// URL", ep)
		}
	}
	cli, err := etcdauth.NewClient(endpoints, t.files)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return cli, nil
}

// etcdSetupTimeout bounds the auth setup or check at a server's start.
const etcdSetupTimeout = 30 * time.Second

// lockDownEtcd is a server's start-up step for etcd's authentication,
// once its client (and, if embedded, its member) is up. Without
// certificates it does nothing.
//
// With an embedded member it runs etcdauth.Setup with the server's own
// certificate: the first server to get there turns authentication on once
// the cluster's role and user are in place; the others find it on and
// only check that all is in place (they are not root and need not be).
// Setups running at once are safe (etcdauth.Setup). If authentication is
// on but the cluster's role or user are not as they should be, the server
// refuses to start: only root can put them right (tandem etcd auth setup).
//
// With an external etcd it only checks (etcdauth.Verify) and warns if the
// etcd is not locked down for the cluster: setting up an external etcd is
// its operator's step, done as root.
func lockDownEtcd(ctx context.Context, t *etcdTLS, cli *clientv3.Client, cluster string, embedded bool, log *slog.Logger) error {
	if !t.on() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, etcdSetupTimeout)
	defer cancel()
	if !embedded {
		if err := etcdauth.Verify(ctx, cli, cluster); err != nil {
			log.Warn("etcd is not locked down for this cluster: run tandem etcd auth setup as root (docs/SECURITY.md)", "cluster", cluster, "err", err)
			return nil
		}
		log.Info("etcd is locked down for this cluster", "cluster", cluster, "user", etcdauth.User(cluster))
		return nil
	}
	for {
		changes, err := etcdauth.Setup(ctx, cli, cluster, etcdauth.Options{})
		for _, c := range changes {
			log.Info("etcd auth setup", "cluster", cluster, "change", c)
		}
		if err == nil {
			log.Info("etcd is locked down for this cluster", "cluster", cluster, "user", etcdauth.User(cluster), "changed", len(changes) > 0)
			return nil
		}
		if errors.Is(err, etcdauth.ErrNotSetUp) {
			return fmt.Errorf("etcd auth: %w (root can put it right: tandem etcd auth setup)", err)
		}
		// Anything else (no leader yet, a connection moving) is retried
		// until the deadline: the member has only just joined.
		log.Debug("etcd auth setup failed; retrying", "cluster", cluster, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd auth setup for cluster %s: %w", cluster, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
