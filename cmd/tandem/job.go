package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

// maxCommandWidth is how much of a job's command `job list` shows.
const maxCommandWidth = 60

func newJobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Submit and inspect jobs",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newJobSubmitCmd(g), newJobListCmd(g), newJobGetCmd(g))
	return cmd
}

func newJobSubmitCmd(g *globals) *cobra.Command {
	var (
		name, key, submitter string
		labels, env          []string
		submitFormat         *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "submit [flags] -- CMD [ARGS...]",
		Short: "Submit a job and print its ID",
		Long: `Submit a job running CMD with ARGS and print the job's ID.

Flags go before the command; everything from the command on belongs to the
job, so "--" is only needed when the command itself starts with "-".

The submission carries an idempotency key (a random one unless
--idempotency-key is given), sent unchanged on every retry and redirect, so
failing over never creates the job twice. Rerunning the command with the same
--idempotency-key and the same job prints the job created the first time.`,
		Example: `  tandem job submit -- sleep 10
  tandem job submit --name nightly --label team=data --env TZ=UTC -- ./etl.sh --full`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("job submit: no command given: use tandem job submit [flags] -- CMD [ARGS...]")
			}
			spec := tandem.JobSpec{Name: name, Command: args, Submitter: submitter}
			var err error
			if spec.Labels, err = parsePairs("--label", labels); err != nil {
				return err
			}
			if spec.Env, err = parsePairs("--env", env); err != nil {
				return err
			}
			if !cmd.Flags().Changed("submitter") {
				spec.Submitter = currentUser()
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			job, err := c.SubmitJob(ctx, spec, client.SubmitOptions{IdempotencyKey: key})
			if err != nil {
				return err
			}
			if *submitFormat == outputJSON {
				return writeJSON(cmd.OutOrStdout(), job)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), job.ID)
			return err
		},
	}
	// The job's own flags must not be taken for tandem's.
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringVar(&name, "name", "", "job name")
	cmd.Flags().StringVar(&key, "idempotency-key", "", "idempotency key (default: a random one)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label KEY=VALUE (repeatable)")
	cmd.Flags().StringArrayVar(&env, "env", nil, "environment variable KEY=VALUE for the job (repeatable)")
	cmd.Flags().StringVar(&submitter, "submitter", "", "who submits the job (default $USER)")
	submitFormat = addOutputFlag(cmd)
	return cmd
}

// parsePairs parses repeated KEY=VALUE flags; a later KEY overrides an
// earlier one.
func parsePairs(flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, usagef("%s %q: want KEY=VALUE", flag, p)
		}
		m[k] = v
	}
	return m, nil
}

// currentUser is the default submitter: $USER, else the account's name.
func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

func newJobListCmd(g *globals) *cobra.Command {
	var (
		limit      int
		state      string
		after      string
		all        bool
		listFormat *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs, oldest first",
		Long: `List jobs, oldest first, one page at a time (--limit per page, the server's
default is 100). Pass the last ID shown as --after for the next page, or give
--all to page through every job.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usagef("--limit is %d: it must not be negative", limit)
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			opts := client.ListOptions{Limit: limit, After: after, State: tandem.JobState(state)}
			list, err := c.ListJobs(ctx, opts)
			if err != nil {
				return err
			}
			for all && list.Next != "" {
				opts.After = list.Next
				page, err := c.ListJobs(ctx, opts)
				if err != nil {
					return err
				}
				list.Jobs = append(list.Jobs, page.Jobs...)
				list.Next = page.Next
			}
			w := cmd.OutOrStdout()
			if *listFormat == outputJSON {
				return writeJSON(w, list)
			}
			t := newTable(w, "ID", "NAME", "STATE", "CREATED", "COMMAND")
			for _, j := range list.Jobs {
				t.row(j.ID, orDash(j.Name), string(j.State), fmtTime(j.CreatedAt), truncate(fmtCommand(j.Command), maxCommandWidth))
			}
			if err := t.flush(); err != nil {
				return err
			}
			if list.Next != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more jobs: add --after %s, or --all\n", list.Next)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "jobs per page, 1 to 1000 (default: the server's, 100)")
	cmd.Flags().StringVar(&state, "state", "", "only jobs in this state, e.g. pending")
	cmd.Flags().StringVar(&after, "after", "", "start after this job ID")
	cmd.Flags().BoolVar(&all, "all", false, "page through all jobs")
	listFormat = addOutputFlag(cmd)
	return cmd
}

func newJobGetCmd(g *globals) *cobra.Command {
	var getFormat *outputFormat
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			job, err := c.GetJob(ctx, args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if *getFormat == outputJSON {
				return writeJSON(w, job)
			}
			t := newTable(w)
			for _, kv := range [][2]string{
				{"id", job.ID},
				{"name", orDash(job.Name)},
				{"state", string(job.State)},
				{"command", fmtCommand(job.Command)},
				{"submitter", orDash(job.Submitter)},
				{"labels", fmtPairs(job.Labels)},
				{"env", fmtPairs(job.Env)},
				{"created", fmtTime(job.CreatedAt)},
				{"updated", fmtTime(job.UpdatedAt)},
				{"epoch", strconv.FormatInt(job.Epoch, 10)},
				{"accepted-by", orDash(job.AcceptedBy)},
				{"idempotency-key", orDash(job.IdempotencyKey)},
			} {
				t.row(kv[0]+":", kv[1])
			}
			return t.flush()
		},
	}
	getFormat = addOutputFlag(cmd)
	return cmd
}
