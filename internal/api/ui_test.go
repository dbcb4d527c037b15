package api_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/api"
)

// A browser asking for / is led to the web UI, which every server serves
// itself (a standby too, without redirecting); API clients keep the JSON 404.
func TestRootLeadsBrowsersToUI(t *testing.T) {
	f := newFake("rm2", 1, tandem.StateStandby)
	f.status.ActiveID, f.status.ActiveURL = "rm1", "http://rm1"
	h := api.New(f, slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		accept   string
		want     int
		location string
	}{
		{"text/html,application/xhtml+xml,*/*;q=0.8", http.StatusFound, "/ui/"},
		{"application/json", http.StatusNotFound, ""},
		{"", http.StatusNotFound, ""},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Accept", tc.accept)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want || w.Header().Get("Location") != tc.location {
			t.Errorf("Accept %q: got %d to %q, want %d to %q", tc.accept, w.Code, w.Header().Get("Location"), tc.want, tc.location)
		}
	}
	// The standby renders the page itself.
	r := httptest.NewRequest(http.MethodGet, "/ui/cluster", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "Rendered by server") || w.Header().Get("X-Tandem-State") != "standby" {
		t.Errorf("GET /ui/cluster on a standby: got %d, want the page", w.Code)
	}
}

func TestListJobsFilters(t *testing.T) {
	f := newFake("rm1", 1, tandem.StateActive)
	h := api.New(f, slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"state=bogus", http.StatusBadRequest},
		{"label==x", http.StatusBadRequest},
		{"q=" + strings.Repeat("x", 300), http.StatusBadRequest},
		{"q=etl&label=team%3Ddata&submitter=ann&agent=w1&state=running", http.StatusOK},
	} {
		r := httptest.NewRequest(http.MethodGet, "/v1/jobs?"+tc.query, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("GET /v1/jobs?%.40s: got %d, want %d: %s", tc.query, w.Code, tc.want, w.Body)
		}
	}
}
