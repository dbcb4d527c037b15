package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
)

// The scheduling throughput run: unlike the submit throughput run, whose
// jobs stay pending, its jobs are placed on the real agents, launched and
// reported, so it measures what the cluster sustains end to end and above
// all how fast the owners place jobs (one fenced transaction per placement).

// schedJobCPU and schedJobMemoryMB are what each job of the run asks for:
// small, so that the agents' room never limits the run (an agent offers
// all of the machine's cores, so a 2-core agent has room for 200 of them at
// once, against a backlog of at most SchedBacklog for all agents).
const (
	schedJobCPU      = 0.01
	schedJobMemoryMB = 1
)

// schedPrefix starts the name of every job of the scheduling run, so its
// watch can tell them from the other runs' jobs.
const schedPrefix = "bench-sched-"

// schedDrainLimit is how long the run waits, once the load has stopped, for
// the next of its jobs to end before it gives up on the rest.
const schedDrainLimit = 30 * time.Second

func schedMode(backlog int) string {
	return fmt.Sprintf("jobs of `true` (%.2f CPU, %d MiB) placed on the agents and run; at most %d submitted and not ended at a time",
		schedJobCPU, schedJobMemoryMB, backlog)
}

// SchedResult is what the scheduling throughput run measured.
type SchedResult struct {
	Mode    string `json:"mode"`
	Clients int    `json:"clients"`
	// Backlog is the most jobs submitted and not yet ended at a time: the
	// clients wait for room, so the owners always have pending jobs to
	// place without the backlog growing without bound.
	Backlog int `json:"backlog"`
	// LoadS is how long the clients submitted; ElapsedS runs from the start
	// of the load until the last of its jobs ended (the drain included).
	LoadS    float64 `json:"load_s"`
	ElapsedS float64 `json:"elapsed_s"`
	// Submitted counts submissions answered 201, SubmitFailed those that
	// returned an error.
	Submitted    int    `json:"submitted"`
	SubmitFailed int    `json:"submit_failed"`
	FirstErr     string `json:"first_error,omitempty"`
	// StartedInLoad counts the jobs whose attempt the bench saw started
	// (placed, launched by an agent and reported running) during the load;
	// PlacementsPerS is it over LoadS: the scheduling throughput.
	StartedInLoad  int     `json:"started_in_load"`
	PlacementsPerS float64 `json:"placements_per_s"`
	// Ended counts the acknowledged jobs that reached a terminal state,
	// Succeeded those that succeeded; JobsPerS is Ended over ElapsedS.
	// Unfinished counts acknowledged jobs not ended when the run gave up.
	Ended      int     `json:"ended"`
	Succeeded  int     `json:"succeeded"`
	Unfinished int     `json:"unfinished"`
	JobsPerS   float64 `json:"jobs_per_s"`
	// DrainErr says why the run stopped waiting for Unfinished jobs.
	DrainErr string `json:"drain_error,omitempty"`
	// ToRunningS is, under this load, the time from the start of a
	// submission until the bench saw its attempt started: mostly the wait
	// in the backlog.
	ToRunningS Summary `json:"submit_to_running_s"`
	// EtcdRevsPerJob is how far etcd's revision moved over the run, per
	// ended job: the writes (transactions) one job costs the cluster.
	EtcdRevsPerJob float64 `json:"etcd_revisions_per_job"`
	// CPU is what each process used from the start of the load until the
	// last job ended, per ended job (ProcessCPU.PerJobMS).
	CPU *CPUReport `json:"cpu,omitempty"`
}

// schedSeen is what the bench has seen of one job of the run.
type schedSeen struct {
	started time.Time // when the watch first saw its attempt started
	ended   time.Time // when the watch first saw it in a terminal state
	state   tandem.JobState
}

// schedWatch follows the jobs of the scheduling run (named schedPrefix...)
// through one etcd watch started before the first submission. onEnd runs,
// under the watch's lock and once per job, when a job is first seen ended.
type schedWatch struct {
	mu      sync.Mutex
	seen    map[string]schedSeen
	ended   int
	changed chan struct{} // closed and replaced on every end
	err     error
	onEnd   func(id string)
}

