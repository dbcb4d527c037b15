package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

func newAdminCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Inspect and change the servers' HA state (like yarn rmadmin)",
		Long: `Inspect and change the servers' HA state, in the manner of yarn rmadmin.

A server is named by its ID (rm1), looked up in the cluster's live membership,
or by its URL (anything containing "://"), used as is.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(
		newGetServiceStateCmd(g),
		newGetAllServiceStateCmd(g),
		newTransitionCmd(g, tandem.StateActive),
		newTransitionCmd(g, tandem.StateStandby),
		newFailoverCmd(g),
		newCheckHealthCmd(g),
		newServersCmd(g),
		newShardsCmd(g),
		newDrainCmd(g),
		newHistoryCmd(g),
	)
	return cmd
}

// serverRef is a server named on the command line.
type serverRef struct {
	id  string // empty when the server was named by a URL not looked up
	url string
}

// name is how messages refer to the server: its ID, else its URL.
func (r serverRef) name() string {
	if r.id != "" {
		return r.id
	}
	return r.url
}

// resolveServer maps a command-line argument to a server: an argument
// containing "://" is a URL, used without asking anyone; anything else is an
// ID, looked up in the live membership.
func resolveServer(ctx context.Context, c *client.Client, arg string) (serverRef, error) {
	if strings.Contains(arg, "://") {
		return serverRef{url: strings.TrimRight(arg, "/")}, nil
	}
	servers, err := c.Servers(ctx)
	if err != nil {
		return serverRef{}, fmt.Errorf("look up server %q: %w", arg, err)
	}
	for _, s := range servers {
		if s.ID == arg {
			return serverRef{id: s.ID, url: s.URL}, nil
		}
	}
	if len(servers) == 0 {
		return serverRef{}, fmt.Errorf("unknown server %q: no servers are registered", arg)
	}
	ids := make([]string, len(servers))
	for i, s := range servers {
		ids[i] = s.ID
	}
	return serverRef{}, fmt.Errorf("unknown server %q: the live servers are %s", arg, strings.Join(ids, ", "))
}

// resolveServerID is resolveServer for commands that need the ID as well:
// a server named by URL is asked for its ID.
func resolveServerID(ctx context.Context, c *client.Client, arg string) (serverRef, error) {
	ref, err := resolveServer(ctx, c, arg)
	if err != nil || ref.id != "" {
		return ref, err
	}
	st, err := c.ServerStatus(ctx, ref.url)
	if err != nil {
		return serverRef{}, fmt.Errorf("ask %s for its ID: %w", ref.url, err)
	}
	ref.id = st.ID
	return ref, nil
}

func newGetServiceStateCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "get-service-state ID",
		Short: "Print a server's HA state: active, standby, ...",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			ref, err := resolveServer(ctx, c, args[0])
			if err != nil {
				return err
			}
			st, err := c.ServerStatus(ctx, ref.url)
			if err != nil {
				return err
			}
			if *format == outputJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), st.State)
			return err
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

// serviceState is one line of get-all-service-state.
type serviceState struct {
	ID         string `json:"id,omitempty"`
	URL        string `json:"url"`
	State      string `json:"state"` // an HA state, or "unreachable"
	Registered bool   `json:"registered"`
	Error      string `json:"error,omitempty"`
}

const stateUnreachable = "unreachable"

func newGetAllServiceStateCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "get-all-service-state",
		Short: "Print every server's HA state, as each server reports it",
		Long: `Print one line per server: its ID, URL and HA state, asked of each server
itself. The servers are those registered in the cluster's membership plus the
configured ones; a configured server that is not registered and does not
answer is printed as "<url>  unreachable".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			configured, err := g.serverList()
			if err != nil {
				return err
			}
			registered, regErr := c.Servers(ctx)
			if regErr != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "tandem: the cluster membership is unavailable (%v); asking the configured servers\n", regErr)
			}
			states := allServiceStates(ctx, c, registered, configured)
			if *format == outputJSON {
				if err := writeJSON(cmd.OutOrStdout(), states); err != nil {
					return err
				}
			} else {
				t := newTable(cmd.OutOrStdout())
				var unknown []serviceState
				for _, s := range states {
					if s.ID == "" {
						unknown = append(unknown, s)
						continue
					}
					t.row(s.ID, s.URL, s.State)
				}
				if err := t.flush(); err != nil {
					return err
				}
				for _, s := range unknown {
					fmt.Fprintf(cmd.OutOrStdout(), "%s  %s\n", s.URL, s.State)
				}
				for _, s := range states {
					if s.State == stateUnreachable && s.Registered {
						fmt.Fprintf(cmd.ErrOrStderr(), "tandem: %s: %s\n", cmp.Or(s.ID, s.URL), s.Error)
					}
				}
			}
			if !slices.ContainsFunc(states, func(s serviceState) bool { return s.State != stateUnreachable }) {
				return &exitError{code: 1, err: errors.New("no server answered")}
			}
			return nil
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

