package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		runHelperAgent()
		return
	}
	os.Exit(m.Run())
}

// logBuffer collects an agent's logs for assertions, and prints them when a
// test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testConfig returns a configuration for an agent on dir talking to servers,
// with short waits. Its attempts run as the test's own user, root included,
// since they write to the test's private temp dirs; user_test.go tests
// the defaults.
func testConfig(t *testing.T, dir string, servers ...string) Config {
	t.Helper()
	return Config{
		ID:        "agent1",
		Servers:   servers,
		WorkDir:   dir,
		Capacity:  tandem.Resources{CPU: 2, MemoryMB: 1024},
		Labels:    map[string]string{"zone": "test"},
		PollWait:  2 * time.Second,
		KillGrace: 300 * time.Millisecond,
		RunAs:     testUser(t),
		AllowRoot: true,
	}
}

// startAgent starts an agent with cfg and closes it when the test ends,
// killing whatever attempts are left running.
func startAgent(t *testing.T, cfg Config) (*Agent, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		stopAgent(t, a)
		if t.Failed() {
			t.Logf("logs of agent %s:\n%s", cfg.ID, logs)
		}
	})
	return a, logs
}

// stopAgent closes a and kills the process groups of attempts it left
// running (Close leaves them to die with the process, which in a test lives on).
func stopAgent(t *testing.T, a *Agent) {
	t.Helper()
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.running {
		at.signalGroup(syscall.SIGKILL)
	}
}

// shell returns an assignment of attempt id running script with sh -c.
func shell(id, script string, env map[string]string) tandem.Assignment {
	return tandem.Assignment{AttemptID: id, JobID: "job-" + id, Spec: tandem.JobSpec{
		Command: []string{"sh", "-c", script}, Env: env,
	}}
}

// inTerm returns as vouched for by the owner of shard at epoch.
func inTerm(as tandem.Assignment, shard int, epoch int64) tandem.Assignment {
	as.Shard, as.Epoch = shard, epoch
	return as
}

// sessionName is the name of an agent's session with the server at url.
func sessionName(t *testing.T, url string) string {
	t.Helper()
	e, err := endpoint.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	return e.Key
}

// deadURL returns the URL of a port nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	return url
}

// gateScript waits for the file $GATE to exist.
const gateScript = `while [ ! -e "$GATE" ]; do sleep 0.01; done`

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// lines returns the lines of a file, or none if it does not exist.
func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

