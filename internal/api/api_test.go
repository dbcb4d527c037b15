package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/api"
	"github.com/tandemhq/tandem/internal/transport"
)

// fake is a Service with function fields and plain values: enough to test
// the API's routing alone, without etcd. Integration tests use real servers.
type fake struct {
	id       string
	shards   int
	state    tandem.HAState
	status   tandem.ServerStatus
	silent   map[string]bool // servers whose probes fail
	owners   map[string]tandem.ServerRef
	anyOwner *tandem.ServerRef
	jobs     map[string]*tandem.Job
	handoff  tandem.ServerRef // a graceful failover under way to it (HandoffTarget)

	mu      sync.Mutex
	rev     int64
	head    int64 // etcd's revision, which Fresh waits for
	revCh   chan struct{}
	changed chan struct{} // closed at the next elect
	killed  []string
	submits int
	reg     *prometheus.Registry
}

func newFake(id string, shards int, state tandem.HAState) *fake {
	return &fake{id: id, shards: shards, state: state, status: tandem.ServerStatus{ID: id, State: state},
		silent: map[string]bool{}, owners: map[string]tandem.ServerRef{}, jobs: map[string]*tandem.Job{},
		revCh: make(chan struct{}), changed: make(chan struct{}), reg: prometheus.NewRegistry()}
}

func (f *fake) ID() string  { return f.id }
func (f *fake) Shards() int { return f.shards }
func (f *fake) State() tandem.HAState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}
func (f *fake) Status() tandem.ServerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}
func (f *fake) ActiveAnswering(id string) bool { return !f.silent[id] }
func (f *fake) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}
func (f *fake) TermsChanged() <-chan struct{} { return f.Changed() }
func (f *fake) HandoffTarget() (tandem.ServerRef, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.handoff, f.handoff.ID != ""
}

// elect makes active the active this server knows (itself if it is f.id),
// as the view of a real server changes when an election ends.
func (f *fake) elect(active tandem.ServerRef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status.ActiveID, f.status.ActiveURL = active.ID, active.URL
	if active.ID == f.id {
		f.state, f.status.State = tandem.StateActive, tandem.StateActive
	}
	close(f.changed)
	f.changed = make(chan struct{})
}
func (f *fake) Healthy(context.Context) error         { return nil }
func (f *fake) RetryAfter() time.Duration             { return 2 * time.Second }
func (f *fake) Registry() *prometheus.Registry        { return f.reg }
func (f *fake) History() []tandem.FailoverEvent       { return nil }
func (f *fake) Servers() []tandem.ServerInfo          { return nil }
func (f *fake) ShardInfos() []tandem.ShardInfo        { return nil }
func (f *fake) Agents() []tandem.AgentStatus          { return nil }
func (f *fake) Agent(string) (tandem.AgentInfo, bool) { return tandem.AgentInfo{}, false }
func (f *fake) OwnerOf(id string) (tandem.ServerRef, bool) {
	r, ok := f.owners[id]
	return r, ok
}
func (f *fake) AnyOwner() (tandem.ServerRef, bool) {
	if f.anyOwner == nil {
		return tandem.ServerRef{}, false
	}
	return *f.anyOwner, true
}
func (f *fake) Transition(context.Context, tandem.TransitionRequest) (tandem.ServerStatus, error) {
	return f.status, nil
}
func (f *fake) HandOff(context.Context, tandem.HandoffRequest) (tandem.ServerStatus, error) {
	return f.status, nil
}
func (f *fake) Drain(context.Context, tandem.DrainRequest) (tandem.ServerStatus, error) {
	return f.status, nil
}
func (f *fake) Submit(_ context.Context, spec tandem.JobSpec, _ string) (*tandem.Job, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits++
	j := &tandem.Job{ID: "j" + strconv.Itoa(f.submits), JobSpec: spec, State: tandem.JobPending}
	f.jobs[j.ID] = j
	return j, true, nil
}
func (f *fake) Kill(_ context.Context, id string) (*tandem.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.killed = append(f.killed, id)
	return &tandem.Job{ID: id, State: tandem.JobKilled}, nil
}
func (f *fake) Job(id string) (*tandem.Job, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if j, ok := f.jobs[id]; ok {
		return j, f.rev, nil
	}
	return nil, f.rev, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", id)
}
func (f *fake) Jobs(string, int, tandem.JobState) ([]*tandem.Job, string) { return nil, "" }
func (f *fake) Sync(context.Context, *tandem.SyncRequest) (*tandem.SyncResponse, error) {
	return &tandem.SyncResponse{ServerID: f.id}, nil
}