// allServiceStates asks every registered server, and every configured server
// not among them, for its own HA state, concurrently. The result lists the
// registered servers in membership order, then the others in configured
// order.
func allServiceStates(ctx context.Context, c *client.Client, registered []tandem.ServerInfo, configured []string) []serviceState {
	var states []serviceState
	known := map[string]bool{}
	for _, s := range registered {
		states = append(states, serviceState{ID: s.ID, URL: s.URL, Registered: true})
		known[sameServerKey(s.URL)] = true
	}
	for _, u := range configured {
		if k := sameServerKey(u); !known[k] {
			known[k] = true
			states = append(states, serviceState{URL: strings.TrimRight(u, "/")})
		}
	}
	var wg sync.WaitGroup
	for i := range states {
		wg.Go(func() {
			s := &states[i]
			st, err := c.ServerStatus(ctx, s.URL)
			if err != nil {
				s.State, s.Error = stateUnreachable, err.Error()
				return
			}
			s.State = string(st.State)
			if s.ID == "" {
				// Configured and answering, but not registered: say who it
				// is (an initializing server, or one cut off from etcd).
				s.ID = st.ID
			}
		})
	}
	wg.Wait()
	// A configured URL that answers as a registered server is another way
	// to that server (a load balancer, a DNS name): the cluster's servers
	// are listed once, however the CLI reached them.
	ids := map[string]bool{}
	for _, s := range registered {
		ids[s.ID] = true
	}
	out := states[:0]
	for _, s := range states {
		if !s.Registered && s.ID != "" && ids[s.ID] {
			continue
		}
		out = append(out, s)
	}
	return out
}

// sameServerKey is what two spellings of one server URL have in common.
func sameServerKey(s string) string {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return s
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[strings.ToLower(u.Scheme)]
	}
	return strings.ToLower(u.Scheme) + "://" + host + ":" + port + strings.TrimRight(u.Path, "/")
}

func newTransitionCmd(g *globals, to tandem.HAState) *cobra.Command {
	var (
		force  bool
		format *outputFormat
	)
	cmd := &cobra.Command{
		Use:   fmt.Sprintf("transition-to-%s ID", to),
		Short: fmt.Sprintf("Make a server %s (refused while automatic failover is on, unless --forcemanual)", to),
		Long: fmt.Sprintf(`Ask a server to become %s and print its resulting state.

While automatic failover is on the server refuses, because a manual transition
can fight the election; --forcemanual overrides that. To move the active role
from one server to another, prefer "tandem admin failover FROM TO".`, to),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			ref, err := resolveServer(ctx, c, args[0])
			if err != nil {
				return err
			}
			st, err := c.Transition(ctx, ref.url, tandem.TransitionRequest{State: to, ForceManual: force})
			if err != nil {
				return fmt.Errorf("transition %s to %s: %w", ref.name(), to, err)
			}
			if *format == outputJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), st.State)
			return err
		},
	}
	cmd.Flags().BoolVar(&force, "forcemanual", false, "transition even though automatic failover is on (risks a fight with the election)")
	format = addOutputFlag(cmd)
	return cmd
}

func newFailoverCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "failover FROM TO",
		Short: "Hand the active role from server FROM to server TO, gracefully",
		Long: `Ask FROM, the active, to hand the active role to TO, and wait until TO is
active. FROM finishes what it was doing and resigns; TO takes over with a new
epoch.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			from, err := resolveServerID(ctx, c, args[0])
			if err != nil {
				return err
			}
			to, err := resolveServerID(ctx, c, args[1])
			if err != nil {
				return err
			}
			if from.id == to.id {
				return usagef("failover: FROM and TO are the same server, %s", from.id)
			}
			start := time.Now()
			st, err := c.Failover(ctx, from.url, tandem.HandoffRequest{From: from.id, To: to.id})
			if err != nil {
				return fmt.Errorf("failover %s -> %s: %w", from.id, to.id, err)
			}
			took := time.Since(start)
			if *format == outputJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			active := st.ActiveID
			if active == "" {
				active = to.id
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "failover %s -> %s done in %dms: %s is active (epoch %d)\n",
				from.id, to.id, took.Milliseconds(), active, st.Epoch)
			return err
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newCheckHealthCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check-health ID",
		Short: "Check a server's health: exit 0 if healthy, 1 if not",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			ref, err := resolveServer(ctx, c, args[0])
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			if err := c.Health(ctx, ref.url); err != nil {
				return &exitError{code: 1, err: fmt.Errorf("%s is not healthy: %w", ref.name(), err)}
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s healthy\n", ref.name())
			return err
		},
	}
}

func newServersCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "servers",
		Short: "List the servers registered in the cluster's membership",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(g, cmd, format, (*client.Client).Servers, func(w io.Writer, servers []tandem.ServerInfo) error {
				t := newTable(w, "ID", "URL", "STATE", "SHARDS", "READY", "PID", "VERSION", "STARTED")
				for _, s := range servers {
					ready := "yes"
					switch {
					case s.Draining:
						ready = "draining"
					case !s.Ready:
						ready = "settling"
					}
					t.row(s.ID, s.URL, string(s.State), strconv.Itoa(s.Shards), ready, strconv.Itoa(s.PID), orDash(s.Version), fmtTime(s.StartedAt))
				}
				return t.flush()
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newShardsCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "shards",
		Short: "List every shard's owner, epoch and since when (one shard: the active)",
		Long: `List every shard with its owner (a server ID), the owner's epoch (the create
