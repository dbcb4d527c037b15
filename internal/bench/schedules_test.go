package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// benchT0 is a whole second: a schedule every 1s on the default grid has a
// nominal time at benchT0 + k seconds.
var benchT0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func tsec(s float64) time.Time { return benchT0.Add(time.Duration(s * float64(time.Second))) }

// The checker's counting on crafted records: every way a nominal time can
// be missed or doubled is counted, and nothing else is.
func TestCheckScheduleCounts(t *testing.T) {
	sch := tandem.Schedule{ID: "s1", ScheduleSpec: tandem.ScheduleSpec{Every: tandem.Duration(time.Second)},
		CreatedAt: tsec(0.5), Cursor: tsec(10)} // expected: :01 to :10
	fired := func(s float64) tandem.ScheduleRun {
		return tandem.ScheduleRun{ScheduleID: "s1", NominalTime: tsec(s), Count: 1, Outcome: tandem.OutcomeFired}
	}
	skipped := func(from, through float64, reason string) tandem.ScheduleRun {
		th := tsec(through)
		return tandem.ScheduleRun{ScheduleID: "s1", NominalTime: tsec(from), Through: &th, Outcome: tandem.OutcomeSkipped, Reason: reason}
	}
	manual := fired(6)
	manual.Reason = tandem.ReasonManual
	rec := ScheduleRecords{Schedule: sch, Runs: []tandem.ScheduleRun{
		fired(1),
		fired(2),                            // with two jobs: doubled
		fired(4),                            // :03 has no record: missed
		skipped(4, 5, tandem.ReasonOverlap), // :04 a second time: doubled
		manual,                              // not a nominal time of the schedule's: ignored
		fired(6),
		skipped(7, 9, tandem.ReasonPaused),
		fired(10),
		fired(10.5), // no nominal time, and no job: doubled twice
	}}
	jobs := ScheduledJobs{}
	for i, s := range []float64{1, 2, 2, 4, 6, 6, 10} {
		j := &tandem.Job{ID: fmt.Sprintf("j%d", i), ScheduleID: "s1", NominalTime: tsec(s)}
		if i == 5 {
			j.ScheduleID = "" // the manual run's job is a job like any other
		}
		jobs.Add(j)
	}
	jobs.Add(&tandem.Job{ID: "other", ScheduleID: "s2", NominalTime: tsec(3)}) // another schedule's
	k, err := CheckSchedule(rec, jobs["s1"], CheckWindow{})
	if err != nil {
		t.Fatal(err)
	}
	if k.Expected != 10 || k.Fired != 6 || k.Skipped != 5 {
		t.Errorf("got expected %d, fired %d, skipped %d; want 10, 6, 5", k.Expected, k.Fired, k.Skipped)
	}
	if want := map[string]int{tandem.ReasonOverlap: 2, tandem.ReasonPaused: 3}; !reflect.DeepEqual(k.SkippedBy, want) {
		t.Errorf("got skipped by reason %v, want %v", k.SkippedBy, want)
	}
	if want := []string{"2030-01-01T00:00:03Z"}; !reflect.DeepEqual(k.Missed, want) {
		t.Errorf("got missed %q, want %q", k.Missed, want)
	}
	wantDoubled := []string{
		"2030-01-01T00:00:04Z (2 records)",
		"2030-01-01T00:00:10.5Z (a record of no nominal time",
		"2030-01-01T00:00:02Z fired with jobs [j1 j2]",
		"2030-01-01T00:00:10.5Z fired with jobs []",
	}
	if len(k.Doubled) != len(wantDoubled) {
		t.Fatalf("got doubled %q, want %d entries like %q", k.Doubled, len(wantDoubled), wantDoubled)
	}
	for i, w := range wantDoubled {
		if !strings.HasPrefix(k.Doubled[i], w) {
			t.Errorf("doubled[%d]: got %q, want it to start with %q", i, k.Doubled[i], w)
		}
	}

	// A clean schedule adds nothing missed or doubled; the sums add up.
	clean := ScheduleRecords{Schedule: tandem.Schedule{ID: "s2", ScheduleSpec: sch.ScheduleSpec, CreatedAt: tsec(2.5), Cursor: tsec(3)},
		Runs: []tandem.ScheduleRun{{ScheduleID: "s2", NominalTime: tsec(3), Count: 1, Outcome: tandem.OutcomeFired}}}
	k2, err := CheckSchedule(clean, jobs["s2"], CheckWindow{})
	if err != nil {
		t.Fatal(err)
	}
	if k2.Expected != 1 || k2.Fired != 1 || len(k2.Missed)+len(k2.Doubled) != 0 {
		t.Errorf("clean schedule: got %+v, want 1 expected, 1 fired, nothing missed or doubled", k2)
	}
	var c ScheduleCounts
	c.Add(k)
	c.Add(k2)
	want := ScheduleCounts{Schedules: 2, Expected: 11, Fired: 7, Skipped: 5, SkippedBy: map[string]int{"overlap": 2, "paused": 3}, Missed: 1, Doubled: 4}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got counts %+v, want %+v", c, want)
	}
	if got, w := c.String(), "schedules 2: nominal times expected 11, fired 7, skipped 5 (overlap 2, paused 3), missed 1, doubled 4"; got != w {
		t.Errorf("got %q, want %q", got, w)
	}

	// A spec the checker cannot compile is an error, not a count.
	bad := rec
	bad.Schedule.ScheduleSpec = tandem.ScheduleSpec{Cron: []string{"not cron"}}
	if _, err := CheckSchedule(bad, nil, CheckWindow{}); err == nil {
		t.Error("a schedule whose spec does not compile: got no error")
	}
}

