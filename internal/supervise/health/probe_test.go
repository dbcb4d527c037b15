package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestProbeHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var status int
		if _, err := fmt.Sscanf(r.URL.Path, "/%d", &status); err != nil {
			status = http.StatusNotFound
		}
		if status == http.StatusMovedPermanently {
			w.Header().Set("Location", "/200")
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, "database is %s\nmore detail\n", r.URL.Query().Get("db"))
	}))
	t.Cleanup(srv.Close)

	tests := []struct {
		name   string
		path   string
		status int
		body   string
		is     error  // wrapped by Err; nil means the probe passes
		want   string // in Err's message
	}{
		{name: "200", path: "/200"},
		{name: "204", path: "/204"},
		{name: "299", path: "/299"},
		{name: "503", path: "/503?db=down", is: ErrStatus, want: `status 503 Service Unavailable, want 2xx: "database is down"`},
		{name: "404", path: "/404", is: ErrStatus, want: "status 404 Not Found, want 2xx"},
		{name: "redirect not followed", path: "/301", is: ErrStatus, want: "status 301 Moved Permanently, want 2xx"},
		{name: "redirect wanted", path: "/301", status: 301},
		{name: "wanted status", path: "/503", status: 503},
		{name: "not the wanted status", path: "/200", status: 204, is: ErrStatus, want: "status 200 OK, want 204"},
		{name: "body contains", path: "/200?db=up", body: "database is up"},
		{name: "body does not contain", path: "/200?db=down", body: "database is up", is: ErrBody, want: `body does not contain "database is up"`},
		{name: "body checked after status", path: "/500?db=up", body: "database is up", is: ErrStatus, want: "status 500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Check{Kind: KindHTTP, Target: srv.URL + tt.path, Status: tt.status, Body: tt.body, Timeout: 5 * time.Second}
			r := c.Probe(context.Background())
			if tt.is == nil {
				if !r.OK || r.Err != nil {
					t.Fatalf("got OK=%v Err=%v, want OK", r.OK, r.Err)
				}
				return
			}
			if r.OK {
				t.Fatalf("got OK, want a failure wrapping %v", tt.is)
			}
			if !errors.Is(r.Err, tt.is) {
				t.Errorf("got Err %v, want one wrapping %v", r.Err, tt.is)
			}
			if !strings.Contains(r.Err.Error(), tt.want) {
				t.Errorf("got Err %q, want it to contain %q", r.Err, tt.want)
			}
			if r.NotRunning {
				t.Error("got NotRunning, want it only for exec exit 7")
			}
		})
	}
}

func TestProbeHTTPConnectionRefused(t *testing.T) {
	c := Check{Kind: KindHTTP, Target: "http://" + closedPort(t) + "/", Timeout: 5 * time.Second}
	r := c.Probe(context.Background())
	if r.OK {
		t.Fatal("got OK, want connection refused")
	}
	if !errors.Is(r.Err, syscall.ECONNREFUSED) {
		t.Errorf("got Err %v, want one wrapping ECONNREFUSED", r.Err)
	}
}

func TestProbeHTTPTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first, so Close need not wait

	c := Check{Kind: KindHTTP, Target: srv.URL, Timeout: 50 * time.Millisecond}
	r := c.Probe(context.Background())
	if r.OK {
		t.Fatal("got OK, want a timeout")
	}
	if !errors.Is(r.Err, ErrTimeout) {
		t.Errorf("got Err %v, want one wrapping ErrTimeout", r.Err)
	}
	if want := "timed out after 50ms"; !strings.Contains(r.Err.Error(), want) {
		t.Errorf("got Err %q, want it to contain %q", r.Err, want)
	}
	if r.Took < c.Timeout {
		t.Errorf("got Took %v, want at least the timeout %v", r.Took, c.Timeout)
	}
}

func TestProbeCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := Check{Kind: KindTCP, Target: "127.0.0.1:1"}.Probe(ctx)
	if r.OK || !errors.Is(r.Err, context.Canceled) || errors.Is(r.Err, ErrTimeout) {
		t.Errorf("got OK=%v Err=%v, want a failure wrapping context.Canceled, not ErrTimeout", r.OK, r.Err)
	}
}

func TestProbeTCP(t *testing.T) {
	ln := listen(t)
	c := Check{Kind: KindTCP, Target: ln.Addr().String()}
	if r := c.Probe(context.Background()); !r.OK || r.Err != nil {
		t.Fatalf("listening: got OK=%v Err=%v, want OK", r.OK, r.Err)
	}
	ln.Close()
	r := c.Probe(context.Background())
	if r.OK {
		t.Fatal("closed: got OK, want connection refused")
	}
	if !errors.Is(r.Err, syscall.ECONNREFUSED) {
		t.Errorf("closed: got Err %v, want one wrapping ECONNREFUSED", r.Err)
	}
}

