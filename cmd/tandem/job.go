package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/store"
)

// How much of a job's command and reason `job list` shows, and of an
// attempt's reason `job get`.
const (
	maxCommandWidth = 60
	maxReasonWidth  = 50
)

func newJobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Submit, inspect, follow and kill jobs",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newJobSubmitCmd(g), newJobListCmd(g), newJobGetCmd(g),
		newJobKillCmd(g), newJobLogsCmd(g), newJobWaitCmd(g))
	return cmd
}

func newJobSubmitCmd(g *globals) *cobra.Command {
	var (
		jf           jobSpecFlags
		key          string
		submitFormat *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "submit [flags] -- CMD [ARGS...]",
		Short: "Submit a job and print its ID",
		Long: `Submit a job running CMD with ARGS and print the job's ID.

Flags go before the command; everything from the command on belongs to the
job, so "--" is only needed when the command itself starts with "-".

--file reads the job from a JSON job spec (the fields of "tandem job get -o
json" that a user chooses: name, command, env, labels, submitter, workdir,
timeout, max_attempts, retry_backoff, resources {cpu, memory_mb},
constraints, user); "-" reads it from stdin. Flags given explicitly override the
file's fields (--env, --label and --constraint override its keys one by one),
and a command given after the flags replaces the file's.

--timeout is the job's: an attempt running longer is killed and fails.

--user runs the job's attempts as that user instead of the agent's default
(its --run-as user). An agent runs attempts only as users it allows
(--allow-users); an attempt naming any other user fails without running.

The submission carries an idempotency key (a random one unless
--idempotency-key is given), sent unchanged on every retry and redirect, so
failing over never creates the job twice. Rerunning the command with the same
--idempotency-key and the same job prints the job created the first time.`,
		Example: `  tandem job submit -- sleep 10
  tandem job submit --name nightly --label team=data --env TZ=UTC -- ./etl.sh --full
  tandem job submit --cpu 2 --memory 4096 --timeout 1h --max-attempts 3 --constraint zone=a -- ./train.sh
  tandem job submit --file etl.json --env DAY=2030-01-02`,
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := jf.spec(cmd, args, "job submit")
			if err != nil {
				return err
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
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.StringVar(&key, "idempotency-key", "", "idempotency key (default: a random one)")
	jf.register(f, true)
	submitFormat = addOutputFlag(cmd)
	return cmd
}

// jobSpecFlags are the flags that describe a job, for job submit and for
// the job a schedule starts (schedule create).
type jobSpecFlags struct {
	name, submitter, workdir, file, runAs string
	labels, env, constraints              []string
	timeout, retryBackoff                 time.Duration
	maxAttempts                           int
	cpu                                   float64
	memory                                int64
	withName                              bool // --name is the job's
}

// register adds the flags to f; withName adds --name (schedule create has
// its own: a scheduled job is named after its schedule and nominal time).
func (jf *jobSpecFlags) register(f *pflag.FlagSet, withName bool) {
	jf.withName = withName
	if withName {
		f.StringVar(&jf.name, "name", "", "job name")
	}
	f.StringArrayVar(&jf.labels, "label", nil, "label KEY=VALUE (repeatable)")
	f.StringArrayVar(&jf.env, "env", nil, "environment variable KEY=VALUE for the job (repeatable)")
	f.StringVar(&jf.submitter, "submitter", "", "who submits the job (default $USER)")
	f.StringVar(&jf.workdir, "workdir", "", "the job's working directory on the agent (default: a fresh one)")
	f.StringVar(&jf.runAs, "user", "", "run the job's attempts as this user, which the agent must allow (default: the agent's --run-as user)")
	// This --timeout shadows the global one: here it is the job's.
	f.DurationVar(&jf.timeout, "timeout", 0, "kill an attempt that runs longer than this, e.g. 30s or 1h (default: no limit)")
	f.IntVar(&jf.maxAttempts, "max-attempts", tandem.DefaultMaxAttempts, "attempts in all, retries included")
	f.DurationVar(&jf.retryBackoff, "retry-backoff", tandem.DefaultRetryBackoff.Std(), "wait before the second attempt, doubling for each later one")
	f.Float64Var(&jf.cpu, "cpu", tandem.DefaultCPU, "CPU cores one attempt needs, e.g. 0.5")
	f.Int64Var(&jf.memory, "memory", tandem.DefaultMemoryMB, "memory one attempt needs, in MiB")
	f.StringArrayVar(&jf.constraints, "constraint", nil, "run only on agents with label KEY=VALUE (repeatable)")
	f.StringVar(&jf.file, "file", "", "read the job spec from this JSON file (- for stdin); flags override its fields")
}

// spec builds the job from --file, the flags given and the command in
// args, and validates it; verb names the command in errors.
func (jf *jobSpecFlags) spec(cmd *cobra.Command, args []string, verb string) (tandem.JobSpec, error) {
	flags := cmd.Flags()
	var spec tandem.JobSpec
	if jf.file != "" {
		var err error
		if spec, err = readSpecFile(cmd.InOrStdin(), jf.file); err != nil {
			return spec, err
		}
	}
	if len(args) > 0 {
		spec.Command = args
	}
	if len(spec.Command) == 0 {
		if jf.file != "" {
			return spec, usagef("%s: no command given: %s has none, and none follows the flags", verb, jf.file)
		}
		return spec, usagef("%s: no command given: use tandem %s [flags] -- CMD [ARGS...]", verb, verb)
	}
	if jf.withName && flags.Changed("name") {
		spec.Name = jf.name
	}
	var err error
	if spec.Labels, err = mergePairs(spec.Labels, "--label", jf.labels); err != nil {
		return spec, err
	}
	if spec.Env, err = mergePairs(spec.Env, "--env", jf.env); err != nil {
		return spec, err
	}
	if spec.Constraints, err = mergePairs(spec.Constraints, "--constraint", jf.constraints); err != nil {
		return spec, err
	}
	switch {
	case flags.Changed("submitter"):
		spec.Submitter = jf.submitter
	case spec.Submitter == "":
		spec.Submitter = currentUser()
	}
	if flags.Changed("workdir") {
		spec.WorkDir = jf.workdir
	}
	if flags.Changed("user") {
		spec.User = jf.runAs
	}
	if flags.Changed("timeout") {
		if jf.timeout < 0 {
			return spec, usagef("--timeout is %v: it must not be negative (0: no limit)", jf.timeout)
		}
		spec.Timeout = tandem.Duration(jf.timeout)
	}
	if flags.Changed("max-attempts") {
		if jf.maxAttempts < 1 || jf.maxAttempts > tandem.MaxMaxAttempts {
			return spec, usagef("--max-attempts is %d: it must be from 1 to %d", jf.maxAttempts, tandem.MaxMaxAttempts)
		}
		spec.MaxAttempts = jf.maxAttempts
	}
	if flags.Changed("retry-backoff") {
		if jf.retryBackoff < 0 {
			return spec, usagef("--retry-backoff is %v: it must not be negative", jf.retryBackoff)
		}
		spec.RetryBackoff = tandem.Duration(jf.retryBackoff)
	}
	if flags.Changed("cpu") {
		if !(jf.cpu > 0) || math.IsInf(jf.cpu, 0) {
			return spec, usagef("--cpu is %v: give the CPU cores the job needs, such as 0.5 or 2", jf.cpu)
		}
		spec.Resources.CPU = jf.cpu
	}
	if flags.Changed("memory") {
		if jf.memory <= 0 {
			return spec, usagef("--memory is %d: give the MiB of memory the job needs, such as 512", jf.memory)
		}
		spec.Resources.MemoryMB = jf.memory
	}
	if err := spec.Validate(); err != nil {
		// The server would answer the same; say it before asking.
		return spec, usagef("%s: %s", verb, tandem.ErrorMessage(err))
	}
	return spec, nil
}

// readSpecFile reads a JSON job spec strictly: malformed JSON, unknown
// fields, wrongly typed values and trailing data are usage errors naming the
// file (and, for syntax errors, the line).
func readSpecFile(stdin io.Reader, path string) (tandem.JobSpec, error) {
	var (
		data []byte
		err  error
	)
	if path == "-" {
		path = "stdin"
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return tandem.JobSpec{}, usagef("--file: %v", err)
	}
	var spec tandem.JobSpec
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return tandem.JobSpec{}, usagef("--file %s: %s", path, jsonProblem(data, err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return tandem.JobSpec{}, usagef("--file %s: unexpected data after the job spec (line %d)", path, lineOf(data, dec.InputOffset()))
	}
	return spec, nil
}

// jsonProblem says what is wrong with a JSON document in a person's words.
func jsonProblem(data []byte, err error) string {
	var (
		se *json.SyntaxError
		te *json.UnmarshalTypeError
	)
	switch {
	case errors.Is(err, io.EOF):
		return "the file is empty: want a JSON job spec such as {\"command\": [\"echo\", \"hi\"]}"
	case errors.As(err, &se):
		return fmt.Sprintf("line %d: %v", lineOf(data, se.Offset), se)
	case errors.As(err, &te) && te.Field != "":
		return fmt.Sprintf("%s: want %s, got %s", te.Field, te.Type, te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// lineOf returns the line number of byte offset off in data.
func lineOf(data []byte, off int64) int {
	off = min(max(off, 0), int64(len(data)))
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// mergePairs applies repeated KEY=VALUE flags over base (from --file): a
// KEY given as a flag overrides the same KEY in base, and a later flag an
// earlier one. base is returned as is when no flag is given.
func mergePairs(base map[string]string, flag string, pairs []string) (map[string]string, error) {
	m, err := parsePairs(flag, pairs)
	if err != nil || m == nil {
		return base, err
	}
	merged := maps.Clone(base)
	if merged == nil {
		return m, nil
	}
	maps.Copy(merged, m)
	return merged, nil
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
		schedule   string
		workflowID string
		all        bool
		listFormat *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs, oldest first",
		Long: `List jobs, oldest first, one page at a time (--limit per page, the server's
default is 100). Pass the last ID shown as --after for the next page, or give
--all to page through every job. --schedule keeps the jobs a schedule
started, --workflow those a workflow run started (one per attempt of a
step).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usagef("--limit is %d: it must not be negative", limit)
			}
			// The server's rules for these filters, said before asking.
			if _, err := store.JobFilterFromQuery(url.Values{"schedule": {schedule}, "workflow": {workflowID}}); err != nil {
				return usagef("job list: %s", tandem.ErrorMessage(err))
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			opts := client.ListOptions{Limit: limit, After: after, State: tandem.JobState(state),
				Schedule: strings.TrimSpace(schedule), Workflow: strings.TrimSpace(workflowID)}
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
			t := newTable(w, "ID", "NAME", "STATE", "ATTEMPTS", "CREATED", "COMMAND", "REASON")
			for _, j := range list.Jobs {
				t.row(j.ID, orDash(j.Name), string(j.State), fmtAttempts(j), fmtTime(j.CreatedAt),
					truncate(fmtCommand(j.Command), maxCommandWidth), truncate(orDash(j.Reason), maxReasonWidth))
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
	cmd.Flags().StringVar(&schedule, "schedule", "", "only jobs this schedule started")
	cmd.Flags().StringVar(&workflowID, "workflow", "", "only jobs this workflow run started")
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
			get := func(c *client.Client, ctx context.Context) (*tandem.Job, error) { return c.GetJob(ctx, args[0]) }
			return show(g, cmd, getFormat, get, printJob)
		},
	}
	getFormat = addOutputFlag(cmd)
	return cmd
}

// printJob prints a job for people: its fields, then its attempts.
func printJob(w io.Writer, job *tandem.Job) error {
	state := string(job.State)
	if job.KillRequested && !job.State.Terminal() {
		state += " (kill requested)"
	}
	fields := [][2]string{
		{"id", job.ID},
		{"name", orDash(job.Name)},
		{"state", state},
		{"reason", orDash(job.Reason)},
	}
	if job.NotBefore != nil && !job.State.Terminal() {
		fields = append(fields, [2]string{"next-attempt", fmtTime(*job.NotBefore)})
	}
	fields = append(fields, [][2]string{
		{"command", fmtCommand(job.Command)},
		{"submitter", orDash(job.Submitter)},
		{"labels", fmtPairs(job.Labels)},
		{"env", fmtPairs(job.Env)},
		{"workdir", orDash(job.WorkDir)},
		{"resources", fmtResources(job.Resources)},
		{"constraints", fmtPairs(job.Constraints)},
		{"timeout", fmtDuration(job.Timeout, "none")},
		{"max-attempts", fmtCount(job.MaxAttempts)},
		{"retry-backoff", fmtDuration(job.RetryBackoff, "-")},
		{"created", fmtTime(job.CreatedAt)},
		{"updated", fmtTime(job.UpdatedAt)},
		{"shard", strconv.Itoa(job.Shard)},
		{"epoch", strconv.FormatInt(job.Epoch, 10)},
		{"accepted-by", orDash(job.AcceptedBy)},
		{"idempotency-key", orDash(job.IdempotencyKey)},
		{"attempts", strconv.Itoa(len(job.Attempts))},
	}...)
	t := newTable(w)
	for _, kv := range fields {
		t.row(kv[0]+":", kv[1])
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(job.Attempts) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable(w, "#", "ID", "AGENT", "STATE", "STARTED", "ENDED", "EXIT/SIGNAL", "REASON")
	for _, a := range job.Attempts {
		t.row(strconv.Itoa(a.Number), a.ID, orDash(a.Agent), string(a.State), fmtTimePtr(a.StartedAt), fmtTimePtr(a.EndedAt),
			fmtExit(a), orDash(a.Reason))
	}
	return t.flush()
}

func newJobKillCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "kill ID",
		Short: "Kill a job",
		Long: `Kill a job. A job no agent has started yet is killed at once; a running one
is killed by its agent, and ends killed once the agent reports ("tandem job
wait ID" waits for that). Killing a job that has already ended fails.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kill := func(c *client.Client, ctx context.Context) (*tandem.Job, error) { return c.KillJob(ctx, args[0]) }
			return show(g, cmd, format, kill, func(w io.Writer, job *tandem.Job) error {
				var err error
				if job.State.Terminal() {
					_, err = fmt.Fprintf(w, "job %s %s\n", job.ID, job.State)
				} else {
					_, err = fmt.Fprintf(w, "job %s: kill requested\n", job.ID)
				}
				return err
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newJobLogsCmd(g *globals) *cobra.Command {
	var (
		follow  bool
		attempt int
	)
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print the output of a job's attempt (stdout and stderr)",
		Long: `Print the output of one attempt of a job, stdout and stderr combined, as the
agent that ran it recorded them: the latest attempt unless --attempt is given.

With -f the output is followed until the attempt ends, across failovers of the
active server: when the stream breaks, it resumes where it was, through
whichever server is active then, so nothing is printed twice or lost. The
global --timeout does not apply to -f unless given explicitly.`,
		Example: `  tandem job logs 01m7z5gt2d0000
  tandem job logs -f 01m7z5gt2d0000
  tandem job logs --attempt 1 01m7z5gt2d0000`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if attempt < 0 {
				return usagef("--attempt is %d: give an attempt number (1, 2, ...), or 0 for the latest", attempt)
			}
			if follow && !g.changed("timeout") {
				g.timeout = 0 // a followed attempt may run for hours
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			w := cmd.OutOrStdout()
			opts := client.LogOptions{Attempt: attempt}
			if follow {
				err = c.FollowJobLogs(ctx, args[0], opts, w)
			} else {
				var body io.ReadCloser
				if body, err = c.JobLogs(ctx, args[0], opts); err != nil {
					return err
				}
				defer body.Close()
				if _, err = io.Copy(w, body); err != nil {
					err = fmt.Errorf("logs of job %q: %w", args[0], err)
				}
			}
			if err != nil && errors.Is(ctx.Err(), context.Canceled) {
				return &exitError{code: 130, err: errors.New("")} // interrupted (Ctrl-C): no message
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until the attempt ends")
	cmd.Flags().IntVar(&attempt, "attempt", 0, "attempt number, 1 for the first (default: the latest)")
	return cmd
}

func newJobWaitCmd(g *globals) *cobra.Command {
	var (
		poll   time.Duration
		format *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "wait ID",
		Short: "Wait for a job to end: exit 0 if it succeeded, 1 if not",
		Long: `Wait until a job has ended. Exit 0 if it succeeded; otherwise print how it
ended and why (failed, killed or lost) and exit 1. The global --timeout bounds
the wait (default 30s; 0 waits for ever): when it runs out, say what state the
job is still in and exit 1. With -o json the job is printed as it ended.`,
		Example: `  tandem job wait 01m7z5gt2d0000 && echo done
  tandem --timeout 0 job wait --poll 1s 01m7z5gt2d0000`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if poll <= 0 {
				return usagef("--poll is %v: it must be greater than zero", poll)
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			job, err := c.WaitJob(ctx, args[0], poll)
			if err != nil {
				if job != nil && errors.Is(err, context.DeadlineExceeded) {
					return &exitError{code: 1, err: fmt.Errorf("job %s is still %s after --timeout %v", job.ID, job.State, g.timeout)}
				}
				return err
			}
			if *format == outputJSON {
				if err := writeJSON(cmd.OutOrStdout(), job); err != nil {
					return err
				}
			}
			if job.State == tandem.JobSucceeded {
				return nil
			}
			msg := fmt.Sprintf("job %s %s", job.ID, job.State)
			if job.Reason != "" {
				msg += ": " + job.Reason
			}
			return &exitError{code: 1, err: errors.New(msg)}
		},
	}
	cmd.Flags().DurationVar(&poll, "poll", client.DefaultPoll, "how often to ask for the job")
	format = addOutputFlag(cmd)
	return cmd
}
