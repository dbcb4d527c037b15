package ui_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ui"
)

// ---- HTML helpers ----

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func all(root *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	return out
}

func tag(name string) func(*html.Node) bool {
	return func(n *html.Node) bool { return n.Data == name }
}

func byID(root *html.Node, id string) *html.Node {
	ns := all(root, func(n *html.Node) bool { v, _ := attr(n, "id"); return v == id })
	if len(ns) == 0 {
		return nil
	}
	return ns[0]
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return strings.Join(strings.Fields(b.String()), " ")
}

func ancestor(n *html.Node, name string) *html.Node {
	for p := n.Parent; p != nil; p = p.Parent {
		if p.Type == html.ElementNode && p.Data == name {
			return p
		}
	}
	return nil
}

// client is a browser: cookies kept, redirects not followed.
func client(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (h *harness) get(t *testing.T, c *http.Client, path string) (*http.Response, *html.Node) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.srv.URL+path, nil)
	req.Header.Set("Accept", "text/html")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	doc, err := html.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, doc
}

// login logs c in with secret.
func (h *harness) login(t *testing.T, c *http.Client, secret string) {
	t.Helper()
	_, doc := h.get(t, c, "/ui/login")
	resp := h.post(t, c, "/ui/login", url.Values{"token": {secret}, "next": {"/ui/jobs"}, "csrf": {csrfOf(t, doc)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login with %s: got %d, want 303", secret, resp.StatusCode)
	}
}

func (h *harness) post(t *testing.T, c *http.Client, path string, form url.Values) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", h.srv.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func csrfOf(t *testing.T, doc *html.Node) string {
	t.Helper()
	for _, in := range all(doc, tag("input")) {
		if n, _ := attr(in, "name"); n == "csrf" {
			v, _ := attr(in, "value")
			return v
		}
	}
	t.Fatal("no csrf field in the page")
	return ""
}

// checkAccessible checks the rules every page keeps: the nav bar with every
// page, the banner, tables with captions and scoped headers, labelled
// controls, no inline script or style (the CSP forbids them), and the CSP.
func checkAccessible(t *testing.T, resp *http.Response, doc *html.Node) {
	t.Helper()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q: want default-src 'none' and script-src 'self'", csp)
	}
	nav := all(doc, tag("nav"))
	if len(nav) != 1 {
		t.Fatalf("got %d nav bars, want 1", len(nav))
	}
	var links []string
	for _, a := range all(nav[0], tag("a")) {
		links = append(links, text(a))
	}
	for _, want := range []string{"Overview", "Jobs", "Cluster", "HA timeline", "Agents"} {
		if !slices.Contains(links, want) {
			t.Errorf("nav links %q: missing %q", links, want)
		}
	}
	if b := byID(doc, "banner"); b == nil || !strings.Contains(text(b), "Rendered by server rm2 (standby)") || !strings.Contains(text(b), "Active: rm1 (epoch 12)") {
		t.Errorf("banner: want who rendered the page, its state and the active")
	}
	if lang, _ := attr(all(doc, tag("html"))[0], "lang"); lang == "" {
		t.Error("html has no lang")
	}
	for _, tb := range all(doc, tag("table")) {
		if len(all(tb, tag("caption"))) != 1 {
			t.Errorf("a table without a caption: %.80s", text(tb))
		}
		for _, th := range all(tb, tag("th")) {
			scope, _ := attr(th, "scope")
			want := "row"
			if ancestor(th, "thead") != nil {
				want = "col"
			}
			if scope != want {
				t.Errorf("th %q: scope %q, want %q", text(th), scope, want)
			}
		}
	}
	labels := map[string]bool{}
	for _, l := range all(doc, tag("label")) {
		if f, ok := attr(l, "for"); ok {
			labels[f] = true
		}
	}
	for _, in := range all(doc, func(n *html.Node) bool { return n.Data == "input" || n.Data == "select" }) {
		if typ, _ := attr(in, "type"); typ == "hidden" {
			continue
		}
		id, _ := attr(in, "id")
		_, aria := attr(in, "aria-label")
		if !labels[id] && !aria && ancestor(in, "label") == nil {
			t.Errorf("control %s id=%q has no label", in.Data, id)
		}
	}
	for _, s := range all(doc, tag("script")) {
		if src, _ := attr(s, "src"); src == "" {
			t.Error("inline script")
		}
	}
	if n := all(doc, func(n *html.Node) bool { _, ok := attr(n, "style"); return ok || n.Data == "style" }); len(n) > 0 {
		t.Errorf("%d inline styles", len(n))
	}
}

