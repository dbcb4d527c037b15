package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tandemhq/tandem"
)

// testUser is the name of the user the test runs as.
func testUser(t *testing.T) string {
	t.Helper()
	u, err := user.LookupId(strconv.Itoa(os.Geteuid()))
	if err != nil {
		t.Fatalf("look up the test's own user: %v", err)
	}
	return u.Username
}

// needRoot skips a test that switches users unless the test runs as root;
// under CI (which runs as root) a missing root is a failure, not a skip.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("needs root to run attempts as other users (and CI is set, so this is not skipped)")
	}
	t.Skip("needs root to run attempts as other users")
}

// lookupTest resolves a user that must exist for the test.
func lookupTest(t *testing.T, name string) identity {
	t.Helper()
	id, err := lookupUser(name)
	if err != nil {
		t.Fatalf("this test needs user %s: %v", name, err)
	}
	return id
}

// otherUser returns an unprivileged system user that is neither nobody nor
// the test's own, for a job to name.
func otherUser(t *testing.T) identity {
	t.Helper()
	for _, name := range []string{"daemon", "bin", "sys"} {
		if id, err := lookupUser(name); err == nil && id.uid != 0 && id.uid != uint32(os.Geteuid()) && name != DefaultRunAs {
			return id
		}
	}
	t.Fatalf("this test needs a system user besides nobody (daemon, bin or sys)")
	return identity{}
}

// openDir returns a new directory that every user can search (not list):
// t.TempDir's are private to the test's user, so other users could not
// reach an agent's work dir inside one.
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tandem-agent-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// whoScript prints who the attempt runs as and checks it can write its
// work dir.
const whoScript = `echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER logname=$LOGNAME"; echo ok > written && cat written`

// who is what whoScript prints for id.
func who(id identity) string {
	groups := map[uint32]bool{id.gid: true}
	var gs []string
	gs = append(gs, strconv.Itoa(int(id.gid)))
	for _, g := range id.groups {
		if !groups[g] {
			groups[g] = true
			gs = append(gs, strconv.Itoa(int(g)))
		}
	}
	return fmt.Sprintf("uid=%d gid=%d groups=%s home=%s user=%s logname=%s\nok\n", id.uid, id.gid, strings.Join(gs, " "), id.home, id.name, id.name)
}

// asUser returns an assignment of attempt id, running script, whose job
// names user (empty: none).
func asUser(id, user, script string) tandem.Assignment {
	as := shell(id, script, nil)
	as.Spec.User = user
	return as
}

// userConfig is testConfig with the agent's defaults for users: no RunAs,
// no AllowRoot.
func userConfig(t *testing.T, dir, server string) Config {
	cfg := testConfig(t, dir, server)
	cfg.RunAs, cfg.AllowRoot = "", false
	return cfg
}

// An agent running as root runs attempts as nobody unless told otherwise,
// with nobody's groups, HOME and USER, in a work dir nobody owns; the log
// stays the agent's.
func TestRootAgentRunsAttemptsAsNobodyByDefault(t *testing.T) {
	needRoot(t)
	nobody := lookupTest(t, DefaultRunAs)
	srv := newFakeServer(t, "rm1", term(0, 1))
	dir := filepath.Join(openDir(t), "agent")
	a, logs := startAgent(t, userConfig(t, dir, srv.URL()))
	if !strings.Contains(logs.String(), "run_as="+DefaultRunAs) {
		t.Errorf("start-up log does not say run_as=%s:\n%s", DefaultRunAs, logs)
	}

	srv.addAssignment(asUser("att-default", "", whoScript))
	if r := srv.waitDone(t, "att-default"); r.State != tandem.AttemptSucceeded {
		t.Fatalf("attempt: got %s (%q), want succeeded", r.State, r.Reason)
	}
	if code, _, body := getLog(t, a, "att-default", ""); code != 200 || body != who(nobody) {
		t.Errorf("attempt's output: got %d %q, want 200 %q", code, body, who(nobody))
	}
	attemptDir := filepath.Join(dir, attemptsDir, "att-default")
	for _, c := range []struct {
		path string
		uid  uint32
	}{
		{filepath.Join(attemptDir, "work"), nobody.uid},
		{filepath.Join(attemptDir, "work", "written"), nobody.uid},
		{filepath.Join(attemptDir, logFile), 0},
	} {
		var st syscall.Stat_t
		if err := syscall.Stat(c.path, &st); err != nil {
			t.Errorf("stat: %v", err)
		} else if st.Uid != c.uid {
			t.Errorf("owner of %s: got uid %d, want %d", c.path, st.Uid, c.uid)
		}
	}

	// A job naming the default user by name is the same thing.
	srv.addAssignment(asUser("att-named-default", DefaultRunAs, "id -u"))
	if r := srv.waitDone(t, "att-named-default"); r.State != tandem.AttemptSucceeded {
		t.Fatalf("attempt naming %s: got %s (%q), want succeeded", DefaultRunAs, r.State, r.Reason)
	}
	if _, _, body := getLog(t, a, "att-named-default", ""); body != fmt.Sprintf("%d\n", nobody.uid) {
		t.Errorf("id -u of a job naming %s: got %q, want %d", DefaultRunAs, body, nobody.uid)
	}
}

