package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/local"
)

// The web UI in a real browser (Debian's chromium, driven by chromedp) on a
// real secured cluster: TLS, tokens, three servers, one agent. One browser,
// one tab, reused by every subtest. The suite skips where no chromium is
// installed, unless CI or TANDEM_REQUIRE_BROWSER is set, which makes that a
// failure (.ci/run installs chromium).
//
// Screenshots of every page go to $TANDEM_UI_SCREENSHOTS (default: a new
// temporary directory, named in the test log); docs/UI.md says where CI
// keeps them.

const envScreenshots = "TANDEM_UI_SCREENSHOTS"

// chromium returns the browser's path, or skips (fails under CI).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" || os.Getenv("TANDEM_REQUIRE_BROWSER") != "" {
		t.Fatal("needs chromium (apt-get install chromium), and CI or TANDEM_REQUIRE_BROWSER is set, so this is not skipped")
	}
	t.Skip("no chromium installed (apt-get install chromium)")
	return ""
}

// tab is the browser's one tab.
type tab struct {
	t   *testing.T
	ctx context.Context
}

func newTab(t *testing.T) *tab {
	t.Helper()
	path := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // tests run as root in CI containers
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-gpu", true),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		acancel() // ends the browser process this test started
	})
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return &tab{t: t, ctx: ctx}
}

func (b *tab) nav(url string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		b.t.Fatalf("navigate to %s: %v", url, err)
	}
}

func evalJS[T any](b *tab, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %.120s: %v", js, err)
	}
	return v
}

