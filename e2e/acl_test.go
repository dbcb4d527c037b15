package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/local"
)

// The real binary with --acl and --audit-log: bootstrap once, a read
// token's submission and failover refused through the standby with the
// capability named, the denial in the standby's audit log file, and no
// secret in any audit log.
func TestACLServers(t *testing.T) {
	dir := t.TempDir()
	logs := []string{filepath.Join(dir, "audit-rm1.jsonl"), filepath.Join(dir, "audit-rm2.jsonl")}
	c := startLocal(t, local.Config{Binary: binary, Servers: 2, BasePort: freeBasePort(t, 2), DataDir: t.TempDir(), LogLevel: "debug",
		ExtraArgs:  []string{"--acl"},
		ServerArgs: map[string][]string{local.ServerID(0): {"--audit-log", logs[0]}, local.ServerID(1): {"--audit-log", logs[1]}}})
	ai := -1
	deadline := time.Now().Add(30 * time.Second)
	for ai < 0 && time.Now().Before(deadline) {
		for i, s := range c.Servers {
			if resp, err := http.Get(s.URL + "/isActive"); err == nil { // open under --acl
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ai = i
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ai < 0 {
		t.Fatal("no server became active within 30s")
	}
	si := 1 - ai
	env := []string{"TANDEM_SERVERS=" + c.Servers[si].URL + "," + c.Servers[ai].URL, "TANDEM_TOKEN=", "TANDEM_CONFIG=" + filepath.Join(dir, "none.yaml")}

	out, errOut, code := runCLI(t, env, "acl", "bootstrap", "-o", "json")
	var boot acl.NewToken
	if code != 0 || json.Unmarshal([]byte(out), &boot) != nil || boot.Secret == "" {
		t.Fatalf("acl bootstrap: exit %d, %q, %q", code, out, errOut)
	}
	if _, errOut, code := runCLI(t, env, "acl", "bootstrap"); code != 1 || !strings.Contains(errOut, "already been done") {
		t.Fatalf("second bootstrap: exit %d, %q; want 1 and a refusal", code, errOut)
	}
	out, errOut, code = runCLI(t, env, "--token", boot.Secret, "acl", "token", "create", "--name", "alice", "--policy", "read", "-o", "json")
	var alice acl.NewToken
	if code != 0 || json.Unmarshal([]byte(out), &alice) != nil || alice.Secret == "" {
		t.Fatalf("token create: exit %d, %q, %q", code, out, errOut)
	}
	if _, errOut, code := runCLI(t, env, "--token", boot.Secret, "acl", "token", "create", "--name", "x", "--policy", "bogus"); code != 2 || !strings.Contains(errOut, "unknown policy") {
		t.Fatalf("bad policy: exit %d, %q; want 2", code, errOut)
	}

	aliceEnv := append(append([]string(nil), env...), "TANDEM_TOKEN="+alice.Secret)
	if _, errOut, code := runCLI(t, aliceEnv, "job", "submit", "--", "true"); code != 1 || !strings.Contains(errOut, "token alice (read) lacks submit") {
		t.Fatalf("read token submitting: exit %d, %q; want 1 and the missing capability", code, errOut)
	}
	if _, errOut, code := runCLI(t, aliceEnv, "admin", "failover", local.ServerID(ai), local.ServerID(si)); code != 1 || !strings.Contains(errOut, "token alice (read) lacks operator") {
		t.Fatalf("read token failing over: exit %d, %q; want 1 and the missing capability", code, errOut)
	}
	if out, errOut, code := runCLI(t, aliceEnv, "acl", "token", "self"); code != 0 || !strings.Contains(out, "alice") {
		t.Fatalf("token self: exit %d, %q, %q", code, out, errOut)
	}
	if _, errOut, code := runCLI(t, env, "job", "list"); code != 1 || !strings.Contains(errOut, "requires a token") {
		t.Fatalf("no token: exit %d, %q; want 1 and 401's message", code, errOut)
	}

	// The standby refused the submission itself, and its audit log says so.
	b, err := os.ReadFile(logs[si])
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e acl.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		found = found || e.Decision == acl.Deny && e.Method == "POST" && e.Route == "/v1/jobs" && e.Identity.TokenName == "alice" && e.Status == 403 && e.HAState == "standby"
	}
	if !found {
		t.Fatalf("the standby's audit log has no denial of alice's submission:\n%s", b)
	}
	for _, p := range logs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), boot.Secret) || strings.Contains(string(b), alice.Secret) {
			t.Fatalf("%s holds a secret", p)
		}
	}
}
