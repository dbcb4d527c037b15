package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/server"
)

func newScheduleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Create and run schedules: jobs or workflows fired at cron times or intervals, exactly once each",
		Long: `A schedule starts a job, or a workflow run, at each of its nominal times: the
times of one or more cron expressions in a time zone, or every interval from
a fixed anchor. Each nominal time ends with exactly one record, fired (with
its run) or skipped with a reason, across any failover (docs/SCHEDULES.md,
docs/WORKFLOWS.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newScheduleCreateCmd(g), newScheduleListCmd(g), newScheduleGetCmd(g),
		newSchedulePauseCmd(g), newScheduleResumeCmd(g), newScheduleTriggerCmd(g),
		newScheduleBackfillCmd(g), newScheduleRunsCmd(g), newScheduleNextCmd(g), newScheduleDeleteCmd(g))
	return cmd
}

func newScheduleCreateCmd(g *globals) *cobra.Command {
	var (
		jf                         jobSpecFlags
		name, tz, overlap, catchup string
		anchor, start, end, key    string
		workflowFile               string
		note                       string
		crons                      []string
		every, jitter, window      time.Duration
		catchupMax, keepF, keepS   int
		paused                     bool
		format                     *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "create [--name N] (--cron EXPR | --every DURATION) [--tz ZONE] [--overlap P] [--catchup P] [flags] (--workflow FILE | -- CMD [ARGS...])",
		Short: "Create a schedule and print its ID",
		Long: `Create a schedule that starts a job running CMD with ARGS at each nominal time,
or, with --workflow FILE, a run of the workflow in FILE (JSON, or YAML for a
.yaml or .yml file; see tandem workflow run), and print the schedule's ID.

Timing: --cron (repeatable: the union of several expressions; five fields or
@daily-style descriptors, read in --tz) or --every (an interval in absolute
time on the grid --anchor + k*every). A fixed-hour time that a spring-forward
change skips fires once at the end of the gap; one in a repeated autumn hour
fires once. --start and --end bound the nominal times; --jitter delays each
fire by a deterministic amount below it.

Policies: --overlap (allow, skip, buffer_one, buffer_all, replace) says what a
time does while the previous run is still live; --catchup (all, latest, none)
with --catchup-window and --catchup-max what the times missed while the whole
cluster was down do. A fire less than the servers' grace late always runs.