func getLog(t *testing.T, a *Agent, id, query string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(a.URL() + "/v1/attempts/" + id + "/logs" + query)
	if err != nil {
		t.Fatalf("GET logs: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read logs: %v", err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// gone reports whether process pid has exited (a zombie counts as exited).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "pid file "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

func TestAttemptRunsReportsAndServesItsLog(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 7))
	dir := t.TempDir()
	a, _ := startAgent(t, testConfig(t, dir, srv.URL()))
	gate := filepath.Join(t.TempDir(), "gate")

	srv.addAssignment(shell("att-1", "echo hello; "+gateScript, map[string]string{"GATE": gate}))
	run := srv.waitRunning(t, "att-1")
	if run.State != tandem.AttemptRunning || run.JobID != "job-att-1" || run.PID <= 0 || run.StartedAt == nil {
		t.Errorf("running report: got %+v, want state running, job job-att-1, a PID and a start time", run)
	}
	touch(t, gate)
	done := srv.waitDone(t, "att-1")
	if done.State != tandem.AttemptSucceeded || done.ExitCode == nil || *done.ExitCode != 0 || done.Reason != "" {
		t.Errorf("done report: got %+v, want succeeded with exit code 0", done)
	}
	if done.PID != run.PID || done.StartedAt == nil || !done.StartedAt.Equal(*run.StartedAt) || done.EndedAt == nil || done.EndedAt.Before(*done.StartedAt) {
		t.Errorf("done report: got pid %d, started %v, ended %v; want pid %d, started %v, ended after", done.PID, done.StartedAt, done.EndedAt, run.PID, run.StartedAt)
	}

	code, ctype, body := getLog(t, a, "att-1", "")
	if code != http.StatusOK || body != "hello\n" {
		t.Errorf("GET log: got %d %q, want 200 %q", code, body, "hello\n")
	}
	if !strings.HasPrefix(ctype, "text/plain") {
		t.Errorf("log Content-Type: got %q, want text/plain", ctype)
	}
	if code, _, body := getLog(t, a, "att-1", "?offset=2"); code != http.StatusOK || body != "llo\n" {
		t.Errorf("GET log from offset 2: got %d %q, want 200 %q", code, body, "llo\n")
	}

	// The acknowledgement makes the agent forget the report, on disk too.
	waitFor(t, "the report to be forgotten after its acknowledgement", func() bool {
		return len(a.Status().Unacknowledged) == 0
	})
	if _, err := os.Stat(filepath.Join(dir, reportsDir, "att-1.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("report file after the ack: got err %v, want not-exist", err)
	}
	if got := srv.doneReports("att-1"); len(got) != 1 {
		t.Errorf("Done reports of att-1: got %d, want 1 (acknowledged at once)", len(got))
	}

	req, _ := srv.lastSync()
	info := req.Agent
	if info.ID != "agent1" || info.URL != a.URL() || info.Version != tandem.Version || info.PID != os.Getpid() ||
		info.Capacity != (tandem.Resources{CPU: 2, MemoryMB: 1024}) || info.Labels["zone"] != "test" || info.StartedAt.IsZero() {
		t.Errorf("agent info: got %+v", info)
	}
	if len(req.Epochs) != 1 || req.Epochs[0] != 7 || req.WaitMS != 2000 || req.Seq == 0 || req.Session != sessionName(t, srv.URL()) {
		t.Errorf("sync: got epochs %v, wait_ms %d, session %q, seq %d; want map[0:7], 2000, %q, > 0",
			req.Epochs, req.WaitMS, req.Session, req.Seq, sessionName(t, srv.URL()))
	}
}

func TestSyncSequenceNumbersIncrease(t *testing.T) {
	owner := newFakeServer(t, "rm1", term(0, 1))
	owner.noAck = true // the reports keep going to every server
	standby := newFakeServer(t, "rm2")
	startAgent(t, testConfig(t, t.TempDir(), owner.URL(), standby.URL()))
	// Nothing has happened locally yet, so nothing cancelled the first sync
	// of either session before it was sent.
	waitFor(t, "a sync at each server", func() bool { return owner.syncCount() > 0 && standby.syncCount() > 0 })
	for i := range 3 {
		owner.addAssignment(shell(fmt.Sprintf("seq-%d", i), "true", nil))
		owner.waitDone(t, fmt.Sprintf("seq-%d", i))
		standby.waitDone(t, fmt.Sprintf("seq-%d", i))
	}
	for _, srv := range []*fakeServer{owner, standby} {
		srv.mu.Lock()
		syncs := slices.Clone(srv.syncs)
		srv.mu.Unlock()
		// Each session numbers its own syncs from 1. A cancelled poll and
		// the sync that replaced it may reach the server in either order, so
		// arrival order proves nothing; each sync must carry a sequence
		// number of its own, and they must grow overall.
		if syncs[0].Seq != 1 {
			t.Errorf("%s: first sync has seq %d, want 1", srv.id, syncs[0].Seq)
		}
		seen := map[uint64]bool{}
		for i, s := range syncs {
			if s.Session != sessionName(t, srv.URL()) {
				t.Errorf("%s: sync %d has session %q, want %q", srv.id, i, s.Session, sessionName(t, srv.URL()))
			}
			if s.Seq == 0 || seen[s.Seq] {
				t.Fatalf("%s: sync %d has seq %d: want a new, non-zero number", srv.id, i, s.Seq)
			}
			seen[s.Seq] = true
		}
		if n := len(syncs); n < 2 || syncs[n-1].Seq <= syncs[0].Seq {
			t.Fatalf("%s: %d syncs, the last with seq %d, the first %d: want growth", srv.id, n, syncs[n-1].Seq, syncs[0].Seq)
		}
	}
}

func TestAttemptOutcomes(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 1), term(3, 6))
	dir := t.TempDir()
	a, _ := startAgent(t, testConfig(t, dir, srv.URL()))
	own := t.TempDir()
	ownReal, err := filepath.EvalSymlinks(own)
	if err != nil {
		t.Fatal(err)
	}
	defReal, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	defReal = filepath.Join(defReal, attemptsDir, "att-env", "work")
	noExec := filepath.Join(own, "not-executable") // no x bit: not even root may exec it
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pwdIs := `test "$(pwd -P)" = "$WANT" || { echo "pwd $(pwd -P), want $WANT"; exit 9; }`

	code := func(n int) *int { return &n }
	tests := []struct {
		name   string
		as     tandem.Assignment
		state  tandem.AttemptState
		code   *int
		signal string
		reason string // exact, or a prefix when it ends in "..."
	}{
		{name: "exit 0", as: shell("att-ok", "exit 0", nil), state: tandem.AttemptSucceeded, code: code(0)},
		{name: "exit 3", as: shell("att-exit3", "exit 3", nil), state: tandem.AttemptFailed, code: code(3), reason: "exit status 3"},
		{
			name:   "missing executable",
			as:     tandem.Assignment{AttemptID: "att-nosuch", JobID: "job-x", Spec: tandem.JobSpec{Command: []string{"tandem-no-such-command"}}},
			state:  tandem.AttemptFailed,
			reason: `cannot start "tandem-no-such-command": exec: "tandem-no-such-command": executable file not found in $PATH`,
		},
		{
			name:   "not executable",
			as:     tandem.Assignment{AttemptID: "att-noexec", JobID: "job-x", Spec: tandem.JobSpec{Command: []string{noExec}}},
			state:  tandem.AttemptFailed,
			reason: fmt.Sprintf(`cannot start %q: fork/exec %s: permission denied`, noExec, noExec),
		},
		{
			name:   "missing workdir",
			as:     tandem.Assignment{AttemptID: "att-nodir", JobID: "job-x", Spec: tandem.JobSpec{Command: []string{"true"}, WorkDir: "/nonexistent/tandem"}},
			state:  tandem.AttemptFailed,
			reason: `cannot start "true": workdir "/nonexistent/tandem" does not exist on agent agent1`,
		},
		{name: "killed by a signal", as: shell("att-sig", "kill -KILL $$", nil), state: tandem.AttemptFailed, signal: "killed", reason: "signal: killed"},
		{
			name: "environment and default work dir",
			as: inTerm(shell("att-env", `test "$TANDEM_JOB_ID" = job-att-env && test "$TANDEM_ATTEMPT_ID" = att-env && `+
				`test "$TANDEM_AGENT_ID" = agent1 && test "$TANDEM_SHARD" = 3 && test "$TANDEM_EPOCH" = 6 && test "$FOO" = bar && `+pwdIs,
				map[string]string{"FOO": "bar", "WANT": defReal}), 3, 0),
			state: tandem.AttemptSucceeded, code: code(0),
		},
		{
			name: "own work dir",
			as: func() tandem.Assignment {
				as := shell("att-wd", pwdIs, map[string]string{"WANT": ownReal})
				as.Spec.WorkDir = own
				return as
			}(),
			state: tandem.AttemptSucceeded, code: code(0),
		},
	}
	for _, tt := range tests {
		srv.addAssignment(tt.as)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := srv.waitDone(t, tt.as.AttemptID)
			if r.State != tt.state {
				t.Errorf("state: got %s, want %s (reason %q)", r.State, tt.state, r.Reason)
			}
			switch {
			case tt.code == nil && r.ExitCode != nil:
				t.Errorf("exit code: got %d, want none", *r.ExitCode)
			case tt.code != nil && (r.ExitCode == nil || *r.ExitCode != *tt.code):
				t.Errorf("exit code: got %v, want %d", r.ExitCode, *tt.code)
			}
			if r.Signal != tt.signal {
				t.Errorf("signal: got %q, want %q", r.Signal, tt.signal)
			}
			if r.Reason != tt.reason {
				t.Errorf("reason: got %q, want %q", r.Reason, tt.reason)
			}
			if r.EndedAt == nil {
				t.Errorf("no end time")
			}
		})
	}
	if t.Failed() {
		_, _, body := getLog(t, a, "att-env", "")
		t.Logf("log of att-env: %q", body)
	}

	// The agent keeps working after all that.
	srv.addAssignment(shell("att-after", "echo still here", nil))
	if r := srv.waitDone(t, "att-after"); r.State != tandem.AttemptSucceeded {
		t.Errorf("attempt after the failures: got %s (%s), want succeeded", r.State, r.Reason)
	}
	if _, _, body := getLog(t, a, "att-after", ""); body != "still here\n" {
		t.Errorf("log: got %q, want %q", body, "still here\n")
	}
}

