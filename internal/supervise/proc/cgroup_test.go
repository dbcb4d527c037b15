package proc

import (
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

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        error
	}{
		{
			name: "hybrid",
			in: `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`,
			want: "/sys/fs/cgroup/unified",
		},
		{
			name: "unified with optional fields",
			in:   "25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
			want: "/sys/fs/cgroup",
		},
		{
			name: "escaped space",
			in:   `99 30 0:50 / /mnt/my\040cgroups rw - cgroup2 none rw` + "\n",
			want: "/mnt/my cgroups",
		},
		{
			name:    "v1 only",
			in:      "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n",
			wantErr: ErrNoCgroup2,
		},
		{
			name:    "empty",
			wantErr: ErrNoCgroup2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tt.in))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCgroupMountIsCgroup2(t *testing.T) {
	mount := requireCgroup(t)
	if _, err := OpenCgroup(mount); err != nil {
		t.Fatalf("OpenCgroup(%s): %v", mount, err)
	}
	if _, err := os.Stat(filepath.Join(mount, "cgroup.procs")); err != nil {
		t.Fatal(err)
	}
}

func TestNewCgroupNotOnCgroup2(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	_, err := NewCgroup(dir)
	if !errors.Is(err, ErrNotCgroup) {
		t.Fatalf("got %v, want ErrNotCgroup", err)
	}
	if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NewCgroup created directories outside cgroup2: stat: %v", err)
	}
}

func TestNewCgroupReuseAndLeftovers(t *testing.T) {
	cg := testCgroup(t, "svc")

	// An existing empty cgroup, even left frozen, is reused and thawed.
	if err := cg.Freeze(ctxFor(t, long), true); err != nil {
		t.Fatal(err)
	}
	again, err := NewCgroup(cg.Path)
	if err != nil {
		t.Fatalf("reusing an empty cgroup: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(cg.Path, "cgroup.freeze")); strings.TrimSpace(string(b)) != "0" {
		t.Errorf("cgroup.freeze: got %q, want 0", b)
	}

	// A populated one is refused, naming the leftovers.
	p := start(t, Spec{Args: []string{"sleep", "1000"}, Cgroup: again})
	_, err = NewCgroup(cg.Path)
	if !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("got %v, want ErrNotEmpty", err)
	}
	if !strings.Contains(err.Error(), strconv.Itoa(p.Pid())) {
		t.Errorf("error %q does not name pid %d", err, p.Pid())
	}

	// Open and Kill clear them; then the cgroup can be used again.
	old, err := OpenCgroup(cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := old.WaitEmpty(ctxFor(t, long)); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCgroup(cg.Path); err != nil {
		t.Fatalf("after killing leftovers: %v", err)
	}
}

func TestOpenCgroupMissing(t *testing.T) {
	mount := requireCgroup(t)
	_, err := OpenCgroup(filepath.Join(mount, "tandem-test-does-not-exist"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %v, want fs.ErrNotExist", err)
	}
}

// TestCgroupActsOnDescendants checks that Procs, Populated and Signal see
// processes in child cgroups.
func TestCgroupActsOnDescendants(t *testing.T) {
	cg := testCgroup(t, "svc")
	sub, err := NewCgroup(filepath.Join(cg.Path, "sub"))
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, Spec{Args: []string{"sleep", "1000"}, Cgroup: sub})
	if got := procs(t, cg); len(got) != 1 || got[0] != p.Pid() {
		t.Errorf("Procs of the parent: got %v, want [%d]", got, p.Pid())
	}
	if pop, err := cg.Populated(); err != nil || !pop {
		t.Errorf("Populated of the parent: got %v, %v, want true", pop, err)
	}
	if err := cg.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	assertExit(t, p, -1, syscall.SIGTERM)
	if err := cg.WaitEmpty(ctxFor(t, long)); err != nil {
		t.Fatal(err)
	}
}

func TestKill(t *testing.T) {
	for _, tt := range []struct {
		name        string
		useKillFile bool
	}{
		{"cgroup.kill", true},
		{"fallback", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cg := testCgroup(t, "svc")
			p := start(t, Spec{Args: []string{"sh", "-c", "sleep 1000 & sleep 1000 & wait"}, Cgroup: cg})
			pids := waitProcs(t, cg, 3, p.Pid())
			if err := cg.kill(tt.useKillFile); err != nil {
				t.Fatal(err)
			}
			if err := cg.WaitEmpty(ctxFor(t, long)); err != nil {
				t.Fatal(err)
			}
			assertExit(t, p, -1, syscall.SIGKILL)
			assertGone(t, pids)
		})
	}
}

func TestWaitEmptyContext(t *testing.T) {
	cg := testCgroup(t, "svc")
	start(t, Spec{Args: []string{"sleep", "1000"}, Cgroup: cg})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := cg.WaitEmpty(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
}

func TestFreeze(t *testing.T) {
	cg := testCgroup(t, "svc")
	dir := t.TempDir()
	counter := filepath.Join(dir, "counter")
	start(t, Spec{
		Args:   []string{"sh", "-c", `i=0; while :; do i=$((i+1)); echo $i > counter.tmp; mv counter.tmp counter; done`},
		Dir:    dir,
		Cgroup: cg,
	})
	read := func() string {
		b, _ := os.ReadFile(counter)
		return string(b)
	}
	waitFor(t, "the counter to start", long, func() bool { return read() != "" })

	if err := cg.Freeze(ctxFor(t, long), true); err != nil {
		t.Fatal(err)
	}
	if ev := readEvents(t, cg); !strings.Contains(ev, "frozen 1") {
		t.Fatalf("cgroup.events after Freeze(true): got %q, want frozen 1", ev)
	}
	frozenAt := read()

	if err := cg.Freeze(ctxFor(t, long), false); err != nil {
		t.Fatal(err)
	}
	if ev := readEvents(t, cg); !strings.Contains(ev, "frozen 0") {
		t.Fatalf("cgroup.events after Freeze(false): got %q, want frozen 0", ev)
	}
	waitFor(t, "the counter to advance after thawing", long, func() bool {
		c := read()
		return c != "" && c != frozenAt
	})
}

func readEvents(t *testing.T, cg *Cgroup) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cg.Path, "cgroup.events"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRemove(t *testing.T) {
	cg := testCgroup(t, "svc")
	sub, err := NewCgroup(filepath.Join(cg.Path, "a", "b"))
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, Spec{Args: []string{"sleep", "1000"}, Cgroup: sub})
	if err := cg.Remove(); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("Remove of a populated cgroup: got %v, want ErrNotEmpty", err)
	}
	if _, err := os.Stat(sub.Path); err != nil {
		t.Fatalf("a failed Remove removed the child cgroup: %v", err)
	}
	if err := p.Kill(ctxFor(t, long)); err != nil {
		t.Fatal(err)
	}
	if err := cg.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cgroup still there after Remove: stat: %v", err)
	}
	if err := cg.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

// TestWatchCgroupEvents checks that WaitEmpty and Freeze are woken through
// inotify here, not by the polling fallback.
func TestWatchCgroupEvents(t *testing.T) {
	cg := testCgroup(t, "svc")
	p := start(t, Spec{Args: []string{"sleep", "1000"}, Cgroup: cg})
	w, err := newWatch(filepath.Join(cg.Path, "cgroup.events"))
	if err != nil {
		t.Fatalf("inotify on cgroup.events: %v", err)
	}
	defer w.close()
	if err := cg.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := w.wait(ctxFor(t, long)); err != nil {
		t.Fatalf("no inotify event after the cgroup emptied: %v", err)
	}
	assertExit(t, p, -1, syscall.SIGKILL)
}