// A job may name a user the agent allows, and runs as it; a user the agent
// does not allow, root without --allow-root, or an unknown user, fails the
// attempt at once with the reason, and nothing runs.
func TestJobUser(t *testing.T) {
	needRoot(t)
	nobody, other := lookupTest(t, DefaultRunAs), otherUser(t)
	srv := newFakeServer(t, "rm1", term(0, 1))
	dir := filepath.Join(openDir(t), "agent")
	cfg := userConfig(t, dir, srv.URL())
	cfg.RunAs, cfg.AllowUsers = other.name, []string{DefaultRunAs}
	a, _ := startAgent(t, cfg)
	marker := filepath.Join(openDir(t), "ran")

	srv.addAssignment(asUser("att-default", "", whoScript))
	srv.addAssignment(asUser("att-allowed", DefaultRunAs, whoScript))
	for id, want := range map[string]identity{"att-default": other, "att-allowed": nobody} {
		if r := srv.waitDone(t, id); r.State != tandem.AttemptSucceeded {
			t.Errorf("%s: got %s (%q), want succeeded", id, r.State, r.Reason)
		}
		if _, _, body := getLog(t, a, id, ""); body != who(want) {
			t.Errorf("%s's output: got %q, want %q", id, body, who(want))
		}
	}

	// Whatever is refused must not run: each would leave the marker.
	script := "touch " + marker
	for _, tc := range []struct{ id, user, reason string }{
		{"att-disallowed", testUser(t), `does not allow user "` + testUser(t) + `": jobs may run as ` + other.name + " (its default), " + DefaultRunAs},
		{"att-root", "root", `does not allow user "root"`},
		{"att-unknown", "no-such-user-tandem", `does not allow user "no-such-user-tandem"`},
	} {
		srv.addAssignment(asUser(tc.id, tc.user, script))
		r := srv.waitDone(t, tc.id)
		prefix := fmt.Sprintf("cannot start %q as user %q on agent agent1: ", "sh", tc.user)
		if r.State != tandem.AttemptFailed || !strings.HasPrefix(r.Reason, prefix) || !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("%s: got %s (%q), want failed, %q...%q", tc.id, r.State, r.Reason, prefix, tc.reason)
		}
		if r.PID != 0 || r.StartedAt != nil {
			t.Errorf("%s: got pid %d, started %v; want no process", tc.id, r.PID, r.StartedAt)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("a refused attempt ran: %s exists", marker)
	}
}

// Root is refused unless the agent allows it: as the default user, as an
// allowed user, and for a job naming it; with AllowRoot, a job may run as
// root.
func TestRootRefusedUnlessAllowed(t *testing.T) {
	needRoot(t)
	base := func() Config { return userConfig(t, t.TempDir(), "http://127.0.0.1:7070") }
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		want string // in New's error; empty: no error
	}{
		{"run as root", func(c *Config) { c.RunAs = "root" }, `run attempts as root (uid 0): root (uid 0) is root, and this agent does not allow attempts to run as root`},
		{"allow root", func(c *Config) { c.AllowUsers = []string{"root"} }, `allow user root (uid 0): root (uid 0) is root`},
		{"unknown run-as", func(c *Config) { c.RunAs = "no-such-user-tandem" }, `run attempts as "no-such-user-tandem": no user "no-such-user-tandem" on this machine`},
		{"unknown allowed", func(c *Config) { c.AllowUsers = []string{"no-such-user-tandem"} }, `allow user "no-such-user-tandem": no user "no-such-user-tandem" on this machine`},
		{"invalid name", func(c *Config) { c.AllowUsers = []string{"a b"} }, `allow user "a b": user "a b" contains ' '`},
		{"run as root, allowed", func(c *Config) { c.RunAs, c.AllowRoot = "root", true }, ""},
		{"allow root, allowed", func(c *Config) { c.AllowUsers, c.AllowRoot = []string{"root"}, true }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.cfg(&cfg)
			_, err := New(cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("New: got %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("New: got %v, want an error containing %q", err, tc.want)
			}
		})
	}

	srv := newFakeServer(t, "rm1", term(0, 1))
	cfg := userConfig(t, filepath.Join(openDir(t), "agent"), srv.URL())
	cfg.AllowUsers, cfg.AllowRoot = []string{"root"}, true
	a, _ := startAgent(t, cfg)
	srv.addAssignment(asUser("att-root", "root", "id -u"))
	srv.addAssignment(asUser("att-default", "", "id -u"))
	for id, want := range map[string]string{"att-root": "0\n", "att-default": fmt.Sprintf("%d\n", lookupTest(t, DefaultRunAs).uid)} {
		if r := srv.waitDone(t, id); r.State != tandem.AttemptSucceeded {
			t.Errorf("%s: got %s (%q), want succeeded", id, r.State, r.Reason)
		}
		if _, _, body := getLog(t, a, id, ""); body != want {
			t.Errorf("%s's id -u: got %q, want %q", id, body, want)
		}
	}
}