func TestAssignmentLaunchedOnce(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 3))
	srv.resend = true // every answer carries the assignment, even once reported
	dir := t.TempDir()
	a, _ := startAgent(t, testConfig(t, dir, srv.URL()))
	tmp := t.TempDir()
	count, gate := filepath.Join(tmp, "count"), filepath.Join(tmp, "gate")
	as := shell("att-once", `echo launched >> "$COUNT"; `+gateScript, map[string]string{"COUNT": count, "GATE": gate})

	// The same assignment, from the fake's answers and from many concurrent
	// answers at once.
	resp := &tandem.SyncResponse{ServerID: "rm1", Terms: []tandem.ShardTerm{term(0, 3)}, Assign: []tandem.Assignment{inTerm(as, 0, 3)}}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, err := a.apply(resp, "test"); err != nil {
					t.Errorf("apply: %v", err)
				}
			}
		}()
	}
	srv.addAssignment(as)
	wg.Wait()
	srv.waitRunning(t, "att-once")
	touch(t, gate)
	if r := srv.waitDone(t, "att-once"); r.State != tandem.AttemptSucceeded {
		t.Fatalf("state: got %s (%s), want succeeded", r.State, r.Reason)
	}
	// Acknowledged, and still assigned again and again.
	waitFor(t, "the acknowledgement", func() bool { return len(a.Status().Unacknowledged) == 0 })
	for range 10 {
		if _, err := a.apply(resp, "test"); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	n := srv.syncCount()
	waitFor(t, "more syncs", func() bool { return srv.syncCount() > n+5 })

	if got := lines(t, count); len(got) != 1 {
		t.Errorf("launches: got %d, want 1", len(got))
	}
	for _, r := range srv.doneReports("att-once") {
		if r.State != tandem.AttemptSucceeded {
			t.Errorf("Done report: got %s (%s), want only succeeded", r.State, r.Reason)
		}
	}
	if got := lines(t, filepath.Join(dir, ledgerFile)); len(got) != 1 || got[0] != "att-once" {
		t.Errorf("ledger: got %q, want [att-once]", got)
	}
}

