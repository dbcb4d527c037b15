package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/bench"
	"github.com/tandemhq/tandem/internal/keys"
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
	before, err := c.Status(ctx, a)
	if err != nil || before.State != tandem.StateActive {
		t.Fatalf("owner %s before the pause: %+v, %v", c.Servers[a].ID, before, err)
	}
	oldEpoch := before.Epoch
	stepDowns := func() float64 { return scrapeMetric(t, c.Servers[a].URL, "tandem_stepdowns_total", notOnPurpose) }
	downs0, fenced0 := stepDowns(), scrapeMetric(t, c.Servers[a].URL, "tandem_fenced_writes_total", nil)
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
	// The resumed owner is fenced: its term ended without its choosing
	// (fenced, deposed or its session lost: whichever it noticed first),
	// it serves as a standby of the new epoch, and none of its records
	// carries a time from T on.
	eventually(t, "the resumed owner to step down", 30*time.Second, func() error {
		st, err := c.Status(ctx, a)
		switch {
		case err != nil:
			return err
		case st.State != tandem.StateStandby || len(st.Owned) != 0:
			return fmt.Errorf("%s is %s owning %v", st.ID, st.State, st.Owned)
		case st.Epoch <= oldEpoch || st.ActiveID != c.Servers[b].ID:
			return fmt.Errorf("%s knows epoch %d of %s, want one above %d of %s", st.ID, st.Epoch, st.ActiveID, oldEpoch, c.Servers[b].ID)
		}
		if downs, err := readMetric(t, c.Servers[a].URL, "tandem_stepdowns_total", notOnPurpose); err != nil || downs <= downs0 {
			return fmt.Errorf("%s has not counted a step-down (fenced, deposed or session_lost): %v, %v", c.Servers[a].ID, downs, err)
		}
		return nil
	})
	t.Logf("resumed owner %s: step-downs %v -> %v, fenced writes %v -> %v", c.Servers[a].ID, downs0, stepDowns(),
		fenced0, scrapeMetric(t, c.Servers[a].URL, "tandem_fenced_writes_total", nil))
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
		if !r.NominalTime.Before(T) && (r.Epoch <= oldEpoch || r.FiredBy == c.Servers[a].ID) {
			t.Errorf("time %s was recorded by %s at epoch %d: the paused owner (epoch %d) was not fenced", r.NominalTime, r.FiredBy, r.Epoch, oldEpoch)
		}
		if r.NominalTime.Equal(T) && r.FiredBy != c.Servers[b].ID {
			t.Errorf("T (%s) was recorded by %s, want the new owner %s", T, r.FiredBy, c.Servers[b].ID)
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

// A server whose clock runs 5 s ahead (the hidden --clock-skew) owns a
// schedule: first handed it on purpose, then again right after the active
// was killed (handed it by whoever won, if not itself). It holds its clock
// back to its peers' and never fires early by the true clock: every run
// record reaches etcd (the test's own watch, by the test's clock) no
// earlier than its time was due, every fire's job was made (by the
// process's true clock, before the commit) no earlier, and no record says
// it was committed later than it was seen. Every nominal time has one
// record and one job (I5, I7).
func TestScheduleFastClockOwnerNeverFiresEarly(t *testing.T) {
	const fast, ahead = 2, 5 * time.Second // rm3's clock is 5 s ahead
	e := startEtcd(t)
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, BasePort: freeBasePort(t, 3), DataDir: t.TempDir(),
		EtcdEndpoints: e.Endpoint, LeaseTTL: time.Second, LogLevel: "debug",
		ServerArgs: map[string][]string{local.ServerID(fast): {"--clock-skew", ahead.String()}}})
	cli := etcdClient(t, e)
	layout := keys.New("default")
	seen := watchRunRecords(t, cli, layout)
	cl := newClient(t, c.URLs())
	ctx := context.Background()
	fastID := c.Servers[fast].ID
	handOff := func(from, to int) {
		t.Helper()
		hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := cl.Failover(hctx, c.Servers[from].URL, tandem.HandoffRequest{From: c.Servers[from].ID, To: c.Servers[to].ID}); err != nil {
			t.Fatalf("hand-off %s -> %s: %v", c.Servers[from].ID, c.Servers[to].ID, err)
		}
		waitFor(t, c.Servers[to].ID+" to be active", 30*time.Second, func() bool {
			st, err := c.Status(ctx, to)
			return err == nil && st.State == tandem.StateActive
		})
	}
	if a := waitActive(t, c); a != fast {
		handOff(a, fast)
	}

	s, err := cl.CreateSchedule(ctx, tandem.ScheduleSpec{Name: "fast", Every: tandem.Duration(time.Second), Overlap: "allow", Catchup: "all",
		Job: tandem.JobSpec{Command: []string{"true"}}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// recordedBy counts the schedule's records server id wrote;
	// waitRecords waits until it has written n more.
	recordedBy := func(id string) int {
		runs, err := cl.ScheduleRuns(ctx, s.ID, tandem.ScheduleRunFilter{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range runs {
			if r.FiredBy == id {
				n++
			}
		}
		return n
	}
	waitRecords := func(id string, n int) {
		t.Helper()
		from := recordedBy(id)
		eventually(t, fmt.Sprintf("%d records by %s", n, id), 30*time.Second, func() error {
			if got := recordedBy(id) - from; got < n {
				return fmt.Errorf("%d so far", got)
			}
			return nil
		})
	}
	waitRecords(fastID, 3)

	// Away on purpose, then back after a crash: the active is killed, and
	// the fast server takes the schedule at once, or from the winner.
	handOff(fast, 0)
	waitRecords(c.Servers[0].ID, 2)
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	if b := waitActive(t, c, 0); b != fast {
		handOff(b, fast)
	}
	waitRecords(fastID, 3)

	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	recs, err := bench.ReadSchedules(rctx, cli, layout, 0)
	if err != nil {
		t.Fatal(err)
	}
	jobs := map[string]*tandem.Job{}
	resp, err := cli.Get(rctx, layout.JobsPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	sj := bench.ScheduledJobs{}
	for _, kv := range resp.Kvs {
		var j tandem.Job
		if err := json.Unmarshal(kv.Value, &j); err != nil {
			t.Fatal(err)
		}
		jobs[j.ID] = &j
		sj.Add(&j)
	}
	var rec *bench.ScheduleRecords
	for i := range recs {
		if recs[i].Schedule.ID == s.ID {
			rec = &recs[i]
		}
	}
	if rec == nil {
		t.Fatalf("schedule %s is not in etcd", s.ID)
	}
	k, err := bench.CheckSchedule(*rec, sj[s.ID], bench.CheckWindow{})
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Missed) > 0 || len(k.Doubled) > 0 || k.Fired != k.Expected {
		t.Errorf("I7: expected %d, fired %d, skipped %v; missed %q; doubled %q", k.Expected, k.Fired, k.SkippedBy, k.Missed, k.Doubled)
	}
	fastTerms := map[int64]bool{}
	for _, r := range rec.Runs {
		key := layout.Fire(s.ID, r.NominalTime, keys.RunScheduled)
		at, ok := seen.at(key)
		switch {
		case !ok:
			t.Errorf("record %s: the test's watch never saw it", key)
		case at.Before(r.Due):
			t.Errorf("I5: time %s (due %s) recorded by %s was in etcd at %s by the true clock: %s early",
				r.NominalTime.Format(time.RFC3339), r.Due.Format(time.RFC3339Nano), r.FiredBy, at.Format(time.RFC3339Nano), r.Due.Sub(at))
		case r.CommittedAt.After(at):
			t.Errorf("time %s: committed_at %s (by %s), after the test saw the record at %s: a clock ahead leaked into the record",
				r.NominalTime.Format(time.RFC3339), r.CommittedAt.Format(time.RFC3339Nano), r.FiredBy, at.Format(time.RFC3339Nano))
		}
		if j := jobs[r.JobID]; r.Outcome == tandem.OutcomeFired && j != nil && j.CreatedAt.Before(r.Due) {
			t.Errorf("I5: time %s (due %s): its job %s was made at %s by %s's true clock: early",
				r.NominalTime.Format(time.RFC3339), r.Due.Format(time.RFC3339Nano), j.ID, j.CreatedAt.Format(time.RFC3339Nano), j.AcceptedBy)
		}
		if r.FiredBy == fastID {
			fastTerms[r.Epoch] = true
		}
	}
	if len(fastTerms) < 2 {
		t.Errorf("%s recorded times in %d terms, want 2 (before and after the failovers)", fastID, len(fastTerms))
	}
	t.Logf("%d times, %d fired; %s owned the schedule in epochs %v, holding its clock back %vs",
		k.Expected, k.Fired, fastID, slices.Sorted(maps.Keys(fastTerms)), scrapeMetric(t, c.Servers[fast].URL, "tandem_schedule_clock_correction_seconds", nil))
}

// runRecordsSeen is when the test first saw each run record in etcd, by its
// own clock: a record is committed before the test sees it.
type runRecordsSeen struct {
	mu    sync.Mutex
	first map[string]time.Time
}

func (s *runRecordsSeen) at(key string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.first[key]
	return at, ok
}

// watchRunRecords watches every schedule's run records from now on.
func watchRunRecords(t *testing.T, cli *clientv3.Client, layout keys.Layout) *runRecordsSeen {
	t.Helper()
	s := &runRecordsSeen{first: map[string]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	wch := cli.Watch(ctx, layout.FiresPrefix(), clientv3.WithPrefix())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wr := range wch {
			now := time.Now()
			s.mu.Lock()
			for _, ev := range wr.Events {
				if _, ok := s.first[string(ev.Kv.Key)]; !ok && ev.Type == clientv3.EventTypePut {
					s.first[string(ev.Kv.Key)] = now
				}
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// notOnPurpose selects the step-downs a server did not choose: fenced,
// deposed, or its session lost (not resigned or handed off).
func notOnPurpose(labels string) bool {
	return strings.Contains(labels, `reason="fenced"`) || strings.Contains(labels, `reason="deposed"`) ||
		strings.Contains(labels, `reason="session_lost"`)
}

// scrapeMetric sums the samples of metric name at the server at url whose
// labels keep accepts (nil: all); it fails the test if the server does not
// answer.
func scrapeMetric(t *testing.T, url, name string, keep func(labels string) bool) float64 {
	t.Helper()
	v, err := readMetric(t, url, name, keep)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// readMetric is scrapeMetric, returning the error.
func readMetric(t *testing.T, url, name string, keep func(labels string) bool) (float64, error) {
	req, _ := http.NewRequest(http.MethodGet, url+"/metrics", nil)
	resp, err := httpClient(t).Do(authorize(t, req))
	if err != nil {
		return 0, fmt.Errorf("metrics of %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics of %s: HTTP %d, %v", url, resp.StatusCode, err)
	}
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || rest[0] != ' ' && rest[0] != '{' {
			continue
		}
		labels, value := "", strings.TrimSpace(rest)
		if rest[0] == '{' {
			end := strings.Index(rest, "}")
			labels, value = rest[:end+1], strings.TrimSpace(rest[end+1:])
		}
		if keep != nil && !keep(labels) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, fmt.Errorf("metrics of %s: %q: %w", url, line, err)
		}
		sum += v
	}
	return sum, nil
}