// Watch beats once and ends the stream, so a test calling every route
// gets an answer.
func (f *fake) Watch(_ context.Context, beat func([]byte) error) error { return beat([]byte{'.'}) }
func (f *fake) Revision() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}
func (f *fake) WaitRevision(ctx context.Context, rev int64) error {
	for {
		f.mu.Lock()
		cur, ch := f.rev, f.revCh
		f.mu.Unlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Fresh brings the fake's view to its etcd revision (head), as the real one
// catches up with etcd; a head of -1 is an etcd without quorum.
func (f *fake) Fresh(ctx context.Context) error {
	f.mu.Lock()
	head := f.head
	f.mu.Unlock()
	if head < 0 {
		return errors.New("etcd has no quorum")
	}
	return f.WaitRevision(ctx, head)
}

// advance moves the fake's view to rev.
func (f *fake) advance(rev int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev = rev
	close(f.revCh)
	f.revCh = make(chan struct{})
}

var _ api.Service = (*fake)(nil)

type answer struct {
	status int
	header http.Header
	body   string
}

func call(t *testing.T, h http.Handler, method, target string, header map[string]string, body string) answer {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Result().Body)
	return answer{rec.Code, rec.Result().Header, string(b)}
}

func code(body string) string {
	var eb tandem.ErrorBody
	if json.Unmarshal([]byte(body), &eb) != nil || eb.Error == nil {
		return ""
	}
	return eb.Error.Code
}

// Where each job request goes, by mode and by who owns what: the one-shard
// rules are today's (standby redirects to the active, unless the active is
// silent; no active: 503), and with several shards reads are local,
// submissions go to any owner, and a kill goes to its job's shard owner.
func TestRouting(t *testing.T) {
	rm2 := tandem.ServerRef{ID: "rm2", URL: "http://rm2:7070"}
	tests := []struct {
		name         string
		fake         func() *fake
		method, path string
		body         string
		wantStatus   int
		wantLocation string
		wantCode     string
	}{
		{name: "one shard, active serves reads", method: "GET", path: "/v1/jobs/j1", wantStatus: 404, wantCode: tandem.ENOTFOUND,
			fake: func() *fake { return newFake("rm1", 1, tandem.StateActive) }},
		{name: "one shard, standby redirects reads", method: "GET", path: "/v1/jobs/j1?x=1", wantStatus: 307, wantLocation: "http://rm2:7070/v1/jobs/j1?x=1", wantCode: tandem.ENOTACTIVE,
			fake: func() *fake {
				f := newFake("rm1", 1, tandem.StateStandby)
				f.status.ActiveID, f.status.ActiveURL = "rm2", "http://rm2:7070"
				return f
			}},
		{name: "one shard, standby does not redirect to a silent active", method: "POST", path: "/v1/jobs", body: `{"command":["true"]}`,
			wantStatus: 503, wantCode: tandem.ENOACTIVE,
			fake: func() *fake {
				f := newFake("rm1", 1, tandem.StateStandby)
				f.status.ActiveID, f.status.ActiveURL = "rm2", "http://rm2:7070"
				f.silent["rm2"] = true
				return f
			}},
		{name: "one shard, no active known", method: "POST", path: "/v1/jobs/j1/kill", wantStatus: 503, wantCode: tandem.ENOACTIVE,
			fake: func() *fake { return newFake("rm1", 1, tandem.StateStandby) }},
		{name: "one shard, agents sync with a standby too", method: "POST", path: "/v1/agent/sync", body: `{"agent":{"id":"w1"}}`, wantStatus: 200,
			fake: func() *fake { return newFake("rm1", 1, tandem.StateStandby) }},
		{name: "shards, a server owning nothing reads from its view", method: "GET", path: "/v1/jobs/j1", wantStatus: 404, wantCode: tandem.ENOTFOUND,
			fake: func() *fake { return newFake("rm1", 8, tandem.StateStandby) }},
		{name: "shards, an owner takes submissions", method: "POST", path: "/v1/jobs", body: `{"command":["true"]}`, wantStatus: 201, wantLocation: "/v1/jobs/j1",
			fake: func() *fake { return newFake("rm1", 8, tandem.StateActive) }},
		{name: "shards, a server owning nothing sends submissions to an owner", method: "POST", path: "/v1/jobs", body: `{"command":["true"]}`,
			wantStatus: 307, wantLocation: "http://rm2:7070/v1/jobs", wantCode: tandem.ENOTACTIVE,
			fake: func() *fake {
				f := newFake("rm1", 8, tandem.StateStandby)
				f.anyOwner = &rm2
				return f
			}},
		{name: "shards, no owner anywhere", method: "POST", path: "/v1/jobs", body: `{"command":["true"]}`, wantStatus: 503, wantCode: tandem.ENOACTIVE,
			fake: func() *fake { return newFake("rm1", 8, tandem.StateStandby) }},
		{name: "shards, the owner kills", method: "POST", path: "/v1/jobs/j1/kill", wantStatus: 200,
			fake: func() *fake {
				f := newFake("rm1", 8, tandem.StateActive)
				f.owners["j1"] = tandem.ServerRef{ID: "rm1", URL: "http://rm1:7070"}
				return f
			}},
		{name: "shards, a kill goes to the job's shard owner", method: "POST", path: "/v1/jobs/j1/kill", wantStatus: 307, wantLocation: "http://rm2:7070/v1/jobs/j1/kill", wantCode: tandem.ENOTACTIVE,
			fake: func() *fake {
				f := newFake("rm1", 8, tandem.StateActive)
				f.owners["j1"] = rm2
				return f
			}},
		{name: "shards, not to a silent owner", method: "POST", path: "/v1/jobs/j1/kill", wantStatus: 503, wantCode: tandem.ENOACTIVE,
			fake: func() *fake {
				f := newFake("rm1", 8, tandem.StateActive)
				f.owners["j1"] = rm2
				f.silent["rm2"] = true
				return f
			}},
		{name: "shards, a job's shard without owner", method: "POST", path: "/v1/jobs/j1/kill", wantStatus: 503, wantCode: tandem.ENOACTIVE,
			fake: func() *fake { return newFake("rm1", 8, tandem.StateActive) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.fake()
			h := api.New(f, slog.New(slog.DiscardHandler))
			got := call(t, h, tt.method, tt.path, nil, tt.body)
			if got.status != tt.wantStatus || got.header.Get("Location") != tt.wantLocation || code(got.body) != tt.wantCode {
				t.Fatalf("%s %s: got %d, Location %q, code %q (%s); want %d, %q, %q", tt.method, tt.path,
					got.status, got.header.Get("Location"), code(got.body), got.body, tt.wantStatus, tt.wantLocation, tt.wantCode)
			}
			if got.status == 503 && got.header.Get("Retry-After") == "" {
				t.Fatal("a 503 without Retry-After")
			}
		})
	}
}

// A standby that knows no active holds a request for the active while an
// election runs, and sends it on the moment one is in place (or serves it,
// if it won), instead of answering 503 and sending the client into backoff.
func TestStandbyHoldsRequestsDuringAnElection(t *testing.T) {
	rm2 := tandem.ServerRef{ID: "rm2", URL: "http://rm2:7070"}
	for _, tt := range []struct {
		name         string
		winner       tandem.ServerRef
		wantStatus   int
		wantLocation string
	}{
		{name: "another server wins", winner: rm2, wantStatus: 307, wantLocation: "http://rm2:7070/v1/jobs"},
		{name: "this server wins", winner: tandem.ServerRef{ID: "rm1", URL: "http://rm1:7070"}, wantStatus: 201, wantLocation: "/v1/jobs/j1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake("rm1", 1, tandem.StateStandby)
			h := api.New(f, slog.New(slog.DiscardHandler))
			got := make(chan answer, 1)
			go func() {
				got <- call(t, h, "POST", "/v1/jobs", nil, `{"command":["true"]}`)
			}()
			// The request is held: nothing comes back while no active is
			// known (the hold outlasts this look by far).
			select {
			case a := <-got:
				t.Fatalf("answered %d (%s) with no active known; want the request held", a.status, a.body)
			case <-time.After(api.HoldForOwner / 4):
			}
			f.elect(tt.winner)
			a := <-got
			if a.status != tt.wantStatus || a.header.Get("Location") != tt.wantLocation {
				t.Fatalf("after the election: got %d, Location %q (%s); want %d, %q", a.status, a.header.Get("Location"), a.body, tt.wantStatus, tt.wantLocation)
			}
		})
	}
	// The hold is bounded: with no election ending, 503 after HoldForOwner.
	f := newFake("rm1", 1, tandem.StateStandby)
	start := time.Now()
	a := call(t, api.New(f, slog.New(slog.DiscardHandler)), "POST", "/v1/jobs", nil, `{"command":["true"]}`)
	if a.status != 503 || code(a.body) != tandem.ENOACTIVE || time.Since(start) < api.HoldForOwner {
		t.Fatalf("no active ever: got %d %s after %s; want 503 %s after at least %s", a.status, code(a.body), time.Since(start), tandem.ENOACTIVE, api.HoldForOwner)
	}
}