func TestRestartKeepsLedgerAndReports(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 4))
	srv.noAck = true
	dir := t.TempDir()
	cfg := testConfig(t, dir, srv.URL())
	a1, _ := startAgent(t, cfg)
	count := filepath.Join(t.TempDir(), "count")
	as := shell("att-r", `echo launched >> "$COUNT"; echo out`, map[string]string{"COUNT": count})
	srv.addAssignment(as)
	if r := srv.waitDone(t, "att-r"); r.State != tandem.AttemptSucceeded {
		t.Fatalf("state: got %s (%s), want succeeded", r.State, r.Reason)
	}
	stopAgent(t, a1)

	// The restarted agent re-sends the unacknowledged report, and does not
	// launch the attempt again although it is assigned in every answer.
	srv.update(func() { srv.resend = true })
	a2, _ := startAgent(t, cfg)
	started := a2.Status().Agent.StartedAt
	waitFor(t, "the restarted agent to re-send the report", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for _, s := range srv.syncs {
			if s.Agent.StartedAt.Equal(started) && len(s.Done) == 1 && s.Done[0].AttemptID == "att-r" && s.Done[0].State == tandem.AttemptSucceeded {
				return true
			}
		}
		return false
	})
	n := srv.syncCount()
	waitFor(t, "more syncs", func() bool { return srv.syncCount() > n+5 })
	if got := lines(t, count); len(got) != 1 {
		t.Errorf("launches: got %d, want 1", len(got))
	}
	for _, r := range srv.doneReports("att-r") {
		if r.State != tandem.AttemptSucceeded {
			t.Errorf("Done report: got %s (%s), want only succeeded", r.State, r.Reason)
		}
	}
	if code, _, body := getLog(t, a2, "att-r", ""); code != http.StatusOK || body != "out\n" {
		t.Errorf("log after the restart: got %d %q, want 200 %q", code, body, "out\n")
	}

	// Once acknowledged, the report is gone for good.
	srv.update(func() { srv.noAck, srv.resend = false, false })
	waitFor(t, "the acknowledgement", func() bool { return len(a2.Status().Unacknowledged) == 0 })
	stopAgent(t, a2)
	a3, _ := startAgent(t, cfg)
	if got := a3.Status().Unacknowledged; len(got) != 0 {
		t.Errorf("reports after an acknowledged restart: got %v, want none", got)
	}
	// Only the ledger remembers the attempt now; it is still never
	// launched again (a restarted agent cannot tell it from one that died
	// with its predecessor, so it reports it lost).
	srv.update(func() { srv.resend = true })
	n = srv.syncCount()
	waitFor(t, "more syncs", func() bool { return srv.syncCount() > n+5 })
	if got := lines(t, count); len(got) != 1 {
		t.Errorf("launches after an acknowledged restart: got %d, want 1", len(got))
	}
}

