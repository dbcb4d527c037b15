package server_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/server"
)

// fakeAgent speaks the agent protocol to one in-process server, as
// TestKillBeforeTheAgentReportsStart does, with its address under the
// test's control.
type fakeAgent struct {
	t      *testing.T
	n      *node
	info   tandem.AgentInfo
	seq    uint64
	epochs map[int]int64
}

func newFakeAgent(t *testing.T, n *node, id, addr string) *fakeAgent {
	a := &fakeAgent{t: t, n: n, info: tandem.AgentInfo{ID: id, URL: "http://" + addr, Capacity: smallAgent, PID: 4242, StartedAt: time.Now()}}
	first := a.sync(context.Background(), tandem.SyncRequest{})
	a.epochs = map[int]int64{0: first.Terms[0].Epoch}
	return a
}

func (a *fakeAgent) sync(ctx context.Context, req tandem.SyncRequest) *tandem.SyncResponse {
	a.t.Helper()
	a.seq++
	req.Agent, req.Seq = a.info, a.seq
	if req.Epochs == nil {
		req.Epochs = a.epochs
	}
	resp, err := a.n.srv.Sync(ctx, &req)
	if err != nil {
		a.t.Fatalf("sync: %v", err)
	}
	return resp
}

// start takes the job's assignment and reports its attempt running.
func (a *fakeAgent) start(jobID string) string {
	a.t.Helper()
	resp := a.sync(context.Background(), tandem.SyncRequest{WaitMS: 5000})
	if len(resp.Assign) != 1 || resp.Assign[0].JobID != jobID {
		a.t.Fatalf("assignments: got %+v, want job %s's attempt", resp.Assign, jobID)
	}
	now := time.Now()
	a.sync(context.Background(), tandem.SyncRequest{Running: []tandem.AttemptReport{
		{AttemptID: resp.Assign[0].AttemptID, JobID: jobID, State: tandem.AttemptRunning, PID: 4243, StartedAt: &now}}})
	return resp.Assign[0].AttemptID
}

// cutPoll holds a poll reporting attempt running and cuts it, as a dying
// agent's kernel would.
func (a *fakeAgent) cutPoll(jobID, attempt string) {
	a.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.seq++
		req := tandem.SyncRequest{Agent: a.info, Seq: a.seq, Epochs: a.epochs, WaitMS: 10000,
			Running: []tandem.AttemptReport{{AttemptID: attempt, JobID: jobID, State: tandem.AttemptRunning, PID: 4243}}}
		_, _ = a.n.srv.Sync(ctx, &req)
	}()
	// The poll is held once the server has it: it answers nothing new.
	time.Sleep(50 * time.Millisecond) // not a synchronisation: a cut before the hold is handled the same
	cancel()
	<-done
}

// An agent whose process dies is lost at once, long before the agent
// timeout, whether its poll was held (the kernel cuts it) or it was between
// two polls (its last one answered, the next never sent): it does not poll
// again at once and its address refuses connections.
func TestCrashedAgentIsLostAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		death func(a *fakeAgent, jobID, attempt string)
	}{
		{"poll cut", func(a *fakeAgent, jobID, attempt string) { a.cutPoll(jobID, attempt) }},
		{"between polls", func(*fakeAgent, string, string) {}}, // a.start's last sync was answered; nothing follows
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 1, func(cfg *server.Config) { cfg.AgentTimeout = time.Minute })
			n := c.nodes[c.waitActive()]
			cl := c.client()
			dead := closedAddr(t)
			a := newFakeAgent(t, n, "dying", dead)
			j := submit(t, cl, tandem.JobSpec{Command: []string{"sleep", "60"}, MaxAttempts: 2})
			tc.death(a, j.ID, a.start(j.ID))
			got := waitJob(t, cl, j.ID, func(j *tandem.Job) bool { return j.Attempts[0].State == tandem.AttemptLost })
			if r := got.Attempts[0].Reason; !strings.Contains(r, "crashed") || !strings.Contains(r, dead) {
				t.Fatalf("reason of the lost attempt: %q, want a crash at %s", r, dead)
			}
		})
	}
}

// An agent whose poll is cut but whose address still accepts connections is
// alive (the network cut the poll): nothing is lost.
func TestCutPollOfLiveAgentLosesNothing(t *testing.T) {
	c := newCluster(t, 1, func(cfg *server.Config) { cfg.AgentTimeout = time.Minute })
	n := c.nodes[c.waitActive()]
	cl := c.client()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a := newFakeAgent(t, n, "alive", ln.Addr().String())
	j := submit(t, cl, tandem.JobSpec{Command: []string{"sleep", "60"}, MaxAttempts: 2})
	attempt := a.start(j.ID)
	a.cutPoll(j.ID, attempt)
	// The server checks the agent's address and connects; the agent's next
	// sync, after that, settles that it lives.
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	a.sync(context.Background(), tandem.SyncRequest{Running: []tandem.AttemptReport{
		{AttemptID: attempt, JobID: j.ID, State: tandem.AttemptRunning, PID: 4243}}})
	got, err := cl.GetJob(context.Background(), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Attempts) != 1 || got.Attempts[0].State != tandem.AttemptRunning {
		t.Fatalf("after a cut poll of a live agent: %d attempts, first %s %q; want one, running",
			len(got.Attempts), got.Attempts[0].State, got.Attempts[0].Reason)
	}
}

// A standby deposes a crashed active by the loss of its watch stream,
// confirmed by a refused connection, with the prober's fallback too slow to
// be the one: the history says connection-lost.
func TestWatchStreamDetectsCrashedActive(t *testing.T) {
	c := newCluster(t, 3, func(cfg *server.Config) { cfg.ProbeInterval = 5 * time.Second })
	first := c.waitActive()
	old, _ := c.nodes[first].srv.ActiveEpoch()
	deadline := time.Now().Add(10 * time.Second)
	for c.nodes[first].srv.WatchStreams() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("watch streams served by the active: %d, want 2", c.nodes[first].srv.WatchStreams())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.crash(first)
	next := c.waitActive(first)
	hist := waitHistory(t, c.nodes[next], 2)
	last := hist[len(hist)-1]
	if last.PrevEpoch != old || last.Cause != tandem.CauseCrashed || last.Detection != tandem.DetectConnectionLost {
		t.Fatalf("last history event: %+v; want after epoch %d, %s by %s", last, old, tandem.CauseCrashed, tandem.DetectConnectionLost)
	}
}

// liveAddr returns the address of a listener that accepts connections
// until the test ends: a fake agent's, so that the server's checks of an
// agent that does not poll again at once find it alive.
func liveAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// closedAddr returns a local address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
