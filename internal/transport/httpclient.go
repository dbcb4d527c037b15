package transport

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// DefaultDialTimeout bounds connecting to a server whose host does not
// answer at all (a machine that is down drops SYNs instead of refusing them).
const DefaultDialTimeout = 3 * time.Second

// maxIdleConnsPerHost is high because one process (a client used by many
// goroutines, an agent with a session per server) talks mostly to a few
// servers, often concurrently; Go's default of 2 would reconnect all the time.
const maxIdleConnsPerHost = 64

// HTTPOptions configures NewHTTPClient. The zero value is a client with no
// overall timeout that honours the proxy environment variables.
type HTTPOptions struct {
	// Timeout bounds each request as a whole, answer body included
	// (http.Client.Timeout); zero means no bound but the caller's context.
	Timeout time.Duration

	// ResponseHeaderTimeout bounds the wait for a response's headers once
	// the request is written; zero means no bound of its own. It suits
	// streams, whose bodies may legitimately take as long as they like.
	ResponseHeaderTimeout time.Duration

	// DialTimeout bounds connecting; zero means DefaultDialTimeout.
	DialTimeout time.Duration

	// NoProxy makes the client connect to servers directly, ignoring
	// HTTP_PROXY and its friends. Agents set it: a proxy in the way would
	// hold, cut or buffer their long polls.
	NoProxy bool

	// TLS, when set, is the configuration for https URLs: the CA to verify
	// servers and agents against and the certificate to present (see
	// pki.ClientConfig). Nil means the system's roots and no client
	// certificate. Plain http URLs are unaffected.
	TLS *tls.Config
}

// NewHTTPClient returns the *http.Client a tandem process should use to talk
// to tandem servers and agents: dial timeout, TCP keep-alives and enough idle
// connections per host for concurrent use, configured by o. It never follows
// redirects itself (its CheckRedirect returns http.ErrUseLastResponse): a
// Transport follows them, deciding at each hop which headers may go on. The
// returned client is safe for concurrent use and shares nothing with other
// clients it returns.
func NewHTTPClient(o HTTPOptions) *http.Client {
	dial := o.DialTimeout
	if dial <= 0 {
		dial = DefaultDialTimeout
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext
	t.MaxIdleConnsPerHost = maxIdleConnsPerHost
	t.ResponseHeaderTimeout = o.ResponseHeaderTimeout
	if o.NoProxy {
		t.Proxy = nil
	}
	if o.TLS != nil {
		t.TLSClientConfig = o.TLS.Clone()
	}
	return &http.Client{
		Transport:     t,
		Timeout:       o.Timeout,
		CheckRedirect: noRedirects,
	}
}

// noRedirects is the CheckRedirect of every client a Transport uses.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