func TestAssignmentInLedgerReportedLost(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 1))
	dir := t.TempDir()
	// An attempt launched by an earlier agent process that left no trace
	// but its ledger line (a crash before the running marker was written).
	if err := os.WriteFile(filepath.Join(dir, ledgerFile), []byte("att-old\natt-torn"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, _ := startAgent(t, testConfig(t, dir, srv.URL()))
	count := filepath.Join(t.TempDir(), "count")
	for _, id := range []string{"att-old", "att-torn"} {
		srv.addAssignment(shell(id, `echo launched >> "$COUNT"`, map[string]string{"COUNT": count}))
		r := srv.waitDone(t, id)
		if r.State != tandem.AttemptLost || r.Reason != lostReason || r.JobID != "job-"+id {
			t.Errorf("%s: got %s (%q) of job %s, want lost (%q) of job-%s", id, r.State, r.Reason, r.JobID, lostReason, id)
		}
	}
	if got := lines(t, count); len(got) != 0 {
		t.Errorf("launches: got %d, want 0", len(got))
	}
	// A new attempt still runs, and the ledger stays one ID per line.
	srv.addAssignment(shell("att-new", "true", nil))
	if r := srv.waitDone(t, "att-new"); r.State != tandem.AttemptSucceeded {
		t.Errorf("att-new: got %s (%s), want succeeded", r.State, r.Reason)
	}
	stopAgent(t, a)
	if got := lines(t, filepath.Join(dir, ledgerFile)); strings.Join(got, " ") != "att-old att-torn att-new" {
		t.Errorf("ledger: got %q, want [att-old att-torn att-new]", got)
	}
}

func TestDeposedServerRefused(t *testing.T) {
	old := newFakeServer(t, "rm-old", term(0, 5))
	next := newFakeServer(t, "rm-next") // a standby
	dir := t.TempDir()
	cfg := testConfig(t, dir, old.URL(), next.URL())
	a, logs := startAgent(t, cfg)
	tmp := t.TempDir()
	gate, count := filepath.Join(tmp, "gate"), filepath.Join(tmp, "count")
	old.addAssignment(shell("att-long", gateScript, map[string]string{"GATE": gate}))
	old.waitRunning(t, "att-long")
	if got := a.Status().Epochs[0]; got != 5 {
		t.Fatalf("epoch of shard 0: got %d, want 5", got)
	}

	// rm-old goes silent and rm-next takes shard 0 over at epoch 9 ...
	old.update(func() { old.status = http.StatusServiceUnavailable })
	next.setTerms(term(0, 9))
	next.waitRunning(t, "att-long")
	waitFor(t, "epoch 9 for shard 0", func() bool { return a.Status().Epochs[0] == 9 })
	// ... and rm-old comes back, still believing it owns shard 0 at 5, with
	// an assignment and a kill order. The agent must refuse both.
	old.update(func() {
		old.status = 0
		old.assign["att-stale"] = shell("att-stale", `echo launched >> "$COUNT"`, map[string]string{"COUNT": count})
		old.kill["att-long"] = tandem.KillOrder{AttemptID: "att-long", Reason: "stale"}
	})
	const refusal = "refused items of deposed shard owners"
	waitFor(t, "the refusal to be logged", func() bool { return strings.Contains(logs.String(), refusal) })
	n := old.syncCount()
	waitFor(t, "more syncs to the deposed server", func() bool { return old.syncCount() > n+3 })
	if got := lines(t, count); len(got) != 0 {
		t.Errorf("launches from the deposed server: got %d, want 0", len(got))
	}
	if got := a.Status().Running; len(got) != 1 || got[0] != "att-long" {
		t.Errorf("running after the deposed server's kill order: got %v, want [att-long]", got)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, refusal) && !strings.Contains(line, " refused.0.epoch=5 refused.0.highest_epoch=9 ") {
			t.Errorf("the refusal's log should carry both epochs of shard 0: %s", line)
		}
	}
	if !strings.Contains(logs.String(), "refused.0.assignments=1 refused.0.kills=1") {
		t.Errorf("no refusal log counts the assignment and the kill order:\n%s", logs)
	}
	if s, _ := old.lastSync(); s.Epochs[0] != 9 {
		t.Errorf("epoch of shard 0 sent to the deposed server: got %d, want 9", s.Epochs[0])
	}

	// The highest epoch survives a restart: the new agent refuses rm-old at once.
	stopAgent(t, a)
	if b, err := os.ReadFile(filepath.Join(dir, epochFile)); err != nil || string(b) != "{\"0\":9}\n" {
		t.Errorf("epoch file: got %q (%v), want %q", b, err, "{\"0\":9}\n")
	}
	touch(t, gate)
	cfg.Servers = []string{old.URL()}
	a2, logs2 := startAgent(t, cfg)
	if got := a2.Status().Epochs; len(got) != 1 || got[0] != 9 {
		t.Errorf("epochs after the restart: got %v, want map[0:9]", got)
	}
	waitFor(t, "the restarted agent's refusal", func() bool { return strings.Contains(logs2.String(), refusal) })
	if got := lines(t, count); len(got) != 0 {
		t.Errorf("launches from the deposed server after the restart: got %d, want 0", len(got))
	}
}

