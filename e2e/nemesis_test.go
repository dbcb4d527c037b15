package e2e

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
)

// Knobs of TestNemesis, from the environment.
const (
	envNemesisSeed     = "TANDEM_NEMESIS_SEED"     // reproduce a run's schedule of faults
	envNemesisDuration = "TANDEM_NEMESIS_DURATION" // e.g. 10m: run that long instead of 20 faults
	envNemesisOut      = "TANDEM_NEMESIS_OUT"      // where to save the evidence (always, when set)
)

const (
	nemesisClients   = 4
	nemesisMinFaults = 20
	quiescenceWithin = 2 * time.Minute
	opTimeout        = 30 * time.Second
	checkerClientID  = nemesisClients // the final listing's reads, in the history
)

// Fault kinds of the nemesis.
const (
	faultKillServer = "kill-server"
	faultStopServer = "stop-server"
	faultPartition  = "partition-server"
	faultSwitchover = "switchover"
	faultKillAgent  = "kill-agent"
	faultKillEtcd   = "kill-etcd"
)

var faultKinds = []string{faultKillServer, faultStopServer, faultPartition, faultSwitchover, faultKillAgent, faultKillEtcd}

// TestNemesis is tandem's randomized fault suite, after Jepsen: clients
// submit jobs and read their states through the failover client while a
// nemesis crashes, pauses and cuts off servers, switches the active over,
// and crashes agents and etcd members, one fault at a time. Then everything
// is healed, and the run is checked: no acknowledged job lost (I2), no
// attempt launched twice and never two attempts of a job at once (I4), no
// write accepted from a deposed active (I1), and every job's state as the
// clients saw it linearizable (porcupine). A failing run saves its whole
// history, a visualisation and the cluster's logs, and names the directory.
func TestNemesis(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envNemesisSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envNemesisSeed, s, err)
		}
		seed = v
	}
	var duration time.Duration
	if s := os.Getenv(envNemesisDuration); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive duration such as 10m", envNemesisDuration, s)
		}
		duration = d
	}
	t.Logf("nemesis seed %d (%s=%d reproduces the schedule of faults: kinds, roles, holds and gaps)", seed, envNemesisSeed, seed)

	n := &nemesis{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x6e656d65736973)),
		rec: history.NewRecorder(), ledger: filepath.Join(t.TempDir(), "ledger"), faultsByKind: map[string]int{}}
	n.startCluster()
	defer func() {
		// A run that stopped half-way (t.Fatal) leaves its evidence too.
		if t.Failed() && n.savedIn == "" {
			if dir, err := n.saveEvidence(os.Getenv(envNemesisOut)); err == nil {
				t.Logf("what the run had gathered, and every process's log, is in %s", dir)
			}
		}
	}()

	loadCtx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	t.Cleanup(func() { stopLoad(); load.Wait() }) // runs before the cluster stops
	for i := 0; i < nemesisClients; i++ {
		load.Add(1)
		go func() {
			defer load.Done()
			n.clientLoop(loadCtx, i)
		}()
	}

	began := time.Now()
	for {
		if duration > 0 && time.Since(began) >= duration || duration == 0 && n.applied() >= nemesisMinFaults {
			break
		}
		if len(n.faults) >= 3*nemesisMinFaults && n.applied() < len(n.faults)/2 {
			t.Fatalf("only %d of %d faults could be applied: %+v", n.applied(), len(n.faults), n.faults)
		}
		pl := n.nextPlan()
		n.fault(pl)
		time.Sleep(pl.gap)
	}
	n.healAll()
	stopLoad()
	load.Wait()
	n.ranFor = time.Since(began)
	t.Logf("nemesis done after %s: %d faults %v; load stopped", n.ranFor.Round(time.Millisecond), n.applied(), n.faultsByKind)

	n.waitQuiescence()
	n.collect()
	n.check()
	n.report()
}

// nemesis is one run of TestNemesis: the cluster, the load's history, the
// faults, and what the checks found.
type nemesis struct {
	t      *testing.T
	seed   uint64
	rng    *rand.Rand // the nemesis's own: only the test goroutine uses it
	c      *local.Cluster
	admin  *client.Client
	rec    *history.Recorder
	ledger string
	ranFor time.Duration

	mu            sync.Mutex
	acked         []string // acknowledged job IDs, in order of acknowledgement
	ackedBy       map[string]int
	reads         int // recorded reads (found or not found)
	failedSubmits int
	failedReads   int
	lastErrs      []string // a few of the load's errors, for the summary

	faults       []faultRecord
	faultsByKind map[string]int
	paused       map[*local.Proc]bool // SIGSTOPped right now

	// What was collected after quiescence.
	final       map[string]*tandem.Job // the final listing through the API
	records     map[string]jobRecord   // every job key in etcd
	epochs      []epochRecord          // every creation of the leader key, in order
	compactedAt int64                  // etcd history before this revision was compacted (0: none)
	attemptEps  []attemptWrite         // attempts as first written, with the revision
	launches    []launch               // the ledger's start records
	launchIdx   map[string]*launch     // the first start record of each attempt
	ends        map[string]int64       // the ledger's end records: attempt ID -> unix ns
	lin         history.Result
	problems    []string
	notes       []string
	savedIn     string // where the evidence went
}

type faultRecord struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Role   string `json:"role,omitempty"` // active or standby, for server faults
	Start  int64  `json:"start_ns"`       // on the history's clock
	End    int64  `json:"end_ns"`
	Note   string `json:"note,omitempty"`
}

type jobRecord struct {
	Job            *tandem.Job `json:"job"`
	CreateRevision int64       `json:"create_revision"`
	ModRevision    int64       `json:"mod_revision"`
}

type epochRecord struct {
	Epoch  int64  `json:"epoch"`
	Server string `json:"server"`
}