func watchSched(ctx context.Context, cli *clientv3.Client, layout keys.Layout, onEnd func(id string)) (*schedWatch, error) {
	rev, err := etcdRevision(ctx, cli, layout)
	if err != nil {
		return nil, err
	}
	w := &schedWatch{seen: make(map[string]schedSeen), changed: make(chan struct{}), onEnd: onEnd}
	wch := cli.Watch(ctx, layout.JobsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	go func() { // ends with ctx, which closes wch
		for wr := range wch {
			if err := wr.Err(); err != nil {
				w.fail(err)
				return
			}
			w.apply(time.Now(), wr.Events)
		}
		w.fail(errors.New("the etcd watch ended"))
	}()
	return w, nil
}

// apply records what the events, delivered at now, say of the run's jobs.
func (w *schedWatch) apply(now time.Time, evs []*clientv3.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := false
	for _, ev := range evs {
		if ev.Type != clientv3.EventTypePut {
			continue
		}
		var j tandem.Job
		if json.Unmarshal(ev.Kv.Value, &j) != nil || !strings.HasPrefix(j.Name, schedPrefix) {
			continue
		}
		s := w.seen[j.ID]
		if a := j.LastAttempt(); a != nil && a.StartedAt != nil && s.started.IsZero() {
			s.started = now
		}
		if j.State.Terminal() && s.ended.IsZero() {
			if s.started.IsZero() && j.LastAttempt() != nil {
				// Placed, but its attempt ended without starting (the
				// agent refused it): placed all the same.
				s.started = now
			}
			s.ended = now
			w.ended++
			changed = true
			if w.onEnd != nil {
				w.onEnd(j.ID)
			}
		}
		s.state = j.State
		w.seen[j.ID] = s
	}
	if changed {
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

func (w *schedWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		close(w.changed)
	}
}

// waitEnded blocks until every job of ids has been seen ended, and fails
// when limit passes without any job ending, or when ctx ends or the watch
// breaks.
func (w *schedWatch) waitEnded(ctx context.Context, ids []string, limit time.Duration) error {
	for {
		w.mu.Lock()
		left := 0
		for _, id := range ids {
			if w.seen[id].ended.IsZero() {
				left++
			}
		}
		ch, werr := w.changed, w.err
		w.mu.Unlock()
		if left == 0 {
			return nil
		}
		if werr != nil {
			return fmt.Errorf("watch the jobs: %w", werr)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(limit):
			return fmt.Errorf("%d of %d jobs not ended, none ended for %s", left, len(ids), limit)
		}
	}
}

// snapshot copies what the watch has seen.
func (w *schedWatch) snapshot() map[string]schedSeen {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := make(map[string]schedSeen, len(w.seen))
	for id, s := range w.seen {
		m[id] = s
	}
	return m
}

// schedCounts is what summarizeSched derives from one run.
type schedCounts struct {
	startedInLoad, ended, succeeded, unfinished int
	lastEnd                                     time.Time
	toRunning                                   []time.Duration
}

// summarizeSched counts, of the acknowledged jobs (id to the start of its
// submission), those the watch saw started by loadEnd, ended, succeeded
// and not ended, the time of the last end, and each started job's time from
// the start of its submission until it was seen started. Jobs the watch saw
// that were never acknowledged (a submission that failed after its job was
// created) are left out: nothing can tell them from other jobs.
func summarizeSched(acked map[string]time.Time, seen map[string]schedSeen, loadEnd time.Time) schedCounts {
	var c schedCounts
	for id, t0 := range acked {
		s := seen[id]
		if !s.started.IsZero() {
			c.toRunning = append(c.toRunning, max(0, s.started.Sub(t0)))
			if !s.started.After(loadEnd) {
				c.startedInLoad++
			}
		}
		if s.ended.IsZero() {
			c.unfinished++
			continue
		}
		c.ended++
		if s.state == tandem.JobSucceeded {
			c.succeeded++
		}
		if s.ended.After(c.lastEnd) {
			c.lastEnd = s.ended
		}
	}
	return c
}

// schedThroughput runs the scheduling throughput run: clients goroutines,
// each with its own failover client starting at another server, submit
// jobs of `true` for d, waiting for room whenever backlog jobs are
// submitted and not yet ended; then it waits for every acknowledged job to
// end, and measures the CPU every process of procs used from the start of
// the load until then.
func schedThroughput(ctx context.Context, lc *local.Cluster, cli *clientv3.Client, layout keys.Layout, procs []Process,
	clients, backlog int, d time.Duration) (*SchedResult, error) {
	res := &SchedResult{Mode: schedMode(backlog), Clients: clients, Backlog: backlog}
	// A slot is taken before a submission and given back when its job ends
	// (or the submission fails): at most backlog jobs in the cluster.
	slots := make(chan struct{}, backlog)
	release := func() {
		select {
		case <-slots:
		default:
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := watchSched(wctx, cli, layout, func(string) { release() })
	if err != nil {
		return nil, err
	}
	rev0, err := etcdRevision(ctx, cli, layout)
	if err != nil {
		return nil, err
	}
	cpu0, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	var (
		mu       sync.Mutex
		acked    = make(map[string]time.Time)
		failed   int
		firstErr error
		wg       sync.WaitGroup
	)
	start := time.Now()
	lctx, stopLoad := context.WithDeadline(ctx, start.Add(d))
	defer stopLoad()
	for g := 0; g < clients; g++ {
		cl, err := clusterClient(lc, rotate(lc.URLs(), g))
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case slots <- struct{}{}:
				case <-lctx.Done():
					return
				}
				spec := tandem.JobSpec{Name: fmt.Sprintf("%s%d-%d", schedPrefix, g, i), Command: []string{"true"},
					Resources: tandem.Resources{CPU: schedJobCPU, MemoryMB: schedJobMemoryMB}}
				t0 := time.Now()
				// A submission under way when the load stops is finished
				// (ctx, not lctx), so that every job created is counted.
				job, err := cl.SubmitJob(ctx, spec, client.SubmitOptions{})
				mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						failed++
						if firstErr == nil {
							firstErr = err
						}
					}
				} else {
					acked[job.ID] = t0
				}
				mu.Unlock()
				if err != nil {
					release()
					if ctx.Err() != nil {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	loadEnd := time.Now()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.LoadS = loadEnd.Sub(start).Seconds()
	res.Submitted, res.SubmitFailed = len(acked), failed
	if firstErr != nil {
		res.FirstErr = firstErr.Error()
	}
	ids := make([]string, 0, len(acked))
	for id := range acked {
		ids = append(ids, id)
	}
	drainErr := w.waitEnded(ctx, ids, schedDrainLimit)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	cpu1, err := sampleCPU(procs)
	if err != nil {
		return nil, err
	}
	rev1, err := etcdRevision(ctx, cli, layout)
	if err != nil {
		return nil, err
	}
	c := summarizeSched(acked, w.snapshot(), loadEnd)
	res.StartedInLoad, res.Ended, res.Succeeded, res.Unfinished = c.startedInLoad, c.ended, c.succeeded, c.unfinished
	res.ToRunningS = Summarize(c.toRunning)
	if res.LoadS > 0 {
		res.PlacementsPerS = float64(c.startedInLoad) / res.LoadS
	}
	if !c.lastEnd.IsZero() {
		res.ElapsedS = c.lastEnd.Sub(start).Seconds()
		if res.ElapsedS > 0 {
			res.JobsPerS = float64(c.ended) / res.ElapsedS
		}
	}
	if c.ended > 0 {
		res.EtcdRevsPerJob = float64(rev1-rev0) / float64(c.ended)
	}
	cpu := cpuBetween(procs, cpu0, cpu1, c.ended)
	res.CPU = &cpu
	if drainErr != nil {
		res.DrainErr = drainErr.Error()
	}
	if res.Submitted == 0 {
		return res, fmt.Errorf("no submission was acknowledged (%d failed; first error: %v)", failed, firstErr)
	}
	return res, nil
}

// Print writes the scheduling run's figures and the CPU time per job of
// every process.
func (r *SchedResult) Print(w io.Writer) {
	fmt.Fprintf(w, "scheduling: %s, %d clients\n", r.Mode, r.Clients)
	Table(w, "MEASURE\tN\tPER S\tP50 MS\tP90 MS\tP99 MS\tMAX MS",
		fmt.Sprintf("placements: jobs started during the %.1fs load\t%d\t%.0f\t-\t-\t-\t-", r.LoadS, r.StartedInLoad, r.PlacementsPerS),
		fmt.Sprintf("jobs ended (%d succeeded) in %.1fs, drain included\t%d\t%.0f\t-\t-\t-\t-", r.Succeeded, r.ElapsedS, r.Ended, r.JobsPerS),
		fmt.Sprintf("submit-to-running under this load\t%d\t-\t%s", r.ToRunningS.N, r.ToRunningS.Row()),
		fmt.Sprintf("etcd revisions per job\t-\t%.1f\t-\t-\t-\t-", r.EtcdRevsPerJob),
	)
	if r.SubmitFailed > 0 {
		fmt.Fprintf(w, "  %d submissions failed; first error: %s\n", r.SubmitFailed, r.FirstErr)
	}
	if r.Unfinished > 0 {
		fmt.Fprintf(w, "  %d acknowledged jobs had not ended: %s\n", r.Unfinished, r.DrainErr)
	}
	if r.CPU == nil {
		return
	}
	var rows []string
	for _, p := range r.CPU.Processes {
		rows = append(rows, fmt.Sprintf("%s\t%.2f\t%.2f\t%.3f", p.Name, p.CPUS, p.Cores, p.PerJobMS))
	}
	for _, role := range r.CPU.roles() {
		p := r.CPU.ByRole[role]
		rows = append(rows, fmt.Sprintf("%s (total)\t%.2f\t%.2f\t%.3f", role, p.CPUS, p.Cores, p.PerJobMS))
	}
	Table(w, "CPU (user+sys)\tSCHED RUN S\tCORES\tMS/JOB", rows...)
	fmt.Fprintf(w, "machine: %.2f of %d cores busy during the scheduling run, %.2f of them other work than this run's\n",
		r.CPU.MachineCores, r.CPU.NumCPU, r.CPU.OtherCores)
}

// matrixColumns lists the processes of rs whose CPU the per-process matrix
// shows each in a column: every server, then every etcd member, each by
// name (rm1, rm2, ..., e1, e2, ...), over all runs, so topologies with fewer
// servers show "-" where a process is absent.
func matrixColumns(rs []*SubmitResult) []string {
	role := map[string]string{}
	add := func(c *CPUReport) {
		if c == nil {
			return
		}
		for _, p := range c.Processes {
			if p.Role == "server" || p.Role == "etcd" {
				role[p.Name] = p.Role
			}
		}
	}
	for _, r := range rs {
		add(r.CPU)
		if r.Sched != nil {
			add(r.Sched.CPU)
		}
	}
	names := make([]string, 0, len(role))
	for n := range role {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := names[i], names[j]
		if role[a] != role[b] {
			return role[a] == "server"
		}
		if len(a) != len(b) { // rm2 before rm10
			return len(a) < len(b)
		}
		return a < b
	})
	return names
}

// perProcessRow formats one row of the per-process matrix: the CPU per job
// of each process named in cols, then the agents', the bench's and all
// processes' totals.
func perProcessRow(label string, c *CPUReport, cols []string) string {
	cells := []string{label}
	if c == nil {
		for range len(cols) + 3 {
			cells = append(cells, "-")
		}
		return strings.Join(cells, "\t")
	}
	for _, n := range cols {
		if p := c.byName(n); p != nil {
			cells = append(cells, fmt.Sprintf("%.3f", p.PerJobMS))
		} else {
			cells = append(cells, "-")
		}
	}
	for _, role := range []string{"agent", "bench", "all"} {
		if p, ok := c.ByRole[role]; ok {
			cells = append(cells, fmt.Sprintf("%.3f", p.PerJobMS))
		} else {
			cells = append(cells, "-")
		}
	}
	return strings.Join(cells, "\t")
}

// printSchedMatrix writes, for the runs of rs, the scheduling figures side
// by side, then the CPU per job of every server and etcd process in the
// submit run and in the scheduling run. It writes nothing when no run has
// either.
func printSchedMatrix(w io.Writer, rs []*SubmitResult) {
	var rows []string
	for _, r := range rs {
		s := r.Sched
		if s == nil {
			continue
		}
		cores, other := "-", "-"
		if s.CPU != nil {
			cores, other = fmt.Sprintf("%.2f", s.CPU.ByRole["all"].Cores), fmt.Sprintf("%.2f", s.CPU.OtherCores)
		}
		rows = append(rows, fmt.Sprintf("%d/%d\t%.0f\t%.0f\t%d\t%.1f\t%.1f\t%.1f\t%d\t%s\t%s",
			r.Servers, r.Shards, s.PlacementsPerS, s.JobsPerS, s.Ended-s.Succeeded+s.Unfinished,
			s.ToRunningS.P50*1000, s.ToRunningS.P99*1000, s.EtcdRevsPerJob, s.Backlog, cores, other))
	}
	if len(rows) > 0 {
		fmt.Fprintln(w)
		Table(w, "SERVERS/SHARDS\tPLACEMENTS/S\tJOBS/S TO END\tNOT SUCCEEDED\tS2R LOADED P50 MS\tP99 MS\tREVS/JOB\tBACKLOG\tCORES BUSY\tOTHER WORK", rows...)
	}
	cols := matrixColumns(rs)
	if len(cols) == 0 {
		return
	}
	header := "CPU MS/JOB\t" + strings.ToUpper(strings.Join(cols, "\t")) + "\tAGENTS\tBENCH\tALL"
	rows = rows[:0]
	for _, r := range rs {
		t := fmt.Sprintf("%d/%d", r.Servers, r.Shards)
		rows = append(rows, perProcessRow(t+" submit", r.CPU, cols))
		if r.Sched != nil {
			rows = append(rows, perProcessRow(t+" schedule", r.Sched.CPU, cols))
		}
	}
	fmt.Fprintln(w)
	Table(w, header, rows...)
	fmt.Fprintln(w, "(submit: per acknowledged submission of the submit run, jobs kept pending; schedule: per job of the scheduling run, submitted, placed, run and ended)")
}
