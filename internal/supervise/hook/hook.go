// Package hook runs operator hooks (fence, notify and similar scripts): one
// executable with arguments, a timeout, and an environment describing the
// event. A hook runs in its own process group, which is killed as a whole
// when the hook times out, so a hook cannot leave a stuck child behind.
package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandemhq/tandem/internal/supervise/proc"
)

// DefaultTimeout is the timeout of a Hook whose Timeout is zero.
const DefaultTimeout = 30 * time.Second

// killWait bounds how long Run waits for a hook's process group to be gone
// after killing it. Killed processes go at once; only one stuck in the kernel
// (uninterruptible sleep) could take longer, and Run must return regardless.
const killWait = 5 * time.Second

// tailLines is how many lines of a failed hook's output its error shows.
const tailLines = 10

// Sentinel errors.
var (
	// ErrEmpty means Parse got nothing but spaces.
	ErrEmpty = errors.New("hook: empty hook")
	// ErrNotAbsolute means a hook's path is relative.
	ErrNotAbsolute = errors.New("hook: path is not absolute")
	// ErrNotRegular means a hook's path is a directory or a special file.
	ErrNotRegular = errors.New("hook: not a regular file")
	// ErrNotExecutable means a hook's file has no execute permission bit.
	ErrNotExecutable = errors.New("hook: not executable")
	// ErrTimeout means a hook ran past its timeout and was killed.
	ErrTimeout = errors.New("hook: timed out")
)

// Hook is an executable to run with arguments, without a shell.
type Hook struct {
	// Path is the executable file; it must be absolute.
	Path string
	// Args are the arguments after Path.
	Args []string
	// Timeout bounds one run; zero means DefaultTimeout.
	Timeout time.Duration
}

// Parse parses "PATH [ARGS...]", split on spaces; there is no shell, so no
// quoting. It does not check the path: Validate does.
func Parse(s string) (Hook, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return Hook{}, ErrEmpty
	}
	return Hook{Path: f[0], Args: f[1:]}, nil
}

// String returns the hook as Parse reads it.
func (h Hook) String() string {
	return strings.Join(append([]string{h.Path}, h.Args...), " ")
}

// Validate checks that Path is absolute and is an existing regular file that
// someone may execute (a permission bit in 0111), and that Timeout is not
// negative. Errors name the path and wrap ErrNotAbsolute, fs.ErrNotExist,
// ErrNotRegular or ErrNotExecutable.
func (h Hook) Validate() error {
	if h.Path == "" {
		return ErrEmpty
	}
	if !filepath.IsAbs(h.Path) {
		return fmt.Errorf("hook %s: %w", h.Path, ErrNotAbsolute)
	}
	fi, err := os.Stat(h.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("hook %s: does not exist: %w", h.Path, fs.ErrNotExist)
	}
	if err != nil {
		return fmt.Errorf("hook %s: %w", h.Path, err)
	}
	switch {
	case fi.IsDir():
		return fmt.Errorf("hook %s: is a directory: %w", h.Path, ErrNotRegular)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("hook %s: is a %v, not a file: %w", h.Path, fi.Mode().Type(), ErrNotRegular)
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("hook %s: mode %v has no execute bit: %w", h.Path, fi.Mode().Perm(), ErrNotExecutable)
	}
	if h.Timeout < 0 {
		return fmt.Errorf("hook %s: negative timeout %v", h.Path, h.Timeout)
	}
	return nil
}

// Env is the environment a hook gets on top of os.Environ(), e.g.
// TANDEM_SERVICE; its values win over inherited ones. Run adds
// DeadlineEnv itself.
type Env map[string]string

// DeadlineEnv is the variable in which Run gives every hook the instant
// its process group will be killed (its timeout from its start, or the
// caller's context deadline if that comes first), in RFC 3339 with
// nanoseconds, UTC: a hook that waits for something (a fence device, a
// peer) can give up cleanly before it, and a hook it calls can inherit it.
const DeadlineEnv = "TANDEM_DEADLINE"

