package e2e

import (
	"fmt"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/local"
)

// Through the whole stack: `tandem job submit --user` reaches the agent,
// which runs the attempt as that user if it allows it, as its --run-as user
// if the job names none, and fails it, with the reason, if it does not.
func TestJobUserThroughTheCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root to run attempts as other users (and CI is set, so this is not skipped)")
		}
		t.Skip("needs root to run attempts as other users")
	}
	uid := func(name string) string {
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatalf("this test needs user %s: %v", name, err)
		}
		return u.Uid
	}
	nobody, daemon := uid("nobody"), uid("daemon")
	// t.TempDir is private to root: nobody could not reach the agent's work dir.
	dir, err := os.MkdirTemp("", "tandem-e2e-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	e := startEtcd(t)
	c := startLocal(t, local.Config{Binary: binary, Servers: 1, Agents: 1, BasePort: freeBasePort(t, 1), DataDir: dir,
		EtcdEndpoints: e.Endpoint, LogLevel: "debug", AgentArgs: []string{"--run-as", "nobody", "--allow-users", "daemon", "--allow-root=false"}})
	env := []string{"TANDEM_SERVERS=" + strings.Join(c.URLs(), ","), "XDG_CONFIG_HOME=" + t.TempDir()}
	submit := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCLI(t, env, append([]string{"job", "submit"}, args...)...)
		if code != 0 {
			t.Fatalf("job submit %v: exit %d, %s", args, code, errOut)
		}
		return strings.TrimSpace(out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"id", "-u"}, nobody},
		{[]string{"--user", "daemon", "id", "-u"}, daemon},
	} {
		id := submit(tc.args...)
		if _, errOut, code := runCLI(t, env, "job", "wait", id); code != 0 {
			t.Fatalf("job %v: exit %d, %s", tc.args, code, errOut)
		}
		if out, errOut, code := runCLI(t, env, "job", "logs", id); code != 0 || out != tc.want+"\n" {
			t.Errorf("job %v: logs %q (exit %d, %s), want %q", tc.args, out, code, errOut, tc.want+"\n")
		}
	}

	id := submit("--user", "root", "id", "-u")
	cl := newClient(t, c.URLs())
	j := waitJobState(t, cl, id, 30*time.Second, terminal)
	want := fmt.Sprintf(`cannot start "id" as user "root" on agent %s: the agent does not allow user "root"`, local.AgentID(0))
	if j.State != tandem.JobFailed || len(j.Attempts) != 1 || !strings.HasPrefix(j.Attempts[0].Reason, want) || j.Attempts[0].PID != 0 {
		t.Fatalf("job naming root: %s, attempts %+v; want failed, one attempt that never started: %q", j.State, j.Attempts, want)
	}
}
