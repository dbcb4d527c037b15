package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise"
	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// TestSuperviseUsageErrors: `tandem supervise` refuses bad input with exit
// status 2 and a clear message before anything starts (the etcd endpoint
// is dead, so a supervisor that did start would fail otherwise).
func TestSuperviseUsageErrors(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "fence")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	config := func(text string) string {
		p := filepath.Join(t.TempDir(), "supervise.yaml")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := config("node: n1\nservices:\n- name: web\n  command: [/bin/sleep, \"1000\"]\n  fencing: self\n")
	dead := deadURL(t)
	node := []string{"supervise", "--node", "n1", "--etcd-endpoints", dead, "--listen", "127.0.0.1:0"}
	run := func(args ...string) []string { return argv(argv(node, args...), "--", "/bin/sleep", "1000") }
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command after --service", argv(node, "--service", "web", "--fencing", "self"),
			"--service web: no command: give the command to run after --"},
		{"command without --service", argv(node, "--", "/bin/sleep", "1"), "a command after -- needs --service NAME"},
		{"health host that does not resolve", run("--service", "web", "--fencing", "self", "--health", "http:http://db.invalid:8080/"),
			"unreachable health URL"},
		{"bad health check", run("--service", "web", "--fencing", "self", "--health", "ping:db"), `--health "ping:db"`},
		{"fence level 0", run("--service", "web", "--fence", "0:/x"), `--fence "0:/x": level 0, want 1 or more`},
		{"fence hook not executable", run("--service", "web", "--fence", "1:"+plain), "fence hook (level 1): hook " + plain + ": mode -rw-r--r-- has no execute bit"},
		{"fence hook missing", run("--service", "web", "--fence", "1:/no/such/fence"), "hook /no/such/fence: does not exist"},
		{"strict without a fence hook", run("--service", "web"), "fencing strict needs at least one fence hook"},
		{"bad fencing", run("--service", "web", "--fencing", "none"), `fencing "none": want strict or self`},
		{"VIP without a device", run("--service", "web", "--fencing", "self", "--vip", "10.0.0.50/24"), `invalid VIP "10.0.0.50/24": no "@DEV"`},
		{"VIP on a missing device", run("--service", "web", "--fencing", "self", "--vip", "10.0.0.50/24@nosuchdev0"), "no device nosuchdev0"},
		{"relative epoch file", run("--service", "web", "--fencing", "self", "--epoch-file", "epoch"), `epoch file "epoch": use an absolute path`},
		{"anti-affinity with itself", run("--service", "web", "--fencing", "self", "--anti-affinity", "db,web"), "anti-affinity with itself"},
		{"bad hook kind", run("--service", "web", "--fencing", "self", "--hook", "boot:/bin/true"), `--hook "boot:/bin/true": unknown kind "boot"`},
		{"env without =", run("--service", "web", "--fencing", "self", "--env", "DEBUG"), `--env "DEBUG": want KEY=VALUE`},
		{"service flag without a service", argv(node, "--fencing", "self"), "--fencing describes a service: give --service NAME"},
		{"lease TTL not whole seconds", run("--service", "web", "--fencing", "self", "--lease-ttl", "1500ms"), "lease TTL 1.5s: use whole seconds"},
		{"self-fence margin as long as the TTL", run("--service", "web", "--fencing", "self", "--lease-ttl", "2s", "--self-fence-margin", "2s"),
			"self-fence margin 2s: must be from 0 to less than the lease TTL 2s"},
		{"bad node name", run("--service", "web", "--fencing", "self", "--node", "n 1"), `--node: invalid node name "n 1"`},
		{"etcd endpoint not a URL", run("--service", "web", "--fencing", "self", "--etcd-endpoints", "127.0.0.1:2379"),
			`--etcd-endpoints: "127.0.0.1:2379" is not a URL like http://127.0.0.1:2379`},
		{"bad listen address", []string{"supervise", "--node", "n1", "--etcd-endpoints", dead, "--listen", "7480", "--service", "web", "--fencing", "self", "--", "/bin/sleep", "1"},
			`--listen "7480": want HOST:PORT or :PORT`},
		{"config with an unknown field", []string{"supervise", "--etcd-endpoints", dead, "--config", config("node: n1\nnodee: n2\n")},
			`unknown field "nodee"`},
		{"config with an unknown service field", []string{"supervise", "--etcd-endpoints", dead, "--config",
			config("node: n1\nservices:\n- name: web\n  commandd: [/bin/sleep]\n")}, `unknown field "commandd"`},
		{"config with a command after --", []string{"supervise", "--etcd-endpoints", dead, "--config", good, "--", "/bin/sleep", "1"},
			"a command after -- goes with --service, not with --config"},
		{"config missing", []string{"supervise", "--etcd-endpoints", dead, "--config", filepath.Join(dir, "nope.yaml")}, "--config: open"},
		{"config service without a command", []string{"supervise", "--etcd-endpoints", dead, "--config",
			config("node: n1\nservices:\n- name: web\n  fencing: self\n")}, "service web: no command"},
		{"unknown flag", run("--service", "web", "--fencing", "self", "--frobnicate"), "unknown flag: --frobnicate"},

		{"move with one argument", []string{"supervise", "move", "web"}, "accepts 2 arg(s), received 1"},
		{"ban for no time", []string{"supervise", "--etcd-endpoints", dead, "ban", "web", "n1", "--for", "0s"}, "--for 0s: must be positive"},
		{"ban for a negative time", []string{"supervise", "--etcd-endpoints", dead, "ban", "web", "n1", "--for=-1h"}, "--for -1h0m0s: must be positive"},
		{"ban without a node", []string{"supervise", "ban", "web"}, "accepts 2 arg(s), received 1"},
		{"clear without a service", []string{"supervise", "clear"}, "accepts 1 arg(s), received 0"},
		{"history of two services", []string{"supervise", "history", "a", "b"}, "accepts at most 1 arg(s), received 2"},
		{"status with an endpoint that is not a URL", []string{"supervise", "status", "--etcd-endpoints", "etcd1"}, `--etcd-endpoints: "etcd1" is not a URL`},
		{"status as YAML", []string{"supervise", "status", "-o", "yaml"}, `unknown output format "yaml": want table or json`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			out, errOut, code := runCLI(t, tt.args...)
			if code != 2 {
				t.Errorf("got exit %d, want 2 (usage)", code)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("got stderr %q, want it to contain %q", errOut, tt.want)
			}
			if out != "" {
				t.Errorf("got stdout %q, want nothing", out)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v: it should have been refused before anything started", d)
			}
		})
	}
}