// wait polls the boolean expression js until it holds.
func (b *tab) wait(what, js string, within time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+js+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			loc := evalJS[string](b, "location.href")
			body := evalJS[string](b, "document.body ? document.body.innerText.slice(0, 1500) : ''")
			b.t.Fatalf("waited %v for %s (%s): last error %v; at %s:\n%s", within, what, js, err, loc, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (b *tab) screenshot(dir, name string) {
	b.t.Helper()
	// A page just reached by a click may not be laid out yet (a
	// screenshot of it fails with "0 width").
	b.wait(name+" laid out", `document.readyState === "complete" && document.body && document.body.scrollWidth > 0`, 10*time.Second)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// axe runs the vendored axe-core on the page and fails on any violation.
func (b *tab) axe(page string, src string) {
	b.t.Helper()
	if !evalJS[bool](b, "typeof window.axe !== 'undefined'") {
		evalJS[bool](b, src+"\n;true")
	}
	res := evalJS[string](b, `axe.run(document).then(r => JSON.stringify({passes: r.passes.length,
		violations: r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(" ") + ": " + n.failureSummary)}))}))`)
	var out struct {
		Passes     int
		Violations []struct {
			ID, Impact, Help string
			Nodes            []string
		}
	}
	if err := json.Unmarshal([]byte(res), &out); err != nil {
		b.t.Fatal(err)
	}
	if out.Passes == 0 {
		b.t.Errorf("axe on %s checked nothing", page)
	}
	for _, v := range out.Violations {
		b.t.Errorf("axe on %s: %s (%s): %s\n  %s", page, v.ID, v.Impact, v.Help, strings.Join(v.Nodes, "\n  "))
	}
}

func TestUI(t *testing.T) {
	b := newTab(t)
	axeSrc, err := os.ReadFile(filepath.Join("..", "internal", "ui", "testdata", "vendor", "axe.min.js"))
	if err != nil {
		t.Fatal(err)
	}
	shots := os.Getenv(envScreenshots)
	if shots == "" {
		if shots, err = os.MkdirTemp("", "tandem-ui-screenshots-"); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots in %s", shots)

	// A secured cluster (TLS, tokens) of its own, whatever the mode: the
	// UI's login and forwarding are the point.
	// Every server keeps an audit log: a write the UI forwards is audited
	// on the server that acts, with the browser's address.
	auditDir := t.TempDir()
	auditArgs := map[string][]string{}
	for i := range 3 {
		auditArgs[local.ServerID(i)] = []string{"--audit-log", filepath.Join(auditDir, local.ServerID(i)+".jsonl")}
	}
	cfg := local.Config{Binary: binary, Servers: 3, Agents: 1, BasePort: freeBasePort(t, 3), DataDir: t.TempDir(),
		LogLevel: "debug", Secure: filepath.Join(t.TempDir(), "tls"), ServerArgs: auditArgs}
	c := startLocal(t, cfg)
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	active := waitActive(t, c)
	standby := (active + 1) % 3
	ui := c.Servers[standby].URL // the browser stays on a standby
	submit := func(spec tandem.JobSpec) *tandem.Job {
		t.Helper()
		j, err := cl.SubmitJob(ctx, spec, client.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	login := func(secret string) {
		t.Helper()
		b.nav(ui + "/ui/login")
		evalJS[bool](b, fmt.Sprintf(`document.getElementById("token").value = %q; document.querySelector("form.login").submit(); true`, secret))
		b.wait("logged in", `location.pathname === "/ui/" && document.querySelector("form.who")`, 20*time.Second)
	}

	t.Run("login", func(t *testing.T) {
		b.t = t
		b.nav(ui + "/ui/")
		b.wait("the login page", `location.pathname === "/ui/login"`, 10*time.Second)
		b.screenshot(shots, "login")
		b.axe("login", string(axeSrc))
		login(c.Token)
	})

	alpha := submit(tandem.JobSpec{Name: "alpha-report", Command: []string{"true"}, Labels: map[string]string{"team": "a"}, Submitter: "ann"})
	beta := submit(tandem.JobSpec{Name: "beta-etl", Command: []string{"true"}, Labels: map[string]string{"team": "b"}, Submitter: "bob"})

	t.Run("filters update the URL and the list", func(t *testing.T) {
		b.t = t
		b.nav(ui + "/ui/jobs")
		b.wait("both jobs listed", fmt.Sprintf(`document.getElementById("job-%s") && document.getElementById("job-%s")`, alpha.ID, beta.ID), 20*time.Second)
		evalJS[bool](b, `window.__noReload = 1; true`)
		// Type a search; the list follows without a reload.
		evalJS[bool](b, `{ const q = document.getElementById("f-q"); q.focus(); q.value = "alpha"; q.dispatchEvent(new Event("input", {bubbles: true})); } true`)
		b.wait("the URL to carry the search", `new URL(location.href).searchParams.get("q") === "alpha"`, 10*time.Second)
		b.wait("only alpha listed", fmt.Sprintf(`document.getElementById("job-%s") && !document.getElementById("job-%s")`, alpha.ID, beta.ID), 10*time.Second)
		// Choose a label through the form (Enter submits it).
		evalJS[bool](b, `{ const q = document.getElementById("f-q"); q.value = ""; document.getElementById("f-label").value = "team=b"; document.querySelector("form.filters").requestSubmit(); } true`)
		b.wait("the URL to carry the label", `new URL(location.href).searchParams.get("label") === "team=b" && !new URL(location.href).searchParams.has("q")`, 10*time.Second)
		b.wait("only beta listed", fmt.Sprintf(`document.getElementById("job-%s") && !document.getElementById("job-%s")`, beta.ID, alpha.ID), 10*time.Second)
		if evalJS[int](b, `window.__noReload || 0`) != 1 {
			t.Error("the page reloaded: want the list replaced in place")
		}
		// The URL is a bookmark: opened afresh, it shows the same list.
		b.nav(evalJS[string](b, "location.href"))
		b.wait("the bookmarked filter", fmt.Sprintf(`document.getElementById("f-label").value === "team=b" && document.getElementById("job-%s") && !document.getElementById("job-%s")`, beta.ID, alpha.ID), 10*time.Second)
	})

	t.Run("a new job appears live and a checked row stays checked", func(t *testing.T) {
		b.t = t
		b.nav(ui + "/ui/jobs")
		b.wait("live updates on", `document.getElementById("live-status").textContent.includes("on, from")`, 20*time.Second)
		evalJS[bool](b, fmt.Sprintf(`window.__noReload = 1; document.getElementById("sel-%s").click(); true`, alpha.ID))
		// The new job runs until the test lets it end (the agent runs on
		// this machine), so its row changes state after its box is checked,
		// whatever the timing.
		release := filepath.Join(t.TempDir(), "release")
		gamma := submit(tandem.JobSpec{Name: "gamma-live", Command: []string{"sh", "-c", `while [ ! -e "$0" ]; do sleep 0.1; done`, release}})
		row := fmt.Sprintf(`document.getElementById("job-%s")`, gamma.ID)
		// The default view is newest first: the new job comes in at the
		// top of the first page, the page the user is looking at.
		b.wait("the new job's row, first", fmt.Sprintf(`document.getElementById("jobs-rows").firstElementChild.id === "job-%s"`, gamma.ID), 20*time.Second)
		b.wait("the new job running", row+`.dataset.state === "running"`, 30*time.Second)
		// Check the new row's own box, and mark the row element: a row
		// replaced by the stream comes without the mark.
		evalJS[bool](b, fmt.Sprintf(`%s.dataset.old = "1"; document.getElementById("sel-%s").click(); document.getElementById("sel-%s").checked`, row, gamma.ID, gamma.ID))
		if err := os.WriteFile(release, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		// The row changes state as the job ends, replaced in place.
		b.wait("the new job's row replaced, succeeded", row+`.dataset.state === "succeeded" && !`+row+`.dataset.old`, 30*time.Second)
		for _, id := range []string{gamma.ID, alpha.ID} {
			if !evalJS[bool](b, fmt.Sprintf(`document.getElementById("sel-%s").checked`, id)) {
				t.Errorf("job %s's checked row is no longer checked", id)
			}
		}
		if evalJS[int](b, `window.__noReload || 0`) != 1 {
			t.Error("the page reloaded")
		}
		b.screenshot(shots, "jobs")
		b.axe("jobs", string(axeSrc))
	})

	var logJob *tandem.Job
	t.Run("the log follows live on a standby across a kill -9 of the active", func(t *testing.T) {
		b.t = t
		// The page's server must stay a standby through the failover, or
		// the page would follow the log on the new active. Drained, it does
		// not campaign (internal/server/ha.go, stepOne), so the third
		// server wins; it is undrained once the log has ended.
		third := (active + 2) % 3
		banner := func(what, state string) {
			t.Helper()
			b.wait(what, fmt.Sprintf(`document.getElementById("banner").textContent.includes("Rendered by server %s (%s)")`, local.ServerID(standby), state), 20*time.Second)
		}
		drain := func(on bool) error {
			_, err := cl.Drain(ctx, c.Servers[standby].URL, tandem.DrainRequest{Drain: on, WaitMS: 10_000})
			return err
		}
		if err := drain(true); err != nil {
			t.Fatalf("drain %s: %v", local.ServerID(standby), err)
		}
		drained := true
		defer func() {
			if drained {
				if err := drain(false); err != nil {
					t.Errorf("undrain %s: %v", local.ServerID(standby), err)
				}
			}
		}()
		logJob = submit(tandem.JobSpec{Name: "ticker", Command: []string{"sh", "-c", `i=0; while [ $i -lt 40 ]; do echo "tick $i"; i=$((i+1)); sleep 0.5; done`}})
		b.nav(ui + "/ui/jobs/" + logJob.ID)
		banner("the banner to say the page's server is a standby", "standby, draining")
		b.wait("the log to start", `document.getElementById("log").textContent.includes("tick 2\n")`, 30*time.Second)
		if err := c.Kill(active); err != nil { // SIGKILL
			t.Fatal(err)
		}
		if got := waitActive(t, c, active); got != third {
			t.Fatalf("new active after the kill: got %s, want %s (the page's server %s is drained)", local.ServerID(got), local.ServerID(third), local.ServerID(standby))
		}
		b.wait("the log to go on after the kill", `document.getElementById("log").textContent.includes("tick 25\n")`, 40*time.Second)
		b.wait("the whole log", `document.getElementById("log").textContent.includes("tick 39\n") && document.getElementById("log-status").textContent.includes("has ended")`, 40*time.Second)
		// The page followed the whole log on a standby: its banner, live,
		// still says so, and names the new active.
		banner("the banner to say the page's server is still a standby", "standby, draining")
		b.wait("the banner to name the new active", fmt.Sprintf(`document.getElementById("banner").textContent.includes("Active: %s ")`, local.ServerID(third)), 20*time.Second)
		// Only new bytes were appended: every line once, in order.
		lines := strings.Split(strings.TrimSpace(evalJS[string](b, `document.getElementById("log").textContent`)), "\n")
		want := make([]string, 40)
		for i := range want {
			want[i] = "tick " + strconv.Itoa(i)
		}
		if !slices.Equal(lines, want) {
			t.Errorf("log lines: got %q, want tick 0 to tick 39 once each", lines)
		}
		if err := drain(false); err != nil {
			t.Fatalf("undrain %s: %v", local.ServerID(standby), err)
		}
		drained = false
		banner("the banner to say the page's server is an undrained standby", "standby")
		b.wait("the job to show succeeded", `document.getElementById("job-summary").textContent.includes("succeeded")`, 30*time.Second)
		b.screenshot(shots, "job")
		b.axe("job", string(axeSrc))
	})

	// The cluster after the kill: a new active, and a standby to use.
	active = waitActive(t, c, active)
	standby = -1
	for i := range c.Servers {
		if i != active && c.PID(i) != 0 {
			standby = i
		}
	}
	if standby < 0 {
		t.Fatal("no standby left")
	}
	ui = c.Servers[standby].URL

	t.Run("kill from the UI through a standby", func(t *testing.T) {
		b.t = t
		j := submit(tandem.JobSpec{Name: "sleeper", Command: []string{"sleep", "120"}})
		b.nav(ui + "/ui/jobs/" + j.ID)
		b.wait("the job running", `document.getElementById("job-summary").textContent.includes("running")`, 30*time.Second)
		b.wait("the banner to name this standby", fmt.Sprintf(`document.getElementById("banner").textContent.includes("Rendered by server %s (standby)")`, local.ServerID(standby)), 10*time.Second)
		evalJS[bool](b, `document.querySelector('a[href^="/ui/kill"]').click(); true`)
		b.wait("the confirmation", `location.pathname === "/ui/kill" && document.querySelector("form.confirm")`, 10*time.Second)
		b.screenshot(shots, "confirm-kill")
		b.axe("confirm-kill", string(axeSrc))
		evalJS[bool](b, `document.querySelector("form.confirm button[type=submit]").click(); true`)
		b.wait("the kill's message", fmt.Sprintf(`document.querySelector(".flash") && document.querySelector(".flash").textContent.includes("forwarded to %s")`, local.ServerID(active)), 20*time.Second)
		got, err := cl.WaitJob(ctx, j.ID, 200*time.Millisecond)
		if err != nil || got.State != tandem.JobKilled {
			t.Fatalf("job after the UI's kill: %v, %v; want killed", got, err)
		}
		// The standby audited the kill it redirected with the browser's
		// address (the connection's peer); the active audited it with that
		// same address, naming the standby that forwarded it.
		killPath := "/v1/jobs/" + j.ID + "/kill"
		s := auditLine(t, filepath.Join(auditDir, local.ServerID(standby)+".jsonl"), killPath)
		if s.Remote == "" || s.Via != "" || s.Status != http.StatusTemporaryRedirect || s.Identity.TokenName == "" {
			t.Fatalf("the standby's audit line of the kill: remote %q via %q status %d token %q; want the browser's address, not forwarded, 307, and the token",
				s.Remote, s.Via, s.Status, s.Identity.TokenName)
		}
		e := auditLine(t, filepath.Join(auditDir, local.ServerID(active)+".jsonl"), killPath)
		via := "server " + local.ServerID(standby) + " ("
		if e.Remote != s.Remote || !strings.HasPrefix(e.Via, via) || strings.Contains(e.Via, "("+e.Remote+")") ||
			e.Identity.TokenName != s.Identity.TokenName || e.Status != http.StatusOK {
			t.Errorf("the active's audit line of the forwarded kill: remote %q via %q token %q status %d; want remote %q (the browser's, as the standby saw it), via %s…, token %q, 200",
				e.Remote, e.Via, e.Identity.TokenName, e.Status, s.Remote, via, s.Identity.TokenName)
		}
	})

	var failedRun string // a failed workflow run, for the read-only check
	t.Run("schedules and workflows", func(t *testing.T) {
		b.t = t
		sch, err := cl.CreateSchedule(ctx, tandem.ScheduleSpec{Name: "hourly-report", Every: tandem.Duration(time.Hour),
			Job: tandem.JobSpec{Command: []string{"true"}}}, client.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b.nav(ui + "/ui/schedules")
		b.wait("the schedule listed", fmt.Sprintf(`document.getElementById("schedule-%s") && document.getElementById("schedule-%s").textContent.includes("every 1h0m0s")`, sch.ID, sch.ID), 20*time.Second)
		// Trigger it from its page, through the standby: confirmed, then
		// the run appears live with its job.
		b.nav(ui + "/ui/schedules/" + sch.ID)
		b.wait("the schedule's next fire times", `document.querySelectorAll("#schedule-next li").length === 10`, 20*time.Second)
		evalJS[bool](b, `document.querySelector('a[href$="/trigger"]').click(); true`)
		b.wait("the confirmation", `location.pathname.endsWith("/trigger") && document.querySelector("form.confirm")`, 10*time.Second)
		evalJS[bool](b, `document.querySelector("form.confirm button[type=submit]").click(); true`)
		b.wait("the trigger's message", `document.querySelector(".flash") && document.querySelector(".flash").textContent.includes("Triggered")`, 20*time.Second)
		b.wait("the manual run with its job, succeeded", `[...document.querySelectorAll("#run-rows tr")].some(r => r.textContent.includes("manual") && r.querySelector('a[href^="/ui/jobs/"]') && r.textContent.includes("succeeded"))`, 30*time.Second)
		b.screenshot(shots, "schedule")
		b.axe("schedule", string(axeSrc))
		b.nav(ui + "/ui/schedules")
		b.wait("the list's last run", fmt.Sprintf(`document.getElementById("schedule-%s").textContent.includes("fired (manual)")`, sch.ID), 20*time.Second)
		b.wait("schedules live", `document.getElementById("live-status").textContent.includes("on, from")`, 20*time.Second)
		b.screenshot(shots, "schedules")
		b.axe("schedules", string(axeSrc))

		// A workflow whose steps run and fail while the page is open: the
		// DAG's boxes change state live.
		job := func(cmd ...string) json.RawMessage {
			raw, _ := json.Marshal(tandem.JobSpec{Command: cmd})
			return raw
		}
		wf, err := cl.RunWorkflow(ctx, tandem.WorkflowSpec{Name: "ui-pipeline", Steps: []tandem.WorkflowStep{
			{Name: "extract", Job: job("sleep", "2")},
			{Name: "transform", Job: job("true"), Needs: []string{"extract"}},
			{Name: "check", Job: job("false"), Needs: []string{"extract"}},
			{Name: "load", Job: job("true"), Needs: []string{"transform", "check"}},
		}}, client.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b.nav(ui + "/ui/workflows/" + wf.ID)
		b.wait("the DAG drawn", `document.querySelectorAll("#wf-dag g.node").length === 4`, 20*time.Second)
		b.wait("workflow page live", `document.getElementById("live-status").textContent.includes("on, from")`, 20*time.Second)
		evalJS[bool](b, `window.__noReload = 1; true`)
		step := func(name, state string) string {
			return fmt.Sprintf(`(document.querySelector('#wf-dag g.node[data-step=%q]') || {}).textContent.includes(%q) && document.getElementById("step-%s").textContent.includes(%q)`, name, state, name, state)
		}
		b.wait("every step's final state in the DAG and the table", step("extract", "succeeded")+" && "+step("transform", "succeeded")+" && "+
			step("check", "failed")+" && "+step("load", "upstream_failed"), 40*time.Second)
		b.wait("the run failed", `document.getElementById("wf-summary").textContent.includes("failed")`, 20*time.Second)
		if evalJS[int](b, `window.__noReload || 0`) != 1 {
			t.Error("the workflow page reloaded: want the DAG updated in place")
		}
		if !evalJS[bool](b, `!!document.querySelector('#wf-actions a[href$="/retry"]')`) {
			t.Error("a failed run: want a Retry… button")
		}
		failedRun = wf.ID
		b.screenshot(shots, "workflow")
		b.axe("workflow", string(axeSrc))
		b.nav(ui + "/ui/workflows?state=failed")
		b.wait("the failed run listed", fmt.Sprintf(`document.getElementById("wf-%s")`, wf.ID), 20*time.Second)
		b.screenshot(shots, "workflows")
		b.axe("workflows", string(axeSrc))
	})

	t.Run("a log's tail and earlier bytes split no character", func(t *testing.T) {
		b.t = t
		// "x", 36 000 two-byte characters, "\n": 72 002 bytes. The last
		// 64 KiB begin at byte 6 466, the second byte of a character, and
		// "load earlier" asks for the bytes before it.
		j := submit(tandem.JobSpec{Name: "utf8-log", Command: []string{"sh", "-c", `printf x; yes é | head -n 36000 | tr -d '\n'; echo`}})
		if got, err := cl.WaitJob(ctx, j.ID, 200*time.Millisecond); err != nil || got.State != tandem.JobSucceeded {
			t.Fatalf("the job: %v, %v; want succeeded", got, err)
		}
		b.nav(ui + "/ui/jobs/" + j.ID)
		b.wait("the log's tail", `document.getElementById("log-status").textContent.includes("has ended; 72002 bytes") && !document.getElementById("log-earlier").hidden`, 30*time.Second)
		tailText := evalJS[string](b, `document.getElementById("log").textContent`)
		// The tail skips the half character it began with: bytes 6 467 on.
		if want := strings.Repeat("é", 32767) + "\n"; tailText != want {
			t.Errorf("the tail: %d bytes, %d U+FFFD, starting %q; want %d bytes of whole characters", len(tailText),
				strings.Count(tailText, "\uFFFD"), tailText[:min(8, len(tailText))], len(want))
		}
		evalJS[bool](b, `document.getElementById("log-earlier").click(); true`)
		b.wait("the earlier bytes", `document.getElementById("log-earlier").hidden`, 20*time.Second)
		if got, want := evalJS[string](b, `document.getElementById("log").textContent`), "x"+strings.Repeat("é", 36000)+"\n"; got != want {
			t.Errorf("the log after load earlier: %d bytes, %d U+FFFD; want the job's %d bytes exactly", len(got), strings.Count(got, "\uFFFD"), len(want))
		}
	})

	t.Run("every page passes axe", func(t *testing.T) {
		b.t = t
		leader := etcdLeader(t, ctx, c)
		for _, p := range []struct{ name, path, ready string }{
			{"overview", "/ui/", `document.getElementById("ov-jobs")`},
			// The cluster page names the member etcd itself calls leader.
			{"cluster", "/ui/cluster", fmt.Sprintf(`document.getElementById("server-rows").children.length >= 2 && document.getElementById("etcd").textContent.includes(%q)`, "Leader: "+leader+".")},
			{"ha", "/ui/ha", `document.getElementById("ha-rows").children.length >= 2`},
			{"agents", "/ui/agents", `document.getElementById("agent-agent1")`},
			{"agent", "/ui/agents/agent1", `document.getElementById("agent-summary")`},
		} {
			b.nav(ui + p.path)
			b.wait(p.name+" ready", p.ready, 20*time.Second)
			b.wait(p.name+" live", `document.getElementById("live-status").textContent.includes("on, from")`, 20*time.Second)
			b.screenshot(shots, p.name)
			b.axe(p.name, string(axeSrc))
		}
		// The checker can fail: an unlabelled field is a violation.
		evalJS[bool](b, `document.querySelector("main").append(document.createElement("input")); true`)
		if got := evalJS[string](b, `axe.run(document).then(r => r.violations.map(v => v.id).join(","))`); !strings.Contains(got, "label") {
			t.Errorf("axe on a page with an unlabelled field: violations %q, want label", got)
		}
	})

	t.Run("a read-only token sees no kill button and a forged POST gets 403", func(t *testing.T) {
		b.t = t
		nt, err := cl.CreateToken(ctx, client.TokenRequest{Name: "viewer", Policy: "read"})
		if err != nil {
			t.Fatal(err)
		}
		j := submit(tandem.JobSpec{Name: "keep-running", Command: []string{"sleep", "120"}})
		evalJS[bool](b, `document.querySelector("form.who").submit(); true`) // log out
		b.wait("logged out", `location.pathname === "/ui/login"`, 10*time.Second)
		login(nt.Secret)
		b.nav(ui + "/ui/jobs/" + j.ID)
		b.wait("the job page", `document.getElementById("job-actions")`, 20*time.Second)
		if evalJS[bool](b, `!!document.querySelector('a[href^="/ui/kill"]') || document.body.innerText.includes("Kill…")`) {
			t.Error("a read token sees a kill button")
		}
		if !evalJS[bool](b, `document.getElementById("job-actions").textContent.includes("policy (read)")`) {
			t.Error("want the page to say why there is no button")
		}
		b.screenshot(shots, "job-read-only")
		b.axe("job-read-only", string(axeSrc))
		if failedRun != "" {
			b.nav(ui + "/ui/workflows/" + failedRun)
			b.wait("the run's page", `document.getElementById("wf-actions")`, 20*time.Second)
			if !evalJS[bool](b, `!document.querySelector('#wf-actions a') && document.getElementById("wf-actions").textContent.includes("policy (read)")`) {
				t.Error("a read token sees workflow buttons, or no reason why not")
			}
			b.nav(ui + "/ui/jobs/" + j.ID)
			b.wait("the job page again", `document.getElementById("job-actions")`, 20*time.Second)
		}
		// Forge the POST the button would make, with this session's own CSRF
		// token: the API's guard still refuses it.
		status := evalJS[int](b, fmt.Sprintf(`fetch("/ui/kill", {method: "POST", credentials: "same-origin",
			body: new URLSearchParams({id: %q, csrf: document.querySelector("input[name=csrf]").value})}).then(r => r.status)`, j.ID))
		if status != 403 {
			t.Errorf("forged kill with a read token: got %d, want 403", status)
		}
		got, err := cl.GetJob(ctx, j.ID)
		if err != nil || got.State.Terminal() || got.KillRequested {
			t.Errorf("the job after the forged kill: %+v, %v; want it untouched", got, err)
		}
		// An error page keeps the rules too.
		b.nav(ui + "/ui/jobs/nope")
		b.wait("the error page", `document.querySelector("h1").textContent === "Not Found" && document.querySelector("p.error[role=alert]").textContent.includes("nope")`, 20*time.Second)
		b.screenshot(shots, "error")
		b.axe("error", string(axeSrc))
	})
}

// etcdLeader returns the name of the etcd member that etcd, asked through
// a live member, calls its leader.
func etcdLeader(t *testing.T, ctx context.Context, c *local.Cluster) string {
	t.Helper()
	eps := c.EtcdEndpoints()
	var live []string
	for i := range c.Servers {
		if c.PID(i) != 0 {
			live = append(live, eps[i]) // a server's embedded member
		}
	}
	cli, err := etcdauth.NewClient(live, c.EtcdFiles())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var leader uint64
	for _, ep := range live {
		if st, err := cli.Status(ctx, ep); err == nil && st.Leader != 0 {
			leader = st.Leader
			break
		}
	}
	ml, err := cli.MemberList(ctx)
	if err != nil || leader == 0 {
		t.Fatalf("etcd's leader: member %x, member list error %v; want a leader", leader, err)
	}
	for _, m := range ml.Members {
		if m.ID == leader && m.Name != "" {
			return m.Name
		}
	}
	t.Fatalf("etcd's leader %x is not among its members %v", leader, ml.Members)
	return ""
}

// auditLine returns the last line of the audit log at path whose path is
// urlPath, failing if there is none.
func auditLine(t *testing.T, path, urlPath string) acl.AuditEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var found *acl.AuditEntry
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e acl.AuditEntry
		if json.Unmarshal([]byte(line), &e) == nil && e.Path == urlPath {
			found = &e
		}
	}
	if found == nil {
		t.Fatalf("%s has no line for %s:\n%s", path, urlPath, b)
	}
	return *found
}