// environ merges env into os.Environ(), env winning, without duplicate keys
// (which getenv(3) would resolve to the first, inherited, one).
func (env Env) environ() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := env[k]; !ok {
			out = append(out, kv)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// Error is the error of a hook that ran but did not succeed.
type Error struct {
	Hook     Hook
	Code     int            // exit code; -1 if a signal ended the hook or it timed out
	Signal   syscall.Signal // the signal that ended it, if one did
	TimedOut bool           // it ran past its timeout and was killed
	Err      error          // the caller's context error, if that ended the run
	Output   string         // the last lines of its combined output
}

// Error returns what went wrong and the hook's last output, one line each.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hook %s: ", e.Hook)
	switch {
	case e.TimedOut:
		fmt.Fprintf(&b, "timed out after %v and was killed", e.Hook.timeout())
	case e.Err != nil:
		fmt.Fprintf(&b, "killed: %v", e.Err)
	case e.Signal != 0:
		fmt.Fprintf(&b, "killed by signal %v", e.Signal)
	default:
		fmt.Fprintf(&b, "exit code %d", e.Code)
	}
	if e.Output == "" {
		b.WriteString(" (no output)")
	} else {
		b.WriteString("; last output:\n")
		for line := range strings.Lines(e.Output) {
			b.WriteString("  | ")
			b.WriteString(line)
		}
		if !strings.HasSuffix(e.Output, "\n") {
			b.WriteString("\n")
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// Unwrap returns ErrTimeout for a timeout, and the context error for a run
// the caller's context ended.
func (e *Error) Unwrap() error {
	if e.TimedOut {
		return ErrTimeout
	}
	return e.Err
}

func (h Hook) timeout() time.Duration {
	if h.Timeout == 0 {
		return DefaultTimeout
	}
	return h.Timeout
}

// Run runs h in its own process group, with env added to its environment
// and DeadlineEnv set to when it will be killed, and returns nil only if it
// exited 0. When the timeout or ctx ends first, it kills the whole group; it kills any process the hook left in its group
// after exiting too. The hook's stdout and stderr are copied to log (which may
// be nil) as they come, from one goroutine at a time. An invalid hook gives Validate's error; a hook that
// ran and failed gives an *Error, with the exit code, signal or timeout and
// the last lines of its output.
func Run(ctx context.Context, h Hook, env Env, log io.Writer) error {
	if err := h.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("hook %s: not run: %w", h, err)
	}
	// The deadline is set here, for every hook, from the hook's own
	// timeout: callers cannot forget it, and concurrent hooks of one fence
	// level, sharing env, each get their own.
	deadline := time.Now().Add(h.timeout())
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	env = maps.Clone(env)
	if env == nil {
		env = Env{}
	}
	env[DeadlineEnv] = deadline.UTC().Format(time.RFC3339Nano)
	tail := &tailBuffer{max: 8 << 10}
	out := &tee{tail: tail, log: log}
	p, err := proc.Start(proc.Spec{
		Args:   append([]string{h.Path}, h.Args...),
		Env:    env.environ(),
		Stdout: out,
		Stderr: out,
	})
	if err != nil {
		return fmt.Errorf("hook %s: %w", h, err)
	}

	timer := time.NewTimer(h.timeout())
	defer timer.Stop()
	var timedOut bool
	var ctxErr error
	select {
	case <-p.Done():
	case <-timer.C:
		timedOut = true
	case <-ctx.Done():
		ctxErr = ctx.Err()
	}
	select {
	case <-p.Done(): // exited at the same moment: that is what counts
		timedOut, ctxErr = false, nil
	default:
	}
	// Kill what is left: everything on a timeout, leftovers otherwise.
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killWait)
	defer cancel()
	kerr := p.Kill(kctx)

	e := &Error{Hook: h, Code: -1, TimedOut: timedOut, Err: ctxErr, Output: tail.lastLines(tailLines)}
	if !timedOut && ctxErr == nil {
		code, sig, err := p.Exit()
		if err != nil {
			return fmt.Errorf("hook %s: %w", h, err)
		}
		if code == 0 {
			if kerr != nil {
				return fmt.Errorf("hook %s: exited 0 but left processes behind: %w", h, kerr)
			}
			return nil
		}
		e.Code, e.Signal = code, sig
	}
	if kerr != nil {
		return errors.Join(e, fmt.Errorf("hook %s: %w", h, kerr))
	}
	return e
}

// tee copies a hook's output to its tail and to the log. A failing log
// does not stop the tail, nor the hook.
type tee struct {
	tail *tailBuffer
	log  io.Writer
}

func (t *tee) Write(p []byte) (int, error) {
	t.tail.Write(p)
	if t.log != nil {
		t.log.Write(p)
	}
	return len(p), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

// lastLines returns the last n lines.
func (t *tailBuffer) lastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := bytes.TrimRight(t.buf, "\n")
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			if n--; n == 0 {
				return string(b[i+1:]) + "\n"
			}
		}
	}
	if len(b) == 0 {
		return ""
	}
	return string(b) + "\n"
}
