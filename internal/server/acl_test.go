package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/api"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/server"
)

// auditBuf collects one server's audit log.
type auditBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (a *auditBuf) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.b.Write(p)
}

func (a *auditBuf) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.b.String()
}

// entries returns the audit log's lines.
func (a *auditBuf) entries(t *testing.T) []acl.AuditEntry {
	t.Helper()
	var out []acl.AuditEntry
	for _, line := range strings.Split(strings.TrimSpace(a.String()), "\n") {
		if line == "" {
			continue
		}
		var e acl.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// denied reports whether the log has a denial of method path for the token
// named name whose reason contains why.
func (a *auditBuf) denied(t *testing.T, method, path, name, why string) bool {
	t.Helper()
	for _, e := range a.entries(t) {
		if e.Decision == acl.Deny && e.Method == method && e.Path == path && e.Identity.TokenName == name && strings.Contains(e.Reason, why) {
			return true
		}
	}
	return false
}

// startSecured starts a server with ACLs on, listening on host (127.0.0.1,
// 127.0.0.2: different host names, not only different ports), writing its
// audit log to audit.
func (c *cluster) startSecured(id, host string, audit *auditBuf) *node {
	c.t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		if os.Getenv("CI") != "" {
			c.t.Fatalf("cannot listen on %s: %v (CI is set, so this is a failure)", host, err)
		}
		c.t.Skipf("cannot listen on %s: %v", host, err)
	}
	ts := httptest.NewUnstartedServer(nil)
	ts.Listener.Close()
	ts.Listener = ln
	n := &node{cli: c.etcd.Client(c.t), http: ts, url: "http://" + ln.Addr().String()}
	cfg := server.DefaultConfig()
	cfg.ID, cfg.Cluster, cfg.URL, cfg.Etcd, cfg.LeaseTTL, cfg.Logger = id, "test", n.url, n.cli, testTTL, testLogger()
	cfg.ProbeInterval = probeInterval
	if c.mod != nil {
		c.mod(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		c.t.Fatalf("new server %s: %v", id, err)
	}
	n.srv = srv
	ts.Config.Handler = api.New(srv, cfg.Logger, api.WithSecurity(api.Security{ACL: srv, Enforce: true, Audit: acl.NewAuditLog(audit)}))
	ts.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		c.t.Fatalf("start server %s: %v", id, err)
	}
	c.t.Cleanup(func() {
		_ = srv.Close()
		ts.Close()
	})
	return n
}

func tokenClient(t *testing.T, token string, urls ...string) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Servers: urls, Token: token, Backoff: client.Backoff{Base: 20 * time.Millisecond, Max: 100 * time.Millisecond, Attempts: 20}})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func wantCode(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	if tandem.ErrorCode(err) != code || !strings.Contains(tandem.ErrorMessage(err), msg) {
		t.Fatalf("%s: got %v (%s), want %s %q", what, err, tandem.ErrorCode(err), code, msg)
	}
}

