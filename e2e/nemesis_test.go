package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
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
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/transport"
)

// Knobs of TestNemesis, from the environment.
const (
	envNemesisSeed     = "TANDEM_NEMESIS_SEED"     // reproduce a run's schedule of faults
	envNemesisDuration = "TANDEM_NEMESIS_DURATION" // e.g. 10m: run that long instead of the short mode's faults
	envNemesisOut      = "TANDEM_NEMESIS_OUT"      // where to save the evidence (always, when set), in a directory per mode
	envNemesisLogLevel = "TANDEM_NEMESIS_LOG"      // the processes' log level (default info; debug to trace a problem)
	envNemesisMode     = "TANDEM_NEMESIS_MODE"     // active-standby or active-active: run only that mode
	// envNemesisStrict=1 fails a run in which an owner's lease expired
	// during a fault that must not cause a failover, which is otherwise
	// noted as a starved host (checkMustNot).
	envNemesisStrict = "TANDEM_NEMESIS_STRICT"
)

const (
	nemesisClients = 4
	// quiescenceWithin is how long the checker waits, after the faults,
	// for work to end while none ends: a backlog that keeps draining is
	// waited for (a long run builds one), up to quiescenceCap in all.
	quiescenceWithin = 2 * time.Minute
	quiescenceCap    = 30 * time.Minute
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
	faultKillEtcd   = "kill-etcd" // any member
	// faultKillEtcdLeader kills etcd's raft leader: an election in etcd
	// under the servers' leases and transactions.
	faultKillEtcdLeader = "kill-etcd-leader"
	// Faults that must NOT cause a failover (issue 13; tandem bench
	// failover has them too): the checker fails the run if any shard's
	// owner changed from the fault's start to mustNotWatch after it.
	faultPauseShort = "pause-short" // SIGSTOP of the active (or an owner) for pauseShort, then SIGCONT
	faultStandbyCut = "standby-cut" // one server and the active (or an owner) cut off from each other only, for 2 to 3 s
	faultCPUHog     = "cpu-hog"     // one spinning process per CPU for 2 to 3 s
	// Active-active only. Churn is drawn as one kind and applied as a
	// server joining or leaving, whichever the membership allows.
	faultChurn       = "churn"
	faultJoinServer  = "join-server"
	faultLeaveServer = "leave-server"
	faultDrain       = "drain-server"
)

const (
	pauseShort = 200 * time.Millisecond
	// mustNotWatch is how long after a must-not fault ends the nemesis
	// still counts a change of owner against it (as tandem bench failover
	// does).
	mustNotWatch = 2 * time.Second
	// settleWithin bounds the wait, before a must-not fault, for the
	// earlier faults' after-effects to end; settleQuiet is how long the
	// owners must have stayed the same.
	settleWithin = 20 * time.Second
	settleQuiet  = time.Second
)

// nemesisRetention turns retention on, short enough that most finished jobs
// and workflow runs are removed while the run goes on (issue 14): a job
// goes once it has been finished 5 s and is beyond the 100 most recently
// finished (a few seconds of the load and the schedules), looked for every
// 2 s, so removals run under every fault and clients read removed jobs.
// Tombstones outlive the run by far: a removed job reads as removed (410)
// until the checker is done. tandem's compaction stays off (below) and
// etcd's own comes after 5 minutes: the checker replays etcd's whole
// history, removals included (a longer run notes what it could not check).
var nemesisRetention = []string{"--retention-age", "5s", "--retention-keep", "100",
	"--retention-interval", "2s", "--retention-tombstone-ttl", "1h"}

// nemesisMode is one form of the cluster the suite runs against. Only what
// differs is here; the load, the checks and most faults are shared.
type nemesisMode struct {
	name    string
	servers int // servers laid out
	initial int // how many of them start (0: all); the others may join later
	shards  int // 1: active/standby
	// kinds are the faults the seed draws from; a kind listed n times is
	// drawn n times as often.
	kinds     []string
	minFaults int // the short mode's faults
	extraArgs []string
}

