package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/schedule"
	"github.com/tandemhq/tandem/internal/server"
)

// Schedules (issue 11): how late fires commit and launch, in steady state
// and when their nominal time falls in a failover, and whether every
// nominal time ended with exactly one record (I7) under each kind of fault.
//
// The counting (ReadSchedules, CheckSchedule, ScheduleCounts) is the fault
// suite's check too (e2e/nemesis_schedules_test.go): one definition of
// expected, fired, skipped, missed and doubled for both.

// ---- Counting: I7 from the stored records ----

// ScheduleRecords is one schedule and every run record it has, oldest first.
type ScheduleRecords struct {
	Schedule tandem.Schedule
	Runs     []tandem.ScheduleRun
}

// ScheduledJobs indexes the runs schedules started, jobs and workflow runs:
// schedule ID, then nominal time (UTC), then the IDs of the runs carrying
// that time.
type ScheduledJobs map[string]map[time.Time][]string

// AddWorkflow indexes wf if a schedule started it; other runs are ignored.
// (The jobs of its steps carry no schedule: the run is the fire's one run.)
func (m ScheduledJobs) AddWorkflow(wf *tandem.Workflow) {
	if wf == nil || wf.ScheduleID == "" {
		return
	}
	if m[wf.ScheduleID] == nil {
		m[wf.ScheduleID] = map[time.Time][]string{}
	}
	t := wf.NominalTime.UTC()
	m[wf.ScheduleID][t] = append(m[wf.ScheduleID][t], wf.ID)
}

// Add indexes j if a schedule started it; other jobs are ignored.
func (m ScheduledJobs) Add(j *tandem.Job) {
	if j == nil || j.ScheduleID == "" {
		return
	}
	if m[j.ScheduleID] == nil {
		m[j.ScheduleID] = map[time.Time][]string{}
	}
	t := j.NominalTime.UTC()
	m[j.ScheduleID][t] = append(m[j.ScheduleID][t], j.ID)
}

// ScheduleCheck is what CheckSchedule found for one schedule. Times are
// counted one by one: a merged skip record of k times counts k.
type ScheduleCheck struct {
	// Expected is how many nominal times lie after the schedule's creation
	// up to its cursor, or up to the window's limit (CheckWindow) when the
	// cursor stopped short of it: each must end with exactly one record.
	Expected int
	// Fired and Skipped count the times the schedule's own records cover
	// (manual and backfill runs are not nominal times and are left out);
	// SkippedBy splits Skipped by reason. A time skipped (paused) that
	// fell due well before the pause is counted missed, not skipped.
	Fired, Skipped int
	SkippedBy      map[string]int
	// Missed lists the expected times (RFC 3339) without a record, or
	// whose record hides a miss (with why); Doubled describes each time
	// with more than one record, each record of a time that is not
	// expected, each fired time with other than one job, and each job of
	// the schedule that no fired record names.
	Missed, Doubled []string
}

// CheckWindow says what CheckSchedule demands beyond the stored cursor, so
// that a controller that stopped cannot hide its misses: behind a cursor
// it never moved, or behind a pause that swept its backlog into one
// skipped (paused) record. The zero value demands records up to the cursor
// only.
type CheckWindow struct {
	// Until: every nominal time due at or before Until minus Grace must
	// have a record, wherever the cursor is. The fault suite passes the
	// moment it asked for the pause (by then the owner must have decided
	// every due time, and once paused it records the rest at once);
	// tandem bench schedules the schedules' end, after waiting for them to
	// be decided.
	Until time.Time
	// PausedAt is when the checker asked for the schedule to be paused
	// (zero: it was not). A nominal time due at or before PausedAt minus
	// Grace that is recorded skipped (paused) is missed: it fell due while
	// the schedule ran, and only an owner that had stalled leaves it
	// undecided for the pause to sweep.
	PausedAt time.Time
	// Grace is how long after its due time a nominal time may still be
	// undecided without being missed: the servers' schedule grace (a fire
	// less than that late always runs).
	Grace time.Duration
}

// CheckSchedule checks I7 for one schedule: every nominal time from its
// creation to its cursor, and to the window's limit (CheckWindow), computed
// from the stored spec as the servers compute it, has exactly one record;
// every fired time exactly one job among jobs (the schedule's entry of a
// ScheduledJobs), the one its record names; and every job of the schedule
// a fired record. History limits must keep every record (the fault suite
// and the bench keep a million). It fails only if the stored spec cannot
// be compiled.
func CheckSchedule(rec ScheduleRecords, jobs map[time.Time][]string, w CheckWindow) (ScheduleCheck, error) {
	s := rec.Schedule
	k := ScheduleCheck{SkippedBy: map[string]int{}}
	tt, err := schedule.NewTimetable(server.SpecOf(s.ScheduleSpec))
	if err != nil {
		return k, fmt.Errorf("schedule %s: %w", s.ID, err)
	}
	expected := tt.List(s.CreatedAt, s.Cursor, 1<<22)
	// Times after the cursor that were due by the window's limit: a
	// stalled owner's backlog, missed unless a record covers them.
	var beyond []time.Time
	if limit := w.Until.Add(-w.Grace); !w.Until.IsZero() && limit.After(s.Cursor) {
		from := s.Cursor
		if s.CreatedAt.After(from) {
			from = s.CreatedAt
		}
		for _, t := range tt.List(from, limit, 1<<22) {
			if !tt.Due(s.ID, t).After(limit) {
				beyond = append(beyond, t)
			}
		}
		expected = append(expected, beyond...)
	}
	k.Expected = len(expected)
	covered := map[time.Time]int{}
	var fired []tandem.ScheduleRun
	named := map[string]bool{} // the runs fired records name, extra runs included
	extra := map[string]bool{} // those of manual and backfill runs
	hidden := map[time.Time]bool{}
	pausedLimit := w.PausedAt.Add(-w.Grace)
	for _, r := range rec.Runs {
		run := r.JobID + r.WorkflowID
		if r.Outcome == tandem.OutcomeFired && run != "" {
			named[run] = true
		}
		if r.Reason == tandem.ReasonManual || r.Reason == tandem.ReasonBackfill {
			extra[run] = true
			continue // not one of the schedule's own times
		}
		times := []time.Time{r.NominalTime}
		if r.Through != nil {
			times = tt.List(r.NominalTime.Add(-time.Nanosecond), *r.Through, 1<<22)
		}
		for _, t := range times {
			covered[t.UTC()]++
		}
		switch r.Outcome {
		case tandem.OutcomeFired:
			k.Fired += len(times)
			fired = append(fired, r)
		case tandem.OutcomeSkipped:
			for _, t := range times {
				if r.Reason == tandem.ReasonPaused && !w.PausedAt.IsZero() && !tt.Due(s.ID, t).After(pausedLimit) {
					hidden[t.UTC()] = true // counted missed below
					continue
				}
				k.Skipped++
				k.SkippedBy[r.Reason]++
			}
		}
	}
	want := map[time.Time]bool{}
	cursor := s.Cursor.UTC().Format(time.RFC3339Nano)
	isBeyond := map[time.Time]bool{}
	for _, t := range beyond {
		isBeyond[t.UTC()] = true
	}
	for _, t := range expected {
		t = t.UTC()
		want[t] = true
		name := t.Format(time.RFC3339Nano)
		switch n := covered[t]; {
		case n == 0 && isBeyond[t]:
			k.Missed = append(k.Missed, fmt.Sprintf("%s (no record: due by %s, but the cursor stopped at %s)",
				name, w.Until.Add(-w.Grace).UTC().Format(time.RFC3339Nano), cursor))
		case n == 0:
			k.Missed = append(k.Missed, name)
		case n > 1:
			k.Doubled = append(k.Doubled, fmt.Sprintf("%s (%d records)", name, n))
		case hidden[t]:
			k.Missed = append(k.Missed, fmt.Sprintf("%s (skipped paused, though due more than %s before the pause at %s)",
				name, w.Grace, w.PausedAt.UTC().Format(time.RFC3339Nano)))
		}
	}
	var stray []string
	for t := range covered {
		if !want[t] {
			stray = append(stray, fmt.Sprintf("%s (a record of no nominal time between creation and cursor)", t.Format(time.RFC3339Nano)))
		}
	}
	sort.Strings(stray) // map order would make the report differ run to run
	k.Doubled = append(k.Doubled, stray...)
	own := map[time.Time]bool{}
	for _, r := range fired {
		// A fire starts one job or one workflow run, the one its record
		// names (a manual or backfill run of the same time aside).
		t := r.NominalTime.UTC()
		own[t] = true
		var ids []string
		for _, id := range jobs[t] {
			if !extra[id] {
				ids = append(ids, id)
			}
		}
		run := r.JobID + r.WorkflowID
		if len(ids) != 1 || run != "" && ids[0] != run {
			k.Doubled = append(k.Doubled, fmt.Sprintf("%s fired with jobs %v", t.Format(time.RFC3339Nano), ids))
		}
	}
	// A run no fired record names started without its time being decided
	// fired (recorded skipped, or not at all): a time run once more than
	// recorded. Those at a fired time are counted just above.
	var orphans []string
	for t, ids := range jobs {
		if own[t.UTC()] {
			continue
		}
		for _, id := range ids {
			if !named[id] {
				orphans = append(orphans, fmt.Sprintf("%s: job %s has no fired record", t.UTC().Format(time.RFC3339Nano), id))
			}
		}
	}
	sort.Strings(orphans)
	k.Doubled = append(k.Doubled, orphans...)
	return k, nil
}

