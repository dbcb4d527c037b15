package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/schedule"
	"github.com/tandemhq/tandem/internal/server"
)

// The fault suite's schedules (issue 11): about forty schedules firing every
// 1 to 5 s run alongside the jobs, through every fault. After the run the
// checker reads, at the revision of the job records, every schedule and its
// run records, and counts for each schedule the nominal times from its
// creation to its cursor (the timetable's, computed here as the server
// does): expected minus fired minus policy skips is missed, and a time with
// more than one record, or a fired time with other than one job, is
// doubled. Both must be 0 (I7).

const nemesisSchedules = 40

// schedTotals are the schedules' figures of one run.
type schedTotals struct {
	schedules, expected, fired, skipped, missed, doubled int
	skippedBy                                            map[string]int
}

func (s schedTotals) String() string {
	reasons := make([]string, 0, len(s.skippedBy))
	for r, k := range s.skippedBy {
		reasons = append(reasons, fmt.Sprintf("%s %d", r, k))
	}
	sort.Strings(reasons)
	return fmt.Sprintf("schedules %d: nominal times expected %d, fired %d, skipped %d (%s), missed %d, doubled %d",
		s.schedules, s.expected, s.fired, s.skipped, strings.Join(reasons, ", "), s.missed, s.doubled)
}

// startSchedules creates the schedules, from a random stream of their own
// so that the faults' schedule stays what the seed says. A third use the
// overlap policy skip with a job longer than the shortest periods, so that
// skips happen; the rest allow overlaps. Catch-up all: with the grace of a
// minute no fire of a partial fault is a catch-up anyway.
func (n *nemesis) startSchedules() {
	rng := rand.New(rand.NewPCG(n.seed, 0x7363686564))
	for i := range nemesisSchedules {
		every := time.Duration(1+rng.IntN(5)) * time.Second
		spec := tandem.ScheduleSpec{Name: fmt.Sprintf("nemesis-%02d", i), Every: tandem.Duration(every), Overlap: "allow", Catchup: "all",
			HistoryLimits: tandem.ScheduleHistoryLimits{Fired: 1_000_000, Skipped: 1_000_000},
			Job:           tandem.JobSpec{Command: []string{"true"}}}
		if i%3 == 0 {
			spec.Overlap = "skip"
			spec.Job.Command = []string{"sleep", "1.5"}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := n.admin.CreateSchedule(ctx, spec, client.SubmitOptions{})
		cancel()
		if err != nil {
			n.t.Fatalf("create schedule %s: %v", spec.Name, err)
		}
		n.schedules = append(n.schedules, s.ID)
	}
}

// pauseSchedules pauses every schedule after the load, so that their jobs
// end and the cluster quiesces; the times that fall due from then on are
// recorded skipped (paused), which the check counts like any other.
func (n *nemesis) pauseSchedules() {
	for _, id := range n.schedules {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := n.admin.PauseSchedule(ctx, id, "the fault suite's run is over")
		cancel()
		if err != nil {
			n.t.Fatalf("pause schedule %s: %v", id, err)
		}
	}
}

// checkSchedules is I7 on the records read at revision rev.
func (n *nemesis) checkSchedules(ctx context.Context, cli *clientv3.Client, layout keys.Layout, rev int64) error {
	n.sched = schedTotals{skippedBy: map[string]int{}}
	if len(n.schedules) == 0 {
		return nil
	}
	resp, err := cli.Get(ctx, layout.SchedulesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("read schedules: %w", err)
	}
	jobsOf := map[string]map[time.Time][]string{} // schedule -> nominal time -> job IDs
	for _, r := range n.records {
		if j := r.Job; j.ScheduleID != "" {
			if jobsOf[j.ScheduleID] == nil {
				jobsOf[j.ScheduleID] = map[time.Time][]string{}
			}
			jobsOf[j.ScheduleID][j.NominalTime.UTC()] = append(jobsOf[j.ScheduleID][j.NominalTime.UTC()], j.ID)
		}
	}
	for _, kv := range resp.Kvs {
		var s tandem.Schedule
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			return fmt.Errorf("schedule record %s: %w", kv.Key, err)
		}
		n.sched.schedules++
		tt, err := schedule.NewTimetable(server.SpecOf(s.ScheduleSpec))
		if err != nil {
			return fmt.Errorf("schedule %s: %w", s.ID, err)
		}
		expected := tt.List(s.CreatedAt, s.Cursor, 1<<22)
		n.sched.expected += len(expected)
		fr, err := cli.Get(ctx, layout.Fires(s.ID), clientv3.WithPrefix(), clientv3.WithRev(rev))
		if err != nil {
			return fmt.Errorf("read the runs of %s: %w", s.ID, err)
		}
		covered := map[time.Time]int{}
		var fired []tandem.ScheduleRun
		for _, kv := range fr.Kvs {
			var r tandem.ScheduleRun
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				return fmt.Errorf("run record %s: %w", kv.Key, err)
			}
			if r.Reason == tandem.ReasonManual || r.Reason == tandem.ReasonBackfill {
				continue // not the schedule's own times (the suite makes none)
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
				n.sched.fired += len(times)
				fired = append(fired, r)
			case tandem.OutcomeSkipped:
				n.sched.skipped += len(times)
				n.sched.skippedBy[r.Reason] += len(times)
			}
		}
		var missed, doubled []string
		want := map[time.Time]bool{}
		for _, t := range expected {
			want[t.UTC()] = true
			switch covered[t.UTC()] {
			case 0:
				missed = append(missed, t.Format(time.RFC3339))
			case 1:
			default:
				doubled = append(doubled, fmt.Sprintf("%s (%d records)", t.Format(time.RFC3339), covered[t.UTC()]))
			}
		}
		for t := range covered {
			if !want[t] {
				doubled = append(doubled, fmt.Sprintf("%s (a record of no nominal time between creation and cursor)", t.Format(time.RFC3339)))
			}
		}
		for _, r := range fired {
			if ids := jobsOf[s.ID][r.NominalTime.UTC()]; len(ids) != 1 {
				doubled = append(doubled, fmt.Sprintf("%s fired with jobs %v", r.NominalTime.Format(time.RFC3339), ids))
			}
		}
		n.sched.missed += len(missed)
		n.sched.doubled += len(doubled)
		if len(missed) > 0 {
			n.problemf("I7: schedule %s (%s): %d nominal times without a record: %s", s.ID, s.Name, len(missed), firstFew(missed))
		}
		if len(doubled) > 0 {
			n.problemf("I7: schedule %s (%s): %d nominal times with more than one record or job: %s", s.ID, s.Name, len(doubled), firstFew(doubled))
		}
	}
	if n.sched.schedules != len(n.schedules) {
		n.problemf("%d schedules created, %d in etcd", len(n.schedules), n.sched.schedules)
	}
	return nil
}

func firstFew(s []string) string {
	if len(s) > 5 {
		return strings.Join(s[:5], ", ") + ", ..."
	}
	return strings.Join(s, ", ")
}
