package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
)

// A job removed by retention reads as ErrRemoved, with the server's words;
// a bare 410 (a proxy's, without tandem's JSON body) maps to the same code.
func TestGetRemovedJob(t *testing.T) {
	const msg = `job "j1" was removed by retention at 2026-06-08T12:00:00Z (it had finished succeeded at 2026-06-01T12:00:00Z)`
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		want    string // in the error's message
	}{
		{"tandem's answer", func(w http.ResponseWriter, r *http.Request) {
			writeError(w, tandem.Errorf(tandem.EREMOVED, "%s", msg))
		}, msg},
		{"a bare 410", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "gone", http.StatusGone)
		}, "HTTP 410"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.handler)
			defer srv.Close()
			c, err := New(Config{Servers: []string{srv.URL}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.GetJob(context.Background(), "j1")
			if !errors.Is(err, tandem.ErrRemoved) || errors.Is(err, tandem.ErrNotFound) {
				t.Fatalf("got %v (code %s), want ErrRemoved", err, tandem.ErrorCode(err))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got message %q, want it to contain %q", err.Error(), tc.want)
			}
		})
	}
}