func TestPages(t *testing.T) {
	h := newHarness(t, false)
	c := client(t)
	for _, tc := range []struct {
		path  string
		title string
		want  []string // texts the page must show
		live  bool
	}{
		{"/ui/", "Overview", []string{"3 jobs in all; 1 live attempts", "1 ready, 1 lost", "rm1", "12", "j2", "exit status 1"}, true},
		{"/ui/jobs", "Jobs", []string{"3 jobs shown", "etl-daily", "report", "etl-weekly", "team=data"}, true},
		{"/ui/jobs/j1", "Job j1", []string{"State: running", "sh -c \"echo hi\"", "PASSWORD", "hidden", "attempt 1 on agent w1 (epoch 12)", "1 attempts of 1 allowed", "Kill…", "Resubmit…",
			"step transform of workflow run w1"}, true},
		{"/ui/jobs/j2", "Job j2", []string{"schedule s1, nominal time 2026-11-30 11:00:00 UTC"}, true},
		{"/ui/cluster", "Cluster", []string{"rm1", "http://rm1.test", "rm2 (rendered this page)", "standby", "Drain rm1", "Hand the active role from rm1 to"}, true},
		{"/ui/ha", "HA timeline", []string{"lease-expired", "1.500 s", "0.250 s", "0.125 s", "initial", "unknown", "Failover timeline"}, true},
		{"/ui/agents", "Agents", []string{"w1", "0.1 of 2 CPU", "64 of 1024 MB", "zone=a", "lost"}, true},
		{"/ui/agents/w1", "Agent w1", []string{"1 live attempts on w1", "j1", "etl-daily"}, true},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, doc := h.get(t, c, tc.path)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("got %d, want 200", resp.StatusCode)
			}
			checkAccessible(t, resp, doc)
			if h1 := all(doc, tag("h1")); len(h1) != 1 || text(h1[0]) != tc.title {
				t.Errorf("h1: want %q", tc.title)
			}
			body := text(doc)
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			if strings.Contains(body, "hunter2") {
				t.Error("an env value shows: want it masked")
			}
			live, _ := attr(all(doc, tag("body"))[0], "data-live")
			if tc.live != (live != "") {
				t.Errorf("data-live %q: want live %v", live, tc.live)
			}
		})
	}
	// The HA page draws the timeline: one mark per failover, one bar per
	// known phase.
	_, doc := h.get(t, c, "/ui/ha")
	if n := len(all(doc, func(n *html.Node) bool {
		cl, _ := attr(n, "class")
		return n.Data == "g" && strings.HasPrefix(cl, "mark")
	})); n != 2 {
		t.Errorf("timeline marks: got %d, want 2", n)
	}
	if n := len(all(doc, tag("rect"))); n != 3 {
		t.Errorf("phase bars: got %d, want 3", n)
	}
	resp, _ := h.get(t, c, "/ui/jobs/nope")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown job: got %d, want 404", resp.StatusCode)
	}
}

func rowIDs(doc *html.Node) []string {
	var ids []string
	for _, tr := range all(byID(doc, "jobs-rows"), tag("tr")) {
		if id, _ := attr(tr, "id"); strings.HasPrefix(id, "job-") {
			ids = append(ids, strings.TrimPrefix(id, "job-"))
		}
	}
	return ids
}

