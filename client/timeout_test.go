package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// A hung active (it accepts the connection and never answers, like a
// paused process) costs a caller about AttemptTimeout, not the HTTP
// timeout, before the next server is tried.
func TestHungServerIsLeftAfterTheAttemptTimeout(t *testing.T) {
	release := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hung.Close()
	defer close(release)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(tandem.Job{ID: "j1", State: tandem.JobPending})
	}))
	defer ok.Close()

	c, err := New(Config{Servers: []string{hung.URL, ok.URL}, AttemptTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	j, err := c.SubmitJob(context.Background(), tandem.JobSpec{Command: []string{"true"}}, SubmitOptions{})
	if err != nil || j.ID != "j1" {
		t.Fatalf("submit past a hung server: %v %v", j, err)
	}
	if took := time.Since(start); took >= DefaultTimeout/2 {
		t.Fatalf("submit took %s: the hung server held it for the HTTP timeout, not the attempt timeout", took)
	}
	if c.Current() != ok.URL {
		t.Fatalf("client sticks to %s, want %s", c.Current(), ok.URL)
	}
}
