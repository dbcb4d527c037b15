package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/schedule"
	"github.com/tandemhq/tandem/internal/server"
)

// everySecond is a schedule firing every second that starts `true`.
func everySecond(name string, mod func(*tandem.ScheduleSpec)) tandem.ScheduleSpec {
	s := tandem.ScheduleSpec{Name: name, Every: tandem.Duration(time.Second), Overlap: "allow",
		Job: tandem.JobSpec{Command: []string{"true"}, Env: map[string]string{"MINE": "1"}}}
	if mod != nil {
		mod(&s)
	}
	return s
}

// scheduleGrace configures servers for 1 s schedules, with a grace of
// grace (longer than the test lease TTL).
func scheduleGrace(grace time.Duration, more func(*server.Config)) func(*server.Config) {
	return func(c *server.Config) {
		c.ScheduleGrace = grace
		if more != nil {
			more(c)
		}
	}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// stored is what etcd itself holds about one schedule.
type stored struct {
	sch  tandem.Schedule
	runs map[string]tandem.ScheduleRun // by key
	jobs map[string]*tandem.Job        // the schedule's jobs, by ID
}

// readStored reads schedule id, its run records and its jobs from etcd, not
// from any server's view.
func (c *cluster) readStored(id string) stored {
	c.t.Helper()
	cli := c.etcd.Client(c.t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := keys.New("test")
	var st stored
	resp, err := cli.Get(ctx, l.Schedule(id))
	if err != nil || len(resp.Kvs) == 0 {
		c.t.Fatalf("read schedule %s: %v (%d keys)", id, err, len(resp.Kvs))
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &st.sch); err != nil {
		c.t.Fatal(err)
	}
	// Everything at the schedule's revision: the schedule may still be
	// firing, and a record read later than its cursor would look like a
	// time decided beyond the cursor.
	rev := resp.Header.Revision
	st.runs = map[string]tandem.ScheduleRun{}
	resp, err = cli.Get(ctx, l.Fires(id), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		c.t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		var r tandem.ScheduleRun
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			c.t.Fatal(err)
		}
		st.runs[string(kv.Key)] = r
	}
	st.jobs = map[string]*tandem.Job{}
	resp, err = cli.Get(ctx, l.JobsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		c.t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		var j tandem.Job
		if err := json.Unmarshal(kv.Value, &j); err != nil {
			c.t.Fatal(err)
		}
		if j.ScheduleID == id {
			st.jobs[j.ID] = &j
		}
	}
	return st
}

// checkExactlyOnce checks I7 on what etcd holds for schedule id: every
// nominal time after its creation, up to its cursor, has exactly one record
// (fired or skipped; or it is buffered), a fired time has exactly one job,
// which names the schedule and the time and sits in the schedule's shard,
// every job of the schedule has a record, and nothing was decided before
// it was due by the deciding server's clock. It returns the stored state.
func (c *cluster) checkExactlyOnce(id string) stored { return c.checkRecords(id, false) }

// checkRecords is checkExactlyOnce; with pruned, records may be missing
// (the history limits pruned them), but never doubled.
func (c *cluster) checkRecords(id string, pruned bool) stored {
	c.t.Helper()
	st := c.readStored(id)
	sch := st.sch
	tt, err := schedule.NewTimetable(server.SpecOf(sch.ScheduleSpec))
	if err != nil {
		c.t.Fatal(err)
	}
	covered := map[int64]int{}
	jobRefs := map[string]int{}
	for key, r := range st.runs {
		last := r.NominalTime
		if r.Through != nil {
			last = *r.Through
		}
		if r.CommittedAt.Before(r.Due) {
			c.t.Errorf("%s: committed at %s, before it was due at %s", key, r.CommittedAt, r.Due)
		}
		if r.JobID != "" {
			jobRefs[r.JobID]++
			j := st.jobs[r.JobID]
			switch {
			case j == nil:
				c.t.Errorf("%s: fired job %s is not in etcd", key, r.JobID)
			case !j.NominalTime.Equal(r.NominalTime):
				c.t.Errorf("%s: job %s has nominal time %s", key, j.ID, j.NominalTime)
			case j.Shard != sch.Shard:
				c.t.Errorf("%s: job %s in shard %d, schedule in %d", key, j.ID, j.Shard, sch.Shard)
			}
		}
		if r.Outcome == tandem.OutcomeFired && r.JobID == "" {
			c.t.Errorf("%s: fired without a job", key)
		}
		if r.Reason == tandem.ReasonManual || r.Reason == tandem.ReasonBackfill {
			continue // extra runs, not nominal times of the schedule's own
		}
		n := 0
		for _, nt := range tt.List(r.NominalTime.Add(-1), last, 0) {
			covered[nt.UnixNano()]++
			n++
		}
		if n != r.Count {
			c.t.Errorf("%s: count %d, covers %d nominal times", key, r.Count, n)
		}
	}
	for _, b := range sch.Buffered {
		covered[b.UnixNano()]++
	}
	all := tt.List(sch.CreatedAt, sch.Cursor, 0)
	for _, nt := range all {
		if n := covered[nt.UnixNano()]; n > 1 || n == 0 && !pruned {
			c.t.Errorf("I7: nominal time %s has %d records, want 1", nt.UTC().Format(time.RFC3339Nano), n)
		}
		delete(covered, nt.UnixNano())
	}
	for nt, n := range covered {
		c.t.Errorf("I7: %d records for %s, which is not a nominal time in (created, cursor]", n, time.Unix(0, nt).UTC())
	}
	for jid := range st.jobs {
		if n := jobRefs[jid]; n > 1 || n == 0 && !pruned {
			c.t.Errorf("job %s of the schedule has %d run records, want 1", jid, n)
		}
	}
	return st
}

// byTime returns the schedule's own run records (not manual or
// backfilled), oldest first.
func (st stored) byTime() []tandem.ScheduleRun {
	var out []tandem.ScheduleRun
	for _, r := range st.runs {
		if r.Reason != tandem.ReasonManual && r.Reason != tandem.ReasonBackfill {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].NominalTime.Before(out[b].NominalTime) })
	return out
}

