package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/lb"
	"github.com/tandemhq/tandem/internal/local"
)

// Kinds of request the load generator sends through the proxy.
const (
	reqNewConn = "new-conn"  // GET /v1/ha/state on a new connection: who answered
	reqSubmit  = "keepalive" // POST /v1/jobs on a kept-alive connection, with an idempotency key
	reqLong    = "long"      // GET /v1/jobs/{id}/logs?follow=1 of a job that runs for seconds
)

// lbReq is one request the load generator sent, as it went.
type lbReq struct {
	kind       string
	start, end time.Time
	status     int    // 0 when no answer came
	server     string // X-Tandem-Server of the answer (the /v1/ha/state id for new-conn)
	err        error
	key        string // submissions: the idempotency key
	job        string // submissions: the job acknowledged
}

// lbLoad sends requests through a proxy and records every one.
type lbLoad struct {
	t      *testing.T
	url    string
	prefix string // job names and idempotency keys start with it

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	reqs  []lbReq
	acked map[string]string // idempotency key -> job ID
}

// startLoad starts the load generator on the proxy at url: two workers of
// new-connection GETs, one of kept-alive submissions, and, with long, one
// of log follows lasting about two seconds each. Stop ends it.
func startLoad(t *testing.T, url, prefix string, long bool) *lbLoad {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &lbLoad{t: t, url: strings.TrimRight(url, "/"), prefix: prefix, cancel: cancel, acked: map[string]string{}}
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	fresh := &http.Client{Timeout: 5 * time.Second, CheckRedirect: noRedirect,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	for w := 0; w < 2; w++ {
		l.wg.Go(func() { l.loop(ctx, 15*time.Millisecond, func() { l.getState(ctx, fresh) }) })
	}
	kept := &http.Client{Timeout: 10 * time.Second, CheckRedirect: noRedirect,
		Transport: &http.Transport{MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute, Proxy: nil}}
	n := 0
	l.wg.Go(func() {
		l.loop(ctx, 60*time.Millisecond, func() {
			n++
			l.submit(ctx, kept, fmt.Sprintf("%s-%d", l.prefix, n))
		})
	})
	if long {
		follow := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
		m := 0
		l.wg.Go(func() {
			l.loop(ctx, 100*time.Millisecond, func() {
				m++
				l.follow(ctx, kept, follow, fmt.Sprintf("%s-long-%d", l.prefix, m))
			})
		})
	}
	return l
}

// loop runs one request after another, paced by every, until ctx ends.
func (l *lbLoad) loop(ctx context.Context, every time.Duration, do func()) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for ctx.Err() == nil {
		do()
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func (l *lbLoad) record(r lbReq) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = append(l.reqs, r)
	if r.kind == reqSubmit && r.job != "" {
		l.acked[r.key] = r.job
	}
}

// getState asks who answers on a new connection.
func (l *lbLoad) getState(ctx context.Context, hc *http.Client) {
	r := lbReq{kind: reqNewConn, start: time.Now()}
	req, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, l.url+"/v1/ha/state", nil)
	resp, err := hc.Do(req)
	if err != nil {
		r.err = err
	} else {
		r.status, r.server = resp.StatusCode, resp.Header.Get("X-Tandem-Server")
		var st tandem.ServerStatus
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				r.err = err
			} else {
				r.server = st.ID
			}
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
		}
		resp.Body.Close()
	}
	r.end = time.Now()
	l.record(r)
}

// submit posts one job under key, trying again with the same key while
// the answer is not an acknowledgement (at most 20 times), each try a
// record of its own.
func (l *lbLoad) submit(ctx context.Context, hc *http.Client, key string) string {
	body, _ := json.Marshal(tandem.JobSpec{Name: key, Command: []string{"true"}})
	for try := 0; try < 20 && ctx.Err() == nil; try++ {
		r := lbReq{kind: reqSubmit, key: key, start: time.Now()}
		req, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodPost, l.url+"/v1/jobs", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		// Not replayable: net/http would otherwise retry a request that
		// failed on a reused connection, hiding the error we count.
		req.GetBody = nil
		resp, err := hc.Do(req)
		if err != nil {
			r.err = err
		} else {
			r.status, r.server = resp.StatusCode, resp.Header.Get("X-Tandem-Server")
			if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK {
				var j tandem.Job
				if err := json.NewDecoder(resp.Body).Decode(&j); err != nil {
					r.err = err
				} else {
					r.job = j.ID
				}
			} else {
				_, _ = io.Copy(io.Discard, resp.Body)
			}
			resp.Body.Close()
		}
		r.end = time.Now()
		l.record(r)
		if r.job != "" {
			return r.job
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // pacing of retries, not synchronisation
		}
	}
	return ""
}

