// Package client is tandem's Go client. It knows a cluster as a list of server
// URLs and fails over between them the way Hadoop's
// ConfiguredRMFailoverProxyProvider does (DESIGN.md section 7): it sticks to
// the last server that answered as the active, moves round-robin to the next
// on a connection error, a timeout or a 503, backs off exponentially with
// jitter between retries (the first retry is immediate), and follows the 307
// a standby answers with to the active. Job submissions carry an idempotency
// key, so a retry after an ambiguous failure never creates a second job.
// FollowJobLogs resumes a job's log stream, at the byte where it broke,
// through whichever server is active after a failover.
//
// A Client is safe for concurrent use by many goroutines.
//
// Usage:
//
//	c, err := client.New(client.Config{
//		Servers: []string{"http://rm1.example:7070", "http://rm2.example:7070"},
//	})
//	if err != nil {
//		return err
//	}
//	job, err := c.SubmitJob(ctx, tandem.JobSpec{Command: []string{"sleep", "10"}}, client.SubmitOptions{})
//	if err != nil {
//		return err // a *tandem.Error: errors.Is(err, tandem.ErrNotFound) and friends work
//	}
//	fmt.Println(job.ID)
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
)

// DefaultTimeout bounds each HTTP request of the default HTTP client: a server
// that accepts a connection and then hangs costs at most this long before the
// client moves on to the next one.
const DefaultTimeout = 10 * time.Second

// defaultDialTimeout bounds connecting to a server whose host does not answer
// at all (a machine that is down drops SYNs instead of refusing them).
const defaultDialTimeout = 3 * time.Second

// maxRedirects is how many 307s one attempt follows. A standby redirects once,
// to the active; more than that means the servers disagree about who is active
// (an election is under way) or a loop, and the attempt counts as failed.
const maxRedirects = 3

// Limits on what the client reads from a response.
const (
	maxBodyBytes    = 64 << 20 // a page of 1000 jobs is far below this
	maxErrBodyBytes = 64 << 10
	errSnippetBytes = 200
)

// Backoff configures the client's retries across servers. Retry number n
// (counting from 1) of a call sleeps nothing for n == 1 and otherwise
// Base*2^(n-2), capped at Max, scaled by a jitter uniform in [1/2, 1].
type Backoff struct {
	Base     time.Duration // the first sleep (before the second retry); > 0
	Max      time.Duration // the longest sleep; >= Base
	Attempts int           // attempts in total per call, the first included; >= 1
}

// DefaultBackoff returns the backoff the client uses when Config.Backoff is
// the zero value: Base 20ms, Max 250ms, 40 attempts. That is about 9 seconds
// of retrying, enough to ride out an election, while a server that becomes
// active is found at most about 250ms (one sleep) later.
func DefaultBackoff() Backoff {
	return Backoff{Base: 20 * time.Millisecond, Max: 250 * time.Millisecond, Attempts: 40}
}

// Validate reports the first problem with b as an invalid_argument
// *tandem.Error, or nil.
func (b Backoff) Validate() error {
	switch {
	case b.Base <= 0:
		return tandem.Errorf(tandem.EINVALID, "backoff base is %v: it must be greater than zero", b.Base)
	case b.Max < b.Base:
		return tandem.Errorf(tandem.EINVALID, "backoff max %v is less than its base %v", b.Max, b.Base)
	case b.Attempts < 1:
		return tandem.Errorf(tandem.EINVALID, "backoff attempts is %d: it must be at least 1", b.Attempts)
	}
	return nil
}

