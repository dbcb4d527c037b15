package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// haServer answers the per-server HA endpoints like one server would.
func haServer(t *testing.T, rec *recorder, healthy bool, autoFailover bool) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ha/state", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, tandem.ServerStatus{ID: "rm2", State: tandem.StateStandby, Epoch: 3})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if healthy {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"status":"etcd unreachable"}`)
	})
	mux.HandleFunc("POST /v1/ha/transition", func(w http.ResponseWriter, r *http.Request) {
		var req tandem.TransitionRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeError(w, tandem.Errorf(tandem.EINVALID, "%v", err))
			return
		}
		if autoFailover && !req.ForceManual {
			writeError(w, tandem.Errorf(tandem.EREFUSED, "automatic failover is on; use --forcemanual"))
			return
		}
		writeJSON(w, http.StatusOK, tandem.ServerStatus{ID: "rm2", State: req.State})
	})
	mux.HandleFunc("POST /v1/ha/failover", func(w http.ResponseWriter, r *http.Request) {
		var req tandem.HandoffRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeError(w, tandem.Errorf(tandem.EINVALID, "%v", err))
			return
		}
		writeJSON(w, http.StatusOK, tandem.ServerStatus{ID: req.From, State: tandem.StateStandby, ActiveID: req.To, Epoch: 4})
	})
	return serve(t, rec, "ha", mux).URL
}

func TestPerServerCalls(t *testing.T) {
	rec := &recorder{}
	u := haServer(t, rec, true, true)
	other := serve(t, rec, "other", &activeAPI{})
	// The per-server calls go to the URL they are given, never to the
	// configured servers.
	c := newTestClient(t, rec, DefaultBackoff(), other.URL)
	ctx := context.Background()

	st, err := c.ServerStatus(ctx, u+"/")
	if err != nil || st.ID != "rm2" || st.State != tandem.StateStandby {
		t.Errorf("ServerStatus: got %+v, %v, want rm2 standby", st, err)
	}
	if err := c.Health(ctx, u); err != nil {
		t.Errorf("Health: got %v, want nil", err)
	}
	_, err = c.Transition(ctx, u, tandem.TransitionRequest{State: tandem.StateActive})
	if got := tandem.ErrorCode(err); got != tandem.EREFUSED || !strings.Contains(err.Error(), "--forcemanual") {
		t.Errorf("Transition without force: got %v (code %s), want %s with the server's message", err, got, tandem.EREFUSED)
	}
	st, err = c.Transition(ctx, u, tandem.TransitionRequest{State: tandem.StateActive, ForceManual: true})
	if err != nil || st.State != tandem.StateActive {
		t.Errorf("Transition with force: got %+v, %v, want active", st, err)
	}
	st, err = c.Failover(ctx, u, tandem.HandoffRequest{From: "rm1", To: "rm2"})
	if err != nil || st.ActiveID != "rm2" || st.Epoch != 4 {
		t.Errorf("Failover: got %+v, %v, want rm2 active at epoch 4", st, err)
	}
	if got := rec.hits("other"); got != 0 {
		t.Errorf("got %d requests to the configured server, want 0", got)
	}
}

func TestPerServerCallErrors(t *testing.T) {
	rec := &recorder{}
	sick := haServer(t, rec, false, true)
	dead := deadURL(t)
	c := newTestClient(t, rec, DefaultBackoff(), sick)
	ctx := context.Background()

	err := c.Health(ctx, sick)
	if got := tandem.ErrorCode(err); got != tandem.EUNAVAILABLE || !strings.Contains(err.Error(), "etcd unreachable") {
		t.Errorf("Health of a sick server: got %v (code %s), want %s with the body", err, got, tandem.EUNAVAILABLE)
	}
	start := time.Now()
	err = c.Health(ctx, dead)
	if got := tandem.ErrorCode(err); got != tandem.EUNAVAILABLE || !strings.Contains(err.Error(), dead+": connection refused") {
		t.Errorf("Health of a dead server: got %v (code %s), want %s naming it", err, got, tandem.EUNAVAILABLE)
	}
	if _, err := c.ServerStatus(ctx, dead); err == nil {
		t.Errorf("ServerStatus of a dead server: got no error, want one")
	}
	if events, _ := rec.snapshot(); len(events) != 1 {
		t.Errorf("got events %q, want just the one health check of the sick server (no retries, no sleeps)", events)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("got %v for calls to a dead server, want no retrying", took)
	}
	if _, err := c.ServerStatus(ctx, "rm1"); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Errorf("ServerStatus(\"rm1\"): got %v, want an invalid_argument error", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Health(cctx, sick); !errors.Is(err, context.Canceled) {
		t.Errorf("Health with a cancelled ctx: got %v, want context.Canceled", err)
	}
}

func TestReadsFromAnyServer(t *testing.T) {
	rec := &recorder{}
	active := serve(t, rec, "active", &activeAPI{})
	c := newTestClient(t, rec, DefaultBackoff(), deadURL(t), active.URL)
	ctx := context.Background()
	servers, err := c.Servers(ctx)
	if err != nil || len(servers) != 1 || servers[0].ID != "rm1" {
		t.Errorf("Servers: got %+v, %v, want [rm1]", servers, err)
	}
	events, err := c.History(ctx)
	if err != nil || len(events) != 1 || events[0].Epoch != 7 {
		t.Errorf("History: got %+v, %v, want one event at epoch 7", events, err)
	}
	if _, err := c.GetJob(ctx, ""); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Errorf("GetJob(\"\"): got %v, want invalid_argument", err)
	}
}