var nemesisModes = []nemesisMode{
	{name: "active-standby", servers: 3, shards: 1, minFaults: 20,
		kinds: []string{faultKillServer, faultStopServer, faultPartition, faultSwitchover, faultKillAgent, faultKillEtcd,
			faultKillEtcdLeader, faultPauseShort, faultStandbyCut, faultCPUHog}},
	// Five servers of which three start: churn adds and removes servers
	// (never fewer than two running), drains move shards away under load,
	// and the server faults aim at shard owners. A short settle time lets a
	// joining server take shards within the run.
	{name: "active-active", servers: 5, initial: 3, shards: 16, minFaults: 24,
		kinds: []string{faultKillServer, faultStopServer, faultPartition, faultChurn, faultChurn, faultChurn,
			faultDrain, faultKillAgent, faultKillEtcd, faultKillEtcdLeader, faultPauseShort, faultStandbyCut, faultCPUHog},
		extraArgs: []string{"--settle", "300ms"}},
}

func (m nemesisMode) sharded() bool { return m.shards > 1 }

// TestNemesis is tandem's randomized fault suite, after Jepsen, in each of
// its modes (active/standby and active-active): clients submit jobs and read
// their states through the failover client while a nemesis crashes, pauses
// and cuts off servers, moves ownership (switchover; or, active-active,
// servers joining, leaving and draining), and crashes agents and etcd
// members (its raft leader among them), one fault at a time; and it pauses
// the active briefly, cuts one server off from the active alone and starves
// the CPUs, faults after which no owner may change (issue 13). Retention is
// on and short (issue 14), so finished jobs are removed under the faults.
// Then everything is healed, and the run is checked: every acknowledged job
// in etcd or removed by retention after it finished, never lost (I2), no
// owner changed by a fault that must not fail over, no attempt launched
// twice and never two attempts of a job at once (I4), every write fenced by
// its shard owner's epoch in etcd's history and every launch under an epoch
// that owned the job's shard (I1), each client's reads consistent with etcd at the
// revisions they report and with its own earlier operations, and every
// job's state as the clients saw it linearizable (porcupine). A failing run
// saves its whole history, a visualisation and the cluster's logs, and names
// the directory.
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
	only := os.Getenv(envNemesisMode)
	var names []string
	for _, m := range nemesisModes {
		names = append(names, m.name)
	}
	if only != "" && !slices.Contains(names, only) {
		t.Fatalf("%s=%q: want one of %s", envNemesisMode, only, strings.Join(names, ", "))
	}
	for _, m := range nemesisModes {
		t.Run(m.name, func(t *testing.T) {
			if only != "" && only != m.name {
				t.Skipf("%s=%s", envNemesisMode, only)
			}
			runNemesis(t, m, seed, duration)
		})
	}
}

