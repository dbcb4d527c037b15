package transport

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"

	"github.com/tandemhq/tandem"
)

func TestDirectAnswers(t *testing.T) {
	rec := &recorder{}
	srv := serve(t, rec, "srv", answer("srv"))
	other := serve(t, rec, "other", answer("other"))
	tr := newTestTransport(t, rec, nil, other.URL)

	c := &Call{Op: "sync", Method: http.MethodPost, Path: "/v1/agent/sync", Query: url.Values{"x": {"1"}}, Body: []byte(`{"seq":1}`)}
	var got reply
	if err := tr.Direct(context.Background(), srv.URL, c, &got); err != nil {
		t.Fatalf("Direct: %v", err)
	}
	if got.Server != "srv" || got.Method != http.MethodPost || got.Path != "/v1/agent/sync?x=1" {
		t.Errorf("got reply %+v, want srv's answer to POST /v1/agent/sync?x=1", got)
	}
	if r := rec.last(t, "srv"); r.body != `{"seq":1}` || r.header.Get("Content-Type") != "application/json" {
		t.Errorf("got body %q of type %q, want the call's JSON", r.body, r.header.Get("Content-Type"))
	}
	if c.Tries != 1 {
		t.Errorf("Tries: got %d, want 1", c.Tries)
	}
	if got := tr.Current(); got != other.URL {
		t.Errorf("Current: got %s, want %s (Direct does not move it)", got, other.URL)
	}
	if got := rec.hits("other"); got != 0 {
		t.Errorf("got %d requests to the configured server, want 0", got)
	}
}

// Direct's errors tell a server's answer (a *tandem.Error) from no answer
// (a *NoAnswerError), and never retry.
func TestDirectErrors(t *testing.T) {
	abort := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"ser`)
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // the connection drops mid-answer
	}
	tests := []struct {
		name     string
		handler  http.HandlerFunc // nil: nothing listens
		wantCode string           // the *tandem.Error's code; "" wants a *NoAnswerError
		wantMsg  string           // after the server's URL, for a *NoAnswerError
		wantIs   error
	}{
		{"not active", func(w http.ResponseWriter, _ *http.Request) {
			writeError(w, tandem.Errorf(tandem.ENOTACTIVE, "rm2 is a standby"))
		}, tandem.ENOTACTIVE, "rm2 is a standby", tandem.ErrNotActive},
		{"non-JSON 503", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"status":"etcd unreachable"}`)
		}, tandem.EUNAVAILABLE, `HTTP 503: {"status":"etcd unreachable"}`, nil},
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://rm1.example/v1/agent/sync", http.StatusTemporaryRedirect)
		}, tandem.EINTERNAL, `HTTP 307: unexpected redirect to "http://rm1.example/v1/agent/sync"`, nil},
		{"refused", nil, "", ": connection refused", syscall.ECONNREFUSED},
		{"broken answer", abort, "", ": reading the response: connection closed before a complete response", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			u := deadURL(t)
			if tt.handler != nil {
				u = serve(t, rec, "srv", tt.handler).URL
			}
			tr := newTestTransport(t, rec, nil, u)
			var out reply
			err := tr.Direct(context.Background(), u, get("/v1/agent/sync"), &out)
			var te *tandem.Error
			var na *NoAnswerError
			switch {
			case tt.wantCode != "":
				if !errors.As(err, &te) || te.Code != tt.wantCode || !strings.Contains(te.Message, tt.wantMsg) {
					t.Errorf("got %v (%T), want a *tandem.Error %s containing %q", err, err, tt.wantCode, tt.wantMsg)
				}
				if errors.As(err, &na) {
					t.Errorf("got a *NoAnswerError for a server's answer")
				}
			default:
				if !errors.As(err, &na) || err.Error() != u+tt.wantMsg {
					t.Errorf("got %v (%T), want a *NoAnswerError %q", err, err, u+tt.wantMsg)
				}
				if errors.As(err, &te) {
					t.Errorf("got a *tandem.Error %v when the server gave no answer", te)
				}
				if na != nil && na.Reading != strings.Contains(tt.wantMsg, "reading") {
					t.Errorf("Reading: got %v, want %v", na.Reading, !na.Reading)
				}
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v): got false, want true", err, tt.wantIs)
			}
			if events, _ := rec.snapshot(); len(events) > 1 {
				t.Errorf("got events %q, want at most the one request (no retries, no sleeps)", events)
			}
		})
	}
}

func TestDirectContextAndBadURL(t *testing.T) {
	rec := &recorder{}
	hung := serveHung(t, rec, "hung")
	tr := newTestTransport(t, rec, nil, hung.URL)

	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("agent closing")
	cancel(cause)
	err := tr.Direct(ctx, hung.URL, get("/v1/ha/state"), nil)
	var na *NoAnswerError
	if !errors.Is(err, cause) || errors.As(err, &na) || !strings.HasPrefix(err.Error(), "get /v1/ha/state: ") {
		t.Errorf("Direct with a cancelled ctx: got %v, want the op and the ctx's cause, not a *NoAnswerError", err)
	}

	if err := tr.Direct(context.Background(), "rm1", get("/"), nil); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Errorf("Direct(\"rm1\"): got %v, want invalid_argument", err)
	}
	if got := rec.hits("hung"); got != 0 {
		t.Errorf("got %d requests, want none", got)
	}
}