// During a graceful failover (no active, a hand-off key naming its
// target) a standby, and the old active, send a request for the active to
// the target at once, rather than hold it until their view sees the target
// win; the target holds it until its term begins, then serves it.
func TestHandoffTargetGetsRequestsAtOnce(t *testing.T) {
	f := newFake("rm1", 1, tandem.StateStandby)
	f.handoff = tandem.ServerRef{ID: "rm3", URL: "http://rm3:7070"}
	h := api.New(f, slog.New(slog.DiscardHandler))
	start := time.Now()
	a := call(t, h, "POST", "/v1/jobs", nil, `{"command":["true"]}`)
	if a.status != 307 || a.header.Get("Location") != "http://rm3:7070/v1/jobs" {
		t.Fatalf("standby during a hand-off to rm3: got %d, Location %q (%s); want 307 to rm3", a.status, a.header.Get("Location"), a.body)
	}
	if held := time.Since(start); held >= api.HoldForOwner {
		t.Fatalf("the redirect came after %s: held for an owner instead of sent to the target", held)
	}

	target := newFake("rm3", 1, tandem.StateStandby)
	target.handoff = tandem.ServerRef{ID: "rm3", URL: "http://rm3:7070"}
	th := api.New(target, slog.New(slog.DiscardHandler))
	got := make(chan answer, 1)
	go func() {
		got <- call(t, th, "POST", "/v1/jobs", nil, `{"command":["true"]}`)
	}()
	select {
	case a := <-got:
		t.Fatalf("the target answered %d (%s) before its term began; want the request held", a.status, a.body)
	case <-time.After(api.HoldForOwner / 4):
	}
	target.elect(tandem.ServerRef{ID: "rm3", URL: "http://rm3:7070"})
	if a := <-got; a.status != 201 {
		t.Fatalf("the target, once active: got %d (%s), want 201", a.status, a.body)
	}
}

