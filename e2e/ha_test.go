package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/local"
)

// kill -9 of the active server process: another server becomes active, there
// is never more than one, and every acknowledged job survives.
func TestKill9OfActiveProcess(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"deposed by standbys", nil},
		{"lease expiry only", []string{"--depose-dead-active=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, 3, startEtcd(t), tc.extra...)
			first := waitActive(t, c)
			if n := countActive(t, c); n != 1 {
				t.Fatalf("active servers: got %d, want 1", n)
			}
			ctx := context.Background()
			cl := newClient(t, c.URLs())
			var acked []string
			for i := 0; i < 30; i++ {
				j, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: fmt.Sprint("j", i), Command: []string{"true"}}, client.SubmitOptions{})
				if err != nil {
					t.Fatalf("submit: %v", err)
				}
				acked = append(acked, j.ID)
			}
			killedAt := time.Now()
			if err := c.Kill(first); err != nil {
				t.Fatal(err)
			}
			j, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: "after", Command: []string{"true"}}, client.SubmitOptions{})
			if err != nil {
				t.Fatalf("submit after kill: %v", err)
			}
			t.Logf("kill -9 to first acknowledged submission: %s", time.Since(killedAt).Round(time.Millisecond))
			acked = append(acked, j.ID)
			next := waitActive(t, c, first)
			if n := countActive(t, c); n != 1 {
				t.Fatalf("active servers after failover: got %d, want 1", n)
			}
			list, err := cl.ListJobs(ctx, client.ListOptions{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			have := map[string]bool{}
			for _, j := range list.Jobs {
				have[j.ID] = true
			}
			for _, id := range acked {
				if !have[id] {
					t.Fatalf("acknowledged job %s is missing after the failover", id)
				}
			}
			if len(list.Jobs) != len(acked) {
				t.Fatalf("jobs: got %d, want %d", len(list.Jobs), len(acked))
			}
			t.Logf("%s took over from %s", c.Servers[next].ID, c.Servers[first].ID)
		})
	}
}