func TestKillOrder(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 1))
	a, _ := startAgent(t, testConfig(t, t.TempDir(), srv.URL()))
	tmp := t.TempDir()
	tests := []struct {
		name   string
		script string
	}{
		{name: "dies on SIGTERM", script: `sleep 600 & echo $! > "$CHILD"; wait`},
		{name: "ignores SIGTERM", script: `trap "" TERM; sleep 600 & echo $! > "$CHILD"; wait; wait`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("att-kill-%d", i)
			child := filepath.Join(tmp, id+".child")
			srv.addAssignment(shell(id, tt.script, map[string]string{"CHILD": child}))
			run := srv.waitRunning(t, id)
			childPID := readPID(t, child)
			srv.addKill(tandem.KillOrder{AttemptID: id, Reason: "killed by request"})
			r := srv.waitDone(t, id)
			if r.State != tandem.AttemptKilled || r.Reason != "killed by request" {
				t.Errorf("got %s (%q), want killed (%q)", r.State, r.Reason, "killed by request")
			}
			waitFor(t, "the attempt's processes to be gone", func() bool { return gone(run.PID) && gone(childPID) })
		})
	}
	// Assigned and killed in one answer: it starts and is killed.
	both := &tandem.SyncResponse{Terms: []tandem.ShardTerm{term(0, 1)}, Assign: []tandem.Assignment{inTerm(shell("att-both", "sleep 600", nil), 0, 1)},
		Kill: []tandem.KillOrder{{AttemptID: "att-both", Shard: 0, Epoch: 1, Reason: "changed my mind"}}}
	if _, err := a.apply(both, "test"); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if r := srv.waitDone(t, "att-both"); r.State != tandem.AttemptKilled || r.Reason != "changed my mind" {
		t.Errorf("assigned and killed at once: got %s (%q), want killed (%q)", r.State, r.Reason, "changed my mind")
	}
	// A kill order for an attempt that is not running is ignored.
	out, err := a.apply(&tandem.SyncResponse{Kill: []tandem.KillOrder{{AttemptID: "att-unknown", Epoch: 1}, {AttemptID: "att-kill-0", Epoch: 1}}}, "test")
	if err != nil || out.acted || out.refused != 0 {
		t.Errorf("apply: got %+v, %v; want nothing done, no error", out, err)
	}

	// A kill order of another shard (its owner's epoch vouches for nothing
	// about this attempt) is ignored too.
	srv.addAssignment(shell("att-other", "sleep 600", nil))
	srv.waitRunning(t, "att-other")
	out, err = a.apply(&tandem.SyncResponse{Terms: []tandem.ShardTerm{term(2, 4)},
		Kill: []tandem.KillOrder{{AttemptID: "att-other", Shard: 2, Epoch: 4, Reason: "wrong shard"}}}, "test")
	if err != nil || out.acted {
		t.Errorf("kill order of another shard: got %+v, %v; want nothing done", out, err)
	}
	if got := a.Status().Running; !slices.Contains(got, "att-other") {
		t.Errorf("running after a kill order of another shard: got %v, want att-other in it", got)
	}
	srv.addKill(tandem.KillOrder{AttemptID: "att-other", Reason: "right shard"})
	if r := srv.waitDone(t, "att-other"); r.State != tandem.AttemptKilled || r.Reason != "right shard" {
		t.Errorf("att-other: got %s (%q), want killed (%q)", r.State, r.Reason, "right shard")
	}
}

func TestTimeout(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 1))
	startAgent(t, testConfig(t, t.TempDir(), srv.URL()))
	as := shell("att-slow", `trap "" TERM; sleep 600`, nil)
	as.Spec.Timeout = tandem.Duration(300 * time.Millisecond)
	srv.addAssignment(as)
	r := srv.waitDone(t, "att-slow")
	if r.State != tandem.AttemptFailed || r.Reason != "timed out after 300ms" || r.Signal != "killed" {
		t.Errorf("got %s (%q, signal %q), want failed (%q, signal killed)", r.State, r.Reason, r.Signal, "timed out after 300ms")
	}
	if d := r.EndedAt.Sub(*r.StartedAt); d < 300*time.Millisecond {
		t.Errorf("ran for %s, want at least the timeout", d)
	}
}

func TestBackoff(t *testing.T) {
	a, err := New(Config{ID: "a", Servers: []string{"http://127.0.0.1:1"}, WorkDir: t.TempDir(), Capacity: tandem.Resources{CPU: 1, MemoryMB: 1}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		failures int
		max      time.Duration // nominal; jitter takes it down to half
	}{{1, 0}, {2, 20 * time.Millisecond}, {3, 40 * time.Millisecond}, {4, 80 * time.Millisecond}, {5, 160 * time.Millisecond}, {6, 250 * time.Millisecond}, {50, 250 * time.Millisecond}}
	for _, tt := range tests {
		for range 20 {
			if got := a.backoff(tt.failures); got < tt.max/2 || got > tt.max {
				t.Errorf("backoff after %d failures: got %s, want in [%s, %s]", tt.failures, got, tt.max/2, tt.max)
			}
		}
	}
}

func TestFollowLog(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 1))
	a, _ := startAgent(t, testConfig(t, t.TempDir(), srv.URL()))
	tmp := t.TempDir()
	g1, g2 := filepath.Join(tmp, "g1"), filepath.Join(tmp, "g2")
	srv.addAssignment(shell("att-follow",
		`echo one; while [ ! -e "$G1" ]; do sleep 0.01; done; echo two; while [ ! -e "$G2" ]; do sleep 0.01; done; echo three`,
		map[string]string{"G1": g1, "G2": g2}))
	srv.waitRunning(t, "att-follow")

	resp, err := http.Get(a.URL() + "/v1/attempts/att-follow/logs?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status: got %d, want 200", resp.StatusCode)
	}
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	// Bytes written after the request started arrive, and the stream ends
	// only when the attempt has.
	touch(t, g1)
	waitFor(t, "the second line in the file", func() bool {
		_, _, body := getLog(t, a, "att-follow", "")
		return body == "one\ntwo\n"
	})
	select {
	case s := <-got:
		t.Fatalf("the followed log ended while the attempt runs: %q", s)
	case <-time.After(300 * time.Millisecond):
	}
	touch(t, g2)
	select {
	case s := <-got:
		if s != "one\ntwo\nthree\n" {
			t.Errorf("followed log: got %q, want %q", s, "one\ntwo\nthree\n")
		}
	case <-time.After(waitTimeout):
		t.Fatal("the followed log did not end after the attempt ended")
	}

	// From an offset, on a finished attempt: ends at once.
	if code, _, body := getLog(t, a, "att-follow", "?follow=1&offset=4"); code != http.StatusOK || body != "two\nthree\n" {
		t.Errorf("followed log of a finished attempt from offset 4: got %d %q, want 200 %q", code, body, "two\nthree\n")
	}
}

