package supervise

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
)

// call makes a request to a supervisor's API and returns the status and
// body.
func call(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestHTTPAPI: a supervisor's API on its Listen address answers the
// operator's questions as JSON, refuses bad requests with the error
// envelope and the status of its code, and serves metrics and liveness.
func TestHTTPAPI(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start(c.config("a", c.service("web", "run")))
	st := c.waitHealthy("web", "a")
	c.waitEvent("web", st.Epoch)
	api := a.cfg.URL

	if code, body := call(t, "GET", api+"/healthz", ""); code != http.StatusOK || body != "ok\n" {
		t.Errorf("GET /healthz: got %d %q, want 200 ok", code, body)
	}
	code, body := call(t, "GET", api+"/v1/supervise/services", "")
	var sts []ServiceStatus
	if err := json.Unmarshal([]byte(body), &sts); code != http.StatusOK || err != nil || len(sts) != 1 ||
		sts[0].Service != "web" || sts[0].Node != "a" || sts[0].State != StateHealthy || sts[0].Epoch != st.Epoch {
		t.Errorf("GET services: got %d %s, want web healthy on a", code, body)
	}
	code, body = call(t, "GET", api+"/v1/supervise/nodes", "")
	var nodes []NodeInfo
	if err := json.Unmarshal([]byte(body), &nodes); code != http.StatusOK || err != nil || len(nodes) != 1 || nodes[0].Node != "a" ||
		nodes[0].URL != api || nodes[0].Slots != 1 || strings.Join(nodes[0].Services, ",") != "web" {
		t.Errorf("GET nodes: got %d %s, want a with its URL, 1 slot, offering web", code, body)
	}
	code, body = call(t, "GET", api+"/v1/supervise/history?service=web", "")
	var evs []Event
	if err := json.Unmarshal([]byte(body), &evs); code != http.StatusOK || err != nil || len(evs) != 1 || evs[0].Cause != tandem.CauseInitial {
		t.Errorf("GET history of web: got %d %s, want its initial takeover", code, body)
	}
	if code, body = call(t, "GET", api+"/v1/supervise/history?service=nope", ""); code != http.StatusOK || body != "[]\n" {
		t.Errorf("GET history of an unknown service: got %d %q, want 200 []", code, body)
	}

	for _, tt := range []struct {
		name, method, path, body string
		status                   int
		code, msg                string
	}{
		{"move, body not JSON", "POST", "/v1/supervise/services/web/move", "b", 400, tandem.EINVALID, "request body"},
		{"move, unknown field", "POST", "/v1/supervise/services/web/move", `{"to":"b","now":true}`, 400, tandem.EINVALID, `unknown field "now"`},
		{"move, empty body", "POST", "/v1/supervise/services/web/move", "", 400, tandem.EINVALID, "request body"},
		{"ban, bad duration", "POST", "/v1/supervise/services/web/ban", `{"node":"a","for":"soon"}`, 400, tandem.EINVALID, `duration "soon"`},
		{"ban for nothing", "POST", "/v1/supervise/services/web/ban", `{"node":"a"}`, 400, tandem.EINVALID, "must be positive"},
		{"move an unknown service", "POST", "/v1/supervise/services/nope/move", `{"to":"a"}`, 404, tandem.ENOTFOUND, "no supervised service nope"},
		{"move to an unknown node", "POST", "/v1/supervise/services/web/move", `{"to":"zz"}`, 404, tandem.ENOTFOUND, "no live supervisor on node zz"},
		{"move to its owner", "POST", "/v1/supervise/services/web/move", `{"to":"a"}`, 409, tandem.ECONFLICT, "already runs on a"},
		{"ban from an unknown service", "POST", "/v1/supervise/services/nope/ban", `{"node":"a","for":"1m"}`, 404, tandem.ENOTFOUND, "no supervised service nope"},
		{"clear an unknown service", "POST", "/v1/supervise/services/nope/clear", "", 404, tandem.ENOTFOUND, "no supervised service nope"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body := call(t, tt.method, api+tt.path, tt.body)
			var env tandem.ErrorBody
			if err := json.Unmarshal([]byte(body), &env); err != nil || env.Error == nil {
				t.Fatalf("got %d %q, want the error envelope", status, body)
			}
			if status != tt.status || env.Error.Code != tt.code || !strings.Contains(env.Error.Message, tt.msg) {
				t.Errorf("got %d %s: %s, want %d %s containing %q", status, env.Error.Code, env.Error.Message, tt.status, tt.code, tt.msg)
			}
		})
	}

	if code, body := call(t, "POST", api+"/v1/supervise/services/web/clear", ""); code != http.StatusOK || body != `{"bans_cleared":0}`+"\n" {
		t.Errorf("POST clear: got %d %q, want 200 and no ban cleared", code, body)
	}
	code, body = call(t, "GET", api+"/metrics", "")
	for _, want := range []string{
		"tandem_supervise_services_owned 1\n",
		`tandem_supervise_state{service="web",state="healthy"} 1` + "\n",
		`tandem_supervise_failovers_total{cause="initial",service="web"} 1` + "\n",
		`tandem_supervise_phase_seconds_count{phase="start",service="web"} 1` + "\n",
		"tandem_supervise_lease_lead_seconds ",
	} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("GET /metrics: got %d, want a line %q", code, want)
		}
	}

	// A ban through the API: a gives web up, and nobody else can take it.
	if code, body := call(t, "POST", api+"/v1/supervise/services/web/ban", `{"node":"a","for":"1h","reason":"disk"}`); code != http.StatusOK ||
		body != `{"node":"a","service":"web"}`+"\n" {
		t.Errorf("POST ban: got %d %q, want 200", code, body)
	}
	waitFor(t, "web given up", long, func() bool { return c.status("web").State == StateUnplaced })
	code, body = call(t, "GET", api+"/v1/supervise/services", "")
	if err := json.Unmarshal([]byte(body), &sts); code != http.StatusOK || err != nil || len(sts) != 1 || len(sts[0].Bans) != 1 ||
		sts[0].Bans[0].Reason != "disk" || !strings.HasPrefix(sts[0].Candidates["a"], "banned until ") {
		t.Errorf("GET services after the ban: got %d %s, want web unplaced, a banned for disk", code, body)
	}
	if got := a.procs("web"); len(got) != 0 {
		t.Errorf("a: got processes %v after its ban, want none", got)
	}
}
