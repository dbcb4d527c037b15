package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/local"
)

// A schedule's owner (the active) is SIGSTOPped just before a nominal time
// T: another server takes over and fires T from the stored cursor; the old
// owner, resumed, finds itself fenced. Every nominal time from the first
// to the last recorded ends with exactly one record, and each fired one
// with exactly one job (I7).
func TestScheduleFiresOnceAcrossPausedOwner(t *testing.T) {
	e := startEtcd(t)
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, Agents: 1, BasePort: freeBasePort(t, 3),
		DataDir: t.TempDir(), EtcdEndpoints: e.Endpoint, LeaseTTL: time.Second, LogLevel: "debug"})
	a := waitActive(t, c)
	cl := newClient(t, c.URLs())
	ctx := context.Background()
	const every = 2 * time.Second
	s, err := cl.CreateSchedule(ctx, tandem.ScheduleSpec{Name: "tick", Every: tandem.Duration(every), Overlap: "allow", Catchup: "all",
		Job: tandem.JobSpec{Command: []string{"true"}}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fired := func() []tandem.ScheduleRun {
		runs, err := cl.ScheduleRuns(ctx, s.ID, tandem.ScheduleRunFilter{Outcome: tandem.OutcomeFired})
		if err != nil {
			t.Fatal(err)
		}
		return runs
	}
	eventually(t, "two fires", 30*time.Second, func() error {
		if n := len(fired()); n < 2 {
			return fmt.Errorf("%d fired", n)
		}
		return nil
	})

	// Stop the owner 300 ms before the next nominal time: the others depose
	// it once its lease ends and fire T late, from the cursor.
	next, err := cl.NextTimes(ctx, s.ID, 1)
	if err != nil || len(next) != 1 {
		t.Fatalf("next times: %v %v", next, err)
	}
	T := next[0]
	if wait := time.Until(T.Add(-300 * time.Millisecond)); wait > 0 {
		time.Sleep(wait) // the fault's timing relative to T, not a synchronisation
	}
	if err := c.Signal(a, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			_ = c.Signal(a, syscall.SIGCONT)
		}
	}()
	b := waitActive(t, c, a)
	eventually(t, "T fired by the new owner", 30*time.Second, func() error {
		for _, r := range fired() {
			if r.NominalTime.Equal(T) {
				return nil
			}
		}
		return fmt.Errorf("%s not fired yet", T)
	})
	if err := c.Signal(a, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	paused = false
	// A few more fires after the old owner resumed, fenced.
	last := fired()[len(fired())-1].NominalTime
	eventually(t, "two fires after the resume", 30*time.Second, func() error {
		if r := fired(); !r[len(r)-1].NominalTime.After(last.Add(every)) {
			return fmt.Errorf("last fired %s", r[len(r)-1].NominalTime)
		}
		return nil
	})

	all, err := cl.ScheduleRuns(ctx, s.ID, tandem.ScheduleRunFilter{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[time.Time]int{}
	var prev time.Time
	for _, r := range all {
		if r.Outcome == tandem.OutcomeBuffered {
			continue
		}
		seen[r.NominalTime]++
		if !prev.IsZero() && !r.NominalTime.Equal(prev.Add(every)) {
			t.Errorf("nominal times jump from %s to %s: a time has no record", prev, r.NominalTime)
		}
		prev = r.NominalTime
		if r.Through != nil {
			prev = *r.Through
		}
		if r.Outcome == tandem.OutcomeFired && r.JobID == "" {
			t.Errorf("fired time %s has no job", r.NominalTime)
		}
	}
	for nt, n := range seen {
		if n != 1 {
			t.Errorf("nominal time %s has %d records", nt, n)
		}
	}
	// One job per fired time: the jobs named after the schedule and T.
	jobs, err := cl.ListJobs(ctx, client.ListOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	perName := map[string]int{}
	for _, j := range jobs.Jobs {
		perName[j.Name]++
	}
	for name, n := range perName {
		if n != 1 {
			t.Errorf("%d jobs named %s", n, name)
		}
	}
	t.Logf("owner %s paused before %s; %s fired it; %d records", c.Servers[a].ID, T.Format(time.RFC3339), c.Servers[b].ID, len(all))
}
