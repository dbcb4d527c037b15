package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/bench"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/server"
)

// The fault suite's schedules (issue 11): about forty schedules firing every
// 1 to 5 s run alongside the jobs, through every fault (two of them start
// a workflow run every 10 s rather than a job). After the run the
// checker reads, at the revision of the job records, every schedule and its
// run records, and counts for each schedule the nominal times from its
// creation to its cursor, and at least to the moment the checker paused it
// less the schedule grace (the timetable's, computed as the server does):
// expected minus fired minus policy skips is missed (a time due before the
// pause by more than the grace and recorded skipped (paused) is missed,
// not a policy skip), and a time with more than one record, a fired time
// with other than one job, or a job no fired record names, is doubled.
// Both must be 0 (I7). The counting is internal/bench's (CheckSchedule),
// which tandem bench schedules reports too.

const nemesisSchedules = 40

// schedTotals are the schedules' figures of one run, counted as tandem
// bench schedules counts them (bench.CheckSchedule).
type schedTotals = bench.ScheduleCounts

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
		switch {
		case i%20 == 19:
			// Two start a workflow (nemesis_workflows_test.go checks the
			// runs), every 10 s: a run is four jobs in a row.
			wf := n.diamond()
			spec.Workflow, spec.Job, spec.Every = &wf, tandem.JobSpec{}, tandem.Duration(10*time.Second)
		case i%3 == 0:
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
// recorded skipped (paused), which the check counts like any other. The
// moment each pause was asked bounds the check (bench.CheckWindow): the
// times due well before it must have been decided by then, and not left
// for the pause to sweep.
func (n *nemesis) pauseSchedules() {
	n.pausedAt = map[string]time.Time{}
	for _, id := range n.schedules {
		n.pausedAt[id] = time.Now()
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
	n.sched = schedTotals{}
	if len(n.schedules) == 0 {
		return nil
	}
	recs, err := bench.ReadSchedules(ctx, cli, layout, rev)
	if err != nil {
		return err
	}
	// Every job and run, those retention removed included (their last
	// versions): a fire's job still counts once removed.
	jobsOf := bench.ScheduledJobs{}
	for _, j := range n.jobs {
		jobsOf.Add(j)
	}
	for _, wf := range n.runs {
		jobsOf.AddWorkflow(wf)
	}
	pausedAt := n.pausedAt
	// The servers run with the default schedule grace: a time may be that
	// late and still be on time, so up to that long before the pause it
	// may be left for the pause to skip.
	grace := server.DefaultConfig().ScheduleGrace
	for _, rec := range recs {
		// Until the pause, wherever the cursor: a stalled owner's backlog
		// is missed, whether no record covers it or the pause's does.
		w := bench.CheckWindow{Until: pausedAt[rec.Schedule.ID], PausedAt: pausedAt[rec.Schedule.ID], Grace: grace}
		k, err := bench.CheckSchedule(rec, jobsOf[rec.Schedule.ID], w)
		if err != nil {
			return err
		}
		n.sched.Add(k)
		s := rec.Schedule
		if len(k.Missed) > 0 {
			n.problemf("I7: schedule %s (%s): %d nominal times without a record: %s", s.ID, s.Name, len(k.Missed), firstFew(k.Missed))
		}
		if len(k.Doubled) > 0 {
			n.problemf("I7: schedule %s (%s): %d nominal times with more than one record or job: %s", s.ID, s.Name, len(k.Doubled), firstFew(k.Doubled))
		}
	}
	if n.sched.Schedules != len(n.schedules) {
		n.problemf("%d schedules created, %d in etcd", len(n.schedules), n.sched.Schedules)
	}
	return nil
}

func firstFew(s []string) string {
	if len(s) > 5 {
		return strings.Join(s[:5], ", ") + ", ..."
	}
	return strings.Join(s, ", ")
}