type attemptWrite struct {
	Attempt  string `json:"attempt"`
	Epoch    int64  `json:"epoch"`    // as recorded in the attempt
	Revision int64  `json:"revision"` // of the write that added it
}

type launch struct {
	Attempt string `json:"attempt"`
	Job     string `json:"job"`
	Agent   string `json:"agent"`
	Epoch   int64  `json:"epoch"`
	At      int64  `json:"at_unix_ns"`
	Line    int    `json:"line"`
}

func (n *nemesis) startCluster() {
	t := n.t
	cfg := local.Config{Binary: binary, Servers: 3, Agents: 3, ExternalEtcd: 3, Proxied: true,
		BasePort: freeBasePort(t, 3), DataDir: t.TempDir(), LeaseTTL: time.Second, LogLevel: "info",
		// etcd's smallest lease TTL is 1.5 election timeouts: tune raft so 1 s is allowed.
		EtcdArgs:  []string{"--heartbeat", "50ms", "--election-timeout", "500ms"},
		ExtraArgs: []string{"--agent-timeout", "3s"}}
	c, err := local.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.c = c
	n.paused = map[*local.Proc]bool{}
	n.ackedBy = map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.unfreeze() // nothing stays paused or cut off, whatever failed
		c.Stop(10 * time.Second)
	})
	n.admin = newClient(t, c.URLs())
	a := waitActive(t, c)
	t.Logf("cluster up: 3 servers (%s active), 3 agents, 3 etcd members; data in %s", c.Servers[a].ID, cfg.DataDir)
}

// ---- load ----

// jobScript is a job's command: it appends a start record to the ledger,
// outside tandem, works a little, and appends an end record. Lines this
// short, appended with >>, are written whole.
func jobScript(ledger string, tenths int) string {
	q := "'" + ledger + "'"
	return fmt.Sprintf(`echo "start $TANDEM_ATTEMPT_ID $TANDEM_JOB_ID $TANDEM_AGENT_ID $TANDEM_EPOCH $(date +%%s%%N)" >> %s; `+
		`sleep 0.%d; echo "end $TANDEM_ATTEMPT_ID $(date +%%s%%N)" >> %s`, q, tenths, q)
}

func (n *nemesis) clientLoop(ctx context.Context, id int) {
	cfg := client.Config{Servers: n.c.URLs()}
	if id%2 == 1 {
		// Even clients give up on a silent server after the default attempt
		// timeout (1 s); odd ones wait up to the HTTP timeout (10 s). While
		// the active is paused or cut off, some clients then move on and
		// read from its successor while others wait it out and stick to it
		// when it wakes up: where a deposed active answering from a stale
		// view would show.
		cfg.AttemptTimeout = -1
	}
	cl, err := client.New(cfg)
	if err != nil {
		n.t.Error(err)
		return
	}
	rng := rand.New(rand.NewPCG(n.seed, uint64(id)+1))
	for ctx.Err() == nil {
		if job := n.pickJob(rng); job != "" && rng.IntN(3) != 0 {
			n.read(ctx, cl, id, job)
		} else {
			n.submit(ctx, cl, id, rng)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(20+rng.IntN(80)) * time.Millisecond):
		}
	}
}

// pickJob returns an acknowledged job to read: half the time one of the
// latest (still moving), else any; "" before the first.
func (n *nemesis) pickJob(rng *rand.Rand) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.acked) == 0 {
		return ""
	}
	if rng.IntN(2) == 0 {
		recent := min(len(n.acked), 20)
		return n.acked[len(n.acked)-1-rng.IntN(recent)]
	}
	return n.acked[rng.IntN(len(n.acked))]
}

func (n *nemesis) submit(ctx context.Context, cl *client.Client, id int, rng *rand.Rand) {
	spec := tandem.JobSpec{Name: "nemesis", Command: []string{"sh", "-c", jobScript(n.ledger, 1+rng.IntN(3))},
		MaxAttempts: 5, RetryBackoff: tandem.Duration(100 * time.Millisecond)}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	call := time.Now()
	j, err := cl.SubmitJob(octx, spec, client.SubmitOptions{})
	ret := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		// Unknown outcome: the job may exist, but with an ID nobody knows.
		if ctx.Err() == nil {
			n.failedSubmits++
			n.noteErr(fmt.Sprintf("client %d: submit: %v", id, err))
		}
		return
	}
	n.rec.Submit(id, n.serverID(cl.Current()), j.ID, call, ret)
	n.acked = append(n.acked, j.ID)
	n.ackedBy[j.ID] = id
}

func (n *nemesis) read(ctx context.Context, cl *client.Client, id int, job string) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	call := time.Now()
	j, err := cl.GetJob(octx, job)
	ret := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case err == nil:
		n.rec.Read(id, n.serverID(cl.Current()), job, j, call, ret)
		n.reads++
	case errors.Is(err, tandem.ErrNotFound):
		n.rec.Read(id, n.serverID(cl.Current()), job, nil, call, ret)
		n.reads++
	case ctx.Err() == nil:
		n.failedReads++ // unknown outcome: recorded as nothing
		n.noteErr(fmt.Sprintf("client %d: read %s: %v", id, job, err))
	}
}

// serverID names the server at url, the one a client stuck to after a call:
// for calls to the active, the server that answered.
func (n *nemesis) serverID(url string) string {
	for _, s := range n.c.Servers {
		if s.URL == url {
			return s.ID
		}
	}
	return url
}

func (n *nemesis) noteErr(s string) {
	if len(n.lastErrs) < 10 {
		n.lastErrs = append(n.lastErrs, s)
	}
}

// ---- the nemesis ----

func (n *nemesis) applied() int {
	total := 0
	for _, k := range n.faultsByKind {
		total += k
	}
	return total
}

