// Package health is how tandem supervise watches a service it runs: the
// health checks an operator declares (--health KIND:TARGET), one probe of
// each, and the Monitor whose events (starting, healthy, unhealthy) the
// supervisor acts on.
//
// A check is one of:
//
//   - exec:PATH [ARGS...] runs PATH (absolute, no shell, arguments split on
//     spaces) with the meaning OCF resource agents give its exit status: 0 is
//     running, 7 is not running (reported as ErrNotRunning), anything else
//     is a failure. On timeout its whole process group is killed.
//   - tcp:HOST:PORT connects to HOST:PORT.
//   - http:URL GETs an http:// or https:// URL and wants the status Status
//     (any 2xx when zero) and, when Body is set, a body containing Body.
//
// A Monitor reads each check's probes with hysteresis, the way HAProxy
// does: Rise successes in a row make a check pass, Fall failures in a row
// make it fail, so a single failure between successes changes nothing.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Kinds of check: what comes before the first colon of a spec.
const (
	// KindExec runs a program and reads its exit status.
	KindExec = "exec"
	// KindTCP connects to a TCP port.
	KindTCP = "tcp"
	// KindHTTP sends a GET and reads the status and body of the answer.
	KindHTTP = "http"
)

// Defaults that WithDefaults fills in for zero fields, and that NewMonitor
// uses for a zero start timeout.
const (
	// DefaultInterval is how often a check is probed.
	DefaultInterval = time.Second
	// DefaultTimeout bounds each probe.
	DefaultTimeout = time.Second
	// DefaultFall is how many failures in a row make a passing check fail.
	DefaultFall = 3
	// DefaultRise is how many successes in a row make a failing check pass.
	DefaultRise = 2
	// DefaultStartTimeout is how long a started service may take to first
	// become healthy.
	DefaultStartTimeout = 30 * time.Second
)

// Errors a check's validation or probe wraps, for errors.Is.
var (
	// ErrInvalid is wrapped by every error of Parse and Validate that says
	// the check itself is wrong.
	ErrInvalid = errors.New("health: invalid check")
	// ErrUnreachable is wrapped by Validate's error when a tcp or http
	// check's host does not resolve.
	ErrUnreachable = errors.New("health: unreachable target")
	// ErrNotRunning is wrapped by the error of an exec probe whose program
	// exited 7, OCF's "not running".
	ErrNotRunning = errors.New("health: not running")
	// ErrTimeout is wrapped by the error of a probe that did not finish
	// within the check's Timeout.
	ErrTimeout = errors.New("health: timed out")
	// ErrStatus is wrapped by the error of an http probe answered with a
	// status other than the one expected.
	ErrStatus = errors.New("health: unexpected status")
	// ErrBody is wrapped by the error of an http probe whose answer's body
	// does not contain the expected substring.
	ErrBody = errors.New("health: unexpected body")
)

// Check is one health check of a supervised service, as an operator writes
// it: --health KIND:TARGET on the command line, or the same fields in the
// config file.
type Check struct {
	// Kind is KindExec, KindTCP or KindHTTP.
	Kind string `json:"kind"`
	// Target is what follows "KIND:": "PATH [ARGS...]", "HOST:PORT" or a URL.
	Target string `json:"target"`
	// Interval is how often the check is probed. A probe that takes longer
	// delays the next one: probes of one check never overlap.
	Interval time.Duration `json:"interval"`
	// Timeout bounds each probe. It may exceed Interval.
	Timeout time.Duration `json:"timeout"`
	// Fall is how many failures in a row make a passing check fail.
	Fall int `json:"fall"`
	// Rise is how many successes in a row make a failing check pass.
	Rise int `json:"rise"`
	// Status is the status an http check wants; zero means any 2xx.
	// Redirects are not followed, so a check of a URL that redirects wants
	// Status set to the redirect's status.
	Status int `json:"status,omitempty"`
	// Body, when not empty, is a substring the body of an http check's
	// answer must contain (only its first MiB is read).
	Body string `json:"body,omitempty"`
}