// waitCursor waits until schedule id's cursor, in srv's view, is at or after at.
func waitCursor(t *testing.T, srv *server.Server, id string, at time.Time) {
	t.Helper()
	waitFor(t, "the schedule's cursor to pass "+at.Format(time.RFC3339Nano), 20*time.Second, func() bool {
		sch, err := srv.GetSchedule(id)
		return err == nil && !sch.Cursor.Before(at)
	})
}

// brief describes run records as "outcome/reason" in order.
func brief(runs []tandem.ScheduleRun) string {
	var out []string
	for _, r := range runs {
		s := string(r.Outcome)
		if r.Reason != "" {
			s += "/" + r.Reason
		}
		if r.Count > 1 {
			s += fmt.Sprintf("x%d", r.Count)
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// The API's spec and internal/schedule's have the same timing fields, with
// the same JSON names: SpecOf converts every one.
func TestScheduleSpecMatchesInternalSpec(t *testing.T) {
	fields := func(typ reflect.Type) []string {
		var out []string
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if f.Name != "Job" && f.Name != "Workflow" { // what a fire starts
				out = append(out, f.Name+" "+f.Tag.Get("json"))
			}
		}
		sort.Strings(out)
		return out
	}
	got, want := fields(reflect.TypeOf(tandem.ScheduleSpec{})), fields(reflect.TypeOf(schedule.Spec{}))
	if !slices.Equal(got, want) {
		t.Fatalf("tandem.ScheduleSpec fields %v, internal/schedule.Spec fields %v", got, want)
	}
	// Every field survives SpecOf: fill each with a non-zero value.
	in := tandem.ScheduleSpec{Name: "n", Cron: []string{"* * * * *"}, Every: 1, Anchor: time.Unix(1, 0), TZ: "UTC",
		Start: time.Unix(2, 0), End: time.Unix(3, 0), Jitter: 4, Overlap: "allow", Catchup: "all", CatchupWindow: 5,
		CatchupMax: 6, HistoryLimits: tandem.ScheduleHistoryLimits{Fired: 7, Skipped: 8}, Paused: true, PauseNote: "p"}
	a, _ := json.Marshal(in)
	var viaJSON map[string]any
	_ = json.Unmarshal(a, &viaJSON)
	delete(viaJSON, "job")
	b, _ := json.Marshal(server.SpecOf(in))
	var converted map[string]any
	_ = json.Unmarshal(b, &converted)
	if !reflect.DeepEqual(viaJSON, converted) {
		t.Fatalf("SpecOf lost a field: got %v, want %v", converted, viaJSON)
	}
}

// A schedule fires each nominal time once, as a job named after the
// schedule and the time, with the schedule's environment, in the
// schedule's shard; never before its time by the server's clock.
func TestScheduleFires(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2, scheduleGrace(5*time.Second, nil))
	a := c.nodes[c.waitActive()].srv
	ctx := testCtx(t)
	sch, err := a.CreateSchedule(ctx, everySecond("tick", nil))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sch.ID, "s") || sch.Cursor.IsZero() || sch.Version != 1 {
		t.Fatalf("created %+v", sch)
	}
	waitCursor(t, a, sch.ID, sch.CreatedAt.Add(3*time.Second))
	st := c.checkExactlyOnce(sch.ID)
	runs := st.byTime()
	if len(runs) < 3 {
		t.Fatalf("got %d runs, want at least 3", len(runs))
	}
	for _, r := range runs {
		if r.Outcome != tandem.OutcomeFired {
			t.Fatalf("run %s: outcome %s, want fired", r.NominalTime, r.Outcome)
		}
		j := st.jobs[r.JobID]
		prev := r.NominalTime.Add(-time.Second)
		wantEnv := map[string]string{"MINE": "1", server.EnvScheduleID: sch.ID,
			server.EnvNominalTime:   r.NominalTime.Format(time.RFC3339Nano),
			server.EnvIntervalStart: prev.Format(time.RFC3339Nano), server.EnvIntervalEnd: r.NominalTime.Format(time.RFC3339Nano)}
		if !reflect.DeepEqual(j.Env, wantEnv) {
			t.Errorf("job %s env %v, want %v", j.ID, j.Env, wantEnv)
		}
		if want := "tick@" + r.NominalTime.Format(time.RFC3339); j.Name != want || j.ScheduleID != sch.ID {
			t.Errorf("job %s named %q for schedule %q, want %q for %q", j.ID, j.Name, j.ScheduleID, want, sch.ID)
		}
		if r.CommittedAt.Before(r.NominalTime) || j.CreatedAt.Before(r.NominalTime) {
			t.Errorf("run %s committed at %s, job created at %s: early", r.NominalTime, r.CommittedAt, j.CreatedAt)
		}
	}
	fires := metricValue(t, a, "tandem_schedule_fires_total")
	if late := metricValue(t, a, "tandem_schedule_fire_lateness_seconds"); fires < float64(len(runs)) || late < float64(len(runs)) {
		t.Errorf("metrics: %v fires and %v lateness samples, want at least %d", fires, late, len(runs))
	}
	// The standby's view has the same runs, and answers reads; it refuses writes.
	var b *server.Server
	for _, n := range c.nodes {
		if n.srv != a {
			b = n.srv
		}
	}
	if err := b.WaitRevision(ctx, a.Revision()); err != nil {
		t.Fatal(err)
	}
	got, err := b.ScheduleRuns(sch.ID, tandem.ScheduleRunFilter{Outcome: tandem.OutcomeFired})
	if err != nil || len(got) < len(runs) {
		t.Fatalf("standby lists %d fired runs (%v), want at least %d", len(got), err, len(runs))
	}
	if _, err := b.TriggerSchedule(ctx, sch.ID); !errors.Is(err, tandem.ErrNotActive) {
		t.Fatalf("trigger on the standby: got %v, want ErrNotActive", err)
	}
	if _, err := b.CreateSchedule(ctx, everySecond("x", nil)); !errors.Is(err, tandem.ErrNotActive) {
		t.Fatalf("create on the standby: got %v, want ErrNotActive", err)
	}
	next, err := b.NextTimes(sch.ID, 3)
	if err != nil || len(next) != 3 || !next[0].After(runs[len(runs)-1].NominalTime) || next[1].Sub(next[0]) != time.Second {
		t.Fatalf("next times %v (%v)", next, err)
	}
}

