// Package proc runs a supervised command so that its whole process tree can
// be stopped or killed reliably: in its own cgroup v2 (or, without one, in its
// own process group).
//
// With a cgroup the command is cloned straight into it (clone3 with
// CLONE_INTO_CGROUP, Linux 5.7 and later), so neither it nor any process it
// forks ever runs outside; stopping signals every process of the cgroup and
// killing uses cgroup.kill. Without a cgroup the command leads a new process
// group and stop and kill act on that group, which a process can leave with
// setsid or setpgid: the cgroup is the reliable mode, the process group a
// best effort for machines without cgroup v2.
//
// The command's main process gets SIGKILL from the kernel if the supervisor
// dies (Pdeathsig), however it dies, kill -9 included. Pdeathsig covers only
// that one process: its children and grandchildren are re-parented and live
// on. In the cgroup they are still contained, and whoever takes over (the
// next supervisor on this node, with OpenCgroup and Kill, or fencing) kills
// them. The kernel also clears Pdeathsig when the main process executes a
// set-user-ID or set-group-ID program or changes its credentials.
package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Sentinel errors of Start and Exit.
var (
	// ErrNoArgs means Spec.Args is empty.
	ErrNoArgs = errors.New("proc: no program: Args is empty")
	// ErrNotFound means the program does not exist, or is not in PATH.
	ErrNotFound = errors.New("proc: program not found")
	// ErrNotExecutable means the program exists but cannot be executed.
	ErrNotExecutable = errors.New("proc: program not executable")
	// ErrNotExited means Exit was called before Done was closed.
	ErrNotExited = errors.New("proc: process has not exited")
)

const (
	// DefaultStopSignal is the StopSignal of a Spec that sets none.
	DefaultStopSignal = syscall.SIGTERM
	// DefaultStopTimeout is the StopTimeout of a Spec that sets none.
	DefaultStopTimeout = 10 * time.Second
)

// rekillInterval is how long Kill waits for the tree to be gone before it
// kills again, to catch a process forked while the first kill was delivered.
const rekillInterval = 100 * time.Millisecond

// groupPollInterval is how often a process group is checked for members;
// there is no notification for that.
const groupPollInterval = 10 * time.Millisecond

// Spec describes a command to run.
type Spec struct {
	// Args is the program and its arguments. Args[0] is looked up in PATH
	// (Env's PATH if Env has one) if it contains no slash; PATH entries that
	// are not absolute are ignored, as exec.LookPath refuses them. A relative
	// path with a slash is relative to Dir.
	Args []string
	// Dir is the working directory; empty means the supervisor's.
	Dir string
	// Env is the full environment; nil means os.Environ().
	Env []string
	// Stdout and Stderr receive the command's output; nil discards it. An
	// *os.File is handed to the command as is; any other writer is fed by a
	// goroutine of the Process, and the same writer given for both receives
	// both through one pipe, so its Write is never called concurrently.
	Stdout, Stderr io.Writer
	// Cgroup is where the process starts; it must be empty (a Process owns
	// its cgroup). Nil: no cgroup, and the process leads its own process
	// group, which Stop and Kill act on. The process leads its own process
	// group in both cases, so a terminal's Ctrl-C does not reach it.
	Cgroup *Cgroup
	// StopSignal is what Stop sends first; zero means DefaultStopSignal.
	StopSignal syscall.Signal
	// StopMainOnly makes Stop send StopSignal to the main process alone,
	// not to every process of the tree (systemd's KillMode=mixed): for a
	// daemon that stops its own children gracefully, like HAProxy's or
	// NGINX's master. The kill after StopTimeout still takes the whole tree.
	StopMainOnly bool
	// StopTimeout is how long Stop waits after StopSignal before it kills;
	// zero means DefaultStopTimeout.
	StopTimeout time.Duration
}

// Process is a started command. Its methods are safe for concurrent use.
type Process struct {
	os           *os.Process
	pid          int
	cg           *Cgroup
	stopSignal   syscall.Signal
	stopMainOnly bool
	stopTimeout  time.Duration

	done    chan struct{} // closed once the main process is reaped
	state   *os.ProcessState
	waitErr error

	readers []*os.File    // read ends of the output pipes
	outDone chan struct{} // closed once every output copier has ended

	groupGone atomic.Bool // process group mode: the group has been seen empty after the main process was reaped
}