func TestJobFilters(t *testing.T) {
	h := newHarness(t, false)
	c := client(t)
	for _, tc := range []struct {
		query string
		want  []string
	}{
		// Newest first by default: a new job shows at the top of the
		// first page.
		{"", []string{"j3", "j2", "j1"}},
		{"order=oldest", []string{"j1", "j2", "j3"}},
		{"state=failed", []string{"j2"}},
		{"q=ETL", []string{"j3", "j1"}},
		{"q=ETL&order=oldest", []string{"j1", "j3"}},
		{"q=j2", []string{"j2"}},
		{"label=team%3Ddata", []string{"j1"}},
		{"label=team", []string{"j3", "j1"}},
		{"submitter=alice", []string{"j3", "j1"}},
		{"agent=w2", []string{"j2"}},
		{"submitter=alice&state=pending", []string{"j3"}},
		{"schedule=s1", []string{"j2"}},
		{"workflow=w1", []string{"j1"}},
		{"q=nothing", nil},
	} {
		t.Run(tc.query, func(t *testing.T) {
			resp, doc := h.get(t, c, "/ui/jobs?"+tc.query)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("got %d", resp.StatusCode)
			}
			if got := rowIDs(doc); !slices.Equal(got, tc.want) {
				t.Errorf("rows: got %v, want %v", got, tc.want)
			}
			// The form shows the filter it applied.
			q, _ := url.ParseQuery(tc.query)
			for k, v := range q {
				if k == "state" || k == "order" {
					continue
				}
				if in := byID(doc, "f-"+k); in == nil || func() string { s, _ := attr(in, "value"); return s }() != v[0] {
					t.Errorf("filter field %s does not show %q", k, v[0])
				}
			}
		})
	}
	for _, bad := range []string{"state=bogus", "order=sideways", "limit=0", "limit=x", "schedule=a%20b"} {
		resp, doc := h.get(t, c, "/ui/jobs?"+bad)
		name, _, _ := strings.Cut(bad, "=")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(text(byID(doc, "main")), name) {
			t.Errorf("%s: got %d %q, want 400 saying why", bad, resp.StatusCode, text(byID(doc, "main")))
		}
	}
	// Cursor paging keeps the filters and the order, both ways.
	for _, tc := range []struct {
		query        string
		page1, page2 []string
	}{
		{"submitter=alice&limit=1", []string{"j3"}, []string{"j1"}},
		{"submitter=alice&limit=1&order=oldest", []string{"j1"}, []string{"j3"}},
		{"limit=2", []string{"j3", "j2"}, []string{"j1"}},
	} {
		_, doc := h.get(t, c, "/ui/jobs?"+tc.query)
		if got := rowIDs(doc); !slices.Equal(got, tc.page1) {
			t.Fatalf("%s: page 1: got %v, want %v", tc.query, got, tc.page1)
		}
		next := all(doc, func(n *html.Node) bool { r, _ := attr(n, "rel"); return n.Data == "a" && r == "next" })
		if len(next) != 1 {
			t.Fatalf("%s: no next page link", tc.query)
		}
		href, _ := attr(next[0], "href")
		_, doc = h.get(t, c, href)
		if got := rowIDs(doc); !slices.Equal(got, tc.page2) {
			t.Errorf("%s: page 2 (%s): got %v, want %v", tc.query, href, got, tc.page2)
		}
		if n := all(doc, func(n *html.Node) bool { r, _ := attr(n, "rel"); return n.Data == "a" && r == "next" }); len(n) != 0 {
			t.Errorf("%s: page 2 has a next link: want the end", tc.query)
		}
	}
}

func TestButtonsFollowPolicy(t *testing.T) {
	h := newHarness(t, true)
	for _, tc := range []struct {
		secret                string
		kill, drain, failover bool
	}{
		{"tdm_read", false, false, false},
		{"tdm_submit", true, false, false},
		{"tdm_operator", true, true, true},
	} {
		t.Run(tc.secret, func(t *testing.T) {
			c := client(t)
			h.login(t, c, tc.secret)
			_, doc := h.get(t, c, "/ui/jobs/j1")
			kill := strings.Contains(text(doc), "Kill…")
			if kill != tc.kill {
				t.Errorf("kill button shown: %v, want %v", kill, tc.kill)
			}
			_, doc = h.get(t, c, "/ui/cluster")
			forms := func(action string) bool {
				return len(all(doc, func(n *html.Node) bool { a, _ := attr(n, "action"); return n.Data == "form" && a == action })) > 0
			}
			if got := forms("/ui/cluster/drain"); got != tc.drain {
				t.Errorf("drain shown: %v, want %v", got, tc.drain)
			}
			if got := forms("/ui/cluster/failover"); got != tc.failover {
				t.Errorf("failover shown: %v, want %v", got, tc.failover)
			}
		})
	}
}