// argv returns base followed by more, in a new slice.
func argv(base []string, more ...string) []string {
	return append(append([]string(nil), base...), more...)
}

// requireCgroup returns the cgroup v2 mount point, or skips the test where
// there is none or we are not root (fails instead in CI).
func requireCgroup(t *testing.T) string {
	t.Helper()
	mount, err := proc.CgroupMount()
	if err == nil && os.Geteuid() != 0 {
		err = errors.New("not root")
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("needs cgroup v2 and root: %v (CI is set, so this is a failure)", err)
		}
		t.Skipf("needs cgroup v2 and root: %v", err)
	}
	return mount
}

// TestSuperviseCLI runs two supervisors through the command line, one from
// flags and one from a config file with the same service, against a real
// etcd, and drives them with the subcommands.
func TestSuperviseCLI(t *testing.T) {
	base := testCgroups(t)
	e := etcdtest.Start(t)
	dir := t.TempDir()
	ledger := filepath.Join(dir, "ledger")
	script := `echo "$TANDEM_NODE $TANDEM_EPOCH" >> ` + ledger + `; exec sleep 1000`
	admin := []string{"supervise", "--cluster", "c1", "--etcd-endpoints", e.Endpoint}

	// n1 from flags.
	addr1 := loopbackAddr(t)
	n1 := startCLI(t, "supervise", "--node", "n1", "--cluster", "c1", "--etcd-endpoints", e.Endpoint, "--listen", addr1,
		"--advertise", "http://"+addr1, "--cgroup-parent", filepath.Join(base, "n1"), "--lease-ttl", "2s", "--log-level", "error",
		"--service", "web", "--fencing", "self", "--stop-timeout", "2s", "--", "/bin/sh", "-c", script)
	st := waitCLIStatus(t, admin, "web", "n1")

	// n2 from a config file with the same service, spelled its own way.
	addr2 := loopbackAddr(t)
	cfg := filepath.Join(dir, "n2.yaml")
	yaml := "node: n2\ncluster: c1\netcd_endpoints: [" + e.Endpoint + "]\nlisten: " + addr2 + "\nadvertise: http://" + addr2 +
		"\ncgroup_parent: " + filepath.Join(base, "n2") + "\nlease_ttl: 2s\nservices:\n- name: web\n  command: [/bin/sh, -c, '" + script +
		"']\n  fencing: self\n  stop_timeout: 2s\n  nodes: []\n  env: {}\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	n2 := startCLI(t, "supervise", "--config", cfg, "--log-level", "error")
	// Move web to n2 as soon as n2 is registered.
	waitFor(t, "web moved to n2", func() bool {
		if !n2.running() {
			t.Fatalf("n2 exited %d: %s", n2.code, n2.errOut)
		}
		out, errOut, code := runCLI(t, argv(admin, "move", "web", "n2", "--wait", "10s")...)
		if code != 0 && !strings.Contains(errOut, "no live supervisor on node n2") {
			t.Fatalf("move web n2: got %q %q (exit %d), want it done", out, errOut, code)
		}
		return code == 0 && strings.HasPrefix(out, "web is healthy on n2 (epoch ")
	})
	moved := waitCLIStatus(t, admin, "web", "n2")
	if moved.Epoch <= st.Epoch {
		t.Errorf("got epoch %d after the move, want more than %d", moved.Epoch, st.Epoch)
	}
	if b, _ := os.ReadFile(ledger); string(b) != "n1 "+strconv.FormatInt(st.Epoch, 10)+"\nn2 "+strconv.FormatInt(moved.Epoch, 10)+"\n" {
		t.Errorf("got ledger %q, want web started on n1, then on n2", b)
	}

	out, errOut, code := runCLI(t, argv(admin, "history", "web", "-o", "json")...)
	var evs []supervise.Event
	if err := json.Unmarshal([]byte(out), &evs); code != 0 || err != nil || len(evs) != 2 || evs[0].Cause != tandem.CauseInitial ||
		evs[1].Cause != supervise.CauseMove || evs[1].PrevNode != "n1" || evs[1].Node != "n2" {
		t.Errorf("history -o json: got %q %q (exit %d), want web's initial start and its move to n2", out, errOut, code)
	}
	out, _, code = runCLI(t, argv(admin, "history", "web")...)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME") ||
		!strings.Contains(lines[2], " move ") {
		t.Errorf("history: got %q (exit %d), want a header and two rows", out, code)
	}

	out, _, code = runCLI(t, argv(admin, "ban", "web", "n1", "--for", "1h", "--reason", "disk")...)
	if code != 0 || out != "banned n1 from web for 1h0m0s\n" {
		t.Errorf("ban: got %q (exit %d), want it done", out, code)
	}
	out, _, code = runCLI(t, argv(admin, "status")...)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "SERVICE") ||
		!strings.Contains(lines[1], "healthy") || !strings.Contains(lines[1], "banned: n1") {
		t.Errorf("status: got %q (exit %d), want web healthy on n2 with n1 banned", out, code)
	}
	out, _, code = runCLI(t, argv(admin, "clear", "web")...)
	if code != 0 || out != "cleared 1 ban(s) of web\n" {
		t.Errorf("clear: got %q (exit %d), want 1 ban cleared", out, code)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"move", "web", "n9"}, "no live supervisor on node n9"},
		{[]string{"move", "web", "n2"}, "service web already runs on n2"},
		{[]string{"ban", "nope", "n1"}, "no supervised service nope"},
		{[]string{"clear", "nope"}, "no supervised service nope"},
	} {
		if out, errOut, code := runCLI(t, argv(admin, tt.args...)...); code != 1 || out != "" || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: got %q %q (exit %d), want exit 1 and %q", tt.args, out, errOut, code, tt.want)
		}
	}

	for _, n := range []*cliRun{n2, n1} {
		if code, errOut := n.stop(t); code != 0 {
			t.Errorf("supervisor exited %d (%s), want 0 after its context ended", code, errOut)
		}
	}
	for _, n := range []string{"n1", "n2"} {
		if cg, err := proc.OpenCgroup(filepath.Join(base, n, "web")); err == nil {
			if pids, _ := cg.Procs(); len(pids) != 0 {
				t.Errorf("%s: got processes %v left, want none", n, pids)
			}
		}
	}
}

