// Package transport is how tandem processes talk HTTP to a cluster of tandem
// servers: the one place that holds the server list, stickiness, backoff,
// redirect following, error decoding, credentials and the HTTP clients
// themselves. The Go client (package client) is built on it, and the agent
// uses it for its per-server sync sessions.
//
// # Failover
//
// Do and Exchange fail over the way Hadoop's ConfiguredRMFailoverProxyProvider
// does (DESIGN.md section 7):
//
//   - A call starts at the sticky server: the last one that answered a call
//     needing the active, or the first configured.
//   - An attempt that fails in a way another server might not (connection
//     error, timeout, 502, 503 or 504, a broken answer, a redirect loop)
//     moves the call round-robin to the next server. The shared sticky
//     server moves one step however many concurrent calls failed on it.
//   - The first retry is immediate; later ones sleep Base doubling up to
//     Max, scaled by a jitter uniform in [1/2, 1]; after Backoff.Attempts
//     attempts the call fails with an unavailable *tandem.Error naming each
//     server's last error.
//   - Each attempt is bounded by AttemptTimeout, doubling from the second
//     attempt of a call that timed out; a call passes over servers that let
//     one of its attempts time out (hung) until every server has. A stream's
//     attempt is bounded only until its headers arrive.
//   - A 307 or 308 is followed, with the same method, body and headers, up
//     to MaxRedirects hops; a loop or one hop too many counts as a failed
//     attempt. A redirect to a configured server makes it the sticky one.
//   - Any other answer ends the call: a 2xx is decoded into the caller's
//     value, and an error answer becomes a *tandem.Error, the server's own
//     when its body is tandem's JSON envelope.
//
// Direct sends one request to one server, with none of the above.
//
// # Credentials
//
// When Config.Token is set, every request to a configured server carries
// "Authorization: Bearer <token>". A request to any other host, a redirect's
// target or a Direct URL whose endpoint (scheme, host and port, see
// endpoint.KeyOf) is not among the configured servers, carries no
// credentials at all: neither the token nor an Authorization or Cookie header
// the caller put in Call.Header. Credentials never follow a redirect out of
// the configured server list.
//
// # Revisions
//
// Any server may answer reads from its own view of etcd. So that a caller
// reads its own writes across servers, a Transport remembers the highest
// revision any response has reported in RevisionHeader, and sends it in
// MinRevisionHeader on every GET: a server whose view is older must catch up
// (or refuse) before it answers.
package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
)

// Headers of tandem's read-your-writes protocol.
const (
	// RevisionHeader is the response header in which a server reports the
	// etcd revision its answer reflects (a decimal int64).
	RevisionHeader = "X-Tandem-Revision"
	// MinRevisionHeader is the request header in which a Transport asks a
	// server for a view at least as recent as the revision given (a decimal
	// int64): the highest it has seen in RevisionHeader.
	MinRevisionHeader = "X-Tandem-Min-Revision"
)

// RefusedHeader is the request header in which a Transport lists, comma
// separated, the servers (endpoint keys, scheme://host:port) that refused a
// connection earlier in the same call: their processes are gone. A standby
// that would send the client to one of them holds the request instead until
// another owner is in place (a crash is being detected), rather than
// redirecting it to a dead port. It is evidence for routing only: no server
// deposes anyone on a client's word.
const RefusedHeader = "X-Tandem-Refused"

// DefaultTimeout bounds each HTTP request of the default HTTP client: a
// server that accepts a connection and then hangs costs at most this long
// before the transport moves on to the next one. It also caps an attempt's
// timeout however often it has doubled.
const DefaultTimeout = 10 * time.Second

// DefaultAttemptTimeout is the default Config.AttemptTimeout. A paused or
// cut-off active is replaced in about 0.8 s (docs/HA.md, agreement); a
// client stuck in a request to it moves on after this long, and a standby
// holds the next attempt until the new active answers (api.HoldForOwner,
// shorter than this), so the client is served soon after the failover
// rather than a whole second after the pause. A slow server that is not hung
// gets longer from the second timed-out attempt on (the bound doubles).
const DefaultAttemptTimeout = 500 * time.Millisecond

// MaxRedirects is how many 307s or 308s one attempt follows. A standby
// redirects once, to the active; more than that means the servers disagree
// about who is active (an election is under way) or a loop, and the attempt
// counts as failed.
const MaxRedirects = 3

// Limits on what a Transport reads from a response.
const (
	maxBodyBytes    = 64 << 20 // a page of 1000 jobs is far below this
	maxErrBodyBytes = 64 << 10
	errSnippetBytes = 200
)

