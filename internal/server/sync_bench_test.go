package server_test

import (
	"context"
	"encoding/json"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/server"
)

// BenchmarkAgentSync measures the CPU one agent's sync costs the active
// (issue 14, point 3), on the server path alone (Server.Sync, without HTTP
// and JSON): a real etcd holding 20k finished jobs and 100 registered
// agents each running 10 attempts, every sync a steady-state one (the
// agent reports its 10 running attempts, the active has nothing new for
// it), as most syncs of a busy cluster are. Agents take turns.
//
//	go test -run '^$' -bench AgentSync -benchmem -count 5 ./internal/server/
func BenchmarkAgentSync(b *testing.B) {
	env := newSyncBench(b)
	for k := range env.infos { // every agent once, so none is new
		if resp := env.sync(context.Background(), k, 0); len(resp.Assign)+len(resp.Kill)+len(resp.Ack) > 0 {
			b.Fatalf("sync of %s: %d assignments, %d kills, %d acks; want none in the steady state",
				env.infos[k].ID, len(resp.Assign), len(resp.Kill), len(resp.Ack))
		}
	}
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		env.sync(context.Background(), i%len(env.infos), 0)
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	env.check()
}

// BenchmarkAgentSyncWake measures what the view's changes cost the long
// polls that agents hold on the active: the same cluster as
// BenchmarkAgentSync, every agent holding a poll (as agents do between
// syncs), while b.N jobs that concern none of them (finished records, as
// another server's submissions and their ends are) change the view, one
// at a time. cpu-µs/change is the process's CPU time (etcd's write, the
// watch's decoding, and whatever the change wakes: the held polls, the
// scheduler) for each change; the net- figures take off what the process
// does in an idle spell as long (see below); ns/op is a change's wall
// time, write to view.
//
//	go test -run '^$' -bench AgentSyncWake -count 5 ./internal/server/
func BenchmarkAgentSyncWake(b *testing.B) {
	env := newSyncBench(b)
	for k := range env.infos {
		env.sync(context.Background(), k, 0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	held := make([]atomic.Int64, len(env.infos))
	for k := range env.infos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				held[k].Add(1)
				env.sync(ctx, k, int(time.Hour/time.Millisecond))
			}
		}()
	}
	b.Cleanup(func() { cancel(); wg.Wait() })
	// Every agent's poll made (and held, or about to be: the few that are
	// not yet are a rounding error over b.N changes).
	for k := range held {
		for held[k].Load() == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	b.ReportAllocs()
	cpu0, mem0 := cpuTime(), heapStats()
	start := time.Now()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		created := base.Add(time.Duration(i) * time.Millisecond)
		j := env.job(i, benchJobID(created, 1), "worker-0", false)
		val, _ := json.Marshal(j)
		resp, err := env.cli.Put(context.Background(), env.layout.Job(j.ID), string(val))
		if err != nil {
			b.Fatal(err)
		}
		if err := env.srv.Store().WaitRev(context.Background(), resp.Header.Revision); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu1, mem1 := cpuTime(), heapStats()
	// The server's own timers (probes, lease renewals, the agent watch)
	// work whether the view changes or not, and on a loaded machine the
	// loop's wall time varies a lot: an idle spell as long as the loop,
	// measured the same way, is taken off, so the net figures are what
	// the changes cost.
	time.Sleep(time.Since(start))
	cpu2, mem2 := cpuTime(), heapStats()
	n := float64(b.N)
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/n, "cpu-µs/change")
	b.ReportMetric(float64(((cpu1-cpu0)-(cpu2-cpu1)).Microseconds())/n, "net-cpu-µs/change")
	b.ReportMetric((float64(mem1.TotalAlloc-mem0.TotalAlloc)-float64(mem2.TotalAlloc-mem1.TotalAlloc))/n, "net-B/change")
	b.ReportMetric((float64(mem1.Mallocs-mem0.Mallocs)-float64(mem2.Mallocs-mem1.Mallocs))/n, "net-allocs/change")
	env.check()
}

