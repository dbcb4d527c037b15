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
// The failover itself lives in internal/transport, shared with the agent:
// with Config.Token set, the client authenticates to the configured servers
// and to no other host, and its reads carry the highest etcd revision it has
// seen, so that whichever server answers them shows the client its own
// writes.
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
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/transport"
)

// DefaultTimeout bounds each HTTP request of the default HTTP client: a server
// that accepts a connection and then hangs costs at most this long before the
// client moves on to the next one.
const DefaultTimeout = transport.DefaultTimeout

// DefaultAttemptTimeout is the default Config.AttemptTimeout.
const DefaultAttemptTimeout = transport.DefaultAttemptTimeout

// Backoff configures the client's retries across servers. Retry number n
// (counting from 1) of a call sleeps nothing for n == 1 and otherwise
// Base*2^(n-2), capped at Max, scaled by a jitter uniform in [1/2, 1]. Its
// fields are Base (the first sleep, before the second retry; > 0), Max (the
// longest sleep; >= Base) and Attempts (attempts in total per call, the
// first included; >= 1).
type Backoff = transport.Backoff

// DefaultBackoff returns the backoff the client uses when Config.Backoff is
// the zero value: Base 20ms, Max 250ms, 40 attempts. That is about 9 seconds
// of retrying, enough to ride out an election, while a server that becomes
// active is found at most about 250ms (one sleep) later.
func DefaultBackoff() Backoff { return transport.DefaultBackoff() }

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

	// Token, when set, is sent as a bearer token ("Authorization: Bearer
	// <Token>") to the configured servers only: never to a host a redirect
	// leads to that is not among Servers, nor to a per-server call's URL
	// (ServerStatus, Health, Transition, Failover) that is not.
	Token string

	// TLS configures https servers when HTTPClient is nil: the CA to
	// verify them against and a client certificate to present (see
	// TLSFiles.Config, and TLSFilesFromEnv for $TANDEM_CACERT,
	// $TANDEM_CLIENT_CERT and $TANDEM_CLIENT_KEY). Nil means the system's
	// roots and no client certificate; http servers are unaffected.
	TLS *tls.Config
}

// Client talks to a tandem cluster, failing over between its servers. It is
// safe for concurrent use; the server it sticks to is shared by all calls.
type Client struct {
	tr *transport.Transport

	// followCheck is how long a followed log stream may bring nothing before
	// FollowJobLogs asks the cluster whether it is still worth waiting on.
	followCheck time.Duration

	// sleep waits d or until ctx is done; randN returns a uniform integer in
	// [0, n). Tests replace both; the transport's retries use them too.
	sleep func(ctx context.Context, d time.Duration) error
	randN func(n int64) int64
}

// New returns a Client for the servers in cfg, or an invalid_argument
// *tandem.Error naming the first problem with cfg. It does not contact any
// server.
func New(cfg Config) (*Client, error) {
	c := &Client{
		sleep:       transport.Sleep,
		randN:       rand.Int64N,
		followCheck: defaultFollowCheck,
	}
	tr, err := transport.New(transport.Config{
		Servers:        cfg.Servers,
		HTTPClient:     cfg.HTTPClient,
		Backoff:        cfg.Backoff,
		UserAgent:      cfg.UserAgent,
		AttemptTimeout: cfg.AttemptTimeout,
		Token:          cfg.Token,
		TLS:            cfg.TLS,
		// Through c, so that what tests set after New takes effect.
		Sleep: func(ctx context.Context, d time.Duration) error { return c.sleep(ctx, d) },
		RandN: func(n int64) int64 { return c.randN(n) },
	})
	if err != nil {
		return nil, err
	}
	c.tr = tr
	return c, nil
}

// Current returns the base URL of the server the client currently sticks to:
// the last one that answered as the active, or the first configured server.
func (c *Client) Current() string { return c.tr.Current() }

// direct sends one request to one server, with no failover, retries or
// redirects: the per-server admin calls act on the server they name. A
// server that gives no answer is an unavailable *tandem.Error.
func (c *Client) direct(ctx context.Context, serverURL, op, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s: encode request: %w", op, err)
		}
	}
	err := c.tr.Direct(ctx, serverURL, &transport.Call{Op: op, Method: method, Path: path, Body: body}, out)
	var na *transport.NoAnswerError
	if errors.As(err, &na) {
		return tandem.Errorf(tandem.EUNAVAILABLE, "%s", na.Error())
	}
	return err
}
