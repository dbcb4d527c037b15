package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/server"
	"github.com/tandemhq/tandem/internal/workflow"
)

func newWorkflowCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workflow",
		Short: "Run workflows: DAGs of jobs that advance exactly once across any failover",
		Long: `A workflow is a set of steps, each a job, with dependencies (needs), per-step
retries and timeouts, trigger rules, conditions on earlier steps' outputs,
parameters, and small outputs a step writes for later steps. Every decision
(start, skip, retry) is committed, fenced, before it takes effect: a finished
step never runs again, and a started step keeps running through a failover
(docs/WORKFLOWS.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newWorkflowRunCmd(g), newWorkflowGetCmd(g), newWorkflowListCmd(g),
		newWorkflowCancelCmd(g), newWorkflowRetryCmd(g))
	return cmd
}

func newWorkflowRunCmd(g *globals) *cobra.Command {
	var (
		file, name, key string
		params          []string
		wait            bool
		poll            time.Duration
		format          *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "run (-f FILE | FILE | -) [--param NAME=VALUE]... [--name N] [--idempotency-key K] [--wait] [-o json]",
		Short: "Start a run of a workflow and print its ID",
		Long: `Start a run of the workflow in FILE and print the run's ID.

FILE is a workflow spec in JSON (the body of POST /v1/workflows: name,
params, steps), or in YAML when its name ends in .yaml or .yml; "-" reads
it from stdin (JSON, or YAML when it does not start with "{"). --param sets
a parameter, overriding the file's value; --name replaces the workflow's
name. The spec is checked here with the server's rules before it is sent.

The run carries an idempotency key (a random one unless --idempotency-key is
given), sent unchanged on every retry and redirect, so failing over never
starts the run twice; rerunning the command with the same key and spec
prints the run started the first time.