func TestProbeExec(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name       string
		script     string
		args       string
		ok         bool
		notRunning bool
		is         error  // wrapped by Err when it fails
		want       string // Err's message
	}{
		{name: "exit 0", script: "echo fine\nexit 0\n", ok: true},
		{name: "exit 7", script: "echo 'pid file /run/db.pid not found' >&2\nexit 7\n", notRunning: true, is: ErrNotRunning,
			want: "not running (exit status 7): pid file /run/db.pid not found"},
		{name: "exit 1 with output", script: "echo starting check\necho 'replication lag 93s' >&2\necho\nexit 1\n", want: "exit status 1: replication lag 93s"},
		{name: "exit 1 silent", script: "exit 1\n", want: "exit status 1"},
		{name: "exit 2", script: "exit 2\n", want: "exit status 2"},
		{name: "killed by a signal", script: "kill -9 $$\n", want: "signal: killed"},
		{name: "arguments", script: "[ \"$1\" = monitor ] && [ \"$2\" = deep ]\n", args: " monitor  deep", ok: true},
		{name: "wrong arguments", script: "[ \"$1\" = monitor ]\n", args: " status", want: "exit status 1"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeScript(t, dir, fmt.Sprintf("check%d.sh", i), tt.script)
			r := Check{Kind: KindExec, Target: path + tt.args, Timeout: 5 * time.Second}.Probe(context.Background())
			if r.OK != tt.ok || r.NotRunning != tt.notRunning {
				t.Fatalf("got OK=%v NotRunning=%v (Err %v), want OK=%v NotRunning=%v", r.OK, r.NotRunning, r.Err, tt.ok, tt.notRunning)
			}
			if tt.ok {
				if r.Err != nil {
					t.Errorf("got Err %v, want none", r.Err)
				}
				return
			}
			var exitErr *exec.ExitError
			if !errors.As(r.Err, &exitErr) {
				t.Errorf("got Err %v, want one wrapping an *exec.ExitError", r.Err)
			}
			if tt.is != nil && !errors.Is(r.Err, tt.is) {
				t.Errorf("got Err %v, want one wrapping %v", r.Err, tt.is)
			}
			if r.Err.Error() != tt.want {
				t.Errorf("got Err %q, want %q", r.Err, tt.want)
			}
		})
	}
}

func TestProbeExecMissing(t *testing.T) {
	r := Check{Kind: KindExec, Target: filepath.Join(t.TempDir(), "missing.sh")}.Probe(context.Background())
	if r.OK || r.NotRunning {
		t.Fatalf("got OK=%v NotRunning=%v, want a failure that is not NotRunning", r.OK, r.NotRunning)
	}
	if !strings.Contains(r.Err.Error(), "no such file or directory") {
		t.Errorf("got Err %q, want it to say the file is missing", r.Err)
	}
}

func TestProbeExecTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	// The script starts a child and waits for it; on timeout both must die,
	// not only the script.
	script := writeScript(t, dir, "hang.sh", "sleep 30 &\necho $! > \"$1\"\necho waiting for sleep\nwait\n")

	c := Check{Kind: KindExec, Target: script + " " + pidFile, Timeout: 500 * time.Millisecond}
	r := c.Probe(context.Background())
	if r.OK || r.NotRunning {
		t.Fatalf("got OK=%v NotRunning=%v (Err %v), want a timeout", r.OK, r.NotRunning, r.Err)
	}
	if !errors.Is(r.Err, ErrTimeout) {
		t.Errorf("got Err %v, want one wrapping ErrTimeout", r.Err)
	}
	if want := `timed out after 500ms (last output: "waiting for sleep")`; r.Err.Error() != want {
		t.Errorf("got Err %q, want %q", r.Err, want)
	}
	if r.Took > 10*time.Second {
		t.Errorf("got Took %v, want the probe to end at its timeout, not when the child's sleep 30 does", r.Took)
	}
	child := readPID(t, pidFile)
	waitFor(t, fmt.Sprintf("the script's child (pid %d) to be killed", child), eventTimeout, func() bool { return processGone(child) })
}

func TestProbeExecKillsLeftovers(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	// The script passes but leaves a child running that holds its output.
	script := writeScript(t, dir, "leave.sh", "sleep 30 &\necho $! > \"$1\"\nexit 0\n")

	r := Check{Kind: KindExec, Target: script + " " + pidFile, Timeout: 10 * time.Second}.Probe(context.Background())
	if !r.OK {
		t.Fatalf("got Err %v, want OK", r.Err)
	}
	if r.Took > 5*time.Second {
		t.Errorf("got Took %v, want the probe to end when the script does, not when its child's sleep 30 does", r.Took)
	}
	child := readPID(t, pidFile)
	waitFor(t, fmt.Sprintf("the script's leftover child (pid %d) to be killed", child), eventTimeout, func() bool { return processGone(child) })
}

func TestProbeExecCancelKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := writeScript(t, dir, "hang.sh", "sleep 30 &\necho $! > \"$1\"\nwait\n")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result)
	go func() { done <- Check{Kind: KindExec, Target: script + " " + pidFile, Timeout: time.Minute}.Probe(ctx) }()
	waitFor(t, "the script to start its child", eventTimeout, func() bool {
		b, _ := readFileIfExists(pidFile)
		return strings.HasSuffix(string(b), "\n")
	})
	cancel()
	var r Result
	select {
	case r = <-done:
	case <-time.After(eventTimeout):
		t.Fatal("probe did not return after its ctx was cancelled")
	}
	if r.OK || !errors.Is(r.Err, context.Canceled) || errors.Is(r.Err, ErrTimeout) {
		t.Errorf("got OK=%v Err=%v, want a failure wrapping context.Canceled, not ErrTimeout", r.OK, r.Err)
	}
	child := readPID(t, pidFile)
	waitFor(t, fmt.Sprintf("the script's child (pid %d) to be killed", child), eventTimeout, func() bool { return processGone(child) })
}

func TestTail(t *testing.T) {
	var tl tail
	for i := range 2000 {
		fmt.Fprintf(&tl, "line %d\n", i)
	}
	if len(tl.buf) > maxOutput {
		t.Errorf("got %d bytes kept, want at most %d", len(tl.buf), maxOutput)
	}
	if got, want := tl.lastLine(), "line 1999"; got != want {
		t.Errorf("got last line %q, want %q", got, want)
	}
	tl.Write([]byte(strings.Repeat("x", 3*maxOutput) + "\n\n  \n"))
	if got := tl.lastLine(); got != strings.Repeat("x", maxLine)+"..." {
		t.Errorf("got last line %q, want %d x's and an ellipsis", got, maxLine)
	}
}
