package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

const refusalLog = "refused items of deposed shard owners"

// refusals returns the refusal lines of logs.
func refusals(logs string) []string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, refusalLog) {
			out = append(out, line)
		}
	}
	return out
}

func TestTwoOwnersOneStale(t *testing.T) {
	ownerA := newFakeServer(t, "rm-a", term(1, 10))
	ownerB := newFakeServer(t, "rm-b", term(2, 20))
	third := newFakeServer(t, "rm-c") // a standby, for now
	dir := t.TempDir()
	cfg := testConfig(t, dir, ownerA.URL(), ownerB.URL(), third.URL())
	a, logs := startAgent(t, cfg)
	waitFor(t, "epochs 10 and 20 for shards 1 and 2", func() bool {
		e := a.Status().Epochs
		return e[1] == 10 && e[2] == 20
	})

	// Shard 1 moves to rm-c at epoch 15; rm-a has not noticed yet.
	third.setTerms(term(1, 15))
	waitFor(t, "epoch 15 for shard 1", func() bool { return a.Status().Epochs[1] == 15 })

	// In the same period rm-a assigns an attempt of shard 1 and rm-b one of
	// shard 2: only rm-a's is refused.
	count := filepath.Join(t.TempDir(), "count")
	env := map[string]string{"COUNT": count}
	ownerA.addAssignment(inTerm(shell("att-stale", `echo stale >> "$COUNT"`, env), 1, 0))
	ownerB.addAssignment(inTerm(shell("att-fresh", `echo fresh >> "$COUNT"`, env), 2, 0))
	if r := ownerB.waitDone(t, "att-fresh"); r.State != tandem.AttemptSucceeded {
		t.Fatalf("att-fresh: got %s (%s), want succeeded", r.State, r.Reason)
	}
	waitFor(t, "the refusal of rm-a's assignment", func() bool {
		return slices.ContainsFunc(refusals(logs.String()), func(l string) bool {
			return strings.Contains(l, "server_id=rm-a") && strings.Contains(l, "refused.1.epoch=10 refused.1.highest_epoch=15 refused.1.assignments=1")
		})
	})
	n := ownerA.syncCount()
	waitFor(t, "more syncs with rm-a", func() bool { return ownerA.syncCount() > n+3 })
	if got := lines(t, count); !slices.Equal(got, []string{"fresh"}) {
		t.Errorf("launches: got %q, want [fresh]", got)
	}
	if got := lines(t, filepath.Join(dir, ledgerFile)); !slices.Equal(got, []string{"att-fresh"}) {
		t.Errorf("ledger: got %q, want [att-fresh]", got)
	}
	for _, l := range refusals(logs.String()) {
		if strings.Contains(l, "refused.2.") {
			t.Errorf("an item of shard 2 was refused: %s", l)
		}
	}
	waitFor(t, "rm-a to be told of epoch 15", func() bool {
		s, _ := ownerA.lastSync()
		return s.Epochs[1] == 15 && s.Epochs[2] == 20
	})

	// The epochs survive a restart: the new agent, syncing with rm-a alone,
	// refuses its item at once.
	stopAgent(t, a)
	if b, err := os.ReadFile(filepath.Join(dir, epochFile)); err != nil || string(b) != `{"1":15,"2":20}`+"\n" {
		t.Errorf("epoch file: got %q (%v), want %q", b, err, `{"1":15,"2":20}`+"\n")
	}
	cfg.Servers = []string{ownerA.URL()}
	a2, logs2 := startAgent(t, cfg)
	if got := a2.Status().Epochs; len(got) != 2 || got[1] != 15 || got[2] != 20 {
		t.Errorf("epochs after the restart: got %v, want map[1:15 2:20]", got)
	}
	waitFor(t, "the restarted agent's refusal", func() bool { return len(refusals(logs2.String())) > 0 })
	if got := lines(t, count); !slices.Equal(got, []string{"fresh"}) {
		t.Errorf("launches after the restart: got %q, want [fresh]", got)
	}
}