// Tokens end to end on two real servers on different host names: bootstrap
// once, tokens stored hashed, 401 for missing, revoked and expired tokens,
// 403 naming the missing capability for a read token submitting, killing
// and failing over, directly and through the standby, each denial in the
// audit log of the server that refused it, and an allowed write through the
// standby's redirect reaching the active with the caller's identity.
func TestACLEndToEnd(t *testing.T) {
	c := &cluster{t: t, etcd: etcdtest.Start(t)}
	audits := []*auditBuf{{}, {}}
	c.nodes = append(c.nodes, c.startSecured("rm1", "127.0.0.1", audits[0]), c.startSecured("rm2", "127.0.0.2", audits[1]))
	ai := c.waitActive()
	si := 1 - ai
	active, standby := c.nodes[ai], c.nodes[si]
	activeID, standbyID := []string{"rm1", "rm2"}[ai], []string{"rm1", "rm2"}[si]
	waitFor(t, "the standby to know the active", 10*time.Second, func() bool { return standby.srv.Status().ActiveID == activeID })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The standby first: every call below goes through it (and its 307).
	both := []string{standby.url, active.url}

	// Bootstrap through the standby; a second one is refused.
	boot, err := tokenClient(t, "", both...).Bootstrap(ctx)
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	if boot.Policy != acl.PolicyManagement || boot.Secret == "" {
		t.Fatalf("bootstrap: got %+v, want a management token with its secret", boot.Token)
	}
	_, err = tokenClient(t, "", both...).Bootstrap(ctx)
	wantCode(t, "second bootstrap", err, tandem.ECONFLICT, "already been done")

	mgmt := tokenClient(t, boot.Secret, both...)
	mk := func(name string, p acl.Policy, ttl string) *client.NewToken {
		t.Helper()
		nt, err := mgmt.CreateToken(ctx, client.TokenRequest{Name: name, Policy: p, TTL: ttl})
		if err != nil {
			t.Fatalf("create token %s: %v", name, err)
		}
		return nt
	}
	alice, ci, brief := mk("alice", acl.PolicyRead, ""), mk("ci", acl.PolicySubmit, ""), mk("brief", acl.PolicyRead, "2s")
	secrets := []string{boot.Secret, alice.Secret, ci.Secret, brief.Secret}

	// Stored hashed: etcd has the hash of each secret and no secret.
	kvs, err := c.etcd.Client(t).Get(ctx, "/tandem/test/acl/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs.Kvs {
		for _, s := range secrets {
			if strings.Contains(string(kv.Key)+string(kv.Value), s) {
				t.Fatalf("etcd holds a secret in %s", kv.Key)
			}
		}
	}
	for _, s := range secrets {
		if r, err := c.etcd.Client(t).Get(ctx, "/tandem/test/acl/tokens/"+acl.Hash(s)); err != nil || len(r.Kvs) != 1 {
			t.Fatalf("no token record under the SHA-256 of a secret: %v", err)
		}
	}

	// An allowed submission through the standby: the token survives the
	// redirect from 127.0.0.2 to 127.0.0.1 (or back), and the active audits
	// the caller's identity.
	job, err := tokenClient(t, ci.Secret, both...).SubmitJob(ctx, tandem.JobSpec{Command: []string{"true"}}, client.SubmitOptions{})
	if err != nil {
		t.Fatalf("submit with a submit token through the standby: %v", err)
	}
	found := false
	for _, e := range audits[ai].entries(t) {
		found = found || e.Decision == acl.Allow && e.Method == "POST" && e.Route == "/v1/jobs" && e.Target == job.ID &&
			e.Identity.TokenName == "ci" && e.Identity.TokenAccessor == ci.Accessor && e.Status == 201 && e.Server == activeID && e.HAState == "active" && e.Epoch > 0
	}
	if !found {
		t.Fatalf("the active's audit log has no allowed submission of %s by ci: %s", job.ID, audits[ai].String())
	}
	redirected := false
	for _, e := range audits[si].entries(t) {
		redirected = redirected || e.Decision == acl.Allow && e.Path == "/v1/jobs" && e.Status == 307 && e.Identity.TokenName == "ci" && e.HAState == "standby"
	}
	if !redirected {
		t.Fatalf("the standby's audit log has no redirected submission by ci: %s", audits[si].String())
	}

	// A read token: reads work, writes are refused with the capability
	// named, by the standby itself and by the active.
	for _, tt := range []struct {
		name string
		i    int
		url  string
	}{{"through the standby", si, standby.url}, {"directly", ai, active.url}} {
		cl := tokenClient(t, alice.Secret, tt.url)
		if tt.i == ai {
			if _, err := cl.GetJob(ctx, job.ID); err != nil {
				t.Fatalf("read with a read token: %v", err)
			}
		}
		_, err := cl.SubmitJob(ctx, tandem.JobSpec{Command: []string{"true"}}, client.SubmitOptions{})
		wantCode(t, "read token submitting "+tt.name, err, tandem.EFORBIDDEN, "token alice (read) lacks submit")
		_, err = cl.KillJob(ctx, job.ID)
		wantCode(t, "read token killing "+tt.name, err, tandem.EFORBIDDEN, "token alice (read) lacks submit")
		_, err = cl.Failover(ctx, tt.url, tandem.HandoffRequest{From: activeID, To: standbyID})
		wantCode(t, "read token failing over "+tt.name, err, tandem.EFORBIDDEN, "token alice (read) lacks operator")
		a := audits[tt.i]
		for _, d := range []struct{ path, why string }{
			{"/v1/jobs", "lacks submit"}, {"/v1/jobs/" + job.ID + "/kill", "lacks submit"}, {"/v1/ha/failover", "lacks operator"},
		} {
			if !a.denied(t, "POST", d.path, "alice", d.why) {
				t.Errorf("%s: the audit log of %s has no denial of POST %s for alice: %s", tt.name, c.nodes[tt.i].srv.ID(), d.path, a.String())
			}
		}
	}
	if st, _ := tokenClient(t, "", active.url).ServerStatus(ctx, active.url); st != nil {
		t.Fatal("server status without a token was answered")
	}
	if got, err := tokenClient(t, alice.Secret, active.url).GetJob(ctx, job.ID); err != nil || got.State == tandem.JobKilled || got.KillRequested {
		t.Fatalf("after the read token's refused kill: got %+v, %v; want the job alive", got, err)
	}

	// Missing token: 401 on every server, and audited.
	for i, n := range c.nodes {
		_, err := tokenClient(t, "", n.url).ListJobs(ctx, client.ListOptions{})
		wantCode(t, "no token", err, tandem.EUNAUTHENTICATED, "requires a token")
		if !audits[i].denied(t, "GET", "/v1/jobs", "", "requires a token") {
			t.Errorf("no audit line for the missing token on %s", n.srv.ID())
		}
	}

	// Self, then revoked: every server refuses a deleted token at once.
	self, err := tokenClient(t, alice.Secret, standby.url).TokenSelf(ctx)
	if err != nil || self.Name != "alice" || self.Accessor != alice.Accessor {
		t.Fatalf("token self: got %+v, %v", self, err)
	}
	if _, err := mgmt.DeleteToken(ctx, alice.Accessor); err != nil {
		t.Fatalf("delete alice: %v", err)
	}
	for i, n := range c.nodes {
		_, err := tokenClient(t, alice.Secret, n.url).TokenSelf(ctx)
		wantCode(t, "revoked token on "+n.srv.ID(), err, tandem.EUNAUTHENTICATED, "unknown or revoked")
		if !audits[i].denied(t, "GET", "/v1/acl/token/self", "", "unknown or revoked") {
			t.Errorf("no audit line for the revoked token on %s", n.srv.ID())
		}
	}
	_, err = mgmt.DeleteToken(ctx, alice.Accessor)
	wantCode(t, "delete twice", err, tandem.ENOTFOUND, "no token has accessor")

	// Expired: 401 naming the token.
	waitFor(t, "the brief token to expire", 10*time.Second, func() bool {
		_, err := tokenClient(t, brief.Secret, active.url).TokenSelf(ctx)
		return err != nil
	})
	_, err = tokenClient(t, brief.Secret, both...).GetJob(ctx, job.ID)
	wantCode(t, "expired token", err, tandem.EUNAUTHENTICATED, "token brief (read) expired at")
	if !audits[si].denied(t, "GET", "/v1/jobs/"+job.ID, "brief", "expired") {
		t.Errorf("no audit line naming the expired token: %s", audits[si].String())
	}

	list, err := mgmt.ListTokens(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("list: got %d tokens, %v; want bootstrap, ci and brief", len(list), err)
	}
	_, err = tokenClient(t, ci.Secret, both...).ListTokens(ctx)
	wantCode(t, "submit token listing tokens", err, tandem.EFORBIDDEN, "token ci (submit) lacks management")

	// No secret in any audit log.
	for i, a := range audits {
		for _, s := range secrets {
			if strings.Contains(a.String(), s) {
				t.Fatalf("the audit log of %s holds a secret", c.nodes[i].srv.ID())
			}
		}
	}
}

