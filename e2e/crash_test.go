package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/keys"
)

// A killed active is deposed by the loss of the watch streams the standbys
// hold to it (confirmed by one refused connection), not by its lease nor by
// three refused probes: the new active's history says so. A write fenced by
// the old active's epoch is rejected afterwards.
func TestCrashOfActiveIsDetectedByConnectionLoss(t *testing.T) {
	e := startEtcd(t)
	// Probes every 10 s: only the watch streams can detect the crash within
	// the lease's 2 s, so a cause of crash-detected proves they did.
	c := startCluster(t, 3, e, "--probe-interval", "10s")
	a := waitActive(t, c)
	ctx := context.Background()
	before, err := c.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, c.URLs())
	if _, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: "before", Command: []string{"true"}}, client.SubmitOptions{}); err != nil {
		t.Fatal(err)
	}
	// Both standbys hold their streams to the active.
	waitWatchStreams(t, c.Servers[a].URL, 2)
	killedAt := time.Now()
	if err := c.Kill(a); err != nil {
		t.Fatal(err)
	}
	next := waitActive(t, c, a)
	t.Logf("kill -9 of %s to %s active: %s", c.Servers[a].ID, c.Servers[next].ID, time.Since(killedAt).Round(time.Millisecond))

	var ev *tandem.FailoverEvent
	waitFor(t, "the new active's failover event", 10*time.Second, func() bool {
		hist, err := cl.History(ctx)
		if err != nil {
			return false
		}
		for _, h := range hist {
			if h.PrevEpoch == before.Epoch {
				ev = &h
				return true
			}
		}
		return false
	})
	if ev.Cause != tandem.CauseCrashed || ev.Detection != tandem.DetectConnectionLost || ev.PrevID != c.Servers[a].ID {
		t.Fatalf("failover event: cause %q detection %q prev %s; want %s, %s, %s", ev.Cause, ev.Detection, ev.PrevID,
			tandem.CauseCrashed, tandem.DetectConnectionLost, c.Servers[a].ID)
	}
	if ev.DetectionS == nil || *ev.DetectionS > 1 {
		t.Errorf("detection took %v s; a connection loss is seen at once", ev.DetectionS)
	}
	t.Logf("failover %s -> %s: %s by %s, detection %.1f ms", ev.PrevID, ev.ActiveID, ev.Cause, ev.Detection, *ev.DetectionS*1000)

	// The old active's first write after the failover, fenced by its epoch
	// as every write of an active is (I1), is rejected.
	cli := etcdClient(t, e)
	fence := election.Fence{Key: keys.New("default").Leader(), Rev: before.Epoch}
	resp, err := cli.Txn(ctx).If(fence.IsOwner()).Then(clientv3.OpPut(keys.New("default").Leader()+"-probe", "old active")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if resp.Succeeded {
		t.Fatalf("a write fenced by the killed active's epoch %d succeeded", before.Epoch)
	}
	if _, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: "after", Command: []string{"true"}}, client.SubmitOptions{}); err != nil {
		t.Fatalf("submit after the failover: %v", err)
	}
}