// delay returns the nominal sleep before retry n (n >= 1), before jitter.
func (b Backoff) delay(retry int) time.Duration {
	if retry <= 1 {
		return 0 // the first retry goes to the next server at once
	}
	d := b.Base
	for i := 2; i < retry && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Config configures a Client. Only Servers is required.
type Config struct {
	// Servers are the base URLs of the cluster's servers, such as
	// "http://127.0.0.1:7070". Each must be http or https with a host; a
	// trailing slash is trimmed. The first is tried first.
	Servers []string

	// HTTPClient sends the requests. When nil, the client uses one with a
	// per-request timeout of DefaultTimeout. The client follows redirects
	// itself, so it uses a copy of HTTPClient whose CheckRedirect stops at the
	// first redirect. For responses read as streams (JobLogs, FollowJobLogs)
	// its Timeout bounds only the wait for the response's headers, so that a
	// followed log can stay open as long as its attempt runs.
	HTTPClient *http.Client

	// Backoff paces retries across servers; the zero value means
	// DefaultBackoff().
	Backoff Backoff

	// UserAgent, when set, is sent as the User-Agent header.
	UserAgent string

	// AttemptTimeout bounds one attempt at one server on the failover path
	// (DefaultAttemptTimeout when zero; negative means no bound but the
	// HTTP client's), doubling from the second attempt that timed out. A hung
	// active costs a caller about this long before it tries the next server.
	AttemptTimeout time.Duration
}

// DefaultAttemptTimeout is the default Config.AttemptTimeout.
const DefaultAttemptTimeout = time.Second

// server is one configured server.
type server struct {
	base string // normalized base URL, no trailing slash
	key  string // scheme://host:port, to recognise a redirect target
}

// Client talks to a tandem cluster, failing over between its servers. It is
// safe for concurrent use; the server it sticks to is shared by all calls.
type Client struct {
	servers   []server
	hc        *http.Client
	backoff   Backoff
	userAgent string

	// streamHC is hc without its overall timeout, for responses read as
	// streams (a followed log stays open as long as its attempt runs);
	// headerTimeout, hc's timeout, bounds the wait for their headers instead.
	streamHC       *http.Client
	headerTimeout  time.Duration
	attemptTimeout time.Duration
	// followCheck is how long a followed log stream may bring nothing before
	// FollowJobLogs asks the cluster whether it is still worth waiting on.
	followCheck time.Duration

	// sleep waits d or until ctx is done; randN returns a uniform integer in
	// [0, n). Tests replace both.
	sleep func(ctx context.Context, d time.Duration) error
	randN func(n int64) int64

	mu      sync.Mutex
	current int // index in servers of the server calls go to first
}

// New returns a Client for the servers in cfg, or an invalid_argument
// *tandem.Error naming the first problem with cfg. It does not contact any
// server.
func New(cfg Config) (*Client, error) {
	if len(cfg.Servers) == 0 {
		return nil, tandem.Errorf(tandem.EINVALID, "no servers given: give at least one server URL, such as http://127.0.0.1:7070")
	}
	c := &Client{
		userAgent:   cfg.UserAgent,
		backoff:     cfg.Backoff,
		sleep:       sleepCtx,
		randN:       rand.Int64N,
		followCheck: defaultFollowCheck,
	}
	if c.backoff == (Backoff{}) {
		c.backoff = DefaultBackoff()
	}
	if err := c.backoff.Validate(); err != nil {
		return nil, err
	}
	seen := make(map[string]string)
	for _, s := range cfg.Servers {
		srv, err := parseServer(s)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[srv.key]; ok {
			return nil, tandem.Errorf(tandem.EINVALID, "server %q is listed twice (also as %q)", s, prev)
		}
		seen[srv.key] = s
		c.servers = append(c.servers, srv)
	}
	if cfg.HTTPClient != nil {
		hc := *cfg.HTTPClient
		c.hc = &hc
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: defaultDialTimeout, KeepAlive: 30 * time.Second}).DialContext
		t.MaxIdleConnsPerHost = 64 // one Client serves many goroutines, mostly against one server
		c.hc = &http.Client{Timeout: DefaultTimeout, Transport: t}
	}
	c.hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	stream := *c.hc
	stream.Timeout = 0
	c.streamHC, c.headerTimeout = &stream, c.hc.Timeout
	switch {
	case cfg.AttemptTimeout == 0:
		c.attemptTimeout = DefaultAttemptTimeout
	case cfg.AttemptTimeout > 0:
		c.attemptTimeout = cfg.AttemptTimeout
	}
	return c, nil
}

// parseServer validates and normalizes one server base URL.
func parseServer(s string) (server, error) {
	e, err := endpoint.Parse(s)
	return server{base: e.Base, key: e.Key}, err
}

// Current returns the base URL of the server the client currently sticks to:
// the last one that answered as the active, or the first configured server.
func (c *Client) Current() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[c.current].base
}

func (c *Client) sticky() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

