package nginx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// The kernel sends Pdeathsig when the *thread* that forked the child
// exits, and the Go runtime ends a thread when a goroutine locked to it
// exits. Every NGINX this package starts is therefore forked on one
// goroutine that locks its thread and never returns (as in
// internal/supervise/proc, whose spawner sends SIGKILL, which would leave
// NGINX's workers serving: see startMaster).
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	argv  []string
	attr  *os.ProcAttr
	reply chan spawnRes
}

type spawnRes struct {
	p   *os.Process
	err error
}

func startProcess(argv []string, attr *os.ProcAttr) (*os.Process, error) {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go spawnLoop(spawner.reqs)
	})
	reply := make(chan spawnRes, 1)
	spawner.reqs <- spawnReq{argv: argv, attr: attr, reply: reply}
	res := <-reply
	return res.p, res.err
}

// spawnLoop is owned by the package and never ends: its thread must
// outlive every NGINX it forked.
func spawnLoop(reqs <-chan spawnReq) {
	runtime.LockOSThread() // never unlocked, see spawner
	for r := range reqs {
		p, err := os.StartProcess(r.argv[0], r.argv, r.attr)
		r.reply <- spawnRes{p: p, err: err}
	}
}

// master is a managed NGINX master process.
type master struct {
	pid  int
	proc *os.Process
	done chan struct{} // closed once the master is reaped
	err  error         // how it ended; set before done is closed
}

// startMaster starts NGINX in its own process group (which its workers
// inherit, so that stale workers can be found after a crash) with
// Pdeathsig SIGTERM: if tandem lb dies, NGINX's master shuts down and
// takes its workers with it. (SIGKILL would kill the master alone, and its
// workers would go on serving a configuration no one updates.)
func startMaster(bin string, argv []string, dir string, stderr *os.File) (*master, error) {
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	p, err := startProcess(append([]string{bin}, argv...), &os.ProcAttr{
		Dir:   dir,
		Env:   os.Environ(),
		Files: []*os.File{null, stderr, stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM},
	})
	if err != nil {
		return nil, err
	}
	m := &master{pid: p.Pid, proc: p, done: make(chan struct{})}
	// The waiter reaps the master; it ends when the master does.
	go func() {
		st, err := p.Wait()
		if err == nil {
			err = fmt.Errorf("nginx (pid %d) exited: %s", m.pid, st)
		}
		m.err = err
		close(m.done)
	}()
	return m, nil
}

func (m *master) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// procInfo is what /proc says of a process.
type procInfo struct {
	pid, ppid, pgid int
	cmdline         string // NGINX's process title, e.g. "nginx: worker process"
}

// readProc reads /proc/PID; ok is false if the process is gone.
func readProc(pid int) (procInfo, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, false
	}
	// pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 3 || f[0] == "Z" {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgid, _ := strconv.Atoi(f[2])
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	title := strings.TrimSpace(strings.ReplaceAll(string(bytes.TrimRight(cmd, "\x00 ")), "\x00", " "))
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, cmdline: title}, true
}

// procs returns every live process that keep selects.
func procs(keep func(procInfo) bool) []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok && keep(p) {
			out = append(out, p)
		}
	}
	return out
}

const (
	titleMaster = "nginx: master process"
	titleWorker = "nginx: worker process" // exactly: "...is shutting down" is an old one
)

// isMaster reports whether pid is a live NGINX master.
func isMaster(pid int) bool {
	p, ok := readProc(pid)
	return ok && strings.HasPrefix(p.cmdline, titleMaster)
}

// workers returns the pids of the master's workers that accept new
// connections. An old worker retitles itself "nginx: worker process is
// shutting down" in the same step, before it next polls for events, as it
// closes its listening sockets, so a worker with this exact title is one
// that may still accept.
func workers(masterPid int) map[int]bool {
	out := map[int]bool{}
	for _, p := range procs(func(p procInfo) bool { return p.ppid == masterPid && p.cmdline == titleWorker }) {
		out[p.pid] = true
	}
	return out
}

// replaced reports whether the workers now are all new ones: the reload
// has taken effect for every new connection.
func replaced(before, now map[int]bool) bool {
	if len(now) == 0 {
		return false
	}
	for pid := range now {
		if before[pid] {
			return false
		}
	}
	return true
}

// children returns the pids of every child of the master, whatever its
// title (a worker just forked still has the master's).
func children(masterPid int) map[int]bool {
	out := map[int]bool{}
	for _, p := range procs(func(p procInfo) bool { return p.ppid == masterPid }) {
		out[p.pid] = true
	}
	return out
}

// idle reports whether the master waits for signals with nothing to do.
// The master blocks its signals while it works (a reload included: parse,
// bind, its retries, forks) and unblocks them only in sigsuspend, so a
// master with SIGHUP neither blocked nor pending has finished whatever the
// last SIGHUP asked, and its error log holds every message of it.
func idle(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	const sighup = 1 << (syscall.SIGHUP - 1)
	seen := 0
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "SigPnd" && k != "ShdPnd" && k != "SigBlk") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil || mask&sighup != 0 {
			return false
		}
		seen++
	}
	return seen == 3
}

// group returns the live NGINX processes of process group pgid.
func group(pgid int) []procInfo {
	return procs(func(p procInfo) bool { return p.pgid == pgid && strings.HasPrefix(p.cmdline, "nginx:") })
}

// killGroup kills process group pgid and waits until it has no live
// process (zombies, which init reaps, do not count).
func killGroup(ctx context.Context, pgid int) error {
	for {
		if len(procs(func(p procInfo) bool { return p.pgid == pgid })) == 0 {
			return nil
		}
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill process group %d: %w", pgid, err)
		}
		if err := pause(ctx, pollEvery); err != nil {
			return fmt.Errorf("kill process group %d: still there: %w", pgid, err)
		}
	}
}

// readPid reads a pid file.
func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// pollEvery is how often a condition with no notification (a process
// title, a file, an HTTP answer) is checked.
const pollEvery = 5 * time.Millisecond

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// generation asks the NGINX listening on b's address (over TLS when b has
// ListenTLS) which generation the worker that answers runs.
func generation(ctx context.Context, c *http.Client, be lb.Backend) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	listen, scheme := be.Listen, "http://"
	if be.ListenTLS {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+probeAddr(listen)+GenerationPath, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s on %s: %s", GenerationPath, listen, resp.Status)
	}
	g, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("GET %s on %s: %q is not a generation", GenerationPath, listen, b)
	}
	return g, nil
}

// logTail returns the lines of the file from offset on that contain one of
// levels, NGINX's "[emerg]" for example, without their time and pid.
func logTail(path string, offset int64, levels ...string) []string {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, lv := range levels {
			if i := strings.Index(l, lv); i >= 0 {
				out = append(out, cleanLine(l[i:]))
				break
			}
		}
	}
	return out
}

// cleanLine turns "[emerg] 123#123: text" or "nginx: [emerg] text" into
// "[emerg] text".
func cleanLine(l string) string {
	level, rest, ok := strings.Cut(l, " ")
	if !ok {
		return l
	}
	if pid, text, ok := strings.Cut(rest, ": "); ok && strings.Contains(pid, "#") && !strings.ContainsAny(pid, " ") {
		rest = text
	}
	return level + " " + rest
}

// fileSize is the size of path, 0 if it does not exist.
func fileSize(path string) int64 {
	if path == "" {
		return 0
	}
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