// testCgroups returns a fresh cgroup directory for the test's supervisors
// (--cgroup-parent BASE/NODE), whose processes are killed and which is
// removed at the test's end.
func testCgroups(t *testing.T) string {
	t.Helper()
	mount := requireCgroup(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	base := filepath.Join(mount, "tandem-test-"+hex.EncodeToString(b[:]))
	t.Cleanup(func() {
		top := &proc.Cgroup{Path: base}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := top.Kill(); err == nil {
			_ = top.WaitEmpty(ctx)
		}
		if err := top.Remove(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return base
}

// TestSuperviseConfigServices runs several services from one --config file
// in one supervisor process: each is owned under its own key (its own
// epoch, every key bound to the node's one lease), its command runs in its
// own cgroup with its own service name and epoch, and giving one up leaves
// the others where they are.
func TestSuperviseConfigServices(t *testing.T) {
	base := testCgroups(t)
	e := etcdtest.Start(t)
	dir := t.TempDir()
	ledger := filepath.Join(dir, "ledger")
	script := `echo "$TANDEM_SERVICE $TANDEM_NODE $TANDEM_EPOCH $$" >> ` + ledger + `; exec sleep 1000`
	admin := []string{"supervise", "--cluster", "c1", "--etcd-endpoints", e.Endpoint}
	names := []string{"cache", "db", "web"}

	addr := loopbackAddr(t)
	yaml := "node: n1\ncluster: c1\netcd_endpoints: [" + e.Endpoint + "]\nlisten: " + addr + "\nadvertise: http://" + addr +
		"\ncgroup_parent: " + filepath.Join(base, "n1") + "\nlease_ttl: 2s\nslots: 3\nservices:\n"
	for _, n := range names {
		yaml += "- name: " + n + "\n  command: [/bin/sh, -c, '" + script + "']\n  fencing: self\n  stop_timeout: 2s\n"
	}
	cfg := filepath.Join(dir, "n1.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	n1 := startCLI(t, "supervise", "--config", cfg, "--log-level", "error")
	sts := map[string]supervise.ServiceStatus{}
	for _, n := range names {
		sts[n] = waitCLIStatus(t, admin, n, "n1")
	}

	// Each service has its own owner key, created at its own revision (the
	// epoch), all bound to the one lease of n1's supervisor.
	cli := e.Client(t)
	layout := keys.New("c1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node, err := cli.Get(ctx, layout.SuperviseNode("n1"))
	if err != nil || len(node.Kvs) != 1 || node.Kvs[0].Lease == 0 {
		t.Fatalf("n1's registration: got %v, %v; want one key bound to a lease", node, err)
	}
	lease := node.Kvs[0].Lease
	epochs := map[int64]string{}
	for _, n := range names {
		resp, err := cli.Get(ctx, layout.SuperviseOwnership(n).Owner)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 {
			t.Errorf("%s: got %d owner keys, want 1", n, len(resp.Kvs))
			continue
		}
		kv := resp.Kvs[0]
		var o election.Owner
		if err := json.Unmarshal(kv.Value, &o); err != nil || o.ID != "n1" {
			t.Errorf("%s: got owner %q (%v), want n1", n, kv.Value, err)
		}
		if kv.CreateRevision != sts[n].Epoch || kv.Lease != lease {
			t.Errorf("%s: got owner key created at %d bound to lease %x, want epoch %d and n1's lease %x",
				n, kv.CreateRevision, kv.Lease, sts[n].Epoch, lease)
		}
		if other, ok := epochs[sts[n].Epoch]; ok {
			t.Errorf("%s and %s have the same epoch %d, want one each", other, n, sts[n].Epoch)
		}
		epochs[sts[n].Epoch] = n
	}

	// Each command started once, with its own service name and epoch, and
	// runs in its own cgroup.
	b, err := os.ReadFile(ledger)
	if err != nil {
		t.Fatal(err)
	}
	started := map[string]string{}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("ledger: malformed line %q", line)
		}
		if _, dup := started[f[0]]; dup {
			t.Errorf("%s started twice: %q", f[0], b)
		}
		started[f[0]] = f[1] + " " + f[2] + " " + f[3]
	}
	for _, n := range names {
		st := sts[n]
		if want := fmt.Sprintf("n1 %d %d", st.Epoch, st.PID); started[n] != want {
			t.Errorf("%s: got start %q, want %q (node, its epoch, its pid)", n, started[n], want)
		}
		if pids := cgroupPIDs(t, filepath.Join(base, "n1", n)); !slices.Contains(pids, st.PID) {
			t.Errorf("%s: its cgroup holds %v, want its command %d", n, pids, st.PID)
		}
	}

	// Banning one gives that one up, and only that one.
	if out, errOut, code := runCLI(t, argv(admin, "ban", "db", "n1", "--for", "1h")...); code != 0 {
		t.Fatalf("ban db n1: got %q %q (exit %d)", out, errOut, code)
	}
	var after []supervise.ServiceStatus
	waitFor(t, "db given up by n1", func() bool {
		out, _, code := runCLI(t, argv(admin, "status", "-o", "json")...)
		after = nil
		if code != 0 || json.Unmarshal([]byte(out), &after) != nil {
			return false
		}
		return slices.ContainsFunc(after, func(st supervise.ServiceStatus) bool { return st.Service == "db" && st.Node == "" })
	})
	if pids := cgroupPIDs(t, filepath.Join(base, "n1", "db")); len(pids) != 0 {
		t.Errorf("db: got processes %v after n1 gave it up, want none", pids)
	}
	for _, st := range after {
		if want, ok := sts[st.Service]; ok && st.Service != "db" &&
			(st.Node != "n1" || st.State != supervise.StateHealthy || st.Epoch != want.Epoch || st.PID != want.PID) {
			t.Errorf("%s: got %s on %q at epoch %d pid %d, want it left healthy on n1 at epoch %d pid %d",
				st.Service, st.State, st.Node, st.Epoch, st.PID, want.Epoch, want.PID)
		}
	}

	if code, errOut := n1.stop(t); code != 0 {
		t.Errorf("supervisor exited %d (%s), want 0 after its context ended", code, errOut)
	}
	for _, n := range names {
		if pids := cgroupPIDs(t, filepath.Join(base, "n1", n)); len(pids) != 0 {
			t.Errorf("%s: got processes %v left, want none", n, pids)
		}
	}
}

// cgroupPIDs returns the processes of the cgroup at path (none if it does
// not exist).
func cgroupPIDs(t *testing.T, path string) []int {
	t.Helper()
	cg, err := proc.OpenCgroup(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	pids, err := cg.Procs()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return pids
}

// cliRun is a long-running command line (a supervisor) in the test
// process, ended by cancelling its context.
type cliRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	code   int
	errOut string
}

func startCLI(t *testing.T, args ...string) *cliRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &cliRun{cancel: cancel, done: make(chan struct{})}
	root := newRootCmd()
	root.SetContext(ctx)
	go func() {
		defer close(r.done)
		_, r.errOut, r.code = runRoot(t, root, args...)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *cliRun) running() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

func (r *cliRun) stop(t *testing.T) (int, string) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the supervisor did not exit within 15s of its context's end")
	}
	return r.code, r.errOut
}

// waitFor polls cond until it holds, failing the test after 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCLIStatus waits until `supervise status -o json` shows svc healthy
// on node.
func waitCLIStatus(t *testing.T, admin []string, svc, node string) supervise.ServiceStatus {
	t.Helper()
	var got supervise.ServiceStatus
	waitFor(t, svc+" healthy on "+node, func() bool {
		out, _, code := runCLI(t, argv(admin, "status", "-o", "json")...)
		var sts []supervise.ServiceStatus
		if code != 0 || json.Unmarshal([]byte(out), &sts) != nil {
			return false
		}
		for _, s := range sts {
			if s.Service == svc && s.Node == node && s.State == supervise.StateHealthy {
				got = s
				return true
			}
		}
		return false
	})
	return got
}

// loopbackAddr returns a loopback address whose port was free a moment ago,
// below the ephemeral range, where no outgoing connection takes it first.
func loopbackAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+mrand.IntN(20000))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port found")
	return ""
}
