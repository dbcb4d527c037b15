package transport

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestNewHTTPClient(t *testing.T) {
	tests := []struct {
		name      string
		opts      HTTPOptions
		wantProxy bool
	}{
		{"zero", HTTPOptions{}, true},
		{"server client", HTTPOptions{Timeout: DefaultTimeout}, true},
		{"agent", HTTPOptions{NoProxy: true, ResponseHeaderTimeout: 10 * time.Second, DialTimeout: time.Second}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hc := NewHTTPClient(tt.opts)
			if hc.Timeout != tt.opts.Timeout {
				t.Errorf("Timeout: got %v, want %v", hc.Timeout, tt.opts.Timeout)
			}
			tp, ok := hc.Transport.(*http.Transport)
			if !ok {
				t.Fatalf("got transport %T, want *http.Transport", hc.Transport)
			}
			if got := tp.Proxy != nil; got != tt.wantProxy {
				t.Errorf("proxy from the environment: got %v, want %v", got, tt.wantProxy)
			}
			if tp.MaxIdleConnsPerHost != maxIdleConnsPerHost {
				t.Errorf("MaxIdleConnsPerHost: got %d, want %d", tp.MaxIdleConnsPerHost, maxIdleConnsPerHost)
			}
			if tp.ResponseHeaderTimeout != tt.opts.ResponseHeaderTimeout {
				t.Errorf("ResponseHeaderTimeout: got %v, want %v", tp.ResponseHeaderTimeout, tt.opts.ResponseHeaderTimeout)
			}
			if tp == http.DefaultTransport {
				t.Errorf("got http.DefaultTransport, want a transport of its own")
			}
		})
	}
}

func TestNewHTTPClientDoesNotFollowRedirects(t *testing.T) {
	var followed atomic.Bool
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { followed.Store(true) }))
	defer target.Close()
	srv := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusTemporaryRedirect))
	defer srv.Close()
	hc := NewHTTPClient(HTTPOptions{Timeout: 5 * time.Second})
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || followed.Load() {
		t.Errorf("got status %d (followed: %v), want the 307 itself", resp.StatusCode, followed.Load())
	}
}
