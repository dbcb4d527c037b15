package proc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStopCgroup(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		nprocs     int  // processes to wait for before stopping (the traps are set by then)
		wantKilled bool // then StopTimeout is short, else long enough for a loaded machine
		wantCode   int
		wantSig    os.Signal
	}{
		{
			name:     "grandchildren",
			script:   "sleep 1000 & sleep 1000 & wait",
			nprocs:   3,
			wantCode: -1, wantSig: syscall.SIGTERM,
		},
		{
			name:     "cooperative",
			script:   `trap "exit 7" TERM; sleep 1000 & wait`,
			nprocs:   2,
			wantCode: 7,
		},
		{
			name:       "ignores SIGTERM",
			script:     `trap "" TERM; sleep 1000 & sleep 1000 & wait`,
			nprocs:     3,
			wantKilled: true,
			wantCode:   -1, wantSig: syscall.SIGKILL,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cg := testCgroup(t, "svc")
			stopTimeout := stopTimeoutFor(tt.wantKilled)
			p := start(t, Spec{Args: []string{"sh", "-c", tt.script}, Cgroup: cg, StopTimeout: stopTimeout})
			pids := waitProcs(t, cg, tt.nprocs, p.Pid())

			began := time.Now()
			killed, err := p.Stop(ctxFor(t, long))
			if err != nil {
				t.Fatal(err)
			}
			if killed != tt.wantKilled {
				t.Errorf("killed: got %v, want %v", killed, tt.wantKilled)
			}
			if took := time.Since(began); killed && took < stopTimeout {
				t.Errorf("killed after %v, before StopTimeout %v", took, stopTimeout)
			}
			if pop, err := cg.Populated(); err != nil || pop {
				t.Errorf("Populated after Stop: got %v, %v, want false", pop, err)
			}
			assertExit(t, p, tt.wantCode, tt.wantSig)
			assertGone(t, pids)
		})
	}
}

// stopTimeoutFor returns a StopTimeout for a test: short where the test
// expects Stop to have to kill, else long enough that a loaded machine does
// not make a cooperative command look stuck.
func stopTimeoutFor(wantKilled bool) time.Duration {
	if wantKilled {
		return 200 * time.Millisecond
	}
	return long / 2 // less than the Stop ctx (long)
}

// TestStopOrphans checks Stop after the main process exited on its own,
// leaving a grandchild behind in the cgroup.
func TestStopOrphans(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		wantKilled bool
	}{
		{"cooperative orphan", "sleep 1000 &", false},
		{"orphan ignores SIGTERM", `trap "" TERM; sleep 1000 &`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cg := testCgroup(t, "svc")
			p := start(t, Spec{Args: []string{"sh", "-c", tt.script}, Cgroup: cg, StopTimeout: stopTimeoutFor(tt.wantKilled)})
			assertExit(t, p, 0, nil)
			orphans := waitProcs(t, cg, 1, p.Pid())
			if orphans[0] == p.Pid() {
				t.Fatalf("the cgroup lists the main process %d after it exited", p.Pid())
			}

			killed, err := p.Stop(ctxFor(t, long))
			if err != nil {
				t.Fatal(err)
			}
			if killed != tt.wantKilled {
				t.Errorf("killed: got %v, want %v", killed, tt.wantKilled)
			}
			if got := procs(t, cg); len(got) != 0 {
				t.Errorf("processes left after Stop: %v", got)
			}
			assertGone(t, orphans)

			// Stop again: nothing to do, and no error.
			if killed, err := p.Stop(ctxFor(t, long)); err != nil || killed {
				t.Errorf("second Stop: got %v, %v, want false, nil", killed, err)
			}
		})
	}
}

func TestStopFrozen(t *testing.T) {
	cg := testCgroup(t, "svc")
	// A handler, unlike a fatal default action, runs only once thawed.
	p := start(t, Spec{Args: []string{"sh", "-c", `trap "exit 7" TERM; sleep 1000 & wait`}, Cgroup: cg, StopTimeout: long / 2})
	pids := waitProcs(t, cg, 2, p.Pid())
	if err := cg.Freeze(ctxFor(t, long), true); err != nil {
		t.Fatal(err)
	}
	killed, err := p.Stop(ctxFor(t, long))
	if err != nil || killed {
		t.Fatalf("Stop: got %v, %v, want false, nil (a frozen tree must be thawed to handle SIGTERM)", killed, err)
	}
	assertExit(t, p, 7, nil)
	assertGone(t, pids)
}