// ScheduleCounts sums ScheduleChecks over schedules. Missed and Doubled
// must be 0 (I7).
type ScheduleCounts struct {
	Schedules int            `json:"schedules"`
	Expected  int            `json:"expected"`
	Fired     int            `json:"fired"`
	Skipped   int            `json:"skipped"`
	SkippedBy map[string]int `json:"skipped_by,omitempty"`
	Missed    int            `json:"missed"`
	Doubled   int            `json:"doubled"`
}

// Add counts one schedule's check.
func (c *ScheduleCounts) Add(k ScheduleCheck) {
	c.Schedules++
	c.Expected += k.Expected
	c.Fired += k.Fired
	c.Skipped += k.Skipped
	for r, n := range k.SkippedBy {
		if c.SkippedBy == nil {
			c.SkippedBy = map[string]int{}
		}
		c.SkippedBy[r] += n
	}
	c.Missed += len(k.Missed)
	c.Doubled += len(k.Doubled)
}

// SkippedReasons formats SkippedBy as "paused 3, overlap 1", by reason.
func (c ScheduleCounts) SkippedReasons() string {
	reasons := make([]string, 0, len(c.SkippedBy))
	for r, k := range c.SkippedBy {
		reasons = append(reasons, fmt.Sprintf("%s %d", r, k))
	}
	sort.Strings(reasons)
	return strings.Join(reasons, ", ")
}

func (c ScheduleCounts) String() string {
	return fmt.Sprintf("schedules %d: nominal times expected %d, fired %d, skipped %d (%s), missed %d, doubled %d",
		c.Schedules, c.Expected, c.Fired, c.Skipped, c.SkippedReasons(), c.Missed, c.Doubled)
}

// getAll reads every key under prefix at revision rev (0: now), a page at a
// time so that thousands of records never make one huge answer.
func getAll(ctx context.Context, cli *clientv3.Client, prefix string, rev int64, each func(key string, value []byte) error) error {
	const page = 1000
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, from, opts...)
		if err != nil {
			return fmt.Errorf("read %s: %w", prefix, err)
		}
		for _, kv := range resp.Kvs {
			if err := each(string(kv.Key), kv.Value); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		if rev == 0 {
			// Every page at the first page's revision. (With rev given,
			// the header's revision is etcd's current one, not rev.)
			rev = resp.Header.Revision
		}
	}
}

