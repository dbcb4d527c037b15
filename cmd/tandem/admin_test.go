package main

import (
	"encoding/json"
	"net"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
)

// deadURL returns the URL of a port nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

func TestGetServiceState(t *testing.T) {
	f := newFakeCluster(t)
	tests := []struct {
		name     string
		args     []string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"active", []string{"rm1"}, "active\n", "", 0},
		{"standby", []string{"rm2"}, "standby\n", "", 0},
		{"by URL", []string{f.rm2.URL + "/"}, "standby\n", "", 0},
		{"unknown ID", []string{"rm9"}, "", `unknown server "rm9": the live servers are rm1, rm2`, 1},
		{"dead URL", []string{"http://127.0.0.1:1"}, "", "http://127.0.0.1:1: connection refused", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"--servers", f.servers(), "admin", "get-service-state"}, tt.args...)...)
			if out != tt.wantOut || code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("got %q, %q, exit %d, want %q, %q, exit %d", out, errOut, code, tt.wantOut, tt.wantErr, tt.wantCode)
			}
		})
	}
	out, _, _ := runCLI(t, "--servers", f.servers(), "admin", "get-service-state", "-o", "json", "rm1")
	var st tandem.ServerStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.ID != "rm1" || st.State != tandem.StateActive {
		t.Errorf("got %q, want rm1's status as JSON", out)
	}
}

func TestGetAllServiceState(t *testing.T) {
	f := newFakeCluster(t)
	dead := deadURL(t)
	out, errOut, code := runCLI(t, "--servers", f.servers()+","+dead, "admin", "get-all-service-state")
	if code != 0 {
		t.Fatalf("got exit %d (%s), want 0", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := [][]string{{"rm1", f.rm1.URL, "active"}, {"rm2", f.rm2.URL, "standby"}, {dead, "unreachable"}}
	if len(lines) != len(want) {
		t.Fatalf("got %q, want %d lines", out, len(want))
	}
	for i, w := range want {
		if got := strings.Fields(lines[i]); !slices.Equal(got, w) {
			t.Errorf("line %d: got %q, want %q", i, got, w)
		}
	}

	out, _, _ = runCLI(t, "--servers", f.servers()+","+dead, "admin", "get-all-service-state", "-o", "json")
	var states []serviceState
	if err := json.Unmarshal([]byte(out), &states); err != nil || len(states) != 3 {
		t.Fatalf("got %q, want 3 states as JSON: %v", out, err)
	}
	if s := states[2]; s.URL != dead || s.State != stateUnreachable || s.Registered || s.Error == "" {
		t.Errorf("got %+v, want the dead URL unreachable, unregistered, with its error", s)
	}

	out, errOut, code = runCLI(t, "--servers", dead, "admin", "get-all-service-state")
	if code != 1 || out != dead+"  unreachable\n" || !strings.Contains(errOut, "no server answered") {
		t.Errorf("got %q, %q, exit %d, want the dead URL unreachable and exit 1", out, errOut, code)
	}
}

func TestTransition(t *testing.T) {
	f := newFakeCluster(t)
	out, errOut, code := runCLI(t, "--servers", f.servers(), "admin", "transition-to-standby", "rm1")
	if code != 1 || out != "" || !strings.Contains(errOut, "automatic failover is enabled") || !strings.Contains(errOut, "--forcemanual") {
		t.Errorf("got %q, %q, exit %d, want the server's refusal and exit 1", out, errOut, code)
	}
	out, errOut, code = runCLI(t, "--servers", f.servers(), "admin", "transition-to-standby", "--forcemanual", "rm1")
	if code != 0 || out != "standby\n" {
		t.Errorf("got %q, %q, exit %d, want standby", out, errOut, code)
	}
	out, errOut, code = runCLI(t, "--servers", f.servers(), "admin", "transition-to-active", "--forcemanual", "rm2")
	if code != 0 || out != "active\n" {
		t.Errorf("got %q, %q, exit %d, want active", out, errOut, code)
	}
}

func TestFailover(t *testing.T) {
	f := newFakeCluster(t)
	out, errOut, code := runCLI(t, "--servers", f.servers(), "admin", "failover", "rm1", "rm2")
	if re := regexp.MustCompile(`^failover rm1 -> rm2 done in \d+ms: rm2 is active \(epoch 8\)\n$`); code != 0 || !re.MatchString(out) {
		t.Errorf("got %q, %q, exit %d, want it to match %s", out, errOut, code, re)
	}
	// rm1 is no longer the active: it refuses, and the CLI says so. A URL
	// works as well as an ID.
	out, errOut, code = runCLI(t, "--servers", f.servers(), "admin", "failover", f.rm1.URL, "rm2")
	if code != 1 || out != "" || !strings.Contains(errOut, "failover rm1 -> rm2: rm1 is not the active") {
		t.Errorf("got %q, %q, exit %d, want the conflict and exit 1", out, errOut, code)
	}
	_, errOut, code = runCLI(t, "--servers", f.servers(), "admin", "failover", "rm2", "rm7")
	if code != 1 || !strings.Contains(errOut, `unknown server "rm7": the live servers are rm1, rm2`) {
		t.Errorf("got %q, exit %d, want the unknown server named", errOut, code)
	}
}

func TestCheckHealth(t *testing.T) {
	f := newFakeCluster(t)
	f.mu.Lock()
	f.healthy["rm2"] = false
	f.mu.Unlock()
	tests := []struct {
		arg      string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"rm1", "rm1 healthy\n", "", 0},
		{"rm2", "", "rm2 is not healthy", 1},
		{"rm3", "", `unknown server "rm3"`, 1},
		{"http://127.0.0.1:1", "", "http://127.0.0.1:1 is not healthy: http://127.0.0.1:1: connection refused", 1},
	}
	for _, tt := range tests {
		t.Run(tt.arg, func(t *testing.T) {
			out, errOut, code := runCLI(t, "--servers", f.servers(), "admin", "check-health", tt.arg)
			if out != tt.wantOut || code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("got %q, %q, exit %d, want %q, %q, exit %d", out, errOut, code, tt.wantOut, tt.wantErr, tt.wantCode)
			}
		})
	}
}