func TestMixedAnswerRefusesOnlyTheStaleShard(t *testing.T) {
	// Reports go to the current owner of shards 1 and 3.
	srv := newFakeServer(t, "rm-new", term(1, 15), term(3, 30))
	dir := t.TempDir()
	a, logs := startAgent(t, testConfig(t, dir, srv.URL()))
	waitFor(t, "epochs 15 and 30", func() bool { e := a.Status().Epochs; return e[1] == 15 && e[3] == 30 })
	count := filepath.Join(t.TempDir(), "count")
	env := map[string]string{"COUNT": count}

	// One attempt of each shard runs.
	out, err := a.apply(&tandem.SyncResponse{ServerID: "rm-new", Terms: []tandem.ShardTerm{term(1, 15), term(3, 30)},
		Assign: []tandem.Assignment{inTerm(shell("att-k1", "sleep 600", nil), 1, 15), inTerm(shell("att-k3", "sleep 600", nil), 3, 30)}}, "test")
	if err != nil || !out.acted || out.refused != 0 {
		t.Fatalf("apply: got %+v, %v; want launches, no refusal", out, err)
	}
	srv.waitRunning(t, "att-k1")
	srv.waitRunning(t, "att-k3")

	// A server deposed from shard 3 (its term had epoch 25) but still owning
	// shard 1 answers with items of both. Shard 1's epoch is lower than
	// shard 3's: epochs are compared shard by shard, never across shards.
	mixed := &tandem.SyncResponse{
		ServerID: "rm-old", Terms: []tandem.ShardTerm{term(1, 15), term(3, 25)},
		Assign: []tandem.Assignment{
			inTerm(shell("att-s1", `echo s1 >> "$COUNT"`, env), 1, 15),
			inTerm(shell("att-s3", `echo s3 >> "$COUNT"`, env), 3, 25),
		},
		Kill: []tandem.KillOrder{
			{AttemptID: "att-k1", Shard: 1, Epoch: 15, Reason: "fresh"},
			{AttemptID: "att-k3", Shard: 3, Epoch: 25, Reason: "stale"},
		},
	}
	out, err = a.apply(mixed, "http://rm-old")
	if err != nil || !out.acted || out.refused != 2 {
		t.Fatalf("apply: got %+v, %v; want something done and 2 items refused", out, err)
	}
	if r := srv.waitDone(t, "att-s1"); r.State != tandem.AttemptSucceeded {
		t.Errorf("att-s1: got %s (%s), want succeeded", r.State, r.Reason)
	}
	if r := srv.waitDone(t, "att-k1"); r.State != tandem.AttemptKilled || r.Reason != "fresh" {
		t.Errorf("att-k1: got %s (%q), want killed (%q)", r.State, r.Reason, "fresh")
	}
	if got := lines(t, count); !slices.Equal(got, []string{"s1"}) {
		t.Errorf("launches: got %q, want [s1]", got)
	}
	if got := lines(t, filepath.Join(dir, ledgerFile)); slices.Contains(got, "att-s3") {
		t.Errorf("ledger: got %q, want no att-s3", got)
	}
	if got := a.Status().Running; !slices.Equal(got, []string{"att-k3"}) {
		t.Errorf("running: got %v, want [att-k3]", got)
	}
	if got := a.Status().Epochs; got[1] != 15 || got[3] != 30 {
		t.Errorf("epochs: got %v, want shard 1 at 15, shard 3 still at 30", got)
	}
	lines := refusals(logs.String())
	if len(lines) != 1 || !strings.Contains(lines[0], "server_id=rm-old") ||
		!strings.Contains(lines[0], "refused.3.epoch=25 refused.3.highest_epoch=30 refused.3.assignments=1 refused.3.kills=1 refused.3.acks=0") ||
		strings.Contains(lines[0], "refused.1.") {
		t.Errorf("refusal logs: got %q, want one for shard 3 (1 assignment, 1 kill order), none for shard 1", lines)
	}

	// The current owner of shard 3 may kill att-k3.
	out, err = a.apply(&tandem.SyncResponse{Kill: []tandem.KillOrder{{AttemptID: "att-k3", Shard: 3, Epoch: 30, Reason: "fresh"}}}, "test")
	if err != nil || !out.acted {
		t.Errorf("kill order of the current owner: got %+v, %v; want carried out", out, err)
	}
	if r := srv.waitDone(t, "att-k3"); r.State != tandem.AttemptKilled {
		t.Errorf("att-k3: got %s (%q), want killed", r.State, r.Reason)
	}
}

func TestAcksFencedPerShard(t *testing.T) {
	srv := newFakeServer(t, "rm-new", term(1, 15))
	srv.noAck = true
	dir := t.TempDir()
	cfg := testConfig(t, dir, srv.URL())
	cfg.PollWait = 300 * time.Millisecond // reports are sent again at the next poll
	a, _ := startAgent(t, cfg)
	srv.addAssignment(inTerm(shell("att-acked", "true", nil), 1, 0))
	srv.waitDone(t, "att-acked")
	report := filepath.Join(dir, reportsDir, "att-acked.json")

	// An ack from the deposed owner of shard 1 does not make the agent
	// forget the report: that owner's view may not hold it at all.
	stale := &tandem.SyncResponse{ServerID: "rm-old", Terms: []tandem.ShardTerm{term(1, 10)},
		Ack: []tandem.Ack{{AttemptID: "att-acked", Shard: 1, Epoch: 10}}}
	out, err := a.apply(stale, "test")
	if err != nil || out.acted || out.refused != 1 {
		t.Fatalf("stale ack: got %+v, %v; want 1 item refused, nothing done", out, err)
	}
	if got := a.Status().Unacknowledged; !slices.Equal(got, []string{"att-acked"}) {
		t.Errorf("unacknowledged after a stale ack: got %v, want [att-acked]", got)
	}
	if _, err := os.Stat(report); err != nil {
		t.Errorf("report file after a stale ack: %v, want it kept", err)
	}
	n := len(srv.doneReports("att-acked"))
	waitFor(t, "the report to be sent again", func() bool { return len(srv.doneReports("att-acked")) > n })

	// The current owner's ack is obeyed.
	srv.update(func() { srv.noAck = false })
	waitFor(t, "the report to be forgotten", func() bool { return len(a.Status().Unacknowledged) == 0 })
	if _, err := os.Stat(report); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("report file after the owner's ack: got %v, want not-exist", err)
	}
}