func runNemesis(t *testing.T, m nemesisMode, seed uint64, duration time.Duration) {
	t.Logf("nemesis seed %d (%s=%d %s=%s reproduces the schedule of faults: kinds, targets, holds and gaps)",
		seed, envNemesisSeed, seed, envNemesisMode, m.name)
	n := &nemesis{t: t, mode: m, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x6e656d65736973)),
		rec: history.NewRecorder(), ledger: filepath.Join(t.TempDir(), "ledger"), faultsByKind: map[string]int{}}
	// Every kind once first, in an order the seed draws, so that even the
	// short mode has each; then as the weights of m.kinds say.
	for _, k := range m.kinds {
		if !slices.Contains(n.firstPass, k) {
			n.firstPass = append(n.firstPass, k)
		}
	}
	n.rng.Shuffle(len(n.firstPass), func(i, j int) { n.firstPass[i], n.firstPass[j] = n.firstPass[j], n.firstPass[i] })
	if out := os.Getenv(envNemesisOut); out != "" {
		n.out = filepath.Join(out, m.name)
	}
	n.startCluster()
	n.startSchedules()
	defer func() {
		// A run that stopped half-way (t.Fatal) leaves its evidence too.
		if t.Failed() && n.savedIn == "" {
			if dir, err := n.saveEvidence(n.out); err == nil {
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
	load.Add(1)
	go func() {
		defer load.Done()
		n.workflowLoop(loadCtx)
	}()

	began := time.Now()
	for {
		if duration > 0 && time.Since(began) >= duration || duration == 0 && n.applied() >= m.minFaults {
			break
		}
		if len(n.faults) >= 3*m.minFaults && n.applied() < len(n.faults)/2 {
			t.Fatalf("only %d of %d faults could be applied: %+v", n.applied(), len(n.faults), n.faults)
		}
		pl := n.nextPlan()
		n.fault(pl)
		time.Sleep(pl.gap)
	}
	n.healAll()
	stopLoad()
	load.Wait()
	n.pauseSchedules()
	n.ranFor = time.Since(began)
	t.Logf("nemesis done after %s: %d faults %v; load stopped", n.ranFor.Round(time.Millisecond), n.applied(), n.faultsByKind)

	n.waitQuiescence()
	// The workflow runs' last steps queue behind the load's backlog, which
	// the quiescence above has drained.
	n.waitWorkflows()
	n.collect()
	n.check()
	n.report()
}

// nemesis is one run of TestNemesis: the cluster, the load's history, the
// faults, and what the checks found.
type nemesis struct {
	t      *testing.T
	mode   nemesisMode
	seed   uint64
	rng    *rand.Rand // the nemesis's own: only the test goroutine uses it
	c      *local.Cluster
	admin  *client.Client
	etcd   *clientv3.Client // straight to the members, not through any proxy
	rec    *history.Recorder
	ledger string
	out    string // TANDEM_NEMESIS_OUT's directory for this mode ("" unless set)
	ranFor time.Duration
	// members are the servers meant to be running (churn changes them);
	// only the test goroutine uses it.
	members map[int]bool
	// links[i][j] is server i's own way to server j's watch stream and
	// probes (tandem server --peer-addr), so that standby-cut can cut one
	// pair of servers off from each other alone.
	links     [][]*faultnet.Proxy
	firstPass []string // the kinds of the first faults

	mu            sync.Mutex
	acked         []string // acknowledged job IDs, in order of acknowledgement
	ackedBy       map[string]int
	obs           []observation // every recorded operation, with who answered and at which revision
	reads         int           // recorded reads (found, not found, or removed)
	removedReads  int           // of which answered 410 removed
	failedSubmits int
	failedReads   int
	lastErrs      []string // a few of the load's errors, for the summary

	faults       []faultRecord
	faultsByKind map[string]int
	paused       map[*local.Proc]bool // SIGSTOPped right now

	schedules []string // the schedules running alongside (nemesis_schedules_test.go)
	// pausedAt is when the checker asked each schedule to be paused, by
	// the test's clock (pauseSchedules).
	pausedAt  map[string]time.Time
	sched     schedTotals // and what the check found of them
	workflows []string    // the workflow runs started alongside (nemesis_workflows_test.go)
	wf        wfTotals    // and what the check found of them

	// What was collected after quiescence.
	final    map[string]*tandem.Job // the final listing through the API
	records  map[string]jobRecord   // every job key in etcd
	audit    *history.Audit         // etcd's history: owners, fencing, job versions
	launches []launch               // the ledger's start records
	ends     map[string]int64       // the ledger's end records: attempt ID -> unix ns
	// What retention removed, from etcd's history (collectRemovals): the
	// last version of every deleted job and workflow run record, every
	// tombstone, and the union of what etcd holds and what it removed.
	deletedJobs map[string]deletedRecord[tandem.Job]
	deletedRuns map[string]deletedRecord[tandem.Workflow]
	tombs       map[string]map[string]tombstone // kind (kindJob, kindWorkflow) -> ID -> tombstone
	jobs        map[string]*tandem.Job          // every job ever: in etcd now, or its last version before removal
	runs        map[string]*tandem.Workflow     // every workflow run ever, likewise
	// finalRemoved lists the acknowledged jobs that the checker's reads
	// after the run found removed (410).
	finalRemoved map[string]bool
	archive      string // the servers' --archive-dir
	fromArchive  int    // removed records known from the archive only
	totals       totals
	lin          history.Result
	unknown      int                            // reads the view check could not judge (etcd had compacted their revisions)
	cutOff       struct{ fenced, survived int } // tenures of owners paused or cut off: ended by the heal, or not
	problems     []string
	notes        []string
	savedIn      string // where the evidence went
}

type faultRecord struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Role   string `json:"role,omitempty"` // active, standby, or the shards a server owned
	Start  int64  `json:"start_ns"`       // on the history's clock
	End    int64  `json:"end_ns"`
	Note   string `json:"note,omitempty"`
	// Held lists what a server paused or cut off owned as the fault began,
	// and HealedAt is etcd's revision once it was healed: by then, each of
	// those tenures should have ended (its lease ran out).
	Held     []heldShard `json:"held,omitempty"`
	HealedAt int64       `json:"healed_at_revision,omitempty"`
	// A fault that must not cause a failover is judged on etcd's
	// history from revision WatchFrom (before it began, the cluster
	// settled) to WatchTo (mustNotWatch after it ended): no owner key of
	// any shard may go or come in between. Failovers is what the HA
	// history (GET /v1/ha/history) says of the changes (their causes), and
	// Load the host's load averages as the fault began and ended.
	MustNot   bool                   `json:"must_not_fail_over,omitempty"`
	Lenient   string                 `json:"lenient,omitempty"` // why a change of owner would only be noted (docs/HA.md's trade-offs)
	WatchFrom int64                  `json:"watch_from_revision,omitempty"`
	WatchTo   int64                  `json:"watch_to_revision,omitempty"`
	Failovers []tandem.FailoverEvent `json:"failovers,omitempty"`
	Load      string                 `json:"load,omitempty"`
}

type heldShard struct {
	Shard int   `json:"shard"`
	Epoch int64 `json:"epoch"`
}

type jobRecord struct {
	Job            *tandem.Job `json:"job"`
	CreateRevision int64       `json:"create_revision"`
	ModRevision    int64       `json:"mod_revision"`
}

type launch struct {
	Attempt string `json:"attempt"`
	Job     string `json:"job"`
	Agent   string `json:"agent"`
	Shard   int    `json:"shard"` // TANDEM_SHARD
	Epoch   int64  `json:"epoch"` // TANDEM_EPOCH
	At      int64  `json:"at_unix_ns"`
	Line    int    `json:"line"`
}

// observation is one operation of the history with what the answer said
// about itself: the server that gave it, the etcd revision it reflects
// (X-Tandem-Revision; 0 when unknown), and the revision the request asked
// the server's view to have reached (X-Tandem-Min-Revision).
type observation struct {
	Client   int            `json:"client"`
	Kind     history.Kind   `json:"kind"`
	Job      string         `json:"job"`
	Call     int64          `json:"call_ns"`
	Return   int64          `json:"return_ns"`
	Output   history.Output `json:"output"`
	Server   string         `json:"server,omitempty"`
	Revision int64          `json:"revision,omitempty"`
	Asked    int64          `json:"asked,omitempty"`
}

func (o observation) via() string {
	if o.Server == "" {
		return ""
	}
	return fmt.Sprintf("%s at revision %d (asked %d)", o.Server, o.Revision, o.Asked)
}

func (n *nemesis) startCluster() {
	t, m := n.t, n.mode
	cfg := local.Config{Binary: binary, Servers: m.servers, Initial: m.initial, Agents: 3, ExternalEtcd: 3, Proxied: true,
		BasePort: freeBasePort(t, m.servers), DataDir: t.TempDir(), LeaseTTL: time.Second, LogLevel: cmp.Or(os.Getenv(envNemesisLogLevel), "info"),
		// etcd's smallest lease TTL is 1.5 election timeouts: tune raft so 1 s is allowed.
		EtcdArgs: []string{"--heartbeat", "50ms", "--election-timeout", "500ms"},
		// Compaction off: the checker audits etcd's whole history.
		ExtraArgs: slices.Concat([]string{"--agent-timeout", "3s", "--etcd-compact-interval", "0"}, nemesisRetention, m.extraArgs)}
	if m.sharded() {
		cfg.Shards = m.shards
	}
	n.archive = filepath.Join(cfg.DataDir, "archive")
	cfg.ExtraArgs = append(cfg.ExtraArgs, "--archive-dir", n.archive)
	n.peerLinks(&cfg)
	secureCluster(t, &cfg)
	c, err := local.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.c = c
	n.paused = map[*local.Proc]bool{}
	n.ackedBy = map[string]int{}
	n.members = map[int]bool{}
	for i := range cmp.Or(m.initial, m.servers) {
		n.members[i] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.unfreeze() // nothing stays paused or cut off, whatever failed
		c.Stop(10 * time.Second)
	})
	registerSecured(t, c)
	n.admin = newClient(t, c.URLs())
	n.etcd = clusterEtcdClient(t, c)
	if m.sharded() {
		if err := c.WaitOwned(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("cluster up: %d of %d servers owning %d shards, 3 agents, 3 etcd members; data in %s", len(n.members), m.servers, m.shards, cfg.DataDir)
		return
	}
	a := waitActive(t, c)
	t.Logf("cluster up: 3 servers (%s active), 3 agents, 3 etcd members; data in %s", c.Servers[a].ID, cfg.DataDir)
}

// ---- load ----

// jobScript is a job's command: it appends a start record to the ledger,
// outside tandem, works a little, and appends an end record. Lines this
// short, appended with >>, are written whole.
func jobScript(ledger string, tenths int) string {
	q := "'" + ledger + "'"
	return fmt.Sprintf(`echo "start $TANDEM_ATTEMPT_ID $TANDEM_JOB_ID $TANDEM_AGENT_ID $TANDEM_SHARD $TANDEM_EPOCH $(date +%%s%%N)" >> %s; `+
		`sleep 0.%d; echo "end $TANDEM_ATTEMPT_ID $(date +%%s%%N)" >> %s`, q, tenths, q)
}

// serverHeader names, in every answer, the server that gave it.
const serverHeader = "X-Tandem-Server"

// answerTap remembers, for one client's calls (made one at a time), the
// last answer a server gave: who gave it, the revision it reflects and the
// revision the request asked for. It wraps the client's HTTP transport and
// changes nothing.
type answerTap struct {
	next http.RoundTripper

	mu   sync.Mutex
	last observation
}

func (a *answerTap) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := a.next.RoundTrip(r)
	if err == nil {
		rev, _ := strconv.ParseInt(resp.Header.Get(transport.RevisionHeader), 10, 64)
		asked, _ := strconv.ParseInt(r.Header.Get(transport.MinRevisionHeader), 10, 64)
		a.mu.Lock()
		a.last = observation{Server: resp.Header.Get(serverHeader), Revision: rev, Asked: asked}
		a.mu.Unlock()
	}
	return resp, err
}

