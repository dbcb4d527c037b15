package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
)

func TestSummarizeSched(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	loadEnd := at(1000)
	tests := []struct {
		name  string
		acked map[string]time.Time
		seen  map[string]schedSeen
		want  schedCounts
	}{
		{
			name: "nothing acknowledged",
			want: schedCounts{},
		},
		{
			name:  "started and ended during the load",
			acked: map[string]time.Time{"a": at(0)},
			seen:  map[string]schedSeen{"a": {started: at(10), ended: at(20), state: tandem.JobSucceeded}},
			want:  schedCounts{startedInLoad: 1, ended: 1, succeeded: 1, lastEnd: at(20), toRunning: []time.Duration{10 * time.Millisecond}},
		},
		{
			name:  "started at the end of the load counts, after it does not",
			acked: map[string]time.Time{"a": at(900), "b": at(950)},
			seen: map[string]schedSeen{
				"a": {started: at(1000), ended: at(1100), state: tandem.JobSucceeded},
				"b": {started: at(1001), ended: at(1200), state: tandem.JobSucceeded},
			},
			want: schedCounts{startedInLoad: 1, ended: 2, succeeded: 2, lastEnd: at(1200),
				toRunning: []time.Duration{51 * time.Millisecond, 100 * time.Millisecond}},
		},
		{
			name:  "failed jobs end but do not succeed",
			acked: map[string]time.Time{"a": at(0)},
			seen:  map[string]schedSeen{"a": {started: at(5), ended: at(6), state: tandem.JobFailed}},
			want:  schedCounts{startedInLoad: 1, ended: 1, lastEnd: at(6), toRunning: []time.Duration{5 * time.Millisecond}},
		},
		{
			name:  "never seen, and started but not ended, are unfinished",
			acked: map[string]time.Time{"a": at(0), "b": at(0)},
			seen:  map[string]schedSeen{"b": {started: at(30), state: tandem.JobRunning}},
			want:  schedCounts{startedInLoad: 1, unfinished: 2, toRunning: []time.Duration{30 * time.Millisecond}},
		},
		{
			name:  "ended without starting (killed while pending): ended, not placed",
			acked: map[string]time.Time{"a": at(0)},
			seen:  map[string]schedSeen{"a": {ended: at(40), state: tandem.JobKilled}},
			want:  schedCounts{ended: 1, lastEnd: at(40)},
		},
		{
			name:  "jobs the bench did not acknowledge are left out",
			acked: map[string]time.Time{},
			seen:  map[string]schedSeen{"x": {started: at(1), ended: at(2), state: tandem.JobSucceeded}},
			want:  schedCounts{},
		},
		{
			name:  "a start seen before the submission returned is not negative",
			acked: map[string]time.Time{"a": at(100)},
			seen:  map[string]schedSeen{"a": {started: at(90), ended: at(95), state: tandem.JobSucceeded}},
			want:  schedCounts{startedInLoad: 1, ended: 1, succeeded: 1, lastEnd: at(95), toRunning: []time.Duration{0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := summarizeSched(tt.acked, tt.seen, loadEnd)
			// Map order is random: compare the latencies as a sorted set.
			got.toRunning = sortedDurations(got.toRunning)
			want := tt.want
			want.toRunning = sortedDurations(want.toRunning)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func sortedDurations(ds []time.Duration) []time.Duration {
	if len(ds) == 0 {
		return nil
	}
	out := append([]time.Duration(nil), ds...)
	slices.Sort(out)
	return out
}

// The watch follows only the scheduling run's jobs, sees placement and end,
// and gives a job's slot back once however often its terminal record is
// written.
func TestSchedWatch(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	layout := keys.New("default")
	var mu sync.Mutex
	ends := map[string]int{}
	w, err := watchSched(ctx, cli, layout, func(id string) {
		mu.Lock()
		ends[id]++
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	put := func(j tandem.Job) {
		t.Helper()
		b, _ := json.Marshal(j)
		if _, err := cli.Put(ctx, layout.Job(j.ID), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()

	other := tandem.Job{ID: "other", JobSpec: tandem.JobSpec{Name: "bench-run-1"}, State: tandem.JobSucceeded,
		Attempts: []tandem.Attempt{{ID: "other-1", StartedAt: &now}}}
	put(other)

	ran := tandem.Job{ID: "ran", JobSpec: tandem.JobSpec{Name: schedPrefix + "0-0"}, State: tandem.JobPending}
	put(ran)
	ran.State, ran.Attempts = tandem.JobScheduled, []tandem.Attempt{{ID: "ran-1", State: tandem.AttemptScheduled}}
	put(ran)
	ran.State, ran.Attempts[0].State, ran.Attempts[0].StartedAt = tandem.JobRunning, tandem.AttemptRunning, &now
	put(ran)
	ran.State = tandem.JobSucceeded
	put(ran)
	put(ran) // written again once ended: no second end

	// Placed, but its attempt failed before it started.
	refused := tandem.Job{ID: "refused", JobSpec: tandem.JobSpec{Name: schedPrefix + "0-1"}, State: tandem.JobFailed,
		Attempts: []tandem.Attempt{{ID: "refused-1", State: tandem.AttemptFailed}}}
	put(refused)
	// Killed while pending: never placed.
	killed := tandem.Job{ID: "killed", JobSpec: tandem.JobSpec{Name: schedPrefix + "0-2"}, State: tandem.JobKilled}
	put(killed)

	if err := w.waitEnded(ctx, []string{"ran", "refused", "killed"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	// The "other" job was put first; once the later ones are seen, it has
	// been too (one watch delivers events in order).
	seen := w.snapshot()
	if _, ok := seen["other"]; ok {
		t.Errorf("the watch followed a job of another run: %+v", seen["other"])
	}
	if s := seen["ran"]; s.started.IsZero() || s.ended.IsZero() || s.state != tandem.JobSucceeded || s.started.After(s.ended) {
		t.Errorf("ran: got %+v, want started, then ended, succeeded", s)
	}
	if s := seen["refused"]; s.started.IsZero() || s.ended.IsZero() {
		t.Errorf("refused: got %+v, want counted as placed and ended", s)
	}
	if s := seen["killed"]; !s.started.IsZero() || s.ended.IsZero() {
		t.Errorf("killed: got %+v, want ended and never placed", s)
	}
	mu.Lock()
	got := map[string]int{}
	for k, v := range ends {
		got[k] = v
	}
	mu.Unlock()
	if want := map[string]int{"ran": 1, "refused": 1, "killed": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("slots given back: got %v, want %v", got, want)
	}

	// A job that never ends makes the wait fail once nothing else ends.
	put(tandem.Job{ID: "stuck", JobSpec: tandem.JobSpec{Name: schedPrefix + "0-3"}, State: tandem.JobPending})
	if err := w.waitEnded(ctx, []string{"ran", "stuck"}, 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "1 of 2 jobs not ended") {
		t.Errorf("waiting for a job that never ends: got %v, want an error naming 1 of 2 jobs", err)
	}
}

func cpuReport(jobs int, procs ...ProcessCPU) *CPUReport {
	r := &CPUReport{WindowS: 10, Jobs: jobs, ByRole: map[string]ProcessCPU{}}
	for _, p := range procs {
		p.PerJobMS, p.Cores = p.CPUS*1000/float64(jobs), p.CPUS/r.WindowS
		r.Processes = append(r.Processes, p)
		for _, role := range []string{p.Role, "all"} {
			t := r.ByRole[role]
			t.Name, t.Role, t.CPUS = role, role, t.CPUS+p.CPUS
			t.PerJobMS, t.Cores = t.CPUS*1000/float64(jobs), t.CPUS/r.WindowS
			r.ByRole[role] = t
		}
	}
	return r
}

// The matrix shows the CPU per job of every server and etcd process in a
// column of its own, "-" where a topology has no such process.
func TestPrintMatrixPerProcess(t *testing.T) {
	small := &SubmitResult{Servers: 1, Shards: 1,
		CPU: cpuReport(1000,
			ProcessCPU{Name: "rm1", Role: "server", CPUS: 1.0},
			ProcessCPU{Name: "e1", Role: "etcd", CPUS: 0.5}, ProcessCPU{Name: "e2", Role: "etcd", CPUS: 0.4},
			ProcessCPU{Name: "agent1", Role: "agent", CPUS: 0.1}, ProcessCPU{Name: "bench", Role: "bench", CPUS: 0.2}),
		Sched: &SchedResult{Backlog: 100, PlacementsPerS: 321, JobsPerS: 300, Ended: 500, Succeeded: 499,
			ToRunningS: Summary{N: 500, P50: 0.25, P99: 0.5}, EtcdRevsPerJob: 4.5,
			CPU: cpuReport(500,
				ProcessCPU{Name: "rm1", Role: "server", CPUS: 2.0},
				ProcessCPU{Name: "e1", Role: "etcd", CPUS: 1.5}, ProcessCPU{Name: "e2", Role: "etcd", CPUS: 1.25},
				ProcessCPU{Name: "agent1", Role: "agent", CPUS: 0.5}, ProcessCPU{Name: "bench", Role: "bench", CPUS: 0.25})},
	}
	big := &SubmitResult{Servers: 3, Shards: 64,
		CPU: cpuReport(100,
			ProcessCPU{Name: "rm1", Role: "server", CPUS: 0.1}, ProcessCPU{Name: "rm2", Role: "server", CPUS: 0.2},
			ProcessCPU{Name: "rm3", Role: "server", CPUS: 0.3},
			ProcessCPU{Name: "e1", Role: "etcd", CPUS: 0.4}, ProcessCPU{Name: "e2", Role: "etcd", CPUS: 0.5}),
	}
	if got, want := matrixColumns([]*SubmitResult{small, big}), []string{"rm1", "rm2", "rm3", "e1", "e2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("columns: got %v, want %v", got, want)
	}

	var buf bytes.Buffer
	PrintMatrix(&buf, []*SubmitResult{small, big})
	lines := map[string][]string{}
	var header []string
	for _, l := range strings.Split(buf.String(), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 2 && f[0] == "CPU" && f[1] == "MS/JOB":
			header = f[2:]
		case len(f) > 1 && (f[1] == "submit" || f[1] == "schedule"):
			lines[f[0]+" "+f[1]] = f[2:]
		case len(f) > 0 && f[0] == "1/1" && len(f) == 10:
			lines["sched 1/1"] = f[1:]
		}
	}
	if want := []string{"RM1", "RM2", "RM3", "E1", "E2", "AGENTS", "BENCH", "ALL"}; !reflect.DeepEqual(header, want) {
		t.Fatalf("per-process header: got %v, want %v\n%s", header, want, buf.String())
	}
	tests := []struct {
		row  string
		want []string
	}{
		{"1/1 submit", []string{"1.000", "-", "-", "0.500", "0.400", "0.100", "0.200", "2.200"}},
		{"1/1 schedule", []string{"4.000", "-", "-", "3.000", "2.500", "1.000", "0.500", "11.000"}},
		{"3/64 submit", []string{"1.000", "2.000", "3.000", "4.000", "5.000", "-", "-", "15.000"}},
		// placements/s, jobs/s, not succeeded, S2R p50, p99, revs/job, backlog, cores, other.
		{"sched 1/1", []string{"321", "300", "1", "250.0", "500.0", "4.5", "100", "0.55", "0.00"}},
	}
	for _, tt := range tests {
		if got := lines[tt.row]; !reflect.DeepEqual(got, tt.want) {
			t.Errorf("row %q: got %v, want %v\n%s", tt.row, got, tt.want, buf.String())
		}
	}
	if _, ok := lines["3/64 schedule"]; ok {
		t.Errorf("a run without a scheduling run got a schedule row:\n%s", buf.String())
	}
}

// A single run prints the scheduling figures and a CPU row for every
// process, not only totals by role.
func TestSchedResultPrint(t *testing.T) {
	r := &SchedResult{Mode: schedMode(100), Clients: 8, Backlog: 100, LoadS: 10, StartedInLoad: 2000, PlacementsPerS: 200,
		Ended: 2050, Succeeded: 2050, ElapsedS: 10.25, JobsPerS: 200, EtcdRevsPerJob: 4,
		CPU: cpuReport(2050,
			ProcessCPU{Name: "rm1", Role: "server", CPUS: 2.05}, ProcessCPU{Name: "rm2", Role: "server", CPUS: 1.025},
			ProcessCPU{Name: "e1", Role: "etcd", CPUS: 4.1}, ProcessCPU{Name: "e2", Role: "etcd", CPUS: 4.1},
			ProcessCPU{Name: "agent1", Role: "agent", CPUS: 1})}
	var buf bytes.Buffer
	r.Print(&buf)
	for _, want := range []string{"placements: jobs started during the 10.0s load", "2000", "200",
		"rm1 ", "1.000", "rm2 ", "0.500", "e1 ", "e2 ", "2.000", "server (total)", "1.500", "etcd (total)", "4.000", "agent1 "} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, buf.String())
		}
	}
}
