package ui

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
)

// Writes. The UI never changes anything itself: each button becomes a
// request to the API, made with the caller's token as its bearer token, so
// the API's guard authorizes and audits it as it does the CLI's. It goes
// first to this server's own API, in process. Where the API would send a
// client elsewhere (a standby's 307 to the active, a job's write to its
// shard's owner), the UI forwards the request itself, once, to that server
// — only if it is a live member of this cluster (Service.Servers), over the
// cluster's TLS with this server's certificate, the peer's verified as a
// server of the cluster — and shows the answer. With no active known the
// API answers 503 no_active, which the UI shows as it is. docs/UI.md,
// "Writes from any server", explains why forwarding the token this way keeps
// I9.

// forwardTimeout bounds a forwarded write (a drain waits up to wait_ms).
const forwardTimeout = 40 * time.Second

// apiResult is the answer to a write.
type apiResult struct {
	Status int
	Body   []byte
	Header http.Header
	// Via is the server that answered, when the request was forwarded.
	Via string
}

// errMessage returns the API error's message, or the body.
func (a apiResult) errMessage() string {
	var eb tandem.ErrorBody
	if json.Unmarshal(a.Body, &eb) == nil && eb.Error != nil {
		return eb.Error.Message
	}
	return strings.TrimSpace(string(a.Body))
}

func (a apiResult) ok() bool { return a.Status >= 200 && a.Status < 300 }

// call makes an API request for the caller of r: on server to ("" for this
// one), following one redirect to another server of the cluster.
func (u *UI) call(r *http.Request, to, method, path string, body any, hdr http.Header) (apiResult, error) {
	var b []byte
	if body != nil {
		var err error
		if b, err = json.Marshal(body); err != nil {
			return apiResult{}, err
		}
	}
	if to == "" || to == u.svc.ID() {
		res := u.inProcess(r, method, path, b, hdr)
		if res.Status != http.StatusTemporaryRedirect {
			return res, nil
		}
		loc, err := url.Parse(res.Header.Get("Location"))
		if err != nil {
			return res, nil
		}
		id, ok := u.memberAt(loc)
		if !ok {
			return apiResult{Status: http.StatusBadGateway, Body: []byte("the API sent this write to " + loc.Host + ", which is not a live server of this cluster; the UI does not send your token there")}, nil
		}
		return u.forward(r, id, strings.TrimRight(loc.Scheme+"://"+loc.Host, "/"), method, loc.RequestURI(), b, hdr)
	}
	for _, sv := range u.svc.Servers() {
		if sv.ID == to {
			return u.forward(r, to, sv.URL, method, path, b, hdr)
		}
	}
	return apiResult{Status: http.StatusServiceUnavailable, Body: []byte("server " + to + " is not a live member of the cluster")}, nil
}

// inProcess serves an API request in this process, as from the caller: its
// address, its TLS connection (the guard checks a client certificate if the
// browser presented one), and its token.
func (u *UI) inProcess(r *http.Request, method, path string, body []byte, hdr http.Header) apiResult {
	req := httptest.NewRequestWithContext(r.Context(), method, path, bytes.NewReader(body))
	req.RemoteAddr, req.TLS, req.Host = r.RemoteAddr, r.TLS, r.Host
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if s := sessionOf(r); s.secret != "" {
		req.Header.Set("Authorization", "Bearer "+s.secret)
	}
	req.Header.Set("User-Agent", "tandem-ui (for "+r.UserAgent()+")")
	rec := httptest.NewRecorder()
	u.cfg.API.ServeHTTP(rec, req)
	return apiResult{Status: rec.Code, Body: rec.Body.Bytes(), Header: rec.Header()}
}

// memberAt returns the ID of the live server of the cluster whose URL has
// loc's scheme and host.
func (u *UI) memberAt(loc *url.URL) (string, bool) {
	for _, sv := range u.svc.Servers() {
		su, err := url.Parse(sv.URL)
		if err == nil && su.Scheme == loc.Scheme && strings.EqualFold(su.Host, loc.Host) {
			return sv.ID, true
		}
	}
	return "", false
}