// ReadSchedules reads every schedule of the cluster and its run records from
// etcd at revision rev (0: now), sorted by schedule ID.
func ReadSchedules(ctx context.Context, cli *clientv3.Client, layout keys.Layout, rev int64) ([]ScheduleRecords, error) {
	if rev == 0 {
		r, err := etcdRevision(ctx, cli, layout)
		if err != nil {
			return nil, err
		}
		rev = r
	}
	byID := map[string]*ScheduleRecords{}
	err := getAll(ctx, cli, layout.SchedulesPrefix(), rev, func(key string, v []byte) error {
		var s tandem.Schedule
		if err := json.Unmarshal(v, &s); err != nil {
			return fmt.Errorf("schedule record %s: %w", key, err)
		}
		byID[s.ID] = &ScheduleRecords{Schedule: s}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = getAll(ctx, cli, layout.FiresPrefix(), rev, func(key string, v []byte) error {
		id, _, _, ok := layout.ParseFire(key)
		if !ok {
			return nil
		}
		var r tandem.ScheduleRun
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("run record %s: %w", key, err)
		}
		if rec := byID[id]; rec != nil { // keys sort by time: runs stay oldest first
			rec.Runs = append(rec.Runs, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]ScheduleRecords, 0, len(byID))
	for _, rec := range byID {
		out = append(out, *rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Schedule.ID < out[j].Schedule.ID })
	return out, nil
}

// readJobs reads every job record at revision rev.
func readJobs(ctx context.Context, cli *clientv3.Client, layout keys.Layout, rev int64) (map[string]*tandem.Job, error) {
	jobs := map[string]*tandem.Job{}
	err := getAll(ctx, cli, layout.JobsPrefix(), rev, func(key string, v []byte) error {
		var j tandem.Job
		if err := json.Unmarshal(v, &j); err != nil {
			return fmt.Errorf("job record %s: %w", key, err)
		}
		jobs[j.ID] = &j
		return nil
	})
	return jobs, err
}

// ---- Lateness ----

// A server's CommittedAt is its schedule controller's clock, which it holds
// back by how far it believes it runs ahead of its peers (peerClocks in
// internal/server, from the whole-second Date headers of their answers): on
// one machine, where every clock is the same, that belief is up to a second
// too high, so CommittedAt can be earlier than the true commit. The bench
// therefore times each commit itself, when its etcd watch of the run
// records delivers the record (an upper bound by the watch's delay), and
// reports CommittedAt minus nominal time beside it as "recorded".

// FailoverWindow is one failover as the bench saw it: from the fault it
// injected into the owner to the first fire of the new owner, as the
// bench's watch saw it committed.
type FailoverWindow struct {
	From, To time.Time
}

// fireTimes is one fire of a schedule's own nominal time, and when it
// committed and launched.
type fireTimes struct {
	Nominal time.Time
	// Committed is when the bench saw the run record committed (its
	// watch); Recorded is the record's CommittedAt (the server's held-back
	// clock).
	Committed, Recorded time.Time
	// Launched is the job's first attempt's StartedAt (its agent's clock),
	// zero if it never started.
	Launched time.Time
}

// fireKey names a run record of a schedule's own nominal time.
func fireKey(scheduleID string, nominal time.Time) string {
	return scheduleID + "@" + nominal.UTC().Format(time.RFC3339Nano)
}

// firesOf returns the fires of recs with their times: seen holds when the
// bench saw each run record committed (by fireKey); a record it did not see
// (there should be none) counts from its CommittedAt, and unseen says how
// many did.
func firesOf(recs []ScheduleRecords, jobs map[string]*tandem.Job, seen map[string]time.Time) (fs []fireTimes, unseen int) {
	for _, rec := range recs {
		for _, r := range rec.Runs {
			if r.Outcome != tandem.OutcomeFired || r.Reason == tandem.ReasonManual || r.Reason == tandem.ReasonBackfill {
				continue
			}
			f := fireTimes{Nominal: r.NominalTime, Recorded: r.CommittedAt}
			if at, ok := seen[fireKey(rec.Schedule.ID, r.NominalTime)]; ok {
				f.Committed = at
			} else {
				f.Committed = r.CommittedAt
				unseen++
			}
			if j := jobs[r.JobID]; j != nil && len(j.Attempts) > 0 && j.Attempts[0].StartedAt != nil {
				f.Launched = *j.Attempts[0].StartedAt
			}
			fs = append(fs, f)
		}
	}
	return fs, unseen
}

// inFailover reports whether a fire belongs to a failover: its nominal time
// came no later than the new owner's first commit, and it was committed
// after the fault, so at some moment of the failover it was due (or about
// to be) and undecided. That is every time that falls in the window, and
// the few due just before the fault that the old owner had not committed.
func inFailover(f fireTimes, ws []FailoverWindow) bool {
	for _, w := range ws {
		if !f.Nominal.After(w.To) && f.Committed.After(w.From) {
			return true
		}
	}
	return false
}

// Lateness is how late fires were, in seconds after their nominal time.
type Lateness struct {
	// Commit is when the bench saw the run record committed minus the
	// nominal time; Recorded is the record's CommittedAt minus the nominal
	// time (what the server believes, and its lateness metric shows);
	// Launch is the fired job's first attempt's StartedAt minus the nominal
	// time. On one machine every clock is the bench's.
	Commit   Summary `json:"commit_s"`
	Recorded Summary `json:"recorded_commit_s"`
	Launch   Summary `json:"launch_s"`
}

// latenesses splits fires into steady state and failovers (ws) and returns
// how late each group committed and launched, and how many fires never
// launched.
func latenesses(fs []fireTimes, ws []FailoverWindow) (steady, failover Lateness, notLaunched int) {
	var s, f [3][]time.Duration
	for _, x := range fs {
		g := &s
		if inFailover(x, ws) {
			g = &f
		}
		g[0] = append(g[0], x.Committed.Sub(x.Nominal))
		g[1] = append(g[1], x.Recorded.Sub(x.Nominal))
		if x.Launched.IsZero() {
			notLaunched++
			continue
		}
		g[2] = append(g[2], x.Launched.Sub(x.Nominal))
	}
	sum := func(g [3][]time.Duration) Lateness {
		return Lateness{Commit: Summarize(g[0]), Recorded: Summarize(g[1]), Launch: Summarize(g[2])}
	}
	return sum(s), sum(f), notLaunched
}

// countInFailover counts the fires that belong to failover w.
func countInFailover(fs []fireTimes, w FailoverWindow) int {
	n := 0
	for _, f := range fs {
		if inFailover(f, []FailoverWindow{w}) {
			n++
		}
	}
	return n
}

// countCommitted counts the fires committed in [from, to).
func countCommitted(fs []fireTimes, from, to time.Time) int {
	n := 0
	for _, f := range fs {
		if !f.Committed.Before(from) && f.Committed.Before(to) {
			n++
		}
	}
	return n
}

// ---- The run ----

// Faults RunSchedules can inject into the schedules' owner (the active).
const (
	SchedFaultNone      = "none"      // no fault: steady state only
	SchedFaultKill9     = "kill9"     // kill -9 of the owner, restarted once the new owner fired
	SchedFaultSigstop   = "sigstop"   // SIGSTOP of the owner, SIGCONT once the new owner fired
	SchedFaultPartition = "partition" // the owner cut off from etcd and its peers, healed once the new owner fired
)

// ScheduleFaults lists the faults RunSchedules knows.
var ScheduleFaults = []string{SchedFaultNone, SchedFaultKill9, SchedFaultSigstop, SchedFaultPartition}

// MaxBenchSchedules caps SchedulesConfig.Schedules.
const MaxBenchSchedules = 10000

// SchedulesConfig configures RunSchedules. Zero values take the defaults
// noted.
type SchedulesConfig struct {
	Binary    string        // the tandem binary to run servers and agents with (required)
	Schedules int           // schedules (default 40)
	Every     time.Duration // their interval (default 1s, at least 1s)
	// Aligned puts every schedule on the same grid (the default anchor), so
	// they all fall due at once, like cron jobs at :00; otherwise their
	// anchors are spread evenly over Every.
	Aligned bool
	// Duration is how long the schedules fire: each ends (its End) Duration
	// after the bench starts creating them (default 60s).
	Duration time.Duration
	Fault    string        // one of ScheduleFaults (default none)
	Trials   int           // faults injected, evenly spread over Duration (default 3; none injects nothing)
	Servers  int           // servers, each with an embedded etcd member (default 3; at least 3 with a fault)
	Agents   int           // agents (default 2)
	LeaseTTL time.Duration // the servers' lease TTL (default 2s)
	// JobCPU is the CPU each fired job asks for (default 0.01): small, so
	// that the agents' room does not limit how many run at once (with the
	// job default, 0.1, a 2-core agent runs at most 20 at a time).
	JobCPU   float64
	BasePort int       // first of the 1000 ports the cluster uses (default 26070)
	DataDir  string    // where the cluster keeps data and logs ("" for a temporary directory)
	Out      io.Writer // progress and the result (nil: discarded)
}

func (c *SchedulesConfig) withDefaults() (SchedulesConfig, error) {
	cfg := *c
	if cfg.Schedules == 0 {
		cfg.Schedules = 40
	}
	if cfg.Every == 0 {
		cfg.Every = time.Second
	}
	if cfg.Duration == 0 {
		cfg.Duration = time.Minute
	}
	if cfg.Fault == "" {
		cfg.Fault = SchedFaultNone
	}
	if cfg.Trials == 0 {
		cfg.Trials = 3
	}
	if cfg.Servers == 0 {
		cfg.Servers = 3
	}
	if cfg.Agents == 0 {
		cfg.Agents = 2
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 2 * time.Second
	}
	if cfg.BasePort == 0 {
		cfg.BasePort = 26070
	}
	if cfg.JobCPU == 0 {
		cfg.JobCPU = 0.01
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Fault == SchedFaultNone {
		cfg.Trials = 0
	}
	return cfg, cfg.validate()
}

// validate reports the first problem with a configuration that has its
// defaults.
func (c *SchedulesConfig) validate() error {
	switch {
	case c.Binary == "":
		return errors.New("bench schedules: the tandem binary path is required")
	case !oneOfStrings(c.Fault, ScheduleFaults):
		return fmt.Errorf("bench schedules: unknown fault %q: want one of %s", c.Fault, strings.Join(ScheduleFaults, ", "))
	case c.Schedules < 1 || c.Schedules > MaxBenchSchedules:
		return fmt.Errorf("bench schedules: schedules must be from 1 to %d, not %d", MaxBenchSchedules, c.Schedules)
	case c.Every < schedule.MinEvery:
		return fmt.Errorf("bench schedules: every %s: must be at least %s", c.Every, schedule.MinEvery)
	case c.Duration < 2*c.Every || c.Duration < 3*time.Second:
		return fmt.Errorf("bench schedules: duration %s: must be at least 3s and twice every (%s)", c.Duration, c.Every)
	case c.Trials < 0:
		return fmt.Errorf("bench schedules: trials must not be negative, not %d", c.Trials)
	case c.Fault != SchedFaultNone && c.Trials < 1:
		return fmt.Errorf("bench schedules: fault %s needs at least 1 trial", c.Fault)
	case c.Fault != SchedFaultNone && c.Duration < time.Duration(c.Trials+1)*MinSchedulesTrialGap:
		return fmt.Errorf("bench schedules: duration %s is too short for %d trials: give each at least %s (duration >= (trials+1) x %s)",
			c.Duration, c.Trials, MinSchedulesTrialGap, MinSchedulesTrialGap)
	case c.Servers < 1 || c.Servers > 9:
		return fmt.Errorf("bench schedules: servers must be from 1 to 9, not %d", c.Servers)
	case c.Fault != SchedFaultNone && c.Servers < 3:
		return fmt.Errorf("bench schedules: fault %s needs at least 3 servers (each embeds an etcd member, and etcd must keep a quorum), not %d", c.Fault, c.Servers)
	case c.Agents < 1 || c.Agents > 99:
		return fmt.Errorf("bench schedules: agents must be from 1 to 99, not %d", c.Agents)
	case c.LeaseTTL < time.Second || c.LeaseTTL%time.Second != 0:
		return fmt.Errorf("bench schedules: lease TTL %s: use whole seconds, at least 1s", c.LeaseTTL)
	case c.JobCPU < 0:
		return fmt.Errorf("bench schedules: job CPU must not be negative, not %g", c.JobCPU)
	case c.BasePort < 1024 || c.BasePort+1000 > 65535:
		return fmt.Errorf("bench schedules: base port %d: must be from 1024 to %d", c.BasePort, 65535-1000)
	}
	return nil
}

// MinSchedulesTrialGap is the least time between the faults of one run:
// each failover, and the faulted server's return, must fit between them.
const MinSchedulesTrialGap = 5 * time.Second

// ScheduleTrial is one injected fault.
type ScheduleTrial struct {
	N        int    `json:"n"`
	From     string `json:"from"`      // the owner hit by the fault
	To       string `json:"to"`        // the new owner
	OldEpoch int64  `json:"old_epoch"` // HA epochs, as the history records them
	NewEpoch int64  `json:"new_epoch"`
	Cause    string `json:"cause"` // as the new owner recorded it
	// OldTerm and NewTerm are the epochs the run records carry: of the
	// schedules' shard's owner before the fault, and of the new one.
	OldTerm int64     `json:"old_term"`
	NewTerm int64     `json:"new_term"`
	FaultAt time.Time `json:"fault_at"`
	// FirstCommitAt is when the bench saw the new owner's first fire
	// committed; GapS is that minus FaultAt: how long no schedule fired.
	FirstCommitAt time.Time `json:"first_commit_at"`
	GapS          float64   `json:"gap_s"`
	// Fires counts the fires that belong to this failover (inFailover).
	Fires       int      `json:"fires"`
	DetectionS  *float64 `json:"detection_s,omitempty"`
	ElectionS   *float64 `json:"election_s,omitempty"`
	TransitionS *float64 `json:"transition_s,omitempty"`
	// OldOwnerFenced, for sigstop and partition, says whether the old owner
	// reported standby once it was back.
	OldOwnerFenced *bool `json:"old_owner_fenced,omitempty"`
}

// SchedulesResult is what RunSchedules measured; it is also the JSON output.
type SchedulesResult struct {
	Fault     string  `json:"fault"`
	Schedules int     `json:"schedules"`
	EveryS    float64 `json:"every_s"`
	Aligned   bool    `json:"aligned"`
	DurationS float64 `json:"duration_s"`
	Servers   int     `json:"servers"`
	Agents    int     `json:"agents"`
	LeaseTTLS float64 `json:"lease_ttl_s"`
	JobCPU    float64 `json:"job_cpu"`
	// EtcdTxn is the latency of one fenced etcd transaction made alone (100
	// in a row, before the schedules): fires and placements are such
	// transactions, made one at a time.
	EtcdTxn Summary `json:"etcd_fenced_txn_s"`
	// CreateS is how long creating every schedule took (8 clients).
	CreateS float64         `json:"create_s"`
	Trials  []ScheduleTrial `json:"trials,omitempty"`
	// Counts is I7 over every schedule (CheckSchedule); Problems the first
	// few schedules with a missed or doubled time.
	Counts   ScheduleCounts `json:"counts"`
	Problems []string       `json:"problems,omitempty"`
	// Steady and Failover are the lateness of the fires outside and inside
	// a failover (inFailover); NotLaunched counts fired jobs whose first
	// attempt had not started when the run was read.
	Steady      Lateness `json:"steady"`
	Failover    Lateness `json:"failover"`
	NotLaunched int      `json:"fired_not_launched"`
	// CPU is what every process used while the schedules fired, per fire
	// (CPUReport.Jobs counts fires), from the end of their creation to
	// their end; absent when a process it measured was killed (kill9).
	// Owner names the server that owned the schedules at the start: with
	// embedded etcd its CPU includes its etcd member's.
	CPU     *CPUReport `json:"cpu,omitempty"`
	Owner   string     `json:"owner"`
	LoadAvg float64    `json:"load_avg_1m"`
	// StartedAt is when the run started; Notes are what it could not do
	// as planned.
	StartedAt time.Time `json:"started_at"`
	Notes     []string  `json:"notes,omitempty"`
}

// Failed reports a broken promise: a nominal time without a record or with
// more than one (I7), or an old owner that came back unfenced (I1).
func (r *SchedulesResult) Failed() error {
	notFenced := 0
	for _, t := range r.Trials {
		if t.OldOwnerFenced != nil && !*t.OldOwnerFenced {
			notFenced++
		}
	}
	if r.Counts.Missed > 0 || r.Counts.Doubled > 0 || notFenced > 0 {
		return fmt.Errorf("fault %s: %d nominal times missed, %d doubled, %d old owners not fenced", r.Fault, r.Counts.Missed, r.Counts.Doubled, notFenced)
	}
	return nil
}

// RunSchedules starts a real local cluster (cfg.Servers server processes
// with an embedded etcd member each, cfg.Agents agent processes), creates
// cfg.Schedules schedules of `true` every cfg.Every (overlap allow,
// catch-up all, history kept whole), each ending cfg.Duration after the
// bench starts creating them, and injects cfg.Fault into the owner
// cfg.Trials times, evenly spread: after each fault it waits for the new
// owner's first commit (an etcd watch of the run records), then restarts,
// resumes or heals the old owner. Once every schedule has reached its end
// and its jobs have ended, it reads every schedule, run record and job at
// one etcd revision and reports I7's counts (CheckSchedule) and the
// lateness of the fires in steady state and in failovers. The result says
// whether a promise was broken (Failed); an error means the run itself
// could not be made.
func RunSchedules(ctx context.Context, cfg SchedulesConfig) (*SchedulesResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	out := cfg.Out
	dir := cfg.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "tandem-bench-schedules-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	} else if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	// Proxies only for a partition: behind one, a killed server's port
	// answers instead of refusing, which would slow detection down.
	lc := local.Config{Binary: cfg.Binary, Servers: cfg.Servers, Agents: cfg.Agents, BasePort: cfg.BasePort, DataDir: dir,
		Cluster: benchCluster, LeaseTTL: cfg.LeaseTTL, Proxied: cfg.Fault == SchedFaultPartition, LogLevel: "info"}
	c, err := local.New(lc)
	if err != nil {
		return nil, fmt.Errorf("bench schedules: %w", err)
	}
	res := &SchedulesResult{Fault: cfg.Fault, Schedules: cfg.Schedules, EveryS: cfg.Every.Seconds(), Aligned: cfg.Aligned,
		DurationS: cfg.Duration.Seconds(), Servers: cfg.Servers, Agents: cfg.Agents, LeaseTTLS: cfg.LeaseTTL.Seconds(),
		JobCPU: cfg.JobCPU, LoadAvg: LoadAvg(), StartedAt: time.Now().UTC()}
	fmt.Fprintf(out, "starting %d servers (embedded etcd) and %d agents on loopback, lease TTL %s, data in %s\n",
		cfg.Servers, cfg.Agents, cfg.LeaseTTL, dir)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = c.Start(sctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer func() {
		fmt.Fprintln(out, "stopping the cluster")
		c.Stop(10 * time.Second)
	}()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	active, err := c.WaitActive(wctx)
	cancel()
	if err != nil {
		return nil, err
	}
	layout := keys.New(benchCluster)
	cli, err := clusterEtcd(c, c.EtcdEndpoints()...)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	admin, err := clusterClient(c, c.URLs())
	if err != nil {
		return nil, err
	}
	if err := waitAgents(ctx, admin, cfg.Agents, time.Minute); err != nil {
		return nil, err
	}
	// The floor under every fire and placement: one fenced etcd transaction
	// at a time, on this machine now.
	base, err := FencedTxnLatency(ctx, cli, benchPrefix("schedules"), 100, 512)
	if err != nil {
		return nil, fmt.Errorf("etcd baseline: %w", err)
	}
	res.EtcdTxn = Summarize(base)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	// One watch through every etcd member: a member the fault stops or cuts
	// off stalls its watch without an error, and a fire counts as seen
	// when the first watch delivers it.
	var members []*clientv3.Client
	for _, ep := range c.EtcdEndpoints() {
		m, err := clusterEtcd(c, ep)
		if err != nil {
			return nil, err
		}
		defer m.Close()
		members = append(members, m)
	}
	fw, err := watchFires(watchCtx, cli, members, layout)
	if err != nil {
		return nil, err
	}

	// Create the schedules, each ending Duration after now.
	start := time.Now()
	end := start.Add(cfg.Duration)
	spread := "spread evenly over the period"
	if cfg.Aligned {
		spread = "all on one grid"
	}
	fmt.Fprintf(out, "creating %d schedules of `true` every %s (%s), ending at %s\n", cfg.Schedules, cfg.Every, spread, end.UTC().Format(time.RFC3339))
	ids, err := createSchedules(ctx, c, cfg, end)
	if err != nil {
		return nil, err
	}
	created := time.Now()
	res.CreateS = created.Sub(start).Seconds()
	fmt.Fprintf(out, "created in %.1fs\n", res.CreateS)
	if st, err := c.Status(ctx, active); err == nil {
		res.Owner = st.ID
	}
	procs := clusterProcesses(c)
	cpu0, cpuErr := sampleCPU(procs)

	var windows []FailoverWindow
	for n := 1; n <= cfg.Trials; n++ {
		at := created.Add(end.Sub(created) * time.Duration(n) / time.Duration(cfg.Trials+1))
		if err := sleepUntil(ctx, at); err != nil {
			return nil, err
		}
		tr, err := scheduleTrial(ctx, cfg, c, admin, fw, n)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", n, err)
		}
		res.Trials = append(res.Trials, *tr)
		windows = append(windows, FailoverWindow{From: tr.FaultAt, To: tr.FirstCommitAt})
		fmt.Fprintf(out, "trial %d: %s -> %s (epoch %d -> %d, %s): fault to the new owner's first fire %.0f ms; detection %s, election %s, transition %s%s\n",
			n, tr.From, tr.To, tr.OldEpoch, tr.NewEpoch, tr.Cause, tr.GapS*1000, msOf(tr.DetectionS), msOf(tr.ElectionS), msOf(tr.TransitionS), fencedNote(tr.OldOwnerFenced))
	}
	if err := sleepUntil(ctx, end); err != nil {
		return nil, err
	}
	var cpu1 cpuSample
	if cpuErr == nil {
		cpu1, cpuErr = sampleCPU(procs) // fails if a measured process was killed
	}

	fmt.Fprintln(out, "the schedules have ended; waiting for their last fires and jobs")
	if err := waitSchedulesDone(ctx, cli, layout, len(ids), 2*time.Minute); err != nil {
		res.Notes = append(res.Notes, err.Error())
	}
	rev, err := waitScheduledJobsEnded(ctx, cli, layout, time.Minute)
	if err != nil {
		res.Notes = append(res.Notes, err.Error())
	}
	recs, err := ReadSchedules(ctx, cli, layout, rev)
	if err != nil {
		return nil, err
	}
	jobs, err := readJobs(ctx, cli, layout, rev)
	if err != nil {
		return nil, err
	}
	sj := ScheduledJobs{}
	for _, j := range jobs {
		sj.Add(j)
	}
	for _, rec := range recs {
		// Every time up to the schedules' end must be decided by now
		// (waitSchedulesDone), wherever a stalled owner left the cursor.
		k, err := CheckSchedule(rec, sj[rec.Schedule.ID], CheckWindow{Until: end})
		if err != nil {
			return nil, err
		}
		res.Counts.Add(k)
		if (len(k.Missed) > 0 || len(k.Doubled) > 0) && len(res.Problems) < 10 {
			res.Problems = append(res.Problems, fmt.Sprintf("schedule %s (%s): missed %s; doubled %s",
				rec.Schedule.ID, rec.Schedule.Name, firstOf(k.Missed), firstOf(k.Doubled)))
		}
	}
	if res.Counts.Schedules != len(ids) {
		res.Notes = append(res.Notes, fmt.Sprintf("%d schedules created, %d in etcd", len(ids), res.Counts.Schedules))
	}
	fs, unseen := firesOf(recs, jobs, fw.seenTimes())
	if unseen > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("%d fires not seen by the bench's watch: timed by their committed_at", unseen))
	}
	res.Steady, res.Failover, res.NotLaunched = latenesses(fs, windows)
	if cpuErr == nil {
		r := cpuBetween(procs, cpu0, cpu1, countCommitted(fs, cpu0.at, cpu1.at))
		res.CPU = &r
	}
	for i := range res.Trials {
		res.Trials[i].Fires = countInFailover(fs, windows[i])
	}
	res.Print(out)
	return res, nil
}

func firstOf(s []string) string {
	switch {
	case len(s) == 0:
		return "none"
	case len(s) > 3:
		return strings.Join(s[:3], ", ") + fmt.Sprintf(" and %d more", len(s)-3)
	}
	return strings.Join(s, ", ")
}

func fencedNote(p *bool) string {
	switch {
	case p == nil:
		return ""
	case *p:
		return "; old owner came back fenced"
	}
	return "; OLD OWNER NOT FENCED"
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// waitAgents waits until n agents are connected to the active, so the
// first fires have somewhere to run.
func waitAgents(ctx context.Context, admin *client.Client, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		as, err := admin.Agents(actx)
		cancel()
		up := 0
		for _, a := range as {
			if a.State == tandem.AgentReady {
				up++
			}
		}
		if err == nil && up >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d agents ready after %s (last error: %v)", up, n, within, err)
		}
		if err := sleepUntil(ctx, time.Now().Add(100*time.Millisecond)); err != nil {
			return err
		}
	}
}

// benchAnchor is the grid the spread schedules' anchors start from.
var benchAnchor = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// createSchedules creates cfg.Schedules schedules from 8 clients and
// returns their IDs.
func createSchedules(ctx context.Context, c *local.Cluster, cfg SchedulesConfig, end time.Time) ([]string, error) {
	const clients = 8
	var (
		mu    sync.Mutex
		ids   []string
		first error
		wg    sync.WaitGroup
	)
	next := make(chan int)
	for g := 0; g < clients; g++ {
		cl, err := clusterClient(c, rotate(c.URLs(), g))
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				spec := tandem.ScheduleSpec{Name: fmt.Sprintf("bench-%04d", i), Every: tandem.Duration(cfg.Every),
					End: end, Overlap: "allow", Catchup: "all",
					HistoryLimits: tandem.ScheduleHistoryLimits{Fired: 1_000_000, Skipped: 1_000_000},
					Job:           tandem.JobSpec{Command: []string{"true"}, Resources: tandem.Resources{CPU: cfg.JobCPU, MemoryMB: 1}}}
				if !cfg.Aligned {
					spec.Anchor = benchAnchor.Add(cfg.Every * time.Duration(i) / time.Duration(cfg.Schedules))
				}
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				s, err := cl.CreateSchedule(sctx, spec, client.SubmitOptions{})
				cancel()
				mu.Lock()
				if err != nil && first == nil {
					first = fmt.Errorf("create schedule %s: %w", spec.Name, err)
				} else if err == nil {
					ids = append(ids, s.ID)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < cfg.Schedules; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return nil, first
	}
	return ids, ctx.Err()
}

// scheduleTrial injects cfg.Fault into the owner, waits for the new owner's
// first run record, brings the old owner back, and reads the failover's
// record from the HA history.
func scheduleTrial(ctx context.Context, cfg SchedulesConfig, c *local.Cluster, admin *client.Client, fw *fireWatch, n int) (*ScheduleTrial, error) {
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	a, err := c.WaitActive(wctx)
	cancel()
	if err != nil {
		return nil, err
	}
	st, err := c.Status(ctx, a)
	if err != nil {
		return nil, err
	}
	tr := &ScheduleTrial{N: n, From: st.ID, OldEpoch: st.Epoch}
	// The run records carry the epoch of the schedules' shard's owner (its
	// term), which need not be the HA epoch the status shows: the new
	// owner's first fire is the first under a term above the latest seen.
	last := fw.latest()
	if last == 0 { // nothing fired yet: wait for the owner's first fire
		if _, _, err := fw.firstAbove(ctx, 0, time.Minute); err != nil {
			return nil, err
		}
		last = fw.latest()
	}
	tr.FaultAt = time.Now()
	switch cfg.Fault {
	case SchedFaultKill9:
		err = c.Kill(a)
	case SchedFaultSigstop:
		err = c.Signal(a, syscall.SIGSTOP)
	case SchedFaultPartition:
		err = c.Partition(a)
	}
	if err != nil {
		return nil, fmt.Errorf("inject %s: %w", cfg.Fault, err)
	}
	term, first, ferr := fw.firstAbove(ctx, last, time.Minute)
	// Bring the old owner back whatever happened, so the run can go on.
	var back error
	switch cfg.Fault {
	case SchedFaultKill9:
		if back = c.StartServer(a); back == nil {
			hctx, cancel := context.WithTimeout(ctx, time.Minute)
			back = c.WaitHealthy(hctx, a)
			cancel()
		}
	case SchedFaultSigstop, SchedFaultPartition:
		if cfg.Fault == SchedFaultSigstop {
			back = c.Signal(a, syscall.SIGCONT)
		} else {
			back = c.Heal(a)
		}
		if back == nil {
			fenced := waitState(ctx, c, a, tandem.StateStandby, 15*time.Second)
			tr.OldOwnerFenced = &fenced
		}
	}
	if ferr != nil {
		return nil, ferr
	}
	if back != nil {
		return nil, fmt.Errorf("bring %s back: %w", st.ID, back)
	}
	tr.OldTerm, tr.NewTerm, tr.FirstCommitAt = last, term, first
	tr.GapS = first.Sub(tr.FaultAt).Seconds()
	ev, err := eventAfter(ctx, admin, st.Epoch)
	if err != nil {
		return nil, err
	}
	tr.To, tr.NewEpoch, tr.Cause = ev.ActiveID, ev.Epoch, ev.Cause
	tr.DetectionS, tr.ElectionS, tr.TransitionS = ev.DetectionS, ev.ElectionS, ev.TransitionS
	return tr, nil
}

// fireWatch follows every run record through one etcd watch per member and
// keeps, for each epoch, when its first fire was seen, and when each fire
// was, by whichever watch delivered it first.
type fireWatch struct {
	mu      sync.Mutex
	first   map[int64]time.Time  // epoch -> when its first fire was seen
	seen    map[string]time.Time // fireKey -> when the fire was seen
	changed chan struct{}        // closed and replaced on every change
	ended   int                  // watches that ended
	watches int
	err     error // set once every watch has ended
}

// watchFires watches the run records from the current revision (read
// through cli) through each of members.
func watchFires(ctx context.Context, cli *clientv3.Client, members []*clientv3.Client, layout keys.Layout) (*fireWatch, error) {
	rev, err := etcdRevision(ctx, cli, layout)
	if err != nil {
		return nil, err
	}
	w := &fireWatch{first: map[int64]time.Time{}, seen: map[string]time.Time{}, changed: make(chan struct{}), watches: len(members)}
	for _, m := range members {
		wch := m.Watch(ctx, layout.FiresPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		go w.follow(wch, layout) // ends with ctx, which closes wch
	}
	return w, nil
}

func (w *fireWatch) follow(wch clientv3.WatchChan, layout keys.Layout) {
	for wr := range wch {
		now := time.Now()
		if err := wr.Err(); err != nil {
			w.fail(err)
			return
		}
		w.mu.Lock()
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut || ev.Kv.Version != 1 {
				continue // a deletion (pruning) or a rewrite
			}
			id, t, kind, ok := layout.ParseFire(string(ev.Kv.Key))
			if !ok || kind != keys.RunScheduled {
				continue
			}
			if _, ok := w.seen[fireKey(id, t)]; ok {
				continue // another member's watch was first
			}
			var r tandem.ScheduleRun
			if json.Unmarshal(ev.Kv.Value, &r) != nil || r.Outcome != tandem.OutcomeFired {
				continue
			}
			if _, ok := w.first[r.Epoch]; !ok {
				w.first[r.Epoch] = now
			}
			w.seen[fireKey(id, t)] = now
		}
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}
	w.fail(errors.New("the etcd watch of run records ended"))
}

// fail counts a watch that ended; once every one has, waiters see err.
func (w *fireWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended++
	if w.ended == w.watches && w.err == nil {
		w.err = err
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

// seenTimes returns when each fire was seen committed, by fireKey.
func (w *fireWatch) seenTimes() map[string]time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]time.Time, len(w.seen))
	for k, t := range w.seen {
		out[k] = t
	}
	return out
}

// latest returns the highest epoch a fire was seen committed under (0 if
// none was).
func (w *fireWatch) latest() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var e int64
	for x := range w.first {
		e = max(e, x)
	}
	return e
}