// Start starts the command described by s. Problems that can be seen before
// forking are reported then: an error wrapping ErrNoArgs, ErrNotFound,
// ErrNotExecutable, or ErrNotEmpty (for a cgroup that has processes).
func Start(s Spec) (*Process, error) {
	if len(s.Args) == 0 {
		return nil, ErrNoArgs
	}
	if s.StopTimeout < 0 {
		return nil, fmt.Errorf("proc: start %s: negative StopTimeout %v", s.Args[0], s.StopTimeout)
	}
	path, err := lookPath(s.Args[0], s.Dir, s.Env)
	if err != nil {
		return nil, err
	}
	if s.Cgroup != nil {
		pids, err := s.Cgroup.Procs()
		if err != nil {
			return nil, fmt.Errorf("proc: start %s: %w", s.Args[0], err)
		}
		if len(pids) > 0 {
			return nil, fmt.Errorf("proc: start %s in cgroup %s: %w: pids %v", s.Args[0], s.Cgroup.Path, ErrNotEmpty, pids)
		}
	}

	p := &Process{
		cg:           s.Cgroup,
		stopSignal:   s.StopSignal,
		stopMainOnly: s.StopMainOnly,
		stopTimeout:  s.StopTimeout,
		done:         make(chan struct{}),
		outDone:      make(chan struct{}),
	}
	if p.stopSignal == 0 {
		p.stopSignal = DefaultStopSignal
	}
	if p.stopTimeout == 0 {
		p.stopTimeout = DefaultStopTimeout
	}

	// Every file opened here is closed on return; the child has its copies.
	var toClose []*os.File
	defer func() {
		for _, f := range toClose {
			f.Close()
		}
	}()
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("proc: start %s: %w", s.Args[0], err)
	}
	toClose = append(toClose, null)
	var copiers []copier
	output := func(w io.Writer) (*os.File, error) {
		switch w := w.(type) {
		case nil:
			return null, nil
		case *os.File:
			return w, nil
		}
		r, pw, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		toClose = append(toClose, pw)
		copiers = append(copiers, copier{r: r, w: w})
		return pw, nil
	}
	stdout, err := output(s.Stdout)
	if err != nil {
		return nil, fmt.Errorf("proc: start %s: %w", s.Args[0], err)
	}
	stderr := stdout
	if !sameWriter(s.Stdout, s.Stderr) {
		if stderr, err = output(s.Stderr); err != nil {
			closeReaders(copiers)
			return nil, fmt.Errorf("proc: start %s: %w", s.Args[0], err)
		}
	}

	sys := &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if s.Cgroup != nil {
		fd, err := syscall.Open(s.Cgroup.Path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			closeReaders(copiers)
			return nil, fmt.Errorf("proc: start %s: open cgroup %s: %w", s.Args[0], s.Cgroup.Path, err)
		}
		toClose = append(toClose, os.NewFile(uintptr(fd), s.Cgroup.Path))
		sys.UseCgroupFD = true
		sys.CgroupFD = fd
	}
	osp, err := startProcess(path, s.Args, &os.ProcAttr{
		Dir:   s.Dir,
		Env:   s.Env,
		Files: []*os.File{null, stdout, stderr},
		Sys:   sys,
	})
	if err != nil {
		closeReaders(copiers)
		return nil, fmt.Errorf("proc: start %s: %w", s.Args[0], err)
	}
	p.os = osp
	p.pid = osp.Pid

	// The waiter reaps the main process; it ends when the process does.
	go func() {
		state, err := osp.Wait()
		p.state, p.waitErr = state, err
		close(p.done)
	}()

	// The copiers end when every holder of their pipe has closed it, which
	// at the latest is when the tree is gone (or when waitOutput gives up).
	var wg sync.WaitGroup
	for _, c := range copiers {
		p.readers = append(p.readers, c.r)
		wg.Go(func() { copyOutput(c.w, c.r) })
	}
	go func() {
		wg.Wait()
		close(p.outDone)
	}()
	return p, nil
}

// copier is an output pipe: what the command writes to it goes to w.
type copier struct {
	r *os.File
	w io.Writer
}

// closeReaders closes the read ends of copiers that will never run.
func closeReaders(cs []copier) {
	for _, c := range cs {
		c.r.Close()
	}
}

