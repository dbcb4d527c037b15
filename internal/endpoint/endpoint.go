// Package endpoint parses the server URLs that the client and the agent fail
// over between, and words transport errors for the people reading them.
package endpoint

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"

	"github.com/tandemhq/tandem"
)

// Endpoint is one server's base URL, normalized, and the key that
// recognises other URLs of the same server (a redirect's target, say).
type Endpoint struct {
	Base string // no trailing slash
	Key  string // scheme://host:port
}

// Parse validates and normalizes one server base URL; a bad one is an
// EINVALID *tandem.Error that says what is wrong.
func Parse(s string) (Endpoint, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil {
		return Endpoint{}, tandem.Errorf(tandem.EINVALID, "server URL %q is malformed: %v", s, errors.Unwrap(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return Endpoint{}, tandem.Errorf(tandem.EINVALID, "server URL %q: the scheme must be http or https, as in http://127.0.0.1:7070", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return Endpoint{}, tandem.Errorf(tandem.EINVALID, "server URL %q has no host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return Endpoint{}, tandem.Errorf(tandem.EINVALID, "server URL %q: a server URL has no user, query or fragment", s)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return Endpoint{Base: u.String(), Key: KeyOf(u)}, nil
}

// KeyOf is what two URLs of the same server have in common: scheme, host
// and port, with the scheme's default port made explicit.
func KeyOf(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[scheme]
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// Describe shortens a transport error to what a person needs to read.
func Describe(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before a complete response"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