// credentialHeaders are the request headers that never go to a host outside
// the configured servers.
var credentialHeaders = []string{"Authorization", "Cookie"}

// Config configures a Transport. Only Servers is required.
type Config struct {
	// Servers are the base URLs of the cluster's servers, such as
	// "http://127.0.0.1:7070". Each must be http or https with a host; a
	// trailing slash is trimmed. The first is tried first. They are also
	// the only hosts credentials are sent to.
	Servers []string

	// HTTPClient sends the requests. When nil, the transport uses
	// NewHTTPClient with a Timeout of DefaultTimeout. The transport follows
	// redirects itself, so it uses a copy of HTTPClient whose CheckRedirect
	// stops at the first redirect. For stream calls its Timeout bounds only
	// the wait for the response's headers.
	HTTPClient *http.Client

	// TLS configures https servers (the CA, a client certificate) when
	// HTTPClient is nil; with an HTTPClient, configure its transport
	// instead (HTTPOptions.TLS).
	TLS *tls.Config

	// Backoff paces retries across servers; the zero value means
	// DefaultBackoff().
	Backoff Backoff

	// UserAgent, when set, is sent as the User-Agent header.
	UserAgent string

	// AttemptTimeout bounds one attempt at one server on the failover path
	// (DefaultAttemptTimeout when zero; negative means no bound but the
	// HTTP client's), doubling from the second attempt that timed out. A
	// hung active costs a caller about this long before it tries the next
	// server.
	AttemptTimeout time.Duration

	// Token, when set, is sent as "Authorization: Bearer <Token>" on every
	// request to a configured server, and never to any other host.
	Token string

	// Sleep waits d between retries, or less when ctx is done, returning
	// ctx.Err() then; nil means Sleep (a timer). Tests replace it to record
	// the sleeps instead of taking them.
	Sleep func(ctx context.Context, d time.Duration) error

	// RandN returns a uniform integer in [0, n) for the jitter; nil means
	// math/rand/v2's Int64N. Tests replace it to fix the jitter.
	RandN func(n int64) int64
}

// server is one configured server.
type server struct {
	base string // normalized base URL, no trailing slash
	key  string // scheme://host:port, to recognise a redirect target
}

// Transport sends calls to a tandem cluster, failing over between its
// servers. It is safe for concurrent use; the server it sticks to and the
// highest revision it has seen are shared by all calls.
type Transport struct {
	servers   []server
	hc        *http.Client
	backoff   Backoff
	userAgent string
	token     string

	// streamHC is hc without its overall timeout, for responses read as
	// streams (a followed log stays open as long as its attempt runs);
	// headerTimeout, hc's timeout, bounds the wait for their headers instead.
	streamHC       *http.Client
	headerTimeout  time.Duration
	attemptTimeout time.Duration

	sleep func(ctx context.Context, d time.Duration) error
	randN func(n int64) int64

	revision atomic.Int64 // the highest RevisionHeader seen

	mu      sync.Mutex
	current int // index in servers of the server calls go to first
}

// New returns a Transport for the servers in cfg, or an invalid_argument
// *tandem.Error naming the first problem with cfg. It does not contact any
// server.
func New(cfg Config) (*Transport, error) {
	if len(cfg.Servers) == 0 {
		return nil, tandem.Errorf(tandem.EINVALID, "no servers given: give at least one server URL, such as http://127.0.0.1:7070")
	}
	t := &Transport{
		userAgent: cfg.UserAgent,
		token:     cfg.Token,
		backoff:   cfg.Backoff,
		sleep:     cfg.Sleep,
		randN:     cfg.RandN,
	}
	if t.sleep == nil {
		t.sleep = Sleep
	}
	if t.randN == nil {
		t.randN = rand.Int64N
	}
	if t.backoff == (Backoff{}) {
		t.backoff = DefaultBackoff()
	}
	if err := t.backoff.Validate(); err != nil {
		return nil, err
	}
	if strings.ContainsFunc(cfg.Token, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		// Said now rather than as a failed request on every attempt; the
		// message leaves the token out, as it is a secret.
		return nil, tandem.Errorf(tandem.EINVALID, "the token contains a control character, which cannot be sent in an HTTP header")
	}
	seen := make(map[string]string)
	for _, s := range cfg.Servers {
		e, err := endpoint.Parse(s)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[e.Key]; ok {
			return nil, tandem.Errorf(tandem.EINVALID, "server %q is listed twice (also as %q)", s, prev)
		}
		seen[e.Key] = s
		t.servers = append(t.servers, server{base: e.Base, key: e.Key})
	}
	if cfg.HTTPClient != nil {
		hc := *cfg.HTTPClient
		t.hc = &hc
	} else {
		t.hc = NewHTTPClient(HTTPOptions{Timeout: DefaultTimeout, TLS: cfg.TLS})
	}
	t.hc.CheckRedirect = noRedirects
	stream := *t.hc
	stream.Timeout = 0
	t.streamHC, t.headerTimeout = &stream, t.hc.Timeout
	switch {
	case cfg.AttemptTimeout == 0:
		t.attemptTimeout = DefaultAttemptTimeout
	case cfg.AttemptTimeout > 0:
		t.attemptTimeout = cfg.AttemptTimeout
	}
	return t, nil
}