// A paused active (SIGSTOP for longer than its lease) is fenced: the write
// it was handling when it resumed is rejected and not stored, and it
// reports standby.
func TestPausedActiveIsFenced(t *testing.T) {
	c := startCluster(t, 3, startEtcd(t))
	a := waitActive(t, c)
	ctx := context.Background()
	before, err := c.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Signal(a, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			_ = c.Signal(a, syscall.SIGCONT)
		}
	}()

	// A write sent to the paused active: the kernel accepts the connection,
	// the process handles it only once it resumes, as a deposed active.
	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	hc := httpClient(t)
	hc.Timeout = 60 * time.Second
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, _ := http.NewRequest("POST", c.Servers[a].URL+"/v1/jobs", strings.NewReader(`{"name":"written-while-paused","command":["true"]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "paused-write")
	authorize(t, req)
	go func() {
		resp, err := hc.Do(req)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		res <- result{status: resp.StatusCode, body: string(b)}
	}()

	next := waitActive(t, c, a)
	after, err := c.Status(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	if after.Epoch <= before.Epoch {
		t.Fatalf("new epoch %d, want more than %d", after.Epoch, before.Epoch)
	}
	cl := newClient(t, []string{c.Servers[next].URL})
	if _, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: "by-new-active", Command: []string{"true"}}, client.SubmitOptions{}); err != nil {
		t.Fatal(err)
	}

	if err := c.Signal(a, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	paused = false
	r := <-res
	if r.err != nil {
		t.Fatalf("request to the paused server: %v", r.err)
	}
	if r.status == http.StatusCreated || r.status == http.StatusOK {
		t.Fatalf("the deposed active acknowledged a write: %d %s", r.status, r.body)
	}
	t.Logf("the resumed server answered its queued write with %d %s", r.status, strings.Join(strings.Fields(r.body), " "))

	deadline := time.Now().Add(10 * time.Second)
	for {
		// Its view catches up a moment after it resumes: standby first, then
		// naming the new active.
		st, err := c.Status(ctx, a)
		if err == nil && st.State == tandem.StateStandby && st.ActiveID == c.Servers[next].ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resumed server state: %+v %v, want standby naming %s as active", st, err, c.Servers[next].ID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	list, err := cl.ListJobs(ctx, client.ListOptions{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range list.Jobs {
		if j.Name == "written-while-paused" {
			t.Fatalf("a write by the deposed active is in the store: %+v", j)
		}
	}
	if len(list.Jobs) != 1 {
		t.Fatalf("jobs: got %d, want only the new active's 1", len(list.Jobs))
	}
	if n := countActive(t, c); n != 1 {
		t.Fatalf("active servers after resume: got %d, want 1", n)
	}
}

// Three servers with embedded etcd members and no other etcd elect an
// active and survive the loss of any one server (taking its etcd member
// with it).
func TestEmbeddedEtcdClusterSurvivesLossOfOneServer(t *testing.T) {
	c := startCluster(t, 3, nil)
	a := waitActive(t, c)
	ctx := context.Background()
	cl := newClient(t, c.URLs())
	var ids []string
	for i := 0; i < 10; i++ {
		j, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: []string{"true"}}, client.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	if err := c.Kill(a); err != nil {
		t.Fatal(err)
	}
	b := waitActive(t, c, a)
	if _, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: []string{"true"}}, client.SubmitOptions{}); err != nil {
		t.Fatalf("submit with one server down: %v", err)
	}
	for _, id := range ids {
		if _, err := cl.GetJob(ctx, id); err != nil {
			t.Fatalf("job %s after losing a server: %v", id, err)
		}
	}
	// The killed server comes back as a standby and catches up.
	if err := c.StartServer(a); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := c.WaitHealthy(wctx, a); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := c.Status(ctx, a)
		if err == nil && st.State == tandem.StateStandby && st.Jobs == len(ids)+1 && st.ActiveID == c.Servers[b].ID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted server: %+v %v, want a caught-up standby", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The admin CLI: yarn rmadmin's refusal without --forcemanual, success with
// it, graceful failover, health checks, and exit codes.
func TestAdminCLI(t *testing.T) {
	c := startCluster(t, 3, startEtcd(t))
	a := waitActive(t, c)
	env := []string{"TANDEM_SERVERS=" + strings.Join(c.URLs(), ","), "XDG_CONFIG_HOME=" + t.TempDir()}
	id := func(i int) string { return c.Servers[i].ID }

	out, _, code := runCLI(t, env, "admin", "get-service-state", id(a))
	if code != 0 || strings.TrimSpace(out) != "active" {
		t.Fatalf("get-service-state %s: %q exit %d, want active", id(a), out, code)
	}
	out, _, code = runCLI(t, env, "admin", "get-all-service-state")
	if code != 0 || strings.Count(out, "standby") != 2 || strings.Count(out, "active") != 1 {
		t.Fatalf("get-all-service-state: exit %d\n%s", code, out)
	}
	_, errOut, code := runCLI(t, env, "admin", "transition-to-standby", id(a))
	if code == 0 || !strings.Contains(errOut, "--forcemanual") {
		t.Fatalf("unforced transition-to-standby: exit %d, stderr %q; want a refusal naming --forcemanual", code, errOut)
	}
	if n := countActive(t, c); n != 1 || waitActive(t, c) != a {
		t.Fatal("a refused transition changed the active")
	}
	_, errOut, code = runCLI(t, env, "admin", "transition-to-standby", "--forcemanual", id(a))
	if code != 0 {
		t.Fatalf("forced transition-to-standby: exit %d: %s", code, errOut)
	}
	b := waitActive(t, c, a)

	to := a
	out, errOut, code = runCLI(t, env, "admin", "failover", id(b), id(to))
	if code != 0 || !strings.Contains(out, id(to)) {
		t.Fatalf("failover %s %s: exit %d: %s %s", id(b), id(to), code, out, errOut)
	}
	if got := waitActive(t, c); got != to {
		t.Fatalf("after failover the active is %s, want %s", id(got), id(to))
	}

	if _, _, code = runCLI(t, env, "admin", "check-health", id(b)); code != 0 {
		t.Fatalf("check-health of a live server: exit %d", code)
	}
	if err := c.Kill(b); err != nil {
		t.Fatal(err)
	}
	if _, _, code = runCLI(t, env, "admin", "check-health", c.Servers[b].URL); code == 0 {
		t.Fatal("check-health of a dead server exited 0")
	}

	out, _, code = runCLI(t, env, "admin", "history", "-o", "json")
	var events []tandem.FailoverEvent
	if code != 0 || json.Unmarshal([]byte(out), &events) != nil || len(events) < 3 {
		t.Fatalf("history -o json: exit %d, %d events\n%s", code, len(events), out)
	}

	out, _, code = runCLI(t, env, "job", "submit", "--name", "cli", "--", "echo", "hi")
	jobID := strings.TrimSpace(out)
	if code != 0 || jobID == "" {
		t.Fatalf("job submit: exit %d %q", code, out)
	}
	out, _, code = runCLI(t, env, "job", "get", jobID, "-o", "json")
	var j tandem.Job
	if code != 0 || json.Unmarshal([]byte(out), &j) != nil || j.ID != jobID || j.State != tandem.JobPending {
		t.Fatalf("job get -o json: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{
		{"server", "--bogus"},
		{"job", "submit"},
		{"admin", "failover", "only-one"},
		{"job", "list", "-o", "yaml"},
	} {
		if _, errOut, code := runCLI(t, env, args...); code == 0 || errOut == "" {
			t.Fatalf("tandem %v: exit %d, stderr %q; want a non-zero exit and a message", args, code, errOut)
		}
	}
	_, errOut, code = runCLI(t, env, "admin", "get-service-state", "rm9")
	if code == 0 || !strings.Contains(errOut, "rm9") {
		t.Fatalf("unknown server: exit %d %q", code, errOut)
	}
	if _, errOut, code = runCLI(t, env, "job", "get", "no-such-job"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("job get of a missing job: exit %d %q", code, errOut)
	}
}

// `tandem dev` starts a cluster of separate processes, answers, and on
// SIGTERM stops every one of them.
func TestDevStartsAndStopsEverything(t *testing.T) {
	base := freeBasePort(t, 3)
	dataDir := t.TempDir()
	cmd := exec.Command(binary, "dev", "--base-port", fmt.Sprint(base), "--data-dir", dataDir)
	var out syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dataDir, "*", "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("---- %s ----\n%s", l, tail(string(b), 30))
			}
		}
	})
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()

	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(out.String(), "Ctrl-C stops everything") {
		if time.Now().After(deadline) {
			t.Fatalf("tandem dev did not come up:\n%s", out.String())
		}
		select {
		case err := <-done:
			t.Fatalf("tandem dev exited early (%v):\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	pids := processPIDs(t, out.String())
	if len(pids) != 5 {
		t.Fatalf("dev printed %d PIDs, want 3 servers and 2 agents:\n%s", len(pids), out.String())
	}
	// A second dev on the same ports refuses at once, saying why, and does
	// not mistake the first cluster's servers for its own.
	_, errOut, code := runCLI(t, nil, "dev", "--base-port", fmt.Sprint(base))
	if code == 0 || !strings.Contains(errOut, "already in use") {
		t.Fatalf("second tandem dev on the same ports: exit %d, stderr %q", code, errOut)
	}
	// It is secured by default: the printed export lines are all a shell
	// needs; without the token, or without the CA, the CLI is refused.
	env := devExports(t, out.String())
	env = append(env, "XDG_CONFIG_HOME="+t.TempDir())
	for _, name := range []string{"TANDEM_SERVERS", "TANDEM_CACERT", "TANDEM_CLIENT_CERT", "TANDEM_CLIENT_KEY", "TANDEM_TOKEN"} {
		if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, name+"=") }) {
			t.Fatalf("tandem dev does not print export %s=...:\n%s", name, out.String())
		}
	}
	if !strings.Contains(envValue(env, "TANDEM_SERVERS"), "https://") {
		t.Fatalf("tandem dev's servers are not https: %v", env)
	}
	sub, errOut, code := runCLI(t, env, "job", "submit", "--", "echo", "hello")
	id := strings.TrimSpace(sub)
	if code != 0 || id == "" {
		t.Fatalf("job submit on the dev cluster with its exports: exit %d %q %s", code, sub, errOut)
	}
	if _, errOut, code := runCLI(t, env, "job", "wait", id); code != 0 {
		t.Fatalf("job wait %s: exit %d %s", id, code, errOut)
	}
	if logs, errOut, code := runCLI(t, env, "job", "logs", id); code != 0 || logs != "hello\n" {
		t.Fatalf("job logs %s: exit %d %q %s", id, code, logs, errOut)
	}
	if out, errOut, code := runCLI(t, env, "acl", "token", "self"); code != 0 || !strings.Contains(out, "management") {
		t.Fatalf("acl token self: exit %d %q %s; want the bootstrapped management token", code, out, errOut)
	}
	if _, errOut, code := runCLI(t, append(slices.Clone(env), "TANDEM_TOKEN="), "job", "list"); code != 1 || !strings.Contains(errOut, "requires a token") {
		t.Fatalf("job list without a token: exit %d %s; want 1 and a refusal", code, errOut)
	}
	if _, errOut, code := runCLI(t, append(slices.Clone(env), "TANDEM_CACERT=", "TANDEM_CLIENT_CERT=", "TANDEM_CLIENT_KEY="), "job", "list"); code != 1 || !strings.Contains(errOut, "certificate") {
		t.Fatalf("job list without the CA: exit %d %s; want 1 and a certificate error", code, errOut)
	}
	if st, errOut, code := runCLI(t, env, "supervise", "status"); code != 0 || !strings.Contains(st, "demo") {
		t.Fatalf("supervise status with dev's etcd exports: exit %d %q %s", code, st, errOut)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tandem dev exited with %v:\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("tandem dev did not stop within 30s:\n%s", out.String())
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Fatalf("process %d outlived tandem dev", pid)
		}
	}
}

// processPIDs reads the PID column of dev's table of servers and agents.
func processPIDs(t *testing.T, out string) []int {
	t.Helper()
	var pids []int
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && (strings.HasPrefix(f[0], "rm") || strings.HasPrefix(f[0], "agent")) && (strings.HasPrefix(f[1], "http://") || strings.HasPrefix(f[1], "https://")) {
			var pid int
			if _, err := fmt.Sscan(f[2], &pid); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// devExports reads the "export NAME=VALUE" lines tandem dev prints, as
// environment entries.
func devExports(t *testing.T, out string) []string {
	t.Helper()
	var env []string
	for _, line := range strings.Split(out, "\n") {
		if kv, ok := strings.CutPrefix(strings.TrimSpace(line), "export "); ok && strings.Contains(kv, "=") {
			env = append(env, kv)
		}
	}
	return env
}

// envValue returns the value of name in env.
func envValue(env []string, name string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// syncBuffer is a bytes.Buffer safe for a process's writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A partitioned active (cut off from etcd, its peers and its clients, with
// every etcd member inside the servers) is replaced, and when the partition
// heals it is fenced: it reports standby and the new active keeps going.
func TestPartitionedActiveIsFenced(t *testing.T) {
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, BasePort: freeBasePort(t, 3), DataDir: t.TempDir(), Proxied: true, LogLevel: "debug"})
	ctx := context.Background()
	a := waitActive(t, c)
	before, err := c.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Partition(a); err != nil {
		t.Fatal(err)
	}
	b := waitActive(t, c, a)
	cl := newClient(t, c.URLs())
	j, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: []string{"true"}}, client.SubmitOptions{})
	if err != nil {
		t.Fatalf("submit during the partition: %v", err)
	}
	if j.Epoch <= before.Epoch || j.AcceptedBy != c.Servers[b].ID {
		t.Fatalf("job accepted by %s at epoch %d; want %s above epoch %d", j.AcceptedBy, j.Epoch, c.Servers[b].ID, before.Epoch)
	}
	if err := c.Heal(a); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := c.Status(ctx, a)
		if err == nil && st.State == tandem.StateStandby && st.Epoch > before.Epoch {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healed old active: %+v %v; want standby under a newer epoch", st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := countActive(t, c); n != 1 {
		t.Fatalf("active servers after healing: %d, want 1", n)
	}
	if _, err := cl.GetJob(ctx, j.ID); err != nil {
		t.Fatalf("job written during the partition: %v", err)
	}
}