// fireTrap blocks a schedule's controller at one FirePoint, once, until the
// test releases it.
type fireTrap struct {
	mu      sync.Mutex
	point   server.FirePoint
	sched   string
	hit     chan trapHit
	release chan struct{}
}

type trapHit struct {
	server string
	ev     server.FireEvent
}

func newFireTrap() *fireTrap { return &fireTrap{hit: make(chan trapHit, 1)} }

// arm makes the next controller that reaches point for schedule id with a
// fire among its decisions stop there.
func (ft *fireTrap) arm(point server.FirePoint, id string) chan struct{} {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.point, ft.sched, ft.release = point, id, make(chan struct{})
	return ft.release
}

func (ft *fireTrap) hook(serverID string) func(server.FireEvent) {
	return func(ev server.FireEvent) {
		ft.mu.Lock()
		fires := slices.ContainsFunc(ev.Decisions, func(d schedule.Decision) bool {
			return d.Outcome == schedule.Fire || d.Outcome == schedule.Replace
		})
		if ft.point == "" || ev.Point != ft.point || ev.Schedule != ft.sched || !fires {
			ft.mu.Unlock()
			return
		}
		ft.point = ""
		release := ft.release
		ft.mu.Unlock()
		ft.hit <- trapHit{serverID, ev}
		<-release
	}
}

func (c *cluster) byID(id string) *node {
	for _, n := range c.nodes {
		if n.srv.ID() == id && !n.dead {
			return n
		}
	}
	c.t.Fatalf("no live server %s", id)
	return nil
}