// Servers returns the normalized base URLs of the configured servers, in
// their configured order.
func (t *Transport) Servers() []string {
	out := make([]string, len(t.servers))
	for i, s := range t.servers {
		out[i] = s.base
	}
	return out
}

// Backoff returns the backoff the transport retries with, defaults applied.
func (t *Transport) Backoff() Backoff { return t.backoff }

// Current returns the base URL of the server the transport currently sticks
// to: the last one that answered a call needing the active, or the first
// configured server.
func (t *Transport) Current() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.servers[t.current].base
}

// CurrentIndex returns the index, in Servers(), of the server Current
// returns.
func (t *Transport) CurrentIndex() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.current
}

// ServerIndex returns the index, in Servers(), of the configured server
// that u belongs to (same endpoint.KeyOf), or -1 if u is on no configured
// server.
func (t *Transport) ServerIndex(u *url.URL) int {
	k := endpoint.KeyOf(u)
	for i, s := range t.servers {
		if s.key == k {
			return i
		}
	}
	return -1
}

// Revision returns the highest revision any response has reported in
// RevisionHeader, or 0 if none has.
func (t *Transport) Revision() int64 { return t.revision.Load() }

// noteRevision raises the remembered revision to v's, ignoring a value that
// is not a decimal int64 (a malformed header must not break reads) and one
// no higher than the remembered, which starts at 0.
func (t *Transport) noteRevision(v string) {
	if v == "" {
		return
	}
	r, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return
	}
	for {
		cur := t.revision.Load()
		if r <= cur || t.revision.CompareAndSwap(cur, r) {
			return
		}
	}
}

func (t *Transport) stick(i int) {
	t.mu.Lock()
	t.current = i
	t.mu.Unlock()
}

// advance moves the shared sticky server past failed, unless a concurrent
// call has already moved it, so that N goroutines failing on one dead server
// move the transport one step, not N.
func (t *Transport) advance(failed int) {
	t.mu.Lock()
	if t.current == failed {
		t.current = (failed + 1) % len(t.servers)
	}
	t.mu.Unlock()
}