// TestStopContextEnds checks that Stop does not leave the tree running when
// the caller's ctx ends before StopTimeout.
func TestStopContextEnds(t *testing.T) {
	cg := testCgroup(t, "svc")
	p := start(t, Spec{Args: []string{"sh", "-c", `trap "" TERM; sleep 1000 & wait`}, Cgroup: cg, StopTimeout: time.Minute})
	pids := waitProcs(t, cg, 2, p.Pid())
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	killed, err := p.Stop(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !killed {
		t.Fatalf("Stop: got %v, %v, want true, context.DeadlineExceeded", killed, err)
	}
	if err := cg.WaitEmpty(ctxFor(t, long)); err != nil {
		t.Fatal(err)
	}
	assertExit(t, p, -1, syscall.SIGKILL)
	assertGone(t, pids)
}

func TestProcessKill(t *testing.T) {
	cg := testCgroup(t, "svc")
	p := start(t, Spec{Args: []string{"sh", "-c", `trap "" TERM; sleep 1000 & sleep 1000 & wait`}, Cgroup: cg})
	pids := waitProcs(t, cg, 3, p.Pid())
	if err := p.Kill(ctxFor(t, long)); err != nil {
		t.Fatal(err)
	}
	if got := procs(t, cg); len(got) != 0 {
		t.Errorf("processes left after Kill: %v", got)
	}
	assertExit(t, p, -1, syscall.SIGKILL)
	assertGone(t, pids)
	if err := p.Kill(ctxFor(t, long)); err != nil {
		t.Errorf("second Kill: %v", err)
	}
}

// TestProcessGroup covers Stop without a cgroup: it acts on the process
// group. It needs neither root nor cgroup v2.
func TestProcessGroup(t *testing.T) {
	tests := []struct {
		name       string
		script     string // prints the pids of the processes it leaves, one a line
		nchildren  int
		wantKilled bool
	}{
		{"grandchildren", "sleep 1000 & echo $!; sleep 1000 & echo $!; wait", 2, false},
		{"ignores SIGTERM", `trap "" TERM; sleep 1000 & echo $!; wait`, 1, true},
		{"orphan", "sleep 1000 & echo $!", 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, err := os.Create(filepath.Join(t.TempDir(), "out"))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			p := start(t, Spec{Args: []string{"sh", "-c", tt.script}, Stdout: out, StopTimeout: stopTimeoutFor(tt.wantKilled)})
			var pids []int
			waitFor(t, "the script to print its children", long, func() bool {
				b, _ := os.ReadFile(out.Name())
				pids = pids[:0]
				for _, f := range strings.Fields(string(b)) {
					pid, _ := strconv.Atoi(f)
					pids = append(pids, pid)
				}
				if len(pids) != tt.nchildren {
					return false
				}
				for _, pid := range pids { // exec'd, see waitProcs
					if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err != nil || string(comm) != "sleep\n" {
						return false
					}
				}
				return true
			})
			for _, pid := range pids {
				st, err := readStat(pid)
				if err != nil || st.pgrp != p.Pid() {
					t.Fatalf("child %d: got process group %d (%v), want %d", pid, st.pgrp, err, p.Pid())
				}
			}

			killed, err := p.Stop(ctxFor(t, long))
			if err != nil {
				t.Fatal(err)
			}
			if killed != tt.wantKilled {
				t.Errorf("killed: got %v, want %v", killed, tt.wantKilled)
			}
			assertGone(t, append(pids, p.Pid()))
		})
	}
}

func TestDoneAndExit(t *testing.T) {
	tests := []struct {
		script   string
		wantCode int
		wantSig  os.Signal
	}{
		{"exit 0", 0, nil},
		{"exit 3", 3, nil},
		{"kill -KILL $$", -1, syscall.SIGKILL},
		{"kill -USR1 $$", -1, syscall.SIGUSR1},
	}
	for _, tt := range tests {
		t.Run(tt.script, func(t *testing.T) {
			t.Parallel()
			p := start(t, Spec{Args: []string{"sh", "-c", tt.script}})
			assertExit(t, p, tt.wantCode, tt.wantSig)
		})
	}

	t.Run("before exit", func(t *testing.T) {
		t.Parallel()
		p := start(t, Spec{Args: []string{"sleep", "1000"}})
		if _, _, err := p.Exit(); !errors.Is(err, ErrNotExited) {
			t.Errorf("Exit before Done: got %v, want ErrNotExited", err)
		}
		select {
		case <-p.Done():
			t.Fatal("Done closed while the process runs")
		default:
		}
		if err := p.Kill(ctxFor(t, long)); err != nil {
			t.Fatal(err)
		}
		assertExit(t, p, -1, syscall.SIGKILL)
	})
}