// Three ways a broken controller used to pass the checker: a stalled owner
// whose cursor never moved, and a stalled owner whose backlog the pause
// swept into one skipped (paused) record, both clean when times are counted
// up to the cursor only (CheckWindow{}) and caught with the fault suite's
// window; and a run started without a fired record, which the checker
// missed when it looked only at the jobs of fired times.
func TestCheckScheduleHoles(t *testing.T) {
	spec := tandem.ScheduleSpec{Every: tandem.Duration(time.Second)}
	paused := spec
	paused.Paused = true
	fired := func(s float64, job string) tandem.ScheduleRun {
		return tandem.ScheduleRun{ScheduleID: "s1", NominalTime: tsec(s), Count: 1, Outcome: tandem.OutcomeFired, JobID: job}
	}
	skipped := func(from, through float64, reason string) tandem.ScheduleRun {
		th := tsec(through)
		return tandem.ScheduleRun{ScheduleID: "s1", NominalTime: tsec(from), Through: &th, Count: int(through-from) + 1,
			Outcome: tandem.OutcomeSkipped, Reason: reason}
	}
	jobsAt := func(times map[float64]string) ScheduledJobs {
		sj := ScheduledJobs{}
		for s, id := range times {
			sj.Add(&tandem.Job{ID: id, ScheduleID: "s1", NominalTime: tsec(s)})
		}
		return sj
	}
	const grace = 60 * time.Second
	window := CheckWindow{Until: tsec(200), PausedAt: tsec(200), Grace: grace}
	tests := []struct {
		name string
		rec  ScheduleRecords
		jobs ScheduledJobs
		// What the count up to the cursor alone finds, and what the
		// fault suite's window finds.
		bareMissed, bareDoubled int
		missed, doubled         []string
	}{
		{
			// The owner fired :01 and :02, then stopped for good: the
			// cursor stayed at :02, so up to the cursor nothing is missing.
			name: "stalled cursor",
			rec: ScheduleRecords{Schedule: tandem.Schedule{ID: "s1", ScheduleSpec: spec, CreatedAt: tsec(0.5), Cursor: tsec(2)},
				Runs: []tandem.ScheduleRun{fired(1, "j1"), fired(2, "j2")}},
			jobs:    jobsAt(map[float64]string{1: "j1", 2: "j2"}),
			missed:  []string{"2030-01-01T00:00:03Z (no record: due by 2030-01-01T00:02:20Z, but the cursor stopped at 2030-01-01T00:00:02Z)"},
			doubled: nil,
		},
		{
			// The owner stopped after :02 and came back only after the
			// pause, which skipped :03 to :210 in one record: the times due
			// more than the grace before the pause (:03 to :140) were due
			// while the schedule ran.
			name: "backlog swept by the pause",
			rec: ScheduleRecords{Schedule: tandem.Schedule{ID: "s1", ScheduleSpec: paused, CreatedAt: tsec(0.5), Cursor: tsec(210)},
				Runs: []tandem.ScheduleRun{fired(1, "j1"), fired(2, "j2"), skipped(3, 210, tandem.ReasonPaused)}},
			jobs:   jobsAt(map[float64]string{1: "j1", 2: "j2"}),
			missed: []string{"2030-01-01T00:00:03Z (skipped paused, though due more than 1m0s before the pause at 2030-01-01T00:03:20Z)"},
		},
		{
			// :02 was recorded skipped, yet a job of the schedule runs it;
			// :03 has a job and no record past the cursor at all. (The
			// manual run's job is named by its record: it is fine.)
			name: "job without a fired record",
			rec: ScheduleRecords{Schedule: tandem.Schedule{ID: "s1", ScheduleSpec: spec, CreatedAt: tsec(0.5), Cursor: tsec(2)},
				Runs: []tandem.ScheduleRun{fired(1, "j1"), skipped(2, 2, tandem.ReasonOverlap),
					{ScheduleID: "s1", NominalTime: tsec(1.7), Count: 1, Outcome: tandem.OutcomeFired, Reason: tandem.ReasonManual, JobID: "jm"}}},
			jobs:        jobsAt(map[float64]string{1: "j1", 2: "j2", 3: "j3", 1.7: "jm"}),
			bareDoubled: 2,
			doubled:     []string{"2030-01-01T00:00:02Z: job j2 has no fired record", "2030-01-01T00:00:03Z: job j3 has no fired record"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bare, err := CheckSchedule(tt.rec, tt.jobs["s1"], CheckWindow{})
			if err != nil {
				t.Fatal(err)
			}
			if len(bare.Missed) != tt.bareMissed || len(bare.Doubled) != tt.bareDoubled {
				t.Errorf("up to the cursor: got missed %q, doubled %q; want %d and %d", bare.Missed, bare.Doubled, tt.bareMissed, tt.bareDoubled)
			}
			k, err := CheckSchedule(tt.rec, tt.jobs["s1"], window)
			if err != nil {
				t.Fatal(err)
			}
			if len(k.Missed) == 0 && len(tt.missed) > 0 || len(tt.missed) > 0 && k.Missed[0] != tt.missed[0] {
				t.Errorf("got missed %q, want it to start with %q", k.Missed, tt.missed)
			}
			if !reflect.DeepEqual(k.Doubled, tt.doubled) {
				t.Errorf("got doubled %q, want %q", k.Doubled, tt.doubled)
			}
			// expected = fired + skipped + missed when nothing is doubled.
			if len(k.Doubled) == 0 && k.Expected != k.Fired+k.Skipped+len(k.Missed) {
				t.Errorf("got expected %d, fired %d, skipped %d, missed %d: they do not add up", k.Expected, k.Fired, k.Skipped, len(k.Missed))
			}
		})
	}

	// The counts of the two hidden misses: all 138 times from :03 to :140.
	k, _ := CheckSchedule(tests[0].rec, tests[0].jobs["s1"], window)
	if k.Expected != 140 || len(k.Missed) != 138 {
		t.Errorf("stalled cursor: got expected %d, missed %d; want 140, 138", k.Expected, len(k.Missed))
	}
	k, _ = CheckSchedule(tests[1].rec, tests[1].jobs["s1"], window)
	if k.Expected != 210 || len(k.Missed) != 138 || k.Skipped != 70 || k.SkippedBy[tandem.ReasonPaused] != 70 {
		t.Errorf("swept backlog: got expected %d, missed %d, skipped %v; want 210, 138, 70 paused", k.Expected, len(k.Missed), k.SkippedBy)
	}
	// A healthy history of the same run passes the window: fired up to the
	// pause, the times due within the grace before it skipped (paused).
	healthy := ScheduleRecords{Schedule: tandem.Schedule{ID: "s1", ScheduleSpec: paused, CreatedAt: tsec(0.5), Cursor: tsec(210)}}
	jobs := map[float64]string{}
	for s := 1; s <= 150; s++ {
		id := fmt.Sprintf("j%d", s)
		healthy.Runs = append(healthy.Runs, fired(float64(s), id))
		jobs[float64(s)] = id
	}
	healthy.Runs = append(healthy.Runs, skipped(151, 210, tandem.ReasonPaused))
	k, err := CheckSchedule(healthy, jobsAt(jobs)["s1"], window)
	if err != nil || len(k.Missed)+len(k.Doubled) != 0 || k.Expected != 210 || k.Fired != 150 || k.Skipped != 60 {
		t.Errorf("healthy: got %+v (%v); want 210 expected, 150 fired, 60 skipped, nothing missed or doubled", k, err)
	}
}

