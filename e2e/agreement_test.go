package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
)

// Issue 13, point 2: a hung or cut-off active is deposed once the others
// agree, and a standby cut off from it alone never deposes it.

// A paused active (SIGSTOP) stops beating on its watch streams: both
// standbys vote, it cannot answer, and it is deposed by their agreement, not
// by its lease (10 s here, so nothing else could have been in time). The
// write it was handed while paused is rejected once it resumes.
func TestPausedActiveIsDeposedByAgreement(t *testing.T) {
	c := startCluster(t, 3, startEtcd(t), "--lease-ttl", "10s")
	a := waitActive(t, c)
	ctx := context.Background()
	before, err := c.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.Servers {
		if i != a {
			waitBeating(t, c.Servers[i].URL)
		}
	}
	if err := c.Signal(a, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			_ = c.Signal(a, syscall.SIGCONT)
		}
	}()
	// Handed to the paused process: the kernel accepts the connection, the
	// process reads the request only once it resumes, deposed.
	res := postWhilePaused(t, c.Servers[a].URL, `{"name":"written-while-paused","command":["true"]}`)

	next := waitActive(t, c, a)
	var others []string
	for i, s := range c.Servers {
		if i != a {
			others = append(others, s.URL)
		}
	}
	cl := newClient(t, others)
	var ev *tandem.FailoverEvent
	waitFor(t, "the new active's failover event", 10*time.Second, func() bool {
		hist, err := cl.History(ctx)
		for _, h := range hist {
			if err == nil && h.PrevEpoch == before.Epoch {
				ev = &h
			}
		}
		return ev != nil
	})
	if ev.Cause != tandem.CauseCrashed || ev.Detection != tandem.DetectAgreement || ev.PrevID != c.Servers[a].ID || ev.ActiveID != c.Servers[next].ID {
		t.Fatalf("failover event: %s -> %s, cause %q, detection %q; want %s -> %s, %s, %s", ev.PrevID, ev.ActiveID, ev.Cause, ev.Detection,
			c.Servers[a].ID, c.Servers[next].ID, tandem.CauseCrashed, tandem.DetectAgreement)
	}
	t.Logf("paused %s deposed by agreement: detection %s, election %s", c.Servers[a].ID, fmtSecs(ev.DetectionS), fmtSecs(ev.ElectionS))

	if err := c.Signal(a, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	paused = false
	r := <-res
	if r.err != nil {
		t.Fatalf("request to the paused server: %v", r.err)
	}
	// Its first write is rejected: by etcd, its fence superseded (fenced),
	// or, if it learnt of its deposition first, as a standby (not_active).
	if code := errorCode(r.body); code != tandem.EFENCED && code != tandem.ENOTACTIVE {
		t.Fatalf("the deposed active answered its queued write with %d %s; want error %s or %s", r.status, r.body, tandem.EFENCED, tandem.ENOTACTIVE)
	}
	t.Logf("the resumed server answered its queued write with %d %s", r.status, errorCode(r.body))
	list, err := cl.ListJobs(ctx, client.ListOptions{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range list.Jobs {
		if j.Name == "written-while-paused" {
			t.Fatalf("a write by the deposed active is in the store: %+v", j)
		}
	}
}

// A standby cut off from the active alone (its one link to the active goes
// silent; etcd and the other standby still reach both) votes, but one vote
// of two is no majority, and the active, alive, answers it: every server
// still sees the active at its epoch while the vote stands, through the
// standby's vote again a suspicion period later, and the vote is withdrawn
// once the link heals, with no failover in the history.
func TestStandbyCutOffAloneDoesNotDeposeActive(t *testing.T) {
	e := startEtcd(t)
	base := freeBasePort(t, 3)
	// links[i][j]: server i's own way to server j, a proxy the test can cut.
	links := make([][]*faultnet.Proxy, 3)
	args := map[string][]string{}
	for i := range links {
		links[i] = make([]*faultnet.Proxy, 3)
		for j := range links[i] {
			if i == j {
				continue
			}
			p, err := faultnet.Listen("127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", base+j))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.Close() })
			links[i][j] = p
			args[local.ServerID(i)] = append(args[local.ServerID(i)], "--peer-addr", local.ServerID(j)+"="+p.Addr())
		}
	}
	// Patient settings, so a loaded machine's stalls do not look like
	// silence (only the cut link should) and no lease runs out.
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, BasePort: base, DataDir: t.TempDir(),
		EtcdEndpoints: e.Endpoint, ServerArgs: args, LogLevel: "debug",
		ExtraArgs: []string{"--suspect-after", "1s", "--lease-ttl", "10s"}})
	a := waitActive(t, c)
	b, o := (a+1)%3, (a+2)%3 // b is cut off; o, the other standby, is not
	ctx := context.Background()
	before, err := c.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	waitBeating(t, c.Servers[b].URL)
	waitBeating(t, c.Servers[o].URL)
	l := keys.New("default")
	evs := watchPrefix(t, etcdClient(t, e), l.SuspectsPrefix())
	aID, bID := c.Servers[a].ID, c.Servers[b].ID
	isVote := func(voter string) func(*clientv3.Event) bool {
		return func(ev *clientv3.Event) bool {
			id, _, v, ok := l.ParseSuspectKey(string(ev.Kv.Key))
			return ok && ev.Type == mvccpb.PUT && id == aID && v == voter
		}
	}
	isAnswer := func(ev *clientv3.Event) bool {
		id, _, v, ok := l.ParseSuspectKey(string(ev.Kv.Key))
		return ok && ev.Type == mvccpb.PUT && id == aID && v == ""
	}

	links[b][a].Block()
	first := nextEvent(t, evs, bID+"'s vote against "+aID, isVote(bID))
	nextEvent(t, evs, aID+"'s answer", isAnswer)
	again := nextEvent(t, evs, bID+"'s vote again, a suspicion period later", isVote(bID))
	nextEvent(t, evs, aID+"'s second answer", isAnswer)
	if again.Kv.ModRevision <= first.Kv.ModRevision {
		t.Fatalf("second vote at revision %d, want after %d", again.Kv.ModRevision, first.Kv.ModRevision)
	}
	for _, i := range []int{a, b, o} {
		st, err := c.Status(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if st.Epoch != before.Epoch || st.ActiveID != aID {
			t.Fatalf("%s while %s is cut off from %s: active %s at epoch %d; want %s at %d, unchanged",
				st.ID, bID, aID, st.ActiveID, st.Epoch, aID, before.Epoch)
		}
	}

	links[b][a].Unblock()
	nextEvent(t, evs, bID+"'s vote withdrawn", func(ev *clientv3.Event) bool {
		id, _, v, ok := l.ParseSuspectKey(string(ev.Kv.Key))
		return ok && ev.Type == mvccpb.DELETE && id == aID && v == bID
	})
	hist, err := newClient(t, c.URLs()).History(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if last := hist[len(hist)-1]; last.Epoch != before.Epoch {
		t.Fatalf("last failover: %+v; want none after epoch %d", last, before.Epoch)
	}
}

// pausedResult is the answer to a request handed to a paused server.
type pausedResult struct {
	status int
	body   string
	err    error
}

// postWhilePaused posts a job to url (a paused server) and delivers the
// answer once there is one.
func postWhilePaused(t *testing.T, url, body string) <-chan pausedResult {
	t.Helper()
	res := make(chan pausedResult, 1)
	hc := httpClient(t)
	hc.Timeout = 60 * time.Second
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, _ := http.NewRequest("POST", url+"/v1/jobs", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "paused-write")
	authorize(t, req)
	go func() {
		resp, err := hc.Do(req)
		if err != nil {
			res <- pausedResult{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		res <- pausedResult{status: resp.StatusCode, body: string(b)}
	}()
	return res
}

// waitBeating waits until the server at url receives the beats of the
// active's watch stream (its metric tandem_watch_beating): only an owner
// that has beaten can be suspected of stopping.
func waitBeating(t *testing.T, url string) {
	t.Helper()
	hc := httpClient(t)
	waitFor(t, "beats from the active at "+url, 20*time.Second, func() bool {
		req, _ := http.NewRequest(http.MethodGet, url+"/metrics", nil)
		resp, err := hc.Do(authorize(t, req))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "tandem_watch_beating "); ok {
				got, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return err == nil && got >= 1
			}
		}
		return false
	})
}

// watchPrefix delivers every etcd event under prefix from now on.
func watchPrefix(t *testing.T, cli *clientv3.Client, prefix string) <-chan *clientv3.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out := make(chan *clientv3.Event, 256)
	wch := cli.Watch(ctx, prefix, clientv3.WithPrefix())
	go func() {
		for wr := range wch {
			for _, ev := range wr.Events {
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// nextEvent waits for the first event that match accepts.
func nextEvent(t *testing.T, evs <-chan *clientv3.Event, what string, match func(*clientv3.Event) bool) *clientv3.Event {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-evs:
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("gave up after 30s waiting for %s", what)
		}
	}
}

func fmtSecs(p *float64) string {
	if p == nil {
		return "unknown"
	}
	return time.Duration(*p * float64(time.Second)).Round(time.Millisecond).String()
}