// I7: the owner is deposed (a graceful failover to the standby) at every
// point between planning a fire and committing it; the new owner goes on
// from the stored cursor, and the old owner's decisions never take effect.
// Every nominal time ends with exactly one record and one job.
func TestScheduleExactlyOnceAcrossFailovers(t *testing.T) {
	t.Parallel()
	trap := newFireTrap()
	c := newCluster(t, 2, scheduleGrace(5*time.Second, func(cfg *server.Config) { cfg.FireHook = trap.hook(cfg.ID) }))
	ctx := testCtx(t)
	first := c.nodes[c.waitActive()].srv
	allow, err := first.CreateSchedule(ctx, everySecond("allow", nil))
	if err != nil {
		t.Fatal(err)
	}
	replace, err := first.CreateSchedule(ctx, everySecond("replace", func(s *tandem.ScheduleSpec) { s.Overlap = "replace" }))
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		point server.FirePoint
		id    string
	}{
		{server.FirePlanned, allow.ID},
		{server.FireCommit, allow.ID},
		{server.FireCommitted, allow.ID},
		{server.FireKilled, replace.ID},
		{server.FireCommit, replace.ID},
	} {
		release := trap.arm(step.point, step.id)
		var hit trapHit
		select {
		case hit = <-trap.hit:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the controller never reached %s", step.id, step.point)
		}
		old := c.byID(hit.server)
		to := "rm1"
		if hit.server == "rm1" {
			to = "rm2"
		}
		if _, err := old.srv.HandOff(ctx, tandem.HandoffRequest{From: hit.server, To: to}); err != nil {
			close(release)
			t.Fatalf("hand-off at %s: %v", step.point, err)
		}
		// The new owner decides the trapped time (unless it was committed)
		// and the next one, from the stored cursor.
		t0 := hit.ev.Decisions[len(hit.ev.Decisions)-1].Through
		waitCursor(t, c.byID(to).srv, step.id, t0.Add(time.Second))
		close(release)
		t.Logf("%s at %s on %s: handed off to %s", step.id, step.point, hit.server, to)
	}
	for _, id := range []string{allow.ID, replace.ID} {
		st := c.checkExactlyOnce(id)
		if n := len(st.byTime()); n < 5 {
			t.Errorf("%s: %d runs, want at least 5", id, n)
		}
	}
	// Replace killed every run but the latest ones.
	st := c.readStored(replace.ID)
	killed := 0
	for _, j := range st.jobs {
		if j.State == tandem.JobKilled {
			killed++
		}
	}
	if killed < 3 {
		t.Errorf("replace killed %d runs, want at least 3", killed)
	}
	c.audit(1)
}

// metricValue sums every series of the counter or gauge name in srv's
// registry (for a histogram, its sample counts).
func metricValue(t *testing.T, srv *server.Server, name string) float64 {
	t.Helper()
	mfs, err := srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// I1, I7: an owner deposed while it is about to commit a fire, without
// noticing (it still owns another shard, so its controller goes on), sends
// the commit: etcd rejects it on the fence, and the shard's new term fires
// the time instead, once.
func TestDeposedOwnersFireIsFenced(t *testing.T) {
	t.Parallel()
	trap := newFireTrap()
	c := newCluster(t, 1, scheduleGrace(5*time.Second, func(cfg *server.Config) {
		sharded(2)(cfg)
		cfg.FireHook = trap.hook(cfg.ID)
	}))
	c.waitSettled(2)
	srv := c.nodes[0].srv
	ctx := testCtx(t)
	sch, err := srv.CreateSchedule(ctx, everySecond("fenced", nil))
	if err != nil {
		t.Fatal(err)
	}
	release := trap.arm(server.FireCommit, sch.ID)
	var hit trapHit
	select {
	case hit = <-trap.hit:
	case <-time.After(10 * time.Second):
		t.Fatal("the controller never reached the commit")
	}
	fencedBefore := metricValue(t, srv, "tandem_fenced_writes_total")
	// Depose the owner of the schedule's shard behind its back: its owner
	// key goes, and the shard is taken again at a new epoch.
	ownerKey := keys.New("test").Shard(sch.Shard, 2).Owner
	if _, err := c.etcd.Client(t).Delete(ctx, ownerKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a new term of the schedule's shard", 10*time.Second, func() bool {
		return srv.ShardInfos()[sch.Shard].Epoch > hit.ev.Epoch
	})
	close(release)
	waitFor(t, "the deposed term's commit to be fenced", 10*time.Second, func() bool {
		return metricValue(t, srv, "tandem_fenced_writes_total") > fencedBefore
	})
	t0 := hit.ev.Decisions[len(hit.ev.Decisions)-1].Through
	waitCursor(t, srv, sch.ID, t0.Add(time.Second))
	st := c.checkExactlyOnce(sch.ID)
	for _, r := range st.byTime() {
		if !r.NominalTime.After(t0) && r.Epoch == hit.ev.Epoch && r.NominalTime.Equal(hit.ev.Decisions[0].Nominal) {
			t.Errorf("run %s was committed under the deposed epoch %d", r.NominalTime, r.Epoch)
		}
	}
	c.audit(2)
}

// stopAll stops every live server gracefully: the whole cluster is down.
func (c *cluster) stopAll() {
	c.t.Helper()
	for _, n := range c.nodes {
		if !n.dead {
			n.dead = true
			_ = n.srv.Close()
			n.http.Close()
		}
	}
}

