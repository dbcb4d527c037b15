package proc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Sentinel errors of the cgroup functions.
var (
	// ErrNoCgroup2 means no cgroup v2 file system is mounted.
	ErrNoCgroup2 = errors.New("proc: no cgroup2 file system is mounted")
	// ErrNotCgroup means a path is not on a cgroup v2 file system.
	ErrNotCgroup = errors.New("proc: not a cgroup v2 directory")
	// ErrNotEmpty means a cgroup (or one of its descendants) still has processes.
	ErrNotEmpty = errors.New("proc: cgroup is not empty")
)

// cgroup2Magic is CGROUP2_SUPER_MAGIC, the f_type statfs reports for cgroup2.
const cgroup2Magic = 0x63677270

// pollInterval is how often state is polled where no notification is available.
const pollInterval = 5 * time.Millisecond

// CgroupMount returns the cgroup v2 mount point, from /proc/self/mountinfo.
// On a unified system it is usually /sys/fs/cgroup; on a hybrid one
// /sys/fs/cgroup/unified. It returns an error wrapping ErrNoCgroup2 if no
// cgroup2 file system is mounted.
func CgroupMount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("proc: find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

// parseMountinfo returns the mount point of the first cgroup2 entry of a
// mountinfo file (proc(5)): "36 35 98:0 /root /mnt opts [optional...] - fstype source superopts".
func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			return unescapeMountinfo(fields[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("proc: read mountinfo: %w", err)
	}
	return "", ErrNoCgroup2
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, \011, \012,
// \134) the kernel writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Cgroup is a cgroup v2 directory. Every operation acts on the processes of
// the cgroup and of all its descendant cgroups, the unit a supervised
// command's process tree lives in. A Cgroup holds no state but its path, so it
// is safe for concurrent use.
type Cgroup struct {
	// Path is the cgroup's directory, e.g. /sys/fs/cgroup/tandem/web.
	Path string
}

// NewCgroup creates the cgroup directory path (and its parents, like mkdir
// -p). An existing empty cgroup is reused, and thawed if it was left frozen.
// An existing cgroup that still has processes is an error wrapping
// ErrNotEmpty that names them: callers kill such leftovers explicitly, with
// OpenCgroup and Kill. A path that is not on a cgroup2 file system is an error
// wrapping ErrNotCgroup, and nothing is created.
func NewCgroup(path string) (*Cgroup, error) {
	path = filepath.Clean(path)
	existing := path
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if err := checkCgroup2(existing); err != nil {
		return nil, fmt.Errorf("proc: create cgroup %s: %w", path, err)
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, fmt.Errorf("proc: create cgroup: %w", err)
	}
	c := &Cgroup{Path: path}
	pids, err := c.Procs()
	if err != nil {
		return nil, err
	}
	if len(pids) > 0 {
		return nil, fmt.Errorf("proc: create cgroup %s: %w: pids %v", path, ErrNotEmpty, pids)
	}
	// A cgroup left frozen would freeze the next command the moment it
	// starts. An empty cgroup thaws at once, so there is nothing to wait for.
	if b, err := os.ReadFile(c.file("cgroup.freeze")); err == nil && strings.TrimSpace(string(b)) == "1" {
		if err := c.write("cgroup.freeze", "0"); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// OpenCgroup returns the existing cgroup at path. It is an error wrapping
// fs.ErrNotExist if there is none, and one wrapping ErrNotCgroup if path is
// not a cgroup v2 directory.
func OpenCgroup(path string) (*Cgroup, error) {
	path = filepath.Clean(path)
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("proc: open cgroup: %w", err)
	}
	if err := checkCgroup2(path); err != nil {
		return nil, fmt.Errorf("proc: open cgroup %s: %w", path, err)
	}
	return &Cgroup{Path: path}, nil
}

func checkCgroup2(path string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return &fs.PathError{Op: "statfs", Path: path, Err: err}
	}
	if st.Type != cgroup2Magic {
		return ErrNotCgroup
	}
	return nil
}

func (c *Cgroup) file(name string) string { return filepath.Join(c.Path, name) }

// write writes s to one of c's control files. os.WriteFile is not used: it
// would ask for O_CREAT|O_TRUNC, which control files do not need.
func (c *Cgroup) write(name, s string) error {
	f, err := os.OpenFile(c.file(name), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("proc: cgroup %s: %w", c.Path, err)
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("proc: cgroup %s: write %s: %w", c.Path, name, err)
	}
	return nil
}

// dirs returns c's directory and those of all its descendant cgroups,
// parents before children.
func (c *Cgroup) dirs() ([]string, error) {
	var dirs []string
	err := filepath.WalkDir(c.Path, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			// A child cgroup removed while walking is not an error.
			if path != c.Path && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("proc: cgroup %s: %w", c.Path, err)
	}
	return dirs, nil
}

// Procs returns the sorted pids of every process in c and in its descendant
// cgroups. Processes that have exited are not listed, even if not reaped yet.
func (c *Cgroup) Procs() ([]int, error) {
	dirs, err := c.dirs()
	if err != nil {
		return nil, err
	}
	var pids []int
	for i, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if i > 0 && errors.Is(err, fs.ErrNotExist) {
				continue // a child cgroup removed meanwhile
			}
			return nil, fmt.Errorf("proc: cgroup %s: %w", c.Path, err)
		}
		for _, line := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(line)
			if err != nil {
				return nil, fmt.Errorf("proc: cgroup %s: bad pid %q in cgroup.procs", dir, line)
			}
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// events is the content of cgroup.events.
type events struct {
	populated, frozen bool
}

func (c *Cgroup) events() (events, error) {
	b, err := os.ReadFile(c.file("cgroup.events"))
	if err != nil {
		return events{}, fmt.Errorf("proc: cgroup %s: %w", c.Path, err)
	}
	var ev events
	for line := range bytes.Lines(b) {
		k, v, _ := strings.Cut(strings.TrimSpace(string(line)), " ")
		switch k {
		case "populated":
			ev.populated = v == "1"
		case "frozen":
			ev.frozen = v == "1"
		}
	}
	return ev, nil
}

// Populated reports whether c or any of its descendants has a live process,
// from the "populated" key of cgroup.events.
func (c *Cgroup) Populated() (bool, error) {
	ev, err := c.events()
	return ev.populated, err
}

// Signal sends sig to every process of c and of its descendant cgroups.
// Processes that exit meanwhile are not an error. A process forked while the
// cgroup is being walked can miss the signal; Kill has no such gap.
func (c *Cgroup) Signal(sig syscall.Signal) error {
	pids, err := c.Procs()
	if err != nil {
		return err
	}
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
			errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("proc: cgroup %s: signal %v: %w", c.Path, sig, errors.Join(errs...))
	}
	return nil
}

// Kill sends SIGKILL to every process of c and of its descendant cgroups. It
// does not wait for them to exit: WaitEmpty does. Through cgroup.kill (Linux
// 5.14 and later) the kernel kills every process, including one being forked
// at that moment. Where cgroup.kill is absent, Kill signals every listed pid
// and lists again until no new pid shows up; a fork racing with that can still
// leave a process behind, so callers that must see the cgroup empty repeat
// Kill while they wait, as Process.Kill does.
func (c *Cgroup) Kill() error {
	return c.kill(true)
}

// kill is Kill; useKillFile false forces the fallback, for tests.
func (c *Cgroup) kill(useKillFile bool) error {
	if useKillFile {
		err := c.write("cgroup.kill", "1")
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if _, serr := os.Stat(c.Path); serr != nil {
			return err // the cgroup itself is gone, not just cgroup.kill
		}
	}
	killed := make(map[int]bool)
	for {
		pids, err := c.Procs()
		if err != nil {
			return err
		}
		fresh := 0
		for _, pid := range pids {
			if killed[pid] {
				continue
			}
			fresh++
			killed[pid] = true
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
				return fmt.Errorf("proc: cgroup %s: kill pid %d: %w", c.Path, pid, err)
			}
		}
		if fresh == 0 {
			return nil
		}
	}
}