// Two bootstraps at once through the API: exactly one token.
func TestConcurrentBootstraps(t *testing.T) {
	c := &cluster{t: t, etcd: etcdtest.Start(t)}
	audit := &auditBuf{}
	c.nodes = append(c.nodes, c.startSecured("rm1", "127.0.0.1", audit), c.startSecured("rm2", "127.0.0.1", &auditBuf{}))
	c.waitActive()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = tokenClient(t, "", c.nodes[i].url, c.nodes[1-i].url).Bootstrap(ctx)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if !errors.Is(err, &tandem.Error{Code: tandem.ECONFLICT}) {
			t.Fatalf("bootstrap: %v, want success or a conflict", err)
		}
	}
	r, err := c.etcd.Client(t).Get(ctx, "/tandem/test/acl/tokens/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if ok != 1 || r.Count != 1 {
		t.Fatalf("%d bootstraps succeeded and etcd holds %d tokens; want 1 and 1", ok, r.Count)
	}
}

// Active-active: token writes go to the owner of shard 0, wherever they are
// sent (a server that does not own it answers 307 to it), and a read token's
// kill is refused by whichever server it reaches.
func TestACLWritesGoToShardZeroOwner(t *testing.T) {
	c := &cluster{t: t, etcd: etcdtest.Start(t), mod: sharded(4)}
	audits := []*auditBuf{{}, {}}
	c.nodes = append(c.nodes, c.startSecured("rm1", "127.0.0.1", audits[0]), c.startSecured("rm2", "127.0.0.2", audits[1]))
	want := c.waitSettled(4)
	owner := map[string]int{"rm1": 0, "rm2": 1}[want[0]]
	other := c.nodes[1-owner]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Only the server that does not own shard 0 is listed first: the
	// bootstrap and the creation reach the owner through its 307.
	boot, err := tokenClient(t, "", other.url, c.nodes[owner].url).Bootstrap(ctx)
	if err != nil {
		t.Fatalf("bootstrap through the server not owning shard 0: %v", err)
	}
	alice, err := tokenClient(t, boot.Secret, other.url, c.nodes[owner].url).CreateToken(ctx, client.TokenRequest{Name: "alice", Policy: acl.PolicyRead})
	if err != nil {
		t.Fatalf("create through the server not owning shard 0: %v", err)
	}
	for _, path := range []string{"/v1/acl/bootstrap", "/v1/acl/tokens"} {
		redirected := false
		for _, e := range audits[1-owner].entries(t) {
			redirected = redirected || e.Path == path && e.Status == 307
		}
		if !redirected {
			t.Errorf("the server not owning shard 0 did not redirect POST %s: %s", path, audits[1-owner].String())
		}
	}
	for _, n := range c.nodes {
		_, err := tokenClient(t, alice.Secret, n.url).KillJob(ctx, "0000000000000a")
		wantCode(t, "read token killing on "+n.srv.ID(), err, tandem.EFORBIDDEN, "token alice (read) lacks submit")
	}
}
