package transport

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"
)

// revisionServer answers every request with the revision header the test
// sets next ("" for none).
type revisionServer struct {
	mu   sync.Mutex
	next string
}

func (s *revisionServer) set(v string) {
	s.mu.Lock()
	s.next = v
	s.mu.Unlock()
}

func (s *revisionServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	v := s.next
	s.mu.Unlock()
	if v != "" {
		w.Header().Set(RevisionHeader, v)
	}
	answer("srv").ServeHTTP(w, r)
}

func TestReadYourWritesRevision(t *testing.T) {
	rec := &recorder{}
	api := &revisionServer{}
	srv := serve(t, rec, "srv", api)
	tr := newTestTransport(t, rec, nil, srv.URL)
	ctx := context.Background()

	steps := []struct {
		name    string
		call    *Call
		answer  string // the RevisionHeader of the answer
		wantMin string // the MinRevisionHeader the request carries
		wantRev int64  // Revision() afterwards
	}{
		{"first GET, nothing seen", get("/v1/jobs"), "", "", 0},
		{"negative", get("/v1/jobs"), "-50", "", 0},
		{"zero", get("/v1/jobs"), "0", "", 0},
		{"malformed before any", submit(), "12abc", "", 0},
		{"a write reports its revision", submit(), "42", "", 42},
		{"a GET asks for it", get("/v1/jobs/j1"), "", "42", 42},
		{"a POST never carries it", submit(), "", "", 42},
		{"a lower revision is not a step back", get("/v1/jobs"), "7", "42", 42},
		{"malformed", get("/v1/jobs"), "forty-three", "42", 42},
		{"overflow", get("/v1/jobs"), "99999999999999999999", "42", 42},
		{"higher", get("/v1/jobs"), " 43 ", "42", 43},
		{"the next GET asks for the higher", get("/v1/jobs"), "", "43", 43},
	}
	for _, st := range steps {
		api.set(st.answer)
		if err := tr.Do(ctx, st.call, nil); err != nil {
			t.Fatalf("%s: Do: %v", st.name, err)
		}
		r := rec.last(t, "srv")
		if got := r.header.Get(MinRevisionHeader); got != st.wantMin {
			t.Errorf("%s: got %s %q on %s, want %q", st.name, MinRevisionHeader, got, r.method, st.wantMin)
		}
		if got := tr.Revision(); got != st.wantRev {
			t.Errorf("%s: Revision: got %d, want %d", st.name, got, st.wantRev)
		}
	}
}

// Revisions come from any response, redirects and errors included, and
// reach the server a redirect leads to and Direct's.
func TestRevisionFromEveryResponse(t *testing.T) {
	rec := &recorder{}
	active := &revisionServer{}
	activeSrv := serve(t, rec, "active", active)
	standby := serve(t, rec, "standby", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(RevisionHeader, "10")
		http.Redirect(w, r, activeSrv.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	down := serve(t, rec, "down", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(RevisionHeader, "5")
		unavailable().ServeHTTP(w, r)
	}))
	tr := newTestTransport(t, rec, nil, down.URL, standby.URL)
	ctx := context.Background()
	if err := tr.Do(ctx, get("/v1/jobs"), nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t, "standby").header.Get(MinRevisionHeader); got != "5" {
		t.Errorf("standby: got %s %q, want 5 from the 503 before it", MinRevisionHeader, got)
	}
	if got := rec.last(t, "active").header.Get(MinRevisionHeader); got != "10" {
		t.Errorf("redirect target: got %s %q, want 10 from the redirect", MinRevisionHeader, got)
	}
	active.set(strconv.Itoa(11))
	if err := tr.Direct(ctx, activeSrv.URL, get("/v1/ha/state"), nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t, "active").header.Get(MinRevisionHeader); got != "10" {
		t.Errorf("Direct: got %s %q, want 10", MinRevisionHeader, got)
	}
	if got := tr.Revision(); got != 11 {
		t.Errorf("Revision after Direct: got %d, want 11", got)
	}
}

func TestNoteRevisionConcurrently(t *testing.T) {
	tr, err := New(Config{Servers: []string{"http://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() { tr.noteRevision(strconv.Itoa(i + 1)) })
	}
	wg.Wait()
	if got := tr.Revision(); got != 100 {
		t.Errorf("Revision: got %d, want the highest, 100", got)
	}
}