// A client that found the active's port refusing connections says so
// (transport.RefusedHeader): a standby that still names that server the
// active (it has not noticed the crash yet) holds the request until another
// active is in place, instead of sending the client back to a dead port.
func TestStandbyHoldsRequestsForAnActiveTheClientFoundDead(t *testing.T) {
	f := newFake("rm1", 1, tandem.StateStandby)
	f.status.ActiveID, f.status.ActiveURL = "rm2", "http://rm2:7070"
	h := api.New(f, slog.New(slog.DiscardHandler))
	got := make(chan answer, 1)
	go func() {
		got <- call(t, h, "POST", "/v1/jobs", map[string]string{transport.RefusedHeader: "http://rm2:7070"}, `{"command":["true"]}`)
	}()
	select {
	case a := <-got:
		t.Fatalf("answered %d (%s) for an active the client found dead; want the request held", a.status, a.body)
	case <-time.After(api.HoldForOwner / 4):
	}
	f.elect(tandem.ServerRef{ID: "rm3", URL: "http://rm3:7070"})
	if a := <-got; a.status != 307 || a.header.Get("Location") != "http://rm3:7070/v1/jobs" {
		t.Fatalf("after the election: got %d, Location %q (%s); want 307 to rm3", a.status, a.header.Get("Location"), a.body)
	}
	// Without the header, the same standby redirects at once.
	if a := call(t, h, "POST", "/v1/jobs", nil, `{"command":["true"]}`); a.status != 307 {
		t.Fatalf("no header: got %d, want 307", a.status)
	}
}