// sameWriter reports whether a and b are the same writer. Like os/exec, it
// treats writers whose dynamic type cannot be compared as different.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a != nil && a == b
}

// copyOutput copies r to w until every writer of the pipe has closed it. It
// keeps reading after w fails, so that a broken log never sends SIGPIPE to
// the command.
func copyOutput(w io.Writer, r *os.File) {
	defer r.Close()
	buf := make([]byte, 32*1024)
	failed := false
	for {
		n, err := r.Read(buf)
		if n > 0 && !failed {
			if _, werr := w.Write(buf[:n]); werr != nil {
				failed = true
			}
		}
		if err != nil {
			return
		}
	}
}

// lookPath resolves the program name to an absolute path, checking that it is
// an executable regular file.
func lookPath(name, dir string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", fmt.Errorf("proc: start %s: %w", name, err)
		}
		if err := checkExecutable(abs); err != nil {
			return "", fmt.Errorf("proc: start %s: %w", name, err)
		}
		return abs, nil
	}
	pathEnv := os.Getenv("PATH")
	if env != nil {
		pathEnv = ""
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				pathEnv = v
			}
		}
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if !filepath.IsAbs(d) {
			continue
		}
		p := filepath.Join(d, name)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("proc: start %s: %w in PATH %q", name, ErrNotFound, pathEnv)
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s does not exist", ErrNotFound, path)
	}
	if err != nil {
		return err
	}
	switch {
	case fi.IsDir():
		return fmt.Errorf("%w: %s is a directory", ErrNotExecutable, path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%w: %s is not a regular file", ErrNotExecutable, path)
	}
	if err := syscall.Access(path, 1 /* X_OK */); err != nil {
		return fmt.Errorf("%w: %s (mode %v): %v", ErrNotExecutable, path, fi.Mode().Perm(), err)
	}
	return nil
}

// Pid returns the main process's pid.
func (p *Process) Pid() int { return p.pid }

// Done returns a channel that is closed as soon as the main process has
// exited and been reaped. Other processes of the tree may still run: Stop
// takes care of them.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit returns how the main process ended: its exit code, or -1 and the
// signal that killed it. err is ErrNotExited before Done is closed, and the
// wait error if waiting for the process failed.
func (p *Process) Exit() (code int, signal syscall.Signal, err error) {
	select {
	case <-p.done:
	default:
		return -1, 0, ErrNotExited
	}
	if p.waitErr != nil {
		return -1, 0, fmt.Errorf("proc: wait for pid %d: %w", p.pid, p.waitErr)
	}
	ws, ok := p.state.Sys().(syscall.WaitStatus)
	if !ok {
		return p.state.ExitCode(), 0, nil
	}
	if ws.Signaled() {
		return -1, ws.Signal(), nil
	}
	return ws.ExitStatus(), 0, nil
}

// Stop ends the whole tree gracefully if it can: it sends StopSignal to every
// process (of the cgroup, or of the process group), waits up to StopTimeout
// for the tree to be gone (the main process reaped and the cgroup or group
// empty), and then kills the whole tree and waits until it is gone. killed
// reports whether it had to kill. A frozen cgroup is thawed so that the
// signal can be handled.
//
// Stop is idempotent and safe after the main process has exited on its own:
// orphans it left behind in the cgroup get the same treatment. When Stop
// returns nil, nothing of the tree runs any more and every write to
// Spec.Stdout and Spec.Stderr has happened.
//
// ctx bounds the whole of Stop. If ctx ends first, Stop kills the tree
// without waiting for it (stopping must not leave the command running just
// because the caller ran out of time) and returns an error wrapping ctx's
// error, with killed true.
func (p *Process) Stop(ctx context.Context) (killed bool, err error) {
	signal := p.signal
	if p.stopMainOnly {
		signal = p.signalMain
	}
	if serr := signal(p.stopSignal); serr != nil {
		// Stopping must not fail just because the polite way did.
		if err := p.Kill(ctx); err != nil {
			return true, fmt.Errorf("proc: stop pid %d: %w", p.pid, errors.Join(serr, err))
		}
		return true, nil
	}
	if p.cg != nil {
		// A signal to a frozen process waits until it is thawed.
		if b, err := os.ReadFile(p.cg.file("cgroup.freeze")); err == nil && strings.TrimSpace(string(b)) == "1" {
			if err := p.cg.write("cgroup.freeze", "0"); err != nil {
				return false, fmt.Errorf("proc: stop pid %d: %w", p.pid, err)
			}
		}
	}
	gctx, cancel := context.WithTimeout(ctx, p.stopTimeout)
	err = p.waitGone(gctx)
	cancel()
	if err == nil {
		if err := p.waitOutput(ctx); err != nil {
			return false, fmt.Errorf("proc: stop pid %d: %w", p.pid, err)
		}
		return false, nil
	}
	if ctx.Err() != nil {
		p.killTree()
		return true, fmt.Errorf("proc: stop pid %d: killed, not waiting: %w", p.pid, ctx.Err())
	}
	// StopTimeout is over (or the tree could not be watched): kill.
	if err := p.Kill(ctx); err != nil {
		return true, fmt.Errorf("proc: stop pid %d: %w", p.pid, err)
	}
	return true, nil
}

