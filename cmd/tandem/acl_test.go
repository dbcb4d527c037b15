package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tandemhq/tandem/internal/acl"
)

func TestACLBadInput(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"acl", "token", "create", "--policy", "read"}, "--name is required"},
		{[]string{"acl", "token", "create", "--name", "ci"}, "--policy is required"},
		{[]string{"acl", "token", "create", "--name", "ci", "--policy", "root"}, `unknown policy "root"`},
		{[]string{"acl", "token", "create", "--name", "a/b", "--policy", "read"}, "invalid token name"},
		{[]string{"acl", "token", "create", "--name", "ci", "--policy", "read", "--ttl", "soon"}, "invalid argument"},
		{[]string{"acl", "token", "create", "--name", "ci", "--policy", "read", "--ttl", "-1h"}, "must not be negative"},
		{[]string{"acl", "token", "create", "--name", "ci", "--policy", "read", "--ttl", "1ms"}, "must be from"},
		{[]string{"acl", "token", "delete", "not-an-accessor"}, "is not a token accessor"},
		{[]string{"acl", "token", "delete"}, "accepts 1 arg"},
		{[]string{"--token", "", "acl", "token", "self"}, "--token is empty"},
	} {
		_, errOut, code := runCLI(t, append([]string{"--servers", "http://127.0.0.1:1"}, tt.args...)...)
		if code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("tandem %s: got exit %d, %q; want 2 and %q", strings.Join(tt.args, " "), code, errOut, tt.want)
		}
	}
}

// fakeACLServer answers the token routes, recording the Authorization of
// each request.
type fakeACLServer struct {
	mu   sync.Mutex
	auth []string
	body []string
}

func (f *fakeACLServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	f.body = append(f.body, string(b))
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	tok := acl.Token{Accessor: strings.Repeat("a", 32), Name: "ci", Policy: acl.PolicySubmit}
	switch r.URL.Path {
	case "/v1/acl/token/self":
		if r.Header.Get("Authorization") == "" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"code":"unauthenticated","message":"server rm1 requires a token"}}`))
			return
		}
		_ = json.NewEncoder(w).Encode(tok)
	case "/v1/acl/tokens":
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(acl.NewToken{Token: tok, Secret: "tdm_fresh"})
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (f *fakeACLServer) last() (string, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auth[len(f.auth)-1], f.body[len(f.body)-1]
}

// The CLI sends the token from --token, $TANDEM_TOKEN or the config file's
// cluster, in that order; the config file's token goes only with that
// cluster's servers.
func TestACLTokenSources(t *testing.T) {
	f := &fakeACLServer{}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfg, []byte("current-cluster: p\nclusters:\n  p:\n    servers: ["+srv.URL+"]\n    token: tdm_from_file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envToken, "")
	t.Setenv(envServers, "")
	t.Setenv(envCluster, "")
	for _, tt := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"config file", "", []string{"--config", cfg}, "Bearer tdm_from_file"},
		{"env beats file", "tdm_from_env", []string{"--config", cfg}, "Bearer tdm_from_env"},
		{"flag beats env", "tdm_from_env", []string{"--config", cfg, "--token", "tdm_from_flag"}, "Bearer tdm_from_flag"},
		{"no file token for other servers", "", []string{"--config", cfg, "--servers", srv.URL}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envToken, tt.env)
			out, errOut, code := runCLI(t, append(tt.args, "acl", "token", "self")...)
			got, _ := f.last()
			if got != tt.want {
				t.Fatalf("got Authorization %q, want %q (exit %d, %s)", got, tt.want, code, errOut)
			}
			if tt.want != "" && (code != 0 || !strings.Contains(out, "ci")) {
				t.Fatalf("got exit %d, %q, %q; want the token", code, out, errOut)
			}
			if tt.want == "" && (code != 1 || !strings.Contains(errOut, "requires a token")) {
				t.Fatalf("got exit %d, %q; want exit 1 and the server's 401", code, errOut)
			}
		})
	}
	out, errOut, code := runCLI(t, "--servers", srv.URL, "--token", "tdm_m", "acl", "token", "create", "--name", "ci", "--policy", "submit", "--ttl", "24h")
	_, body := f.last()
	if code != 0 || !strings.Contains(out, "tdm_fresh") || body != `{"name":"ci","policy":"submit","ttl":"24h0m0s"}` {
		t.Fatalf("token create: exit %d, %q, %q, sent %s", code, out, errOut, body)
	}
}