func TestServersAndHistory(t *testing.T) {
	f := newFakeCluster(t)
	out, _, code := runCLI(t, "--servers", f.servers(), "admin", "servers")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("got %q, exit %d, want a header and 2 servers", out, code)
	}
	if got := strings.Fields(lines[0]); !slices.Equal(got, []string{"ID", "URL", "STATE", "SHARDS", "READY", "PID", "VERSION", "STARTED"}) {
		t.Errorf("got header %q", got)
	}
	if got := strings.Fields(lines[1]); len(got) != 9 || got[0] != "rm1" || got[2] != "active" || got[3] != "1" || got[4] != "yes" || got[5] != "100" || got[6] != "v-test" {
		t.Errorf("got row %q, want rm1 URL active 1 yes 100 v-test DATE TIME", got)
	}
	if got := strings.Fields(lines[2]); len(got) != 9 || got[0] != "rm2" || got[3] != "0" || got[4] != "settling" {
		t.Errorf("got row %q, want rm2 URL STATE 0 settling ...", got)
	}
	out, _, _ = runCLI(t, "--servers", f.servers(), "admin", "servers", "-o", "json")
	var servers []tandem.ServerInfo
	if err := json.Unmarshal([]byte(out), &servers); err != nil || len(servers) != 2 {
		t.Errorf("got %q, want 2 servers as JSON", out)
	}

	out, _, code = runCLI(t, "--servers", f.servers(), "admin", "history")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("got %q, exit %d, want a header and 2 events", out, code)
	}
	if got := strings.Fields(lines[0]); !slices.Equal(got, []string{"EPOCH", "TIME", "ACTIVE", "PREVIOUS", "CAUSE", "DETECTION", "ELECTION", "TRANSITION"}) {
		t.Errorf("got header %q", got)
	}
	if got := strings.Fields(lines[1]); !slices.Equal(got[len(got)-6:], []string{"rm1", "-", "initial", "-", "-", "-"}) {
		t.Errorf("got row %q, want rm1 - initial - - -", got)
	}
	if got := strings.Fields(lines[2]); !slices.Equal(got[len(got)-6:], []string{"rm1", "rm2", "lease-expired", "12.3ms", "12.3ms", "12.3ms"}) {
		t.Errorf("got row %q, want rm1 rm2 lease-expired 12.3ms 12.3ms 12.3ms", got)
	}
	out, _, _ = runCLI(t, "--servers", f.servers(), "admin", "history", "-o", "json")
	var events []tandem.FailoverEvent
	if err := json.Unmarshal([]byte(out), &events); err != nil || len(events) != 2 {
		t.Errorf("got %q, want 2 events as JSON", out)
	}
}

// Behind a load balancer the CLI's only URL is the balancer's, which
// answers as whichever server it forwards to: the list shows the cluster's
// servers, not the balancer as one more (found when tried behind HAProxy).
func TestGetAllServiceStateThroughBalancer(t *testing.T) {
	f := newFakeCluster(t)
	target, _ := url.Parse(f.rm1.URL)
	lb := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
	t.Cleanup(lb.Close)
	out, errOut, code := runCLI(t, "--servers", lb.URL, "admin", "get-all-service-state")
	if code != 0 {
		t.Fatalf("got exit %d (%s), want 0", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := [][]string{{"rm1", f.rm1.URL, "active"}, {"rm2", f.rm2.URL, "standby"}}
	if len(lines) != len(want) {
		t.Fatalf("got %q, want the two servers only", out)
	}
	for i, w := range want {
		if got := strings.Fields(lines[i]); !slices.Equal(got, w) {
			t.Errorf("line %d: got %q, want %q", i, got, w)
		}
	}
}