// A clean shutdown of the active is a resignation, not a crash: the
// standbys' streams end with a goodbye, nothing is deposed.
func TestShutdownOfActiveIsNotACrash(t *testing.T) {
	c := startCluster(t, 3, startEtcd(t))
	a := waitActive(t, c)
	ctx := context.Background()
	before, err := c.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	waitWatchStreams(t, c.Servers[a].URL, 2)
	if err := c.StopServer(a, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitActive(t, c, a)
	cl := newClient(t, c.URLs())
	var ev *tandem.FailoverEvent
	waitFor(t, "the new active's failover event", 10*time.Second, func() bool {
		hist, err := cl.History(ctx)
		if err != nil {
			return false
		}
		for _, h := range hist {
			if h.PrevEpoch == before.Epoch {
				ev = &h
				return true
			}
		}
		return false
	})
	if ev.Cause != tandem.CauseShutdown || ev.Detection != "" {
		t.Fatalf("failover after a clean shutdown: cause %q detection %q, want %s and none", ev.Cause, ev.Detection, tandem.CauseShutdown)
	}
	for i := range c.Servers {
		if i == a {
			continue
		}
		b, _ := os.ReadFile(c.Servers[i].LogPath)
		if strings.Contains(string(b), "deposed a dead owner") {
			t.Errorf("%s deposed the active that shut down cleanly", c.Servers[i].ID)
		}
	}
}

// A killed agent's attempts are lost and retried on another agent as soon as
// its connection closes and its port refuses, far within the agent timeout;
// the agent, restarted, never launches the lost attempt again (I4).
func TestCrashedAgentsAttemptsAreRetriedAtOnce(t *testing.T) {
	c := startJobCluster(t, 1, 2, nil, "--agent-timeout", "60s")
	cl := newClient(t, c.URLs())
	ctx := context.Background()
	cmd, ledger := launchMarker(t, "sleep 60")
	j, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: cmd, MaxAttempts: 2, RetryBackoff: tandem.Duration(10 * time.Millisecond)}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	first := waitJobState(t, cl, j.ID, 30*time.Second, running).Attempts[0]
	var victim int
	for i, a := range c.Agents {
		if a.ID == first.Agent {
			victim = i
		}
	}
	killedAt := time.Now()
	if err := c.Agents[victim].Kill(); err != nil {
		t.Fatal(err)
	}
	// Well within the 60 s agent timeout: only the crash detection can.
	retried := waitJobState(t, cl, j.ID, 20*time.Second, func(j *tandem.Job) bool {
		return len(j.Attempts) == 2 && j.Attempts[1].State == tandem.AttemptRunning
	})
	t.Logf("agent kill -9 to the retry running elsewhere: %s", time.Since(killedAt).Round(time.Millisecond))
	if a := retried.Attempts[0]; a.State != tandem.AttemptLost || !strings.Contains(a.Reason, "crashed") {
		t.Fatalf("first attempt after its agent was killed: %s %q, want lost, crashed", a.State, a.Reason)
	}
	if retried.Attempts[1].Agent == first.Agent {
		t.Fatalf("the retry ran on the killed agent %s", first.Agent)
	}
	// The killed agent comes back: it knows attempt 1 from its ledger and
	// never launches it again.
	if err := c.Agents[victim].Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restarted agent to be ready", 20*time.Second, func() bool {
		agents, err := cl.Agents(ctx)
		if err != nil {
			return false
		}
		for _, a := range agents {
			if a.ID == first.Agent && a.State == tandem.AgentReady {
				return true
			}
		}
		return false
	})
	got, err := cl.GetJob(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Attempts) != 2 || got.Attempts[1].State != tandem.AttemptRunning {
		t.Fatalf("after the agent came back: %d attempts, last %s; want 2, running", len(got.Attempts), got.LastAttempt().State)
	}
	if ids := launches(t, ledger); len(ids) != 2 {
		t.Fatalf("launches: %v, want the two attempts once each", ids)
	}
}