func TestStartErrors(t *testing.T) {
	cg := testCgroup(t, "svc")
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-exec")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		spec    Spec
		wantErr error // nil: any error
	}{
		{"no args", Spec{}, ErrNoArgs},
		{"not in PATH", Spec{Args: []string{"tandem-no-such-program"}}, ErrNotFound},
		{"Env's PATH is used", Spec{Args: []string{"sh"}, Env: []string{"PATH=/nonexistent"}}, ErrNotFound},
		{"missing path", Spec{Args: []string{"/nonexistent/prog"}}, ErrNotFound},
		{"missing relative to Dir", Spec{Args: []string{"./prog"}, Dir: dir}, ErrNotFound},
		{"not executable", Spec{Args: []string{notExec}}, ErrNotExecutable},
		{"directory", Spec{Args: []string{dir}}, ErrNotExecutable},
		{"missing Dir", Spec{Args: []string{"true"}, Dir: filepath.Join(dir, "nonexistent")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.spec.Cgroup = cg
			p, err := Start(tt.spec)
			if err == nil {
				p.Kill(ctxFor(t, long))
				t.Fatal("Start succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("got %v, want %v", err, tt.wantErr)
			}
			t.Log(err)
			if got := procs(t, cg); len(got) != 0 {
				t.Errorf("processes in the cgroup after a failed Start: %v", got)
			}
		})
	}

	t.Run("cgroup not empty", func(t *testing.T) {
		start(t, Spec{Args: []string{"sleep", "1000"}, Cgroup: cg})
		if _, err := Start(Spec{Args: []string{"sleep", "1000"}, Cgroup: cg}); !errors.Is(err, ErrNotEmpty) {
			t.Errorf("got %v, want ErrNotEmpty", err)
		}
	})
}

func TestSpecEnvDirAndOutput(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/bin/sh", filepath.Join(dir, "mysh")); err != nil {
		t.Fatal(err)
	}
	const script = `pwd; echo "FOO=$FOO"; echo oops >&2`

	t.Run("one writer for both", func(t *testing.T) {
		var out bytes.Buffer
		p := start(t, Spec{
			Args:   []string{"./mysh", "-c", script}, // relative to Dir
			Dir:    dir,
			Env:    []string{"FOO=bar"},
			Stdout: &out,
			Stderr: &out,
		})
		assertExit(t, p, 0, nil)
		if _, err := p.Stop(ctxFor(t, long)); err != nil {
			t.Fatal(err)
		}
		if got, want := out.String(), dir+"\nFOO=bar\noops\n"; got != want {
			t.Errorf("output: got %q, want %q", got, want)
		}
	})

	t.Run("separate writers", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		p := start(t, Spec{Args: []string{"sh", "-c", script}, Dir: dir, Stdout: &stdout, Stderr: &stderr})
		assertExit(t, p, 0, nil)
		if err := p.Kill(ctxFor(t, long)); err != nil { // also waits for the output
			t.Fatal(err)
		}
		if !strings.Contains(stderr.String(), "oops") || strings.Contains(stdout.String(), "oops") {
			t.Errorf("got stdout %q, stderr %q; want oops on stderr only", stdout.String(), stderr.String())
		}
	})

	t.Run("failing writer", func(t *testing.T) {
		// The command must not get SIGPIPE because the log broke.
		p := start(t, Spec{Args: []string{"sh", "-c", "for i in $(seq 1000); do echo line $i; done"}, Stdout: failWriter{}})
		assertExit(t, p, 0, nil)
	})
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken") }

