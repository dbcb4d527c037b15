package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
)

// Faults RunFailover can inject.
const (
	FaultKill       = "kill"       // kill -9 of the active server process
	FaultStop       = "stop"       // SIGSTOP of the active for 3 x the lease TTL, then SIGCONT
	FaultPartition  = "partition"  // cut the active off from etcd and its peers, then heal
	FaultSwitchover = "switchover" // tandem admin failover to a standby
	// FaultEtcdLeaderKill is kill -9 of the process holding etcd's raft
	// leader while the active lives elsewhere: a standby server with
	// embedded etcd, an etcd process with external etcd. Writes stall
	// until etcd elects a new leader; the active must stay the active.
	FaultEtcdLeaderKill = "etcd-leader-kill"
	// FaultAgentKill is kill -9 of the agent running a long job: measured
	// until the job's retried attempt runs on the other agent.
	FaultAgentKill = "agent-kill"

	// Faults that must NOT cause a failover (issue 13): each is held for a
	// while, then the trial watches for a change of active.

	// FaultStandbyCut cuts one standby off from the active only (its one
	// link to the active goes silent; etcd and the other standby still
	// reach both) for standbyCutFor.
	FaultStandbyCut = "standby-cut"
	// FaultPause200 pauses the active (SIGSTOP) for 200 ms.
	FaultPause200 = "pause-200ms"
	// FaultCPUHog runs one busy process per CPU for cpuHogFor.
	FaultCPUHog = "cpu-hog"
)

// Faults lists the faults RunFailover knows.
var Faults = []string{FaultKill, FaultStop, FaultPartition, FaultSwitchover, FaultAgentKill, FaultEtcdLeaderKill, FaultStandbyCut, FaultPause200, FaultCPUHog}

// mustNotFailOver reports whether fault must leave the active in place.
func mustNotFailOver(fault string) bool {
	return fault == FaultStandbyCut || fault == FaultPause200 || fault == FaultCPUHog || fault == FaultEtcdLeaderKill
}

const (
	standbyCutFor = 3 * time.Second // six suspicion periods, by default
	pauseShort    = 200 * time.Millisecond
	cpuHogFor     = 5 * time.Second
	// noFailoverWatch is how long after a must-not fault ends a trial
	// still watches for a change of active.
	noFailoverWatch = 2 * time.Second
)

// FailoverConfig configures RunFailover.
type FailoverConfig struct {
	Binary   string        // the tandem binary to run servers and agents with
	Fault    string        // kill, stop, partition or switchover
	Trials   int           // faults to inject, one at a time
	LeaseTTL time.Duration // the servers' lease TTL
	Etcd     string        // "embedded" (a member in every server) or "external" (separate etcd processes)
	Clients  int           // concurrent submitting clients
	Quiet    time.Duration // quiet time between faults
	DataDir  string        // where the cluster keeps data and logs ("" for a temporary directory)
	BasePort int           // first port of the cluster's port range (it uses 1000)
	Out      io.Writer     // progress and the result table
	// ServerArgs are extra flags for every server (to measure, say, what
	// --etcd-leader-away=false costs).
	ServerArgs []string
	// links, for standby-cut, are every server's own ways to the others.
	links *peerLinkSet
	// Secure runs the cluster with everything docs/SECURITY.md describes
	// (local.Config.Secure, in DataDir/secure): TLS between servers and
	// agents, etcd locked down, tokens enforced; the bench's clients, admin client
	// and etcd client use the cluster's certificates and management token.
	Secure bool
}

