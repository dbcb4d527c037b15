package proc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// long bounds waits that end quickly unless the machine is very loaded (CI
// machines may run other suites alongside); only a failing test waits it out.
const long = 10 * time.Second

// Environment of the helper process that TestMain becomes when it is set.
const (
	helperEnv       = "TANDEM_PROC_TEST_HELPER"
	helperCgroupEnv = "TANDEM_PROC_TEST_CGROUP"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "pdeathsig" {
		pdeathsigHelper()
		return
	}
	os.Exit(m.Run())
}

// pdeathsigHelper starts `sleep 1000` with Start (in the cgroup named by
// helperCgroupEnv, if any), prints its pid and waits to be killed. It exits
// by itself after a while so that a failed test leaves nothing behind.
func pdeathsigHelper() {
	s := Spec{Args: []string{"sleep", "1000"}}
	if path := os.Getenv(helperCgroupEnv); path != "" {
		cg, err := OpenCgroup(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		s.Cgroup = cg
	}
	p, err := Start(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(p.Pid())
	time.Sleep(30 * time.Second) // not synchronisation: the test kills us long before
	os.Exit(3)
}

// requireCgroup returns the cgroup v2 mount point, or skips the test where
// there is none or we are not root. In CI (CI set) a skip would hide a
// regression, so it fails instead.
func requireCgroup(t *testing.T) string {
	t.Helper()
	mount, err := CgroupMount()
	if err == nil && os.Geteuid() != 0 {
		err = errors.New("not root")
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("needs cgroup v2 and root: %v (CI is set, so this is a failure)", err)
		}
		t.Skipf("needs cgroup v2 and root: %v", err)
	}
	return mount
}

// testCgroup returns an empty cgroup <mount>/tandem-test-<random>/<name>. At
// cleanup everything in it is killed and the cgroups are removed.
func testCgroup(t *testing.T, name string) *Cgroup {
	t.Helper()
	mount := requireCgroup(t)
	var b [6]byte
	rand.Read(b[:])
	base := filepath.Join(mount, "tandem-test-"+hex.EncodeToString(b[:]))
	cg, err := NewCgroup(filepath.Join(base, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		top := &Cgroup{Path: base}
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		for {
			if err := top.Kill(); err != nil {
				t.Errorf("cleanup: %v", err)
				return
			}
			if err := top.WaitEmpty(ctx); err == nil {
				break
			} else if ctx.Err() != nil {
				t.Errorf("cleanup: %v", err)
				return
			}
		}
		if err := top.Remove(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return cg
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive reports whether pid is a process that has not exited. A zombie is
// dead: where PID 1 does not reap orphans (this is so on some CI machines),
// killed grandchildren stay zombies forever.
func alive(pid int) bool {
	st, err := readStat(pid)
	if err != nil {
		return false
	}
	return st.state != 'Z' && st.state != 'X'
}

// exists reports whether /proc/PID exists.
func exists(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return !errors.Is(err, fs.ErrNotExist)
}

// procs returns the pids in cg, failing the test on error.
func procs(t *testing.T, cg *Cgroup) []int {
	t.Helper()
	pids, err := cg.Procs()
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// waitProcs waits until cg has n processes, all of them but main running
// sleep, and returns them. Counting processes is not enough: a shell's child
// runs shell code between fork and exec, and a signal it gets then is lost
// where the shell has a handler (trap) for it.
func waitProcs(t *testing.T, cg *Cgroup, n int, main int) []int {
	t.Helper()
	var pids []int
	waitFor(t, fmt.Sprintf("%d processes in %s", n, cg.Path), long, func() bool {
		pids = procs(t, cg)
		if len(pids) != n {
			return false
		}
		for _, pid := range pids {
			if pid == main {
				continue
			}
			if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err != nil || string(comm) != "sleep\n" {
				return false
			}
		}
		return true
	})
	return pids
}

// ctxFor returns a context that ends after d, cancelled at cleanup.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// start starts s, failing the test on error, and kills the tree at cleanup.
func start(t *testing.T, s Spec) *Process {
	t.Helper()
	p, err := Start(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Kill(ctxFor(t, long)); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return p
}

// assertGone fails the test if any of pids is alive.
func assertGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d is still alive", pid)
		}
	}
}

// assertExit checks how p's main process ended.
func assertExit(t *testing.T, p *Process, wantCode int, wantSig os.Signal) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(long):
		t.Fatal("Done not closed")
	}
	code, sig, err := p.Exit()
	if err != nil {
		t.Fatal(err)
	}
	if code != wantCode || (wantSig == nil && sig != 0) || (wantSig != nil && sig != wantSig) {
		t.Errorf("exit: got code %d signal %v, want code %d signal %v", code, sig, wantCode, wantSig)
	}
}