// Reads are linearizable: a read waits for the view to reach etcd's
// current revision (and at least the revision the client asks for), and gets
// 503 if it cannot; every answer says which revision it reflects.
func TestReadsWaitForAFreshView(t *testing.T) {
	f := newFake("rm1", 8, tandem.StateStandby)
	f.jobs["j1"] = &tandem.Job{ID: "j1", State: tandem.JobPending}
	f.advance(10)
	f.head = 10
	h := api.New(f, slog.New(slog.DiscardHandler))

	got := call(t, h, "GET", "/v1/jobs/j1", map[string]string{transport.MinRevisionHeader: "5"}, "")
	if got.status != 200 || got.header.Get(transport.RevisionHeader) != "10" {
		t.Fatalf("read with a current view: %d, revision %q; want 200, 10", got.status, got.header.Get(transport.RevisionHeader))
	}
	// etcd has moved on (another server wrote): the read waits for the view.
	f.mu.Lock()
	f.head = 12
	f.mu.Unlock()
	done := make(chan answer, 1)
	go func() { done <- call(t, h, "GET", "/v1/jobs/j1", nil, "") }()
	select {
	case a := <-done:
		t.Fatalf("a read was answered (%d) from a view at 10 while etcd was at 12", a.status)
	case <-time.After(100 * time.Millisecond):
	}
	f.advance(12)
	if got := <-done; got.status != 200 || got.header.Get(transport.RevisionHeader) != "12" {
		t.Fatalf("after the view reached 12: %d, revision %q; want 200, 12", got.status, got.header.Get(transport.RevisionHeader))
	}
	// A client that has seen a later revision waits for it too.
	go func() {
		done <- call(t, h, "GET", "/v1/jobs/j1", map[string]string{transport.MinRevisionHeader: "13"}, "")
	}()
	select {
	case a := <-done:
		t.Fatalf("a read asking for revision 13 was answered (%d) from a view at 12", a.status)
	case <-time.After(100 * time.Millisecond):
	}
	f.advance(13)
	if got := <-done; got.status != 200 {
		t.Fatalf("after the view reached 13: %d, want 200", got.status)
	}
	for _, bad := range []string{"x", "-1", "1e3"} {
		if got := call(t, h, "GET", "/v1/jobs/j1", map[string]string{transport.MinRevisionHeader: bad}, ""); got.status != 400 || code(got.body) != tandem.EINVALID {
			t.Fatalf("min revision %q: %d %s, want 400 %s", bad, got.status, got.body, tandem.EINVALID)
		}
	}
	// Without a quorum the server cannot tell whether its view is current.
	f.mu.Lock()
	f.head = -1
	f.mu.Unlock()
	if got := call(t, h, "GET", "/v1/jobs/j1", nil, ""); got.status != 503 || code(got.body) != tandem.EUNAVAILABLE {
		t.Fatalf("read with etcd without quorum: %d %s, want 503 %s", got.status, got.body, tandem.EUNAVAILABLE)
	}
	if testing.Short() {
		return
	}
	f.mu.Lock()
	f.head = 99
	f.mu.Unlock()
	start := time.Now()
	got = call(t, h, "GET", "/v1/jobs/j1", nil, "")
	if got.status != 503 || code(got.body) != tandem.EUNAVAILABLE || time.Since(start) < api.MaxRevisionWait {
		t.Fatalf("a view that never catches up: %d %s after %s; want 503 %s after %s", got.status, got.body, time.Since(start), tandem.EUNAVAILABLE, api.MaxRevisionWait)
	}
}
