package transport

import (
	"context"
	"net/http"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
)

// NoAnswerError is Direct's error when the server gave no complete answer:
// it could not be reached, the request or the answer timed out, or the
// connection broke. It is not a *tandem.Error, so that a caller can tell a
// server's answer (a *tandem.Error) from the lack of one.
type NoAnswerError struct {
	// Server is the normalized base URL of the server asked.
	Server string
	// Err is the transport's error.
	Err error
	// Reading says the failure came while the answer was read: the server
	// may have acted on the request.
	Reading bool
}

// Error returns the server's URL and the failure as endpoint.Describe
// words it, such as "http://rm1:7070: connection refused".
func (e *NoAnswerError) Error() string {
	if e.Reading {
		return e.Server + ": reading the response: " + endpoint.Describe(e.Err)
	}
	return e.Server + ": " + endpoint.Describe(e.Err)
}

// Unwrap returns the transport's error.
func (e *NoAnswerError) Unwrap() error { return e.Err }

// Direct sends c once to the server at serverURL, which need not be a
// configured server: no failover, no retry, no redirect followed, no
// attempt timeout but the HTTP client's and ctx. It neither reads nor moves
// the sticky server; c.Active and c.Stream are ignored. Credentials go
// with it only if serverURL is a configured server's; a GET carries the
// highest revision seen, and the answer's revision is remembered.
//
// A 2xx answer is decoded into out (if non-nil) and Direct returns nil. Any
// other answer is a *tandem.Error: the server's own when the body is tandem's
// JSON envelope (not_active, say), else one built from the status and body;
// a redirect is an internal one naming its Location. No complete answer is a
// *NoAnswerError. When ctx is done first, the error wraps
// context.Cause(ctx). A serverURL that is not a valid server URL is an
// invalid_argument *tandem.Error, returned before any request is made.
func (t *Transport) Direct(ctx context.Context, serverURL string, c *Call, out any) error {
	e, err := endpoint.Parse(serverURL)
	if err != nil {
		return err
	}
	c.Tries = 1
	target := e.Base + c.Path
	if len(c.Query) > 0 {
		target += "?" + c.Query.Encode()
	}
	resp, err := t.send(ctx, c.Method, target, c.Body, c.Header, false)
	if err != nil {
		if ctx.Err() != nil {
			return ctxError(ctx, c.Op, nil)
		}
		return &NoAnswerError{Server: e.Base, Err: err}
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		drain(resp)
		return tandem.Errorf(tandem.EINTERNAL, "%s: HTTP %d: unexpected redirect to %q", e.Base, resp.StatusCode, resp.Header.Get("Location"))
	}
	res := finish(resp, out)
	if res.cause != nil {
		if ctx.Err() != nil {
			return ctxError(ctx, c.Op, nil)
		}
		return &NoAnswerError{Server: e.Base, Err: res.cause, Reading: true}
	}
	if resp.StatusCode == http.StatusUnauthorized && t.token != "" && t.ServerIndex(resp.Request.URL) < 0 {
		return withheldToken(res.err, resp.Request.URL, "the server")
	}
	return res.err
}

var _ error = (*NoAnswerError)(nil)