func TestLogin(t *testing.T) {
	h := newHarness(t, true)
	c := client(t)
	resp, _ := h.get(t, c, "/ui/jobs?state=running")
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/login?next=%2Fui%2Fjobs%3Fstate%3Drunning") {
		t.Fatalf("no session: got %d to %q, want 303 to the login page", resp.StatusCode, loc)
	}
	resp, doc := h.get(t, c, "/ui/login")
	checkAccessible(t, resp, doc)
	csrf := csrfOf(t, doc)
	resp = h.post(t, c, "/ui/login", url.Values{"token": {"tdm_wrong"}, "csrf": {csrf}})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("bad token: got %d, want 401", resp.StatusCode)
	}
	resp = h.post(t, c, "/ui/login", url.Values{"token": {"tdm_read"}, "csrf": {csrf}, "next": {"//evil.example/"}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("login with next //evil: got %d to %q, want 303 to /ui/", resp.StatusCode, resp.Header.Get("Location"))
	}
	var tok *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "tandem-token-default" {
			tok = ck
		}
	}
	if tok == nil || !tok.HttpOnly || tok.SameSite != http.SameSiteStrictMode || tok.Path != "/" || tok.Value != "tdm_read" {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, path /", tok)
	}
	resp, doc = h.get(t, c, "/ui/jobs")
	if resp.StatusCode != http.StatusOK || !strings.Contains(text(doc), "Signed in with token reader (policy read)") {
		t.Errorf("after login: got %d, want the page naming the token", resp.StatusCode)
	}
	// A cookie with a token deleted since is a new login.
	c.Jar.SetCookies(mustURL(h.srv.URL), []*http.Cookie{{Name: "tandem-token-default", Value: "tdm_deleted", Path: "/"}})
	resp, _ = h.get(t, c, "/ui/jobs")
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("deleted token: got %d, want 303 to login", resp.StatusCode)
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestPostsNeedSameOriginAndCSRF(t *testing.T) {
	h := newHarness(t, true)
	c := client(t)
	h.login(t, c, "tdm_submit")
	_, doc := h.get(t, c, "/ui/jobs/j1")
	csrf := csrfOf(t, doc)
	for _, tc := range []struct {
		name    string
		form    url.Values
		site    string
		want    int
		reached bool
	}{
		{"no csrf field", url.Values{"id": {"j1"}}, "same-origin", http.StatusForbidden, false},
		{"wrong csrf", url.Values{"id": {"j1"}, "csrf": {strings.Repeat("0", 32)}}, "same-origin", http.StatusForbidden, false},
		{"cross-site", url.Values{"id": {"j1"}, "csrf": {csrf}}, "cross-site", http.StatusForbidden, false},
		{"good", url.Values{"id": {"j1"}, "csrf": {csrf}}, "same-origin", http.StatusSeeOther, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.api.got())
			req, _ := http.NewRequest(http.MethodPost, h.srv.URL+"/ui/kill", strings.NewReader(tc.form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Sec-Fetch-Site", tc.site)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("got %d, want %d", resp.StatusCode, tc.want)
			}
			calls := h.api.got()[before:]
			if reached := len(calls) > 0; reached != tc.reached {
				t.Fatalf("API reached: %v, want %v", reached, tc.reached)
			}
			if tc.reached && (calls[0].Path != "/v1/jobs/j1/kill" || calls[0].Auth != "Bearer tdm_submit" || calls[0].Method != http.MethodPost) {
				t.Errorf("API call %+v: want POST /v1/jobs/j1/kill with the session's token", calls[0])
			}
		})
	}
}