// take returns the last answer and forgets it.
func (a *answerTap) take() observation {
	a.mu.Lock()
	defer a.mu.Unlock()
	o := a.last
	a.last = observation{}
	return o
}

// newTappedClient is a failover client like newClient's, whose answers tap
// records.
func newTappedClient(t *testing.T, urls []string, attemptTimeout time.Duration) (*client.Client, *answerTap, error) {
	cfg := clientConfig(t, client.Config{Servers: urls, AttemptTimeout: attemptTimeout})
	hc := transport.NewHTTPClient(transport.HTTPOptions{Timeout: client.DefaultTimeout, TLS: cfg.TLS})
	tap := &answerTap{next: hc.Transport}
	hc.Transport = tap
	cfg.HTTPClient = hc
	cl, err := client.New(cfg)
	return cl, tap, err
}

func (n *nemesis) clientLoop(ctx context.Context, id int) {
	urls := n.c.URLs()
	if n.mode.sharded() {
		// Every server answers reads from its own view: spread the clients
		// over the servers that start, so reads come from several views.
		k := id % cmp.Or(n.mode.initial, n.mode.servers)
		urls = slices.Concat(urls[k:], urls[:k])
	}
	var attemptTimeout time.Duration
	if id%2 == 1 {
		// Even clients give up on a silent server after the default attempt
		// timeout (1 s); odd ones wait up to the HTTP timeout (10 s). While
		// a server is paused or cut off, some clients then move on and
		// read from another while others wait it out and stick to it when
		// it wakes up: where a deposed owner answering from a stale view
		// would show.
		attemptTimeout = -1
	}
	cl, tap, err := newTappedClient(n.t, urls, attemptTimeout)
	if err != nil {
		n.t.Error(err)
		return
	}
	rng := rand.New(rand.NewPCG(n.seed, uint64(id)+1))
	for ctx.Err() == nil {
		if job := n.pickJob(rng); job != "" && rng.IntN(3) != 0 {
			n.read(ctx, cl, tap, id, job)
		} else {
			n.submit(ctx, cl, tap, id, rng)
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

func (n *nemesis) submit(ctx context.Context, cl *client.Client, tap *answerTap, id int, rng *rand.Rand) {
	spec := tandem.JobSpec{Name: "nemesis", Command: []string{"sh", "-c", jobScript(n.ledger, 1+rng.IntN(3))},
		MaxAttempts: 5, RetryBackoff: tandem.Duration(100 * time.Millisecond)}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	tap.take()
	call := time.Now()
	j, err := cl.SubmitJob(octx, spec, client.SubmitOptions{})
	ret := time.Now()
	ans := tap.take()
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
	n.observe(id, history.Submit, j.ID, nil, call, ret, ans)
	n.acked = append(n.acked, j.ID)
	n.ackedBy[j.ID] = id
}

func (n *nemesis) read(ctx context.Context, cl *client.Client, tap *answerTap, id int, job string) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	tap.take()
	call := time.Now()
	j, err := cl.GetJob(octx, job)
	ret := time.Now()
	ans := tap.take()
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case err == nil:
		n.observe(id, history.Read, job, j, call, ret, ans)
		n.reads++
	case errors.Is(err, tandem.ErrNotFound):
		n.observe(id, history.Read, job, nil, call, ret, ans)
		n.reads++
	case errors.Is(err, tandem.ErrRemoved):
		n.observeRemoved(id, job, call, ret, ans)
		n.reads++
	case ctx.Err() == nil:
		n.failedReads++ // unknown outcome: recorded as nothing
		n.noteErr(fmt.Sprintf("client %d: read %s: %v", id, job, err))
	}
}

// observe records an operation in the history porcupine checks and, with
// what its answer said about itself (ans), in n.obs. The caller holds n.mu
// (or owns n alone).
func (n *nemesis) observe(client int, kind history.Kind, job string, j *tandem.Job, call, ret time.Time, ans observation) {
	o := ans
	o.Client, o.Kind, o.Job, o.Call, o.Return = client, kind, job, n.rec.Nanos(call), n.rec.Nanos(ret)
	if kind == history.Submit {
		n.rec.Submit(client, o.via(), job, call, ret)
	} else {
		n.rec.Read(client, o.via(), job, j, call, ret)
		o.Output = history.Output{NotFound: true}
		if j != nil {
			o.Output = history.Output{Progress: history.ProgressOf(j)}
		}
	}
	n.obs = append(n.obs, o)
}

// observeRemoved records a read that answered that retention had removed
// the job (410 removed). The state the job finished in is its tombstone's,
// read from etcd after the run: resolveRemoved then adds the read to the
// history porcupine checks. The caller holds n.mu (or owns n alone).
func (n *nemesis) observeRemoved(client int, job string, call, ret time.Time, ans observation) {
	o := ans
	o.Client, o.Kind, o.Job, o.Call, o.Return = client, history.Read, job, n.rec.Nanos(call), n.rec.Nanos(ret)
	o.Output = history.Output{Removed: true, Progress: history.Progress{Stage: history.Terminal}}
	n.obs = append(n.obs, o)
	n.removedReads++
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
// every fault, so that a seed gives the same schedule (kinds, targets, holds,
// gaps) whatever the cluster does in between.
type plan struct {
	kind     string
	atActive bool          // aim a server fault at the active, or at a shard owner (else any server)
	pick     float64       // which of the candidates, in [0, 1)
	hold     float64       // where the hold falls in the kind's range, in [0, 1)
	gap      time.Duration // the pause after the fault is healed
}

func (n *nemesis) nextPlan() plan {
	p := plan{
		kind:     n.mode.kinds[n.rng.IntN(len(n.mode.kinds))],
		atActive: n.rng.IntN(4) != 0,
		pick:     n.rng.Float64(),
		hold:     n.rng.Float64(),
		gap:      300*time.Millisecond + time.Duration(n.rng.Int64N(int64(1200*time.Millisecond))),
	}
	if k := len(n.faults); k < len(n.firstPass) {
		p.kind = n.firstPass[k]
	}
	return p
}

// holdFor sleeps for the plan's point in [lo, hi].
func (p plan) holdFor(lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(p.hold*float64(hi-lo)))
}

// choose returns the plan's pick among candidates, which must not be empty.
func (p plan) choose(candidates []int) int { return candidates[int(p.pick*float64(len(candidates)))] }

var errNoTarget = errors.New("no server to aim at")

// serverTarget picks the server to fault. With one shard: the active most
// of the time (that is where failover happens), sometimes a standby. With
// several: a server that owns shards most of the time, else any running
// server.
func (n *nemesis) serverTarget(p plan) (int, string, error) {
	if n.mode.sharded() {
		return n.ownerTarget(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := n.c.Active(ctx)
	if a >= 0 && p.atActive {
		return a, "active", nil
	}
	var others []int
	for i := range n.c.Servers {
		if i != a {
			others = append(others, i)
		}
	}
	if a < 0 {
		return p.choose(others), "no active known", nil
	}
	return p.choose(others), "standby", nil
}

// ownerTarget picks, among the running servers, one that owns shards if
// the plan aims at an owner and there is one, else any; the role says how
// many shards it owned.
func (n *nemesis) ownerTarget(p plan) (int, string, error) {
	live := n.liveServers()
	var owners []int
	owned := map[int][]int{}
	for _, i := range live {
		if owned[i] = n.owned(i); len(owned[i]) > 0 {
			owners = append(owners, i)
		}
	}
	candidates := live
	if p.atActive && len(owners) > 0 {
		candidates = owners
	}
	if len(candidates) == 0 {
		return -1, "", errNoTarget
	}
	i := p.choose(candidates)
	return i, ownerRole(owned[i]), nil
}

// owned asks server i which shards it owns (none if it does not answer).
func (n *nemesis) owned(i int) []int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := n.c.Status(ctx, i)
	if err != nil {
		return nil
	}
	return st.Owned
}

func ownerRole(owned []int) string { return fmt.Sprintf("owner of %d shards %v", len(owned), owned) }

// fault applies one fault, holds it and heals it, and waits until what it
// hit is healthy again.
func (n *nemesis) fault(pl plan) {
	t, c := n.t, n.c
	f := faultRecord{Kind: pl.kind, Start: n.rec.Nanos(time.Now())}
	var heal *local.Proc // to wait for, healthy, afterwards
	var err error
	switch pl.kind {
	case faultKillServer, faultStopServer, faultPartition:
		var i int
		if i, f.Role, err = n.serverTarget(pl); err != nil {
			break
		}
		p := c.Servers[i]
		f.Target, heal = p.ID, p
		if pl.kind != faultKillServer {
			f.Held = n.heldBy(i)
		}
		switch pl.kind {
		case faultKillServer:
			if err = p.Kill(); err == nil {
				pl.holdFor(time.Second, 3*time.Second)
				err = p.Start()
			}
		case faultStopServer:
			if err = n.pause(p); err == nil {
				// Longer than the 1 s lease: it must come back fenced.
				pl.holdFor(2500*time.Millisecond, 4*time.Second)
				if err = n.resume(p); err == nil {
					f.HealedAt = n.etcdRevision()
				}
			}
		case faultPartition:
			if err = c.Partition(i); err == nil {
				pl.holdFor(2500*time.Millisecond, 4*time.Second)
				if err = c.Heal(i); err == nil {
					f.HealedAt = n.etcdRevision()
				}
			}
		}
	case faultSwitchover:
		err = n.switchover(pl, &f)
	case faultChurn:
		heal, err = n.churn(pl, &f)
	case faultDrain:
		heal, err = n.drain(pl, &f)
	case faultKillAgent:
		p := c.Agents[pl.choose([]int{0, 1, 2})]
		f.Target, heal = p.ID, p
		if err = p.Kill(); err == nil {
			pl.holdFor(500*time.Millisecond, 2*time.Second)
			err = p.Start()
		}
	case faultKillEtcd, faultKillEtcdLeader:
		i := pl.choose([]int{0, 1, 2})
		if pl.kind == faultKillEtcdLeader {
			if i, err = n.etcdLeader(); err != nil {
				break
			}
			f.Role = "etcd leader"
		}
		p := c.Etcd[i]
		f.Target, heal = p.ID, p
		if err = p.Kill(); err == nil {
			pl.holdFor(time.Second, 3*time.Second)
			err = p.Start()
		}
	case faultPauseShort, faultStandbyCut, faultCPUHog:
		heal, err = n.mustNot(pl, &f)
	}
	f.End = n.rec.Nanos(time.Now())
	if err != nil {
		f.Note = strings.TrimSpace(f.Note + " not applied: " + err.Error())
		t.Logf("fault %s %s: %v", f.Kind, f.Target, err)
	} else {
		n.faultsByKind[f.Kind]++
	}
	n.mu.Lock()
	n.faults = append(n.faults, f)
	n.mu.Unlock()
	if heal != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := heal.WaitHealthy(ctx); err != nil {
			t.Fatalf("after %s of %s: %v", f.Kind, heal.ID, err)
		}
	}
}

// heldBy asks server i which shards it owns, with their epochs (as its
// view has them).
func (n *nemesis) heldBy(i int) []heldShard {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	shards, err := n.c.Shards(ctx, i)
	if err != nil {
		return nil
	}
	var out []heldShard
	for _, s := range shards {
		if s.Owner == n.c.Servers[i].ID {
			out = append(out, heldShard{Shard: s.Shard, Epoch: s.Epoch})
		}
	}
	return out
}

// etcdRevision returns etcd's current revision (0 if etcd does not answer).
func (n *nemesis) etcdRevision() int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A key in the cluster's prefix: a locked-down etcd lets it read nothing else.
	resp, err := n.etcd.Get(ctx, keys.New("default").Prefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0
	}
	return resp.Header.Revision
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

// minMembers is the fewest servers churn leaves running.
const minMembers = 2

// churn changes the membership by one server: a running server leaves
// gracefully (SIGTERM: it hands its shards off as it goes) or a stopped one
// joins, whichever the plan draws and the membership allows (never fewer
// than minMembers running). It returns the server to wait for, healthy,
// when one joined.
func (n *nemesis) churn(pl plan, f *faultRecord) (*local.Proc, error) {
	var running, stopped []int
	for i := range n.c.Servers {
		if n.members[i] {
			running = append(running, i)
		} else {
			stopped = append(stopped, i)
		}
	}
	if len(running) > minMembers && (len(stopped) == 0 || pl.hold < 0.5) {
		i := pl.choose(running)
		f.Kind, f.Target, f.Role = faultLeaveServer, n.c.Servers[i].ID, ownerRole(n.owned(i))
		if err := n.c.StopServer(i, 10*time.Second); err != nil {
			return nil, err
		}
		delete(n.members, i)
		f.Note = fmt.Sprintf("%d servers running", len(n.members))
		return nil, nil
	}
	i := pl.choose(stopped)
	f.Kind, f.Target = faultJoinServer, n.c.Servers[i].ID
	if err := n.c.StartServer(i); err != nil {
		return nil, err
	}
	n.members[i] = true
	f.Note = fmt.Sprintf("%d servers running", len(n.members))
	return n.c.Servers[i], nil
}

// liveServers lists the servers whose process runs.
func (n *nemesis) liveServers() []int {
	var out []int
	for i := range n.c.Servers {
		if n.c.PID(i) != 0 {
			out = append(out, i)
		}
	}
	return out
}

// drain makes a server (an owner, mostly) give up its shards under load,
// holds, and undrains it.
func (n *nemesis) drain(pl plan, f *faultRecord) (*local.Proc, error) {
	if len(n.liveServers()) < minMembers {
		return nil, errors.New("no other server to take the shards")
	}
	i, role, err := n.ownerTarget(pl)
	if err != nil {
		return nil, err
	}
	p := n.c.Servers[i]
	f.Target, f.Role = p.ID, role
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	_, err = n.admin.Drain(ctx, p.URL, tandem.DrainRequest{Drain: true, WaitMS: 10_000})
	switch {
	case err == nil:
		f.Note = fmt.Sprintf("owned nothing after %s", time.Since(began).Round(time.Millisecond))
	case tandem.ErrorCode(err) == tandem.EUNAVAILABLE:
		f.Note = fmt.Sprintf("drain unfinished after %s: %v", time.Since(began).Round(time.Millisecond), err)
		err = nil
	}
	if err == nil {
		pl.holdFor(time.Second, 3*time.Second)
	}
	// Undrain whatever the drain's answer: it may have begun.
	if uerr := n.undrain(p); uerr != nil {
		n.t.Fatalf("undrain %s: %v", p.ID, uerr)
	}
	return p, err
}

func (n *nemesis) undrain(p *local.Proc) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		_, err := n.admin.Drain(ctx, p.URL, tandem.DrainRequest{Drain: false})
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
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
// that should run running and healthy, and the shards (or the one) owned.
func (n *nemesis) healAll() {
	n.healAllQuietly()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, p := range n.wanted() {
		if err := p.WaitHealthy(ctx); err != nil {
			n.t.Fatalf("healing the cluster: %v", err)
		}
	}
	var err error
	if n.mode.sharded() {
		err = n.c.WaitOwned(ctx)
	} else {
		_, err = n.c.WaitActive(ctx)
	}
	if err != nil {
		n.t.Fatalf("healing the cluster: %v", err)
	}
}

func (n *nemesis) healAllQuietly() {
	n.unfreeze()
	for _, p := range n.wanted() {
		if p.PID() == 0 {
			if err := p.Start(); err != nil {
				n.t.Logf("restart %s: %v", p.ID, err)
			}
		}
	}
}

// unfreeze heals every partition and cut link and resumes every paused
// process.
func (n *nemesis) unfreeze() {
	for i := range n.c.Servers {
		_ = n.c.Heal(i)
	}
	for _, row := range n.links {
		for _, l := range row {
			if l != nil {
				l.Unblock()
			}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for p := range n.paused {
		_ = p.Signal(syscall.SIGCONT)
		delete(n.paused, p)
	}
}

// wanted lists the processes that should be running: every etcd member and
// agent, and the servers that are members.
func (n *nemesis) wanted() []*local.Proc {
	out := slices.Clone(n.c.Etcd)
	for i, s := range n.c.Servers {
		if n.members[i] {
			out = append(out, s)
		}
	}
	return append(out, n.c.Agents...)
}

func (n *nemesis) procs() []*local.Proc {
	return slices.Concat(n.c.Etcd, n.c.Servers, n.c.Agents)
}