// Fires are split into steady state and failovers as documented: nominal
// time no later than the new owner's first commit, committed (as the bench
// saw it) after the fault; the recorded committed_at is reported apart.
func TestLatenessSplitsFailovers(t *testing.T) {
	w := FailoverWindow{From: tsec(5.2), To: tsec(6.3)}
	seen := map[string]time.Time{}
	run := func(id string, nominal, committed float64, job string) tandem.ScheduleRun {
		seen[fireKey(id, tsec(nominal))] = tsec(committed)
		return tandem.ScheduleRun{ScheduleID: id, NominalTime: tsec(nominal), Count: 1, Outcome: tandem.OutcomeFired,
			CommittedAt: tsec(committed - 0.002), JobID: job} // the server's clock held back 2 ms
	}
	started := func(id string, s float64) *tandem.Job {
		st := tsec(s)
		return &tandem.Job{ID: id, Attempts: []tandem.Attempt{{ID: id + "-1", StartedAt: &st}, {ID: id + "-2"}}}
	}
	manual := run("a", 4, 4.5, "jm")
	manual.Reason = tandem.ReasonManual
	recs := []ScheduleRecords{
		{Schedule: tandem.Schedule{ID: "a"}, Runs: []tandem.ScheduleRun{
			run("a", 3, 3.010, "ja"), // steady
			manual,                   // not a nominal time: not counted
			run("a", 5, 5.100, "jb"), // committed before the fault: steady
			run("a", 7, 7.020, "jc"), // after the failover: steady, never launched
			{ScheduleID: "a", NominalTime: tsec(8), Outcome: tandem.OutcomeSkipped, Reason: tandem.ReasonPaused, CommittedAt: tsec(9)},
		}},
		{Schedule: tandem.Schedule{ID: "b"}, Runs: []tandem.ScheduleRun{
			run("b", 5, 5.400, "jd"), // due before the fault, committed after it: failover
			run("b", 6, 6.300, "je"), // in the window: failover
		}},
	}
	jobs := map[string]*tandem.Job{"ja": started("ja", 3.050), "jb": started("jb", 5.150), "jd": started("jd", 5.600),
		"je": started("je", 6.500), "jm": started("jm", 4.6)}
	fs, unseen := firesOf(recs, jobs, seen)
	if len(fs) != 5 || unseen != 0 {
		t.Fatalf("got %d fires (%d unseen), want 5 (0)", len(fs), unseen)
	}
	steady, failover, notLaunched := latenesses(fs, []FailoverWindow{w})
	check := func(name string, s Summary, n int, p50, mx float64) {
		t.Helper()
		gp, gm := s.P50*1000, s.Max*1000
		if s.N != n || gp < p50-0.01 || gp > p50+0.01 || gm < mx-0.01 || gm > mx+0.01 {
			t.Errorf("%s: got n %d, p50 %.3f ms, max %.3f ms; want %d, %.3f, %.3f", name, s.N, gp, gm, n, p50, mx)
		}
	}
	check("steady commit", steady.Commit, 3, 20, 100)
	check("steady recorded", steady.Recorded, 3, 18, 98)
	check("steady launch", steady.Launch, 2, 50, 150)
	check("failover commit", failover.Commit, 2, 300, 400)
	check("failover recorded", failover.Recorded, 2, 298, 398)
	check("failover launch", failover.Launch, 2, 500, 600)
	if notLaunched != 1 {
		t.Errorf("got %d fired but not launched, want 1", notLaunched)
	}
	if n := countInFailover(fs, w); n != 2 {
		t.Errorf("countInFailover: got %d, want 2", n)
	}
	if n := countCommitted(fs, tsec(5), tsec(7)); n != 3 {
		t.Errorf("countCommitted: got %d, want 3", n)
	}
	// A fire the watch missed is timed by its committed_at, and said so.
	delete(seen, fireKey("b", tsec(6)))
	if fs, unseen := firesOf(recs, jobs, seen); unseen != 1 || !fs[4].Committed.Equal(tsec(6.298)) {
		t.Errorf("got %d unseen, fire %+v; want 1, committed at its committed_at", unseen, fs[4])
	}
}