func (c *FailoverConfig) validate() error {
	known := false
	for _, f := range Faults {
		known = known || c.Fault == f
	}
	switch {
	case !known:
		return fmt.Errorf("unknown fault %q: use one of %s", c.Fault, strings.Join(Faults, ", "))
	case c.Etcd != "embedded" && c.Etcd != "external":
		return fmt.Errorf("etcd must be embedded or external, not %q", c.Etcd)
	case c.Trials < 1 || c.Clients < 1:
		return errors.New("trials and clients must be at least 1")
	case c.LeaseTTL < time.Second || c.LeaseTTL%time.Second != 0:
		return fmt.Errorf("lease TTL %s: use whole seconds, at least 1s", c.LeaseTTL)
	case c.Quiet < 0:
		return errors.New("quiet time must not be negative")
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return nil
}

// Trial is one injected fault and what it cost.
type Trial struct {
	N        int    `json:"n"`
	From     string `json:"from"` // the active hit by the fault
	To       string `json:"to"`   // the server that took over
	OldEpoch int64  `json:"old_epoch"`
	NewEpoch int64  `json:"new_epoch"`
	Cause    string `json:"cause"` // as the new active recorded it
	// UnavailabilityS is the time from the fault to the first submission
	// acknowledged by the new active, through the failover client.
	UnavailabilityS float64 `json:"unavailability_s"`
	// WaitS, for a failover, is the longest any one submission waited
	// that was under way at some time from the fault to the first
	// acknowledgement by the new active: what the unluckiest request saw,
	// whatever the load's pace.
	WaitS *float64 `json:"wait_s,omitempty"`
	// GapS, for a failover, is the time between the last submission the
	// old active acknowledged and the first the new one did: how long no
	// client got an answer. For a switchover it is the interruption
	// itself, where UnavailabilityS also counts the time the old active
	// kept serving while the hand-off was prepared. The load's own gaps
	// between acknowledgements bound it from below.
	GapS        *float64 `json:"gap_s,omitempty"`
	DetectionS  *float64 `json:"detection_s,omitempty"`
	ElectionS   *float64 `json:"election_s,omitempty"`
	TransitionS *float64 `json:"transition_s,omitempty"`
	// EtcdLeaderColocated says whether the etcd raft leader lived in the
	// faulted server's process (embedded etcd only).
	EtcdLeaderColocated bool `json:"etcd_leader_colocated"`
	// OldActiveFenced, for stop and partition, says whether the old active
	// reported standby once it was back.
	OldActiveFenced *bool `json:"old_active_fenced,omitempty"`
	// Detection is how the old active was found out (a tandem.Detect*
	// value, with cause crash-detected).
	Detection string `json:"detection,omitempty"`
	// Failovers, for a fault that must not cause one, counts the changes
	// of active from the fault to noFailoverWatch after it ended.
	Failovers int `json:"failovers"`
	// EtcdLeader, for etcd-leader-kill, names the etcd member killed;
	// ElectionS is then the time until another member led etcd.
	EtcdLeader string `json:"etcd_leader,omitempty"`
	// Votes, for standby-cut, counts the cut-off standby's votes against
	// the active (it should vote; one vote is no majority, and the active
	// answers it).
	Votes int `json:"votes,omitempty"`
}

// FailoverResult is what RunFailover measured; it is also the JSON output.
type FailoverResult struct {
	Fault  string `json:"fault"`
	Trials int    `json:"trials"`
	// Secure says the cluster ran with TLS, etcd locked down and tokens
	// (FailoverConfig.Secure).
	Secure          bool    `json:"secure"`
	LeaseTTLS       float64 `json:"lease_ttl_s"`
	Etcd            string  `json:"etcd"`
	Clients         int     `json:"clients"`
	EtcdTxnP50S     float64 `json:"etcd_txn_p50_s"`
	UnavailabilityS Summary `json:"unavailability_s"`
	// FloorRatio is the unavailability's p50 and p99 over EtcdTxnP50S:
	// how many fenced etcd transactions a failover costs the clients,
	// how close to the floor it is.
	FloorRatio struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"unavailability_over_txn"`
	// GapS summarises the trials' GapS; LoadGapS is the longest time
	// between two acknowledgements in quiet time, the load's own floor.
	GapS     Summary `json:"gap_s"`
	LoadGapS float64 `json:"load_gap_s"`
	// WaitS summarises the trials' WaitS; LoadWaitS is the longest a
	// submission waited in quiet time.
	WaitS       Summary `json:"wait_s"`
	LoadWaitS   float64 `json:"load_wait_s"`
	DetectionS  Summary `json:"detection_s"`
	ElectionS   Summary `json:"election_s"`
	TransitionS Summary `json:"transition_s"`
	Colocated   int     `json:"etcd_leader_colocated_trials"`
	NotFenced   int     `json:"old_active_not_fenced"`
	// Failovers counts the changes of active in the trials of a fault that
	// must not cause any (standby-cut, pause-200ms, cpu-hog); for those,
	// UnavailabilityS is the longest stall between acknowledgements.
	Failovers int `json:"failovers_must_not"`
	// Detections counts the trials by how the old active was found out.
	Detections   map[string]int `json:"detections,omitempty"`
	Acknowledged int            `json:"acknowledged"`
	Lost         int            `json:"lost"`
	Unfinished   int            `json:"unfinished"` // acknowledged jobs not terminal when the run ended
	Launches     int            `json:"launches"`
	Duplicates   int            `json:"duplicate_launches"`
	Details      []Trial        `json:"trial_details"`
	StartedAt    time.Time      `json:"started_at"`
}

// ack is one acknowledged submission.
type ack struct {
	at    time.Time
	sent  time.Time // when the submission was sent (zero: unknown)
	id    string
	epoch int64
}

// load submits short jobs from several clients until stopped, recording
// every acknowledgement.
type load struct {
	mu    sync.Mutex
	acks  []ack
	errs  int
	first []string      // the first few client errors, to show
	newAt chan struct{} // closed and replaced on every ack
	// every is how long each client waits after an acknowledgement before
	// its next submission (0: 50 ms).
	every time.Duration
}

func (l *load) record(a ack) {
	l.mu.Lock()
	l.acks = append(l.acks, a)
	close(l.newAt)
	l.newAt = make(chan struct{})
	l.mu.Unlock()
}

// firstAfter waits for the first ack at or after t by an epoch above epoch.
func (l *load) firstAfter(ctx context.Context, t time.Time, epoch int64) (ack, error) {
	for {
		l.mu.Lock()
		for _, a := range l.acks {
			if !a.at.Before(t) && a.epoch > epoch {
				l.mu.Unlock()
				return a, nil
			}
		}
		ch := l.newAt
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ack{}, fmt.Errorf("no submission acknowledged by a new active: %w", ctx.Err())
		}
	}
}

func (l *load) run(ctx context.Context, cl *client.Client, spec tandem.JobSpec, n int) {
	for i := 0; ctx.Err() == nil; i++ {
		s := spec
		s.Name = fmt.Sprintf("bench-%d-%d", n, i)
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		sent := time.Now()
		j, err := cl.SubmitJob(sctx, s, client.SubmitOptions{})
		cancel()
		if err != nil {
			l.mu.Lock()
			l.errs++
			if len(l.first) < 3 {
				l.first = append(l.first, err.Error())
			}
			l.mu.Unlock()
			continue
		}
		l.record(ack{at: time.Now(), sent: sent, id: j.ID, epoch: j.Epoch})
		every := l.every
		if every == 0 {
			every = 50 * time.Millisecond
		}
		select {
		case <-ctx.Done():
		case <-time.After(every):
		}
	}
}

// RunFailover starts a real local cluster (3 servers, 2 agents, every one
// its own process), keeps a steady load of submissions of short jobs, and
// injects cfg.Fault cfg.Trials times with quiet time between. It measures
// each failover's phases as the servers recorded them and the
// unavailability the clients saw, and checks afterwards that no
// acknowledged job was lost and no attempt launched twice. The result says;
// an error means the run itself could not be made.
func RunFailover(ctx context.Context, cfg FailoverConfig) (*FailoverResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir := cfg.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "tandem-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	cfg.DataDir = dir // the trials find the launch ledger there
	// Proxies only where the fault needs them: behind a proxy, a killed
	// server's port answers instead of refusing, which would hide the
	// crash from the standbys' probes.
	lc := local.Config{Binary: cfg.Binary, Servers: 3, Agents: 2, BasePort: cfg.BasePort, DataDir: dir, Cluster: benchCluster,
		LeaseTTL: cfg.LeaseTTL, Proxied: cfg.Fault == FaultPartition, LogLevel: "info"}
	if cfg.Fault == FaultStandbyCut {
		links, err := peerLinks(&lc)
		if err != nil {
			return nil, err
		}
		defer links.close()
		cfg.links = links
	}
	if cfg.Secure {
		lc.Secure = filepath.Join(dir, secureDir)
	}
	if cfg.LeaseTTL < 2*time.Second {
		// etcd's smallest lease TTL is 1.5 election timeouts: tune raft so 1 s is allowed.
		tune := []string{"--etcd-heartbeat", "50ms", "--etcd-election-timeout", "500ms"}
		if cfg.Etcd == "embedded" {
			lc.ExtraArgs = tune
		} else {
			lc.EtcdArgs = []string{"--heartbeat", "50ms", "--election-timeout", "500ms"}
		}
	}
	if cfg.Etcd == "external" {
		lc.ExternalEtcd = 3
	}
	lc.ExtraArgs = append(lc.ExtraArgs, cfg.ServerArgs...)
	c, err := local.New(lc)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Out, "starting 3 servers (%s etcd) and 2 agents on loopback, %s, lease TTL %s, data in %s\n",
		cfg.Etcd, securityLabel(cfg.Secure), cfg.LeaseTTL, dir)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = c.Start(sctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer c.Stop(10 * time.Second)
	if _, err := c.WaitActive(ctx); err != nil {
		return nil, err
	}
	cli, err := clusterEtcd(c, c.EtcdEndpoints()...)
	if err != nil {
		return nil, err
	}
	defer cli.Close()

	res := &FailoverResult{Fault: cfg.Fault, Trials: cfg.Trials, Secure: cfg.Secure, LeaseTTLS: cfg.LeaseTTL.Seconds(), Etcd: cfg.Etcd,
		Clients: cfg.Clients, StartedAt: time.Now().UTC()}
	base, err := FencedTxnLatency(ctx, cli, benchPrefix("failover"), 200, 512)
	if err != nil {
		return nil, fmt.Errorf("etcd baseline: %w", err)
	}
	res.EtcdTxnP50S = Summarize(base).P50

	ledger := filepath.Join(dir, "launches")
	spec := tandem.JobSpec{Command: []string{"sh", "-c", `echo "$TANDEM_ATTEMPT_ID" >> ` + ledger}, MaxAttempts: 3,
		RetryBackoff: tandem.Duration(100 * time.Millisecond)}
	ld := &load{newAt: make(chan struct{})}
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := 0; i < cfg.Clients; i++ {
		cl, err := clusterClient(c, c.URLs())
		if err != nil {
			stopLoad()
			return nil, err
		}
		wg.Add(1)
		go func() { defer wg.Done(); ld.run(lctx, cl, spec, i) }()
	}
	defer func() { stopLoad(); wg.Wait() }()
	admin, err := clusterClient(c, c.URLs())
	if err != nil {
		return nil, err
	}

	fmt.Fprintf(cfg.Out, "injecting %d x %s, %s apart, under load from %d clients\n", cfg.Trials, cfg.Fault, cfg.Quiet, cfg.Clients)
	for n := 1; n <= cfg.Trials; n++ {
		quiet := time.Now()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(cfg.Quiet):
		}
		// The load's own floor: the last half of the quiet time, once the
		// previous trial's backlog has drained.
		res.LoadGapS = max(res.LoadGapS, ld.longestGap(quiet.Add(cfg.Quiet/2), time.Now()).Seconds())
		res.LoadWaitS = max(res.LoadWaitS, ld.longestWait(quiet.Add(cfg.Quiet/2), time.Now()).Seconds())
		run := trial
		switch {
		case cfg.Fault == FaultAgentKill:
			run = agentTrial
		case cfg.Fault == FaultEtcdLeaderKill:
			run = etcdLeaderTrial
		case mustNotFailOver(cfg.Fault):
			run = noFailoverTrial
		}
		tr, err := run(ctx, cfg, c, cli, admin, ld, n)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", n, err)
		}
		res.Details = append(res.Details, *tr)
		switch {
		case cfg.Fault == FaultEtcdLeaderKill:
			fmt.Fprintf(cfg.Out, "trial %d: etcd leader %s killed (active %s, epoch %d): new etcd leader after %s, %d failovers, longest client stall %.0f ms\n",
				n, tr.EtcdLeader, tr.From, tr.OldEpoch, msOf(tr.ElectionS), tr.Failovers, tr.UnavailabilityS*1000)
		case mustNotFailOver(cfg.Fault):
			fmt.Fprintf(cfg.Out, "trial %d: %s on active %s (epoch %d): %d failovers, longest client stall %.0f ms%s\n",
				n, cfg.Fault, tr.From, tr.OldEpoch, tr.Failovers, tr.UnavailabilityS*1000, voteNote(cfg.Fault, tr))
		case cfg.Fault == FaultAgentKill:
			fmt.Fprintf(cfg.Out, "trial %d: agent %s -> %s (%s): retry running after %.0f ms; attempt lost %s, rescheduled %s, launched %s\n",
				n, tr.From, tr.To, tr.Cause, tr.UnavailabilityS*1000, msOf(tr.DetectionS), msOf(tr.ElectionS), msOf(tr.TransitionS))
		default:
			fmt.Fprintf(cfg.Out, "trial %d: %s -> %s (epoch %d -> %d, %s): unavailable %.0f ms, gap %s, longest wait %s; detection %s, election %s, transition %s%s\n",
				n, tr.From, tr.To, tr.OldEpoch, tr.NewEpoch, causeBy(tr), tr.UnavailabilityS*1000, msOf(tr.GapS), msOf(tr.WaitS),
				msOf(tr.DetectionS), msOf(tr.ElectionS), msOf(tr.TransitionS), trialNotes(tr))
		}
	}
	stopLoad()
	wg.Wait()

	// Quiescence: every acknowledged job ends; then the checks.
	ld.mu.Lock()
	acks := append([]ack(nil), ld.acks...)
	ld.mu.Unlock()
	res.Acknowledged = len(acks)
	fmt.Fprintf(cfg.Out, "load stopped: %d submissions acknowledged (%d client errors); waiting for every job to finish\n", len(acks), ld.errs)
	for _, e := range ld.first {
		fmt.Fprintf(cfg.Out, "  client error: %s\n", e)
	}
	jobs, err := waitQuiet(ctx, admin, acks, 90*time.Second)
	if err != nil {
		return nil, err
	}
	for _, a := range acks {
		j, ok := jobs[a.id]
		switch {
		case !ok:
			res.Lost++
		case !j.State.Terminal():
			res.Unfinished++
		}
	}
	res.Launches, res.Duplicates, err = countLaunches(ledger)
	if err != nil {
		return nil, err
	}
	var unavail, gap, wait, det, elec, trans []time.Duration
	for _, t := range res.Details {
		unavail = append(unavail, secsDur(t.UnavailabilityS))
		for _, x := range []struct {
			p   *float64
			out *[]time.Duration
		}{{t.GapS, &gap}, {t.WaitS, &wait}, {t.DetectionS, &det}, {t.ElectionS, &elec}, {t.TransitionS, &trans}} {
			if x.p != nil {
				*x.out = append(*x.out, secsDur(*x.p))
			}
		}
		if t.EtcdLeaderColocated {
			res.Colocated++
		}
		if t.OldActiveFenced != nil && !*t.OldActiveFenced {
			res.NotFenced++
		}
		res.Failovers += t.Failovers
		if t.Detection != "" || t.Cause != "" && !mustNotFailOver(cfg.Fault) && cfg.Fault != FaultAgentKill {
			if res.Detections == nil {
				res.Detections = make(map[string]int)
			}
			res.Detections[orCause(t)]++
		}
	}
	res.UnavailabilityS, res.DetectionS = Summarize(unavail), Summarize(det)
	if res.EtcdTxnP50S > 0 {
		res.FloorRatio.P50, res.FloorRatio.P99 = res.UnavailabilityS.P50/res.EtcdTxnP50S, res.UnavailabilityS.P99/res.EtcdTxnP50S
	}
	res.ElectionS, res.TransitionS, res.GapS, res.WaitS = Summarize(elec), Summarize(trans), Summarize(gap), Summarize(wait)
	res.Print(cfg.Out)
	return res, nil
}

// trial injects one fault and measures it.
func trial(ctx context.Context, cfg FailoverConfig, c *local.Cluster, cli *clientv3.Client, admin *client.Client, ld *load, n int) (*Trial, error) {
	a, err := c.WaitActive(ctx)
	if err != nil {
		return nil, err
	}
	st, err := c.Status(ctx, a)
	if err != nil {
		return nil, err
	}
	tr := &Trial{N: n, From: st.ID, OldEpoch: st.Epoch}
	if cfg.Etcd == "embedded" {
		tr.EtcdLeaderColocated = etcdLeaderIs(ctx, cli, st.ID)
	}
	ttl3 := 3 * cfg.LeaseTTL
	var back chan struct{} // closed once a stopped or partitioned active is back
	t0 := time.Now()
	switch cfg.Fault {
	case FaultKill:
		err = c.Kill(a)
	case FaultStop:
		err = c.Signal(a, syscall.SIGSTOP)
		back = after(ttl3, func() { _ = c.Signal(a, syscall.SIGCONT) })
	case FaultPartition:
		err = c.Partition(a)
		back = after(ttl3, func() { _ = c.Heal(a) })
	case FaultSwitchover:
		to := c.Servers[(a+1)%len(c.Servers)].ID
		_, err = admin.Failover(ctx, c.Servers[a].URL, tandem.HandoffRequest{From: st.ID, To: to})
	}
	if err != nil {
		return nil, fmt.Errorf("inject %s: %w", cfg.Fault, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	first, err := ld.firstAfter(wctx, t0, tr.OldEpoch)
	cancel()
	if err != nil {
		return nil, err
	}
	tr.UnavailabilityS = first.at.Sub(t0).Seconds()
	if w := ld.longestWait(t0, first.at); w > 0 {
		ws := w.Seconds()
		tr.WaitS = &ws
	}
	if last, ok := ld.lastOf(tr.OldEpoch, first.at); ok {
		g := first.at.Sub(last).Seconds()
		tr.GapS = &g
	}
	ev, err := eventAfter(ctx, admin, tr.OldEpoch)
	if err != nil {
		return nil, err
	}
	tr.To, tr.NewEpoch, tr.Cause, tr.Detection = ev.ActiveID, ev.Epoch, ev.Cause, ev.Detection
	tr.DetectionS, tr.ElectionS, tr.TransitionS = ev.DetectionS, ev.ElectionS, ev.TransitionS
	switch {
	case back != nil:
		<-back
		fenced := waitState(ctx, c, a, tandem.StateStandby, 15*time.Second)
		tr.OldActiveFenced = &fenced
	case cfg.Fault == FaultKill:
		if err := c.StartServer(a); err != nil {
			return nil, err
		}
		hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := c.WaitHealthy(hctx, a)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	return tr, nil
}

// after runs fn once d has passed and closes the returned channel then.
func after(d time.Duration, fn func()) chan struct{} {
	ch := make(chan struct{})
	time.AfterFunc(d, func() { fn(); close(ch) })
	return ch
}

// etcdLeaderIs reports whether the etcd raft leader is the member named name.
func etcdLeaderIs(ctx context.Context, cli *clientv3.Client, name string) bool {
	members, err := cli.MemberList(ctx)
	if err != nil {
		return false
	}
	for _, ep := range cli.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err != nil {
			continue
		}
		for _, m := range members.Members {
			if m.ID == st.Leader {
				return m.Name == name
			}
		}
	}
	return false
}

// eventAfter waits for the failover event of the first epoch after epoch.
func eventAfter(ctx context.Context, admin *client.Client, epoch int64) (tandem.FailoverEvent, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		events, err := admin.History(hctx)
		cancel()
		if err == nil {
			for _, e := range events {
				if e.Epoch > epoch {
					return e, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return tandem.FailoverEvent{}, fmt.Errorf("no failover event after epoch %d (last error: %v)", epoch, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitState waits for server i to report state; it reports whether it did.
func waitState(ctx context.Context, c *local.Cluster, i int, state tandem.HAState, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.Status(sctx, i)
		cancel()
		if err == nil && st.State == state {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// waitQuiet waits until every acknowledged job has ended (or within ends)
// and returns every job in the cluster.
func waitQuiet(ctx context.Context, admin *client.Client, acks []ack, within time.Duration) (map[string]*tandem.Job, error) {
	deadline := time.Now().Add(within)
	for {
		jobs, err := allJobs(ctx, admin)
		if err != nil {
			return nil, err
		}
		done := true
		for _, a := range acks {
			if j, ok := jobs[a.id]; ok && !j.State.Terminal() {
				done = false
				break
			}
		}
		if done || time.Now().After(deadline) {
			return jobs, nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func allJobs(ctx context.Context, admin *client.Client) (map[string]*tandem.Job, error) {
	out := make(map[string]*tandem.Job)
	after := ""
	for {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		page, err := admin.ListJobs(lctx, client.ListOptions{Limit: 1000, After: after})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list jobs: %w", err)
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

// countLaunches reads the launch ledger the jobs append to, outside tandem,
// and counts launches and attempt IDs launched more than once (I4).
func countLaunches(path string) (launches, duplicates int, err error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, 0, err
	}
	seen := make(map[string]int)
	for _, id := range strings.Fields(string(b)) {
		seen[id]++
		launches++
	}
	for _, n := range seen {
		if n > 1 {
			duplicates += n - 1
		}
	}
	return launches, duplicates, nil
}

// Print writes the result table.
func (r *FailoverResult) Print(w io.Writer) {
	fmt.Fprintf(w, "\n%s x %d, lease TTL %gs, %s etcd, %s; fenced etcd txn p50 %.2f ms\n", r.Fault, r.Trials, r.LeaseTTLS, r.Etcd, securityLabel(r.Secure), r.EtcdTxnP50S*1000)
	if r.Fault == FaultAgentKill {
		Table(w, "PHASE (ms)\tP50\tP90\tP99\tMAX",
			"retry running (kill to elsewhere)\t"+r.UnavailabilityS.Row(),
			"detection (attempt lost)\t"+r.DetectionS.Row(),
			"reschedule (retry recorded)\t"+r.ElectionS.Row(),
			"launch (retry started)\t"+r.TransitionS.Row())
		fmt.Fprintf(w, "acknowledged %d, lost %d, unfinished %d, launches %d, duplicate launches %d\n",
			r.Acknowledged, r.Lost, r.Unfinished, r.Launches, r.Duplicates)
		return
	}
	if r.Fault == FaultEtcdLeaderKill {
		Table(w, "PHASE (ms)\tP50\tP90\tP99\tMAX",
			"longest stall (client)\t"+r.UnavailabilityS.Row(),
			"etcd leader elected (kill to new leader)\t"+r.ElectionS.Row())
		fmt.Fprintf(w, "stall over one fenced etcd txn: p50 %.0fx, p99 %.0fx\n", r.FloorRatio.P50, r.FloorRatio.P99)
		fmt.Fprintf(w, "failovers: %d in %d trials (must be 0)\n", r.Failovers, r.Trials)
		fmt.Fprintf(w, "acknowledged %d, lost %d, unfinished %d, launches %d, duplicate launches %d\n",
			r.Acknowledged, r.Lost, r.Unfinished, r.Launches, r.Duplicates)
		return
	}
	if mustNotFailOver(r.Fault) {
		Table(w, "PHASE (ms)\tP50\tP90\tP99\tMAX",
			"longest stall (client)\t"+r.UnavailabilityS.Row())
		fmt.Fprintf(w, "failovers: %d in %d trials (must be 0)\n", r.Failovers, r.Trials)
		fmt.Fprintf(w, "acknowledged %d, lost %d, unfinished %d, launches %d, duplicate launches %d\n",
			r.Acknowledged, r.Lost, r.Unfinished, r.Launches, r.Duplicates)
		return
	}
	rows := []string{"unavailability (client)\t" + r.UnavailabilityS.Row()}
	if r.GapS.N > 0 {
		rows = append(rows, "gap: old active's last ack to new's first\t"+r.GapS.Row())
	}
	if r.WaitS.N > 0 {
		rows = append(rows, "longest wait of one submission\t"+r.WaitS.Row())
	}
	Table(w, "PHASE (ms)\tP50\tP90\tP99\tMAX", append(rows,
		"detection\t"+r.DetectionS.Row(),
		"election\t"+r.ElectionS.Row(),
		"transition\t"+r.TransitionS.Row())...)
	if r.LoadGapS > 0 {
		fmt.Fprintf(w, "in quiet time: longest gap between acknowledgements %.1f ms (the load's floor), longest wait of one submission %.1f ms\n",
			r.LoadGapS*1000, r.LoadWaitS*1000)
	}
	fmt.Fprintf(w, "unavailability over one fenced etcd txn: p50 %.0fx, p99 %.0fx\n", r.FloorRatio.P50, r.FloorRatio.P99)
	fmt.Fprintf(w, "etcd leader co-located with the faulted active in %d of %d trials\n", r.Colocated, r.Trials)
	if len(r.Detections) > 0 {
		var by []string
		for d, n := range r.Detections {
			by = append(by, fmt.Sprintf("%s %d", d, n))
		}
		sort.Strings(by)
		fmt.Fprintf(w, "detected by: %s\n", strings.Join(by, ", "))
	}
	if r.Fault == FaultStop || r.Fault == FaultPartition {
		fmt.Fprintf(w, "old active not fenced after it came back: %d\n", r.NotFenced)
	}
	fmt.Fprintf(w, "acknowledged %d, lost %d, unfinished %d, launches %d, duplicate launches %d\n",
		r.Acknowledged, r.Lost, r.Unfinished, r.Launches, r.Duplicates)
}

// Failed reports whether the run broke a promise: an acknowledged job lost,
// an attempt launched twice, an old active that did not come back fenced,
// or a failover where none may happen.
func (r *FailoverResult) Failed() error {
	if r.Lost > 0 || r.Duplicates > 0 || r.NotFenced > 0 || r.Failovers > 0 {
		return fmt.Errorf("%d acknowledged jobs lost, %d duplicate launches, %d old actives not fenced, %d failovers where none may happen",
			r.Lost, r.Duplicates, r.NotFenced, r.Failovers)
	}
	return nil
}

func msOf(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f ms", *p*1000)
}

func trialNotes(t *Trial) string {
	var notes []string
	if t.EtcdLeaderColocated {
		notes = append(notes, "etcd leader was in the same process")
	}
	if t.OldActiveFenced != nil {
		if *t.OldActiveFenced {
			notes = append(notes, "old active came back fenced")
		} else {
			notes = append(notes, "OLD ACTIVE NOT FENCED")
		}
	}
	if len(notes) == 0 {
		return ""
	}
	return "; " + strings.Join(notes, "; ")
}

func secsDur(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// agentTrial kills -9 the agent running a long job and measures until the
// job's retried attempt runs on the other agent: detection (the kill to the
// first attempt recorded lost), reschedule (to the retry recorded),
// launch (to the retry's process started, as its agent reported) and the
// whole (UnavailabilityS). The killed agent is then started again.
func agentTrial(ctx context.Context, cfg FailoverConfig, c *local.Cluster, _ *clientv3.Client, admin *client.Client, _ *load, n int) (*Trial, error) {
	ledger := filepath.Join(cfg.DataDir, "launches")
	spec := tandem.JobSpec{Name: fmt.Sprintf("bench-agent-kill-%d", n),
		Command:     []string{"sh", "-c", `echo "$TANDEM_ATTEMPT_ID" >> ` + ledger + `; exec sleep 600`},
		MaxAttempts: 3, RetryBackoff: tandem.Duration(time.Millisecond)}
	j, err := admin.SubmitJob(ctx, spec, client.SubmitOptions{})
	if err != nil {
		return nil, fmt.Errorf("submit the long job: %w", err)
	}
	defer func() {
		kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, _ = admin.KillJob(kctx, j.ID)
		cancel()
	}()
	// Under load the long job may queue behind many short ones.
	first, err := waitJob(ctx, admin, j.ID, 3*time.Minute, func(j *tandem.Job) bool {
		a := j.LastAttempt()
		return a != nil && a.State == tandem.AttemptRunning
	})
	if err != nil {
		return nil, err
	}
	victim := -1
	for i, a := range c.Agents {
		if a.ID == first.LastAttempt().Agent {
			victim = i
		}
	}
	if victim < 0 {
		return nil, fmt.Errorf("the long job runs on unknown agent %s", first.LastAttempt().Agent)
	}
	tr := &Trial{N: n, From: c.Agents[victim].ID}
	t0 := time.Now()
	if err := c.Agents[victim].Kill(); err != nil {
		return nil, fmt.Errorf("kill agent %s: %w", tr.From, err)
	}
	retried, err := waitJob(ctx, admin, j.ID, 60*time.Second, func(j *tandem.Job) bool {
		return len(j.Attempts) >= 2 && j.Attempts[len(j.Attempts)-1].State == tandem.AttemptRunning
	})
	if err != nil {
		return nil, err
	}
	seen := time.Now()
	lost, next := retried.Attempts[len(retried.Attempts)-2], retried.Attempts[len(retried.Attempts)-1]
	tr.To, tr.Cause = next.Agent, lost.Reason
	running := seen
	if next.StartedAt != nil {
		running = *next.StartedAt
	}
	tr.UnavailabilityS = running.Sub(t0).Seconds()
	if lost.EndedAt != nil {
		tr.DetectionS = secs(lost.EndedAt.Sub(t0))
		tr.ElectionS = secs(next.ScheduledAt.Sub(*lost.EndedAt))
	}
	if next.StartedAt != nil {
		tr.TransitionS = secs(next.StartedAt.Sub(next.ScheduledAt))
	}
	if err := c.Agents[victim].Start(); err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := c.Agents[victim].WaitHealthy(hctx); err != nil {
		return nil, err
	}
	return tr, nil
}

// waitJob polls job id until done holds or within ends.
func waitJob(ctx context.Context, admin *client.Client, id string, within time.Duration, done func(*tandem.Job) bool) (*tandem.Job, error) {
	deadline := time.Now().Add(within)
	for {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		j, err := admin.GetJob(gctx, id)
		cancel()
		if err == nil && done(j) {
			return j, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("job %s: gave up after %s (last error: %v)", id, within, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func secs(d time.Duration) *float64 {
	v := max(d, 0).Seconds()
	return &v
}

// peerLinkSet is every server's own way to every other server (standby-cut):
// links[i][j] is a proxy server i reaches server j's watch stream and probes
// through (tandem server --peer-addr), so one link can be cut alone.
type peerLinkSet struct{ links [][]*faultnet.Proxy }

// peerLinks makes the proxies of lc's servers and adds the flags that use
// them to lc.ServerArgs.
func peerLinks(lc *local.Config) (*peerLinkSet, error) {
	set := &peerLinkSet{links: make([][]*faultnet.Proxy, lc.Servers)}
	if lc.ServerArgs == nil {
		lc.ServerArgs = make(map[string][]string)
	}
	for i := range set.links {
		set.links[i] = make([]*faultnet.Proxy, lc.Servers)
		for j := range set.links[i] {
			if i == j {
				continue
			}
			p, err := faultnet.Listen("127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", lc.BasePort+j))
			if err != nil {
				set.close()
				return nil, fmt.Errorf("peer link proxy: %w", err)
			}
			set.links[i][j] = p
			id := local.ServerID(i)
			lc.ServerArgs[id] = append(lc.ServerArgs[id], "--peer-addr", local.ServerID(j)+"="+p.Addr())
		}
	}
	return set, nil
}

func (s *peerLinkSet) close() {
	for _, row := range s.links {
		for _, p := range row {
			if p != nil {
				p.Close()
			}
		}
	}
}

// noFailoverTrial injects a fault that must not cause a failover (standby-cut,
// pause-200ms, cpu-hog), holds it, and watches noFailoverWatch more: it
// counts the changes of active, the longest stall between acknowledged
// submissions, and, for standby-cut, the cut-off standby's votes.
func noFailoverTrial(ctx context.Context, cfg FailoverConfig, c *local.Cluster, cli *clientv3.Client, admin *client.Client, ld *load, n int) (*Trial, error) {
	a, err := c.WaitActive(ctx)
	if err != nil {
		return nil, err
	}
	st, err := c.Status(ctx, a)
	if err != nil {
		return nil, err
	}
	tr := &Trial{N: n, From: st.ID, OldEpoch: st.Epoch}
	l := keys.New(benchCluster)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	votes := make(chan int, 1)
	wch := cli.Watch(wctx, l.SuspectsPrefix(), clientv3.WithPrefix())
	go func() {
		n := 0
		for wr := range wch {
			for _, ev := range wr.Events {
				if id, _, voter, ok := l.ParseSuspectKey(string(ev.Kv.Key)); ok && ev.Type == mvccpb.PUT && id == st.ID && voter != "" {
					n++
				}
			}
		}
		votes <- n
	}()
	hold := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	t0 := time.Now()
	switch cfg.Fault {
	case FaultStandbyCut:
		link := cfg.links.links[(a+1)%len(c.Servers)][a]
		link.Block()
		err = hold(standbyCutFor)
		link.Unblock()
	case FaultPause200:
		if err = c.Signal(a, syscall.SIGSTOP); err == nil {
			time.Sleep(pauseShort) // the fault itself: the pause's length
			err = c.Signal(a, syscall.SIGCONT)
		}
	case FaultCPUHog:
		err = cpuHog(ctx, cpuHogFor)
	}
	if err != nil {
		return nil, fmt.Errorf("inject %s: %w", cfg.Fault, err)
	}
	end := time.Now().Add(noFailoverWatch)
	if err := hold(noFailoverWatch); err != nil {
		return nil, err
	}
	stopWatch()
	tr.Votes = <-votes
	if err := countFailovers(ctx, admin, tr); err != nil {
		return nil, err
	}
	tr.UnavailabilityS = ld.longestGap(t0, end).Seconds()
	return tr, nil
}

// countFailovers records in tr the changes of active since tr.OldEpoch, as
// the failover history tells them, and the first of them.
func countFailovers(ctx context.Context, admin *client.Client, tr *Trial) error {
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	events, err := admin.History(hctx)
	cancel()
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	for _, e := range events {
		if e.Epoch > tr.OldEpoch {
			tr.Failovers++
			if tr.To == "" {
				tr.To, tr.NewEpoch, tr.Cause, tr.Detection = e.ActiveID, e.Epoch, e.Cause, e.Detection
			}
		}
	}
	return nil
}

// longestWait returns the longest time a submission acknowledged by now
// waited among those under way at some time in [from, to].
func (l *load) longestWait(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w time.Duration
	for _, a := range l.acks {
		if !a.sent.IsZero() && !a.sent.After(to) && !a.at.Before(from) {
			w = max(w, a.at.Sub(a.sent))
		}
	}
	return w
}

// lastOf returns the time of the last acknowledgement by epoch before
// before.
func (l *load) lastOf(epoch int64, before time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var last time.Time
	for _, a := range l.acks {
		if a.epoch == epoch && a.at.Before(before) && a.at.After(last) {
			last = a.at
		}
	}
	return last, !last.IsZero()
}

// longestGap returns the longest time in [from, to] without an
// acknowledged submission.
func (l *load) longestGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	var at []time.Time
	for _, a := range l.acks {
		if a.at.After(from) && !a.at.After(to) {
			at = append(at, a.at)
		}
	}
	l.mu.Unlock()
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	prev, gap := from, time.Duration(0)
	for _, t := range append(at, to) {
		gap = max(gap, t.Sub(prev))
		prev = t
	}
	return gap
}

// cpuHog keeps every CPU busy for d: one spinning shell process per CPU
// (as stress --cpu N does), at the servers' priority, then stopped.
func cpuHog(ctx context.Context, d time.Duration) error {
	var hogs []*exec.Cmd
	defer func() {
		for _, h := range hogs {
			_ = h.Process.Kill()
			_ = h.Wait()
		}
	}()
	for i := 0; i < runtime.NumCPU(); i++ {
		h := exec.Command("sh", "-c", "while :; do :; done")
		if err := h.Start(); err != nil {
			return fmt.Errorf("start a CPU hog: %w", err)
		}
		hogs = append(hogs, h)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func voteNote(fault string, t *Trial) string {
	note := ""
	if fault == FaultStandbyCut {
		note = fmt.Sprintf("; the cut-off standby voted %d times", t.Votes)
	}
	if t.Failovers > 0 {
		note += fmt.Sprintf("; FAILED OVER to %s (%s %s)", t.To, t.Cause, t.Detection)
	}
	return note
}

// causeBy is a trial's failover cause, with its detection if any.
func causeBy(t *Trial) string {
	if t.Detection != "" {
		return t.Cause + " by " + t.Detection
	}
	return t.Cause
}

// orCause is how a trial's old active was found out: its detection, else
// the failover's cause.
func orCause(t Trial) string {
	if t.Detection != "" {
		return t.Detection
	}
	return t.Cause
}

// etcdLeaderTrial kills the process holding etcd's raft leader, which must
// not be the active's (with embedded etcd the active hands leadership away,
// --etcd-leader-away; the trial waits for that), measures the time until
// another member leads and the longest stall of the clients, counts
// changes of active (there must be none), and starts the process again.
func etcdLeaderTrial(ctx context.Context, cfg FailoverConfig, c *local.Cluster, cli *clientv3.Client, admin *client.Client, ld *load, n int) (*Trial, error) {
	a, err := c.WaitActive(ctx)
	if err != nil {
		return nil, err
	}
	st, err := c.Status(ctx, a)
	if err != nil {
		return nil, err
	}
	tr := &Trial{N: n, From: st.ID, OldEpoch: st.Epoch}
	procs := c.Etcd // external: the etcd processes, named e1, e2, ...
	if cfg.Etcd == "embedded" {
		procs = c.Servers // embedded: the member is named after its server
	}
	var victim int
	var leaderID uint64
	deadline := time.Now().Add(10 * time.Second)
	for {
		name, id := etcdLeader(ctx, cli)
		victim = -1
		for i, p := range procs {
			if p.ID == name {
				victim = i
			}
		}
		if victim >= 0 && (cfg.Etcd != "embedded" || victim != a) {
			tr.EtcdLeader, leaderID = name, id
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("etcd's leader (%q) stayed with the active %s or unknown for 10s", name, st.ID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t0 := time.Now()
	if err := procs[victim].Kill(); err != nil {
		return nil, fmt.Errorf("kill etcd leader %s: %w", tr.EtcdLeader, err)
	}
	// A new leader: a surviving member names one other than the killed.
	for {
		if _, id := etcdLeader(ctx, cli); id != 0 && id != leaderID {
			el := time.Since(t0).Seconds()
			tr.ElectionS = &el
			break
		}
		if time.Since(t0) > 30*time.Second {
			return nil, fmt.Errorf("no new etcd leader 30s after killing %s", tr.EtcdLeader)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The clients' stall may outlast etcd's election: watch until the
	// first submission acknowledged after it, and noFailoverWatch more.
	leaderAt := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	_, err = ld.firstAfter(wctx, leaderAt, 0)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("after killing etcd leader %s: %w", tr.EtcdLeader, err)
	}
	end := time.Now().Add(noFailoverWatch)
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(noFailoverWatch):
	}
	if err := countFailovers(ctx, admin, tr); err != nil {
		return nil, err
	}
	tr.UnavailabilityS = ld.longestGap(t0, end).Seconds()
	if err := procs[victim].Start(); err != nil {
		return nil, fmt.Errorf("restart %s: %w", tr.EtcdLeader, err)
	}
	wctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	err = procs[victim].WaitHealthy(wctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("restart %s: %w", tr.EtcdLeader, err)
	}
	return tr, nil
}

// etcdLeader returns the name and ID of the etcd member that the first
// answering member through cli names its leader (zero if none answers).
func etcdLeader(ctx context.Context, cli *clientv3.Client) (string, uint64) {
	for _, ep := range cli.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		st, err := cli.Status(sctx, ep)
		if err != nil || st.Leader == 0 {
			cancel()
			continue
		}
		members, err := cli.MemberList(sctx)
		cancel()
		if err != nil {
			continue
		}
		for _, m := range members.Members {
			if m.ID == st.Leader {
				return m.Name, m.ID
			}
		}
	}
	return "", 0
}