// Kill kills the whole tree at once (cgroup.kill, or SIGKILL to the process
// group) and waits until it is gone, killing again every 100ms meanwhile in
// case a fork raced with the kill. When Kill returns nil, nothing of the tree
// runs any more and every write to Spec.Stdout and Spec.Stderr has happened;
// if ctx ends first it returns an error wrapping ctx's error. Kill is
// idempotent and safe after the main process has exited.
func (p *Process) Kill(ctx context.Context) error {
	for {
		if err := p.killTree(); err != nil {
			return fmt.Errorf("proc: kill pid %d: %w", p.pid, err)
		}
		rctx, cancel := context.WithTimeout(ctx, rekillInterval)
		err := p.waitGone(rctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("proc: kill pid %d: %w", p.pid, ctx.Err())
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("proc: kill pid %d: %w", p.pid, err)
		}
	}
	if err := p.waitOutput(ctx); err != nil {
		return fmt.Errorf("proc: kill pid %d: %w", p.pid, err)
	}
	return nil
}

// signal sends sig to every process of the tree.
func (p *Process) signal(sig syscall.Signal) error {
	if p.cg != nil {
		return cgroupGone(p.cg.Signal(sig))
	}
	// Once the group is empty its number may be reused: never signal it then.
	if !p.groupAlive() {
		return nil
	}
	if err := syscall.Kill(-p.pid, sig); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("signal process group %d: %w", p.pid, err)
	}
	return nil
}

// signalMain sends sig to the main process alone, unless it has exited.
func (p *Process) signalMain(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil // reaped: its pid may be reused
	default:
	}
	if err := p.os.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal pid %d: %w", p.pid, err)
	}
	return nil
}

func (p *Process) killTree() error {
	if p.cg != nil {
		return cgroupGone(p.cg.Kill())
	}
	return p.signal(syscall.SIGKILL)
}

// groupAlive reports whether the process group may still have a live member.
func (p *Process) groupAlive() bool {
	if p.groupGone.Load() {
		return false
	}
	select {
	case <-p.done:
	default:
		return true // the main process leads the group
	}
	if groupAlive(p.pid) {
		return true
	}
	p.groupGone.Store(true)
	return false
}

// waitGone waits until the main process has been reaped and the cgroup or
// process group is empty.
func (p *Process) waitGone(ctx context.Context) error {
	select {
	case <-p.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if p.cg != nil {
		return cgroupGone(p.cg.WaitEmpty(ctx))
	}
	for p.groupAlive() {
		if err := sleepCtx(ctx, groupPollInterval); err != nil {
			return err
		}
	}
	return nil
}

// cgroupGone turns the error of a cgroup that no longer exists into nil: it
// was removed, which the kernel allows only once it is empty.
func cgroupGone(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// waitOutput waits for the output copiers to reach the end of their pipes.
// Once the tree is gone that is immediate, unless a process that escaped it
// (possible only without a cgroup) still holds the pipe; when ctx ends the
// pipes are closed, so that the copiers end anyway.
func (p *Process) waitOutput(ctx context.Context) error {
	select {
	case <-p.outDone:
		return nil
	case <-ctx.Done():
	}
	for _, r := range p.readers {
		r.Close()
	}
	<-p.outDone
	return fmt.Errorf("output still open after the process tree is gone: %w", ctx.Err())
}