// follow submits a job running two seconds and follows its log to the end
// through the proxy: a request lasting seconds.
func (l *lbLoad) follow(ctx context.Context, kept, hc *http.Client, key string) {
	body, _ := json.Marshal(tandem.JobSpec{Name: key, Command: []string{"sh", "-c", "echo start; sleep 2; echo done"}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, l.url+"/v1/jobs", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := kept.Do(req)
	if err != nil {
		return // counted by the submissions' own records
	}
	var j tandem.Job
	err = json.NewDecoder(resp.Body).Decode(&j)
	resp.Body.Close()
	if err != nil || j.ID == "" {
		return
	}
	// The log exists once an attempt has started.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if ctx.Err() != nil {
			return
		}
		greq, _ := http.NewRequestWithContext(ctx, http.MethodGet, l.url+"/v1/jobs/"+j.ID, nil)
		resp, err := kept.Do(greq)
		if err == nil {
			var cur tandem.Job
			_ = json.NewDecoder(resp.Body).Decode(&cur)
			resp.Body.Close()
			if cur.State == tandem.JobRunning || cur.State.Terminal() {
				break
			}
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := lbReq{kind: reqLong, start: time.Now(), job: j.ID}
	lreq, _ := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, l.url+"/v1/jobs/"+j.ID+"/logs?follow=1", nil)
	resp, err = hc.Do(lreq)
	if err != nil {
		r.err = err
	} else {
		r.status, r.server = resp.StatusCode, resp.Header.Get("X-Tandem-Server")
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			r.err = err
		} else if resp.StatusCode == http.StatusOK && !strings.Contains(string(b), "done") {
			r.err = fmt.Errorf("log ended without the job's last line: %q", b)
		}
	}
	r.end = time.Now()
	l.record(r)
}

// Stop ends the load and waits for the requests in flight.
func (l *lbLoad) Stop() {
	l.cancel()
	l.wg.Wait()
}

// snapshot returns the requests recorded so far.
func (l *lbLoad) snapshot() []lbReq {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]lbReq(nil), l.reqs...)
}

// waitAnswered waits until n new-connection requests started after since
// have ended with an answer.
func (l *lbLoad) waitAnswered(since time.Time, n int) {
	l.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := 0
		for _, r := range l.snapshot() {
			if r.kind == reqNewConn && !r.start.Before(since) && r.status != 0 {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("requests answered through the proxy since %s: got %d, want %d", since.Format(time.StampMilli), got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkAcked checks every acknowledged submission exists once: its job is
// there, and no idempotency key made two jobs (job names are the keys).
func (l *lbLoad) checkAcked(c *local.Cluster) {
	l.t.Helper()
	cl := newClient(l.t, c.URLs())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	byName := map[string][]string{}
	for after := ""; ; {
		page, err := cl.ListJobs(ctx, client.ListOptions{Limit: 1000, After: after})
		if err != nil {
			l.t.Fatalf("list jobs: %v", err)
		}
		for _, j := range page.Jobs {
			if strings.HasPrefix(j.Name, l.prefix+"-") {
				byName[j.Name] = append(byName[j.Name], j.ID)
			}
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for key, id := range l.acked {
		ids := byName[key]
		if len(ids) != 1 || ids[0] != id {
			l.t.Errorf("acknowledged submission %s (job %s): jobs under its key %v, want exactly [%s]", key, id, ids, id)
		}
	}
	for key, ids := range byName {
		if len(ids) > 1 {
			l.t.Errorf("idempotency key %s made %d jobs: %v", key, len(ids), ids)
		}
	}
	if len(l.acked) == 0 {
		l.t.Errorf("no submission was acknowledged through the proxy")
	}
}

// lbStatus reads tandem lb's status.
func lbStatus(c *local.Cluster) (lb.Status, error) {
	var st lb.Status
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.LB.URL+"/v1/lb/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("lb status: HTTP %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// appliedServers returns the tandem backend's servers as tandem lb last
// applied them, name -> up.
func appliedServers(st lb.Status) map[string]bool {
	out := map[string]bool{}
	if st.Applied == nil {
		return out
	}
	for _, b := range st.Applied.Backends {
		if b.Name != "tandem" {
			continue
		}
		for _, s := range b.Servers {
			out[s.Name] = s.Up
		}
	}
	return out
}

// waitApplied polls tandem lb's status until ok holds for the tandem
// backend as applied, and returns when it saw it.
func waitApplied(t *testing.T, c *local.Cluster, what string, ok func(servers map[string]bool) bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last lb.Status
	var lastErr error
	for time.Now().Before(deadline) {
		st, err := lbStatus(c)
		if err == nil && ok(appliedServers(st)) {
			return time.Now()
		}
		last, lastErr = st, err
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("tandem lb never applied %s: last status %+v (err %v)", what, appliedServers(last), lastErr)
	return time.Time{}
}

// onlyUp reports whether id is the only server up.
func onlyUp(id string) func(map[string]bool) bool {
	return func(s map[string]bool) bool {
		n := 0
		for _, up := range s {
			if up {
				n++
			}
		}
		return n == 1 && s[id]
	}
}

// upNot reports whether exactly one server other than old is up.
func upNot(old string) func(map[string]bool) bool {
	return func(s map[string]bool) bool {
		n := 0
		for name, up := range s {
			if up {
				if name == old {
					return false
				}
				n++
			}
		}
		return n == 1
	}
}

// waitAcked waits until a submission sent after since is acknowledged
// (after a SIGSTOP the one in flight to the frozen active must time out
// first).
func (l *lbLoad) waitAcked(since time.Time) {
	l.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, r := range l.snapshot() {
			if r.kind == reqSubmit && r.job != "" && !r.start.Before(since) {
				return
			}
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("no submission sent through the proxy since %s was acknowledged", since.Format(time.StampMilli))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