// An agent running as root refuses to start when its attempts' user could
// not reach their directories, rather than failing every attempt.
func TestRootAgentRefusesWorkDirTheUserCannotReach(t *testing.T) {
	needRoot(t)
	private := t.TempDir() // 0700, root's
	a, err := New(userConfig(t, filepath.Join(private, "agent"), "http://127.0.0.1:7070"))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err = a.Start(ctx)
	if err == nil {
		a.Close()
		t.Fatal("Start: got nil, want an error: nobody cannot search the work dir's parent")
	}
	if want := "attempts run as nobody"; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "is not searchable by nobody") {
		t.Errorf("Start: got %v, want an error saying %q ... not searchable", err, want)
	}
}

// An agent not running as root runs attempts as itself, and refuses at
// start to run them as anyone else. Under root, the agent runs in a child
// process as nobody.
func TestUnprivilegedAgentRunsAttemptsAsItself(t *testing.T) {
	if os.Geteuid() != 0 {
		self := lookupTest(t, testUser(t))
		srv := newFakeServer(t, "rm1", term(0, 1))
		a, _ := startAgent(t, userConfig(t, t.TempDir(), srv.URL()))
		srv.addAssignment(asUser("att-self", "", "id -u"))
		if r := srv.waitDone(t, "att-self"); r.State != tandem.AttemptSucceeded {
			t.Fatalf("attempt: got %s (%q), want succeeded", r.State, r.Reason)
		}
		if _, _, body := getLog(t, a, "att-self", ""); body != fmt.Sprintf("%d\n", self.uid) {
			t.Errorf("id -u: got %q, want %d", body, self.uid)
		}
		cfg := userConfig(t, t.TempDir(), srv.URL())
		cfg.RunAs = otherUser(t).name
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "not root, so it can run attempts only as itself") {
			t.Errorf("New with RunAs %s: got %v, want an error: only as itself", cfg.RunAs, err)
		}
		return
	}

	nobody := lookupTest(t, DefaultRunAs)
	open := openDir(t)
	// The test binary sits in a directory private to root; nobody runs a copy.
	bin := filepath.Join(open, "agent.test")
	copyFile(t, os.Args[0], bin, 0o755)
	work := filepath.Join(open, "agent")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(work, int(nobody.uid), int(nobody.gid)); err != nil {
		t.Fatal(err)
	}
	srv := newFakeServer(t, "rm1", term(0, 1))
	helper := func(runAs string) *exec.Cmd {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=1", "HELPER_SERVER="+srv.URL(), "HELPER_DIR="+work, "HELPER_RUN_AS="+runAs)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody.uid, Gid: nobody.gid}, Pdeathsig: syscall.SIGKILL}
		return cmd
	}

	// Asked to run attempts as another user, it does not start.
	out, err := helper(otherUser(t).name).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not root, so it can run attempts only as itself") {
		t.Errorf("agent as nobody with run-as %s: got %v, %q; want it to exit saying it can run attempts only as itself", otherUser(t).name, err, out)
	}

	var stderr logBuffer
	cmd := helper("")
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
	srv.addAssignment(asUser("att-self", "", "id -u"))
	srv.addAssignment(asUser("att-other", "root", "id -u"))
	if r := srv.waitDone(t, "att-self"); r.State != tandem.AttemptSucceeded {
		t.Fatalf("attempt: got %s (%q), want succeeded", r.State, r.Reason)
	}
	b, err := os.ReadFile(filepath.Join(work, attemptsDir, "att-self", logFile))
	if err != nil || string(b) != fmt.Sprintf("%d\n", nobody.uid) {
		t.Errorf("id -u of an attempt of an agent running as nobody: got %q (%v), want %d", b, err, nobody.uid)
	}
	if r := srv.waitDone(t, "att-other"); r.State != tandem.AttemptFailed || !strings.Contains(r.Reason, `does not allow user "root"`) {
		t.Errorf("attempt naming root on an agent running as nobody: got %s (%q), want failed: not allowed", r.State, r.Reason)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