// plan is one fault as the seed decides it: the same number of draws for
// every fault, so that a seed gives the same schedule (kinds, roles, holds,
// gaps) whatever the cluster does in between.
type plan struct {
	kind     string
	atActive bool          // aim a server fault at the active (else a standby)
	pick     float64       // which of the candidates, in [0, 1)
	hold     float64       // where the hold falls in the kind's range, in [0, 1)
	gap      time.Duration // the pause after the fault is healed
}

func (n *nemesis) nextPlan() plan {
	return plan{
		kind:     faultKinds[n.rng.IntN(len(faultKinds))],
		atActive: n.rng.IntN(4) != 0,
		pick:     n.rng.Float64(),
		hold:     n.rng.Float64(),
		gap:      300*time.Millisecond + time.Duration(n.rng.Int64N(int64(1200*time.Millisecond))),
	}
}

// holdFor sleeps for the plan's point in [lo, hi].
func (p plan) holdFor(lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(p.hold*float64(hi-lo)))
}

// choose returns the plan's pick among candidates.
func (p plan) choose(candidates []int) int { return candidates[int(p.pick*float64(len(candidates)))] }

// serverTarget picks the server to fault: the active most of the time (that
// is where failover happens), sometimes a standby.
func (n *nemesis) serverTarget(p plan) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := n.c.Active(ctx)
	if a >= 0 && p.atActive {
		return a, "active"
	}
	var others []int
	for i := range n.c.Servers {
		if i != a {
			others = append(others, i)
		}
	}
	if a < 0 {
		return p.choose(others), "no active known"
	}
	return p.choose(others), "standby"
}

// fault applies one fault, holds it and heals it, and waits until what it
// hit is healthy again.
func (n *nemesis) fault(pl plan) {
	t, c := n.t, n.c
	kind := pl.kind
	f := faultRecord{Kind: kind, Start: n.rec.Nanos(time.Now())}
	var heal *local.Proc // to wait for, healthy, afterwards
	var err error
	switch kind {
	case faultKillServer:
		i, role := n.serverTarget(pl)
		p := c.Servers[i]
		f.Target, f.Role, heal = p.ID, role, p
		if err = p.Kill(); err == nil {
			pl.holdFor(time.Second, 3*time.Second)
			err = p.Start()
		}
	case faultStopServer:
		i, role := n.serverTarget(pl)
		p := c.Servers[i]
		f.Target, f.Role, heal = p.ID, role, p
		if err = n.pause(p); err == nil {
			// Longer than the 1 s lease: it must come back fenced.
			pl.holdFor(2500*time.Millisecond, 4*time.Second)
			err = n.resume(p)
		}
	case faultPartition:
		i, role := n.serverTarget(pl)
		p := c.Servers[i]
		f.Target, f.Role, heal = p.ID, role, p
		if err = c.Partition(i); err == nil {
			pl.holdFor(2500*time.Millisecond, 4*time.Second)
			err = c.Heal(i)
		}
	case faultSwitchover:
		err = n.switchover(pl, &f)
	case faultKillAgent:
		p := c.Agents[pl.choose([]int{0, 1, 2})]
		f.Target, heal = p.ID, p
		if err = p.Kill(); err == nil {
			pl.holdFor(500*time.Millisecond, 2*time.Second)
			err = p.Start()
		}
	case faultKillEtcd:
		p := c.Etcd[pl.choose([]int{0, 1, 2})]
		f.Target, heal = p.ID, p
		if err = p.Kill(); err == nil {
			pl.holdFor(time.Second, 3*time.Second)
			err = p.Start()
		}
	}
	f.End = n.rec.Nanos(time.Now())
	if err != nil {
		f.Note = "not applied: " + err.Error()
		t.Logf("nemesis: %s %s: %v", kind, f.Target, err)
	} else {
		n.faultsByKind[kind]++
	}
	n.mu.Lock()
	n.faults = append(n.faults, f)
	n.mu.Unlock()
	if heal != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := heal.WaitHealthy(ctx); err != nil {
			t.Fatalf("after %s of %s: %v", kind, heal.ID, err)
		}
	}
}

// switchover hands leadership from the active to a random live standby.
func (n *nemesis) switchover(pl plan, f *faultRecord) error {
	c := n.c
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := c.WaitActive(ctx)
	if err != nil {
		return err
	}
	var standbys []int
	for i := range c.Servers {
		if i != a && c.PID(i) != 0 {
			standbys = append(standbys, i)
		}
	}
	if len(standbys) == 0 {
		return errors.New("no live standby")
	}
	b := pl.choose(standbys)
	f.Target, f.Role = c.Servers[a].ID+"->"+c.Servers[b].ID, "active"
	_, err = n.admin.Failover(ctx, c.Servers[a].URL, tandem.HandoffRequest{From: c.Servers[a].ID, To: c.Servers[b].ID})
	return err
}

func (n *nemesis) pause(p *local.Proc) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	n.paused[p] = true
	return nil
}

func (n *nemesis) resume(p *local.Proc) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.paused, p)
	return p.Signal(syscall.SIGCONT)
}

// healAll undoes every fault: no partitions, nothing stopped, every process
// running and healthy.
func (n *nemesis) healAll() {
	n.healAllQuietly()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, p := range n.procs() {
		if err := p.WaitHealthy(ctx); err != nil {
			n.t.Fatalf("healing the cluster: %v", err)
		}
	}
	if _, err := n.c.WaitActive(ctx); err != nil {
		n.t.Fatalf("healing the cluster: %v", err)
	}
}

func (n *nemesis) healAllQuietly() {
	n.unfreeze()
	for _, p := range n.procs() {
		if p.PID() == 0 {
			if err := p.Start(); err != nil {
				n.t.Logf("restart %s: %v", p.ID, err)
			}
		}
	}
}