func TestSchedulesConfigRefused(t *testing.T) {
	ok := SchedulesConfig{Binary: "tandem"}
	tests := []struct {
		name string
		edit func(*SchedulesConfig)
		want string
	}{
		{"fault", func(c *SchedulesConfig) { c.Fault = "reboot" }, `unknown fault "reboot"`},
		{"schedules", func(c *SchedulesConfig) { c.Schedules = MaxBenchSchedules + 1 }, "schedules must be"},
		{"every", func(c *SchedulesConfig) { c.Every = 500 * time.Millisecond }, "every 500ms"},
		{"duration", func(c *SchedulesConfig) { c.Every, c.Duration = 5*time.Second, 8*time.Second }, "duration 8s"},
		{"trials", func(c *SchedulesConfig) { c.Fault, c.Trials, c.Duration = SchedFaultKill9, 5, 20*time.Second }, "too short for 5 trials"},
		{"servers", func(c *SchedulesConfig) { c.Fault, c.Servers = SchedFaultSigstop, 2 }, "at least 3 servers"},
		{"agents", func(c *SchedulesConfig) { c.Agents = 100 }, "agents must be"},
		{"lease", func(c *SchedulesConfig) { c.LeaseTTL = 1500 * time.Millisecond }, "lease TTL 1.5s"},
		{"binary", func(c *SchedulesConfig) { c.Binary = "" }, "binary"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			_, err := c.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
	if c, err := ok.withDefaults(); err != nil || c.Trials != 0 || c.Schedules != 40 {
		t.Errorf("defaults: got %+v, %v; want 40 schedules, no trials without a fault", c, err)
	}
}

// A real run, small: four schedules every second on three server processes,
// the owner killed -9 once. Every nominal time one record and one job, the
// failover found and timed. Needs the tandem binary: built here, or
// $TANDEM_BINARY.
func TestRunSchedulesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real cluster (about 25 s)")
	}
	bin := os.Getenv("TANDEM_BINARY")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "tandem")
		build := exec.Command("go", "build", "-o", bin, "../../cmd/tandem")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build tandem: %v\n%s", err, out)
		}
	}
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := RunSchedules(ctx, SchedulesConfig{Binary: bin, Schedules: 4, Every: time.Second, Duration: 2 * MinSchedulesTrialGap,
		Fault: SchedFaultKill9, Trials: 1, Agents: 1, BasePort: freePorts(t), DataDir: t.TempDir(), Out: &log})
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Failed(); err != nil {
		t.Error(err)
	}
	c := res.Counts
	if c.Schedules != 4 || c.Expected < 4*5 || c.Fired != c.Expected || c.Skipped != 0 || c.Missed != 0 || c.Doubled != 0 {
		t.Errorf("got %s; want 4 schedules, at least 20 times expected, every one fired", c)
	}
	if len(res.Trials) != 1 {
		t.Fatalf("got %d trials, want 1", len(res.Trials))
	}
	tr := res.Trials[0]
	if tr.NewEpoch <= tr.OldEpoch || tr.GapS <= 0 || tr.To == tr.From || tr.To == "" {
		t.Errorf("got trial %+v, want a new owner with a newer epoch and a positive gap", tr)
	}
	if got := res.Steady.Commit.N + res.Failover.Commit.N; got != c.Fired || res.Failover.Commit.N != tr.Fires {
		t.Errorf("got %d steady and %d failover fires (%d in the trial), want %d in all, the trial's the failover's",
			res.Steady.Commit.N, res.Failover.Commit.N, tr.Fires, c.Fired)
	}
	if res.Steady.Launch.N+res.Failover.Launch.N+res.NotLaunched != c.Fired || res.NotLaunched != 0 {
		t.Errorf("got %d + %d launched and %d not, want all %d launched", res.Steady.Launch.N, res.Failover.Launch.N, res.NotLaunched, c.Fired)
	}
	if res.CPU != nil {
		t.Errorf("got a CPU report though a measured server was killed")
	}
}

// freePorts finds a base port whose 1000 ports are free right now.
func freePorts(t *testing.T) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		base := 10000 + 1000*rand.IntN(21) // below the ephemeral ports
		free := true
		for p := base; p < base+1000 && free; p++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				free = false
				continue
			}
			ln.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}
