package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/api"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/server"
)

// Bad input to tandem schedule: exit 2 with the reason, nothing sent (the
// fake cluster records no request; the real ones are e2e/schedule_test.go).
func TestScheduleUsageErrors(t *testing.T) {
	f := newFakeCluster(t)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no timing", []string{"schedule", "create", "--", "true"}, "give --cron EXPR or --every DURATION"},
		{"no command", []string{"schedule", "create", "--every", "1s"}, "no command given"},
		{"malformed cron", []string{"schedule", "create", "--cron", "61 * * * *", "--", "true"}, `cron "61 * * * *" is malformed`},
		{"never fires", []string{"schedule", "create", "--cron", "0 0 30 2 *", "--", "true"}, "never fires"},
		{"unknown zone", []string{"schedule", "create", "--cron", "0 2 * * *", "--tz", "Nowhere/City", "--", "true"}, "unknown time zone"},
		{"both cron and every", []string{"schedule", "create", "--cron", "* * * * *", "--every", "1s", "--", "true"}, "schedule create: invalid schedule"},
		{"zero every", []string{"schedule", "create", "--every", "0s", "--", "true"}, "--every is 0s"},
		{"bad overlap", []string{"schedule", "create", "--every", "1s", "--overlap", "sometimes", "--", "true"}, "sometimes"},
		{"bad start", []string{"schedule", "create", "--every", "1s", "--start", "tomorrow", "--", "true"}, `--start "tomorrow"`},
		{"note without pause", []string{"schedule", "create", "--every", "1s", "--pause-note", "x", "--", "true"}, "--pause-note goes with --paused"},
		{"negative jitter", []string{"schedule", "create", "--every", "1s", "--jitter", "-1s", "--", "true"}, "must not be negative"},
		{"bad job", []string{"schedule", "create", "--every", "1s", "--cpu", "0", "--", "true"}, "--cpu is 0"},
		{"get without ID", []string{"schedule", "get"}, "accepts 1 arg"},
		{"runs bad outcome", []string{"schedule", "runs", "s1", "--outcome", "maybe"}, `--outcome "maybe"`},
		{"next zero", []string{"schedule", "next", "s1", "-n", "0"}, "-n must be at least 1"},
		{"backfill without range", []string{"schedule", "backfill", "s1"}, "give --from and --to"},
		{"backfill backwards", []string{"schedule", "backfill", "s1", "--from", "2030-01-02T00:00:00Z", "--to", "2030-01-01T00:00:00Z"}, "is before --from"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"--servers", f.servers()}, tt.args...)...)
			if code != 2 || !strings.Contains(errOut, tt.want) || out != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and %q", code, out, errOut, tt.want)
			}
		})
	}
}

// startScheduleServer runs one real server in-process, on an etcd of its
// own, serving the HTTP API: the schedule commands' happy paths run against
// the real thing (the fake clusters of the other tests know no schedules),
// and it returns the server's URL once it is active.
func startScheduleServer(t *testing.T) string {
	t.Helper()
	e := etcdtest.Start(t)
	ts := httptest.NewUnstartedServer(nil)
	url := "http://" + ts.Listener.Addr().String()
	cfg := server.DefaultConfig()
	cfg.ID, cfg.Cluster, cfg.URL, cfg.Etcd = "rm1", "cli", url, e.Client(t)
	cfg.LeaseTTL, cfg.ScheduleGrace = 2*time.Second, 5*time.Second
	cfg.Logger = slog.New(slog.DiscardHandler)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Config.Handler = api.New(srv, cfg.Logger)
	ts.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Close()
		ts.Close()
	})
	waitCLI(t, "the server to be active", func() bool {
		_, ok := srv.ActiveEpoch()
		return ok
	})
	return url
}