func TestHTTPErrorsAndViews(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 3))
	a, _ := startAgent(t, testConfig(t, t.TempDir(), srv.URL()))
	waitFor(t, "a sync", func() bool { return a.Status().Epochs[0] == 3 })

	tests := []struct {
		path string
		code int
		err  string
	}{
		{"/v1/attempts/att-none/logs", http.StatusNotFound, tandem.ENOTFOUND},
		{"/v1/attempts/..%2f..%2fetc/logs", http.StatusNotFound, tandem.ENOTFOUND},
		{"/v1/attempts/att-none/logs?offset=-1", http.StatusBadRequest, tandem.EINVALID},
		{"/v1/nothing", http.StatusNotFound, tandem.ENOTFOUND},
	}
	for _, tt := range tests {
		resp, err := http.Get(a.URL() + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		var eb tandem.ErrorBody
		err = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != tt.code || err != nil || eb.Error == nil || eb.Error.Code != tt.err || eb.Error.Message == "" {
			t.Errorf("GET %s: got %d %+v (%v), want %d with code %s", tt.path, resp.StatusCode, eb.Error, err, tt.code, tt.err)
		}
	}

	var health map[string]string
	getJSON(t, a.URL()+"/healthz", &health)
	if health["status"] != "ok" || health["id"] != "agent1" {
		t.Errorf("healthz: got %v, want status ok, id agent1", health)
	}
	var st Status
	getJSON(t, a.URL()+"/v1/agent", &st)
	if st.Agent.ID != "agent1" || st.Running == nil || st.Unacknowledged == nil || st.Agent.URL != a.URL() ||
		len(st.Epochs) != 1 || st.Epochs[0] != 3 || len(st.Sessions) != 1 {
		t.Fatalf("/v1/agent: got %+v", st)
	}
	if s := st.Sessions[0]; s.URL != srv.URL() || s.ServerID != "rm1" || !s.Configured || s.Failures != 0 ||
		s.LastAnswer == nil || !slices.Equal(s.Terms, []tandem.ShardTerm{term(0, 3)}) {
		t.Errorf("/v1/agent session: got %+v, want %s, rm1, configured, no failures, an answer, shard 0 at epoch 3", s, srv.URL())
	}
	// The JSON names, which other tools read.
	var raw map[string]any
	getJSON(t, a.URL()+"/v1/agent", &raw)
	if epochs, ok := raw["epochs"].(map[string]any); !ok || epochs["0"] != 3.0 {
		t.Errorf(`/v1/agent "epochs": got %v, want {"0": 3}`, raw["epochs"])
	}
	sessions, _ := raw["sessions"].([]any)
	s0, _ := sessions[0].(map[string]any)
	for _, k := range []string{"url", "server_id", "configured", "terms", "failures", "last_answer"} {
		if _, ok := s0[k]; !ok {
			t.Errorf(`/v1/agent session: no %q in %v`, k, s0)
		}
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: got %d, want 200", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func TestNewValidates(t *testing.T) {
	base := func() Config {
		return Config{ID: "a1", Servers: []string{"http://127.0.0.1:7070"}, WorkDir: "/tmp/x"}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no id", func(c *Config) { c.ID = "" }, "invalid agent ID"},
		{"bad id", func(c *Config) { c.ID = "a/b" }, "invalid agent ID"},
		{"no servers", func(c *Config) { c.Servers = nil }, "no servers"},
		{"bad server scheme", func(c *Config) { c.Servers = []string{"ftp://x"} }, "scheme must be http"},
		{"server listed twice", func(c *Config) { c.Servers = []string{"http://a:80", "http://a"} }, "listed twice"},
		{"no work dir", func(c *Config) { c.WorkDir = "" }, "no work dir"},
		{"bad listen", func(c *Config) { c.Listen = "nope" }, "want host:port"},
		{"bad advertise", func(c *Config) { c.AdvertiseURL = "tcp://x" }, "advertise URL"},
		{"negative cpu", func(c *Config) { c.Capacity.CPU = -1 }, "must not be negative"},
		{"negative poll wait", func(c *Config) { c.PollWait = -time.Second }, "must not be negative"},
		{"negative idle poll wait", func(c *Config) { c.IdlePollWait = -time.Second }, "idle poll wait -1s must not be negative"},
		{"bad label", func(c *Config) { c.Labels = map[string]string{"": "x"} }, "label"},
		{"ok", func(*Config) {}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.mod(&cfg)
			a, err := New(cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			case tt.want == "":
				if a.cfg.Capacity.CPU <= 0 || a.cfg.Capacity.MemoryMB <= 0 || a.cfg.PollWait != DefaultPollWait || a.cfg.KillGrace != DefaultKillGrace {
					t.Errorf("defaults: got %+v", a.cfg)
				}
			}
		})
	}
}