The job flags are job submit's (--env, --label, --cpu, --timeout, --file...);
each run is named "<schedule>@<nominal time>" and gets TANDEM_SCHEDULE_ID,
TANDEM_NOMINAL_TIME, TANDEM_INTERVAL_START and TANDEM_INTERVAL_END. With
--workflow the job flags do not apply: each step's job is in the file.`,
		Example: `  tandem schedule create --name nightly --cron '0 2 * * *' --tz Europe/Paris -- ./etl.sh
  tandem schedule create --every 30s --overlap buffer_one -- ./poll.sh
  tandem schedule create --cron '*/15 * * * *' --catchup all --catchup-window 2h -- ./sync.sh
  tandem schedule create --name nightly-etl --cron '0 2 * * *' --workflow etl.json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			spec := tandem.ScheduleSpec{Name: name, Cron: crons, TZ: tz, Overlap: overlap, Catchup: catchup,
				CatchupMax: catchupMax, Paused: paused, PauseNote: note,
				HistoryLimits: tandem.ScheduleHistoryLimits{Fired: keepF, Skipped: keepS}}
			if len(crons) == 0 && !fl.Changed("every") {
				return usagef("schedule create: give --cron EXPR or --every DURATION")
			}
			if fl.Changed("every") {
				if every <= 0 {
					return usagef("--every is %v: give a positive interval such as 30s or 1h", every)
				}
				spec.Every = tandem.Duration(every)
			}
			if jitter < 0 || window < 0 || catchupMax < 0 || keepF < 0 || keepS < 0 {
				return usagef("schedule create: --jitter, --catchup-window, --catchup-max and the --keep-* counts must not be negative")
			}
			spec.Jitter, spec.CatchupWindow = tandem.Duration(jitter), tandem.Duration(window)
			for _, t := range []struct {
				flag, value string
				to          *time.Time
			}{{"--anchor", anchor, &spec.Anchor}, {"--start", start, &spec.Start}, {"--end", end, &spec.End}} {
				if t.value == "" {
					continue
				}
				v, err := time.Parse(time.RFC3339, t.value)
				if err != nil {
					return usagef("%s %q: want a time such as 2030-01-02T15:04:05Z or 2030-01-02T15:04:05+01:00", t.flag, t.value)
				}
				*t.to = v
			}
			if note != "" && !paused {
				return usagef("--pause-note goes with --paused")
			}
			if workflowFile != "" {
				wf, err := scheduleWorkflow(cmd, args, workflowFile)
				if err != nil {
					return err
				}
				spec.Workflow = wf
			} else {
				job, err := jf.spec(cmd, args, "schedule create")
				if err != nil {
					return err
				}
				spec.Job = job
			}
			if err := server.ValidateSchedule(spec); err != nil {
				// The server would answer the same; say it before asking.
				return usagef("schedule create: %s", tandem.ErrorMessage(err))
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			s, err := c.CreateSchedule(ctx, spec, client.SubmitOptions{IdempotencyKey: key})
			if err != nil {
				return err
			}
			if *format == outputJSON {
				return writeJSON(cmd.OutOrStdout(), s)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), s.ID)
			return err
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false) // the job's own flags must not be taken for tandem's
	f.StringVar(&name, "name", "", "the schedule's name (its runs are named <name>@<nominal time>)")
	f.StringArrayVar(&crons, "cron", nil, "a cron expression, five fields or @daily-style (repeatable)")
	f.DurationVar(&every, "every", 0, "fire every interval (absolute time), e.g. 30s or 1h")
	f.StringVar(&anchor, "anchor", "", "the time the --every grid starts from (RFC 3339; default 2000-01-01T00:00:00Z)")
	f.StringVar(&tz, "tz", "", "the time zone cron expressions are read in (default UTC)")
	f.StringVar(&start, "start", "", "no nominal time before this (RFC 3339)")
	f.StringVar(&end, "end", "", "no nominal time after this (RFC 3339)")
	f.DurationVar(&jitter, "jitter", 0, "delay each fire by a deterministic amount below this")
	f.StringVar(&overlap, "overlap", "", "while a run is live: allow, skip (default), buffer_one, buffer_all or replace")
	f.StringVar(&catchup, "catchup", "", "times missed while the cluster was down: all, latest (default) or none")
	f.DurationVar(&window, "catchup-window", 0, "catch up only times this recent (0: any)")
	f.IntVar(&catchupMax, "catchup-max", 0, "with --catchup all, at most this many of the missed times (0: all)")
	f.IntVar(&keepF, "keep-fired", 0, "fired run records to keep (0: the default, 100)")
	f.IntVar(&keepS, "keep-skipped", 0, "skipped run records to keep (0: the default, 100)")
	f.BoolVar(&paused, "paused", false, "create the schedule paused")
	f.StringVar(&note, "pause-note", "", "why it is paused, for the next operator")
	f.StringVar(&key, "idempotency-key", "", "idempotency key (default: a random one)")
	f.StringVar(&workflowFile, "workflow", "", "start a run of the workflow in this file (JSON or YAML, - for stdin) instead of a job")
	jf.register(f, false)
	format = addOutputFlag(cmd)
	return cmd
}

// scheduleJobFlags are the flags of schedule create that describe its job
// (jobSpecFlags.register without --name).
var scheduleJobFlags = []string{"label", "env", "submitter", "workdir", "user", "timeout", "max-attempts",
	"retry-backoff", "cpu", "memory", "constraint", "file"}

// scheduleWorkflow reads the workflow a schedule starts (--workflow FILE),
// which excludes a command and the job flags.
func scheduleWorkflow(cmd *cobra.Command, args []string, file string) (*tandem.WorkflowSpec, error) {
	if len(args) > 0 {
		return nil, usagef("schedule create: give --workflow FILE or -- CMD [ARGS...], not both")
	}
	for _, name := range scheduleJobFlags {
		if cmd.Flags().Changed(name) {
			return nil, usagef("schedule create: --%s describes a job; with --workflow, each step's job is in %s", name, file)
		}
	}
	wf, err := readWorkflowFile(cmd.InOrStdin(), file)
	if err != nil {
		return nil, err
	}
	return &wf, nil // server.ValidateSchedule checks it
}

// scheduleRuns says what a schedule starts: its job's command, or
// "workflow NAME".
func scheduleRuns(s tandem.ScheduleSpec) string {
	if s.Workflow != nil {
		return "workflow " + s.Workflow.Name
	}
	return fmtCommand(s.Job.Command)
}

func newScheduleListCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the schedules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(g, cmd, format, (*client.Client).ListSchedules, func(w io.Writer, all []*tandem.Schedule) error {
				t := newTable(w, "ID", "NAME", "WHEN", "TZ", "OVERLAP", "STATE", "CURSOR", "COMMAND")
				for _, s := range all {
					t.row(s.ID, orDash(s.Name), scheduleWhen(s.ScheduleSpec), orDash(s.TZ), orDash(s.Overlap),
						scheduleState(s), fmtTime(s.Cursor), truncate(scheduleRuns(s.ScheduleSpec), maxCommandWidth))
				}
				return t.flush()
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

// scheduleWhen says when a schedule fires, as given.
func scheduleWhen(s tandem.ScheduleSpec) string {
	if len(s.Cron) > 0 {
		return strings.Join(s.Cron, " | ")
	}
	return "every " + s.Every.Std().String()
}

// scheduleState is active, paused or done.
func scheduleState(s *tandem.Schedule) string {
	switch {
	case s.Done:
		return "done"
	case s.Paused:
		return "paused"
	}
	return "active"
}

func newScheduleGetCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a schedule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			get := func(c *client.Client, ctx context.Context) (*tandem.Schedule, error) {
				return c.GetSchedule(ctx, args[0])
			}
			return show(g, cmd, format, get, func(w io.Writer, s *tandem.Schedule) error {
				t := newTable(w)
				t.row("id:", s.ID)
				t.row("name:", orDash(s.Name))
				t.row("when:", scheduleWhen(s.ScheduleSpec))
				t.row("time zone:", orDash(s.TZ))
				t.row("overlap:", orDash(s.Overlap))
				t.row("catch-up:", orDash(s.Catchup))
				t.row("state:", scheduleState(s))
				if s.Paused {
					t.row("pause note:", orDash(s.PauseNote))
				}
				t.row("cursor:", fmtTime(s.Cursor))
				t.row("shard:", fmt.Sprint(s.Shard))
				if s.Workflow != nil {
					t.row("workflow:", s.Workflow.Name+" ("+strconv.Itoa(len(s.Workflow.Steps))+" steps)")
				} else {
					t.row("command:", fmtCommand(s.Job.Command))
				}
				t.row("created:", fmtTime(s.CreatedAt))
				return t.flush()
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newSchedulePauseCmd(g *globals) *cobra.Command {
	var note string
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "pause ID",
		Short: "Pause a schedule: its times are recorded skipped (paused) until it is resumed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pause := func(c *client.Client, ctx context.Context) (*tandem.Schedule, error) {
				return c.PauseSchedule(ctx, args[0], note)
			}
			return show(g, cmd, format, pause, func(w io.Writer, s *tandem.Schedule) error {
				_, err := fmt.Fprintf(w, "schedule %s paused\n", s.ID)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&note, "note", "", "why, for the next operator")
	format = addOutputFlag(cmd)
	return cmd
}

func newScheduleResumeCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "resume ID",
		Short: "Resume a paused schedule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resume := func(c *client.Client, ctx context.Context) (*tandem.Schedule, error) {
				return c.ResumeSchedule(ctx, args[0])
			}
			return show(g, cmd, format, resume, func(w io.Writer, s *tandem.Schedule) error {
				_, err := fmt.Fprintf(w, "schedule %s resumed\n", s.ID)
				return err
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newScheduleTriggerCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "trigger ID",
		Short: "Start one extra run of a schedule now and print its job's (or workflow run's) ID",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			trigger := func(c *client.Client, ctx context.Context) (*tandem.ScheduleRun, error) {
				return c.TriggerSchedule(ctx, args[0])
			}
			return show(g, cmd, format, trigger, func(w io.Writer, r *tandem.ScheduleRun) error {
				id := r.JobID
				if r.WorkflowID != "" {
					id = r.WorkflowID
				}
				_, err := fmt.Fprintln(w, id)
				return err
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newScheduleBackfillCmd(g *globals) *cobra.Command {
	var from, to string
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "backfill ID --from TIME --to TIME",
		Short: "Run each of a schedule's past nominal times in a range once",
		Long: `Run each nominal time of the schedule in [--from, --to] once (reason backfill),