// I7 across downtime of the whole cluster: every nominal time that fell in
// the outage gets exactly one record, as its catch-up policy says, and the
// restarted cluster goes on from the stored cursor.
func TestScheduleCatchUpAfterClusterDowntime(t *testing.T) {
	t.Parallel()
	// A grace just above the lease TTL, so a few seconds of downtime are a catch-up.
	c := newCluster(t, 1, scheduleGrace(2*time.Second, nil))
	srv := c.nodes[c.waitActive()].srv
	ctx := testCtx(t)
	ids := map[string]string{}
	for _, p := range []string{"all", "latest", "none"} {
		sch, err := srv.CreateSchedule(ctx, everySecond(p, func(s *tandem.ScheduleSpec) { s.Catchup = p }))
		if err != nil {
			t.Fatal(err)
		}
		ids[p] = sch.ID
	}
	for _, id := range ids {
		sch, _ := srv.GetSchedule(id)
		waitCursor(t, srv, id, sch.CreatedAt.Add(time.Second))
	}
	c.stopAll()
	down := time.Now()
	// The outage itself: the whole cluster is down for four periods, more
	// than the grace, so some times are missed for good.
	time.Sleep(4 * time.Second)
	up := c.start("rm2")
	c.nodes = append(c.nodes, up)
	c.waitActive()
	later := time.Now().Add(time.Second)
	for _, id := range ids {
		waitCursor(t, up.srv, id, later)
	}
	for p, id := range ids {
		st := c.checkExactlyOnce(id)
		// Missed: times of the outage decided after the restart at least
		// the grace late, which is the controller's own rule (Late is how
		// late its decision was). A cut-off by the restart's clock would
		// drop the latest missed time when the election is slow.
		var missed []tandem.ScheduleRun
		for _, r := range st.byTime() {
			if r.NominalTime.After(down) && r.FiredBy == "rm2" && time.Duration(r.Late) >= 2*time.Second {
				missed = append(missed, r)
			}
		}
		got := brief(missed)
		switch p {
		case "all":
			if len(missed) < 2 || strings.Contains(got, "skipped") {
				t.Errorf("catchup all: missed times %q, want all fired", got)
			}
		case "latest":
			if !strings.HasPrefix(got, "skipped/catchup") || !strings.HasSuffix(got, "fired") || strings.Count(got, "fired") != 1 {
				t.Errorf("catchup latest: missed times %q, want one skipped range then one fired", got)
			}
		case "none":
			if got == "" || strings.Contains(got, "fired") {
				t.Errorf("catchup none: missed times %q, want skipped only", got)
			}
		}
		t.Logf("catchup %s: %s", p, brief(st.byTime()))
	}
}

// killRuns kills every live job of schedule id (there are no agents, so a
// run stays pending until killed).
func killRuns(t *testing.T, srv *server.Server, id string) {
	t.Helper()
	for _, r := range srv.Store().Runs(id) {
		if r.JobID != "" && !r.JobState.Terminal() {
			if _, err := srv.Kill(context.Background(), r.JobID); err != nil {
				t.Fatalf("kill %s: %v", r.JobID, err)
			}
		}
	}
}

