package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Result is the outcome of one probe.
type Result struct {
	// OK says the probe passed.
	OK bool
	// NotRunning says an exec probe's program exited 7 (OCF's "not
	// running"); Err then wraps ErrNotRunning.
	NotRunning bool
	// Err says why a failed probe failed: the status or body that was not
	// wanted, the connection error, the timeout, or the exit status with the
	// last line the program wrote. It is nil when OK.
	Err error
	// Took is how long the probe took.
	Took time.Duration
}

const (
	// maxBody is how much of an http answer's body is searched for Body.
	maxBody = 1 << 20
	// maxOutput is how much of an exec probe's output is kept, from its end.
	maxOutput = 4 << 10
	// maxLine bounds the output line or body excerpt quoted in an error.
	maxLine = 200
	// execWaitDelay is how long an exec probe waits, once its program has
	// exited (or been killed), for whatever else holds its output open.
	execWaitDelay = 250 * time.Millisecond
)

// errProbeTimeout is the cause of a probe's context ending at Timeout, which
// tells that apart from the caller's ctx ending.
var errProbeTimeout = errors.New("health: probe timeout")

// Probe runs one probe of c, bounded by c.Timeout (DefaultTimeout if zero)
// and by ctx, and says how it went. It does not validate c: an invalid check
// fails its probes. Probe is safe for concurrent use. When ctx ends first,
// the probe stops as soon as it can and fails with ctx's error; an exec
// probe's process group is killed.
func (c Check) Probe(ctx context.Context) Result {
	c = c.WithDefaults()
	start := time.Now()
	pctx, cancel := context.WithTimeoutCause(ctx, c.Timeout, errProbeTimeout)
	defer cancel()

	var err error
	switch c.Kind {
	case KindExec:
		err = c.probeExec(pctx)
	case KindTCP:
		err = probeTCP(pctx, c.Target)
	case KindHTTP:
		err = c.probeHTTP(pctx)
	default:
		err = invalid("unknown kind %q", c.Kind)
	}
	if err != nil && !errors.Is(err, ErrTimeout) && context.Cause(pctx) == errProbeTimeout {
		err = timedOut(c.Timeout, err, "")
	}
	return Result{
		OK:         err == nil,
		NotRunning: errors.Is(err, ErrNotRunning),
		Err:        err,
		Took:       time.Since(start),
	}
}

func timedOut(d time.Duration, cause error, output string) error {
	msg := fmt.Sprintf("timed out after %v", d)
	if output != "" {
		msg += fmt.Sprintf(" (last output: %q)", output)
	}
	return &problem{msg: msg, errs: []error{ErrTimeout, cause}}
}

func probeTCP(ctx context.Context, target string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return err
	}
	return conn.Close()
}

// probeClient sends every http probe. It is not transport.NewHTTPClient's,
// which talks to tandem servers: a probe must see the service the way a new
// client would. So each probe opens its own connection (no keep-alives: a
// daemon that stopped accepting connections must fail, however healthy an
// old connection looks), goes direct (a proxy would answer for the service),
// follows no redirect (the status checked is the service's own) and carries
// no credentials. Each probe's ctx bounds it as a whole.
var probeClient = &http.Client{
	Transport: &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{}).DialContext,
		DisableKeepAlives: true,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func (c Check) probeHTTP(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Target, nil)
	if err != nil {
		return &problem{msg: err.Error(), errs: []error{ErrInvalid, err}}
	}
	req.Header.Set("User-Agent", "tandem-health")
	resp, err := probeClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	if !statusOK(resp.StatusCode, c.Status) {
		want := "2xx"
		if c.Status != 0 {
			want = fmt.Sprint(c.Status)
		}
		msg := fmt.Sprintf("status %s, want %s", resp.Status, want)
		// The start of the body often says what is wrong ("database down").
		head, _ := io.ReadAll(io.LimitReader(resp.Body, maxLine))
		if line := firstLine(head); line != "" {
			msg += fmt.Sprintf(": %q", line)
		}
		return &problem{msg: msg, errs: []error{ErrStatus}}
	}
	if c.Body == "" {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if !bytes.Contains(body, []byte(c.Body)) {
		return &problem{msg: fmt.Sprintf("body does not contain %q", c.Body), errs: []error{ErrBody}}
	}
	return nil
}

func statusOK(got, want int) bool {
	if want == 0 {
		return got >= 200 && got <= 299
	}
	return got == want
}

func (c Check) probeExec(ctx context.Context) error {
	args := strings.Fields(c.Target)
	if len(args) == 0 {
		return invalid("missing program")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	// The program leads a process group of its own, so that whatever it
	// starts can be killed with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = execWaitDelay
	out := &tail{}
	cmd.Stdout, cmd.Stderr = out, out

	err := cmd.Start()
	if err != nil {
		return err
	}
	err = cmd.Wait()
	// A health check's leftovers die with it: a child it left behind would
	// pile up, one per probe. Killing the group after the program has been
	// reaped is safe because Linux does not reuse a pid while it names a
	// process group that still has members; if the group is empty, the pid
	// would have to be recycled for a new group leader in the microseconds
	// since, which takes a full turn of the pid space.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)

	line := out.lastLine()
	if context.Cause(ctx) == errProbeTimeout {
		return timedOut(c.Timeout, context.DeadlineExceeded, line)
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil, errors.Is(err, exec.ErrWaitDelay):
		// ErrWaitDelay means the program exited 0 but something it started
		// held its output open; that something is now killed.
		return nil
	case errors.As(err, &exitErr) && exitErr.ExitCode() == 7:
		msg := "not running (exit status 7)"
		if line != "" {
			msg += ": " + line
		}
		return &problem{msg: msg, errs: []error{ErrNotRunning, err}}
	case line != "":
		return fmt.Errorf("%w: %s", err, line)
	default:
		return err
	}
}

// tail keeps the last maxOutput bytes written to it. An exec probe's stdout
// and stderr share one, and os/exec then never calls Write concurrently.
type tail struct {
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > maxOutput {
		p = p[len(p)-maxOutput:]
	}
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - maxOutput; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return n, nil
}

// lastLine returns the last non-blank line written, shortened for an error.
func (t *tail) lastLine() string {
	s := strings.TrimRight(string(t.buf), " \t\r\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return shorten(strings.TrimSpace(s))
}

// firstLine returns the first line of b, shortened for an error.
func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return shorten(strings.TrimSpace(s))
}

func shorten(s string) string {
	if len(s) > maxLine {
		// Cutting may split a rune, whose remains ToValidUTF8 drops.
		return strings.ToValidUTF8(s[:maxLine], "") + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
