package ui_test

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ui"
)

// childIDs returns the ids of the element children of the element id.
func childIDs(doc *html.Node, id string) []string {
	var ids []string
	n := byID(doc, id)
	if n == nil {
		return nil
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode {
			v, _ := attr(c, "id")
			ids = append(ids, v)
		}
	}
	return ids
}

func TestSchedulePages(t *testing.T) {
	h := newHarness(t, false)
	c := client(t)
	resp, doc := h.get(t, c, "/ui/schedules")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("schedules: got %d, want 200", resp.StatusCode)
	}
	checkAccessible(t, resp, doc)
	if got := childIDs(doc, "schedule-rows"); !slices.Equal(got, []string{"schedule-s1", "schedule-s2", "schedule-s3"}) {
		t.Errorf("rows %v, want s1, s2, s3", got)
	}
	for id, want := range map[string][]string{
		"schedule-s1": {"nightly-etl", "s1", "cron 0 2 * * * (Europe/Paris)", "active", "2026-11-30 13:00:00 UTC", "2026-11-30 15:00:00 UTC",
			"2026-11-30 12:00:00 UTC: fired (manual), job j1 running"},
		"schedule-s2": {"s2", "every 1h0m0s", "paused (db migration)"},
		"schedule-s3": {"pipeline", "done", "none", "fired, workflow w1 running"},
	} {
		row := text(byID(doc, id))
		for _, w := range want {
			if !strings.Contains(row, w) {
				t.Errorf("%s: %q lacks %q", id, row, w)
			}
		}
	}
	if live, _ := attr(all(doc, tag("body"))[0], "data-live"); live == "" {
		t.Error("the schedules page has no live updates")
	}

	resp, doc = h.get(t, c, "/ui/schedules/s1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("schedule s1: got %d, want 200", resp.StatusCode)
	}
	checkAccessible(t, resp, doc)
	body := text(doc)
	for _, w := range []string{"State: active", "cron 0 2 * * * (Europe/Paris)", "Next fire: 2026-11-30 13:00:00 UTC", "etl --all", "Pause…", "Trigger now…"} {
		if !strings.Contains(body, w) {
			t.Errorf("schedule page lacks %q", w)
		}
	}
	if n := len(all(byID(doc, "schedule-next"), tag("li"))); n != 10 {
		t.Errorf("next fire times: got %d, want 10", n)
	}
	// Runs newest first: nominal time, outcome, reason, job and state,
	// lateness, who decided.
	var runs []string
	for _, tr := range all(byID(doc, "run-rows"), tag("tr")) {
		runs = append(runs, text(tr))
	}
	want := []string{
		"2026-11-30 12:00:00 UTC fired manual job j1 running 0s rm1 (epoch 12) at 2026-11-30 12:00:00 UTC",
		"2026-11-30 11:00:00 UTC fired — job j2 failed 1.5s rm1 (epoch 12) at 2026-11-30 12:00:00 UTC",
		"2026-11-30 08:00:00 UTC through 2026-11-30 10:00:00 UTC (3 times) skipped catchup — 0s rm1 (epoch 12) at 2026-11-30 12:00:00 UTC",
	}
	if !slices.Equal(runs, want) {
		t.Errorf("runs:\n got %q\nwant %q", runs, want)
	}
	_, doc = h.get(t, c, "/ui/schedules/s2")
	if b := text(doc); !strings.Contains(b, "Resume…") || strings.Contains(b, "Pause…") || !strings.Contains(b, "State: paused: db migration") {
		t.Errorf("a paused schedule: want Resume… and no Pause…, and its note")
	}
	for path, code := range map[string]int{"/ui/schedules/nope": 404, "/ui/schedules/s1/explode": 404, "/ui/schedules/nope/pause": 404} {
		resp, doc := h.get(t, c, path)
		if resp.StatusCode != code || !strings.Contains(text(byID(doc, "main")), "nope") && !strings.Contains(text(byID(doc, "main")), "explode") {
			t.Errorf("%s: got %d %q, want %d naming what is unknown", path, resp.StatusCode, text(byID(doc, "main")), code)
		}
	}
}