// forward sends the caller's request to server id at base, with the
// caller's token.
func (u *UI) forward(r *http.Request, id, base, method, path string, body []byte, hdr http.Header) (apiResult, error) {
	ctx, cancel := context.WithTimeout(r.Context(), forwardTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(base, "/")+path, bytes.NewReader(body))
	if err != nil {
		return apiResult{}, err
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if s := sessionOf(r); s.secret != "" {
		req.Header.Set("Authorization", "Bearer "+s.secret)
	}
	req.Header.Set("X-Forwarded-For", r.RemoteAddr)
	req.Header.Set("X-Tandem-Forwarded-By", u.svc.ID())
	resp, err := u.cfg.ServerClient.Do(req)
	if err != nil {
		return apiResult{Status: http.StatusServiceUnavailable, Body: []byte(fmt.Sprintf("server %s (%s) did not answer: %v", id, base, err)), Via: id}, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	u.log.Info("ui forwarded a write", "to", id, "method", method, "path", path, "status", resp.StatusCode)
	return apiResult{Status: resp.StatusCode, Body: b, Header: resp.Header, Via: id}, nil
}

// report sends the browser back to back with the result as a message.
func (u *UI) report(w http.ResponseWriter, r *http.Request, back, did string, res apiResult, err error) {
	via := ""
	if res.Via != "" {
		via = " (forwarded to " + res.Via + ")"
	}
	switch {
	case err != nil:
		setFlash(w, r, "Refused: "+err.Error(), true)
	case res.ok():
		setFlash(w, r, did+via+".", false)
	default:
		setFlash(w, r, fmt.Sprintf("Refused%s: %d %s: %s", via, res.Status, http.StatusText(res.Status), res.errMessage()), true)
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}

type confirmData struct {
	Action, Question, Button, Back string
	Items                          []string
	Hidden                         []hidden
	// Fields are optional text fields of the form (a pause's note).
	Fields []field
}

type hidden struct{ Name, Value string }

type field struct{ Name, Label, Value string }

// killConfirm asks before killing the jobs named by ?id= (one or more).
func (u *UI) killConfirm(w http.ResponseWriter, r *http.Request) {
	s := sessionOf(r)
	ids := r.URL.Query()["id"]
	if len(ids) == 0 {
		setFlash(w, r, "Select the jobs to kill first.", true)
		http.Redirect(w, r, "/ui/jobs", http.StatusSeeOther)
		return
	}
	d := confirmData{Action: "/ui/kill", Button: "Yes, kill", Back: "/ui/jobs"}
	if len(ids) == 1 {
		d.Back = "/ui/jobs/" + url.PathEscape(ids[0])
		d.Question = "Kill job " + ids[0] + "? Its running attempt gets SIGTERM, then SIGKILL."
		d.Button = "Yes, kill job " + ids[0]
	} else {
		d.Question = fmt.Sprintf("Kill these %d jobs? Their running attempts get SIGTERM, then SIGKILL.", len(ids))
		d.Items = ids
	}
	for _, id := range ids {
		d.Hidden = append(d.Hidden, hidden{"id", id})
	}
	u.render(w, r, s, http.StatusOK, "confirm", &view{Title: "Confirm kill", Data: d})
}

func (u *UI) kill(w http.ResponseWriter, r *http.Request) {
	ids := r.PostForm["id"]
	back := "/ui/jobs"
	if len(ids) == 1 {
		back = "/ui/jobs/" + url.PathEscape(ids[0])
	}
	var failed []string
	var last apiResult
	forbidden := false
	for _, id := range ids {
		res, err := u.call(r, "", http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/kill", nil, nil)
		if err == nil && !res.ok() {
			err = fmt.Errorf("%s: %d %s", id, res.Status, res.errMessage())
			forbidden = forbidden || res.Status == http.StatusForbidden || res.Status == http.StatusUnauthorized
		}
		if err != nil {
			failed = append(failed, err.Error())
		}
		last = res
	}
	if forbidden {
		// The API's guard refused: answer its 403 (a page, not a redirect),
		// so what refused it is plain to people and scripts alike.
		u.errorPage(w, r, sessionOf(r), tandem.Errorf(tandem.EFORBIDDEN, "refused by the API: %s", strings.Join(failed, "; ")))
		return
	}
	if len(failed) > 0 {
		setFlash(w, r, "Refused: "+strings.Join(failed, "; "), true)
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	u.report(w, r, back, fmt.Sprintf("Kill requested for %s", strings.Join(ids, ", ")), last, nil)
}

// resubmitConfirm asks before submitting a copy of a job's spec. The form
// carries a fresh idempotency key, so a double click makes one job.
func (u *UI) resubmitConfirm(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	j, _, err := u.svc.Job(id)
	if err != nil {
		u.errorPage(w, r, sessionOf(r), err)
		return
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	d := confirmData{Action: "/ui/jobs/" + url.PathEscape(id) + "/resubmit", Back: "/ui/jobs/" + url.PathEscape(id),
		Question: fmt.Sprintf("Submit a new job with the spec of %s (%s)?", j.ID, strings.Join(j.Command, " ")),
		Button:   "Yes, resubmit", Hidden: []hidden{{"key", "ui-" + hex.EncodeToString(key)}}}
	u.render(w, r, sessionOf(r), http.StatusOK, "confirm", &view{Title: "Confirm resubmit", Data: d})
}

func (u *UI) resubmit(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	back := "/ui/jobs/" + url.PathEscape(id)
	j, _, err := u.svc.Job(id)
	if err != nil {
		u.report(w, r, back, "", apiResult{}, err)
		return
	}
	hdr := http.Header{}
	if k := r.PostFormValue("key"); k != "" {
		hdr.Set("Idempotency-Key", k)
	}
	res, err := u.call(r, "", http.MethodPost, "/v1/jobs", j.JobSpec, hdr)
	if err == nil && res.ok() {
		var nj tandem.Job
		if json.Unmarshal(res.Body, &nj) == nil && nj.ID != "" {
			back = "/ui/jobs/" + url.PathEscape(nj.ID)
			u.report(w, r, back, "Submitted "+nj.ID+" with the spec of "+id, res, nil)
			return
		}
	}
	u.report(w, r, back, "", res, err)
}

// failover hands the active role from the active to the server chosen: the
// API takes it on from, the active.
func (u *UI) failover(w http.ResponseWriter, r *http.Request) {
	req := tandem.HandoffRequest{From: r.PostFormValue("from"), To: r.PostFormValue("to")}
	res, err := u.call(r, req.From, http.MethodPost, "/v1/ha/failover", req, nil)
	u.report(w, r, "/ui/cluster", fmt.Sprintf("Failover from %s to %s done", req.From, req.To), res, err)
}

// drain drains (or undrains) the server named, on that server.
func (u *UI) drain(w http.ResponseWriter, r *http.Request) {
	id := r.PostFormValue("server")
	req := tandem.DrainRequest{Drain: r.PostFormValue("drain") == "true", WaitMS: 30000}
	res, err := u.call(r, id, http.MethodPost, "/v1/ha/drain", req, nil)
	did := "Drained " + id
	if !req.Drain {
		did = "Undrained " + id
	}
	u.report(w, r, "/ui/cluster", did, res, err)
}