// A standby's UI forwards a write the API redirects to a live member of the
// cluster, with the caller's token, and to nowhere else.
func TestWritesForwardToMembersOnly(t *testing.T) {
	other := &recorder{}
	rm1 := httptest.NewServer(other.handler("rm1"))
	defer rm1.Close()
	h := newHarness(t, true, func(c *ui.Config) { c.ServerClient = rm1.Client() })
	h.f.servers[0].URL = rm1.URL
	redirectTo := rm1.URL
	h.api.answer = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", redirectTo+r.URL.RequestURI())
		w.WriteHeader(http.StatusTemporaryRedirect)
	}
	c := client(t)
	h.login(t, c, "tdm_submit")
	_, doc := h.get(t, c, "/ui/jobs/j1")
	resp := h.post(t, c, "/ui/kill", url.Values{"id": {"j1"}, "csrf": {csrfOf(t, doc)}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("kill: got %d, want 303", resp.StatusCode)
	}
	got := other.got()
	if len(got) != 1 || got[0].Path != "/v1/jobs/j1/kill" || got[0].Auth != "Bearer tdm_submit" {
		t.Fatalf("forwarded calls %+v: want one kill with the caller's token", got)
	}
	_, doc = h.get(t, c, "/ui/jobs/j1")
	if msg := text(doc); !strings.Contains(msg, "Kill requested for j1 (forwarded to rm1)") {
		t.Errorf("no message saying the kill was forwarded")
	}

	// A redirect to a host that is not a member: not followed, no token sent.
	stranger := &recorder{}
	evil := httptest.NewServer(stranger.handler("evil"))
	defer evil.Close()
	redirectTo = evil.URL
	resp = h.post(t, c, "/ui/kill", url.Values{"id": {"j1"}, "csrf": {csrfOf(t, doc)}})
	if len(stranger.got()) != 0 {
		t.Fatalf("the UI sent the write (and the token) to a non-member")
	}
	_, doc = h.get(t, c, resp.Header.Get("Location"))
	if !strings.Contains(text(doc), "not a live server of this cluster") {
		t.Errorf("want the refusal explained")
	}

	// The API's 403 is the answer.
	h.api.answer = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: &tandem.Error{Code: tandem.EFORBIDDEN, Message: "token reader (read) lacks submit"}})
	}
	resp = h.post(t, c, "/ui/kill", url.Values{"id": {"j1"}, "csrf": {csrfOf(t, doc)}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("API refusal: got %d, want 403", resp.StatusCode)
	}
}

func TestFailoverAndDrainGoToTheirServers(t *testing.T) {
	other := &recorder{}
	rm1 := httptest.NewServer(other.handler("rm1"))
	defer rm1.Close()
	h := newHarness(t, true, func(c *ui.Config) { c.ServerClient = rm1.Client() })
	h.f.servers[0].URL = rm1.URL
	c := client(t)
	h.login(t, c, "tdm_operator")
	_, doc := h.get(t, c, "/ui/cluster")
	csrf := csrfOf(t, doc)
	h.post(t, c, "/ui/cluster/failover", url.Values{"from": {"rm1"}, "to": {"rm2"}, "csrf": {csrf}})
	h.post(t, c, "/ui/cluster/drain", url.Values{"server": {"rm2"}, "drain": {"true"}, "csrf": {csrf}})
	if got := other.got(); len(got) != 1 || got[0].Path != "/v1/ha/failover" || !strings.Contains(got[0].Body, `"to":"rm2"`) || got[0].Auth != "Bearer tdm_operator" {
		t.Errorf("failover: got %+v, want it sent to rm1, the active", got)
	}
	if got := h.api.got(); len(got) != 1 || got[0].Path != "/v1/ha/drain" || !strings.Contains(got[0].Body, `"drain":true`) {
		t.Errorf("drain of rm2: got %+v, want it on rm2 itself", got)
	}
}

// sse reads a stream's events.
type sse struct {
	r *bufio.Reader
}

type event struct {
	ID, Name string
	Data     struct {
		Rev   int64                               `json:"rev"`
		Parts []struct{ ID, Parent, HTML string } `json:"parts"`
		Order map[string][]string                 `json:"order"`
	}
}

