package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/local"
	"github.com/tandemhq/tandem/internal/shard"
)

// Active-active (--shards N) end to end: real server and agent processes on
// a shared etcd, paused, killed, joined and drained, with etcd's own history
// as the judge of fencing (I1 per shard).

// A server paused (SIGSTOP) past its 1 s lease loses every shard it owned to
// the others, each under a newer epoch. When it resumes it acts as owner on
// none of its old terms: etcd's history shows no write under an epoch no
// longer in force, the shards it owns again (the target map gives it its
// share back) are new terms, and every acknowledged job succeeds, launched
// at most once (I1, I2, I4).
func TestShardsPausedOwnerResumesFenced(t *testing.T) {
	const n = 8
	e := startEtcd(t)
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, Agents: 2, Shards: n, LeaseTTL: time.Second,
		BasePort: freeBasePort(t, 3), DataDir: t.TempDir(), EtcdEndpoints: e.Endpoint, LogLevel: "debug"})
	all := serverIDs(c)
	before := waitShardsSettled(t, c, n, all...)

	// The victim is the server owning the most shards; the trickle sticks
	// to it, so it is busy writing its own shards' jobs when it stops.
	victim := 0
	for i := range c.Servers {
		if len(ownedIn(before, c.Servers[i].ID)) > len(ownedIn(before, c.Servers[victim].ID)) {
			victim = i
		}
	}
	vid := c.Servers[victim].ID
	old := map[int]int64{} // shard -> the victim's epoch
	for _, si := range before {
		if si.Owner == vid {
			old[si.Shard] = si.Epoch
		}
	}
	if len(old) == 0 {
		t.Fatalf("%s owns no shard: %+v", vid, before)
	}
	others := othersThan(c, victim)
	urls := []string{c.Servers[victim].URL}
	for _, i := range others {
		urls = append(urls, c.Servers[i].URL)
	}
	cmd, ledger := launchMarker(t, "sleep 0.2")
	tr := startTrickle(t, newClient(t, urls), "trickle", cmd)
	waitAcked(t, tr, 5)
	if !slices.ContainsFunc(tr.acked(), func(j *tandem.Job) bool { return j.AcceptedBy == vid }) {
		t.Fatalf("no job accepted by %s before the pause: the test needs it writing", vid)
	}

	if err := c.Signal(victim, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			_ = c.Signal(victim, syscall.SIGCONT)
		}
	}()
	// kill returns once the signal is sent; every thread must have stopped
	// before the submission goes, or the server may still handle it under
	// the terms it rightly holds (a 201 at its old epoch, rightly).
	waitStopped(t, c.PID(victim))
	// A submission sent to the paused server waits in its socket and is
	// handled the moment it resumes, while it still believes in its terms.
	queued := make(chan rawAnswer, 1)
	hc, token := httpClient(t), securedToken(t)
	go func() { queued <- postJob(hc, token, c.Servers[victim].URL, "queued-while-paused") }()

	for _, i := range others {
		eventually(t, fmt.Sprintf("%s sees every shard of paused %s under a new owner", c.Servers[i].ID, vid), 30*time.Second, func() error {
			shards, err := shardsOf(c, i)
			if err != nil {
				return err
			}
			for _, si := range shards {
				if e, ok := old[si.Shard]; ok && (si.Owner == "" || si.Owner == vid || si.Epoch <= e) {
					return fmt.Errorf("shard %d: owner %q at epoch %d (%s's was %d)", si.Shard, si.Owner, si.Epoch, vid, e)
				}
			}
			return nil
		})
	}
	waitAcked(t, tr, len(tr.acked())+5) // submissions go on while it is paused

	if err := c.Signal(victim, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	paused = false
	q := <-queued
	switch {
	case q.err != nil:
		t.Fatalf("request queued at the paused server: %v", q.err)
	case q.status == http.StatusCreated:
		var j tandem.Job
		if err := json.Unmarshal([]byte(q.body), &j); err != nil {
			t.Fatalf("201 with body %q: %v", q.body, err)
		}
		if e, ok := old[j.Shard]; ok && j.Epoch == e {
			t.Fatalf("the resumed server acknowledged job %s under its old epoch %d of shard %d", j.ID, e, j.Shard)
		}
		tr.add(&j) // accepted under a term it won again: acknowledged like any other
	case q.status == http.StatusTemporaryRedirect:
		// It had already dropped every term and sent the client to an owner.
	case q.status == http.StatusServiceUnavailable:
		// Not acknowledged, and a code that sends the client elsewhere.
		if code := errorCode(q.body); !slices.Contains([]string{tandem.EFENCED, tandem.ENOACTIVE, tandem.ENOTACTIVE, tandem.EUNAVAILABLE}, code) {
			t.Fatalf("queued submission refused with code %q (%s), want fenced, no_active, not_active or unavailable", code, q.body)
		}
	default:
		t.Fatalf("queued submission at the resumed server: %d %s", q.status, q.body)
	}
	t.Logf("the resumed server answered its queued submission with %d %s", q.status, strings.Join(strings.Fields(q.body), " "))

	// It rejoins the target map and gets its share back, as new terms.
	after := waitShardsSettled(t, c, n, all...)
	for _, si := range after {
		if e, ok := old[si.Shard]; ok && si.Owner == vid && si.Epoch <= e {
			t.Fatalf("%s owns shard %d at epoch %d after resuming; its term before the pause was epoch %d", vid, si.Shard, si.Epoch, e)
		}
	}
	waitAcked(t, tr, len(tr.acked())+5)
	acked, errs := tr.halt()
	for _, err := range errs {
		t.Errorf("submission through the failover client: %v", err)
	}
	cl := newClient(t, c.URLs())
	for _, j := range acked {
		if got := waitJobState(t, cl, j.ID, 60*time.Second, terminal); got.State != tandem.JobSucceeded {
			t.Fatalf("acknowledged job %s (shard %d, accepted by %s): %s %s", j.ID, j.Shard, j.AcceptedBy, got.State, got.Reason)
		}
	}
	launches(t, ledger)

	a := auditShards(t, e, n)
	for k, epoch := range old {
		var seq []history.Tenure
		for _, tn := range a.Tenures {
			if tn.Shard == k && tn.Epoch >= epoch {
				seq = append(seq, tn)
			}
		}
		if len(seq) < 2 || seq[0].Owner != vid || seq[0].Epoch != epoch || seq[0].Ended == 0 || seq[1].Owner == vid {
			t.Fatalf("tenures of shard %d from %s's epoch %d: %+v; want it ended and another server's next", k, vid, epoch, seq)
		}
	}
	t.Logf("%d jobs acknowledged; %d shards moved off paused %s and back; etcd history: %d tenures, %d job writes, %d problems",
		len(acked), len(old), vid, len(a.Tenures), a.JobWrites, len(a.Problems))
}

