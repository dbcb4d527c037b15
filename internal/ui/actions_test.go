package ui_test

import (
	"encoding/json"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/tandemhq/tandem"
)

// confirmForm returns the confirmation page's form, its action and its
// hidden fields (csrf left out).
func confirmForm(t *testing.T, doc *html.Node) (*html.Node, string, map[string][]string) {
	t.Helper()
	forms := all(doc, func(n *html.Node) bool { cl, _ := attr(n, "class"); return n.Data == "form" && cl == "confirm" })
	if len(forms) != 1 {
		t.Fatalf("got %d confirmation forms, want 1", len(forms))
	}
	if m, _ := attr(forms[0], "method"); m != "post" {
		t.Errorf("confirmation form method %q, want post", m)
	}
	action, _ := attr(forms[0], "action")
	hidden := map[string][]string{}
	for _, in := range all(forms[0], tag("input")) {
		typ, _ := attr(in, "type")
		name, _ := attr(in, "name")
		if typ != "hidden" || name == "csrf" {
			continue
		}
		v, _ := attr(in, "value")
		hidden[name] = append(hidden[name], v)
	}
	return forms[0], action, hidden
}

// Resubmit asks first; its POST needs the CSRF token; the API gets POST
// /v1/jobs with the job's own spec and the confirmation's idempotency key
// (a double click sends the same key, so the API makes one job); the
// browser goes to the new job.
func TestResubmit(t *testing.T) {
	h := newHarness(t, true)
	want := h.f.jobs["j1"].JobSpec
	h.api.answer = func(w http.ResponseWriter, r *http.Request) {
		var spec tandem.JobSpec // the recorder has read the body
		calls := h.api.got()
		if err := json.Unmarshal([]byte(calls[len(calls)-1].Body), &spec); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		nj := &tandem.Job{ID: "j9", JobSpec: spec, State: tandem.JobPending, CreatedAt: t0, UpdatedAt: t0}
		h.f.update(func() { h.f.addJob(nj) })
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(nj)
	}
	c := client(t)
	h.login(t, c, "tdm_submit")

	// The job page's button leads to a confirmation; asking makes no call.
	_, doc := h.get(t, c, "/ui/jobs/j1")
	if len(all(doc, func(n *html.Node) bool {
		href, _ := attr(n, "href")
		return n.Data == "a" && href == "/ui/jobs/j1/resubmit"
	})) != 1 {
		t.Error("the job page has no Resubmit… link to /ui/jobs/j1/resubmit")
	}
	resp, doc := h.get(t, c, "/ui/jobs/j1/resubmit")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("confirmation: got %d, want 200", resp.StatusCode)
	}
	checkAccessible(t, resp, doc)
	_, action, hidden := confirmForm(t, doc)
	if action != "/ui/jobs/j1/resubmit" {
		t.Errorf("confirmation posts to %q, want /ui/jobs/j1/resubmit", action)
	}
	if q := text(doc); !strings.Contains(q, `Submit a new job with the spec of j1 (sh -c echo hi)?`) {
		t.Errorf("confirmation %q: want the question naming the job and its command", q)
	}
	key := ""
	if ks := hidden["key"]; len(ks) == 1 && strings.HasPrefix(ks[0], "ui-") && len(ks[0]) > 10 {
		key = ks[0]
	} else {
		t.Fatalf("confirmation's idempotency key %q: want one, ui-<random>", ks)
	}
	_, doc2 := h.get(t, c, "/ui/jobs/j1/resubmit")
	if _, _, h2 := confirmForm(t, doc2); slices.Equal(h2["key"], hidden["key"]) {
		t.Errorf("two confirmations carry the same key %q: want a fresh one each", key)
	}
	if calls := h.api.got(); len(calls) != 0 {
		t.Fatalf("the confirmation called the API: %+v", calls)
	}

	// Without the CSRF token: refused, the API untouched.
	if resp := h.post(t, c, "/ui/jobs/j1/resubmit", map[string][]string{"key": {key}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("resubmit without the CSRF token: got %d, want 403", resp.StatusCode)
	}
	if calls := h.api.got(); len(calls) != 0 {
		t.Fatalf("a POST without the CSRF token reached the API: %+v", calls)
	}

	// Confirmed: one POST /v1/jobs with the same spec, the key and the
	// caller's token; the browser lands on the new job.
	resp = h.post(t, c, "/ui/jobs/j1/resubmit", map[string][]string{"key": {key}, "csrf": {csrfOf(t, doc)}})
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/ui/jobs/j9" {
		t.Fatalf("resubmit: got %d to %q, want 303 to /ui/jobs/j9", resp.StatusCode, loc)
	}
	calls := h.api.got()
	if len(calls) != 1 {
		t.Fatalf("API calls %+v: want one", calls)
	}
	call := calls[0]
	if call.Method != http.MethodPost || call.Path != "/v1/jobs" || call.Auth != "Bearer tdm_submit" || call.IdemKey != key {
		t.Errorf("API call %s %s auth %q key %q: want POST /v1/jobs with the session's token and key %q",
			call.Method, call.Path, call.Auth, call.IdemKey, key)
	}
	var got tandem.JobSpec
	if err := json.Unmarshal([]byte(call.Body), &got); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("submitted spec: got %+v (%v), want j1's %+v", got, err, want)
	}
	_, doc = h.get(t, c, "/ui/jobs/j9")
	if msg := text(doc); !strings.Contains(msg, "Submitted j9 with the spec of j1.") || !strings.Contains(msg, "Job j9") {
		t.Errorf("the new job's page %q: want it, saying what was done", msg)
	}

	// A second click of the same confirmation sends the same key: the
	// API (I3) returns the job it made, not another.
	h.post(t, c, "/ui/jobs/j1/resubmit", map[string][]string{"key": {key}, "csrf": {csrfOf(t, doc)}})
	if calls := h.api.got(); len(calls) != 2 || calls[1].IdemKey != key {
		t.Errorf("second click: calls %+v, want a second POST with key %q", calls, key)
	}

	// Refused by the API: the job's page says why.
	h.api.answer = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: &tandem.Error{Code: tandem.EFORBIDDEN, Message: "token reader may not submit"}})
	}
	resp = h.post(t, c, "/ui/jobs/j1/resubmit", map[string][]string{"key": {key}, "csrf": {csrfOf(t, doc)}})
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/ui/jobs/j1" {
		t.Fatalf("refused resubmit: got %d to %q, want 303 back to /ui/jobs/j1", resp.StatusCode, loc)
	}
	_, doc = h.get(t, c, "/ui/jobs/j1")
	if msg := text(doc); !strings.Contains(msg, "Refused: 403 Forbidden: token reader may not submit") {
		t.Errorf("refused resubmit: page %q lacks the API's refusal", msg)
	}
}

