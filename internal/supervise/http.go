package supervise

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
)

// handler is a supervisor's HTTP API (docs/API.md, "Supervised services"),
// every route guarded as Capabilities says (security.go, acl.Guard):
//
//	GET  /v1/supervise/services              every service's status           read
//	GET  /v1/supervise/history[?service=S]   failover records, oldest first   read
//	GET  /v1/supervise/nodes                 live supervisors                 read
//	POST /v1/supervise/services/{svc}/move   {"to": NODE}                     operator
//	POST /v1/supervise/services/{svc}/ban    {"node": NODE, "for": "10m", "reason": "..."}  operator
//	POST /v1/supervise/services/{svc}/clear                                   operator
//	GET  /healthz                            200 while the process lives      open
//	GET  /metrics                            Prometheus                       open (read with ProtectMetrics)
func (s *Supervisor) handler(g *acl.Guard) http.Handler {
	admin := &Admin{cli: s.cli, keys: s.keys}
	mux := http.NewServeMux()
	route := func(method, route string, h http.HandlerFunc) {
		mux.Handle(method+" "+route, g.Handler(route, s.need(route, method), h))
	}
	route("GET", "/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	route("GET", "/metrics", promhttp.HandlerFor(s.met.reg, promhttp.HandlerOpts{}).ServeHTTP)
	route("GET", "/v1/supervise/services", func(w http.ResponseWriter, r *http.Request) {
		st, err := admin.Status(r.Context())
		reply(w, st, err)
	})
	route("GET", "/v1/supervise/history", func(w http.ResponseWriter, r *http.Request) {
		ev, err := admin.History(r.Context(), r.URL.Query().Get("service"))
		if ev == nil {
			ev = []Event{}
		}
		reply(w, ev, err)
	})
	route("GET", "/v1/supervise/nodes", func(w http.ResponseWriter, r *http.Request) {
		n, err := admin.Nodes(r.Context())
		reply(w, n, err)
	})
	route("POST", "/v1/supervise/services/{svc}/move", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			To string `json:"to"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		acl.CallerOf(r).Target = "service " + r.PathValue("svc") + " to " + req.To
		reply(w, map[string]string{"service": r.PathValue("svc"), "to": req.To}, admin.Move(r.Context(), r.PathValue("svc"), req.To))
	})
	route("POST", "/v1/supervise/services/{svc}/ban", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Node   string   `json:"node"`
			For    Duration `json:"for"`
			Reason string   `json:"reason"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		acl.CallerOf(r).Target = "service " + r.PathValue("svc") + " node " + req.Node
		reply(w, map[string]string{"service": r.PathValue("svc"), "node": req.Node},
			admin.Ban(r.Context(), r.PathValue("svc"), req.Node, req.For.D(), req.Reason))
	})
	route("POST", "/v1/supervise/services/{svc}/clear", func(w http.ResponseWriter, r *http.Request) {
		n, err := admin.Clear(r.Context(), r.PathValue("svc"))
		reply(w, map[string]int{"bans_cleared": n}, err)
	})
	return http.TimeoutHandler(mux, 10*time.Second, `{"error":{"code":"unavailable","message":"timed out"}}`)
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		reply(w, nil, tandem.Errorf(tandem.EINVALID, "request body: %v", err))
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := tandem.ErrorCode(err)
		msg := tandem.ErrorMessage(err)
		if code == tandem.EINTERNAL {
			// Everything here reads or writes etcd: an untyped error is etcd
			// out of reach, which a retry may cure.
			code, msg = tandem.EUNAVAILABLE, err.Error()
		}
		w.WriteHeader(tandem.HTTPStatus(code))
		_ = json.NewEncoder(w).Encode(tandem.ErrorBody{Error: &tandem.Error{Code: code, Message: msg}})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}