revision of its owner key: every write to the shard's jobs is fenced by it),
since when it owns the shard, and in an active-active cluster the server the
target map gives it to and any hand-off under way. -o json gives a list of
objects with at least shard, owner and epoch.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(g, cmd, format, (*client.Client).Shards, func(w io.Writer, shards []tandem.ShardInfo) error {
				t := newTable(w, "SHARD", "OWNER", "EPOCH", "SINCE", "TARGET", "HANDOFF")
				for _, s := range shards {
					epoch := "-"
					if s.Epoch != 0 {
						epoch = strconv.FormatInt(s.Epoch, 10)
					}
					t.row(strconv.Itoa(s.Shard), orDash(s.Owner), epoch, fmtTime(s.Since), orDash(s.Target), orDash(s.HandoffTo))
				}
				return t.flush()
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

// drainStep is how long one drain request waits on the server; the command
// repeats it until the server owns nothing or --wait passes, so no HTTP
// timeout cuts a long drain short.
const drainStep = 5 * time.Second

func newDrainCmd(g *globals) *cobra.Command {
	var format *outputFormat
	var undo bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Move a server's shards away before maintenance, and keep it from taking any",
		Long: `Ask the server ID to give up every shard it owns and take none until
undrained (--undo), and wait until it owns nothing. In an active-active
cluster its shards go to their new targets a few at a time, each with no gap
beyond a few etcd transactions; with one shard, an active server hands the
active role to another server. Draining the last server that could take the
shards is refused. The drain goes on if --wait passes first (exit 1).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if wait <= 0 {
				return usagef("--wait is %v: it must be positive", wait)
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			ref, err := resolveServerID(ctx, c, args[0])
			if err != nil {
				return err
			}
			start := time.Now()
			var st *tandem.ServerStatus
			for {
				step := min(drainStep, time.Until(start.Add(wait)))
				st, err = c.Drain(ctx, ref.url, tandem.DrainRequest{Drain: !undo, WaitMS: int(max(step, time.Millisecond).Milliseconds())})
				if undo || err == nil || tandem.ErrorCode(err) != tandem.EUNAVAILABLE || time.Since(start) >= wait || ctx.Err() != nil {
					break
				}
			}
			if err != nil {
				verb := "drain"
				if undo {
					verb = "undrain"
				}
				return fmt.Errorf("%s %s: %w", verb, ref.name(), err)
			}
			if *format == outputJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			if undo {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s undrained: it takes shards again\n", ref.name())
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s drained in %dms: it owns no shard and takes none until `tandem admin drain --undo %s`\n",
				ref.name(), time.Since(start).Milliseconds(), ref.name())
			return err
		},
	}
	cmd.Flags().BoolVar(&undo, "undo", false, "undrain: let the server take shards again")
	cmd.Flags().DurationVar(&wait, "wait", time.Minute, "how long to wait for the server to own nothing")
	format = addOutputFlag(cmd)
	return cmd
}

func newHistoryCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "history",
		Short: "List the cluster's failovers, oldest first, with their phase durations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(g, cmd, format, (*client.Client).History, func(w io.Writer, events []tandem.FailoverEvent) error {
				sharded := false
				for _, e := range events {
					sharded = sharded || e.Shard != 0
				}
				head := []string{"EPOCH", "TIME", "ACTIVE", "PREVIOUS", "CAUSE", "DETECTION", "ELECTION", "TRANSITION"}
				if sharded {
					head = append([]string{"SHARD"}, head...)
					head[3] = "OWNER"
				}
				t := newTable(w, head...)
				for _, e := range events {
					row := []string{strconv.FormatInt(e.Epoch, 10), fmtTime(e.Time), e.ActiveID, orDash(e.PrevID), e.Cause,
						fmtSeconds(e.DetectionS), fmtSeconds(e.ElectionS), fmtSeconds(e.TransitionS)}
					if sharded {
						row = append([]string{strconv.Itoa(e.Shard)}, row...)
					}
					t.row(row...)
				}
				return t.flush()
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}
