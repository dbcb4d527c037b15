package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// newDemoServiceCmd is the service `tandem dev --supervisors` makes highly
// available: a small HTTP server that says which node and epoch serve it,
// so a failover shows in every answer.
func newDemoServiceCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "demo-service",
		Short:  "A small HTTP service for tandem dev's supervised demo",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			started := time.Now()
			node, epoch := os.Getenv("TANDEM_NODE"), os.Getenv("TANDEM_EPOCH")
			srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprintf(w, "demo served by node %s at epoch %s (pid %d, up %s)\n", orDash(node), orDash(epoch), os.Getpid(),
					time.Since(started).Round(time.Millisecond))
			})}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() { <-ctx.Done(); _ = srv.Close() }()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:7490", "address to serve on")
	return cmd
}
