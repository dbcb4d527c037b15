package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/server"
)

// One sync's reports are recorded in one transaction, each with its own
// answer: running reports of three attempts (one of a job already killed:
// a kill order, nothing written for it), then a malformed done report
// (refused, nothing recorded), then three done reports and one of a job
// that does not exist (four acknowledgements, the three attempts ended).
func TestSyncReportsInOneTransaction(t *testing.T) {
	c := newCluster(t, 1, func(cfg *server.Config) { cfg.AgentTimeout = time.Minute })
	n := c.nodes[c.waitActive()]
	cl := c.client()
	ctx := context.Background()
	a := newFakeAgent(t, n, "batcher", liveAddr(t))
	var ids []string
	for range 3 {
		ids = append(ids, submit(t, cl, tandem.JobSpec{Command: []string{"sleep", "60"}, Resources: tandem.Resources{CPU: 0.1, MemoryMB: 1}}).ID)
	}
	attempts := map[string]string{} // job -> attempt
	for len(attempts) < 3 {
		for _, as := range a.sync(ctx, tandem.SyncRequest{WaitMS: 5000}).Assign {
			attempts[as.JobID] = as.AttemptID
		}
	}
	// The agent launched all three; the second was killed meanwhile.
	if _, err := cl.KillJob(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	reports := func() (float64, float64) {
		return metricValue(t, n.srv, "tandem_agent_reports_recorded_total"), metricValue(t, n.srv, "tandem_agent_report_transactions_total")
	}
	r0, x0 := reports()
	now := time.Now()
	var running []tandem.AttemptReport
	for _, id := range ids {
		running = append(running, tandem.AttemptReport{AttemptID: attempts[id], JobID: id, State: tandem.AttemptRunning, PID: 4243, StartedAt: &now})
	}
	resp := a.sync(ctx, tandem.SyncRequest{Running: running})
	if len(resp.Kill) != 1 || resp.Kill[0].AttemptID != attempts[ids[1]] {
		t.Fatalf("kill orders: %+v, want one, for %s", resp.Kill, attempts[ids[1]])
	}
	if r, x := reports(); r-r0 != 2 || x-x0 != 1 {
		t.Fatalf("running reports: %v recorded in %v transactions, want 2 in 1", r-r0, x-x0)
	}
	for _, id := range []string{ids[0], ids[2]} {
		if j, err := cl.GetJob(ctx, id); err != nil || j.State != tandem.JobRunning {
			t.Fatalf("job %s after its running report: %+v %v", id, j, err)
		}
	}

	// A malformed done report among good ones refuses the sync whole.
	code := 0
	done := []tandem.AttemptReport{
		{AttemptID: attempts[ids[0]], JobID: ids[0], State: tandem.AttemptSucceeded, ExitCode: &code, EndedAt: &now},
		{AttemptID: attempts[ids[2]], JobID: ids[2], State: tandem.AttemptRunning},
	}
	a.seq++
	if _, err := n.srv.Sync(ctx, &tandem.SyncRequest{Agent: a.info, Seq: a.seq, Epochs: a.epochs, Done: done}); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Fatalf("sync with a done report in state running: got %v, want invalid", err)
	}
	if j, _ := cl.GetJob(ctx, ids[0]); j.State != tandem.JobRunning {
		t.Fatalf("job %s after a refused sync: %s, want still running", ids[0], j.State)
	}

	// Three done reports and one of a job that never existed.
	r0, x0 = reports()
	done[1].State, done[1].ExitCode, done[1].EndedAt = tandem.AttemptFailed, &code, &now
	done = append(done, tandem.AttemptReport{AttemptID: attempts[ids[1]], JobID: ids[1], State: tandem.AttemptKilled, EndedAt: &now},
		tandem.AttemptReport{AttemptID: ids[0][:len(ids[0])-1] + "z-1", JobID: ids[0][:len(ids[0])-1] + "z", State: tandem.AttemptSucceeded, ExitCode: &code})
	resp = a.sync(ctx, tandem.SyncRequest{Done: done})
	acked := map[string]bool{}
	for _, ack := range resp.Ack {
		acked[ack.AttemptID] = true
	}
	for _, d := range done {
		if !acked[d.AttemptID] {
			t.Fatalf("done report of %s not acknowledged (acks %+v)", d.AttemptID, resp.Ack)
		}
	}
	// The killed job's attempt was ended by the kill already: two writes.
	if r, x := reports(); r-r0 != 2 || x-x0 != 1 {
		t.Fatalf("done reports: %v recorded in %v transactions, want 2 in 1", r-r0, x-x0)
	}
	want := map[string]tandem.JobState{ids[0]: tandem.JobSucceeded, ids[1]: tandem.JobKilled, ids[2]: tandem.JobFailed}
	for id, st := range want {
		if j, err := cl.GetJob(ctx, id); err != nil || j.State != st || len(j.Attempts) != 1 {
			t.Fatalf("job %s: %+v %v, want %s after one attempt", id, j, err, st)
		}
	}
	c.audit(1)
}

// A batch of report writes that etcd refuses, because a record changed
// after the server read it, is applied change by change: every change
// lands once, and the write that came between is kept, not overwritten.
func TestRefusedReportBatchIsWrittenChangeByChange(t *testing.T) {
	c := newCluster(t, 1, nil)
	n := c.nodes[c.waitActive()]
	cl := c.client()
	ctx := context.Background()
	var ids []string
	for range 3 { // no agent: they stay pending, and nothing else writes them
		ids = append(ids, submit(t, cl, tandem.JobSpec{Command: []string{"true"}}).ID)
	}
	layout := keys.New("test")
	record := func(id string) (*tandem.Job, *clientv3.GetResponse) {
		resp, err := n.cli.Get(ctx, layout.Job(id))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("job %s in etcd: %v, %v", id, resp, err)
		}
		var j tandem.Job
		if err := json.Unmarshal(resp.Kvs[0].Value, &j); err != nil {
			t.Fatal(err)
		}
		return &j, resp
	}
	const mark = "[report]"
	outside := false
	fn := func(j *tandem.Job, now time.Time) (bool, error) {
		if j.ID == ids[1] && !outside {
			// Someone else's write lands after the server read the record.
			outside = true
			o, _ := record(j.ID)
			o.Reason = "outside"
			b, _ := json.Marshal(o)
			if _, err := n.cli.Put(ctx, layout.Job(j.ID), string(b)); err != nil {
				t.Error(err)
			}
		}
		if !strings.Contains(j.Reason, mark) { // a change may run again: it must not mark twice
			j.Reason += mark
		}
		return true, nil
	}
	txns := func() float64 { return metricValue(t, n.srv, "tandem_agent_report_transactions_total") }
	x0 := txns()
	for i, err := range n.srv.ApplyChanges(ctx, ids, fn) {
		if err != nil {
			t.Errorf("change of job %s: %v", ids[i], err)
		}
	}
	if !outside {
		t.Fatal("the write between never happened")
	}
	if x := txns() - x0; x != 3 {
		t.Errorf("%v report transactions, want 3: the refused batch's changes one at a time", x)
	}
	for i, id := range ids {
		j, _ := record(id)
		want := mark
		if i == 1 {
			want = "outside" + mark
		}
		if j.Reason != want {
			t.Errorf("job %s's reason in etcd: %q, want %q", id, j.Reason, want)
		}
	}
}