// A network blip between an agent and the active, a paused link then a cut
// one, with the agent alive and listening, loses nothing. An agent wrongly
// judged crashed (it lives, but its advertised address refuses) has its
// attempt retried elsewhere, and when it syncs again it is told to kill the
// replaced attempt, and does (I4).
func TestNetworkBlipIsNotAnAgentCrash(t *testing.T) {
	if secureMode {
		t.Skipf("%s=1: the agents this test starts by hand carry no certificates", envSecure)
	}
	c := startJobCluster(t, 1, 0, nil, "--agent-timeout", "30s")
	cl := newClient(t, c.URLs())
	ctx := context.Background()
	link := startLink(t, c.Servers[0].URL)

	// A blip: the link pauses, then heals; then it is cut (every
	// connection closed) and comes back. The agent listens all along.
	startAgent(t, "blip", "--servers", link.url(), "--labels", "pool=blip")
	j, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: []string{"sleep", "60"}, Constraints: map[string]string{"pool": "blip"}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitJobState(t, cl, j.ID, 30*time.Second, running)
	link.p.Block()
	time.Sleep(1500 * time.Millisecond) // the fault itself: a pause of the network, not a synchronisation
	link.p.Unblock()
	cutAt := time.Now()
	link.cut(t)
	waitFor(t, "the agent to sync again after the cut", 15*time.Second, func() bool {
		agents, err := cl.Agents(ctx)
		if err != nil {
			return false
		}
		for _, a := range agents {
			if a.ID == "blip" && a.State == tandem.AgentReady && a.LastContact.After(cutAt) {
				return true
			}
		}
		return false
	})
	got, err := cl.GetJob(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Attempts) != 1 || got.Attempts[0].State != tandem.AttemptRunning {
		t.Fatalf("after a blip: %d attempts, first %s %q; want the one attempt still running", len(got.Attempts),
			got.Attempts[0].State, got.Attempts[0].Reason)
	}
	if _, err := cl.KillJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}

	// An agent whose advertised address refuses: when its link is cut and
	// it cannot poll again at once, the server judges it crashed.
	dead := deadAddr(t)
	startAgent(t, "liar", "--servers", link.url(), "--labels", "pool=liar", "--advertise-url", "http://"+dead)
	cmd, ledger := launchMarker(t, "sleep 60")
	j2, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: cmd, MaxAttempts: 2, RetryBackoff: tandem.Duration(10 * time.Millisecond),
		Constraints: map[string]string{"pool": "liar"}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	first := waitJobState(t, cl, j2.ID, 30*time.Second, running).Attempts[0]
	if first.Agent != "liar" {
		t.Fatalf("attempt 1 runs on %s, want liar", first.Agent)
	}
	// The retry goes to an honest agent of the same pool, started now.
	startAgent(t, "honest", "--servers", c.Servers[0].URL, "--labels", "pool=liar")
	link.down(t) // the liar cannot poll again
	retried := waitJobState(t, cl, j2.ID, 20*time.Second, func(j *tandem.Job) bool {
		return len(j.Attempts) == 2 && j.Attempts[1].State == tandem.AttemptRunning
	})
	if a := retried.Attempts[0]; a.State != tandem.AttemptLost || !strings.Contains(a.Reason, "crashed") {
		t.Fatalf("first attempt: %s %q, want lost, crashed", a.State, a.Reason)
	}
	if retried.Attempts[1].Agent != "honest" {
		t.Fatalf("the retry runs on %s, want honest", retried.Attempts[1].Agent)
	}
	if syscall.Kill(first.PID, 0) != nil {
		t.Fatalf("attempt 1's process %d is gone before its agent came back", first.PID)
	}
	link.up(t) // the liar returns and is told to kill the replaced attempt
	waitFor(t, "the returning agent to kill the replaced attempt", 20*time.Second, func() bool {
		return syscall.Kill(first.PID, 0) != nil
	})
	if ids := launches(t, ledger); len(ids) != 2 {
		t.Fatalf("launches: %v, want the two attempts once each", ids)
	}
}

// waitFor waits until cond holds, failing the test after within.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitWatchStreams waits until the server at url serves at least n watch
// streams (its metric tandem_watch_streams).
func waitWatchStreams(t *testing.T, url string, n int) {
	t.Helper()
	hc := httpClient(t)
	waitFor(t, fmt.Sprintf("%d watch streams served by %s", n, url), 20*time.Second, func() bool {
		req, _ := http.NewRequest(http.MethodGet, url+"/metrics", nil)
		resp, err := hc.Do(authorize(t, req))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "tandem_watch_streams "); ok {
				got, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return err == nil && int(got) >= n
			}
		}
		return false
	})
}

// link is a faultnet proxy between agents and a server that a test can
// pause, cut and take down.
type link struct {
	addr, target string
	p            *faultnet.Proxy
}

func startLink(t *testing.T, serverURL string) *link {
	t.Helper()
	target := strings.TrimPrefix(serverURL, "http://")
	l := &link{addr: deadAddr(t), target: target}
	l.up(t)
	t.Cleanup(func() {
		if l.p != nil {
			l.p.Close()
		}
	})
	return l
}

func (l *link) url() string { return "http://" + l.addr }

// cut closes every connection through the link and opens it again at once.
func (l *link) cut(t *testing.T) {
	t.Helper()
	l.down(t)
	l.up(t)
}

// down closes the link: connections close, new ones are refused.
func (l *link) down(t *testing.T) {
	t.Helper()
	if l.p != nil {
		l.p.Close()
		l.p = nil
	}
}

// up opens the link again at the same address.
func (l *link) up(t *testing.T) {
	t.Helper()
	var err error
	for try := 0; try < 50; try++ {
		if l.p, err = faultnet.Listen(l.addr, l.target); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond) // the port is being released by the kernel
	}
	t.Fatalf("link at %s: %v", l.addr, err)
}

// deadAddr returns a local address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startAgent starts an agent process with id and args, stopped at cleanup;
// its log is shown when the test fails.
func startAgent(t *testing.T, id string, args ...string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	all := append([]string{"agent", "--id", id, "--work-dir", dir, "--listen", "127.0.0.1:0", "--poll-wait", "2s", "--log-level", "debug"}, args...)
	if os.Geteuid() == 0 {
		all = append(all, "--run-as", "root", "--allow-root")
	}
	cmd := exec.Command(binary, all...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- agent %s log ----\n%s", id, tail(string(b), 50))
		}
	})
}