// Each overlap policy, with runs that stay live until the test kills them.
func TestScheduleOverlapPolicies(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, scheduleGrace(5*time.Second, nil))
	srv := c.nodes[c.waitActive()].srv
	ctx := testCtx(t)
	ids := map[string]string{}
	for _, p := range []string{"allow", "skip", "buffer_one", "buffer_all", "replace"} {
		sch, err := srv.CreateSchedule(ctx, everySecond(p, func(s *tandem.ScheduleSpec) { s.Overlap = p }))
		if err != nil {
			t.Fatal(err)
		}
		ids[p] = sch.ID
	}
	// Let three times come while the first run is live, then end the live
	// runs and let two more come.
	start := time.Now()
	for _, id := range ids {
		waitCursor(t, srv, id, start.Add(2500*time.Millisecond))
	}
	for _, p := range []string{"skip", "buffer_one", "buffer_all"} {
		killRuns(t, srv, ids[p])
	}
	mid := time.Now()
	for _, id := range ids {
		waitCursor(t, srv, id, mid.Add(1500*time.Millisecond))
	}
	for p, id := range ids {
		st := c.checkExactlyOnce(id)
		runs := st.byTime()
		got := brief(runs)
		live := 0
		for _, j := range st.jobs {
			if !j.State.Terminal() {
				live++
			}
		}
		t.Logf("%s: %s (buffered %d, live %d)", p, got, len(st.sch.Buffered), live)
		switch p {
		case "allow":
			if strings.Contains(got, "skipped") || live != len(runs) {
				t.Errorf("allow: %s with %d live runs, want every time fired and live", got, live)
			}
		case "skip":
			if !strings.HasPrefix(got, "fired skipped/overlap") || live != 1 {
				t.Errorf("skip: %s with %d live, want fired then skipped (overlap), one live run", got, live)
			}
		case "buffer_one":
			if !strings.Contains(got, "fired/buffered") || !strings.Contains(got, "skipped/overlap") || live != 1 {
				t.Errorf("buffer_one: %s with %d live, want a buffered time released and others skipped", got, live)
			}
		case "buffer_all":
			if !strings.Contains(got, "fired/buffered") || strings.Contains(got, "skipped") || live != 1 || len(st.sch.Buffered) == 0 {
				t.Errorf("buffer_all: %s with %d live and %d buffered, want times kept, one released", got, live, len(st.sch.Buffered))
			}
		case "replace":
			if strings.Contains(got, "skipped") || live != 1 || len(runs) < 4 {
				t.Errorf("replace: %s with %d live, want every time fired, only the latest live", got, live)
			}
			for _, r := range runs[1:] {
				if len(r.Replaced) == 0 {
					t.Errorf("replace: run %s replaced nothing", r.NominalTime)
				}
			}
		}
	}
	// A buffered time is released as soon as the live run ends, without
	// waiting for the next nominal time.
	id := ids["buffer_one"]
	sch, _ := srv.GetSchedule(id)
	if len(sch.Buffered) != 1 {
		t.Fatalf("buffer_one: %d buffered, want 1", len(sch.Buffered))
	}
	b := sch.Buffered[0]
	// End the schedule, so no new time comes to take the buffer's place.
	end := time.Now()
	if _, err := srv.UpdateSchedule(ctx, id, sch.Version, func(s *tandem.ScheduleSpec) error { s.End = end; return nil }); err != nil {
		t.Fatal(err)
	}
	killRuns(t, srv, id)
	waitFor(t, "the buffered time to be released", 5*time.Second, func() bool {
		runs, _ := srv.ScheduleRuns(id, tandem.ScheduleRunFilter{Outcome: tandem.OutcomeFired})
		return len(runs) > 0 && runs[len(runs)-1].NominalTime.Equal(b) && runs[len(runs)-1].Reason == tandem.ReasonBuffered
	})
	waitFor(t, "the schedule to be done", 5*time.Second, func() bool {
		sch, _ = srv.GetSchedule(id)
		return sch.Done
	})
	if len(sch.Buffered) != 0 || sch.Version != 2 {
		t.Errorf("after the release: version %d, buffered %v", sch.Version, sch.Buffered)
	}
	c.checkExactlyOnce(id)
}

