package hook

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tests here do not run in parallel: writing an executable while another
// goroutine forks can make executing it fail with ETXTBSY (the fork inherits
// the open descriptor until it execs). Each test writes its scripts before
// running any.

// script writes an executable shell script and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// alive reports whether pid runs. Zombies count as dead: where PID 1 does
// not reap orphans, killed grandchildren stay zombies.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

// long bounds waits that end quickly unless the machine is very loaded (CI
// machines may run other suites alongside); only a failing test waits it out.
const long = 10 * time.Second

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Hook
		wantErr error
	}{
		{in: "/usr/local/bin/fence --node b  --hard", want: Hook{Path: "/usr/local/bin/fence", Args: []string{"--node", "b", "--hard"}}},
		{in: "  /bin/true  ", want: Hook{Path: "/bin/true", Args: []string{}}},
		{in: "", wantErr: ErrEmpty},
		{in: " \t ", wantErr: ErrEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if got.Path != tt.want.Path || strings.Join(got.Args, "|") != strings.Join(tt.want.Args, "|") || len(got.Args) != len(tt.want.Args) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	ok := script(t, dir, "ok", "exit 0")
	notExec := filepath.Join(dir, "not-exec")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	othersOnly := filepath.Join(dir, "others-only")
	if err := os.WriteFile(othersOnly, []byte("#!/bin/sh\n"), 0o601); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(othersOnly, 0o601); err != nil { // umask
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		hook    Hook
		wantErr error // nil: valid
		anyErr  bool  // an error without a sentinel
	}{
		{name: "valid", hook: Hook{Path: ok}},
		{name: "executable by others only", hook: Hook{Path: othersOnly}},
		{name: "relative", hook: Hook{Path: "fence.sh"}, wantErr: ErrNotAbsolute},
		{name: "missing", hook: Hook{Path: filepath.Join(dir, "missing")}, wantErr: fs.ErrNotExist},
		{name: "directory", hook: Hook{Path: dir}, wantErr: ErrNotRegular},
		{name: "device", hook: Hook{Path: "/dev/null"}, wantErr: ErrNotRegular},
		{name: "not executable", hook: Hook{Path: notExec}, wantErr: ErrNotExecutable},
		{name: "negative timeout", hook: Hook{Path: ok, Timeout: -time.Second}, anyErr: true},
		{name: "empty", hook: Hook{}, wantErr: ErrEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.hook.Validate()
			switch {
			case tt.anyErr:
				if err == nil {
					t.Fatal("got nil, want an error")
				}
			case !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil):
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tt.hook.Path) {
				t.Errorf("error %q does not name the path %q", err, tt.hook.Path)
			}
		})
	}
}

func TestRunSuccess(t *testing.T) {
	h := Hook{Path: script(t, t.TempDir(), "ok", `echo "hello $1"; echo warn >&2`), Args: []string{"world"}}
	var log bytes.Buffer
	if err := Run(ctxFor(t, long), h, nil, &log); err != nil {
		t.Fatal(err)
	}
	if got, want := log.String(), "hello world\nwarn\n"; got != want {
		t.Errorf("log: got %q, want %q", got, want)
	}
	if err := Run(ctxFor(t, long), h, nil, nil); err != nil {
		t.Errorf("with a nil log: %v", err)
	}
}