// kill -9 of a server: the others take all its shards at once (no shard is
// ever owned twice, every write is fenced by its shard owner's epoch), a job
// it had placed keeps running on its agent and succeeds with its one
// attempt, and submissions through the failover client go on succeeding.
func TestShardsKill9OfServer(t *testing.T) {
	const n = 8
	e := startEtcd(t)
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, Agents: 2, Shards: n, LeaseTTL: time.Second,
		BasePort: freeBasePort(t, 3), DataDir: t.TempDir(), EtcdEndpoints: e.Endpoint, LogLevel: "debug"})
	all := serverIDs(c)
	before := waitShardsSettled(t, c, n, all...)
	ctx := context.Background()

	// A job that runs until the test lets it finish, placed by the server
	// about to be killed (the owner of its shard).
	gate := filepath.Join(t.TempDir(), "finish")
	long, longLedger := launchMarker(t, "while [ ! -e "+gate+" ]; do sleep 0.05; done")
	cl := newClient(t, c.URLs())
	j, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: "long", Command: long}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	run := waitJobState(t, cl, j.ID, 30*time.Second, running)
	victim := serverIndex(c, before[run.Shard].Owner)
	vid := c.Servers[victim].ID
	if run.Attempts[0].Epoch != before[run.Shard].Epoch {
		t.Fatalf("attempt recorded at epoch %d, want the shard owner %s's %d", run.Attempts[0].Epoch, vid, before[run.Shard].Epoch)
	}
	old := map[int]int64{}
	for _, si := range before {
		if si.Owner == vid {
			old[si.Shard] = si.Epoch
		}
	}

	// The trickle starts at the victim, so the kill hits its sticky server.
	urls := []string{c.Servers[victim].URL}
	for _, i := range othersThan(c, victim) {
		urls = append(urls, c.Servers[i].URL)
	}
	cmd, ledger := launchMarker(t, "true")
	tr := startTrickle(t, newClient(t, urls), "trickle", cmd)
	waitAcked(t, tr, 5)

	if err := c.Kill(victim); err != nil {
		t.Fatal(err)
	}
	live := slices.DeleteFunc(slices.Clone(all), func(id string) bool { return id == vid })
	after := waitShardsSettled(t, c, n, live...)
	for k, epoch := range old {
		if si := after[k]; si.Epoch <= epoch {
			t.Fatalf("shard %d of killed %s: owner %s at epoch %d, want a newer epoch than %d", k, vid, si.Owner, si.Epoch, epoch)
		}
	}
	waitAcked(t, tr, len(tr.acked())+10)

	// The long job ran on through the crash of the server that placed it.
	if err := syscall.Kill(run.Attempts[0].PID, 0); err != nil {
		t.Fatalf("attempt %s (pid %d) is gone after %s crashed: %v", run.Attempts[0].ID, run.Attempts[0].PID, vid, err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	final := waitJobState(t, cl, j.ID, 60*time.Second, terminal)
	if final.State != tandem.JobSucceeded || len(final.Attempts) != 1 || final.Attempts[0].ID != run.Attempts[0].ID {
		t.Fatalf("long job after its owner crashed: %s, attempts %+v; want succeeded with attempt %s alone", final.State, final.Attempts, run.Attempts[0].ID)
	}
	if ids := launches(t, longLedger); len(ids) != 1 {
		t.Fatalf("long job launches: %v, want one", ids)
	}

	acked, errs := tr.halt()
	for _, err := range errs {
		t.Errorf("submission through the failover client: %v", err)
	}
	for _, j := range acked {
		if got := waitJobState(t, cl, j.ID, 60*time.Second, terminal); got.State != tandem.JobSucceeded {
			t.Fatalf("acknowledged job %s: %s %s", j.ID, got.State, got.Reason)
		}
	}
	launches(t, ledger)

	a := auditShards(t, e, n)
	for k, epoch := range old {
		var seq []history.Tenure
		for _, tn := range a.Tenures {
			if tn.Shard == k && tn.Epoch >= epoch {
				seq = append(seq, tn)
			}
		}
		if len(seq) < 2 || seq[0].Owner != vid || seq[0].Ended == 0 || !slices.Contains(live, seq[1].Owner) {
			t.Fatalf("tenures of shard %d from %s's epoch %d: %+v; want it ended and a live server's next", k, vid, epoch, seq)
		}
	}
	// I6: each shard taken from the crashed server says why.
	events, err := cl.History(ctx)
	if err != nil {
		t.Fatal(err)
	}
	why := map[int]string{}
	for _, ev := range events {
		if _, ok := old[ev.Shard]; ok && ev.PrevID == vid && ev.PrevEpoch == old[ev.Shard] {
			why[ev.Shard] = ev.Cause
		}
	}
	for k := range old {
		if cause := why[k]; cause != tandem.CauseCrashed && cause != tandem.CauseLeaseExpired {
			t.Errorf("shard %d taken from crashed %s with cause %q, want %s or %s", k, vid, cause, tandem.CauseCrashed, tandem.CauseLeaseExpired)
		}
	}
	t.Logf("%s owned %d shards; %d jobs acknowledged around its crash; etcd history: %d tenures, %d job writes, %d problems",
		vid, len(old), len(acked), len(a.Tenures), a.JobWrites, len(a.Problems))
}

// A server joining a running active-active cluster gets its share of the
// shards; the CLI lists shards (-o json) and servers (SHARDS, READY), drains
// a server to nothing and back, each shard moving with no gap beyond a few
// transactions, and refuses to drain the last server that could own the
// shards, saying why. Every record the servers logged names its server.
func TestShardsJoinAndDrainThroughCLI(t *testing.T) {
	const n = 16
	e := startEtcd(t)
	c := startLocal(t, local.Config{Binary: binary, Servers: 3, Initial: 2, Shards: n,
		BasePort: freeBasePort(t, 3), DataDir: t.TempDir(), EtcdEndpoints: e.Endpoint, LogLevel: "debug"})
	waitShardsSettled(t, c, n, "rm1", "rm2")
	if err := c.StartServer(2); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitHealthy(wctx, 2); err != nil {
		t.Fatal(err)
	}
	settled := waitShardsSettled(t, c, n, "rm1", "rm2", "rm3")
	if share := len(ownedIn(settled, "rm3")); share == 0 {
		t.Fatalf("rm3 joined and got no shard: %+v", settled)
	}
	// Load balancers send traffic to every server that owns shards.
	for _, s := range c.Servers {
		if code := isActive(t, s.URL); code != http.StatusOK {
			t.Fatalf("%s owns shards: /isActive %d, want 200", s.ID, code)
		}
	}

	cli := func(args ...string) (string, string, int) {
		t.Helper()
		return runCLI(t, []string{"XDG_CONFIG_HOME=" + t.TempDir()}, append([]string{"--servers", strings.Join(c.URLs(), ",")}, args...)...)
	}
	out, errOut, code := cli("admin", "shards", "-o", "json")
	var listed []map[string]json.RawMessage
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != n {
		t.Fatalf("admin shards -o json: exit %d, %d objects (stderr %q)\n%s", code, len(listed), errOut, out)
	}
	for k, obj := range listed {
		var s struct {
			Shard *int   `json:"shard"`
			Owner string `json:"owner"`
			Epoch *int64 `json:"epoch"`
		}
		b, _ := json.Marshal(obj)
		if err := json.Unmarshal(b, &s); err != nil || s.Shard == nil || s.Epoch == nil || *s.Shard != k || s.Owner != settled[k].Owner || *s.Epoch != settled[k].Epoch {
			t.Fatalf("admin shards -o json, object %d: %s; want shard %d owned by %s at epoch %d", k, b, k, settled[k].Owner, settled[k].Epoch)
		}
	}
	rows := serverRows(t, cli)
	sum := 0
	for _, id := range []string{"rm1", "rm2", "rm3"} {
		got, _ := strconv.Atoi(rows[id]["SHARDS"])
		if want := len(ownedIn(settled, id)); got != want {
			t.Fatalf("admin servers: %s has SHARDS %q, want %d", id, rows[id]["SHARDS"], want)
		}
		sum += got
	}
	if sum != n {
		t.Fatalf("admin servers: SHARDS sum to %d, want %d", sum, n)
	}

	// A few jobs (no agent runs them), so the audit has job writes to check.
	cl := newClient(t, c.URLs())
	for k := 0; k < 3; k++ {
		if _, err := cl.SubmitJob(context.Background(), tandem.JobSpec{Name: "audited", Command: []string{"true"}}, client.SubmitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Drain rm3: the command returns once it owns nothing.
	since := etcdRev(t, e)
	if out, errOut, code := cli("admin", "drain", "rm3"); code != 0 {
		t.Fatalf("admin drain rm3: exit %d\n%s%s", code, out, errOut)
	}
	st := statusOf(t, c, 2)
	if len(st.Owned) != 0 || !st.Draining {
		t.Fatalf("rm3 after admin drain: owns %v, draining %v; want nothing, draining", st.Owned, st.Draining)
	}
	if code := isActive(t, c.Servers[2].URL); code != http.StatusMethodNotAllowed {
		t.Fatalf("drained rm3 owns no shard: /isActive %d, want 405", code)
	}
	eventually(t, "admin servers shows rm3 draining and rm1 and rm2 owning every shard", 30*time.Second, func() error {
		rows := serverRows(t, cli)
		if r := rows["rm3"]; r["READY"] != "draining" || r["SHARDS"] != "0" {
			return fmt.Errorf("rm3: %v", r)
		}
		a, _ := strconv.Atoi(rows["rm1"]["SHARDS"])
		b, _ := strconv.Atoi(rows["rm2"]["SHARDS"])
		if a+b != n {
			return fmt.Errorf("rm1 %d + rm2 %d shards, want %d", a, b, n)
		}
		return nil
	})
	checkDrainGaps(t, auditShards(t, e, n), "rm3", since, len(ownedIn(settled, "rm3")))

	if out, errOut, code := cli("admin", "drain", "--undo", "rm3"); code != 0 {
		t.Fatalf("admin drain --undo rm3: exit %d\n%s%s", code, out, errOut)
	}
	waitShardsSettled(t, c, n, "rm1", "rm2", "rm3")
	eventually(t, "admin servers shows rm3 ready again", 30*time.Second, func() error {
		if r := serverRows(t, cli)["rm3"]; r["READY"] != "yes" {
			return fmt.Errorf("rm3: %v", r)
		}
		return nil
	})

	// Drain the servers in turn: the last one is refused.
	for _, id := range []string{"rm1", "rm2"} {
		if out, errOut, code := cli("admin", "drain", id); code != 0 {
			t.Fatalf("admin drain %s: exit %d\n%s%s", id, code, out, errOut)
		}
	}
	out, errOut, code = cli("admin", "drain", "rm3")
	if code != 1 || !strings.Contains(errOut, "rm3") || !strings.Contains(errOut, "no other server") {
		t.Fatalf("admin drain of the last server: exit %d, stderr %q, stdout %q; want exit 1 saying no other server could take its shards", code, errOut, out)
	}
	if st := statusOf(t, c, 2); st.Draining {
		t.Fatalf("rm3 is draining after its drain was refused: %+v", st)
	}
	waitShardsSettled(t, c, n, "rm3")
	t.Logf("refused: %s", strings.TrimSpace(errOut))
	checkServerRecords(t, c)
}

// etcdRev is etcd's current revision.
func etcdRev(t *testing.T, e *etcdtest.Etcd) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := etcdClient(t, e).Get(ctx, keys.New("default").Prefix()+"any")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// checkDrainGaps checks, from etcd's history, that every shard the drained
// server from gave up at or after revision since moved with no gap beyond a
// few transactions (history.Audit.CheckDrain says what that means), and
// that it gave up moved shards.
func checkDrainGaps(t *testing.T, a *history.Audit, from string, since int64, moved int) {
	t.Helper()
	gaps, problems := a.CheckDrain(from, since, moved)
	for _, g := range gaps {
		t.Logf("shard %d was free for %d revisions, from %s's hand-off at %d to %s's take", g.Shard, g.Revs, from, g.Ended, g.To)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// checkServerRecords checks that every record each running server of c has
// logged (text format) names that server, once. Over https, it first makes
// each one log through its HTTP server's error log too: a plain http
// request is no TLS handshake, which net/http reports there (at debug).
func checkServerRecords(t *testing.T, c *local.Cluster) {
	t.Helper()
	for i, s := range c.Servers {
		if c.PID(i) == 0 {
			continue
		}
		addr := strings.TrimPrefix(strings.TrimPrefix(s.URL, "http://"), "https://")
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(conn, "GET /healthz HTTP/1.0\r\n\r\n")
		_, _ = io.ReadAll(conn)
		conn.Close()
		eventually(t, s.ID+"'s records, its HTTP server's error log among them, each naming it", 10*time.Second, func() error {
			b, err := os.ReadFile(s.LogPath)
			if err != nil {
				return err
			}
			records, httpErrs := 0, 0
			for _, line := range strings.Split(string(b), "\n") {
				if !strings.HasPrefix(line, "time=") {
					continue // not a record of the server's handler
				}
				records++
				if strings.Count(line, " server=") != 1 || !strings.Contains(line+" ", " server="+s.ID+" ") {
					t.Fatalf("%s logged a record that does not name it exactly once (server=%s): %s", s.ID, s.ID, line)
				}
				if strings.Contains(line, `msg="http: `) {
					httpErrs++
				}
			}
			if records < 10 || httpErrs == 0 && strings.HasPrefix(s.URL, "https://") {
				return fmt.Errorf("%d records, %d from the HTTP server's error log", records, httpErrs)
			}
			return nil
		})
	}
}

// The number of shards is fixed when a cluster is first started: a server
// started with another --shards exits non-zero naming the cluster's number,
// and one started without --shards adopts it.
func TestShardsCountIsFixedForTheCluster(t *testing.T) {
	e := startEtcd(t)
	c := startLocal(t, local.Config{Binary: binary, Servers: 4, Initial: 1,
		BasePort: freeBasePort(t, 4), DataDir: t.TempDir(), EtcdEndpoints: e.Endpoint, LogLevel: "debug",
		ServerArgs: map[string][]string{"rm1": {"--shards", "16"}, "rm2": {"--shards", "8"}, "rm3": {"--shards", "1"}}})
	waitShardsSettled(t, c, 16, "rm1")
	for _, i := range []int{1, 2} {
		id := c.Servers[i].ID
		if err := c.StartServer(i); err != nil {
			t.Fatal(err)
		}
		exited, how := c.Exited(i)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s, started with another --shards against a cluster of 16, is still running", id)
		}
		var ee *exec.ExitError
		if err := how(); !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("%s ended with %v, want a non-zero exit", id, err)
		}
		log, _ := os.ReadFile(c.Servers[i].LogPath)
		if !strings.Contains(string(log), "--shards 16") || !strings.Contains(string(log), "16 shards") {
			t.Fatalf("%s's refusal does not name the cluster's 16 shards:\n%s", id, tail(string(log), 10))
		}
	}
	// Without --shards, a server takes the cluster's.
	if err := c.StartServer(3); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, c, 3); st.Shards != 16 {
		t.Fatalf("rm4 started without --shards: %d shards, want the cluster's 16", st.Shards)
	}
	waitShardsSettled(t, c, 16, "rm1", "rm4")
}

// `tandem dev --shards 4` runs an active-active cluster: it says so, points
// at `admin shards`, every shard is owned, a job submitted through the CLI
// succeeds, and Ctrl-C (SIGINT) stops every process.
func TestShardsDev(t *testing.T) {
	base := freeBasePort(t, 3)
	// --insecure: the plain http dev cluster of before security (tandem
	// dev's secured default is TestDevStartsAndStopsEverything's).
	cmd := exec.Command(binary, "dev", "--insecure", "--shards", "4", "--base-port", fmt.Sprint(base))
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(out.String(), "Ctrl-C stops everything") {
		if time.Now().After(deadline) {
			t.Fatalf("tandem dev --shards 4 did not come up:\n%s", out.String())
		}
		select {
		case err := <-done:
			t.Fatalf("tandem dev --shards 4 exited early (%v):\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	printed := out.String()
	for _, want := range []string{"active-active, 4 shards", "insecure: plain http", "admin shards", "of 4 shards"} {
		if !strings.Contains(printed, want) {
			t.Fatalf("tandem dev --shards 4 does not print %q:\n%s", want, printed)
		}
	}
	pids := processPIDs(t, printed)
	if len(pids) != 5 {
		t.Fatalf("dev printed %d PIDs, want 3 servers and 2 agents:\n%s", len(pids), printed)
	}
	var urls []string
	for i := 0; i < 3; i++ {
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", base+i))
	}
	env := []string{"TANDEM_SERVERS=" + strings.Join(urls, ","), "XDG_CONFIG_HOME=" + t.TempDir()}
	sh, errOut, code := runCLI(t, env, "admin", "shards", "-o", "json")
	var shards []tandem.ShardInfo
	if code != 0 || json.Unmarshal([]byte(sh), &shards) != nil || len(shards) != 4 {
		t.Fatalf("admin shards -o json on the dev cluster: exit %d %s\n%s", code, errOut, sh)
	}
	for _, s := range shards {
		if s.Owner == "" || s.Epoch == 0 {
			t.Fatalf("dev cluster's shard %d has no owner: %+v", s.Shard, shards)
		}
	}
	sub, errOut, code := runCLI(t, env, "job", "submit", "--name", "dev", "--", "echo", "hello")
	id := strings.TrimSpace(sub)
	if code != 0 || id == "" {
		t.Fatalf("job submit on the dev cluster: exit %d %q %s", code, sub, errOut)
	}
	if _, errOut, code := runCLI(t, env, "job", "wait", id); code != 0 {
		t.Fatalf("job wait %s: exit %d %s", id, code, errOut)
	}
	if logs, errOut, code := runCLI(t, env, "job", "logs", id); code != 0 || logs != "hello\n" {
		t.Fatalf("job logs %s: exit %d %q %s", id, code, logs, errOut)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tandem dev exited with %v after Ctrl-C:\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("tandem dev did not stop within 30s of Ctrl-C:\n%s", out.String())
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Fatalf("process %d outlived tandem dev", pid)
		}
	}
}

// eventually polls cond until it returns nil, failing the test with cond's
// last answer once within has passed.
func eventually(t *testing.T, what string, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serverIDs returns the IDs of every server of c.
func serverIDs(c *local.Cluster) []string {
	var ids []string
	for _, s := range c.Servers {
		ids = append(ids, s.ID)
	}
	return ids
}

// serverIndex returns the index of the server with the given ID, or -1.
func serverIndex(c *local.Cluster, id string) int {
	return slices.IndexFunc(c.Servers, func(s *local.Proc) bool { return s.ID == id })
}

// othersThan returns the indexes of every server but i.
func othersThan(c *local.Cluster, i int) []int {
	var out []int
	for k := range c.Servers {
		if k != i {
			out = append(out, k)
		}
	}
	return out
}

// ownedIn returns the shards owned by id in a listing.
func ownedIn(shards []tandem.ShardInfo, id string) []int {
	var out []int
	for _, si := range shards {
		if si.Owner == id {
			out = append(out, si.Shard)
		}
	}
	return out
}

// statusOf asks server i for its own state.
func statusOf(t *testing.T, c *local.Cluster, i int) tandem.ServerStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Status(ctx, i)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// shardsOf asks server i for every shard's ownership as its view has it.
func shardsOf(c *local.Cluster, i int) ([]tandem.ShardInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Shards(ctx, i)
}

// waitShardsSettled waits until the servers ids (and only they) own the n
// shards, each exactly the shards the target map of ids gives it, with every
// one of them seeing every shard owned by its target and no hand-off under
// way; it returns the shards as the last of them sees them, indexed by shard.
func waitShardsSettled(t *testing.T, c *local.Cluster, n int, ids ...string) []tandem.ShardInfo {
	t.Helper()
	want := shard.Targets(n, ids)
	var view []tandem.ShardInfo
	eventually(t, fmt.Sprintf("the %d shards settled on %v", n, ids), 60*time.Second, func() error {
		for _, id := range ids {
			i := serverIndex(c, id)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := c.Status(ctx, i)
			cancel()
			if err != nil {
				return err
			}
			shards, err := shardsOf(c, i)
			if err != nil {
				return err
			}
			var mine []int
			for k, to := range want {
				if to == id {
					mine = append(mine, k)
				}
			}
			if st.Shards != n || !slices.Equal(st.Owned, mine) {
				return fmt.Errorf("%s owns %v of %d shards, want %v of %d", id, st.Owned, st.Shards, mine, n)
			}
			if len(shards) != n {
				return fmt.Errorf("%s lists %d shards, want %d", id, len(shards), n)
			}
			for k, si := range shards {
				if si.Shard != k || si.Owner != want[k] || si.Epoch == 0 || si.HandoffTo != "" {
					return fmt.Errorf("%s sees shard %d owned by %q at epoch %d (hand-off to %q), want %s", id, si.Shard, si.Owner, si.Epoch, si.HandoffTo, want[k])
				}
			}
			view = shards
		}
		return nil
	})
	return view
}

// auditShards reads the cluster's etcd history up to now and fails the test
// on any job write not made under its shard owner's epoch then, and on any
// shard with two tenures at once.
func auditShards(t *testing.T, e *etcdtest.Etcd, n int) *history.Audit {
	t.Helper()
	cli := etcdClient(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	now, err := cli.Get(ctx, keys.New("default").Prefix()+"any") // within the cluster's prefix, which is all a locked-down etcd lets it read
	if err != nil {
		t.Fatal(err)
	}
	a, err := history.AuditEtcd(ctx, cli, keys.New("default"), n, now.Header.Revision)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range a.Problems {
		t.Error(p)
	}
	if a.JobWrites == 0 {
		t.Fatal("the audit saw no job writes: it checked nothing")
	}
	last := map[int]history.Tenure{}
	for _, tn := range a.Tenures {
		if p, ok := last[tn.Shard]; ok && (p.Ended == 0 || p.Ended > tn.Epoch) {
			t.Errorf("shard %d owned twice: %s from epoch %d (ended at %d) and %s from epoch %d", tn.Shard, p.Owner, p.Epoch, p.Ended, tn.Owner, tn.Epoch)
		}
		last[tn.Shard] = tn
	}
	return a
}

// serverRows runs `tandem admin servers` and returns its rows by server ID,
// each a map from column header to value.
func serverRows(t *testing.T, cli func(...string) (string, string, int)) map[string]map[string]string {
	t.Helper()
	out, errOut, code := cli("admin", "servers")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) < 2 {
		t.Fatalf("admin servers: exit %d %s\n%s", code, errOut, out)
	}
	head := strings.Fields(lines[0])
	if !slices.Contains(head, "SHARDS") || !slices.Contains(head, "READY") {
		t.Fatalf("admin servers has no SHARDS and READY columns:\n%s", out)
	}
	rows := map[string]map[string]string{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		row := map[string]string{}
		for k, h := range head {
			if k < len(f) {
				row[h] = f[k]
			}
		}
		rows[row["ID"]] = row
	}
	return rows
}

// trickle submits a job every 100 ms through one failover client until
// halted, keeping what was acknowledged and every error.
type trickle struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once

	mu   sync.Mutex
	jobs []*tandem.Job
	errs []error
}

func startTrickle(t *testing.T, cl *client.Client, name string, command []string) *trickle {
	tr := &trickle{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			j, err := cl.SubmitJob(ctx, tandem.JobSpec{Name: fmt.Sprintf("%s-%d", name, i), Command: command}, client.SubmitOptions{})
			cancel()
			if err != nil {
				tr.mu.Lock()
				tr.errs = append(tr.errs, err)
				tr.mu.Unlock()
				continue
			}
			tr.add(j)
		}
	}()
	t.Cleanup(func() { tr.halt() })
	return tr
}

func (tr *trickle) add(j *tandem.Job) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.jobs = append(tr.jobs, j)
}

func (tr *trickle) acked() []*tandem.Job {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.jobs)
}

// halt stops the trickle, waits for its submission in flight, and returns
// the jobs acknowledged and the submissions that failed.
func (tr *trickle) halt() ([]*tandem.Job, []error) {
	tr.once.Do(func() { close(tr.stop) })
	<-tr.done
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.jobs), slices.Clone(tr.errs)
}