func TestScheduleActions(t *testing.T) {
	h := newHarness(t, true)
	c := client(t)
	h.login(t, c, "tdm_submit")
	resp, doc := h.get(t, c, "/ui/schedules/s1/pause")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pause confirmation: got %d", resp.StatusCode)
	}
	checkAccessible(t, resp, doc)
	if !strings.Contains(text(doc), "Pause schedule nightly-etl (s1)?") || byID(doc, "cf-note") == nil {
		t.Errorf("want a question naming the schedule, and a note field")
	}
	forms := all(doc, func(n *html.Node) bool {
		a, _ := attr(n, "action")
		return n.Data == "form" && a == "/ui/schedules/s1/pause"
	})
	if len(forms) != 1 {
		t.Fatal("no form posting the pause")
	}
	csrf := csrfOf(t, doc)
	resp = h.post(t, c, "/ui/schedules/s1/pause", url.Values{"csrf": {csrf}, "note": {"disk full"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/schedules/s1" {
		t.Fatalf("pause: got %d to %q, want 303 back to the schedule", resp.StatusCode, resp.Header.Get("Location"))
	}
	h.post(t, c, "/ui/schedules/s2/resume", url.Values{"csrf": {csrf}})
	h.post(t, c, "/ui/schedules/s1/trigger", url.Values{"csrf": {csrf}})
	got := h.api.got()
	want := []apiCall{
		{Method: "POST", Path: "/v1/schedules/s1/pause", Auth: "Bearer tdm_submit", Body: `{"note":"disk full"}`, Server: "self"},
		{Method: "POST", Path: "/v1/schedules/s2/resume", Auth: "Bearer tdm_submit", Server: "self"},
		{Method: "POST", Path: "/v1/schedules/s1/trigger", Auth: "Bearer tdm_submit", Server: "self"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("API calls:\n got %+v\nwant %+v", got, want)
	}
	_, doc = h.get(t, c, "/ui/schedules/s1")
	if !strings.Contains(text(doc), "Triggered s1.") {
		t.Error("want the result shown")
	}
	// Without the CSRF field: refused before the API.
	if resp := h.post(t, c, "/ui/schedules/s1/pause", url.Values{}); resp.StatusCode != http.StatusForbidden || len(h.api.got()) != 3 {
		t.Errorf("pause without csrf: got %d, want 403 and no API call", resp.StatusCode)
	}

	// A read token sees no button, and the API's refusal of a forged
	// POST is a 403.
	r := client(t)
	h.login(t, r, "tdm_read")
	_, doc = h.get(t, r, "/ui/schedules/s1")
	if b := text(doc); strings.Contains(b, "Pause…") || strings.Contains(b, "Trigger now…") || !strings.Contains(b, "policy (read)") {
		t.Error("a read token sees schedule buttons, or no reason why not")
	}
	h.api.answer = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"error":{"code":"forbidden","message":"token reader (read) lacks submit"}}`))
	}
	if resp := h.post(t, r, "/ui/schedules/s1/trigger", url.Values{"csrf": {csrfOf(t, doc)}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("forged trigger with a read token: got %d, want 403", resp.StatusCode)
	}
}

func TestWorkflowPages(t *testing.T) {
	h := newHarness(t, false)
	c := client(t)
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"wf-w2", "wf-w1"}}, // newest first
		{"order=oldest", []string{"wf-w1", "wf-w2"}},
		{"state=failed", []string{"wf-w2"}},
		{"schedule=s3", []string{"wf-w1"}},
		{"q=pip", []string{"wf-w1"}},
		{"q=w2", []string{"wf-w2"}},
		{"q=nothing", []string{"wf-empty"}},
	} {
		resp, doc := h.get(t, c, "/ui/workflows?"+tc.query)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: got %d", tc.query, resp.StatusCode)
		}
		checkAccessible(t, resp, doc)
		if got := childIDs(doc, "wf-rows"); !slices.Equal(got, tc.want) {
			t.Errorf("%s: rows %v, want %v", tc.query, got, tc.want)
		}
	}
	_, doc := h.get(t, c, "/ui/workflows")
	if row := text(byID(doc, "wf-w1")); !strings.Contains(row, "1 succeeded, 1 running, 1 pending, 1 failed") || !strings.Contains(row, "s3") {
		t.Errorf("w1 row %q: want its steps counted and its schedule", row)
	}
	for _, bad := range []string{"state=bogus", "limit=0", "limit=9999", "order=up"} {
		if resp, _ := h.get(t, c, "/ui/workflows?"+bad); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: got %d, want 400", bad, resp.StatusCode)
		}
	}
	// Cursor paging keeps the filter and the order.
	for _, tc := range []struct{ query, page1, page2 string }{
		{"limit=1", "wf-w2", "wf-w1"},
		{"limit=1&order=oldest", "wf-w1", "wf-w2"},
	} {
		_, doc = h.get(t, c, "/ui/workflows?"+tc.query)
		next := all(doc, func(n *html.Node) bool { r, _ := attr(n, "rel"); return n.Data == "a" && r == "next" })
		if got := childIDs(doc, "wf-rows"); !slices.Equal(got, []string{tc.page1}) || len(next) != 1 {
			t.Fatalf("%s: page 1: %v, want [%s] and a next link", tc.query, got, tc.page1)
		}
		href, _ := attr(next[0], "href")
		if _, doc = h.get(t, c, href); !slices.Equal(childIDs(doc, "wf-rows"), []string{tc.page2}) {
			t.Errorf("%s: page 2 (%s): %v, want [%s]", tc.query, href, childIDs(doc, "wf-rows"), tc.page2)
		}
	}

	resp, doc := h.get(t, c, "/ui/workflows/w1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("run w1: got %d", resp.StatusCode)
	}
	checkAccessible(t, resp, doc)
	// The DAG: a box per step with its state as text, an arrow per need.
	states := map[string]string{}
	for _, g := range all(byID(doc, "wf-dag"), func(n *html.Node) bool { _, ok := attr(n, "data-step"); return n.Data == "g" && ok }) {
		name, _ := attr(g, "data-step")
		states[name] = text(g)
	}
	for step, want := range map[string]string{"extract": "succeeded, attempt 1", "transform": "running, attempt 2", "report": "failed, attempt 1", "load": "pending"} {
		if !strings.Contains(states[step], want) {
			t.Errorf("DAG box %s: %q, want %q written in it", step, states[step], want)
		}
	}
	if n := len(all(byID(doc, "wf-dag"), func(n *html.Node) bool { cl, _ := attr(n, "class"); return n.Data == "path" && cl == "edge" })); n != 4 {
		t.Errorf("DAG arrows: got %d, want 4", n)
	}
	if svg := all(byID(doc, "wf-dag"), tag("svg")); len(svg) != 1 || len(all(svg[0], tag("title"))) == 0 || !strings.Contains(text(all(svg[0], tag("desc"))[0]), "4 steps on 3 levels") {
		t.Error("the DAG drawing needs a title and a text description")
	}
	for id, want := range map[string][]string{
		"step-extract":   {"0", "succeeded", "1 of 1", "j2", "rows=42"},
		"step-transform": {"1", "running", "2 of 3", "j1", "earlier: j0", "attempt 1 failed: exit 1; retrying", "extract"},
		"step-report":    {"1", "failed", "exit status 3", "j3"},
		"step-load":      {"2", "pending", "transform, report (trigger all_done)"},
	} {
		row := text(byID(doc, id))
		for _, w := range want {
			if !strings.Contains(row, w) {
				t.Errorf("%s: %q lacks %q", id, row, w)
			}
		}
	}
	if links := all(doc, func(n *html.Node) bool { h, _ := attr(n, "href"); return n.Data == "a" && h == "/ui/jobs?workflow=w1" }); len(links) != 1 {
		t.Error("no link to the run's jobs")
	}
	if b := text(doc); !strings.Contains(b, "Cancel…") || strings.Contains(b, "Retry…") || !strings.Contains(b, "day=2026-11-30") {
		t.Error("a running run: want Cancel… and no Retry…, and its params")
	}
	if _, doc = h.get(t, c, "/ui/workflows/w2"); !strings.Contains(text(doc), "Retry…") || strings.Contains(text(doc), "Cancel…") {
		t.Error("a failed run: want Retry… and no Cancel…")
	}
	if resp, _ := h.get(t, c, "/ui/workflows/nope"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown run: got %d, want 404", resp.StatusCode)
	}
}

func TestWorkflowActionsAndLive(t *testing.T) {
	h := newHarness(t, true)
	c := client(t)
	h.login(t, c, "tdm_submit")
	_, doc := h.get(t, c, "/ui/workflows/w1/cancel")
	if !strings.Contains(text(doc), "Cancel workflow run pipe (w1)?") {
		t.Fatal("no cancel confirmation")
	}
	h.post(t, c, "/ui/workflows/w1/cancel", url.Values{"csrf": {csrfOf(t, doc)}})
	h.post(t, c, "/ui/workflows/w2/retry", url.Values{"csrf": {csrfOf(t, doc)}})
	got := h.api.got()
	if len(got) != 2 || got[0].Path != "/v1/workflows/w1/cancel" || got[1].Path != "/v1/workflows/w2/retry" || got[0].Auth != "Bearer tdm_submit" {
		t.Errorf("API calls %+v: want cancel w1 and retry w2 with the session's token", got)
	}

	// Live: a step that changes sends its row and the DAG, nothing else.
	_, doc = h.get(t, c, "/ui/workflows/w1")
	live, _ := attr(all(doc, tag("body"))[0], "data-live")
	resp, err := c.Get(h.srv.URL + live)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s := sse{bufio.NewReader(resp.Body)}
	if ev := s.next(t); !slices.Contains(ev.parts(), "wf-dag") || !slices.Contains(ev.parts(), "step-load") {
		t.Fatalf("first event: parts %v, want every part", ev.parts())
	}
	h.f.update(func() {
		w := h.f.workflows["w1"]
		p := map[string]tandem.StepRun{}
		for k, v := range w.Progress {
			p[k] = v
		}
		p["transform"] = tandem.StepRun{State: tandem.StepSucceeded, Attempt: 2, JobID: "j1", EndedAt: t0.Add(time.Minute)}
		w.Progress = p
	})
	ev := s.next(t)
	if want := []string{"banner-inner", "step-transform", "wf-dag", "wf-summary"}; !slices.Equal(ev.parts(), want) {
		t.Errorf("after transform succeeds: parts %v, want %v", ev.parts(), want)
	}
}

// A Service without schedules or workflows has no such pages, as the API
// has no such routes.
func TestNoSchedulePagesWithoutSchedules(t *testing.T) {
	h := newHarness(t, false, func(c *ui.Config) { c.Service = struct{ ui.Service }{c.Service} })
	c := client(t)
	for _, p := range []string{"/ui/schedules", "/ui/schedules/s1", "/ui/workflows", "/ui/workflows/w1/cancel"} {
		if resp, _ := h.get(t, c, p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: got %d, want 404", p, resp.StatusCode)
		}
	}
	_, doc := h.get(t, c, "/ui/")
	if b := text(all(doc, tag("nav"))[0]); strings.Contains(b, "Schedules") || strings.Contains(b, "Workflows") {
		t.Errorf("nav %q: want no schedule or workflow page", b)
	}
}

func TestClusterShowsEtcd(t *testing.T) {
	var clock atomic.Int64 // seconds after t0
	h := newHarness(t, false, func(c *ui.Config) {
		c.Now = func() time.Time { return t0.Add(time.Duration(clock.Load()) * time.Second) }
	})
	c := client(t)
	resp, doc := h.get(t, c, "/ui/cluster")
	checkAccessible(t, resp, doc)
	for id, want := range map[string]string{
		"server-rm1": "rm1, etcd leader",
		"server-rm2": "rm2 (rendered this page)",
		"etcd":       "Leader: rm1. This server's etcd client reached member rm2, etcd 3.6.0.",
		"etcd-33":    "follower",
		"etcd-22":    "follower (answered this server)",
	} {
		if got := text(byID(doc, id)); !strings.Contains(got, want) {
			t.Errorf("%s: %q lacks %q", id, got, want)
		}
	}
	if got := text(byID(doc, "server-rm2")); !strings.Contains(got, "rm2, follower") {
		t.Errorf("server-rm2 %q: want its etcd member", got)
	}
	// No leader known, then etcd not answering: the page says so and
	// still renders, once the UI's 2 s cache of etcd's answer has passed.
	h.f.update(func() { h.f.etcdLeader = 0 })
	if _, doc = h.get(t, c, "/ui/cluster"); !strings.Contains(text(byID(doc, "etcd")), "Leader: rm1") {
		t.Errorf("within 2 s: want the cached answer")
	}
	clock.Add(3)
	if _, doc = h.get(t, c, "/ui/cluster"); !strings.Contains(text(byID(doc, "etcd")), "No etcd leader is known") {
		t.Errorf("no leader: %q", text(byID(doc, "etcd")))
	}
	h.f.update(func() { h.f.etcdErr = errors.New("etcd member list: context deadline exceeded") })
	clock.Add(3)
	if resp, doc = h.get(t, c, "/ui/cluster"); resp.StatusCode != 200 || !strings.Contains(text(byID(doc, "etcd")), "context deadline exceeded") {
		t.Errorf("etcd down: got %d %q", resp.StatusCode, text(byID(doc, "etcd")))
	}
}

// A schedule's page is live: a new run comes in as one row, at the top.
func TestScheduleLive(t *testing.T) {
	h := newHarness(t, false)
	c := client(t)
	resp, err := c.Get(h.srv.URL + "/ui/live?view=" + url.QueryEscape("/ui/schedules/s1"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s := sse{bufio.NewReader(resp.Body)}
	first := s.next(t)
	if len(first.Data.Order["run-rows"]) != 3 {
		t.Fatalf("first event: run rows %v, want 3", first.Data.Order["run-rows"])
	}
	h.f.update(func() {
		h.f.runs["s1"] = append(h.f.runs["s1"], tandem.ScheduleRun{ScheduleID: "s1", NominalTime: t0.Add(time.Hour), Count: 1,
			Outcome: tandem.OutcomeSkipped, Reason: tandem.ReasonOverlap, FiredBy: "rm1", Epoch: 12, CommittedAt: t0})
	})
	ev := s.next(t)
	id := fmt.Sprintf("run-%d-skipped-overlap", t0.Add(time.Hour).UnixMilli())
	if o := ev.Data.Order["run-rows"]; len(o) != 4 || o[0] != id || !slices.Contains(ev.parts(), id) || slices.Contains(ev.parts(), first.Data.Order["run-rows"][0]) {
		t.Errorf("after a new run: parts %v, order %v; want only the new row (%s) sent, first", ev.parts(), o, id)
	}
}