func TestRunExitCode(t *testing.T) {
	h := Hook{Path: script(t, t.TempDir(), "fail", `for i in $(seq 15); do echo "line $i"; done; exit 3`)}
	err := Run(ctxFor(t, long), h, nil, nil)
	var he *Error
	if !errors.As(err, &he) {
		t.Fatalf("got %v, want an *Error", err)
	}
	if he.Code != 3 || he.Signal != 0 || he.TimedOut {
		t.Errorf("got code %d signal %v timed out %v, want code 3", he.Code, he.Signal, he.TimedOut)
	}
	var want strings.Builder
	for i := 6; i <= 15; i++ {
		want.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	if he.Output != want.String() {
		t.Errorf("output tail: got %q, want %q", he.Output, want.String())
	}
	msg := err.Error()
	for _, s := range []string{h.Path, "exit code 3", "| line 15", "| line 6"} {
		if !strings.Contains(msg, s) {
			t.Errorf("error %q does not contain %q", msg, s)
		}
	}
	if strings.Contains(msg, "| line 5\n") {
		t.Errorf("error %q has more than the last 10 lines", msg)
	}
}

func TestRunSignal(t *testing.T) {
	h := Hook{Path: script(t, t.TempDir(), "sig", `kill -TERM $$`)}
	err := Run(ctxFor(t, long), h, nil, nil)
	var he *Error
	if !errors.As(err, &he) || he.Signal != syscall.SIGTERM || he.Code != -1 {
		t.Fatalf("got %v, want an *Error with signal SIGTERM", err)
	}
	if !strings.Contains(err.Error(), "signal") {
		t.Errorf("error %q does not mention the signal", err)
	}
}

// TestRunTimeout checks that a hook past its timeout is killed with its
// whole process group.
func TestRunTimeout(t *testing.T) {
	// The script must have started its child before the timeout, or there is
	// nothing to check; on a very loaded machine the timeout is raised.
	for timeout := time.Second; ; timeout *= 2 {
		if runTimeout(t, timeout) || t.Failed() {
			return
		}
		if timeout > long {
			t.Fatal("the hook never started before its timeout")
		}
		t.Logf("the hook had not started within %v; trying a longer timeout", timeout)
	}
}

// runTimeout runs TestRunTimeout's hook with a timeout; false means the hook
// had not started its child by then.
func runTimeout(t *testing.T, timeout time.Duration) bool {
	dir := t.TempDir()
	h := Hook{
		Path:    script(t, dir, "slow", `cd `+dir+`; echo $$ > main.tmp; mv main.tmp main; sleep 1000 & echo $! > child.tmp; mv child.tmp child; echo started; sleep 1000`),
		Timeout: timeout,
	}
	began := time.Now()
	err := Run(ctxFor(t, long+timeout), h, nil, nil)
	took := time.Since(began)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	var he *Error
	if !errors.As(err, &he) || !he.TimedOut {
		t.Fatalf("got %v, want an *Error with TimedOut", err)
	}
	if took < h.Timeout {
		t.Errorf("returned after %v, before the %v timeout", took, h.Timeout)
	}
	if !strings.Contains(err.Error(), "started") {
		return false
	}
	if !strings.Contains(err.Error(), "timed out") {
		t.Errorf("error %q does not say it timed out", err)
	}
	for _, name := range []string{"main", "child"} {
		if pid := readPid(t, filepath.Join(dir, name)); alive(pid) {
			t.Errorf("%s pid %d still alive after Run returned", name, pid)
		}
	}
	return true
}

func TestRunContextEnds(t *testing.T) {
	h := Hook{Path: script(t, t.TempDir(), "slow", `sleep 1000`), Timeout: time.Minute}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := Run(ctx, h, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want context.DeadlineExceeded and not ErrTimeout", err)
	}
}

// TestRunLeftovers checks that a hook that exits 0 but leaves a process
// holding its output neither hangs Run nor leaves the process running.
func TestRunLeftovers(t *testing.T) {
	dir := t.TempDir()
	h := Hook{Path: script(t, dir, "leaves", `sleep 1000 & echo $! > `+filepath.Join(dir, "child")+`; exit 0`)}
	if err := Run(ctxFor(t, long), h, nil, nil); err != nil {
		t.Fatal(err)
	}
	if pid := readPid(t, filepath.Join(dir, "child")); alive(pid) {
		t.Errorf("leftover pid %d still alive after Run returned", pid)
	}
}

func TestRunEnv(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	h := Hook{Path: script(t, dir, "env", `echo "$TANDEM_SERVICE $TANDEM_NODE $INHERITED" > `+out)}
	t.Setenv("TANDEM_SERVICE", "inherited-value-must-lose")
	t.Setenv("INHERITED", "yes")
	if err := Run(ctxFor(t, long), h, Env{"TANDEM_SERVICE": "web", "TANDEM_NODE": "b"}, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "web b yes\n"; got != want {
		t.Errorf("hook saw %q, want %q", got, want)
	}
}

// deadlineSeen reads what deadlineScript wrote: the hook's clock when it
// ran and its TANDEM_DEADLINE, parsed.
func deadlineSeen(t *testing.T, path string) (now, deadline time.Time) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		t.Fatalf("%s: got %q, want the hook's time and its TANDEM_DEADLINE", path, b)
	}
	secs, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	now = time.Unix(0, int64(secs*1e9))
	deadline, err = time.Parse(time.RFC3339Nano, f[1])
	if err != nil {
		t.Fatalf("TANDEM_DEADLINE %q: %v", f[1], err)
	}
	return now, deadline
}

