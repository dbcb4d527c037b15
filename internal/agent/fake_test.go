package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// term is one shard and the epoch of its owner's term.
func term(shard int, epoch int64) tandem.ShardTerm {
	return tandem.ShardTerm{Shard: shard, Epoch: epoch}
}

// fakeServer is an httptest server that speaks the sync protocol the way a
// server owning some shards (terms; none for a standby) does. It sends an
// assignment until the agent reports the attempt (or forever, with resend,
// as a confused server might), sends kill orders for attempts the agent
// reports running, acknowledges the Done reports of the attempts it assigned
// in the shards it owns (unless noAck), answers at once an agent that has not seen one of its epochs, and
// holds a sync that it has nothing to answer until something changes or
// WaitMS passes. An item it sends carries the item's own epoch if it has one,
// else the fake's epoch for the item's shard. Like a server, it ignores a
// sync older than one it has processed for the same session of the same
// agent process. Its answers list servers. status and redirect script other
// answers.
//
// Several fakes answer one agent: each owns its shards, and a test moves a
// shard by changing two fakes' terms.
type fakeServer struct {
	t  *testing.T
	ts *httptest.Server
	id string

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	terms    map[int]int64 // shards owned, with the epoch of each term
	servers  []tandem.ServerRef
	assign   map[string]tandem.Assignment
	kill     map[string]tandem.KillOrder
	resend   bool   // re-send assignments even after they are reported
	noAck    bool   // never acknowledge
	status   int    // answer every sync with this status, when non-zero
	redirect string // answer every sync with a 307 to this base URL, when set
	syncs    []tandem.SyncRequest
	lastSeq  map[string]uint64                 // by agent process and session
	running  map[string]tandem.AttemptReport   // as last reported
	everRun  map[string]bool                   // reported running at least once
	done     map[string][]tandem.AttemptReport // every Done report received, per attempt
}

// newFakeServer starts a fake server owning the shards of terms; with none
// it is a standby, which holds every poll and answers empty.
func newFakeServer(t *testing.T, id string, terms ...tandem.ShardTerm) *fakeServer {
	t.Helper()
	f := &fakeServer{
		t: t, id: id, changed: make(chan struct{}), terms: map[int]int64{},
		assign: map[string]tandem.Assignment{}, kill: map[string]tandem.KillOrder{},
		lastSeq: map[string]uint64{}, running: map[string]tandem.AttemptReport{}, everRun: map[string]bool{},
		done: map[string][]tandem.AttemptReport{},
	}
	for _, tt := range terms {
		f.terms[tt.Shard] = tt.Epoch
	}
	f.ts = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.close)
	return f
}

func (f *fakeServer) URL() string { return f.ts.URL }

// ref is how answers list the fake.
func (f *fakeServer) ref() tandem.ServerRef { return tandem.ServerRef{ID: f.id, URL: f.ts.URL} }

// close stops the server, ending held syncs first.
func (f *fakeServer) close() {
	f.update(func() { f.status = http.StatusServiceUnavailable })
	f.ts.CloseClientConnections()
	f.ts.Close()
}

// update changes the fake's script and wakes held syncs.
func (f *fakeServer) update(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
	close(f.changed)
	f.changed = make(chan struct{})
}

// setTerms replaces the shards the fake owns.
func (f *fakeServer) setTerms(terms ...tandem.ShardTerm) {
	f.update(func() {
		f.terms = map[int]int64{}
		for _, tt := range terms {
			f.terms[tt.Shard] = tt.Epoch
		}
	})
}

func (f *fakeServer) addAssignment(as tandem.Assignment) {
	f.update(func() { f.assign[as.AttemptID] = as })
}