// WaitEmpty blocks until neither c nor any descendant has a live process. It
// is notified of changes of cgroup.events through inotify, and polls every
// 5ms where inotify is not available. It returns ctx's error if ctx ends
// first.
func (c *Cgroup) WaitEmpty(ctx context.Context) error {
	err := c.waitEvents(ctx, func(ev events) bool { return !ev.populated })
	if err != nil {
		return fmt.Errorf("proc: wait for cgroup %s to be empty: %w", c.Path, err)
	}
	return nil
}

// Freeze freezes (frozen true) or thaws the processes of c and its
// descendants through cgroup.freeze, and waits until cgroup.events reports
// the new state. ctx bounds the wait; when it ends first the state change has
// been requested but not completed, and the error wraps ctx's error. A cgroup
// whose ancestor is frozen stays frozen after a thaw, so that wait lasts until
// ctx ends. Frozen processes still die from SIGKILL, so Kill works on a frozen
// cgroup.
func (c *Cgroup) Freeze(ctx context.Context, frozen bool) error {
	v := "0"
	if frozen {
		v = "1"
	}
	if err := c.write("cgroup.freeze", v); err != nil {
		return err
	}
	if err := c.waitEvents(ctx, func(ev events) bool { return ev.frozen == frozen }); err != nil {
		return fmt.Errorf("proc: cgroup %s: freeze %v: %w", c.Path, frozen, err)
	}
	return nil
}

