package transport

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
)

const testToken = "s3cret"

// The credential rule: a request to a configured server carries the token;
// a request a redirect sends out of the configured servers carries no
// credentials at all.
func TestCredentialsFollowRedirectsOnlyToConfiguredServers(t *testing.T) {
	tests := []struct {
		name       string
		targetIsIn bool // the redirect's target is a configured server
		wantAuth   string
	}{
		{"to an unlisted server", false, ""},
		{"to a listed server", true, "Bearer " + testToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			target := serve(t, rec, "target", answer("target"))
			a := serve(t, rec, "a", redirectTo(func() string { return target.URL }))
			servers := []string{a.URL}
			if tt.targetIsIn {
				servers = append(servers, target.URL)
			}
			tr := newTestTransport(t, rec, func(c *Config) { c.Token = testToken }, servers...)
			c := submit()
			// Credentials the caller adds obey the same rule.
			c.Header.Set("Cookie", "session=1")
			var got reply
			if err := tr.Do(context.Background(), c, &got); err != nil || got.Server != "target" {
				t.Fatalf("Do: got %+v, %v, want the target's answer", got, err)
			}
			if got := rec.last(t, "a").header.Get("Authorization"); got != "Bearer "+testToken {
				t.Errorf("configured server a: got Authorization %q, want %q", got, "Bearer "+testToken)
			}
			r := rec.last(t, "target")
			if got := r.header.Get("Authorization"); got != tt.wantAuth {
				t.Errorf("redirect target: got Authorization %q, want %q", got, tt.wantAuth)
			}
			if got, want := r.header.Get("Cookie") != "", tt.targetIsIn; got != want {
				t.Errorf("redirect target: got a Cookie %v, want %v", got, want)
			}
			if got := r.header.Get("Idempotency-Key"); got != "k-1" {
				t.Errorf("redirect target: got Idempotency-Key %q, want k-1 (only credentials are withheld)", got)
			}
		})
	}
}

// A caller's own Authorization header, like the token, never leaves the
// configured servers, even with no token configured.
func TestCallersAuthorizationStaysWithConfiguredServers(t *testing.T) {
	rec := &recorder{}
	target := serve(t, rec, "target", answer("target"))
	a := serve(t, rec, "a", redirectTo(func() string { return target.URL }))
	tr := newTestTransport(t, rec, nil, a.URL)
	c := get("/v1/jobs")
	c.Header = http.Header{"Authorization": {"Basic dTpw"}}
	if err := tr.Do(context.Background(), c, nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t, "a").header.Get("Authorization"); got != "Basic dTpw" {
		t.Errorf("configured server: got Authorization %q, want the caller's", got)
	}
	if got := rec.last(t, "target").header.Get("Authorization"); got != "" {
		t.Errorf("unlisted redirect target: got Authorization %q, want none", got)
	}
}

func TestNoTokenNoAuthorization(t *testing.T) {
	rec := &recorder{}
	a := serve(t, rec, "a", answer("a"))
	tr := newTestTransport(t, rec, nil, a.URL)
	if err := tr.Do(context.Background(), get("/"), nil); err != nil {
		t.Fatal(err)
	}
	if got := rec.last(t, "a").header.Values("Authorization"); len(got) != 0 {
		t.Errorf("got Authorization %q without a token, want none", got)
	}
}

func TestDirectSendsCredentialsOnlyToConfiguredServers(t *testing.T) {
	rec := &recorder{}
	listed := serve(t, rec, "listed", answer("listed"))
	unlisted := serve(t, rec, "unlisted", answer("unlisted"))
	tr := newTestTransport(t, rec, func(c *Config) { c.Token = testToken }, listed.URL)
	ctx := context.Background()
	for _, tt := range []struct {
		name, url, wantAuth string
	}{
		{"listed", listed.URL + "/", "Bearer " + testToken}, // the trailing slash is the same server
		{"unlisted", unlisted.URL, ""},
	} {
		c := get("/v1/ha/state")
		c.Header = http.Header{"Cookie": {"session=1"}}
		if err := tr.Direct(ctx, tt.url, c, nil); err != nil {
			t.Fatalf("Direct(%s): %v", tt.name, err)
		}
		r := rec.last(t, tt.name)
		if got := r.header.Get("Authorization"); got != tt.wantAuth {
			t.Errorf("Direct to the %s server: got Authorization %q, want %q", tt.name, got, tt.wantAuth)
		}
		if got, want := r.header.Get("Cookie") != "", tt.wantAuth != ""; got != want {
			t.Errorf("Direct to the %s server: got a Cookie %v, want %v", tt.name, got, want)
		}
	}
}

// A 401 from a server that a redirect led to outside the configured
// servers says why: the token was withheld there, and listing the server
// lets it go.
func TestWithheldTokenExplained(t *testing.T) {
	rec := &recorder{}
	target := serve(t, rec, "target", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, tandem.Errorf(tandem.EUNAUTHENTICATED, "server rm3 requires a token"))
	}))
	a := serve(t, rec, "a", redirectTo(func() string { return target.URL }))
	tr := newTestTransport(t, rec, func(c *Config) { c.Token = testToken }, a.URL)
	err := tr.Do(context.Background(), get("/v1/jobs"), nil)
	if tandem.ErrorCode(err) != tandem.EUNAUTHENTICATED || !strings.Contains(err.Error(), "token was not sent there") ||
		!strings.Contains(err.Error(), target.URL) {
		t.Fatalf("got %v; want the 401 explained, naming %s", err, target.URL)
	}
	if got := rec.last(t, "target").header.Get("Authorization"); got != "" {
		t.Fatalf("the unlisted server got Authorization %q", got)
	}
}