// Kill of several jobs: the jobs page's check boxes feed a GET form to the
// confirmation, which lists every job; confirmed, each gets its own API
// kill, and the browser returns to the list.
func TestBulkKill(t *testing.T) {
	h := newHarness(t, true)
	c := client(t)
	h.login(t, c, "tdm_submit")

	_, doc := h.get(t, c, "/ui/jobs")
	bulk := byID(doc, "bulk")
	if bulk == nil {
		t.Fatal("the jobs page has no bulk form")
	}
	if m, _ := attr(bulk, "method"); m != "get" {
		t.Errorf("bulk form method %q, want get (the confirmation asks first)", m)
	}
	if a, _ := attr(bulk, "action"); a != "/ui/kill" {
		t.Errorf("bulk form action %q, want /ui/kill", a)
	}
	var boxes []string
	for _, in := range all(doc, tag("input")) {
		if f, _ := attr(in, "form"); f == "bulk" {
			if n, _ := attr(in, "name"); n == "id" {
				v, _ := attr(in, "value")
				boxes = append(boxes, v)
			}
		}
	}
	slices.Sort(boxes)
	if !slices.Equal(boxes, []string{"j1", "j2", "j3"}) {
		t.Errorf("check boxes of the bulk form: %v, want one per job", boxes)
	}

	// Nothing selected: back to the list, saying so.
	resp, _ := h.get(t, c, "/ui/kill")
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/ui/jobs" {
		t.Errorf("kill with nothing selected: got %d to %q, want 303 to /ui/jobs", resp.StatusCode, loc)
	}
	_, doc = h.get(t, c, "/ui/jobs")
	if !strings.Contains(text(doc), "Select the jobs to kill first.") {
		t.Error("kill with nothing selected: no message")
	}

	resp, doc = h.get(t, c, "/ui/kill?id=j1&id=j3")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("confirmation: got %d, want 200", resp.StatusCode)
	}
	checkAccessible(t, resp, doc)
	form, action, hidden := confirmForm(t, doc)
	if action != "/ui/kill" || !slices.Equal(hidden["id"], []string{"j1", "j3"}) {
		t.Errorf("confirmation form: action %q ids %v, want /ui/kill with j1 and j3", action, hidden["id"])
	}
	var items []string
	for _, li := range all(form, tag("li")) {
		items = append(items, text(li))
	}
	if !strings.Contains(text(form), "Kill these 2 jobs?") || !slices.Equal(items, []string{"j1", "j3"}) {
		t.Errorf("confirmation %q, items %v: want the question and both jobs listed", text(form), items)
	}
	if calls := h.api.got(); len(calls) != 0 {
		t.Fatalf("the confirmation called the API: %+v", calls)
	}

	resp = h.post(t, c, "/ui/kill", map[string][]string{"id": {"j1", "j3"}, "csrf": {csrfOf(t, doc)}})
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/ui/jobs" {
		t.Fatalf("bulk kill: got %d to %q, want 303 to /ui/jobs", resp.StatusCode, loc)
	}
	var paths []string
	for _, call := range h.api.got() {
		if call.Method != http.MethodPost || call.Auth != "Bearer tdm_submit" {
			t.Errorf("API call %+v: want a POST with the session's token", call)
		}
		paths = append(paths, call.Path)
	}
	if want := []string{"/v1/jobs/j1/kill", "/v1/jobs/j3/kill"}; !slices.Equal(paths, want) {
		t.Errorf("API calls %v, want %v", paths, want)
	}
	_, doc = h.get(t, c, "/ui/jobs")
	if !strings.Contains(text(doc), "Kill requested for j1, j3.") {
		t.Error("the list does not say the kills were requested")
	}
}