// unfreeze heals every partition and resumes every paused process.
func (n *nemesis) unfreeze() {
	for i := range n.c.Servers {
		_ = n.c.Heal(i)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for p := range n.paused {
		_ = p.Signal(syscall.SIGCONT)
		delete(n.paused, p)
	}
}

func (n *nemesis) procs() []*local.Proc {
	return slices.Concat(n.c.Etcd, n.c.Servers, n.c.Agents)
}

// ---- after the run ----

// waitQuiescence waits until every acknowledged job is terminal and records
// the final listing's view of each acknowledged job as a read.
func (n *nemesis) waitQuiescence() {
	cl := newClient(n.t, n.c.URLs())
	deadline := time.Now().Add(quiescenceWithin)
	for {
		call := time.Now()
		jobs, err := listAll(cl)
		ret := time.Now()
		if err == nil {
			n.final = jobs
			busy := 0
			for _, id := range n.acked {
				if j, ok := jobs[id]; ok && !j.State.Terminal() {
					busy++
				}
			}
			if busy == 0 || time.Now().After(deadline) {
				for _, id := range n.acked {
					n.rec.Read(checkerClientID, n.serverID(cl.Current()), id, jobs[id], call, ret)
				}
				if busy > 0 {
					n.t.Logf("gave up waiting after %s: %d acknowledged jobs not terminal", quiescenceWithin, busy)
				}
				return
			}
		} else if time.Now().After(deadline) {
			n.t.Fatalf("list jobs after the run: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func listAll(cl *client.Client) (map[string]*tandem.Job, error) {
	out := map[string]*tandem.Job{}
	after := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		page, err := cl.ListJobs(ctx, client.ListOptions{Limit: 1000, After: after})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, j := range page.Jobs {
			out[j.ID] = j
		}
		if page.Next == "" {
			return out, nil
		}
		after = page.Next
	}
}

// collect reads the job records and the leader key's history from etcd, and
// the ledger.
func (n *nemesis) collect() {
	t := n.t
	cli, err := clientv3.New(clientv3.Config{Endpoints: n.c.EtcdEndpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	layout := keys.New("default")
	resp, err := cli.Get(ctx, layout.JobsPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("read job records from etcd: %v", err)
	}
	n.records = map[string]jobRecord{}
	for _, kv := range resp.Kvs {
		var j tandem.Job
		if err := json.Unmarshal(kv.Value, &j); err != nil {
			t.Fatalf("job record %s: %v", kv.Key, err)
		}
		n.records[j.ID] = jobRecord{Job: &j, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision}
	}
	if err := n.etcdHistory(ctx, cli, layout, resp.Header.Revision); err != nil {
		t.Fatalf("etcd history: %v", err)
	}
	n.readLedger()
}

// etcdHistory watches the cluster's keys from revision 1 up to upTo: every
// creation of the leader key is an epoch, and every write of a job record
// that adds an attempt says which epoch the attempt was recorded under.
// When etcd has compacted the beginning (long runs), it keeps what remains.
func (n *nemesis) etcdHistory(ctx context.Context, cli *clientv3.Client, layout keys.Layout, upTo int64) error {
	leaderKey, jobsPrefix := layout.Leader(), layout.JobsPrefix()
	attempts := map[string]int{} // job key -> attempts in its latest version seen
	from := int64(1)
	for {
		compacted, err := n.watchFrom(ctx, cli, layout.Prefix(), from, upTo, func(ev *clientv3.Event) {
			key := string(ev.Kv.Key)
			switch {
			case key == leaderKey && ev.Type == clientv3.EventTypePut && ev.Kv.CreateRevision == ev.Kv.ModRevision:
				var l struct {
					ID string `json:"id"`
				}
				_ = json.Unmarshal(ev.Kv.Value, &l)
				n.epochs = append(n.epochs, epochRecord{Epoch: ev.Kv.CreateRevision, Server: l.ID})
			case strings.HasPrefix(key, jobsPrefix) && ev.Type == clientv3.EventTypePut:
				var j tandem.Job
				if json.Unmarshal(ev.Kv.Value, &j) != nil {
					return
				}
				for _, a := range j.Attempts[min(attempts[key], len(j.Attempts)):] {
					n.attemptEps = append(n.attemptEps, attemptWrite{Attempt: a.ID, Epoch: a.Epoch, Revision: ev.Kv.ModRevision})
				}
				attempts[key] = len(j.Attempts)
			}
		})
		if err != nil {
			return err
		}
		if compacted == 0 {
			return nil
		}
		// History before compacted is gone: start from the keys as they
		// were at compacted, and follow what came after.
		n.compactedAt, from = compacted, compacted+1
		n.epochs, n.attemptEps, attempts = nil, nil, map[string]int{}
		n.notes = append(n.notes, fmt.Sprintf("etcd compacted its history before revision %d: "+
			"epochs and attempts recorded before it are not checked against it", compacted))
		if resp, err := cli.Get(ctx, leaderKey, clientv3.WithRev(compacted)); err == nil && len(resp.Kvs) > 0 {
			n.epochs = append(n.epochs, epochRecord{Epoch: resp.Kvs[0].CreateRevision, Server: "(in force at compaction)"})
		}
		resp, err := cli.Get(ctx, jobsPrefix, clientv3.WithPrefix(), clientv3.WithRev(compacted))
		if err != nil {
			return fmt.Errorf("job records at revision %d: %w", compacted, err)
		}
		for _, kv := range resp.Kvs {
			var j tandem.Job
			if json.Unmarshal(kv.Value, &j) == nil {
				attempts[string(kv.Key)] = len(j.Attempts)
			}
		}
	}
}

// watchFrom feeds fn every event under prefix from revision from up to upTo.
// It returns the compaction revision if from has been compacted.
func (n *nemesis) watchFrom(ctx context.Context, cli *clientv3.Client, prefix string, from, upTo int64, fn func(*clientv3.Event)) (int64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	// A progress notification says every event up to its revision has been
	// sent: the way to know the end was reached if the last revision wrote
	// nothing under prefix.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
			_ = cli.RequestProgress(wctx)
		case resp, ok := <-wch:
			if !ok {
				return 0, errors.New("watch closed")
			}
			if resp.CompactRevision != 0 {
				return resp.CompactRevision, nil
			}
			if err := resp.Err(); err != nil {
				return 0, err
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision > upTo {
					return 0, nil
				}
				fn(ev)
				if ev.Kv.ModRevision == upTo {
					return 0, nil
				}
			}
			if resp.IsProgressNotify() && resp.Header.Revision >= upTo {
				return 0, nil
			}
		}
	}
}

func (n *nemesis) readLedger() {
	t := n.t
	f, err := os.Open(n.ledger)
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	defer f.Close()
	n.ends = map[string]int64{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fs := strings.Fields(sc.Text())
		bad := func() {
			n.problems = append(n.problems, fmt.Sprintf("ledger line %d is malformed: %q", line, sc.Text()))
		}
		switch {
		case len(fs) == 6 && fs[0] == "start":
			epoch, err1 := strconv.ParseInt(fs[4], 10, 64)
			at, err2 := strconv.ParseInt(fs[5], 10, 64)
			if err1 != nil || err2 != nil {
				bad()
				continue
			}
			n.launches = append(n.launches, launch{Attempt: fs[1], Job: fs[2], Agent: fs[3], Epoch: epoch, At: at, Line: line})
		case len(fs) == 3 && fs[0] == "end":
			at, err := strconv.ParseInt(fs[2], 10, 64)
			if err != nil {
				bad()
				continue
			}
			n.ends[fs[1]] = at
		default:
			bad()
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("ledger: %v", err)
	}
}

// ---- checks ----

func (n *nemesis) problemf(format string, args ...any) {
	n.problems = append(n.problems, fmt.Sprintf(format, args...))
}

func (n *nemesis) check() {
	n.checkAcknowledged()
	n.checkLaunches()
	n.checkOneAttemptAtATime()
	n.checkEpochs()
	n.checkLinearizable()
}

// checkAcknowledged: every acknowledged job exists and is terminal (I2).
func (n *nemesis) checkAcknowledged() {
	for _, id := range n.acked {
		r, ok := n.records[id]
		switch {
		case !ok:
			n.problemf("I2: job %s, acknowledged to client %d, is not in etcd (lost)", id, n.ackedBy[id])
		case !r.Job.State.Terminal():
			n.problemf("job %s is %s after %s of quiescence, not terminal: %s", id, r.Job.State, quiescenceWithin, describeAttempts(r.Job))
		}
		if _, ok := n.final[id]; !ok {
			n.problemf("I2: job %s, acknowledged to client %d, is missing from the final listing through the API", id, n.ackedBy[id])
		}
	}
}

// checkLaunches: no attempt ID launched twice, and every launch is an
// attempt tandem recorded, on the agent it recorded (I4).
func (n *nemesis) checkLaunches() {
	first := map[string]launch{}
	for _, l := range n.launches {
		if prev, ok := first[l.Attempt]; ok {
			n.problemf("I4: attempt %s was launched twice: on %s (ledger line %d) and on %s (ledger line %d)",
				l.Attempt, prev.Agent, prev.Line, l.Agent, l.Line)
			continue
		}
		first[l.Attempt] = l
		a, j := n.attempt(l.Job, l.Attempt)
		switch {
		case a == nil:
			n.problemf("I4: attempt %s of job %s was launched on %s (ledger line %d) but no job record has it", l.Attempt, l.Job, l.Agent, l.Line)
		case a.Agent != l.Agent:
			n.problemf("I4: attempt %s of job %s was launched on %s (ledger line %d) but tandem recorded it for %s", l.Attempt, j.ID, l.Agent, l.Line, a.Agent)
		}
	}
}

func (n *nemesis) attempt(job, id string) (*tandem.Attempt, *tandem.Job) {
	r, ok := n.records[job]
	if !ok {
		return nil, nil
	}
	for k := range r.Job.Attempts {
		if r.Job.Attempts[k].ID == id {
			return &r.Job.Attempts[k], r.Job
		}
	}
	return nil, r.Job
}

// checkOneAttemptAtATime: no job had two attempts at once (I4), by its
// record and by the ledger.
func (n *nemesis) checkOneAttemptAtATime() {
	for _, id := range slices.Sorted(maps.Keys(n.records)) {
		j := n.records[id].Job
		for k := 1; k < len(j.Attempts); k++ {
			prev, cur := j.Attempts[k-1], j.Attempts[k]
			switch {
			case prev.State.Live() || prev.EndedAt == nil:
				n.problemf("I4: job %s has attempt %s (%s, ended %v) before its attempt %s: two live attempts", id, prev.ID, prev.State, prev.EndedAt, cur.ID)
			case cur.StartedAt != nil && cur.StartedAt.Before(*prev.EndedAt):
				n.problemf("I4: job %s: attempt %s started at %s, before attempt %s ended at %s",
					id, cur.ID, cur.StartedAt.UTC().Format(time.RFC3339Nano), prev.ID, prev.EndedAt.UTC().Format(time.RFC3339Nano))
			}
		}
	}
	zombies := 0
	for _, l := range n.launches {
		a, j := n.attempt(l.Job, l.Attempt)
		if a == nil || a.Number < 2 {
			continue
		}
		prev := j.Attempts[a.Number-2]
		if prev.EndedAt == nil {
			continue // reported above
		}
		if l.At < prev.EndedAt.UnixNano() {
			n.problemf("I4: job %s: attempt %s was launched at %s (ledger line %d), before attempt %s ended at %s as tandem recorded it",
				j.ID, l.Attempt, time.Unix(0, l.At).UTC().Format(time.RFC3339Nano), l.Line, prev.ID, prev.EndedAt.UTC().Format(time.RFC3339Nano))
		}
		if end, ok := n.ends[prev.ID]; ok && end > l.At {
			zombies++ // a replaced attempt of a lost agent ran on until it was told
		}
	}
	if zombies > 0 {
		n.notes = append(n.notes, fmt.Sprintf("%d replaced attempts (their agent declared lost) were still running when their retry launched", zombies))
	}
}

// checkEpochs: no write of a deposed active was accepted (I1). A job record
// created at revision R carries the epoch in force at R: the greatest
// creation of the leader key at or before R; so does each attempt, at the
// revision of the write that added it. An agent hears of an attempt only
// from an active at least as new as the one that recorded it.
func (n *nemesis) checkEpochs() {
	if len(n.epochs) == 0 {
		n.problemf("no creation of the leader key found in etcd's history")
		return
	}
	known := map[int64]bool{}
	for _, e := range n.epochs {
		known[e.Epoch] = true
	}
	for _, id := range slices.Sorted(maps.Keys(n.records)) {
		r := n.records[id]
		if want, ok := n.epochAt(r.CreateRevision); ok && r.Job.Epoch != want {
			n.problemf("I1: job %s was created at revision %d with epoch %d, but the epoch then was %d", id, r.CreateRevision, r.Job.Epoch, want)
		}
		for _, a := range r.Job.Attempts {
			if l := n.launchOf(a.ID); l != nil && l.Epoch < a.Epoch {
				n.problemf("I1: attempt %s recorded under epoch %d was delivered to %s by an answer of older epoch %d (ledger line %d)",
					a.ID, a.Epoch, l.Agent, l.Epoch, l.Line)
			}
		}
	}
	for _, w := range n.attemptEps {
		if want, ok := n.epochAt(w.Revision); ok && w.Epoch != want {
			n.problemf("I1: attempt %s was recorded at revision %d with epoch %d, but the epoch then was %d", w.Attempt, w.Revision, w.Epoch, want)
		}
	}
	if n.compactedAt == 0 {
		for _, l := range n.launches {
			if !known[l.Epoch] {
				n.problemf("I1: attempt %s was launched under epoch %d (ledger line %d), which no leader ever had", l.Attempt, l.Epoch, l.Line)
			}
		}
	}
}

// epochAt returns the epoch in force at revision rev: the greatest creation
// of the leader key at or before rev. After a compaction, the creation in
// force at the compaction is known, so only revisions before it are unknown.
func (n *nemesis) epochAt(rev int64) (int64, bool) {
	best, ok := int64(0), false
	for _, e := range n.epochs {
		if e.Epoch <= rev && e.Epoch >= best {
			best, ok = e.Epoch, true
		}
	}
	return best, ok
}

func (n *nemesis) launchOf(attempt string) *launch {
	if n.launchIdx == nil {
		n.launchIdx = map[string]*launch{}
		for k := range n.launches {
			if _, dup := n.launchIdx[n.launches[k].Attempt]; !dup {
				n.launchIdx[n.launches[k].Attempt] = &n.launches[k]
			}
		}
	}
	return n.launchIdx[attempt]
}

// checkLinearizable: every job's states as the clients saw them are
// linearizable; Unknown (the checker ran out of time) is not a pass.
func (n *nemesis) checkLinearizable() {
	n.lin = history.Check(n.rec.Operations(), 30*time.Second)
	switch n.lin.Outcome {
	case porcupine.Ok:
	case porcupine.Unknown:
		n.problemf("linearizability: porcupine could not decide within 30s (Unknown), which is not a pass")
	default:
		for _, id := range n.lin.Illegal {
			n.problemf("linearizability: the history of job %s is not linearizable: %s", id, n.describeOps(id))
		}
	}
}

func (n *nemesis) describeOps(job string) string {
	m := history.Model()
	var parts []string
	for _, op := range n.rec.Operations() {
		if op.Input.(history.Input).Job != job {
			continue
		}
		parts = append(parts, fmt.Sprintf("[client %d %.3fs..%.3fs %s %s]", op.ClientId,
			float64(op.Call)/1e9, float64(op.Return)/1e9, m.DescribeOperation(op.Input, op.Output),
			m.DescribeOperationMetadata(op.Metadata)))
	}
	return strings.Join(parts, " ")
}

func describeAttempts(j *tandem.Job) string {
	var parts []string
	for _, a := range j.Attempts {
		parts = append(parts, fmt.Sprintf("%s on %s %s", a.ID, a.Agent, a.State))
	}
	return fmt.Sprintf("attempts [%s], reason %q", strings.Join(parts, ", "), j.Reason)
}

// ---- report ----

func (n *nemesis) report() {
	t := n.t
	attempts := 0
	for _, r := range n.records {
		attempts += len(r.Job.Attempts)
	}
	t.Logf("nemesis summary: seed %d, ran %s, faults %d %v; acknowledged jobs %d (submits failed %d), "+
		"reads %d (failed %d), jobs in etcd %d, attempts %d, launches %d, epochs seen %d, linearizability %s",
		n.seed, n.ranFor.Round(time.Millisecond), n.applied(), n.faultsByKind, len(n.acked), n.failedSubmits,
		n.reads, n.failedReads, len(n.records), attempts, len(n.launches), len(n.epochs), n.lin.Outcome)
	for _, s := range n.notes {
		t.Logf("note: %s", s)
	}
	if len(n.lastErrs) > 0 {
		t.Logf("some of the load's errors (unknown outcomes, not failures): %s", strings.Join(n.lastErrs, "; "))
	}
	out := os.Getenv(envNemesisOut)
	if len(n.problems) == 0 && out == "" {
		return
	}
	dir, err := n.saveEvidence(out)
	if err != nil {
		t.Errorf("saving the evidence: %v", err)
	}
	n.savedIn = dir
	if len(n.problems) == 0 {
		t.Logf("evidence saved in %s", dir)
		return
	}
	const maxShown = 30
	for k, p := range n.problems {
		if k == maxShown {
			t.Errorf("... and %d more problems", len(n.problems)-maxShown)
			break
		}
		t.Error(p)
	}
	t.Errorf("%d problems (seed %d); the history (history.json), porcupine's picture (linearizability.html) and every process's log are in %s",
		len(n.problems), n.seed, dir)
}

// saveEvidence writes the run's history, porcupine's visualisation and the
// processes' logs to dir (a new temporary directory, kept, if dir is "").
func (n *nemesis) saveEvidence(dir string) (string, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "tandem-nemesis-")
		if err != nil {
			return "", err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return dir, err
	}
	type opJSON struct {
		Client int            `json:"client"`
		Call   int64          `json:"call_ns"`
		Return int64          `json:"return_ns"`
		Input  history.Input  `json:"input"`
		Output history.Output `json:"output"`
		Via    string         `json:"answered_by,omitempty"`
	}
	var ops []opJSON
	for _, op := range n.rec.Operations() {
		ops = append(ops, opJSON{Client: op.ClientId, Call: op.Call, Return: op.Return,
			Input: op.Input.(history.Input), Output: op.Output.(history.Output), Via: fmt.Sprint(op.Metadata)})
	}
	slices.SortFunc(ops, func(a, b opJSON) int { return cmp.Compare(a.Call, b.Call) })
	n.mu.Lock() // the load may still be running if the run stopped half-way
	acked, faults := slices.Clone(n.acked), slices.Clone(n.faults)
	n.mu.Unlock()
	doc := map[string]any{
		"seed": n.seed, "clock_start": n.rec.Start(), "ran_for": n.ranFor.String(),
		"problems": n.problems, "notes": n.notes, "faults": faults,
		"acknowledged": acked, "ops": ops, "linearizability": n.lin.Outcome, "illegal_jobs": n.lin.Illegal,
		"ledger_starts": n.launches, "ledger_ends": n.ends, "jobs": n.records,
		"epochs": n.epochs, "compacted_at": n.compactedAt, "attempt_writes": n.attemptEps,
		"logs": "each process's log is <id>.log here",
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return dir, err
	}
	if err := os.WriteFile(filepath.Join(dir, "history.json"), b, 0o644); err != nil {
		return dir, err
	}
	if n.lin.Outcome != "" {
		info := n.lin.Info
		var notes []porcupine.Annotation
		for _, f := range faults {
			notes = append(notes, porcupine.Annotation{Tag: "nemesis", Start: f.Start, End: f.End,
				Description: f.Kind + " " + f.Target, Details: f.Role + " " + f.Note})
		}
		info.AddAnnotations(notes)
		if err := porcupine.VisualizePath(history.Model(), info, filepath.Join(dir, "linearizability.html")); err != nil {
			return dir, err
		}
	}
	for _, p := range n.procs() {
		if err := copyFile(p.LogPath, filepath.Join(dir, p.ID+".log")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return dir, err
		}
	}
	if b, err := os.ReadFile(n.ledger); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "ledger"), b, 0o644)
	}
	return dir, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// The checks of TestNemesis catch what they are meant to: fed a run with one
// violation of each kind, each is reported, naming what broke.
func TestNemesisChecksCatchViolations(t *testing.T) {
	at := func(s int) *time.Time { v := time.Unix(1000+int64(s), 0); return &v }
	done := func(id string, n int, agent string, epoch int64, start, end int) tandem.Attempt {
		return tandem.Attempt{ID: fmt.Sprintf("%s-%d", id, n), Number: n, Agent: agent, Epoch: epoch,
			State: tandem.AttemptSucceeded, StartedAt: at(start), EndedAt: at(end)}
	}
	job := func(id string, state tandem.JobState, epoch int64, attempts ...tandem.Attempt) *tandem.Job {
		return &tandem.Job{ID: id, State: state, Epoch: epoch, Attempts: attempts}
	}
	n := &nemesis{t: t, rec: history.NewRecorder(), ackedBy: map[string]int{}}
	n.acked = []string{"ok", "lost", "busy", "twice"}
	n.epochs = []epochRecord{{Epoch: 3}, {Epoch: 10}}
	n.records = map[string]jobRecord{
		"ok":    {Job: job("ok", tandem.JobSucceeded, 3, done("ok", 1, "agent1", 3, 1, 2)), CreateRevision: 4},
		"busy":  {Job: job("busy", tandem.JobRunning, 3, tandem.Attempt{ID: "busy-1", Number: 1, Agent: "agent1", Epoch: 3, State: tandem.AttemptRunning}), CreateRevision: 5},
		"twice": {Job: job("twice", tandem.JobSucceeded, 3, done("twice", 1, "agent1", 3, 1, 5), done("twice", 2, "agent2", 3, 4, 6)), CreateRevision: 6},
		"stale": {Job: job("stale", tandem.JobSucceeded, 3, done("stale", 1, "agent1", 3, 1, 2)), CreateRevision: 12},
	}
	n.final = map[string]*tandem.Job{"ok": n.records["ok"].Job, "busy": n.records["busy"].Job, "twice": n.records["twice"].Job}
	n.attemptEps = []attemptWrite{{Attempt: "stale-1", Epoch: 3, Revision: 13}}
	n.launches = []launch{
		{Attempt: "ok-1", Job: "ok", Agent: "agent1", Epoch: 3, At: at(1).UnixNano(), Line: 1},
		{Attempt: "ok-1", Job: "ok", Agent: "agent2", Epoch: 3, At: at(1).UnixNano(), Line: 2},
		{Attempt: "ghost-1", Job: "ghost", Agent: "agent1", Epoch: 3, Line: 3},
		{Attempt: "twice-1", Job: "twice", Agent: "agent3", Epoch: 3, At: at(1).UnixNano(), Line: 4},
		{Attempt: "twice-2", Job: "twice", Agent: "agent2", Epoch: 3, At: at(4).UnixNano(), Line: 5},
		{Attempt: "stale-1", Job: "stale", Agent: "agent1", Epoch: 2, At: at(1).UnixNano(), Line: 6},
	}
	t0 := n.rec.Start()
	n.rec.Submit(0, "", "ok", t0, t0.Add(time.Millisecond))
	n.rec.Read(1, "", "ok", n.records["ok"].Job, t0.Add(2*time.Millisecond), t0.Add(3*time.Millisecond))
	n.rec.Read(2, "", "ok", &tandem.Job{State: tandem.JobRunning, Attempts: []tandem.Attempt{{}}}, t0.Add(4*time.Millisecond), t0.Add(5*time.Millisecond))
	n.check()

	for _, want := range []string{
		"I2: job lost, acknowledged to client 0, is not in etcd",
		"job busy is running after",
		"I4: attempt ok-1 was launched twice",
		"I4: attempt ghost-1 of job ghost was launched on agent1 (ledger line 3) but no job record has it",
		"I4: attempt twice-1 of job twice was launched on agent3 (ledger line 4) but tandem recorded it for agent1",
		"I4: job twice: attempt twice-2 started at",
		"I4: job twice: attempt twice-2 was launched at",
		"I1: job stale was created at revision 12 with epoch 3, but the epoch then was 10",
		"I1: attempt stale-1 was recorded at revision 13 with epoch 3, but the epoch then was 10",
		"I1: attempt stale-1 recorded under epoch 3 was delivered to agent1 by an answer of older epoch 2",
		"I1: attempt stale-1 was launched under epoch 2 (ledger line 6), which no leader ever had",
		"linearizability: the history of job ok is not linearizable",
	} {
		found := false
		for _, p := range n.problems {
			found = found || strings.Contains(p, want)
		}
		if !found {
			t.Errorf("no problem reported like %q; got:\n%s", want, strings.Join(n.problems, "\n"))
		}
	}
}

// The epochs and attempt writes come from etcd's history, and when etcd has
// compacted its beginning the check keeps what remains and says so.
func TestNemesisEtcdHistory(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx := context.Background()
	layout := keys.New("default")
	put := func(k, v string) int64 {
		t.Helper()
		r, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	lead := func(id string) int64 {
		t.Helper()
		if _, err := cli.Delete(ctx, layout.Leader()); err != nil {
			t.Fatal(err)
		}
		return put(layout.Leader(), `{"id":"`+id+`"}`)
	}
	jobAt := func(id string, epochs ...int64) int64 {
		j := tandem.Job{ID: id, State: tandem.JobPending}
		for k, ep := range epochs {
			j.Attempts = append(j.Attempts, tandem.Attempt{ID: fmt.Sprintf("%s-%d", id, k+1), Epoch: ep})
		}
		b, _ := json.Marshal(j)
		return put(layout.Job(id), string(b))
	}
	e1 := lead("rm1")
	jobAt("a")
	r1 := jobAt("a", e1)
	e2 := lead("rm2")
	r2 := jobAt("a", e1, e2)
	put("/elsewhere", "x") // the last revision writes nothing of the cluster's
	last := put("/elsewhere", "y")

	n := &nemesis{t: t}
	if err := n.etcdHistory(ctx, cli, layout, last); err != nil {
		t.Fatal(err)
	}
	wantEpochs := []epochRecord{{e1, "rm1"}, {e2, "rm2"}}
	wantWrites := []attemptWrite{{"a-1", e1, r1}, {"a-2", e2, r2}}
	if !slices.Equal(n.epochs, wantEpochs) || !slices.Equal(n.attemptEps, wantWrites) || n.compactedAt != 0 {
		t.Fatalf("got epochs %v, attempt writes %v, compacted at %d; want %v, %v, 0", n.epochs, n.attemptEps, n.compactedAt, wantEpochs, wantWrites)
	}

	// Compact at rm3's election: the epoch in force then is known (from the
	// key as it was), earlier epochs and attempt writes are gone.
	e3 := lead("rm3")
	r3 := jobAt("a", e1, e2, e3)
	if _, err := cli.Compact(ctx, e3); err != nil {
		t.Fatal(err)
	}
	last = put("/elsewhere", "z")
	n = &nemesis{t: t}
	if err := n.etcdHistory(ctx, cli, layout, last); err != nil {
		t.Fatal(err)
	}
	wantEpochs = []epochRecord{{e3, "(in force at compaction)"}}
	wantWrites = []attemptWrite{{"a-3", e3, r3}}
	if !slices.Equal(n.epochs, wantEpochs) || !slices.Equal(n.attemptEps, wantWrites) || n.compactedAt != e3 || len(n.notes) != 1 {
		t.Fatalf("after compaction: got epochs %v, attempt writes %v, compacted at %d, notes %q; want %v, %v, %d and a note",
			n.epochs, n.attemptEps, n.compactedAt, n.notes, wantEpochs, wantWrites, e3)
	}
	if ep, ok := n.epochAt(r3); !ok || ep != e3 {
		t.Fatalf("epoch at %d: %d %t, want %d", r3, ep, ok, e3)
	}
	if _, ok := n.epochAt(r1); ok {
		t.Fatalf("epoch at %d, before the compaction, is unknown; got one", r1)
	}
}
