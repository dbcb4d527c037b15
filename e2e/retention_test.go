package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/archive"
	"github.com/tandemhq/tandem/internal/etcdtest"
)

// A real server with retention on removes a finished job: `tandem job get`
// then says it was removed by retention (exit 1, the server's words), a job
// still pending stays, and the removed job is in the archive.
func TestRetentionRemovedJobThroughCLI(t *testing.T) {
	dir := t.TempDir()
	c := startCluster(t, 1, etcdtest.Start(t), "--retention-age", "1s", "--retention-keep", "0",
		"--retention-interval", "100ms", "--archive-dir", dir)
	waitActive(t, c)
	cl := newClient(t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: []string{"true"}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.KillJob(ctx, done.ID); err != nil { // pending: finished at once
		t.Fatal(err)
	}
	live, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: []string{"true"}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"TANDEM_SERVERS=" + strings.Join(c.URLs(), ","), "XDG_CONFIG_HOME=" + t.TempDir()}
	var errOut string
	waitFor(t, "the finished job to be removed", 30*time.Second, func() bool {
		var code int
		_, errOut, code = runCLI(t, env, "job", "get", done.ID)
		return code != 0 && strings.Contains(errOut, "removed by retention")
	})
	if !strings.Contains(errOut, done.ID) || !strings.Contains(errOut, "killed") {
		t.Fatalf("tandem job get of a removed job printed %q, want it to name the job and how it finished", errOut)
	}
	if out, errOut, code := runCLI(t, env, "job", "get", live.ID); code != 0 || !strings.Contains(out, live.ID) {
		t.Fatalf("tandem job get of a pending job: exit %d, %q %q; want it kept", code, out, errOut)
	}
	lines, err := archive.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range lines {
		found = found || l.ID == done.ID && strings.Contains(string(l.Record), `"killed"`)
	}
	if !found {
		t.Fatalf("the archive holds %d lines, none for %s as killed", len(lines), done.ID)
	}
}