// deadlineScript records the hook's time and TANDEM_DEADLINE ("-" if unset).
func deadlineScript(out string) string {
	return `echo "$(date +%s.%N) ${TANDEM_DEADLINE:--}" > ` + out
}

// TestRunDeadline: every hook gets TANDEM_DEADLINE, the instant it will be
// killed, whatever its caller passed: its own timeout from its start, or the
// caller's deadline if that comes sooner.
func TestRunDeadline(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "seen")
	h := Hook{Path: script(t, dir, "deadline", deadlineScript(out)), Timeout: time.Hour}
	tests := []struct {
		name string
		ctx  context.Context
		env  Env
		want func(start time.Time) (earliest, latest time.Time)
	}{
		{"own timeout", ctxFor(t, 2*time.Hour), nil, func(start time.Time) (time.Time, time.Time) {
			return start.Add(time.Hour), time.Now().Add(time.Hour)
		}},
		{"caller's value replaced", ctxFor(t, 2*time.Hour), Env{DeadlineEnv: "", "TANDEM_NODE": "b"}, func(start time.Time) (time.Time, time.Time) {
			return start.Add(time.Hour), time.Now().Add(time.Hour)
		}},
		{"context's deadline sooner", ctxFor(t, 10*time.Minute), nil, func(start time.Time) (time.Time, time.Time) {
			return start.Add(10*time.Minute - time.Minute), start.Add(10 * time.Minute)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(out)
			start := time.Now()
			if err := Run(tt.ctx, h, tt.env, nil); err != nil {
				t.Fatal(err)
			}
			ran, deadline := deadlineSeen(t, out)
			earliest, latest := tt.want(start)
			if deadline.Before(earliest) || deadline.After(latest) {
				t.Errorf("got TANDEM_DEADLINE %s, want from %s to %s", deadline, earliest, latest)
			}
			if !deadline.After(ran) {
				t.Errorf("got TANDEM_DEADLINE %s, want after the hook ran at %s", deadline, ran)
			}
			if tt.env != nil && tt.env[DeadlineEnv] != "" {
				t.Errorf("Run changed the caller's env: %v", tt.env)
			}
		})
	}
}

func TestRunInvalid(t *testing.T) {
	err := Run(ctxFor(t, long), Hook{Path: "relative.sh"}, nil, nil)
	if !errors.Is(err, ErrNotAbsolute) {
		t.Fatalf("got %v, want ErrNotAbsolute", err)
	}
}