func (c *Client) stick(i int) {
	c.mu.Lock()
	c.current = i
	c.mu.Unlock()
}

// advance moves the shared sticky server past failed, unless a concurrent call
// has already moved it, so that N goroutines failing on one dead server move
// the client one step, not N.
func (c *Client) advance(failed int) {
	c.mu.Lock()
	if c.current == failed {
		c.current = (failed + 1) % len(c.servers)
	}
	c.mu.Unlock()
}

func (c *Client) serverIndex(u *url.URL) int {
	k := endpoint.KeyOf(u)
	for i, s := range c.servers {
		if s.key == k {
			return i
		}
	}
	return -1
}

// call is one logical API call.
type call struct {
	op     string // for errors: "submit job"
	method string
	path   string // escaped, with a leading slash
	query  url.Values
	body   []byte // nil: no body
	header http.Header
	// active: the call needs the active server, and a server that answers it
	// becomes the sticky one. Otherwise any server can answer (membership,
	// history) and the answer says nothing about who is active.
	active bool
	// stream: a 2xx answer is handed to the caller unread (see exchange),
	// and the request is not bounded by the HTTP client's overall timeout.
	stream bool
	// tries is set by do to the number of attempts the call took.
	tries int
}

// failureLog keeps the last error seen from each server during one call.
type failureLog struct {
	order []string
	last  map[string]string
}

func (l *failureLog) add(server, msg string) {
	if l.last == nil {
		l.last = make(map[string]string)
	}
	if _, ok := l.last[server]; !ok {
		l.order = append(l.order, server)
	}
	l.last[server] = msg
}

func (l *failureLog) String() string {
	parts := make([]string, 0, len(l.order))
	for _, s := range l.order {
		parts = append(parts, s+": "+l.last[s])
	}
	return strings.Join(parts, "; ")
}

// do runs a call with failover: it starts at the sticky server and, while an
// attempt fails in a way another server might not (connection error, timeout,
// 502/503/504, redirect loop), moves round-robin to the next server, sleeping
// per c.backoff between retries. Other answers, successes and errors alike,
// end the call. out, if non-nil, receives the decoded 2xx body.
func (c *Client) do(ctx context.Context, cl *call, out any) error {
	_, err := c.exchange(ctx, cl, out)
	return err
}

// exchange is do, returning as well, for a stream call, the 2xx response
// whose body the caller must read and close (nil when err is not nil).
func (c *Client) exchange(ctx context.Context, cl *call, out any) (*http.Response, error) {
	var failures failureLog
	idx := c.sticky()
	timeouts := 0
	hung := make(map[int]bool) // servers that let an attempt of this call time out
	for attempt := 1; attempt <= c.backoff.Attempts; attempt++ {
		cl.tries = attempt
		if attempt > 1 {
			if d := c.backoff.delay(attempt - 1); d > 0 {
				if err := c.sleep(ctx, c.jitter(d)); err != nil {
					return nil, ctxError(ctx, cl.op, &failures)
				}
			}
		}
		if ctx.Err() != nil {
			return nil, ctxError(ctx, cl.op, &failures)
		}
		// A server that hangs (paused, cut off) accepts the connection and
		// never answers: bound each attempt, so the client moves on within
		// about AttemptTimeout instead of waiting out the HTTP timeout. The
		// bound doubles from the second timed-out attempt on, for a server
		// that is only slow; the first repeat stays short because a standby
		// may still redirect to the hung active until a new one is elected.
		// Streams are bounded until their headers by sendStream.
		actx, cancel := ctx, context.CancelFunc(func() {})
		if !cl.stream && c.attemptTimeout > 0 {
			actx, cancel = context.WithTimeout(ctx, min(c.attemptTimeout<<max(0, timeouts-1), DefaultTimeout))
		}
		res := c.attempt(actx, c.servers[idx].base, cl, out)
		if actx.Err() != nil && ctx.Err() == nil {
			timeouts = min(timeouts+1, 4)
			hung[idx] = true
		}
		cancel()
		if res.retry {
			if ctx.Err() != nil {
				// The attempt failed because the caller gave up, not the server.
				return nil, ctxError(ctx, cl.op, &failures)
			}
			failures.add(c.servers[idx].base, res.msg)
			c.advance(idx)
			idx = nextServer(idx, len(c.servers), hung)
			continue
		}
		if cl.active {
			if res.answeredBy >= 0 {
				c.stick(res.answeredBy)
			} else {
				c.stick(idx) // redirected to a URL we were not given; idx leads there
			}
		}
		return res.resp, res.err
	}
	who := "no active server"
	if !cl.active {
		who = "no server"
	}
	return nil, tandem.Errorf(tandem.EUNAVAILABLE, "%s answered after %d attempts (%s)", who, c.backoff.Attempts, failures.String())
}