// The Go API of schedules: validation, pause and resume, manual triggers,
// backfill, updates with a version, history limits, delete.
func TestScheduleAPI(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, scheduleGrace(5*time.Second, nil))
	srv := c.nodes[c.waitActive()].srv
	ctx := testCtx(t)

	for _, bad := range []tandem.ScheduleSpec{
		everySecond("", func(s *tandem.ScheduleSpec) { s.Every = 0 }),
		everySecond("", func(s *tandem.ScheduleSpec) { s.Every, s.Cron = 0, []string{"0 0 30 2 *"} }),
		everySecond("", func(s *tandem.ScheduleSpec) { s.Overlap = "sometimes" }),
		everySecond("", func(s *tandem.ScheduleSpec) { s.Job.Command = nil }),
	} {
		if _, err := srv.CreateSchedule(ctx, bad); tandem.ErrorCode(err) != tandem.EINVALID {
			t.Errorf("create %+v: got %v, want an invalid_argument error", bad, err)
		}
	}
	if n := len(srv.ListSchedules()); n != 0 {
		t.Fatalf("%d schedules stored after bad input, want 0", n)
	}

	sch, err := srv.CreateSchedule(ctx, everySecond("api", func(s *tandem.ScheduleSpec) {
		s.HistoryLimits = tandem.ScheduleHistoryLimits{Fired: 3, Skipped: 1}
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := sch.ID
	waitCursor(t, srv, id, sch.CreatedAt.Add(1500*time.Millisecond))

	// Pause: the times that fall due are skipped, merged into one record.
	p, err := srv.PauseSchedule(ctx, id, "maintenance")
	if err != nil || !p.Paused || p.PauseNote != "maintenance" || p.Version != 2 {
		t.Fatalf("pause: %+v, %v", p, err)
	}
	waitCursor(t, srv, id, time.Now().Add(2500*time.Millisecond))
	// A manual run fires at once, paused or not, and does not move the cursor.
	before, _ := srv.GetSchedule(id)
	run, err := srv.TriggerSchedule(ctx, id)
	if err != nil || run.Outcome != tandem.OutcomeFired || run.Reason != tandem.ReasonManual || run.JobID == "" {
		t.Fatalf("trigger: %+v, %v", run, err)
	}
	after, _ := srv.GetSchedule(id)
	if !after.Cursor.Equal(before.Cursor) {
		t.Errorf("trigger moved the cursor from %s to %s", before.Cursor, after.Cursor)
	}
	j, _, err := srv.Job(run.JobID)
	if err != nil || j.ScheduleID != id || j.Env[server.EnvNominalTime] != run.NominalTime.Format(time.RFC3339Nano) {
		t.Fatalf("manual run's job: %+v, %v", j, err)
	}
	if _, err := srv.Kill(ctx, run.JobID); err != nil {
		t.Fatal(err)
	}
	// Resume: firing goes on.
	r, err := srv.ResumeSchedule(ctx, id)
	if err != nil || r.Paused || r.Version != 3 {
		t.Fatalf("resume: %+v, %v", r, err)
	}
	waitCursor(t, srv, id, time.Now().Add(1500*time.Millisecond))
	runs, err := srv.ScheduleRuns(id, tandem.ScheduleRunFilter{})
	if err != nil {
		t.Fatal(err)
	}
	got := brief(runs)
	if !strings.Contains(got, "skipped/paused") || !strings.Contains(got, "fired/manual") || !strings.HasSuffix(got, "fired") {
		t.Errorf("runs: %s, want a paused range, a manual run, then fires", got)
	}
	// History limits: at most 3 fired and 1 skipped records are kept.
	waitFor(t, "old records to be pruned", 5*time.Second, func() bool {
		fired, _ := srv.ScheduleRuns(id, tandem.ScheduleRunFilter{Outcome: tandem.OutcomeFired})
		skipped, _ := srv.ScheduleRuns(id, tandem.ScheduleRunFilter{Outcome: tandem.OutcomeSkipped})
		return len(fired) <= 3 && len(skipped) <= 1
	})
	if last, _ := srv.ScheduleRuns(id, tandem.ScheduleRunFilter{Limit: 1}); len(last) != 1 || last[0].Outcome != tandem.OutcomeFired {
		t.Errorf("latest run: %+v", last)
	}

	c.checkRecords(id, true)

	// Update with a stale version is refused; with the current one it applies.
	cur, _ := srv.GetSchedule(id)
	if _, err := srv.UpdateSchedule(ctx, id, cur.Version-1, func(s *tandem.ScheduleSpec) error { return nil }); tandem.ErrorCode(err) != tandem.ECONFLICT {
		t.Errorf("update at a stale version: got %v, want a conflict", err)
	}
	up, err := srv.UpdateSchedule(ctx, id, cur.Version, server.MergePatch([]byte(`{"every":"2s","job":{"command":["echo","hi"]}}`)))
	if err != nil || up.Every != tandem.Duration(2*time.Second) || up.Job.Command[0] != "echo" || up.Name != "api" || up.HistoryLimits.Fired != 3 {
		t.Fatalf("update: %+v, %v", up, err)
	}
	if _, err := srv.UpdateSchedule(ctx, id, 0, server.MergePatch([]byte(`{"every":"10ms"}`))); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Errorf("update to every 10ms: got %v, want invalid_argument", err)
	}

	// Backfill runs past nominal times, each once, even when asked twice.
	from := up.CreatedAt.Add(-5 * time.Second)
	to := up.CreatedAt.Add(-3 * time.Second)
	bf, err := srv.BackfillSchedule(ctx, id, from, to)
	tt, _ := schedule.NewTimetable(server.SpecOf(up.ScheduleSpec))
	if want := len(tt.List(from.Add(-1), to, 0)); err != nil || len(bf) != want || want == 0 {
		t.Fatalf("backfill: %d runs (%v), want %d", len(bf), err, want)
	}
	again, err := srv.BackfillSchedule(ctx, id, from, to)
	if err != nil || len(again) != 0 {
		t.Fatalf("backfill again: %d runs (%v), want 0", len(again), err)
	}
	if _, err := srv.BackfillSchedule(ctx, id, from, time.Now().Add(time.Hour)); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Errorf("backfill past the cursor: got %v, want invalid_argument", err)
	}
	for _, r := range bf {
		if r.Reason != tandem.ReasonBackfill || r.JobID == "" {
			t.Errorf("backfilled run %+v", r)
		}
	}

	// Delete removes the schedule and its records; its jobs stay.
	if err := srv.DeleteSchedule(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.GetSchedule(id); tandem.ErrorCode(err) != tandem.ENOTFOUND {
		t.Errorf("get after delete: got %v, want not_found", err)
	}
	resp, err := c.etcd.Client(t).Get(ctx, keys.New("test").Fires(id), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("run records after delete: %d (%v), want 0", resp.Count, err)
	}
	if _, _, err := srv.Job(run.JobID); err != nil {
		t.Errorf("the manual run's job after delete: %v", err)
	}
	c.audit(1)
}

// Nothing fires before its due time by the server's clock: a server whose
// clock is behind fires late by the true clock, never early.
func TestScheduleNeverFiresEarlyByServerClock(t *testing.T) {
	t.Parallel()
	const behind = 1500 * time.Millisecond
	c := newCluster(t, 1, scheduleGrace(5*time.Second, func(cfg *server.Config) {
		cfg.Clock = func() time.Time { return time.Now().Add(-behind) }
	}))
	srv := c.nodes[c.waitActive()].srv
	ctx := testCtx(t)
	sch, err := srv.CreateSchedule(ctx, everySecond("slow", func(s *tandem.ScheduleSpec) { s.Jitter = tandem.Duration(500 * time.Millisecond) }))
	if err != nil {
		t.Fatal(err)
	}
	waitCursor(t, srv, sch.ID, sch.CreatedAt.Add(2*time.Second))
	st := c.checkExactlyOnce(sch.ID)
	for _, r := range st.byTime() {
		if created := st.jobs[r.JobID].CreatedAt; created.Before(r.Due.Add(behind)) {
			t.Errorf("run %s due %s: its job was created at %s by the true clock, before the server's clock reached its due time",
				r.NominalTime, r.Due, created)
		}
	}
}

// A server whose clock is ahead of the others' never fires early by the
// true clock: it holds its clock back to its peers' time.
func TestScheduleFastClockNeverFiresEarly(t *testing.T) {
	t.Parallel()
	const ahead = 3 * time.Second
	c := newCluster(t, 2, scheduleGrace(5*time.Second, func(cfg *server.Config) {
		if cfg.ID == "rm1" {
			cfg.Clock = func() time.Time { return time.Now().Add(ahead) }
		}
	}))
	ctx := testCtx(t)
	if i := c.waitActive(); c.nodes[i].srv.ID() != "rm1" {
		if _, err := c.nodes[i].srv.HandOff(ctx, tandem.HandoffRequest{To: "rm1"}); err != nil {
			t.Fatal(err)
		}
	}
	fast := c.byID("rm1").srv
	waitFor(t, "rm1 to know its clock is ahead", 10*time.Second, func() bool {
		return metricValue(t, fast, "tandem_schedule_clock_correction_seconds") >= ahead.Seconds()
	})
	sch, err := fast.CreateSchedule(ctx, everySecond("fast", nil))
	if err != nil {
		t.Fatal(err)
	}
	waitCursor(t, fast, sch.ID, sch.Cursor.Add(2*time.Second))
	st := c.checkExactlyOnce(sch.ID)
	runs := st.byTime()
	if len(runs) < 2 {
		t.Fatalf("%d runs, want at least 2", len(runs))
	}
	for _, r := range runs {
		if j := st.jobs[r.JobID]; j.CreatedAt.Before(r.Due) {
			t.Errorf("run %s due %s: its job was created at %s by the true clock: early", r.NominalTime, r.Due, j.CreatedAt)
		}
	}
	if got := metricValue(t, fast, "tandem_schedule_clock_correction_seconds"); got > ahead.Seconds()+1.5 {
		t.Errorf("clock correction %.3fs, want about %s", got, ahead)
	}
}

// Bad input over HTTP: a malformed cron expression, one that never fires,
// an unknown time zone, or a bad policy is refused with 400 and a message
// that says what is wrong, and nothing is stored: no schedule, run record,
// job or idempotency key.
func TestScheduleBadInput(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1, nil)
	c.waitActive()
	for _, tc := range []struct {
		name string
		body string
		want string
	}{
		{"malformed cron", `{"cron":["61 * * * *"],"job":{"command":["true"]}}`, `cron "61 * * * *" is malformed`},
		{"cron with too few fields", `{"cron":["* * *"],"job":{"command":["true"]}}`, `cron "* * *" is malformed`},
		{"cron that never fires", `{"cron":["0 0 30 2 *"],"job":{"command":["true"]}}`, "never fires"},
		{"unknown zone", `{"cron":["0 2 * * *"],"tz":"Nowhere/City","job":{"command":["true"]}}`, `unknown time zone "Nowhere/City"`},
		{"bad overlap", `{"every":"1s","overlap":"sometimes","job":{"command":["true"]}}`, "sometimes"},
	} {
		req, _ := http.NewRequest(http.MethodPost, c.nodes[0].url+"/v1/schedules", strings.NewReader(tc.body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "bad-"+strings.ReplaceAll(tc.name, " ", "-"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || e.Error.Code != string(tandem.EINVALID) || !strings.Contains(e.Error.Message, tc.want) {
			t.Errorf("%s: got %d %s %q, want 400 %s with %q", tc.name, resp.StatusCode, e.Error.Code, e.Error.Message, tandem.EINVALID, tc.want)
		}
	}
	if n := len(c.nodes[0].srv.ListSchedules()); n != 0 {
		t.Errorf("%d schedules in the view after bad input, want 0", n)
	}
	l := keys.New("test")
	for _, prefix := range []string{l.SchedulesPrefix(), l.FiresPrefix(), l.JobsPrefix(), l.IdemPrefix()} {
		resp, err := c.etcd.Client(t).Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 0 {
			t.Errorf("etcd holds %d keys under %s after bad input (%v), want 0", resp.Count, prefix, err)
		}
	}
}