func TestFence(t *testing.T) {
	dir := t.TempDir()
	fail3 := Hook{Path: script(t, dir, "fail3", `echo "ipmi: no route"; exit 3`)}
	fail4 := Hook{Path: script(t, dir, "fail4", `echo "pdu: refused"; exit 4`)}
	ok := Hook{Path: script(t, dir, "ok", `exit 0`)}
	marker := filepath.Join(dir, "ran")
	okMarks := Hook{Path: script(t, dir, "ok-marks", `touch `+marker)}
	// a and b each wait for the other: they succeed only if run concurrently.
	a := Hook{Path: script(t, dir, "a", `cd `+dir+`; touch a; while [ ! -e b ]; do sleep 0.01; done`), Timeout: long}
	b := Hook{Path: script(t, dir, "b", `cd `+dir+`; touch b; while [ ! -e a ]; do sleep 0.01; done`), Timeout: long}
	seen1 := Hook{Path: script(t, dir, "seen1", deadlineScript(filepath.Join(dir, "seen1"))), Timeout: time.Minute}
	seen2 := Hook{Path: script(t, dir, "seen2", deadlineScript(filepath.Join(dir, "seen2"))), Timeout: 2 * time.Minute}

	t.Run("first level fails, second succeeds", func(t *testing.T) {
		os.Remove(marker)
		got, err := Fence(ctxFor(t, long), []Level{{fail3, okMarks}, {ok}}, nil, nil)
		if err != nil || got != 1 {
			t.Fatalf("got %d, %v, want 1, nil", got, err)
		}
		if _, err := os.Stat(marker); err != nil {
			t.Errorf("the succeeding hook of the failed level did not run: %v", err)
		}
	})

	t.Run("first level succeeds", func(t *testing.T) {
		os.Remove(marker)
		got, err := Fence(ctxFor(t, long), []Level{{ok}, {okMarks}}, nil, nil)
		if err != nil || got != 0 {
			t.Fatalf("got %d, %v, want 0, nil", got, err)
		}
		if _, err := os.Stat(marker); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("level 1 ran after level 0 succeeded: stat: %v", err)
		}
	})

	t.Run("all fail", func(t *testing.T) {
		var log bytes.Buffer
		got, err := Fence(ctxFor(t, long), []Level{{fail3}, {ok, fail4}}, nil, &log)
		if got != -1 || !errors.Is(err, ErrFenceFailed) {
			t.Fatalf("got %d, %v, want -1, ErrFenceFailed", got, err)
		}
		for _, s := range []string{"level 0", "level 1", "exit code 3", "exit code 4", "ipmi: no route", "pdu: refused", fail3.Path, fail4.Path} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not contain %q", err, s)
			}
		}
		var he *Error
		if !errors.As(err, &he) {
			t.Errorf("errors.As(*Error) failed on %v", err)
		}
		t.Log(err)
		if !strings.Contains(log.String(), "ipmi: no route") || !strings.Contains(log.String(), "pdu: refused") {
			t.Errorf("log %q lacks the hooks' output", log.String())
		}
	})

	t.Run("every hook gets its own deadline", func(t *testing.T) {
		outs := []string{filepath.Join(dir, "seen1"), filepath.Join(dir, "seen2")}
		start := time.Now()
		got, err := Fence(ctxFor(t, time.Hour), []Level{{fail3}, {seen1, seen2}}, Env{"TANDEM_FENCE_NODE": "a"}, nil)
		if err != nil || got != 1 {
			t.Fatalf("got %d, %v, want 1, nil", got, err)
		}
		for i, out := range outs {
			timeout := []time.Duration{time.Minute, 2 * time.Minute}[i]
			ran, deadline := deadlineSeen(t, out)
			if !deadline.After(ran) || deadline.Before(start.Add(timeout)) || deadline.After(time.Now().Add(timeout)) {
				t.Errorf("hook %d ran at %s: got TANDEM_DEADLINE %s, want %s after its start", i+1, ran, deadline, timeout)
			}
		}
	})

	t.Run("hooks of a level run concurrently", func(t *testing.T) {
		got, err := Fence(ctxFor(t, long), []Level{{a, b}}, nil, nil)
		if err != nil || got != 0 {
			t.Fatalf("got %d, %v, want 0, nil", got, err)
		}
	})

	t.Run("empty level fails", func(t *testing.T) {
		got, err := Fence(ctxFor(t, long), []Level{{}, {ok}}, nil, nil)
		if err != nil || got != 1 {
			t.Fatalf("got %d, %v, want 1, nil", got, err)
		}
	})

	t.Run("no levels", func(t *testing.T) {
		got, err := Fence(ctxFor(t, long), nil, nil, nil)
		if got != -1 || !errors.Is(err, ErrNoLevels) {
			t.Fatalf("got %d, %v, want -1, ErrNoLevels", got, err)
		}
	})

	t.Run("context ended", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		got, err := Fence(ctx, []Level{{ok}}, nil, nil)
		if got != -1 || !errors.Is(err, ErrFenceFailed) || !errors.Is(err, context.Canceled) {
			t.Fatalf("got %d, %v, want -1, ErrFenceFailed and context.Canceled", got, err)
		}
	})
}