// firstAbove waits for a fire committed under an epoch above epoch and
// returns the lowest such epoch and when its first fire was seen.
func (w *fireWatch) firstAbove(ctx context.Context, epoch int64, limit time.Duration) (int64, time.Time, error) {
	timeout := time.NewTimer(limit)
	defer timeout.Stop()
	for {
		w.mu.Lock()
		best, at := int64(0), time.Time{}
		for e, t := range w.first {
			if e > epoch && (best == 0 || e < best) {
				best, at = e, t
			}
		}
		ch, werr := w.changed, w.err
		w.mu.Unlock()
		if best != 0 {
			return best, at, nil
		}
		if werr != nil {
			return 0, time.Time{}, werr
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		case <-timeout.C:
			return 0, time.Time{}, fmt.Errorf("no schedule fired by an owner after epoch %d within %s", epoch, limit)
		}
	}
}

// waitSchedulesDone waits until every schedule has decided its last nominal
// time (its cursor has reached the last time before its end).
func waitSchedulesDone(ctx context.Context, cli *clientv3.Client, layout keys.Layout, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		left, total := 0, 0
		err := getAll(ctx, cli, layout.SchedulesPrefix(), 0, func(key string, v []byte) error {
			var s tandem.Schedule
			if err := json.Unmarshal(v, &s); err != nil {
				return fmt.Errorf("schedule record %s: %w", key, err)
			}
			total++
			tt, err := schedule.NewTimetable(server.SpecOf(s.ScheduleSpec))
			if err != nil {
				return fmt.Errorf("schedule %s: %w", s.ID, err)
			}
			if _, more := tt.Next(s.Cursor); more || len(s.Buffered) > 0 {
				left++
			}
			return nil
		})
		if err != nil {
			return err
		}
		if left == 0 && total >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d schedules still had nominal times to decide %s after their end", left, total, within)
		}
		if err := sleepUntil(ctx, time.Now().Add(250*time.Millisecond)); err != nil {
			return err
		}
	}
}