func (s sse) next(t *testing.T) event {
	t.Helper()
	var ev event
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("read event: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && ev.Name != "":
			return ev
		case strings.HasPrefix(line, "id: "):
			ev.ID = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.Name = line[7:]
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(line[6:]), &ev.Data); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (e event) parts() []string {
	var ids []string
	for _, p := range e.Data.Parts {
		ids = append(ids, p.ID)
	}
	slices.Sort(ids)
	return ids
}

func TestLiveSendsChangedRows(t *testing.T) {
	h := newHarness(t, false)
	c := client(t)
	_, doc := h.get(t, c, "/ui/jobs?label=team")
	live, _ := attr(all(doc, tag("body"))[0], "data-live")
	resp, err := c.Get(h.srv.URL + live)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	s := sse{bufio.NewReader(resp.Body)}
	ev := s.next(t)
	if want := []string{"banner-inner", "job-j1", "job-j3", "jobs-count-text"}; ev.Name != "parts" || !slices.Equal(ev.parts(), want) || ev.ID != "100" {
		t.Fatalf("first event %s id %s: parts %v, want %v at revision 100", ev.Name, ev.ID, ev.parts(), want)
	}
	if o := ev.Data.Order["jobs-rows"]; !slices.Equal(o, []string{"job-j3", "job-j1"}) {
		t.Errorf("order %v", o)
	}
	// One job changes: its row (and the banner's revision) alone.
	h.f.update(func() { h.f.jobs["j3"].State = tandem.JobRunning })
	ev = s.next(t)
	if want := []string{"banner-inner", "job-j3"}; !slices.Equal(ev.parts(), want) || ev.Data.Order != nil || ev.ID != "101" {
		t.Fatalf("after j3 runs: parts %v order %v id %s, want %v and no new order at 101", ev.parts(), ev.Data.Order, ev.ID, want)
	}
	// A new job that matches: its row, the count, and the new order, with
	// the new job first (newest first).
	h.f.update(func() {
		h.f.addJob(&tandem.Job{ID: "j4", JobSpec: tandem.JobSpec{Command: []string{"true"}, Labels: map[string]string{"team": "x"}}, State: tandem.JobPending, CreatedAt: t0, UpdatedAt: t0})
	})
	ev = s.next(t)
	if want := []string{"banner-inner", "job-j4", "jobs-count-text"}; !slices.Equal(ev.parts(), want) || !slices.Equal(ev.Data.Order["jobs-rows"], []string{"job-j4", "job-j3", "job-j1"}) {
		t.Fatalf("after j4: parts %v order %v, want %v", ev.parts(), ev.Data.Order, want)
	}
	// A job the filter drops goes from the order.
	h.f.update(func() { delete(h.f.jobs["j1"].Labels, "team") })
	ev = s.next(t)
	if !slices.Equal(ev.Data.Order["jobs-rows"], []string{"job-j4", "job-j3"}) {
		t.Fatalf("after j1 leaves the filter: order %v", ev.Data.Order)
	}
	// A stream for something that is not a page of the UI is refused.
	resp2, err := c.Get(h.srv.URL + "/ui/live?view=" + url.QueryEscape("https://evil.example/ui/jobs"))
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusBadRequest {
		t.Errorf("foreign view: got %d, want 400", resp2.StatusCode)
	}
}

func TestJobLog(t *testing.T) {
	// An agent whose attempt j1-1 has a log of 300 000 bytes.
	logData := make([]byte, 300_000)
	for i := range logData {
		logData[i] = byte('a' + i%26)
	}
	var reads int
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/attempts/j1-1/logs" {
			http.NotFound(w, r)
			return
		}
		reads++
		off, _ := strconv.Atoi(r.URL.Query().Get("offset"))
		if off < len(logData) {
			_, _ = w.Write(logData[off:])
		}
	}))
	defer agent.Close()
	h := newHarness(t, false, func(c *ui.Config) { c.AgentClient = agent.Client() })
	h.f.agents[0].URL = agent.URL
	c := client(t)
	get := func(q string) (*http.Response, string) {
		t.Helper()
		resp, err := c.Get(h.srv.URL + "/ui/jobs/j1/log?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := get("tail=1000")
	if resp.StatusCode != 200 || body != string(logData[299_000:]) || resp.Header.Get("X-Log-Start") != "299000" || resp.Header.Get("X-Log-End") != "300000" || resp.Header.Get("X-Log-Live") != "1" {
		t.Fatalf("tail: %d, %d bytes, start %s end %s live %s; want the last 1000 bytes from 299000", resp.StatusCode, len(body),
			resp.Header.Get("X-Log-Start"), resp.Header.Get("X-Log-End"), resp.Header.Get("X-Log-Live"))
	}
	resp, body = get("offset=10&limit=5")
	if body != string(logData[10:15]) || resp.Header.Get("X-Log-More") != "1" || resp.Header.Get("X-Log-End") != "15" {
		t.Errorf("offset 10 limit 5: got %q more %s", body, resp.Header.Get("X-Log-More"))
	}
	resp, body = get("offset=300000")
	if body != "" || resp.Header.Get("X-Log-More") != "0" || resp.Header.Get("X-Log-End") != "300000" {
		t.Errorf("at the end: got %q more %s end %s", body, resp.Header.Get("X-Log-More"), resp.Header.Get("X-Log-End"))
	}
	resp, body = get("download=1")
	if body != string(logData) || !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Errorf("download: %d bytes, disposition %q", len(body), resp.Header.Get("Content-Disposition"))
	}
	if resp, _ := get("attempt=7"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown attempt: got %d, want 400", resp.StatusCode)
	}
	resp, _ = c.Get(h.srv.URL + "/ui/jobs/j3/log")
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("no attempt yet: got %d, want 404", resp.StatusCode)
	}
}

