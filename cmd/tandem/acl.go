package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/acl"
)

func newACLCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "acl",
		Short: "API tokens and policies (servers started with --acl)",
		Long: `API tokens and policies. Servers started with --acl require a bearer token on
every route but /isActive, /healthz, /metrics and the agents' sync; the CLI
sends the one given by --token, $TANDEM_TOKEN or the config file's cluster.

Policies, each allowing what the ones before it allow:
  read        read jobs, logs, agents, servers, shards, HA state and history
  submit      submit and kill jobs
  operator    HA transitions, failover, drain
  management  make, list and delete tokens

See docs/SECURITY.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	token := &cobra.Command{
		Use:   "token",
		Short: "Make, list, delete and inspect tokens",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	token.AddCommand(newTokenCreateCmd(g), newTokenListCmd(g), newTokenDeleteCmd(g), newTokenSelfCmd(g))
	cmd.AddCommand(newACLBootstrapCmd(g), token)
	return cmd
}

// printNewToken shows a new token with its secret, which is shown only now.
func printNewToken(w io.Writer, nt *client.NewToken) error {
	_, err := fmt.Fprintf(w, "accessor:   %s\nname:       %s\npolicy:     %s\nexpires:    %s\nsecret:     %s\n\nThe secret is shown only this once: keep it (export TANDEM_TOKEN=%s).\n",
		nt.Accessor, nt.Name, nt.Policy, fmtTimePtr(nt.ExpiresAt), nt.Secret, nt.Secret)
	return err
}

func newACLBootstrapCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Make the cluster's first management token (once)",
		Long: `Make the cluster's first management token. It works once per cluster: a second
bootstrap is refused, and of two at the same time exactly one succeeds. Keep
the secret it prints: it is stored nowhere.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(g, cmd, format, (*client.Client).Bootstrap, printNewToken)
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newTokenCreateCmd(g *globals) *cobra.Command {
	var (
		format       *outputFormat
		name, policy string
		ttl          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --name NAME --policy POLICY [--ttl D]",
		Short: "Make a token (needs a management token)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := client.TokenRequest{Name: name, Policy: acl.Policy(policy)}
			if ttl != 0 {
				req.TTL = ttl.String()
			}
			if name == "" {
				return usagef("--name is required: name the token after who or what will use it, e.g. --name ci")
			}
			if policy == "" {
				return usagef("--policy is required: one of %v", acl.Policies)
			}
			if ttl < 0 {
				return usagef("--ttl is %v: it must not be negative (0: the token never expires)", ttl)
			}
			if _, err := req.Validate(); err != nil {
				return usagef("%s", err.Error())
			}
			create := func(c *client.Client, ctx context.Context) (*client.NewToken, error) { return c.CreateToken(ctx, req) }
			return show(g, cmd, format, create, printNewToken)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the token's name, e.g. ci or alice (required)")
	cmd.Flags().StringVar(&policy, "policy", "", "read, submit, operator or management (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "how long the token lives, e.g. 24h (default: forever)")
	format = addOutputFlag(cmd)
	return cmd
}

func newTokenListCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tokens (needs a management token); secrets are never shown",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(g, cmd, format, (*client.Client).ListTokens, func(w io.Writer, toks []client.Token) error {
				now := time.Now()
				t := newTable(w, "ACCESSOR", "NAME", "POLICY", "CREATED", "EXPIRES")
				for _, tok := range toks {
					exp := fmtTimePtr(tok.ExpiresAt)
					if tok.Expired(now) {
						exp += " (expired)"
					}
					t.row(tok.Accessor, tok.Name, string(tok.Policy), fmtTime(tok.CreatedAt), exp)
				}
				return t.flush()
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newTokenDeleteCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "delete ACCESSOR",
		Short: "Delete (revoke) a token (needs a management token)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := acl.ValidAccessor(args[0]); err != nil {
				return usagef("%s", err.Error())
			}
			del := func(c *client.Client, ctx context.Context) (*client.Token, error) { return c.DeleteToken(ctx, args[0]) }
			return show(g, cmd, format, del, func(w io.Writer, t *client.Token) error {
				_, err := fmt.Fprintf(w, "token %s (%s, %s) deleted\n", t.Accessor, t.Name, t.Policy)
				return err
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newTokenSelfCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "self",
		Short: "Show the token the CLI sends",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(g, cmd, format, (*client.Client).TokenSelf, func(w io.Writer, t *client.Token) error {
				_, err := fmt.Fprintf(w, "accessor:   %s\nname:       %s\npolicy:     %s\ncreated:    %s\nexpires:    %s\n",
					t.Accessor, t.Name, t.Policy, fmtTime(t.CreatedAt), fmtTimePtr(t.ExpiresAt))
				return err
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}