// Remove removes c and its descendant cgroups, children first. It fails with
// an error wrapping ErrNotEmpty if any of them has processes, and removes
// nothing then. Removing a cgroup that does not exist is not an error.
func (c *Cgroup) Remove() error {
	populated, err := c.Populated()
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if populated {
		pids, _ := c.Procs()
		return fmt.Errorf("proc: remove cgroup %s: %w: pids %v", c.Path, ErrNotEmpty, pids)
	}
	dirs, err := c.dirs()
	if err != nil {
		return err
	}
	for _, dir := range slices.Backward(dirs) {
		if err := syscall.Rmdir(dir); err != nil && err != syscall.ENOENT {
			return fmt.Errorf("proc: remove cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// waitEvents returns when done(cgroup.events) is true, or ctx's error.
func (c *Cgroup) waitEvents(ctx context.Context, done func(events) bool) error {
	// The watch is set before the first read, so a change right after that
	// read still wakes the wait below.
	w, werr := newWatch(c.file("cgroup.events"))
	if werr == nil {
		defer w.close()
	}
	for {
		ev, err := c.events()
		if err != nil {
			return err
		}
		if done(ev) {
			return nil
		}
		if werr == nil {
			err = w.wait(ctx)
		} else {
			err = sleepCtx(ctx, pollInterval)
		}
		if err != nil {
			return err
		}
	}
}

// watch is an inotify watch on one file.
type watch struct {
	f *os.File
}

func newWatch(path string) (*watch, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	if _, err := syscall.InotifyAddWatch(fd, path, syscall.IN_MODIFY); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	// A non-blocking descriptor makes the File pollable, so a read deadline
	// can interrupt the read when ctx ends.
	return &watch{f: os.NewFile(uintptr(fd), "inotify:"+path)}, nil
}

// wait blocks until the watched file is modified (or removed), or ctx ends.
func (w *watch) wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { w.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var buf [4096]byte
	_, err := w.f.Read(buf[:])
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return err
	}
	return nil
}

func (w *watch) close() { w.f.Close() }

// sleepCtx waits for d, or returns ctx's error if ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