func TestEpochFile(t *testing.T) {
	t.Run("legacy integer is shard 0's epoch", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, epochFile), []byte("12\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		srv := newFakeServer(t, "rm-old", term(0, 11))
		count := filepath.Join(t.TempDir(), "count")
		srv.addAssignment(shell("att-old", `echo launched >> "$COUNT"`, map[string]string{"COUNT": count}))
		a, logs := startAgent(t, testConfig(t, dir, srv.URL()))
		if got := a.Status().Epochs; len(got) != 1 || got[0] != 12 {
			t.Errorf("epochs: got %v, want map[0:12]", got)
		}
		waitFor(t, "the refusal of epoch 11", func() bool {
			l := refusals(logs.String())
			return len(l) > 0 && strings.Contains(l[0], "refused.0.epoch=11 refused.0.highest_epoch=12")
		})
		// The next new epoch rewrites the file in the new format.
		srv.setTerms(term(0, 11), term(4, 3))
		want := `{"0":12,"4":3}` + "\n"
		waitFor(t, "the epoch file in the new format", func() bool {
			b, _ := os.ReadFile(filepath.Join(dir, epochFile))
			return string(b) == want
		})
		if got := lines(t, count); len(got) != 0 {
			t.Errorf("launches of epoch 11: got %d, want 0", len(got))
		}
	})

	t.Run("corrupt file refuses to start", func(t *testing.T) {
		for _, content := range []string{"", "abc", "-1", "12 13", "null", "{", `{"x":1}`, `{"0":-3}`, `{"0":1} {}`, `[1]`} {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, epochFile), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			a, err := New(testConfig(t, dir, deadURL(t)))
			if err != nil {
				t.Fatal(err)
			}
			err = a.Start(context.Background())
			if err == nil {
				a.Close()
				t.Errorf("epoch file %q: the agent started, want it refused", content)
				continue
			}
			if !strings.Contains(err.Error(), "epoch file") || !strings.Contains(err.Error(), "corrupt") {
				t.Errorf("epoch file %q: got %v, want a corrupt epoch file error", content, err)
			}
		}
	})

	t.Run("new epochs are on disk before anything is launched", func(t *testing.T) {
		dir := t.TempDir()
		srv := newFakeServer(t, "rm1", term(5, 40))
		// The attempt comes in the answer that brings epoch 40, and
		// succeeds only if the epoch file has it when the attempt starts.
		srv.addAssignment(inTerm(shell("att-check", `grep -q '"5":40' "$EPOCHS"`, map[string]string{"EPOCHS": filepath.Join(dir, epochFile)}), 5, 0))
		startAgent(t, testConfig(t, dir, srv.URL()))
		if r := srv.waitDone(t, "att-check"); r.State != tandem.AttemptSucceeded {
			t.Errorf("att-check: got %s (%s), want succeeded: the epoch was not on disk when it started", r.State, r.Reason)
		}
	})

	t.Run("nothing is done when the epoch cannot be recorded", func(t *testing.T) {
		dir := t.TempDir()
		a, _ := startAgent(t, testConfig(t, dir, newFakeServer(t, "standby").URL()))
		// A directory in the file's place makes its replacement fail.
		path := filepath.Join(dir, epochFile)
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
		count := filepath.Join(t.TempDir(), "count")
		resp := &tandem.SyncResponse{ServerID: "rm2", Terms: []tandem.ShardTerm{term(2, 7)},
			Assign: []tandem.Assignment{inTerm(shell("att-nofile", `echo launched >> "$COUNT"`, map[string]string{"COUNT": count}), 2, 7)}}
		_, err := a.apply(resp, "test")
		var se *stateError
		if !errors.As(err, &se) {
			t.Fatalf("apply: got %v, want a *stateError", err)
		}
		if got := a.Status().Epochs; len(got) != 0 {
			t.Errorf("epochs after the failed write: got %v, want none", got)
		}
		if got := lines(t, filepath.Join(dir, ledgerFile)); len(got) != 0 {
			t.Errorf("ledger after the failed write: got %q, want empty", got)
		}
		// Once the file can be written, the same answer is acted on.
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if out, err := a.apply(resp, "test"); err != nil || !out.acted {
			t.Fatalf("apply: got %+v, %v; want the attempt launched", out, err)
		}
		waitFor(t, "the launch", func() bool { return len(lines(t, count)) == 1 })
		if b, err := os.ReadFile(path); err != nil || string(b) != `{"2":7}`+"\n" {
			t.Errorf("epoch file: got %q (%v), want %q", b, err, `{"2":7}`+"\n")
		}
	})
}
