package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem/internal/bench"
)

type benchLBFlags struct {
	trials   int
	modes    []string
	events   []string
	basePort int
	dataDir  string
	jsonPath string
}

func newBenchLBCmd() *cobra.Command {
	f := &benchLBFlags{}
	cmd := &cobra.Command{
		Use:   "lb",
		Short: "How fast each proxy moves traffic to a new active",
		Long: `For each proxy mode, start a local cluster behind it, send a new-connection
GET /v1/ha/state through the proxy every 2 ms, and inject --trials of each
event into the active (switchover, kill, stop), timing from the new leader
key in etcd until the new active answers through the proxy; push modes also
stop and start a standby 10 times (add-remove) and count failed requests.

Modes: haproxy-push and nginx-push (tandem lb), haproxy-checks and
haproxy-checks-fast (HAProxy's own checks of /isActive, no tandem lb),
nginx-307 (NGINX round robin over every server, following 307). A mode
whose proxy is not installed is skipped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBenchLB(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.trials, "trials", 5, "trials of each event (stop: at most 3)")
	fl.StringArrayVar(&f.modes, "mode", nil, "proxy mode: haproxy-push, haproxy-checks, haproxy-checks-fast, nginx-push, nginx-307 (repeatable; default all)")
	fl.StringArrayVar(&f.events, "event", nil, "event: switchover, kill, stop, add-remove (repeatable; default all)")
	fl.IntVar(&f.basePort, "base-port", 21070, "first port; mode i uses the 1000 ports from base+1000*i")
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the clusters' data and logs here (default: a temporary directory, removed at the end)")
	fl.StringVar(&f.jsonPath, "json", "", `also write the result as JSON to this file ("-" for stdout)`)
	return cmd
}

func (f *benchLBFlags) validate() error {
	for _, m := range f.modes {
		if !oneOf(m, bench.LBModes) {
			return usagef("--mode %q: want one of haproxy-push, haproxy-checks, haproxy-checks-fast, nginx-push, nginx-307", m)
		}
	}
	for _, e := range f.events {
		if !oneOf(e, bench.LBEvents) {
			return usagef("--event %q: want one of switchover, kill, stop, add-remove", e)
		}
	}
	if f.trials < 1 {
		return usagef("--trials %d: must be at least 1", f.trials)
	}
	if f.basePort < 1024 || f.basePort+1000*len(bench.LBModes) > 65535 {
		return usagef("--base-port %d: must be from 1024 to %d (each of the %d modes uses 1000 ports)",
			f.basePort, 65535-1000*len(bench.LBModes), len(bench.LBModes))
	}
	return nil
}

func runBenchLB(ctx context.Context, out io.Writer, f *benchLBFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	return runBench(ctx, "lb", f.jsonPath, func(ctx context.Context, bin string) (*bench.LBResult, error) {
		return bench.RunLB(ctx, bench.LBConfig{Binary: bin, Modes: f.modes, Events: f.events, Trials: f.trials,
			BasePort: f.basePort, DataDir: f.dataDir, Out: out})
	})
}