// Parse parses a check as written on the command line, "KIND:TARGET", and
// fills in the defaults. It checks the spec's syntax only; Validate checks
// the rest (that the program exists, that the host resolves) before the
// check is used. Its errors wrap ErrInvalid.
func Parse(spec string) (Check, error) {
	kind, target, ok := strings.Cut(spec, ":")
	if !ok || kind == "" {
		return Check{}, &checkError{spec: spec, problems: []error{
			invalid("want KIND:TARGET, where KIND is %s, %s or %s", KindExec, KindTCP, KindHTTP),
		}}
	}
	c := Check{Kind: kind, Target: target}.WithDefaults()
	if ps := c.Expand(sampleVars).syntaxProblems(); len(ps) > 0 {
		return Check{}, &checkError{spec: spec, problems: ps}
	}
	return c, nil
}

// WithDefaults returns c with every zero option (Interval, Timeout, Fall,
// Rise) set to its default. Status and Body keep their zero meaning.
func (c Check) WithDefaults() Check {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Fall == 0 {
		c.Fall = DefaultFall
	}
	if c.Rise == 0 {
		c.Rise = DefaultRise
	}
	return c
}

// String returns the check as the spec KIND:TARGET. The password of an http
// URL, if any, is replaced by "xxxxx", so that the result may go in logs and
// events.
func (c Check) String() string {
	target := c.Target
	if c.Kind == KindHTTP {
		if u, err := url.Parse(target); err == nil {
			target = u.Redacted()
		}
	}
	return c.Kind + ":" + target
}

// resolveTimeout bounds Validate's DNS lookups, so that a resolver that does
// not answer delays a start by seconds rather than hanging it.
const resolveTimeout = 10 * time.Second

// Validate is ValidateContext with its DNS lookup bounded by 10 seconds.
func (c Check) Validate() error {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	return c.ValidateContext(ctx)
}

// ValidateContext says what is wrong with c, if anything, before anything
// starts: every problem at once, in one error that names the check and wraps
// ErrInvalid (or ErrUnreachable, for a tcp or http host that does not
// resolve) once per problem. Options are checked as they are: call
// WithDefaults first for a check that was not made by Parse. ValidateContext
// reads the file system for an exec check and asks DNS for a tcp or http
// host, so it blocks until DNS answers or ctx ends; a lookup cut short by
// ctx counts as not resolving.
func (c Check) ValidateContext(ctx context.Context) error {
	spec := c.String()
	c = c.Expand(sampleVars)
	ps := c.syntaxProblems()
	if len(ps) == 0 { // only a well-formed target is worth looking up
		switch c.Kind {
		case KindExec:
			if p := executableProblem(strings.Fields(c.Target)[0]); p != nil {
				ps = append(ps, p)
			}
		case KindTCP:
			host, _, _ := net.SplitHostPort(c.Target)
			if p := resolveProblem(ctx, host, "unreachable health target"); p != nil {
				ps = append(ps, p)
			}
		case KindHTTP:
			u, _ := url.Parse(c.Target)
			if p := resolveProblem(ctx, u.Hostname(), "unreachable health URL"); p != nil {
				ps = append(ps, p)
			}
		}
	}
	if len(ps) > 0 {
		return &checkError{spec: spec, problems: ps}
	}
	return nil
}

// A target may name the node it runs on, so that one definition shared by
// every node checks each node's own instance: ${TANDEM_NODE},
// ${TANDEM_NODE_ADDR} and ${TANDEM_SERVICE} are replaced by the node's
// values (Expand) before it is probed. Validation uses sampleVars.
var sampleVars = map[string]string{"TANDEM_NODE": "node", "TANDEM_NODE_ADDR": "127.0.0.1", "TANDEM_SERVICE": "service"}

// Expand returns c with ${NAME} in its target replaced by vars[NAME] for
// each of vars; any other $ stays as it is.
func (c Check) Expand(vars map[string]string) Check {
	for k, v := range vars {
		c.Target = strings.ReplaceAll(c.Target, "${"+k+"}", v)
	}
	return c
}