--wait follows the run until it ends, printing each step's changes on
stderr, and exits 0 if it succeeded, 1 if not. The wait has no limit unless
the global --timeout is given.`,
		Example: `  tandem workflow run -f diamond.json
  tandem workflow run -f etl.yaml --param day=2030-01-02 --wait
  tandem workflow run - < diamond.json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case file != "" && len(args) > 0:
				return usagef("workflow run: give the workflow once: -f %s or %s, not both", file, args[0])
			case len(args) > 0:
				file = args[0]
			case file == "":
				return usagef("workflow run: no workflow given: use tandem workflow run -f FILE (- for stdin)")
			}
			if poll <= 0 {
				return usagef("--poll is %v: it must be greater than zero", poll)
			}
			spec, err := readWorkflowFile(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			set, err := parsePairs("--param", params)
			if err != nil {
				return err
			}
			if len(set) > 0 {
				spec.Params = maps.Clone(spec.Params)
				if spec.Params == nil {
					spec.Params = map[string]string{}
				}
				maps.Copy(spec.Params, set)
			}
			if cmd.Flags().Changed("name") {
				spec.Name = name
			}
			if err := server.ValidateWorkflow(spec); err != nil {
				return usagef("workflow run: %s", tandem.ErrorMessage(err))
			}
			if wait && !g.changed("timeout") {
				g.timeout = 0 // a workflow may run for hours
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			wf, err := c.RunWorkflow(ctx, spec, client.SubmitOptions{IdempotencyKey: key})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if !wait {
				if *format == outputJSON {
					return writeJSON(w, wf)
				}
				_, err = fmt.Fprintln(w, wf.ID)
				return err
			}
			if *format != outputJSON {
				if _, err := fmt.Fprintln(w, wf.ID); err != nil {
					return err
				}
			}
			return followWorkflow(ctx, g, c, wf, poll, cmd.ErrOrStderr(), func(end *tandem.Workflow) error {
				if *format == outputJSON {
					return writeJSON(w, end)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "the workflow spec, JSON or YAML (- for stdin)")
	f.StringArrayVar(&params, "param", nil, "set parameter NAME=VALUE, overriding the file's (repeatable)")
	f.StringVar(&name, "name", "", "the workflow's name (default: the file's)")
	f.StringVar(&key, "idempotency-key", "", "idempotency key (default: a random one)")
	f.BoolVar(&wait, "wait", false, "follow the run until it ends; exit 0 only if it succeeded")
	f.DurationVar(&poll, "poll", client.DefaultPoll, "with --wait, how often to ask for the run")
	format = addOutputFlag(cmd)
	return cmd
}

// followWorkflow polls run wf until it ends, printing to progress each
// step's change of state as it is seen, then calls done with the ended run.
// It returns nil if the run succeeded, else an exitError of status 1 saying
// how it ended; 130 when interrupted.
func followWorkflow(ctx context.Context, g *globals, c *client.Client, wf *tandem.Workflow, poll time.Duration,
	progress io.Writer, done func(*tandem.Workflow) error) error {
	seen := map[string]string{}
	for _, st := range wf.Steps { // said only once they leave pending
		seen[st.Name] = st.Name + ": " + tandem.StepPending
	}
	for {
		for _, name := range stepOrder(&wf.WorkflowSpec) {
			line := stepProgress(wf, name)
			if seen[name] != line {
				seen[name] = line
				fmt.Fprintf(progress, "%s  %s\n", time.Now().Format("15:04:05"), line)
			}
		}
		if wf.State.Terminal() {
			break
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return &exitError{code: 130, err: errors.New("")} // interrupted (Ctrl-C): no message
			}
			return &exitError{code: 1, err: fmt.Errorf("workflow %s is still %s after --timeout %v", wf.ID, wf.State, g.timeout)}
		case <-time.After(poll):
		}
		next, err := c.GetWorkflow(ctx, wf.ID)
		if err != nil {
			if ctx.Err() != nil {
				continue // said above, with the run as last seen
			}
			return err
		}
		wf = next
	}
	if err := done(wf); err != nil {
		return err
	}
	if wf.State == tandem.WorkflowSucceeded {
		fmt.Fprintf(progress, "workflow %s succeeded\n", wf.ID)
		return nil
	}
	return &exitError{code: 1, err: errors.New(runOutcome(wf))}
}

// stepProgress words one step's state for --wait: "b: running (attempt 2,
// job J)".
func stepProgress(wf *tandem.Workflow, name string) string {
	r, ok := wf.Progress[name]
	if !ok {
		return name + ": " + tandem.StepPending
	}
	var more []string
	if r.Attempt > 0 {
		more = append(more, "attempt "+strconv.Itoa(r.Attempt))
	}
	if r.JobID != "" && !strings.Contains(r.Reason, r.JobID) {
		more = append(more, "job "+r.JobID)
	}
	if r.Reason != "" {
		more = append(more, r.Reason)
	}
	s := name + ": " + r.State
	if len(more) > 0 {
		s += " (" + strings.Join(more, ", ") + ")"
	}
	return s
}

// runOutcome says how an ended run ended: "workflow W failed: REASON".
func runOutcome(wf *tandem.Workflow) string {
	msg := fmt.Sprintf("workflow %s %s", wf.ID, wf.State)
	if wf.Reason != "" {
		msg += ": " + wf.Reason
	}
	return msg
}

// readWorkflowFile reads a workflow spec strictly from path ("-": stdin):
// JSON, or YAML for a .yaml or .yml file (and for stdin that does not start
// with "{"). Malformed documents, unknown fields, wrongly typed values and
// trailing data are usage errors naming the file and, where known, the line.
// A step's job is kept as JSON for the server's validation, which reads it
// strictly too.
func readWorkflowFile(stdin io.Reader, path string) (tandem.WorkflowSpec, error) {
	var (
		spec tandem.WorkflowSpec
		data []byte
		err  error
	)
	name := path
	if path == "-" {
		name = "stdin"
		data, err = io.ReadAll(io.LimitReader(stdin, 4*tandem.MaxWorkflowBytes))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return spec, usagef("workflow file: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return spec, usagef("workflow file %s is empty: want a workflow spec such as {\"name\": \"hello\", \"steps\": [{\"name\": \"a\", \"job\": {\"command\": [\"echo\", \"hi\"]}}]}", name)
	}
	ext := strings.ToLower(filepath.Ext(path))
	if ext == ".yaml" || ext == ".yml" || path == "-" && !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		j, err := yaml.YAMLToJSON(data)
		if err != nil {
			return spec, usagef("workflow file %s: %s", name, strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "))
		}
		if err := decodeWorkflow(j, &spec); err != nil {
			return spec, usagef("workflow file %s: %s", name, err)
		}
		return spec, nil
	}
	if err := decodeWorkflow(data, &spec); err != nil {
		return spec, usagef("workflow file %s: %s", name, err)
	}
	return spec, nil
}

// decodeWorkflow decodes one JSON workflow spec, refusing unknown fields and
// trailing data; its error is in a person's words.
func decodeWorkflow(data []byte, spec *tandem.WorkflowSpec) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(spec); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return errors.New("the file is empty: want a workflow spec")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("line %d: the file ends before the workflow spec does (a missing ] or }?)", lineOf(data, int64(len(data))))
		}
		return errors.New(jsonProblem(data, err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("unexpected data after the workflow spec (line %d)", lineOf(data, dec.InputOffset()))
	}
	return nil
}

func newWorkflowGetCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a workflow run: its graph and each step's state",
		Long: `Show a workflow run: the run's state, its graph drawn from the steps that
need nothing, and every step in the order the run decides them, with what it
needs, its trigger rule and condition, its state, latest attempt, job,
reason and outputs. -o json gives the run as the API returns it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			get := func(c *client.Client, ctx context.Context) (*tandem.Workflow, error) {
				return c.GetWorkflow(ctx, args[0])
			}
			return show(g, cmd, format, get, printWorkflow)
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

// printWorkflow prints a run for people: its fields, its graph, then its
// steps in canonical order.
func printWorkflow(w io.Writer, wf *tandem.Workflow) error {
	state := string(wf.State)
	if wf.Cancelled && !wf.State.Terminal() {
		state += " (cancel requested)"
	}
	fields := [][2]string{
		{"id", wf.ID},
		{"name", orDash(wf.Name)},
		{"state", state},
		{"reason", orDash(wf.Reason)},
		{"params", fmtPairs(wf.Params)},
		{"steps", stepCounts(wf)},
	}
	if wf.ScheduleID != "" {
		fields = append(fields, [2]string{"schedule", wf.ScheduleID}, [2]string{"nominal-time", fmtTime(wf.NominalTime)})
	}
	fields = append(fields, [][2]string{
		{"retried", strconv.Itoa(wf.Retried)},
		{"created", fmtTime(wf.CreatedAt)},
		{"updated", fmtTime(wf.UpdatedAt)},
		{"ended", fmtTimePtr(wf.EndedAt)},
		{"shard", strconv.Itoa(wf.Shard)},
		{"epoch", strconv.FormatInt(wf.Epoch, 10)},
		{"accepted-by", orDash(wf.AcceptedBy)},
		{"idempotency-key", orDash(wf.IdempotencyKey)},
	}...)
	t := newTable(w)
	for _, kv := range fields {
		t.row(kv[0]+":", kv[1])
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(wf.Steps) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	for _, line := range drawWorkflow(wf) {
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w)
	t = newTable(w, "STEP", "NEEDS", "TRIGGER", "WHEN", "STATE", "ATTEMPT", "JOB", "REASON", "OUTPUTS")
	steps := stepsByName(&wf.WorkflowSpec)
	for _, name := range stepOrder(&wf.WorkflowSpec) {
		st := steps[name]
		r := wf.Progress[name]
		trigger := st.Trigger
		if trigger == "" {
			trigger = string(workflow.AllSuccess)
		}
		attempt := "-"
		if r.Attempt > 0 {
			attempt = strconv.Itoa(r.Attempt) + "/" + strconv.Itoa(st.Retries+1)
		}
		t.row(name, orDash(strings.Join(st.Needs, ",")), trigger, truncate(orDash(st.When), maxReasonWidth), wf.StepState(name),
			attempt, orDash(r.JobID), truncate(orDash(r.Reason), maxReasonWidth), fmtPairs(r.Outputs))
	}
	return t.flush()
}

// stepCounts sums up the steps by state: "4 (2 succeeded, 1 running, 1
// pending)", states in their lifecycle order.
func stepCounts(wf *tandem.Workflow) string {
	n := map[string]int{}
	for _, st := range wf.Steps {
		n[wf.StepState(st.Name)]++
	}
	var parts []string
	for _, s := range []string{tandem.StepSucceeded, tandem.StepRunning, tandem.StepPending, tandem.StepFailed,
		tandem.StepSkipped, tandem.StepUpstreamFailed, tandem.StepCancelled} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
			delete(n, s)
		}
	}
	for _, s := range slices.Sorted(maps.Keys(n)) { // a state this CLI does not know yet
		parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
	}
	if len(parts) == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", len(wf.Steps), strings.Join(parts, ", "))
}

func stepsByName(s *tandem.WorkflowSpec) map[string]*tandem.WorkflowStep {
	m := make(map[string]*tandem.WorkflowStep, len(s.Steps))
	for i := range s.Steps {
		m[s.Steps[i].Name] = &s.Steps[i]
	}
	return m
}

// stepOrder returns the step names in the order the run decides them
// (internal/workflow's canonical order): repeatedly, of the steps whose
// needs are all listed, the one with the smallest name. Steps it cannot
// place (a need on a missing step, a cycle: never in a stored run) follow
// in spec order, so every step is shown.
func stepOrder(s *tandem.WorkflowSpec) []string {
	placed := make(map[string]bool, len(s.Steps))
	var order []string
	for len(order) < len(s.Steps) {
		best := ""
		for _, st := range s.Steps {
			if placed[st.Name] || best != "" && st.Name >= best {
				continue
			}
			ready := true
			for _, n := range st.Needs {
				ready = ready && placed[n]
			}
			if ready {
				best = st.Name
			}
		}
		if best == "" {
			break
		}
		placed[best] = true
		order = append(order, best)
	}
	for _, st := range s.Steps {
		if !placed[st.Name] {
			placed[st.Name] = true
			order = append(order, st.Name)
		}
	}
	return order
}

// drawWorkflow draws the run's graph as a tree from the steps that need
// nothing, each step under every step it needs, as cargo tree draws
// dependencies: a step that needs several is drawn in full where a
// depth-first walk (in canonical order) first meets it, and as "name (*)"
// elsewhere. Each step shows its state.
func drawWorkflow(wf *tandem.Workflow) []string {
	order := stepOrder(&wf.WorkflowSpec)
	rank := make(map[string]int, len(order))
	for i, n := range order {
		rank[n] = i
	}
	steps := stepsByName(&wf.WorkflowSpec)
	children := map[string][]string{}
	var roots []string
	for _, name := range order {
		st := steps[name]
		known := 0
		for _, need := range st.Needs {
			if _, ok := rank[need]; ok {
				children[need] = append(children[need], name)
				known++
			}
		}
		if known == 0 {
			roots = append(roots, name)
		}
	}
	for _, c := range children {
		slices.SortFunc(c, func(a, b string) int { return rank[a] - rank[b] })
	}
	var (
		lines  []string
		drawn  = map[string]bool{}
		shared = false
	)
	var walk func(name, prefix, branch string, depth int)
	walk = func(name, prefix, branch string, depth int) {
		label := name + " [" + wf.StepState(name) + "]"
		if drawn[name] {
			lines = append(lines, prefix+branch+name+" (*)")
			shared = true
			return
		}
		drawn[name] = true
		lines = append(lines, prefix+branch+label)
		if depth > len(order) { // a cycle: never in a stored run
			return
		}
		next := prefix
		switch branch {
		case "├── ":
			next += "│   "
		case "└── ":
			next += "    "
		}
		kids := children[name]
		for i, k := range kids {
			b := "├── "
			if i == len(kids)-1 {
				b = "└── "
			}
			walk(k, next, b, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, "", "", 0)
	}
	for _, name := range order { // unreachable from a root: a cycle
		if !drawn[name] {
			walk(name, "", "", 0)
		}
	}
	if shared {
		lines = append(lines, "(*) drawn in full above")
	}
	return lines
}

func newWorkflowListCmd(g *globals) *cobra.Command {
	var (
		state, schedule, after, query string
		limit                         int
		all                           bool
		format                        *outputFormat
	)
	cmd := &cobra.Command{
		Use:   "list [--state S] [--schedule ID] [--limit N] [-o json]",
		Short: "List workflow runs, oldest first",
		Long: `List workflow runs, oldest first, one page at a time (--limit per page, the
server's default is 100). --state keeps the runs in one state (running,
succeeded, failed or cancelled), --schedule those a schedule started, -q
those whose name or ID contains TEXT. Pass the last ID shown as --after for the
next page, or give --all to page through every run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state != "" && !slices.Contains(tandem.WorkflowStates, tandem.WorkflowState(state)) {
				return usagef("--state %q: want running, succeeded, failed or cancelled", state)
			}
			if cmd.Flags().Changed("limit") && (limit < 1 || limit > 1000) {
				return usagef("--limit is %d: it must be from 1 to 1000", limit)
			}
			ctx, cancel, c, err := g.setup(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			f := tandem.WorkflowFilter{State: tandem.WorkflowState(state), Schedule: schedule, Query: query, After: after, Limit: limit}
			runs, next, err := c.ListWorkflows(ctx, f)
			if err != nil {
				return err
			}
			for all && next != "" {
				f.After = next
				var page []*tandem.Workflow
				if page, next, err = c.ListWorkflows(ctx, f); err != nil {
					return err
				}
				runs = append(runs, page...)
			}
			w := cmd.OutOrStdout()
			if *format == outputJSON {
				return writeJSON(w, map[string]any{"workflows": runs, "next": next})
			}
			t := newTable(w, "ID", "NAME", "STATE", "STEPS", "SCHEDULE", "CREATED", "ENDED", "REASON")
			for _, wf := range runs {
				t.row(wf.ID, orDash(wf.Name), string(wf.State), stepsDone(wf), orDash(wf.ScheduleID), fmtTime(wf.CreatedAt),
					fmtTimePtr(wf.EndedAt), truncate(orDash(wf.Reason), maxReasonWidth))
			}
			if err := t.flush(); err != nil {
				return err
			}
			if next != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more runs: add --after %s, or --all\n", next)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only runs in this state: running, succeeded, failed or cancelled")
	f.StringVar(&schedule, "schedule", "", "only runs this schedule started")
	f.StringVarP(&query, "query", "q", "", "only runs whose name or ID contains this")
	f.IntVar(&limit, "limit", 0, "runs per page, 1 to 1000 (default: the server's, 100)")
	f.StringVar(&after, "after", "", "start after this run ID")
	f.BoolVar(&all, "all", false, "page through all runs")
	format = addOutputFlag(cmd)
	return cmd
}

// stepsDone is "finished/total": steps finished for good (succeeded,
// skipped, upstream_failed, cancelled, or failed once the run has ended)
// out of all.
func stepsDone(wf *tandem.Workflow) string {
	done := 0
	for _, st := range wf.Steps {
		switch wf.StepState(st.Name) {
		case tandem.StepPending, tandem.StepRunning:
		case tandem.StepFailed:
			if wf.State.Terminal() {
				done++
			}
		default:
			done++
		}
	}
	return fmt.Sprintf("%d/%d", done, len(wf.Steps))
}

func newWorkflowCancelCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a workflow run",
		Long: `Cancel a workflow run: every step not finished is cancelled (a running step's
job is killed) and no step starts any more; the run ends cancelled once its
running steps have ended. Cancelling a run that has already ended changes
nothing. "tandem workflow retry ID" runs a cancelled run again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			do := func(c *client.Client, ctx context.Context) (*tandem.Workflow, error) {
				return c.CancelWorkflow(ctx, args[0])
			}
			return show(g, cmd, format, do, func(w io.Writer, wf *tandem.Workflow) error {
				var err error
				if wf.State.Terminal() {
					_, err = fmt.Fprintf(w, "workflow %s %s\n", wf.ID, wf.State)
				} else {
					_, err = fmt.Fprintf(w, "workflow %s: cancel requested\n", wf.ID)
				}
				return err
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}

func newWorkflowRetryCmd(g *globals) *cobra.Command {
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "retry ID",
		Short: "Run a failed or cancelled workflow run again from where it failed",
		Long: `Retry a workflow run that ended failed or cancelled: every step that did not
succeed, and every step after one of those, goes back to pending and runs
again as the graph allows; succeeded steps before them keep their state and
outputs and do not run again. The run keeps its ID. A run still running, or
one that succeeded, cannot be retried.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			do := func(c *client.Client, ctx context.Context) (*tandem.Workflow, error) {
				return c.RetryWorkflow(ctx, args[0])
			}
			return show(g, cmd, format, do, func(w io.Writer, wf *tandem.Workflow) error {
				_, err := fmt.Fprintf(w, "workflow %s %s (retry %d)\n", wf.ID, wf.State, wf.Retried)
				return err
			})
		},
	}
	format = addOutputFlag(cmd)
	return cmd
}
