package health

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	defaults := func(kind, target string) Check {
		return Check{Kind: kind, Target: target, Interval: time.Second, Timeout: time.Second, Fall: 3, Rise: 2}
	}
	tests := []struct {
		spec string
		want Check
	}{
		{"exec:/usr/lib/ocf/resource.d/heartbeat/pgsql monitor", defaults(KindExec, "/usr/lib/ocf/resource.d/heartbeat/pgsql monitor")},
		{"exec:/bin/true", defaults(KindExec, "/bin/true")},
		{"tcp:127.0.0.1:5432", defaults(KindTCP, "127.0.0.1:5432")},
		{"tcp:db.example.com:5432", defaults(KindTCP, "db.example.com:5432")},
		{"tcp:[::1]:6379", defaults(KindTCP, "[::1]:6379")},
		{"http:http://127.0.0.1:8080/healthz", defaults(KindHTTP, "http://127.0.0.1:8080/healthz")},
		{"http:https://example.com/ready?deep=1", defaults(KindHTTP, "https://example.com/ready?deep=1")},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := Parse(tt.spec)
			if err != nil {
				t.Fatalf("Parse: got error %v, want none", err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if s := got.String(); s != tt.spec {
				t.Errorf("String: got %q, want %q", s, tt.spec)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		spec string
		want string // in the message
	}{
		{"", "want KIND:TARGET"},
		{"/bin/true", "want KIND:TARGET"},
		{":/bin/true", "want KIND:TARGET"},
		{"ping:10.0.0.1", `unknown kind "ping"`},
		{"HTTP:http://x/", `unknown kind "HTTP"`},
		{"exec:", "missing program"},
		{"exec:   ", "missing program"},
		{"exec:true", `program "true" is not an absolute path`},
		{"exec:./check.sh", `program "./check.sh" is not an absolute path`},
		{"tcp:", "is not HOST:PORT"},
		{"tcp:localhost", `target "localhost" is not HOST:PORT`},
		{"tcp::5432", "has no host"},
		{"tcp:localhost:0", "port 0 out of range 1-65535"},
		{"tcp:localhost:65536", "port 65536 out of range 1-65535"},
		{"tcp:localhost:postgres", `port "postgres" is not a number`},
		{"http:", `URL scheme "" is not http or https`},
		{"http://127.0.0.1/", `URL scheme "" is not http or https: want http:http://`}, // the kind was forgotten
		{"http:ftp://example.com/", `URL scheme "ftp" is not http or https`},
		{"http:http://", "URL has no host"},
		{"http:http:///path", "URL has no host"},
		{"http:http://[::1/", "not a URL"},
		{"http:http://example.com:99999/", "port 99999 out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			c, err := Parse(tt.spec)
			if err == nil {
				t.Fatalf("Parse: got %+v and no error, want an error containing %q", c, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("got error %v, want one wrapping ErrInvalid", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("got error %q, want it to contain %q", msg, tt.want)
			}
			if !strings.HasPrefix(msg, "health check ") {
				t.Errorf("got error %q, want it to name the check", msg)
			}
		})
	}
}

func TestWithDefaults(t *testing.T) {
	got := Check{Kind: KindTCP, Target: "h:1"}.WithDefaults()
	want := Check{Kind: KindTCP, Target: "h:1", Interval: DefaultInterval, Timeout: DefaultTimeout, Fall: DefaultFall, Rise: DefaultRise}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	set := Check{Kind: KindTCP, Target: "h:1", Interval: 5 * time.Second, Timeout: 2 * time.Second, Fall: 1, Rise: 4}
	if got := set.WithDefaults(); got != set {
		t.Errorf("got %+v, want the options as set, %+v", got, set)
	}
}

func TestStringRedactsPassword(t *testing.T) {
	c, err := Parse("http:http://monitor:s3cret@127.0.0.1:8080/status")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.String(), "http:http://monitor:xxxxx@127.0.0.1:8080/status"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestCheckJSON(t *testing.T) {
	c := Check{Kind: KindHTTP, Target: "http://127.0.0.1/", Interval: time.Second, Timeout: time.Second, Fall: 3, Rise: 2, Status: 204, Body: "ok"}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"kind":"http","target":"http://127.0.0.1/","interval":1000000000,"timeout":1000000000,"fall":3,"rise":2,"status":204,"body":"ok"}`
	if string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	script := writeScript(t, dir, "check.sh", "exit 0\n")
	notExec := filepath.Join(dir, "not-exec.sh")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := func(kind, target string) Check { return Check{Kind: kind, Target: target}.WithDefaults() }
	with := func(c Check, f func(*Check)) Check { f(&c); return c }

	valid := []Check{
		ok(KindExec, script),
		ok(KindExec, script+" monitor --depth 10"),
		ok(KindTCP, "127.0.0.1:5432"),
		ok(KindTCP, "localhost:5432"),
		ok(KindTCP, "[::1]:5432"),
		ok(KindHTTP, "http://127.0.0.1:8080/healthz"),
		ok(KindHTTP, "https://localhost/"),
		with(ok(KindHTTP, "http://localhost/"), func(c *Check) { c.Status, c.Body = 301, "moved" }),
		// Timeout may exceed Interval: probes wait for each other.
		with(ok(KindTCP, "localhost:1"), func(c *Check) { c.Interval, c.Timeout = time.Second, 5*time.Second }),
		with(ok(KindTCP, "localhost:1"), func(c *Check) { c.Fall, c.Rise = 1, 1 }),
	}
	for _, c := range valid {
		t.Run("valid "+c.String(), func(t *testing.T) {
			if err := c.Validate(); err != nil {
				t.Errorf("got error %v, want none", err)
			}
		})
	}

	invalid := []struct {
		name  string
		check Check
		is    error  // wrapped by the error
		want  string // in its message
	}{
		{"unknown kind", ok("udp", "127.0.0.1:53"), ErrInvalid, `unknown kind "udp"`},
		{"exec relative", ok(KindExec, "check.sh"), ErrInvalid, "not an absolute path"},
		{"exec missing", ok(KindExec, filepath.Join(dir, "missing.sh")), fs.ErrNotExist, "no such file or directory"},
		{"exec not executable", ok(KindExec, notExec), ErrInvalid, "is not executable (mode -rw-r--r--)"},
		{"exec directory", ok(KindExec, dir), ErrInvalid, "is a directory"},
		{"tcp not host:port", ok(KindTCP, "127.0.0.1"), ErrInvalid, "is not HOST:PORT"},
		{"tcp port range", ok(KindTCP, "127.0.0.1:70000"), ErrInvalid, "port 70000 out of range"},
		{"tcp host does not resolve", ok(KindTCP, "nonexistent.invalid:5432"), ErrUnreachable, "unreachable health target: lookup nonexistent.invalid"},
		{"http not a URL", ok(KindHTTP, "http://%zz/"), ErrInvalid, "not a URL"},
		{"http scheme", ok(KindHTTP, "gopher://127.0.0.1/"), ErrInvalid, `scheme "gopher" is not http or https`},
		{"http no host", ok(KindHTTP, "https:///x"), ErrInvalid, "URL has no host"},
		{"http host does not resolve", ok(KindHTTP, "http://nonexistent.invalid:80/"), ErrUnreachable, "unreachable health URL: lookup nonexistent.invalid"},
		{"interval zero", with(ok(KindTCP, "127.0.0.1:1"), func(c *Check) { c.Interval = 0 }), ErrInvalid, "interval 0s must be positive"},
		{"interval negative", with(ok(KindTCP, "127.0.0.1:1"), func(c *Check) { c.Interval = -time.Second }), ErrInvalid, "interval -1s must be positive"},
		{"timeout zero", with(ok(KindTCP, "127.0.0.1:1"), func(c *Check) { c.Timeout = 0 }), ErrInvalid, "timeout 0s must be positive"},
		{"fall zero", with(ok(KindTCP, "127.0.0.1:1"), func(c *Check) { c.Fall = 0 }), ErrInvalid, "fall 0 must be at least 1"},
		{"rise negative", with(ok(KindTCP, "127.0.0.1:1"), func(c *Check) { c.Rise = -1 }), ErrInvalid, "rise -1 must be at least 1"},
		{"status range", with(ok(KindHTTP, "http://127.0.0.1/"), func(c *Check) { c.Status = 42 }), ErrInvalid, "status 42 out of range 100-599"},
		{"body on tcp", with(ok(KindTCP, "127.0.0.1:1"), func(c *Check) { c.Body = "ok" }), ErrInvalid, "status and body apply only to http checks"},
		{"status on exec", with(ok(KindExec, script), func(c *Check) { c.Status = 200 }), ErrInvalid, "status and body apply only to http checks"},
		{"zero check", Check{}, ErrInvalid, `unknown kind ""`},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check.Validate()
			if err == nil {
				t.Fatalf("got no error, want one containing %q", tt.want)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("got error %v, want one wrapping %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got error %q, want it to contain %q", err, tt.want)
			}
			if prefix := "health check " + `"` + tt.check.String() + `": `; !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("got error %q, want it to start %q", err, prefix)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Check{Kind: KindTCP, Target: "127.0.0.1:0", Interval: -1, Timeout: 0, Fall: 0, Rise: 0, Body: "x"}
	err := c.Validate()
	if err == nil {
		t.Fatal("got no error, want one")
	}
	for _, want := range []string{"port 0 out of range", "status and body", "interval", "timeout", "fall", "rise"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got error %q, want it to contain %q", err, want)
		}
	}
}

func TestValidateCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A cancelled lookup cannot tell whether the host resolves, and says so
	// as unreachable rather than passing a check it could not verify.
	err := Check{Kind: KindTCP, Target: "example.com:80"}.WithDefaults().ValidateContext(ctx)
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.Canceled) {
		t.Errorf("got error %v, want one wrapping ErrUnreachable and context.Canceled", err)
	}
}
