package ui_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/ui"
)

// fake is a ui.Service over plain values: the UI's pages alone, without
// etcd. The browser suite (e2e/ui_test.go) runs the UI on real servers.
type fake struct {
	mu      sync.Mutex
	status  tandem.ServerStatus
	servers []tandem.ServerInfo
	shards  []tandem.ShardInfo
	history []tandem.FailoverEvent
	jobs    map[string]*tandem.Job
	agents  []tandem.AgentStatus
	rev     int64
	revCh   chan struct{}
	// fake_sched_test.go
	schedules map[string]*tandem.Schedule
	runs      map[string][]tandem.ScheduleRun
	workflows map[string]*tandem.Workflow
	// etcdLeader is the etcd leader's member ID (0: none); etcdErr, set,
	// is etcd not answering.
	etcdLeader uint64
	etcdErr    error
}

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func newFake() *fake {
	f := &fake{
		status: tandem.ServerStatus{ID: "rm2", Cluster: "default", URL: "http://rm2.test", State: tandem.StateStandby,
			ActiveID: "rm1", ActiveURL: "http://rm1.test", Epoch: 12, Shards: 1},
		servers: []tandem.ServerInfo{
			{ID: "rm1", URL: "http://rm1.test", State: tandem.StateActive, Ready: true, Version: "v1", StartedAt: t0},
			{ID: "rm2", URL: "http://rm2.test", State: tandem.StateStandby, Ready: true, Version: "v1", StartedAt: t0},
		},
		shards: []tandem.ShardInfo{{Shard: 0, Owner: "rm1", OwnerURL: "http://rm1.test", Epoch: 12, Since: t0}},
		jobs:   map[string]*tandem.Job{},
		rev:    100, revCh: make(chan struct{}),
	}
	d, e, tr := 1.5, 0.25, 0.125
	f.history = []tandem.FailoverEvent{
		{Shard: 0, Epoch: 3, ActiveID: "rm2", Cause: tandem.CauseInitial, Time: t0.Add(-time.Hour)},
		{Shard: 0, Epoch: 12, ActiveID: "rm1", PrevID: "rm2", PrevEpoch: 3, Cause: tandem.CauseLeaseExpired, Time: t0,
			DetectionS: &d, ElectionS: &e, TransitionS: &tr},
	}
	exit1 := 1
	start, end := t0.Add(time.Second), t0.Add(2*time.Second)
	f.addJob(&tandem.Job{ID: "j1", JobSpec: tandem.JobSpec{Name: "etl-daily", Command: []string{"sh", "-c", "echo hi"},
		Env: map[string]string{"PASSWORD": "hunter2"}, Labels: map[string]string{"team": "data"}, Submitter: "alice", MaxAttempts: 1},
		WorkflowID: "w1", Step: "transform", State: tandem.JobRunning, CreatedAt: t0, UpdatedAt: t0, AcceptedBy: "rm1", Epoch: 12,
		Attempts: []tandem.Attempt{{ID: "j1-1", Number: 1, Agent: "w1", Epoch: 12, State: tandem.AttemptRunning, ScheduledAt: t0, StartedAt: &start}}})
	f.addJob(&tandem.Job{ID: "j2", JobSpec: tandem.JobSpec{Name: "report", Command: []string{"false"}, Submitter: "bob", MaxAttempts: 1},
		ScheduleID: "s1", NominalTime: t0.Add(-time.Hour), State: tandem.JobFailed, CreatedAt: t0, UpdatedAt: end, Reason: "exit status 1", AcceptedBy: "rm1",
		Attempts: []tandem.Attempt{{ID: "j2-1", Number: 1, Agent: "w2", Epoch: 12, State: tandem.AttemptFailed, ScheduledAt: t0, StartedAt: &start, EndedAt: &end, ExitCode: &exit1}}})
	f.addJob(&tandem.Job{ID: "j3", JobSpec: tandem.JobSpec{Name: "etl-weekly", Command: []string{"true"}, Labels: map[string]string{"team": "ops"}, Submitter: "alice"},
		State: tandem.JobPending, CreatedAt: t0, UpdatedAt: t0, Reason: "no agent has room"})
	f.agents = []tandem.AgentStatus{
		{AgentInfo: tandem.AgentInfo{ID: "w1", Capacity: tandem.Resources{CPU: 2, MemoryMB: 1024}, Labels: map[string]string{"zone": "a"}},
			State: tandem.AgentReady, Used: tandem.Resources{CPU: 0.1, MemoryMB: 64}, Running: []string{"j1-1"}, LastContact: t0},
		{AgentInfo: tandem.AgentInfo{ID: "w2", Capacity: tandem.Resources{CPU: 1, MemoryMB: 512}}, State: tandem.AgentLost, Running: []string{}, LastContact: t0.Add(-time.Minute)},
	}
	f.addSchedulesAndWorkflows()
	f.etcdLeader = 0x11
	return f
}