// waitCLI waits up to 20 s for cond.
func waitCLI(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after 20s waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The schedule commands against a real server: create prints the ID; runs
// -o json gives every record nominal_time, outcome, reason and job_id (a
// fired one with its job, a skipped one with its reason); pause, trigger,
// resume, next, backfill and delete do what they say.
func TestScheduleCommands(t *testing.T) {
	url := startScheduleServer(t)
	cli := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCLI(t, append([]string{"--servers", url}, args...)...)
		if code != 0 {
			t.Fatalf("tandem %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
		}
		return out
	}
	runs := func(id string, more ...string) []map[string]any {
		t.Helper()
		var out []map[string]any
		if err := json.Unmarshal([]byte(cli(append([]string{"schedule", "runs", id, "-o", "json"}, more...)...)), &out); err != nil {
			t.Fatalf("runs -o json: %v", err)
		}
		for _, r := range out {
			for _, key := range []string{"nominal_time", "outcome", "reason", "job_id"} {
				if _, ok := r[key]; !ok {
					t.Errorf("runs -o json: record %v has no %q", r, key)
				}
			}
		}
		return out
	}

	out := cli("schedule", "create", "--name", "cli", "--every", "1s", "--overlap", "allow", "--", "true")
	id := strings.TrimSpace(out)
	if !regexp.MustCompile(`^s[0-9a-z]+$`).MatchString(id) || out != id+"\n" {
		t.Fatalf("create printed %q, want the schedule's ID alone", out)
	}
	var sch tandem.Schedule
	if err := json.Unmarshal([]byte(cli("schedule", "get", id, "-o", "json")), &sch); err != nil || sch.ID != id || sch.Name != "cli" {
		t.Fatalf("get -o json: %+v, %v", sch, err)
	}
	if out := cli("schedule", "list"); !strings.Contains(out, id) || !strings.Contains(out, "every 1s") {
		t.Errorf("list: %q, want the schedule", out)
	}

	var fired map[string]any
	waitCLI(t, "a fire", func() bool {
		for _, r := range runs(id, "--outcome", "fired") {
			fired = r
			return true
		}
		return false
	})
	if fired["outcome"] != "fired" || fired["reason"] != "" || fired["job_id"] == "" {
		t.Errorf("fired record: %v, want outcome fired, reason \"\" and a job", fired)
	}

	if out := cli("schedule", "pause", id, "--note", "maintenance"); out != "schedule "+id+" paused\n" {
		t.Errorf("pause printed %q", out)
	}
	var skipped map[string]any
	waitCLI(t, "a time skipped while paused", func() bool {
		for _, r := range runs(id, "--outcome", "skipped") {
			skipped = r
			return true
		}
		return false
	})
	if skipped["reason"] != tandem.ReasonPaused || skipped["job_id"] != "" {
		t.Errorf("skipped record: %v, want reason paused and job_id \"\"", skipped)
	}
	job := strings.TrimSpace(cli("schedule", "trigger", id))
	if job == "" {
		t.Fatal("trigger printed no job ID")
	}
	var manual bool
	for _, r := range runs(id) {
		manual = manual || r["reason"] == tandem.ReasonManual && r["job_id"] == job
	}
	if !manual {
		t.Errorf("no manual run record names job %s", job)
	}
	if out := cli("schedule", "resume", id); out != "schedule "+id+" resumed\n" {
		t.Errorf("resume printed %q", out)
	}

	lines := strings.Fields(cli("schedule", "next", id, "-n", "3"))
	if len(lines) != 3 {
		t.Fatalf("next -n 3: %q, want 3 times", lines)
	}
	var prev time.Time
	for _, l := range lines {
		at, err := time.Parse(time.RFC3339, l)
		if err != nil || !prev.IsZero() && !at.Equal(prev.Add(time.Second)) {
			t.Errorf("next: %q (%v), want times a second apart", lines, err)
		}
		prev = at
	}

	// Backfill three past seconds before the schedule existed: each once.
	from, to := sch.CreatedAt.Add(-5*time.Second).Truncate(time.Second), sch.CreatedAt.Add(-3*time.Second).Truncate(time.Second)
	var bf []tandem.ScheduleRun
	out = cli("schedule", "backfill", id, "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339), "-o", "json")
	if err := json.Unmarshal([]byte(out), &bf); err != nil || len(bf) != 3 {
		t.Fatalf("backfill: %q (%v), want 3 runs", out, err)
	}
	for _, r := range bf {
		if r.Reason != tandem.ReasonBackfill || r.JobID == "" {
			t.Errorf("backfilled run %+v", r)
		}
	}

	if out := cli("schedule", "delete", id); out != "schedule "+id+" deleted\n" {
		t.Errorf("delete printed %q", out)
	}
	if _, errOut, code := runCLI(t, "--servers", url, "schedule", "get", id); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("get after delete: exit %d, stderr %q; want a failure saying not found", code, errOut)
	}
}