// heapStats returns the process's allocation counters.
func heapStats() runtime.MemStats {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// syncBench is one active server on a real etcd holding 20k finished jobs
// and 100 registered agents, each running 10 attempts.
type syncBench struct {
	b        *testing.B
	srv      *server.Server
	cli      *clientv3.Client
	layout   keys.Layout
	epoch    int64
	infos    []tandem.AgentInfo
	reports  [][]tandem.AttemptReport
	seq      []atomic.Uint64
	perAgent int
	total    int
}

func newSyncBench(b *testing.B) *syncBench {
	const finished, agents, perAgent = 20_000, 100, 10
	c := newCluster(b, 1, func(cfg *server.Config) { cfg.AgentTimeout = time.Hour })
	srv := c.nodes[c.waitActive()].srv
	epoch, _ := srv.ActiveEpoch()
	cli := c.etcd.Client(b)
	layout := keys.New("test")
	ctx := context.Background()

	started := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	infos := make([]tandem.AgentInfo, agents)
	reports := make([][]tandem.AttemptReport, agents)
	var ops []clientv3.Op
	put := func(key string, v any) {
		val, err := json.Marshal(v)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(key, string(val)))
		if len(ops) == 128 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				b.Fatalf("load: %v", err)
			}
			ops = ops[:0]
		}
	}
	agentURL := "http://" + liveAddr(b) + "/" // alive, for the checks of an agent that does not poll again at once
	for k := range infos {
		infos[k] = tandem.AgentInfo{ID: "worker-" + strconv.Itoa(k), URL: agentURL, Version: "bench",
			Capacity: tandem.Resources{CPU: 16, MemoryMB: 64 << 10}, Labels: map[string]string{"zone": "a"},
			PID: 1000 + k, StartedAt: started}
		put(layout.Agent(infos[k].ID), infos[k])
	}
	env := &syncBench{b: b, srv: srv, cli: cli, layout: layout, epoch: epoch, infos: infos, reports: reports,
		seq: make([]atomic.Uint64, agents), perAgent: perAgent, total: finished + agents*perAgent}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < env.total; i++ {
		id := benchJobID(base.Add(time.Duration(i)*250*time.Millisecond), 0)
		k := i % agents
		j := env.job(i, id, infos[k].ID, i >= finished)
		if i >= finished {
			a := j.Attempts[0]
			reports[k] = append(reports[k], tandem.AttemptReport{AttemptID: a.ID, JobID: id, State: tandem.AttemptRunning,
				PID: a.PID, StartedAt: a.StartedAt})
		}
		put(layout.Job(id), j)
	}
	if len(ops) > 0 {
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatalf("load: %v", err)
		}
	}
	waitNumJobs(b, srv, env.total)
	return env
}

// job returns job i, with ID id, finished or running its first attempt on
// agent.
func (env *syncBench) job(i int, id, agent string, running bool) *tandem.Job {
	created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 250 * time.Millisecond)
	st, ended, exit := created.Add(40*time.Millisecond), created.Add(3*time.Second), 0
	j := &tandem.Job{
		ID: id,
		JobSpec: tandem.JobSpec{Name: "nightly-report-" + strconv.Itoa(i),
			Command: []string{"sh", "-c", "./report --date=2026-11-01 --out=/data/reports"},
			Labels:  map[string]string{"team": "analytics"}, Submitter: "scheduler"}.WithDefaults(),
		State: tandem.JobSucceeded, CreatedAt: created, UpdatedAt: ended, Epoch: env.epoch, AcceptedBy: "rm1",
		Attempts: []tandem.Attempt{{ID: id + "-1", Number: 1, Agent: agent, Epoch: env.epoch, State: tandem.AttemptSucceeded,
			ScheduledAt: created, StartedAt: &st, EndedAt: &ended, PID: 4000 + i, ExitCode: &exit}},
	}
	if running {
		a := &j.Attempts[0]
		j.State, a.State, a.EndedAt, a.ExitCode = tandem.JobRunning, tandem.AttemptRunning, nil, nil
	}
	return j
}

// sync is one sync of agent k, reporting its running attempts, held up to
// waitMS.
func (env *syncBench) sync(ctx context.Context, k, waitMS int) *tandem.SyncResponse {
	req := &tandem.SyncRequest{Agent: env.infos[k], Epochs: map[int]int64{0: env.epoch}, Running: env.reports[k],
		Done: []tandem.AttemptReport{}, Session: "bench", Seq: env.seq[k].Add(1), WaitMS: waitMS}
	resp, err := env.srv.Sync(ctx, req)
	if err != nil && ctx.Err() == nil {
		env.b.Errorf("sync of %s: %v", env.infos[k].ID, err)
	}
	return resp
}

// check fails the benchmark if the syncs changed what they should not.
func (env *syncBench) check() {
	if live := env.srv.Store().LiveOn(env.infos[0].ID); len(live) != env.perAgent {
		env.b.Fatalf("%s has %d live attempts after the syncs, want %d", env.infos[0].ID, len(live), env.perAgent)
	}
}
