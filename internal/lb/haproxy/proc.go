package haproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is a proxy the driver started (managed mode): the master of
// `haproxy -W -db`, its workers being the master's own children.
type process struct {
	pid  int
	done chan struct{} // closed when the master has exited
	err  error         // why, set before done closes

	logs *logRing
	out  *os.File      // read end of the master's and workers' stderr
	read chan struct{} // closed when the reader has seen EOF
}

// startProcess starts bin with args. The master gets SIGTERM when tandem lb
// dies (Pdeathsig), and takes its workers with it. Pdeathsig fires when the
// thread that forked exits, not the process, so the fork happens on a
// locked thread that stays parked in Wait for as long as the master lives.
func startProcess(bin string, args []string, log *slog.Logger) (*process, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start haproxy: %w", err)
	}
	p := &process{
		done: make(chan struct{}),
		logs: newLogRing(200),
		out:  r,
		read: make(chan struct{}),
	}
	cmd := exec.Command(bin, args...)
	// An *os.File, so exec copies nothing: workers inherit the pipe, and
	// Wait returns when the master exits, not when the last worker does.
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exited")
		}
		p.err = fmt.Errorf("%w: pid %d: %v", ErrExited, cmd.Process.Pid, err)
		log.Warn("haproxy master exited", keyPID, cmd.Process.Pid, keyError, err)
		close(p.done)
	}()
	err = <-started
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p.pid = cmd.Process.Pid
	go p.readLogs(log)
	return p, nil
}

// readLogs turns the proxy's stderr into log records and keeps the last
// lines for error messages. It ends at EOF, when master and workers have
// all exited, or when stop closes the pipe.
func (p *process) readLogs(log *slog.Logger) {
	defer close(p.read)
	sc := bufio.NewScanner(p.out)
	for sc.Scan() {
		line := sc.Text()
		p.logs.add(line)
		switch {
		case strings.HasPrefix(line, "[ALERT]"):
			log.Warn("haproxy", keyLine, line)
		case strings.HasPrefix(line, "[WARNING]"):
			log.Info("haproxy", keyLine, line)
		default:
			log.Debug("haproxy", keyLine, line)
		}
	}
}

// stop ends the proxy at once (SIGTERM: the master hard-stops its
// workers), SIGKILL if it lingers, and waits for the reader.
func (p *process) stop(timeout time.Duration) error { return p.softStop(0, timeout) }

// softStop asks the proxy to stop gracefully (SIGUSR1: the workers close
// their listeners and finish the requests in flight; the master leaves
// after the last one) and waits up to drain for it, then stops it as stop
// does. A zero drain is stop.
func (p *process) softStop(drain, timeout time.Duration) error {
	if drain > 0 {
		select {
		case <-p.done:
		default:
			syscall.Kill(p.pid, syscall.SIGUSR1)
			select {
			case <-p.done:
			case <-time.After(drain):
			}
		}
	}
	select {
	case <-p.done:
	default:
		syscall.Kill(p.pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(timeout):
			syscall.Kill(p.pid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Workers leave within moments of their master; if one holds the pipe
	// open longer, closing our end ends the reader anyway.
	select {
	case <-p.read:
	case <-time.After(timeout):
		p.out.Close()
		<-p.read
	}
	p.out.Close()
	return nil
}

// exited reports whether the master has exited, and why.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// logRing keeps the proxy's last output lines, numbered.
type logRing struct {
	mu    sync.Mutex
	lines []string
	next  int // number of the next line
	max   int
}

func newLogRing(max int) *logRing { return &logRing{max: max} }

func (r *logRing) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, line)
	if len(r.lines) > r.max {
		r.lines = r.lines[len(r.lines)-r.max:]
	}
	r.next++
}

// mark is the number the next line will get.
func (r *logRing) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

// alerts returns the [ALERT] lines numbered from mark on.
func (r *logRing) alerts(mark int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := r.next - len(r.lines)
	var out []string
	for i, l := range r.lines {
		if first+i >= mark && strings.HasPrefix(l, "[ALERT]") {
			out = append(out, alertText(l))
		}
	}
	return out
}

// alertText drops the "[ALERT]    (pid) : " prefix.
func alertText(line string) string {
	if _, rest, ok := strings.Cut(line, ") : "); ok {
		return rest
	}
	return line
}

// waitCtx waits for ctx or d, whichever ends first.
func waitCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