func (f *fake) addJob(j *tandem.Job) { f.jobs[j.ID] = j }

// update changes the view under the lock and moves its revision.
func (f *fake) update(fn func()) {
	f.mu.Lock()
	fn()
	f.rev++
	close(f.revCh)
	f.revCh = make(chan struct{})
	f.mu.Unlock()
}

func (f *fake) ID() string            { return f.status.ID }
func (f *fake) Shards() int           { return max(1, f.status.Shards) }
func (f *fake) State() tandem.HAState { return f.status.State }
func (f *fake) Status() tandem.ServerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}
func (f *fake) History() []tandem.FailoverEvent { return f.history }
func (f *fake) Servers() []tandem.ServerInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]tandem.ServerInfo(nil), f.servers...)
}
func (f *fake) ShardInfos() []tandem.ShardInfo { return f.shards }
func (f *fake) Job(id string) (*tandem.Job, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return nil, f.rev, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", id)
	}
	c := *j
	return &c, f.rev, nil
}
func (f *fake) Jobs(after string, limit int, state tandem.JobState) ([]*tandem.Job, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.jobs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []*tandem.Job
	for _, id := range ids {
		j := f.jobs[id]
		if id <= after || state != "" && j.State != state {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID
		}
		c := *j
		out = append(out, &c)
	}
	return out, ""
}
func (f *fake) Agents() []tandem.AgentStatus { return f.agents }
func (f *fake) Agent(id string) (tandem.AgentInfo, bool) {
	for _, a := range f.agents {
		if a.ID == id {
			return a.AgentInfo, true
		}
	}
	return tandem.AgentInfo{}, false
}
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

// tokens is an acl.Authenticator of fixed secrets.
type tokens map[string]acl.Token

func (t tokens) Authenticate(_ context.Context, secret string) (acl.Token, error) {
	if tok, ok := t[secret]; ok {
		return tok, nil
	}
	return acl.Token{}, acl.ErrNoToken
}

var testTokens = tokens{
	"tdm_read":     {Accessor: "a1", Name: "reader", Policy: acl.PolicyRead},
	"tdm_submit":   {Accessor: "a2", Name: "submitter", Policy: acl.PolicySubmit},
	"tdm_operator": {Accessor: "a3", Name: "op", Policy: acl.PolicyOperator},
}

// apiCall is a request the UI made to the API.
type apiCall struct {
	Method, Path, Auth, Body, Server string
	// IdemKey is the request's Idempotency-Key header.
	IdemKey string
}

// recorder is the API (and other servers' APIs) the UI calls.
type recorder struct {
	mu    sync.Mutex
	calls []apiCall
	// answer answers a call; nil answers 200 {}.
	answer func(w http.ResponseWriter, r *http.Request)
}

func (rc *recorder) handler(server string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := r.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		rc.mu.Lock()
		rc.calls = append(rc.calls, apiCall{Method: r.Method, Path: r.URL.RequestURI(), Auth: r.Header.Get("Authorization"), Body: b.String(), Server: server,
			IdemKey: r.Header.Get("Idempotency-Key")})
		answer := rc.answer
		rc.mu.Unlock()
		if answer != nil {
			answer(w, r.WithContext(context.WithValue(r.Context(), serverKey{}, server)))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
}

type serverKey struct{}

func (rc *recorder) got() []apiCall {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]apiCall(nil), rc.calls...)
}

// harness is a UI on a fake server, its API recorded.
type harness struct {
	f   *fake
	api *recorder
	ui  *ui.UI
	srv *httptest.Server
}

func newHarness(t *testing.T, enforce bool, mod ...func(*ui.Config)) *harness {
	t.Helper()
	h := &harness{f: newFake(), api: &recorder{}}
	cfg := ui.Config{Service: h.f, API: h.api.handler("self"), Enforce: enforce, Now: func() time.Time { return t0.Add(time.Minute) }}
	if enforce {
		cfg.Tokens = testTokens
	}
	for _, m := range mod {
		m(&cfg)
	}
	u, err := ui.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.ui = u
	h.srv = httptest.NewServer(u)
	t.Cleanup(h.srv.Close)
	return h
}