func TestMountable(t *testing.T) {
	for _, tc := range []struct {
		method, accept string
		want           bool
	}{
		{"GET", "text/html,application/xhtml+xml,*/*;q=0.8", true},
		{"GET", "application/json", false},
		{"GET", "", false},
		{"POST", "text/html", false},
	} {
		r := httptest.NewRequest(tc.method, "/", nil)
		r.Header.Set("Accept", tc.accept)
		if got := ui.Mountable(r); got != tc.want {
			t.Errorf("%s Accept %q: got %v, want %v", tc.method, tc.accept, got, tc.want)
		}
	}
}

func TestStaticAssets(t *testing.T) {
	h := newHarness(t, false)
	_, doc := h.get(t, client(t), "/ui/")
	for _, n := range all(doc, func(n *html.Node) bool { return n.Data == "script" || n.Data == "link" }) {
		src, ok := attr(n, "src")
		if !ok {
			src, _ = attr(n, "href")
		}
		resp, err := http.Get(h.srv.URL + src)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Cache-Control"), "immutable") {
			t.Errorf("%s: %d, Cache-Control %q", src, resp.StatusCode, resp.Header.Get("Cache-Control"))
		}
	}
}

// TestVendoredHashes checks the vendored third-party files against the
// SHA-256 that scripts/vendor-ui.sh recorded: a file changed by hand, or
// swapped, fails here.
func TestVendoredHashes(t *testing.T) {
	dir := filepath.Join("testdata", "vendor")
	b, err := os.ReadFile(filepath.Join(dir, "MANIFEST"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 4 {
			t.Fatalf("MANIFEST line %q: want file, package, version, sha256", line)
		}
		data, err := os.ReadFile(filepath.Join(dir, f[0]))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != f[3] {
			t.Errorf("%s (%s %s): sha256 %s, want %s; run scripts/vendor-ui.sh", f[0], f[1], f[2], got, f[3])
		}
		n++
	}
	if n == 0 {
		t.Error("MANIFEST lists no file")
	}
}

// With no active known, a write is refused with the API's own words.
func TestWriteWithoutActiveIsRefusedClearly(t *testing.T) {
	h := newHarness(t, false)
	h.api.answer = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: &tandem.Error{Code: tandem.ENOACTIVE,
			Message: "server rm2 is standby and no active server is known; an election is under way, retry shortly"}})
	}
	c := client(t)
	_, doc := h.get(t, c, "/ui/kill?id=j1") // the confirmation page
	resp := h.post(t, c, "/ui/kill", url.Values{"id": {"j1"}, "csrf": {csrfOf(t, doc)}})
	_, doc = h.get(t, c, resp.Header.Get("Location"))
	flash := all(doc, func(n *html.Node) bool { r, _ := attr(n, "role"); return r == "alert" })
	if len(flash) != 1 || !strings.Contains(text(flash[0]), "no active server is known; an election is under way") {
		t.Errorf("want the refusal shown as an alert with the API's message")
	}
}

// With several shards the banner names the shards this server owns and the
// free ones, and the overview lists every owner.
func TestShardedBanner(t *testing.T) {
	h := newHarness(t, false)
	h.f.status = tandem.ServerStatus{ID: "rm2", Cluster: "default", State: tandem.StateActive, Shards: 3, Owned: []int{1}}
	h.f.shards = []tandem.ShardInfo{{Shard: 0, Owner: "rm1", Epoch: 5, Since: t0}, {Shard: 1, Owner: "rm2", Epoch: 6, Since: t0}, {Shard: 2}}
	_, doc := h.get(t, client(t), "/ui/")
	b := text(byID(doc, "banner"))
	for _, want := range []string{"Active-active, 3 shards; this server owns 1", "Shard 2 has no owner"} {
		if !strings.Contains(b, want) {
			t.Errorf("banner %q lacks %q", b, want)
		}
	}
	if o := text(byID(doc, "ov-owners")); !strings.Contains(o, "Shard owners") || !strings.Contains(o, "none (free)") || !strings.Contains(o, "rm1") {
		t.Errorf("owners: %q", o)
	}
}