// Call is one logical API call.
type Call struct {
	// Op names the call in errors, such as "submit job".
	Op string
	// Method is the HTTP method.
	Method string
	// Path is the request's path, escaped, with a leading slash.
	Path string
	// Query, when not empty, is sent as the request's query.
	Query url.Values
	// Body, when not nil, is sent as the request's JSON body, the same on
	// every attempt and redirect.
	Body []byte
	// Header holds extra request headers (an idempotency key, an Accept),
	// sent on every attempt and redirect; credential headers among them go
	// only to configured servers.
	Header http.Header
	// Active says the call needs the active server: a server that answers
	// it becomes the sticky one. Otherwise any server can answer
	// (membership, history) and the answer says nothing about who is active.
	Active bool
	// Stream says a 2xx answer is handed to the caller unread (see
	// Exchange), and the request is bounded by the HTTP client's timeout
	// only until its headers arrive, and not by AttemptTimeout.
	Stream bool
	// Tries is set by Do, Exchange and Direct to the number of attempts the
	// call took.
	Tries int
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

// Do runs c with failover (see the package doc): it starts at the sticky
// server and, while an attempt fails in a way another server might not,
// moves round-robin to the next server, sleeping per the backoff between
// retries. Other answers, successes and errors alike, end the call. out, if
// non-nil, receives the decoded 2xx body. It blocks until then; the error is
// a *tandem.Error (the server's answer, or unavailable once the attempts are
// exhausted), or, when ctx is done first, an error wrapping
// context.Cause(ctx) that says what the servers answered until then. Do is
// for calls with Stream unset; use Exchange for streams.
func (t *Transport) Do(ctx context.Context, c *Call, out any) error {
	resp, err := t.Exchange(ctx, c, out)
	if resp != nil {
		resp.Body.Close() // a stream call through Do: nobody else would close it
	}
	return err
}

// Exchange is Do, returning as well, for a call with Stream set, the 2xx
// response whose body the caller must read and close (nil when the error is
// not nil, and always nil for other calls). Closing the body releases the
// request.
func (t *Transport) Exchange(ctx context.Context, c *Call, out any) (*http.Response, error) {
	var failures failureLog
	idx := t.CurrentIndex()
	timeouts := 0
	hung := make(map[int]bool)       // servers that let an attempt of this call time out or refused it
	refused := make(map[string]bool) // endpoint keys that refused a connection in this call
	for attempt := 1; attempt <= t.backoff.Attempts; attempt++ {
		c.Tries = attempt
		if attempt > 1 {
			if d := t.backoff.Delay(attempt - 1); d > 0 {
				if err := t.sleep(ctx, Jitter(d, t.randN)); err != nil {
					return nil, ctxError(ctx, c.Op, &failures)
				}
			}
		}
		if ctx.Err() != nil {
			return nil, ctxError(ctx, c.Op, &failures)
		}
		// A server that hangs (paused, cut off) accepts the connection and
		// never answers: bound each attempt, so the call moves on within
		// about AttemptTimeout instead of waiting out the HTTP timeout. The
		// bound doubles from the second timed-out attempt on, for a server
		// that is only slow; the first repeat stays short because a standby
		// may still redirect to the hung active until a new one is elected.
		// Streams are bounded until their headers by sendStream.
		actx, cancel := ctx, context.CancelFunc(func() {})
		if !c.Stream && t.attemptTimeout > 0 {
			actx, cancel = context.WithTimeout(ctx, min(t.attemptTimeout<<max(0, timeouts-1), DefaultTimeout))
		}
		res := t.attempt(actx, t.servers[idx].base, c, out, refused)
		if actx.Err() != nil && ctx.Err() == nil {
			timeouts = min(timeouts+1, 4)
			hung[idx] = true
		}
		if res.refused != "" {
			// Nothing listens there: pass over it for the rest of the call
			// if it is one of ours, and tell the servers asked next.
			refused[res.refused] = true
			if res.refused == t.servers[idx].key {
				hung[idx] = true
			}
		}
		cancel()
		if res.retry {
			if ctx.Err() != nil {
				// The attempt failed because the caller gave up, not the server.
				return nil, ctxError(ctx, c.Op, &failures)
			}
			failures.add(t.servers[idx].base, res.msg)
			t.advance(idx)
			idx = nextServer(idx, len(t.servers), hung)
			continue
		}
		if c.Active {
			if res.answeredBy >= 0 {
				t.stick(res.answeredBy)
			} else {
				t.stick(idx) // redirected to a URL we were not given; idx leads there
			}
		}
		return res.resp, res.err
	}
	who := "no active server"
	if !c.Active {
		who = "no server"
	}
	return nil, tandem.Errorf(tandem.EUNAVAILABLE, "%s answered after %d attempts (%s)", who, t.backoff.Attempts, failures.String())
}

// ctxError reports a call abandoned because ctx is done, wrapping ctx's
// cause (ctx.Err() unless the caller gave one, see context.WithTimeoutCause)
// and saying what the servers answered until then.
func ctxError(ctx context.Context, op string, failures *failureLog) error {
	err := context.Cause(ctx)
	if failures == nil || len(failures.order) == 0 {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w (last errors: %s)", op, err, failures)
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

// withheldToken explains a 401 from a server outside the configured servers
// (what says how the call got there): the token was withheld there (the
// credential rule), and listing that server is the way to let it go there.
func withheldToken(err error, u *url.URL, what string) error {
	var te *tandem.Error
	if !errors.As(err, &te) {
		return err
	}
	host := u.Scheme + "://" + u.Host
	return &tandem.Error{Code: te.Code, Message: fmt.Sprintf("%s (%s %s is not among the configured servers, so the token was not sent there: add it to the server list, e.g. $TANDEM_SERVERS)", te.Message, what, host)}
}

// result is the outcome of one attempt.
type result struct {
	err        error // the call's answer when !retry
	retry      bool  // worth trying another server
	msg        string
	cause      error          // the transport error behind a retry, if any
	refused    string         // the endpoint key that refused the connection, if that was the failure
	answeredBy int            // index of the configured server that gave the final answer, or -1
	resp       *http.Response // a stream call's 2xx answer, body unread
}

// attempt sends c to base and follows up to MaxRedirects redirects,
// telling the servers which ones refused a connection earlier in the call
// (RefusedHeader).
func (t *Transport) attempt(ctx context.Context, base string, c *Call, out any, refused map[string]bool) result {
	target := base + c.Path
	if len(c.Query) > 0 {
		target += "?" + c.Query.Encode()
	}
	header := c.Header
	if len(refused) > 0 {
		keys := make([]string, 0, len(refused))
		for k := range refused {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		header = c.Header.Clone()
		if header == nil {
			header = http.Header{}
		}
		header.Set(RefusedHeader, strings.Join(keys, ","))
	}
	visited := map[string]bool{}
	for hops := 0; ; hops++ {
		visited[target] = true
		resp, err := t.send(ctx, c.Method, target, c.Body, header, c.Stream)
		if err != nil {
			msg := endpoint.Describe(err)
			if hops > 0 {
				msg = "redirected to " + target + ": " + msg
			}
			res := result{retry: true, msg: msg, cause: err}
			if u, perr := url.Parse(target); perr == nil && errors.Is(err, syscall.ECONNREFUSED) {
				res.refused = endpoint.KeyOf(u)
			}
			return res
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
			case hops == MaxRedirects:
				return result{retry: true, msg: fmt.Sprintf("more than %d redirects (last to %s)", MaxRedirects, next)}
			}
			target = next.String()
			continue
		}
		if c.Stream && resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return result{resp: resp, answeredBy: t.ServerIndex(u)}
		}
		res := finish(resp, out)
		if res.retry && hops > 0 {
			res.msg = "redirected to " + target + ": " + res.msg
		}
		res.answeredBy = t.ServerIndex(u)
		if res.answeredBy < 0 && resp.StatusCode == http.StatusUnauthorized && t.token != "" {
			res.err = withheldToken(res.err, u, "a redirect led to")
		}
		return res
	}
}

// send makes one HTTP request. Every attempt and every redirect gets a fresh
// request with the same method, body and headers, so an idempotency key
// travels with each; credentials go only to configured servers, and GETs
// carry the highest revision seen. A stream request goes through sendStream.
func (t *Transport) send(ctx context.Context, method, target string, body []byte, header http.Header, stream bool) (*http.Response, error) {
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
	if t.userAgent != "" {
		req.Header.Set("User-Agent", t.userAgent)
	}
	if t.ServerIndex(req.URL) >= 0 {
		if t.token != "" {
			req.Header.Set("Authorization", "Bearer "+t.token)
		}
	} else {
		// A redirect (or a Direct URL) out of the configured servers: the
		// host may be anyone's, so no credential goes there (the package's
		// credential rule).
		for _, h := range credentialHeaders {
			req.Header.Del(h)
		}
	}
	if method == http.MethodGet {
		if rev := t.revision.Load(); rev > 0 {
			req.Header.Set(MinRevisionHeader, strconv.FormatInt(rev, 10))
		}
	}
	var resp *http.Response
	if stream {
		resp, err = t.sendStream(req)
	} else {
		resp, err = t.hc.Do(req)
	}
	if err != nil {
		return nil, err
	}
	t.noteRevision(resp.Header.Get(RevisionHeader))
	return resp, nil
}

// sendStream sends req with t.streamHC, which has no overall timeout, so
// that a response read as a stream may stay open as long as it has
// something to bring. t.headerTimeout bounds the wait for the response's
// headers instead: a hung server costs a stream request no more than any
// other. The returned body's Close releases the request's context.
func (t *Transport) sendStream(req *http.Request) (*http.Response, error) {
	if t.headerTimeout <= 0 {
		return t.streamHC.Do(req)
	}
	ctx, cancel := context.WithCancel(req.Context())
	timer := time.AfterFunc(t.headerTimeout, cancel)
	resp, err := t.streamHC.Do(req.WithContext(ctx))
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

// errHeaderTimeout is sendStream's error for headers that took longer than
// the HTTP client's timeout; endpoint.Describe reports it as a timeout.
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
func finish(resp *http.Response, out any) result {
	defer resp.Body.Close()
	origin := resp.Request.URL.Scheme + "://" + resp.Request.URL.Host
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
		if err != nil {
			// The server may have done the work; the retry is safe because
			// reads are idempotent and submissions carry an idempotency key.
			return result{retry: true, msg: "reading the response: " + endpoint.Describe(err), cause: err}
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
	switch {
	case retryableStatus(status):
		code = tandem.EUNAVAILABLE
	case status == http.StatusGone: // a proxy's own 410 still means gone for good
		code = tandem.EREMOVED
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