// ctxError reports a call abandoned because ctx is done, wrapping ctx's
// cause (ctx.Err() unless the caller gave one, see context.WithTimeoutCause)
// and saying what the servers answered until then.
func ctxError(ctx context.Context, op string, failures *failureLog) error {
	err := context.Cause(ctx)
	if len(failures.order) == 0 {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w (last errors: %s)", op, err, failures)
}

// jitter scales d by a uniform factor in [1/2, 1], so clients that failed
// together do not retry in lockstep.
func (c *Client) jitter(d time.Duration) time.Duration {
	half := int64(d / 2)
	return time.Duration(half + c.randN(int64(d)-half+1))
}

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

// result is the outcome of one attempt.
type result struct {
	err        error // the call's answer when !retry
	retry      bool  // worth trying another server
	msg        string
	answeredBy int            // index of the configured server that gave the final answer, or -1
	resp       *http.Response // a stream call's 2xx answer, body unread
}

// attempt sends cl to base and follows up to maxRedirects redirects.
func (c *Client) attempt(ctx context.Context, base string, cl *call, out any) result {
	target := base + cl.path
	if len(cl.query) > 0 {
		target += "?" + cl.query.Encode()
	}
	visited := map[string]bool{}
	for hops := 0; ; hops++ {
		visited[target] = true
		resp, err := c.send(ctx, cl.method, target, cl.body, cl.header, cl.stream)
		if err != nil {
			msg := endpoint.Describe(err)
			if hops > 0 {
				msg = "redirected to " + target + ": " + msg
			}
			return result{retry: true, msg: msg}
		}
		u := resp.Request.URL
		if resp.StatusCode == http.StatusTemporaryRedirect || resp.StatusCode == http.StatusPermanentRedirect {
			drain(resp)
			loc := resp.Header.Get("Location")
			next, err := u.Parse(loc)
			switch {
			case loc == "" || err != nil || (next.Scheme != "http" && next.Scheme != "https"):
				return result{retry: true, msg: fmt.Sprintf("%d with an unusable Location %q", resp.StatusCode, loc)}
			case visited[next.String()]:
				return result{retry: true, msg: "redirect loop through " + next.String()}
			case hops == maxRedirects:
				return result{retry: true, msg: fmt.Sprintf("more than %d redirects (last to %s)", maxRedirects, next)}
			}
			target = next.String()
			continue
		}
		if cl.stream && resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return result{resp: resp, answeredBy: c.serverIndex(u)}
		}
		res := c.finish(resp, out)
		if res.retry && hops > 0 {
			res.msg = "redirected to " + target + ": " + res.msg
		}
		res.answeredBy = c.serverIndex(u)
		return res
	}
}

// send makes one HTTP request. Every attempt and every redirect gets a fresh
// request with the same method, body and headers, so the idempotency key
// travels with each. A stream request goes through sendStream.
func (c *Client) send(ctx context.Context, method, target string, body []byte, header http.Header, stream bool) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, r)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = slices.Clone(v)
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	if stream {
		return c.sendStream(req)
	}
	return c.hc.Do(req)
}