// waitScheduledJobsEnded waits until every job a schedule started has
// ended, and returns the revision at which it saw that (or the last one it
// read, with an error, after within).
func waitScheduledJobsEnded(ctx context.Context, cli *clientv3.Client, layout keys.Layout, within time.Duration) (int64, error) {
	deadline := time.Now().Add(within)
	for {
		rev, err := etcdRevision(ctx, cli, layout)
		if err != nil {
			return 0, err
		}
		live := 0
		err = getAll(ctx, cli, layout.JobsPrefix(), rev, func(key string, v []byte) error {
			var j tandem.Job
			if err := json.Unmarshal(v, &j); err != nil {
				return fmt.Errorf("job record %s: %w", key, err)
			}
			if j.ScheduleID != "" && !j.State.Terminal() {
				live++
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		if live == 0 {
			return rev, nil
		}
		if time.Now().After(deadline) {
			return rev, fmt.Errorf("%d jobs of schedules had not ended %s after the schedules' end", live, within)
		}
		if err := sleepUntil(ctx, time.Now().Add(time.Second)); err != nil {
			return 0, err
		}
	}
}

// Print writes the result.
func (r *SchedulesResult) Print(w io.Writer) {
	spread := "spread"
	if r.Aligned {
		spread = "aligned"
	}
	trials := ""
	if len(r.Trials) > 0 {
		trials = fmt.Sprintf(" x %d", len(r.Trials))
	}
	fmt.Fprintf(w, "\nfault %s%s: %d schedules every %gs (%s), %gs, %d servers, %d agents, lease TTL %gs, jobs of %g CPU\n",
		r.Fault, trials, r.Schedules, r.EveryS, spread, r.DurationS, r.Servers, r.Agents, r.LeaseTTLS, r.JobCPU)
	Table(w, "LATENESS (ms)\tFIRES\tP50\tP99\tMAX",
		fmt.Sprintf("commit - nominal, steady\t%d\t%s", r.Steady.Commit.N, r.Steady.Commit.Row3()),
		fmt.Sprintf("  committed_at - nominal (recorded)\t%d\t%s", r.Steady.Recorded.N, r.Steady.Recorded.Row3()),
		fmt.Sprintf("launch - nominal, steady\t%d\t%s", r.Steady.Launch.N, r.Steady.Launch.Row3()),
		fmt.Sprintf("commit - nominal, in a failover\t%d\t%s", r.Failover.Commit.N, r.Failover.Commit.Row3()),
		fmt.Sprintf("  committed_at - nominal (recorded)\t%d\t%s", r.Failover.Recorded.N, r.Failover.Recorded.Row3()),
		fmt.Sprintf("launch - nominal, in a failover\t%d\t%s", r.Failover.Launch.N, r.Failover.Launch.Row3()))
	fmt.Fprintf(w, "nominal times: expected %d, fired %d, skipped %d (%s), missed %d, doubled %d; fired but not launched %d\n",
		r.Counts.Expected, r.Counts.Fired, r.Counts.Skipped, reasonsOrNone(r.Counts), r.Counts.Missed, r.Counts.Doubled, r.NotLaunched)
	if r.CPU != nil {
		owner := r.CPU.byName(r.Owner)
		oc := "-"
		if owner != nil {
			oc = fmt.Sprintf("%.3f", owner.Cores)
		}
		fmt.Fprintf(w, "CPU over %.0fs of fires (%d fires): owner at the start %s %s cores (with its etcd member), servers %.3f, agents %.3f; all processes %.2f ms per fire; machine %.2f of %d cores busy\n",
			r.CPU.WindowS, r.CPU.Jobs, r.Owner, oc, r.CPU.ByRole["server"].Cores, r.CPU.ByRole["agent"].Cores,
			r.CPU.ByRole["all"].PerJobMS, r.CPU.MachineCores, r.CPU.NumCPU)
	}
	fmt.Fprintf(w, "schedules created in %.1fs; one fenced etcd txn alone p50 %.1f ms, p99 %.1f ms; load average %.2f before the run\n",
		r.CreateS, r.EtcdTxn.P50*1000, r.EtcdTxn.P99*1000, r.LoadAvg)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  I7: %s\n", p)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
}

// reasonsOrNone is SkippedReasons, or "none".
func reasonsOrNone(c ScheduleCounts) string {
	if s := c.SkippedReasons(); s != "" {
		return s
	}
	return "none"
}

// SchedulesReport is several runs of RunSchedules, one per fault; it is
// also the JSON output of `tandem bench schedules`.
type SchedulesReport struct {
	Runs []*SchedulesResult `json:"runs"`
}

// Failed reports the first run that broke a promise.
func (r *SchedulesReport) Failed() error {
	var errs []error
	for _, x := range r.Runs {
		if err := x.Failed(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RunSchedulesFaults runs RunSchedules once per fault, each on a new
// cluster (on its own 1000 ports from cfg.BasePort, and in its own
// subdirectory of cfg.DataDir when that is set), then prints them side by
// side. It stops at the first run that fails and returns the results so far.
func RunSchedulesFaults(ctx context.Context, cfg SchedulesConfig, faults []string) (*SchedulesReport, error) {
	rep := &SchedulesReport{}
	for i, f := range faults {
		c := cfg
		c.Fault = f
		if c.BasePort == 0 {
			c.BasePort = 26070
		}
		c.BasePort += 1000 * i
		if cfg.DataDir != "" {
			c.DataDir = filepath.Join(cfg.DataDir, f)
		}
		if cfg.Out != nil && len(faults) > 1 {
			fmt.Fprintf(cfg.Out, "\n=== %d of %d: fault %s\n", i+1, len(faults), f)
		}
		res, err := RunSchedules(ctx, c)
		if err != nil {
			return rep, fmt.Errorf("fault %s: %w", f, err)
		}
		rep.Runs = append(rep.Runs, res)
	}
	if cfg.Out != nil && len(faults) > 1 {
		fmt.Fprintln(cfg.Out)
		rep.Print(cfg.Out)
	}
	return rep, nil
}

// Print writes the runs side by side: the counts, then the lateness.
func (r *SchedulesReport) Print(w io.Writer) {
	var counts, late []string
	for _, x := range r.Runs {
		counts = append(counts, fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%s\t%d\t%d", x.Fault, len(x.Trials), x.Counts.Expected, x.Counts.Fired,
			x.Counts.Skipped, reasonsOrNone(x.Counts), x.Counts.Missed, x.Counts.Doubled))
		late = append(late, fmt.Sprintf("%s\t%s\t%s\t%d\t%s\t%s", x.Fault, x.Steady.Commit.Row3(), x.Steady.Launch.Row3(),
			x.Failover.Commit.N, x.Failover.Commit.Row3(), x.Failover.Launch.Row3()))
	}
	Table(w, "FAULT\tTRIALS\tEXPECTED\tFIRED\tSKIPPED\tBY REASON\tMISSED\tDOUBLED", counts...)
	fmt.Fprintln(w)
	Table(w, "FAULT\tCOMMIT-T STEADY P50\tP99\tMAX MS\tLAUNCH-T STEADY P50\tP99\tMAX MS\tFIRES IN FAILOVERS\tCOMMIT-T FAILOVER P50\tP99\tMAX MS\tLAUNCH-T FAILOVER P50\tP99\tMAX MS", late...)
}
