package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// fakeServer is an httptest server that speaks the sync protocol the way an
// active server does: it sends an assignment until the agent reports the
// attempt (or forever, with resend, as a confused server might), sends kill
// orders for attempts the agent reports running, acknowledges Done reports
// (unless noAck), answers at once an agent that has not seen its epoch, and
// holds a sync that it has nothing to answer until something changes or
// WaitMS passes.
// status and redirect script other answers.
type fakeServer struct {
	t  *testing.T
	ts *httptest.Server
	id string

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	epoch    int64
	assign   map[string]tandem.Assignment
	kill     map[string]tandem.KillOrder
	resend   bool   // re-send assignments even after they are reported
	noAck    bool   // never acknowledge
	status   int    // answer every sync with this status, when non-zero
	redirect string // answer every sync with a 307 to this base URL, when set
	syncs    []tandem.SyncRequest
	running  map[string]tandem.AttemptReport   // as last reported
	everRun  map[string]bool                   // reported running at least once
	done     map[string][]tandem.AttemptReport // every Done report received, per attempt
}

func newFakeServer(t *testing.T, id string, epoch int64) *fakeServer {
	t.Helper()
	f := &fakeServer{
		t: t, id: id, epoch: epoch, changed: make(chan struct{}),
		assign: map[string]tandem.Assignment{}, kill: map[string]tandem.KillOrder{},
		running: map[string]tandem.AttemptReport{}, everRun: map[string]bool{},
		done: map[string][]tandem.AttemptReport{},
	}
	f.ts = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.close)
	return f
}

func (f *fakeServer) URL() string { return f.ts.URL }

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
	if status == 0 && redirect == "" {
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
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: tandem.Errorf(tandem.ENOTACTIVE, "%s is not the active", f.id)})
		return
	case redirect != "":
		w.Header().Set("Location", redirect+syncPath)
		w.WriteHeader(http.StatusTemporaryRedirect)
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
			// Like an active that steps down: held syncs end with its new answer.
			status := f.status
			f.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: tandem.Errorf(tandem.ENOTACTIVE, "%s is not the active", f.id)})
			return
		}
		resp := tandem.SyncResponse{Epoch: f.epoch, ServerID: f.id, Assign: []tandem.Assignment{}, Kill: []tandem.KillOrder{}, Ack: []string{}}
		if !f.noAck {
			for _, rep := range req.Done {
				resp.Ack = append(resp.Ack, rep.AttemptID)
			}
		}
		for id, as := range f.assign {
			// Like a server: once reported, an attempt is not assigned again.
			if f.resend || (!reported[id] && !f.everRun[id] && len(f.done[id]) == 0) {
				resp.Assign = append(resp.Assign, as)
			}
		}
		for _, rep := range req.Running {
			if k, ok := f.kill[rep.AttemptID]; ok {
				resp.Kill = append(resp.Kill, k)
			}
		}
		changed := f.changed
		f.mu.Unlock()
		// An agent that has not seen this epoch yet learns it at once.
		if len(resp.Assign) > 0 || len(resp.Kill) > 0 || len(resp.Ack) > 0 || req.Epoch < resp.Epoch {
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
