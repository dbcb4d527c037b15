package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/keys"
)

// etcdAuthFlags are the flags of tandem etcd auth setup.
type etcdAuthFlags struct {
	endpoints, cluster string
	files              etcdauth.Files
	user, password     string
	check              bool
	timeout            time.Duration
}

func newEtcdAuthCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Lock an etcd down to tandem's clusters",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newEtcdAuthSetupCmd())
	return cmd
}

func newEtcdAuthSetupCmd() *cobra.Command {
	var f etcdAuthFlags
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Give a cluster an etcd role and user confined to /tandem/<cluster>/, and turn etcd authentication on",
		Long: `Set up etcd's authentication for one tandem cluster, idempotently:

  role tandem-<cluster>  read and write on /tandem/<cluster>/ and nothing else
  user tandem-<cluster>  no password, role tandem-<cluster> only; etcd maps to it
                         every client certificate with common name tandem-<cluster>,
                         which all of the cluster's server certificates carry
  user root, role root   created if missing, as etcd requires, then authentication on

Run again, it changes nothing when all is in place, and puts right a role or
user of the cluster that someone changed. The etcd must require client
certificates (--client-cert-auth, or tandem's --etcd-cacert/--cacert), since the
cluster's user has no password.

Once etcd authentication is on, only root may change it: connect as root with
--user root --password (or $TANDEM_ETCD_PASSWORD), or with a client certificate
whose common name is root (--cacert, --cert, --key). While it is off, any client
may; --user root --password then also sets root's password, which otherwise
is left without one (a root certificate is then the only way in).

  tandem etcd auth setup --etcd-endpoints https://10.0.0.1:2379 --cluster prod \
    --cacert etcd-ca.pem --cert root.pem --key root-key.pem

With --check it only checks, writes nothing, and exits with status 1 if the
cluster is not set up; the cluster's own server certificate may run it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runEtcdAuthSetup(cmd, &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs (default $TANDEM_ETCD_ENDPOINTS, else http://127.0.0.1:2379)")
	fl.StringVar(&f.cluster, "cluster", "default", "cluster name: its keys are under /tandem/<cluster>/")
	fl.StringVar(&f.files.CACert, "cacert", "", "CA file that verifies etcd's certificate")
	fl.StringVar(&f.files.Cert, "cert", "", "client certificate presented to etcd (common name root to act as root)")
	fl.StringVar(&f.files.Key, "key", "", "the key of --cert")
	fl.StringVar(&f.user, "user", "", "etcd user to authenticate as with a password (root)")
	fl.StringVar(&f.password, "password", "", "the password of --user (default $TANDEM_ETCD_PASSWORD)")
	fl.BoolVar(&f.check, "check", false, "only check that the cluster is set up; write nothing")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	return cmd
}

func runEtcdAuthSetup(cmd *cobra.Command, f *etcdAuthFlags) error {
	if err := keys.ValidateName("cluster", f.cluster); err != nil {
		return usagef("--cluster: %v", err)
	}
	if f.password == "" {
		f.password = os.Getenv("TANDEM_ETCD_PASSWORD")
	}
	if (f.user == "") != (f.password == "") {
		return usagef("--user and --password (or $TANDEM_ETCD_PASSWORD) go together")
	}
	eps := orDefault(f.endpoints, orDefault(os.Getenv("TANDEM_ETCD_ENDPOINTS"), "http://127.0.0.1:2379"))
	cfg, err := etcdauth.ClientConfig(strings.Split(eps, ","), f.files)
	if err != nil {
		return usagef("%v", err)
	}
	cfg.Username, cfg.Password = f.user, f.password
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	cfg.Context = ctx
	cli, err := clientv3.New(cfg)
	if err != nil {
		return fmt.Errorf("etcd client for %s: %w", eps, err)
	}
	defer cli.Close()

	out := cmd.OutOrStdout()
	if f.check {
		if err := etcdauth.Verify(ctx, cli, f.cluster); err != nil {
			if errors.Is(err, etcdauth.ErrNotSetUp) {
				return &exitError{code: 1, err: err}
			}
			return err
		}
		fmt.Fprintf(out, "etcd at %s is set up for cluster %s\n", eps, f.cluster)
		return nil
	}
	var o etcdauth.Options
	if f.user == etcdauth.RootUser {
		o.RootPassword = f.password
	}
	changes, err := etcdauth.Setup(ctx, cli, f.cluster, o)
	for _, c := range changes {
		fmt.Fprintln(out, c)
	}
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		fmt.Fprintf(out, "etcd at %s was already set up for cluster %s: nothing changed\n", eps, f.cluster)
	} else {
		fmt.Fprintf(out, "etcd at %s is set up for cluster %s\n", eps, f.cluster)
	}
	return nil
}
