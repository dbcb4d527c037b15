package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem/internal/embedetcd"
)

// newEtcdCmd runs a standalone etcd member: etcd's own server, in a
// process of its own. Benchmarks and fault tests use it for "external
// etcd"; it saves installing etcd where only Go is available. Its
// subcommand `auth setup` locks an etcd, standalone or not, to tandem's
// clusters (etcd_auth.go); that one is for operators, so the command is
// listed.
func newEtcdCmd() *cobra.Command {
	var c embedetcd.Config
	var hb, el time.Duration
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Set up etcd authentication for a cluster (auth setup); run a standalone etcd member (tests, benchmarks)",
		Long: `With flags and no subcommand: run a standalone etcd member, for tests and
benchmarks where no etcd is installed. With --cacert, --cert and --key (a
server certificate from tandem tls cert create) its URLs must be https and it
requires client certificates on both ports (docs/SECURITY.md).

tandem etcd auth setup: lock an etcd down to one cluster's prefix.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.HeartbeatMs, c.ElectionMs = uint(hb.Milliseconds()), uint(el.Milliseconds())
			if err := c.Validate(); err != nil {
				return usagef("%v", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			m, err := embedetcd.Start(c)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "etcd member %s serving clients at %s\n", c.Name, c.ClientURL)
			select {
			case <-ctx.Done():
			case err = <-m.Err():
			}
			m.Close()
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&c.Name, "name", "", "member name")
	fl.StringVar(&c.Dir, "data-dir", "", "data directory")
	fl.StringVar(&c.ClientURL, "client-url", "http://127.0.0.1:2379", "client URL to listen on")
	fl.StringVar(&c.PeerURL, "peer-url", "http://127.0.0.1:2380", "peer URL to listen on")
	fl.StringVar(&c.AdvertisePeerURL, "advertise-peer-url", "", "peer URL others use (default --peer-url)")
	fl.StringVar(&c.InitialCluster, "initial-cluster", "", "name=peerURL,... (default this member alone)")
	fl.StringVar(&c.ClusterToken, "cluster-token", "tandem-etcd", "cluster token")
	fl.DurationVar(&hb, "heartbeat", 0, "raft heartbeat interval (default etcd's 100ms)")
	fl.DurationVar(&el, "election-timeout", 0, "raft election timeout (default etcd's 1s)")
	fl.StringVar(&c.CACert, "cacert", "", "CA file: require client certificates of this CA on both ports (with --cert, --key)")
	fl.StringVar(&c.Cert, "cert", "", "this member's server certificate (tandem tls cert create --server)")
	fl.StringVar(&c.Key, "key", "", "the key of --cert")
	fl.StringSliceVar(&c.ClientCommonNames, "allowed-client-cn", nil, "with certificates: the client certificate common names the client port accepts (default tandem-<cluster of --cert> and root); list each cluster's tandem-<cluster> when clusters share this etcd")
	cmd.AddCommand(newEtcdAuthCmd())
	return cmd
}