whatever its catch-up and overlap policies say. Times already backfilled are
not run again, so rerunning the command is safe. The range must end at or
before the schedule's cursor: later times are the schedule's own.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" || to == "" {
				return usagef("schedule backfill: give --from and --to")
			}
			f, err := time.Parse(time.RFC3339, from)
			if err != nil {
				return usagef("--from %q: want a time such as 2030-01-02T15:04:05Z", from)
			}
			t, err := time.Parse(time.RFC3339, to)
			if err != nil {
				return usagef("--to %q: want a time such as 2030-01-02T15:04:05Z", to)
			}
			if t.Before(f) {
				return usagef("--to %s is before --from %s", to, from)
			}
			backfill := func(c *client.Client, ctx context.Context) ([]tandem.ScheduleRun, error) {
				return c.BackfillSchedule(ctx, args[0], f, t)
			}
			return show(g, cmd, format, backfill, printRuns)
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the first nominal time to run (RFC 3339)")
	cmd.Flags().StringVar(&to, "to", "", "the last nominal time to run (RFC 3339)")
	format = addOutputFlag(cmd)
	return cmd
}

func newScheduleRunsCmd(g *globals) *cobra.Command {
	var outcome string
	var limit int
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "runs ID",
		Short: "List a schedule's run records: each nominal time, fired or skipped",
		Long: `List the schedule's run records, oldest first: each nominal time with its
outcome (fired, skipped, or buffered until a live run ends), the reason, and
the job it started. -o json gives every field, among them nominal_time,
outcome, reason and job_id.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch tandem.ScheduleOutcome(outcome) {
			case "", tandem.OutcomeFired, tandem.OutcomeSkipped, tandem.OutcomeBuffered:
			default:
				return usagef("--outcome %q: want fired, skipped or buffered", outcome)
			}
			if limit < 0 {
				return usagef("--limit must not be negative")
			}
			runs := func(c *client.Client, ctx context.Context) ([]tandem.ScheduleRun, error) {
				return c.ScheduleRuns(ctx, args[0], tandem.ScheduleRunFilter{Outcome: tandem.ScheduleOutcome(outcome), Limit: limit})
			}
			return show(g, cmd, format, runs, printRuns)
		},
	}
	cmd.Flags().StringVar(&outcome, "outcome", "", "only fired, skipped or buffered")
	cmd.Flags().IntVar(&limit, "limit", 0, "only the most recent N (0: all kept)")
	format = addOutputFlag(cmd)
	return cmd
}

// printRuns prints run records as a table. The JOB columns of a
// schedule of a workflow show the workflow run and its state.
func printRuns(w io.Writer, runs []tandem.ScheduleRun) error {
	t := newTable(w, "NOMINAL", "THROUGH", "OUTCOME", "REASON", "JOB", "JOB STATE", "LATE")
	for _, r := range runs {
		through := "-"
		if r.Through != nil {
			through = fmtTime(*r.Through)
		}
		id, state := r.JobID, string(r.JobState)
		if r.WorkflowID != "" {
			id, state = "workflow "+r.WorkflowID, string(r.WorkflowState)
		}
		t.row(fmtTime(r.NominalTime), through, string(r.Outcome), orDash(r.Reason), orDash(id), orDash(state),
			fmtDuration(r.Late, "-"))
	}
	return t.flush()
}

func newScheduleNextCmd(g *globals) *cobra.Command {
	var n int
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "next ID",
		Short: "Print a schedule's next nominal times",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 1 {
				return usagef("-n must be at least 1")
			}
			next := func(c *client.Client, ctx context.Context) ([]time.Time, error) { return c.NextTimes(ctx, args[0], n) }
			return show(g, cmd, format, next, func(w io.Writer, times []time.Time) error {
				for _, t := range times {
					if _, err := fmt.Fprintln(w, t.Format(time.RFC3339)); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 5, "how many")
	format = addOutputFlag(cmd)
	return cmd
}

func newScheduleDeleteCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a schedule and its run records (the jobs it started stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			if err := c.DeleteSchedule(ctx, args[0]); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "schedule %s deleted\n", args[0])
			return err
		},
	}
	return cmd
}