// waitAcked waits until the trickle has at least k jobs acknowledged.
func waitAcked(t *testing.T, tr *trickle, k int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d submissions acknowledged", k), 60*time.Second, func() error {
		if got := len(tr.acked()); got < k {
			tr.mu.Lock()
			defer tr.mu.Unlock()
			return fmt.Errorf("%d acknowledged, errors %v", got, tr.errs)
		}
		return nil
	})
}

// isActive returns the status of url's /isActive (200 while it owns shards).
func isActive(t *testing.T, url string) int {
	t.Helper()
	resp, err := httpClient(t).Get(url + "/isActive")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// rawAnswer is one HTTP answer, not followed if it redirects.
type rawAnswer struct {
	status int
	body   string
	err    error
}

// postJob submits a job to one server with hc (httpClient's) and token
// (securedToken's), following no redirect.
func postJob(hc *http.Client, token, url, name string) rawAnswer {
	body := fmt.Sprintf(`{"name":%q,"command":["true"]}`, name)
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/jobs", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", client.NewIdempotencyKey())
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	nc := *hc
	nc.Timeout = 60 * time.Second
	nc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := nc.Do(req)
	if err != nil {
		return rawAnswer{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return rawAnswer{status: resp.StatusCode, body: string(b)}
}

// errorCode returns the code of tandem's JSON error envelope in body.
func errorCode(body string) string {
	var e tandem.ErrorBody
	if json.Unmarshal([]byte(body), &e) != nil || e.Error == nil {
		return ""
	}
	return e.Error.Code
}

// waitStopped waits until every thread of pid is stopped (state T): a
// SIGSTOP is delivered asynchronously, thread by thread.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	eventually(t, fmt.Sprintf("every thread of pid %d stopped", pid), 10*time.Second, func() error {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
			if err != nil {
				continue // the thread exited
			}
			st := string(b)
			if i := strings.LastIndexByte(st, ')'); i < 0 || i+2 >= len(st) || (st[i+2] != 'T' && st[i+2] != 't') {
				return fmt.Errorf("thread %s is not stopped", task.Name())
			}
		}
		return nil
	})
}