// sendStream sends req with c.streamHC, which has no overall timeout, so
// that a response read as a stream may stay open as long as it has
// something to bring. c.headerTimeout bounds the wait for the response's
// headers instead: a hung server costs a stream request no more than any
// other. The returned body's Close releases the request's context.
func (c *Client) sendStream(req *http.Request) (*http.Response, error) {
	if c.headerTimeout <= 0 {
		return c.streamHC.Do(req)
	}
	ctx, cancel := context.WithCancel(req.Context())
	timer := time.AfterFunc(c.headerTimeout, cancel)
	resp, err := c.streamHC.Do(req.WithContext(ctx))
	if !timer.Stop() && req.Context().Err() == nil {
		// The timer fired: the headers came too late, or not at all.
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		return nil, errHeaderTimeout{}
	}
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// nextServer returns the server after idx in round-robin order, passing
// over servers that let an attempt of this call time out: a hung server
// costs a whole attempt each visit, while the others answer at once. When
// every server has hung, it forgets them and starts again.
func nextServer(idx, n int, hung map[int]bool) int {
	for k := 1; k <= n; k++ {
		if next := (idx + k) % n; !hung[next] {
			return next
		}
	}
	clear(hung)
	return (idx + 1) % n
}

// errHeaderTimeout is sendStream's error for headers that took longer than
// the client's timeout; describe reports it as a timeout.
type errHeaderTimeout struct{}

func (errHeaderTimeout) Error() string   { return "timeout awaiting response headers" }
func (errHeaderTimeout) Timeout() bool   { return true }
func (errHeaderTimeout) Temporary() bool { return true }

// cancelBody is a response body whose Close also cancels its request's
// context.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// finish reads a final (non-redirect) response into a result.
func (c *Client) finish(resp *http.Response, out any) result {
	defer resp.Body.Close()
	origin := resp.Request.URL.Scheme + "://" + resp.Request.URL.Host
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
		if err != nil {
			// The server may have done the work; the retry is safe because
			// reads are idempotent and submissions carry an idempotency key.
			return result{retry: true, msg: "reading the response: " + endpoint.Describe(err)}
		}
		if out != nil {
			if err := json.Unmarshal(body, out); err != nil {
				return result{err: tandem.Errorf(tandem.EINTERNAL, "%s: HTTP %d: undecodable response: %v", origin, resp.StatusCode, err)}
			}
		}
		return result{}
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrBodyBytes))
	e := decodeError(origin, resp.StatusCode, body)
	if retryableStatus(resp.StatusCode) {
		return result{retry: true, err: e, msg: fmt.Sprintf("%d %s: %s", resp.StatusCode, e.Code, e.Message)}
	}
	return result{err: e}
}

// retryableStatus reports whether another server may answer where this one
// answered status: 503 is tandem's "not the active / no active / etcd is
// unreachable"; 502 and 504 are what a proxy in front of a server says for a
// connection error or a timeout.
func retryableStatus(status int) bool {
	switch status {
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// decodeError turns an error response into a *tandem.Error: the server's own
// code and message when the body is tandem's JSON envelope, else a code by
// status and the start of the body.
func decodeError(origin string, status int, body []byte) *tandem.Error {
	var eb tandem.ErrorBody
	if json.Unmarshal(body, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		return eb.Error
	}
	code := tandem.EINTERNAL
	if retryableStatus(status) {
		code = tandem.EUNAVAILABLE
	}
	snippet := body
	if len(snippet) > errSnippetBytes {
		snippet = snippet[:errSnippetBytes]
	}
	return tandem.Errorf(code, "%s: HTTP %d: %s", origin, status, strings.TrimSpace(string(snippet)))
}

func drain(resp *http.Response) {
	// Reading a little of the body lets the connection be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrBodyBytes))
	resp.Body.Close()
}

// direct sends one request to one server, with no failover, retries or
// redirects: the per-server admin calls act on the server they name.
func (c *Client) direct(ctx context.Context, serverURL, op, method, path string, in, out any) error {
	srv, err := parseServer(serverURL)
	if err != nil {
		return err
	}
	var body []byte
	if in != nil {
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s: encode request: %w", op, err)
		}
	}
	resp, err := c.send(ctx, method, srv.base+path, body, nil, false)
	if err != nil {
		if ctx.Err() != nil {
			return ctxError(ctx, op, &failureLog{})
		}
		return tandem.Errorf(tandem.EUNAVAILABLE, "%s: %s", srv.base, endpoint.Describe(err))
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		drain(resp)
		return tandem.Errorf(tandem.EINTERNAL, "%s: HTTP %d: unexpected redirect to %q", srv.base, resp.StatusCode, resp.Header.Get("Location"))
	}
	res := c.finish(resp, out)
	if res.retry && res.err == nil {
		return tandem.Errorf(tandem.EUNAVAILABLE, "%s: %s", srv.base, res.msg)
	}
	return res.err
}