func TestWorkDirLocked(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 1))
	cfg := testConfig(t, t.TempDir(), srv.URL())
	startAgent(t, cfg)
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Errorf("second agent on one work dir: got %v, want an in-use error", err)
	}
}

func TestMemTotal(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(p, []byte("MemFree: 1 kB\nMemTotal:       16318940 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := memTotalMB(p); err != nil || got != 15936 {
		t.Errorf("got %d, %v; want 15936", got, err)
	}
	if _, err := totalMemoryMB(); err != nil {
		t.Errorf("this machine: %v", err)
	}
}

// The helper agent runs in a child process (the test binary, re-executed),
// so a test can kill -9 it like a crashed agent.
const helperEnv = "TANDEM_AGENT_TEST_HELPER"

func runHelperAgent() {
	a, err := New(Config{
		ID: "agent1", Servers: []string{os.Getenv("HELPER_SERVER")}, WorkDir: os.Getenv("HELPER_DIR"),
		Capacity: tandem.Resources{CPU: 1, MemoryMB: 256}, PollWait: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		RunAs:  os.Getenv("HELPER_RUN_AS"), AllowRoot: os.Getenv("HELPER_ALLOW_ROOT") == "1",
	})
	if err == nil {
		err = a.Start(context.Background())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper agent:", err)
		os.Exit(1)
	}
	select {} // until killed
}

func TestCrashedAgentsAttemptsAreLostNotRelaunched(t *testing.T) {
	srv := newFakeServer(t, "rm1", term(0, 2))
	srv.resend = true
	dir := t.TempDir()
	var stderr logBuffer
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "HELPER_SERVER="+srv.URL(), "HELPER_DIR="+dir,
		"HELPER_RUN_AS="+testUser(t), "HELPER_ALLOW_ROOT=1")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("helper agent's logs:\n%s", stderr.String())
		}
	})
	tmp := t.TempDir()
	leader, child, count := filepath.Join(tmp, "leader"), filepath.Join(tmp, "child"), filepath.Join(tmp, "count")
	srv.addAssignment(shell("att-crash", `echo launched >> "$COUNT"; sleep 600 & echo $! > "$CHILD"; echo $$ > "$LEADER"; wait`,
		map[string]string{"COUNT": count, "CHILD": child, "LEADER": leader}))
	srv.waitRunning(t, "att-crash")
	leaderPID, childPID := readPID(t, leader), readPID(t, child)

	// kill -9 the agent: the attempt's leader dies with it (Pdeathsig) ...
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, "the attempt's leader to die with its agent", func() bool { return gone(leaderPID) })
	t.Cleanup(func() { _ = syscall.Kill(childPID, syscall.SIGKILL) })

	// ... and the restarted agent kills what is left of it, reports it lost,
	// and never launches it again, although it is assigned in every answer.
	srv.update(func() { srv.done = map[string][]tandem.AttemptReport{} })
	startAgent(t, testConfig(t, dir, srv.URL()))
	r := srv.waitDone(t, "att-crash")
	if r.State != tandem.AttemptLost || r.Reason != lostReason || r.JobID != "job-att-crash" {
		t.Errorf("got %s (%q) of job %q, want lost (%q) of job-att-crash", r.State, r.Reason, r.JobID, lostReason)
	}
	waitFor(t, "the attempt's orphaned child to be killed", func() bool { return gone(childPID) })
	n := srv.syncCount()
	waitFor(t, "more syncs", func() bool { return srv.syncCount() > n+5 })
	if got := lines(t, count); len(got) != 1 {
		t.Errorf("launches: got %d, want 1", len(got))
	}
	if _, err := os.Stat(filepath.Join(dir, runningDir, "att-crash")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("running marker after the restart: got %v, want not-exist", err)
	}
}