// TestPdeathsig kills -9 a process that started a command with Start, and
// checks that the command dies too.
func TestPdeathsig(t *testing.T) {
	env := append(os.Environ(), helperEnv+"=pdeathsig")
	var cg *Cgroup
	if _, err := CgroupMount(); err == nil && os.Geteuid() == 0 {
		cg = testCgroup(t, "svc")
		env = append(env, helperCgroupEnv+"="+cg.Path)
	}
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = env
	helper.Stderr = os.Stderr
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		helper.Process.Kill()
		helper.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
	}()
	var pid int
	select {
	case s := <-line:
		if pid, err = strconv.Atoi(strings.TrimSpace(s)); err != nil {
			t.Fatalf("helper printed %q, want a pid", s)
		}
	case <-time.After(long):
		t.Fatal("helper did not print the pid of its command")
	}
	if !alive(pid) {
		t.Fatalf("the helper's command %d is not running", pid)
	}
	if cg != nil {
		if got := procs(t, cg); len(got) != 1 || got[0] != pid {
			t.Fatalf("cgroup: got %v, want [%d]", got, pid)
		}
	}

	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	helper.Wait()
	waitFor(t, "the command to die with the helper", long, func() bool { return !alive(pid) })
}

// TestPdeathsigSurvivesForkingThread checks the Go gotcha: the kernel sends
// Pdeathsig when the thread that forked exits, and the runtime ends a thread
// when a goroutine locked to it exits. A command started from such a
// goroutine must not be killed when it returns.
func TestPdeathsigSurvivesForkingThread(t *testing.T) {
	type result struct {
		p     *Process
		tid   int
		err   error
		retry bool
	}
	var res result
	for {
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			tid := syscall.Gettid()
			if tid == os.Getpid() {
				// The main thread is never ended, only parked: try another.
				runtime.UnlockOSThread()
				ch <- result{retry: true}
				return
			}
			p, err := Start(Spec{Args: []string{"sleep", "1000"}})
			ch <- result{p: p, tid: tid, err: err}
			// Return while locked: the runtime ends this thread.
		}()
		if res = <-ch; !res.retry {
			break
		}
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	p := res.p
	t.Cleanup(func() { p.Kill(ctxFor(t, long)) })
	task := "/proc/self/task/" + strconv.Itoa(res.tid)
	waitFor(t, "the locked thread to exit", long, func() bool {
		_, err := os.Stat(task)
		return errors.Is(err, os.ErrNotExist)
	})

	// Had the fork happened on that thread, the kernel would have queued
	// SIGKILL for the command before the thread disappeared, and the
	// command would die of it rather than of the SIGTERM sent now.
	if killed, err := p.Stop(ctxFor(t, long)); err != nil || killed {
		t.Fatalf("Stop: got %v, %v, want false, nil", killed, err)
	}
	assertExit(t, p, -1, syscall.SIGTERM)
}

// TestStopMainOnly: with StopMainOnly the stop signal reaches the main
// process alone, which stops its child its own way (here SIGUSR1, the way
// HAProxy's master soft-stops its workers); the child never sees SIGTERM.
func TestStopMainOnly(t *testing.T) {
	cg := testCgroup(t, "svc")
	got := filepath.Join(t.TempDir(), "got")
	child := `trap "echo usr1 > ` + got + `; kill \$s; exit 0" USR1; trap "echo term > ` + got + `; kill \$s; exit 0" TERM; sleep 1000 & s=$!; wait`
	script := `trap 'kill -USR1 $c; wait $c; exit 5' TERM; sh -c '` + child + `' & c=$!; wait`
	p := start(t, Spec{Args: []string{"sh", "-c", script}, Cgroup: cg, StopMainOnly: true, StopTimeout: stopTimeoutFor(false)})
	// Both traps are set once the child's sleep runs.
	var pids []int
	waitFor(t, "the main process, its child and the child's sleep", long, func() bool {
		pids = procs(t, cg)
		for _, pid := range pids {
			if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil && string(comm) == "sleep\n" {
				return len(pids) == 3
			}
		}
		return false
	})
	killed, err := p.Stop(ctxFor(t, long))
	if err != nil {
		t.Fatal(err)
	}
	if killed {
		t.Error("killed: want a graceful stop")
	}
	assertExit(t, p, 5, nil)
	assertGone(t, pids)
	if b, err := os.ReadFile(got); err != nil || strings.TrimSpace(string(b)) != "usr1" {
		t.Errorf("the child got %q (%v), want usr1 from the main process and no SIGTERM", b, err)
	}
}