// syntaxProblems returns what is wrong with c that can be told without I/O.
func (c Check) syntaxProblems() []error {
	var ps []error
	add := func(p error) {
		if p != nil {
			ps = append(ps, p)
		}
	}
	switch c.Kind {
	case KindExec:
		add(execTargetProblem(c.Target))
	case KindTCP:
		add(tcpTargetProblem(c.Target))
	case KindHTTP:
		add(httpTargetProblem(c.Target))
	default:
		add(invalid("unknown kind %q: want %s, %s or %s", c.Kind, KindExec, KindTCP, KindHTTP))
	}
	if c.Kind != KindHTTP && (c.Status != 0 || c.Body != "") {
		add(invalid("status and body apply only to http checks"))
	}
	if c.Status != 0 && (c.Status < 100 || c.Status > 599) {
		add(invalid("status %d out of range 100-599", c.Status))
	}
	if c.Interval <= 0 {
		add(invalid("interval %v must be positive", c.Interval))
	}
	if c.Timeout <= 0 {
		add(invalid("timeout %v must be positive", c.Timeout))
	}
	if c.Fall < 1 {
		add(invalid("fall %d must be at least 1", c.Fall))
	}
	if c.Rise < 1 {
		add(invalid("rise %d must be at least 1", c.Rise))
	}
	return ps
}

func execTargetProblem(target string) error {
	args := strings.Fields(target)
	if len(args) == 0 {
		return invalid("missing program: want exec:PATH [ARGS...]")
	}
	// No search of $PATH: which program a supervisor runs must not depend on
	// the environment it was started from.
	if !strings.HasPrefix(args[0], "/") {
		return invalid("program %q is not an absolute path", args[0])
	}
	return nil
}

func executableProblem(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return &problem{msg: fmt.Sprintf("program: %v", err), errs: []error{ErrInvalid, err}}
	case fi.IsDir():
		return invalid("program %q is a directory", path)
	case fi.Mode().Perm()&0o111 == 0:
		return invalid("program %q is not executable (mode %v)", path, fi.Mode().Perm())
	}
	return nil
}

func tcpTargetProblem(target string) error {
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		return &problem{msg: fmt.Sprintf("target %q is not HOST:PORT", target), errs: []error{ErrInvalid, err}}
	}
	if host == "" {
		return invalid("target %q has no host: want HOST:PORT", target)
	}
	return portProblem(port)
}

func httpTargetProblem(target string) error {
	u, err := url.Parse(target)
	if err != nil {
		// url.Error repeats the URL, which the spec already names.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return &problem{msg: fmt.Sprintf("not a URL: %v", err), errs: []error{ErrInvalid, err}}
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return invalid("URL scheme %q is not http or https: want http:http://HOST[:PORT]/PATH", u.Scheme)
	}
	if u.Hostname() == "" {
		return invalid("URL has no host")
	}
	if port := u.Port(); port != "" {
		return portProblem(port)
	}
	return nil
}

func portProblem(port string) error {
	n, err := strconv.Atoi(port)
	switch {
	case err != nil:
		return invalid("port %q is not a number", port)
	case n < 1 || n > 65535:
		return invalid("port %d out of range 1-65535", n)
	}
	return nil
}

// resolveProblem reports a host that does not resolve. An IP address needs
// no lookup, and a host that resolves to nothing reachable is left to the
// probes: that is the service's health, not the check's.
func resolveProblem(ctx context.Context, host, what string) error {
	if net.ParseIP(host) != nil {
		return nil
	}
	if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
		return &problem{msg: fmt.Sprintf("%s: %v", what, err), errs: []error{ErrUnreachable, err}}
	}
	return nil
}

// problem is one thing wrong with a check or a probe: its own message, and
// the sentinel and underlying errors it wraps without repeating their text.
type problem struct {
	msg  string
	errs []error
}

func (p *problem) Error() string   { return p.msg }
func (p *problem) Unwrap() []error { return p.errs }

func invalid(format string, args ...any) error {
	return &problem{msg: fmt.Sprintf(format, args...), errs: []error{ErrInvalid}}
}

// checkError is every problem of one check, named by its spec.
type checkError struct {
	spec     string
	problems []error
}

func (e *checkError) Error() string {
	msgs := make([]string, len(e.problems))
	for i, p := range e.problems {
		msgs[i] = p.Error()
	}
	return fmt.Sprintf("health check %q: %s", e.spec, strings.Join(msgs, "; "))
}

func (e *checkError) Unwrap() []error { return e.problems }
