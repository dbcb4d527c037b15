// Package workflow is the pure core of tandem's workflows (DAGs): the spec
// a user submits, its validation, the rendering of a step's job, the outputs
// a step writes, and Decide, the function that says what to do next from a
// run's durable state. It uses no etcd, HTTP, clock or randomness: a
// level-triggered controller reads a run from etcd, calls Decide, and
// commits the decisions in one transaction fenced by its shard owner's
// epoch (I1) before acting on them. Since Decide is a pure function of the
// stored run (and of the time, for timeouts only), a new owner after a
// failover reaches the same decisions, a finished step is never run again,
// and a started step keeps running (issue 11, point 3).
//
// # Spec
//
// A workflow (the body of POST /v1/workflows) has a name (required, at most
// 256 bytes, no control characters), params (at most 64; names are 1 to 64
// bytes of letters, digits, '_' and '-', starting with a letter or '_';
// values at most 4096 bytes of UTF-8 without NUL) and 1 to 200 steps.
// A step has:
//
//   - name: unique, 1 to 64 bytes of a-z, 0-9, '_' and '-', starting with a
//     letter or a digit;
//   - job: a job spec (tandem.JobSpec, read strictly: unknown fields are
//     refused; at most 64 KiB), valid by JobSpec.Validate; it must not set
//     max_attempts above 1, since retrying is the step's business;
//   - needs: names of other steps, each at most once; the needs must not
//     form a cycle (the error names the cycle's steps);
//   - retries: 0 to 99 (default 0): a step runs at most retries+1 times;
//   - timeout: optional, as "90s" or "5m": an attempt still running that
//     long after it started fails (and is retried if retries remain). This
//     bounds the whole attempt, waiting for an agent included; the job's
//     own timeout, if set, bounds only its run on the agent;
//   - trigger: all_success (default), all_done, one_failed, one_success or
//     none_failed, described below;
//   - when: optional condition, described below.
//
// # Step states
//
// pending (no decision yet), running (attempt n is live), succeeded, failed,
// skipped, upstream_failed, cancelled. A failed step with retries left is
// not finished: its next attempt starts at once (there is no retry delay).
// A step is finished for good when it is succeeded, skipped,
// upstream_failed, cancelled, or failed with no retries left; its state
// and outputs never change again.
//
// # When a step is decided
//
// A pending step is decided only once every step it needs is finished for
// good. So every ancestor of a step (what it needs, what those need, and so
// on) is finished when the step is decided, and its conditions and job see
// final values. This is stricter than Airflow, where one_success and
// one_failed fire as soon as one upstream task has succeeded or failed, and
// all_success marks upstream_failed as soon as one has failed: here a step
// never starts before all it needs have ended. The resulting states are the
// same as Airflow's; only their timing differs.
//
// # Trigger rules (Airflow's meanings)
//
// Over the step's needs, count succeeded, skipped, and "failed": failed,
// upstream_failed or cancelled. With n needs:
//
//	rule          runs when        otherwise
//	all_success   succeeded == n   upstream_failed if failed > 0, else skipped
//	all_done      always           -
//	one_failed    failed >= 1      skipped
//	one_success   succeeded >= 1   skipped if skipped == n, else upstream_failed
//	none_failed   failed == 0      upstream_failed
//
// So, as in Airflow, a skip propagates through all_success steps as
// skipped, a failure as upstream_failed; none_failed runs after skipped
// needs (the join after a branch); one_failed is skipped when nothing it
// needs failed. A step with no needs always passes its trigger rule
// (Airflow does the same for a task without upstream tasks).
//
// # Conditions
//
// If the trigger rule says the step runs and the step has a `when`
// condition, the condition is evaluated; if it is false the step ends
// skipped ("condition is false") and, being skipped, counts as skipped for
// the steps that need it. The language is tiny and has no way to run code:
//
//	cond    = or
//	or      = and { "||" and }
//	and     = unary { "&&" unary }
//	unary   = "!" unary | compare
//	compare = value [ ("==" | "!=") value ]
//	value   = "(" or ")" | string | "true" | "false" | reference
//
// Strings are in double or single quotes (single quotes need no escaping
// inside JSON), with the escapes \\ \" \' \n \t. References are
// params.NAME, steps.STEP.outputs.KEY and steps.STEP.state (the step's
// final state, as "succeeded"). Every reference is a string; == and !=
// compare two strings (or two true/false values); !, && and || take
// true/false operands; the whole condition must be true/false. These types
// are checked when the spec is validated, so a condition cannot fail when
// evaluated. A param must exist in params, and a STEP must be an ancestor
// of the step. An output the step did not write reads as "" (test for it
// with steps.a.outputs.k != ""). Example:
//
//	steps.check.outputs.changed == 'yes' && params.env != 'prod'
//
// # Outputs
//
// An attempt may write small outputs: a file of KEY=VALUE lines, parsed by
// ParseOutputs (at most 4096 bytes of UTF-8; keys as for params; each key
// once; the value is the rest of the line after the first '=', no NUL;
// blank lines and lines starting with '#' are ignored). The outputs of a
// step's latest attempt are those later steps see, whatever its final state.
//
// # Rendering a step's job
//
// In the command arguments and env values of a step's job, ${params.NAME}
// and ${steps.STEP.outputs.KEY} are replaced by their values when an
// attempt is started (Render); "$${" stands for a literal "${", and any
// other '$' is left alone, so $HOME reaches the shell untouched. No other
// field is rendered. References are checked when the spec is validated (the
// param exists, STEP is an ancestor); a missing output is an error when
// rendering, which fails the attempt.
//
// # Decisions
//
// Decide(spec, run, now) returns at most one decision per step (but a
// timeout may be followed by the retry it allows), in the
// canonical order of the steps: repeatedly, of the steps whose needs are
// all already listed, the one with the smallest name (byte order). It
// depends on the graph alone, not on the order of the steps in the spec:
//
//   - cancel, for every unfinished step (pending, running, or failed with
//     retries left), when the run is cancelled; nothing else is decided
//     then. A running step's job is killed;
//   - timeout, for a running step whose timeout has passed at now (never
//     when now is zero): the attempt fails, its job is killed, and a retry
//     follows in the same plan if retries remain;
//   - retry, attempt n+1, for a step whose attempt n failed, if n <= retries;
//   - start, attempt 1, or skip (skipped or upstream_failed, with the
//     reason), for a pending step whose needs have all finished for good,
//     by its trigger rule then its condition.
//
// A skip in a plan counts when the steps after it are decided in the same
// plan, so a chain of skips takes one plan. Any prefix of a plan may be
// committed alone; Decide on the result returns the rest. Plan.NextDeadline
// is the earliest future timeout, when the controller should look again.
//
// # The controller's part
//
// The durable state of a run is a Run: a cancelled flag and a StepRecord
// per step. The controller loops: Decide; commit every decision (Run.Apply
// says exactly how a decision changes the record; start and retry create the
// attempt's job from Render in the same fenced transaction; timeout and
// cancel kill the attempt's job); act; and, when an attempt's job ends,
// record it with Run.Finish, which refuses (ErrStaleReport) the report of an
// attempt that is no longer the running one. Nothing in this package reads
// a clock: now is an argument, and only timeouts depend on it.
//
// # The run's state
//
// A run is running until every step is finished for good. Then it is
// cancelled if it was cancelled and a step ended cancelled; failed if any
// step ended failed, upstream_failed or cancelled; succeeded otherwise
// (every step succeeded or skipped). Unlike Airflow, which looks only at
// the leaves of the DAG, a failure handled by a one_failed or all_done step
// still fails the run: a failure is never hidden. A cancel that arrives
// after every step has finished changes nothing.
package workflow