func (f *fakeServer) addKill(k tandem.KillOrder) {
	f.update(func() { f.kill[k.AttemptID] = k })
}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != syncPath {
		http.NotFound(w, r)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.t.Errorf("sync Content-Type: got %q, want application/json", ct)
	}
	var req tandem.SyncRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		f.t.Errorf("decode sync request: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.syncs = append(f.syncs, req)
	status, redirect := f.status, f.redirect
	proc := req.Agent.StartedAt.String() + " " + req.Session
	old := req.Seq <= f.lastSeq[proc]
	if status == 0 && redirect == "" && !old {
		f.lastSeq[proc] = req.Seq
		f.running = map[string]tandem.AttemptReport{}
		for _, rep := range req.Running {
			f.running[rep.AttemptID] = rep
			f.everRun[rep.AttemptID] = true
		}
		for _, rep := range req.Done {
			f.done[rep.AttemptID] = append(f.done[rep.AttemptID], rep)
		}
	}
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()

	switch {
	case status != 0:
		writeFakeError(w, status, tandem.Errorf(tandem.ENOTACTIVE, "%s cannot take syncs now", f.id))
		return
	case redirect != "":
		w.Header().Set("Location", redirect+syncPath)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	case old:
		// Only a sync the agent gave up on arrives after a later one.
		writeFakeError(w, http.StatusConflict, tandem.Errorf(tandem.ECONFLICT, "sync %d of session %s is older than one processed", req.Seq, req.Session))
		return
	}

	reported := map[string]bool{}
	for _, rep := range req.Running {
		reported[rep.AttemptID] = true
	}
	for _, rep := range req.Done {
		reported[rep.AttemptID] = true
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(req.WaitMS)*time.Millisecond)
	defer cancel()
	for {
		f.mu.Lock()
		if f.status != 0 {
			// Like a server going away: held syncs end with its new answer.
			status := f.status
			f.mu.Unlock()
			writeFakeError(w, status, tandem.Errorf(tandem.ENOTACTIVE, "%s cannot take syncs now", f.id))
			return
		}
		resp := tandem.SyncResponse{
			ServerID: f.id, Terms: []tandem.ShardTerm{}, Assign: []tandem.Assignment{}, Kill: []tandem.KillOrder{},
			Ack: []tandem.Ack{}, Servers: slices.Clone(f.servers),
		}
		news := false
		for _, shard := range slices.Sorted(maps.Keys(f.terms)) {
			resp.Terms = append(resp.Terms, term(shard, f.terms[shard]))
			// An agent that has not seen this epoch yet learns it at once.
			news = news || req.Epochs[shard] < f.terms[shard]
		}
		if !f.noAck {
			// Like the owner of a shard: it acknowledges the reports of its
			// shards' jobs, and only those.
			for _, rep := range req.Done {
				as, ok := f.assign[rep.AttemptID]
				if epoch, owned := f.terms[as.Shard]; ok && owned {
					resp.Ack = append(resp.Ack, tandem.Ack{AttemptID: rep.AttemptID, Shard: as.Shard, Epoch: epoch})
				}
			}
		}
		for _, id := range slices.Sorted(maps.Keys(f.assign)) {
			// Like a server: once reported, an attempt is not assigned again.
			if as := f.assign[id]; f.resend || (!reported[id] && !f.everRun[id] && len(f.done[id]) == 0) {
				if as.Epoch == 0 {
					as.Epoch = f.terms[as.Shard]
				}
				resp.Assign = append(resp.Assign, as)
			}
		}
		for _, rep := range req.Running {
			if k, ok := f.kill[rep.AttemptID]; ok {
				if k.Epoch == 0 {
					k.Epoch = f.terms[k.Shard]
				}
				resp.Kill = append(resp.Kill, k)
			}
		}
		changed := f.changed
		f.mu.Unlock()
		if news || len(resp.Assign) > 0 || len(resp.Kill) > 0 || len(resp.Ack) > 0 {
			writeFakeJSON(w, resp)
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			writeFakeJSON(w, resp)
			return
		}
	}
}

func writeFakeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeFakeError(w http.ResponseWriter, status int, err *tandem.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: err})
}

// syncCount returns how many syncs the fake has received.
func (f *fakeServer) syncCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.syncs)
}

// lastSync returns the latest sync received, and whether there was one.
func (f *fakeServer) lastSync() (tandem.SyncRequest, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.syncs) == 0 {
		return tandem.SyncRequest{}, false
	}
	return f.syncs[len(f.syncs)-1], true
}

// firstSync returns the first sync received (the zero value if none).
func (f *fakeServer) firstSync() tandem.SyncRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.syncs) == 0 {
		return tandem.SyncRequest{}
	}
	return f.syncs[0]
}

// syncsCopy returns every sync received so far.
func (f *fakeServer) syncsCopy() []tandem.SyncRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.syncs)
}

// sawSync reports whether the fake has received a sync that satisfies ok.
func (f *fakeServer) sawSync(ok func(tandem.SyncRequest) bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.syncs, ok)
}

// waitRunning waits until the agent has reported attempt id running and
// returns that report.
func (f *fakeServer) waitRunning(t *testing.T, id string) tandem.AttemptReport {
	t.Helper()
	var rep tandem.AttemptReport
	waitFor(t, "attempt "+id+" reported running to "+f.id, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		r, ok := f.running[id]
		rep = r
		return ok
	})
	return rep
}

// waitDone waits for the first Done report of attempt id and returns it.
func (f *fakeServer) waitDone(t *testing.T, id string) tandem.AttemptReport {
	t.Helper()
	var rep tandem.AttemptReport
	waitFor(t, "a Done report of attempt "+id+" at "+f.id, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.done[id]) == 0 {
			return false
		}
		rep = f.done[id][0]
		return true
	})
	return rep
}

// doneReports returns every Done report of attempt id received so far.
func (f *fakeServer) doneReports(id string) []tandem.AttemptReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]tandem.AttemptReport(nil), f.done[id]...)
}

// sessionOf returns the status of a's session with the server at url.
func sessionOf(a *Agent, url string) (SessionStatus, bool) {
	for _, s := range a.Status().Sessions {
		if s.URL == url {
			return s, true
		}
	}
	return SessionStatus{}, false
}

// sortedTerms returns terms sorted by shard.
func sortedTerms(terms []tandem.ShardTerm) []tandem.ShardTerm {
	out := slices.Clone(terms)
	slices.SortFunc(out, func(x, y tandem.ShardTerm) int { return cmp.Compare(x.Shard, y.Shard) })
	return out
}

// waitTimeout is how long tests wait for anything: generous, for a loaded
// two-core machine running with -race.
const waitTimeout = 20 * time.Second

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
