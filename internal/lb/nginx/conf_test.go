package nginx

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

var testSettings = settings{
	managed: true, dir: "/var/lib/tandem lb", workers: 2, shutdownTimeout: time.Minute,
	connectTimeout: 2 * time.Second, maxFails: 3, failTimeout: 6 * time.Second, keepalive: 16,
}

// TestRender checks what each mode renders and that parse reads back what
// was applied (these need no nginx).
func TestRender(t *testing.T) {
	a := lb.Server{Name: "a", Addr: "10.0.0.1:8080"}
	b := lb.Server{Name: "b", Addr: "10.0.0.2:8080"}
	c := lb.Server{Name: "c", Addr: "[fd00::3]:8080"}
	up := func(s lb.Server) lb.Server { s.Up = true; return s }
	cases := []struct {
		name    string
		backend lb.Backend
		has     []string
		hasNot  []string
	}{
		{"active", lb.Backend{Name: "tandem", Listen: ":8080", Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{up(a), b, c}},
			[]string{
				"listen *:8080 default_server;",
				"server 10.0.0.1:8080 max_fails=3 fail_timeout=6s; ",
				"server 10.0.0.2:8080 max_fails=3 fail_timeout=6s backup; ",
				"server [fd00::3]:8080 max_fails=3 fail_timeout=6s backup; ",
				"proxy_pass http://tandem_lb_tandem;",
				"error_page 307 = @tandem_lb_follow_tandem;",
				`if ($tandem_lb_location !~ "^http://(10\.0\.0\.1:8080|10\.0\.0\.2:8080|\[fd00::3\]:8080)(/|\?|$)") {`,
				"proxy_next_upstream error timeout http_502 http_503;",
				`location = /.tandem-lb/generation {`,
				`return 200 "5\n";`,
				`pid "/var/lib/tandem lb/nginx.pid";`,
				"worker_processes 2;",
			},
			[]string{"non_idempotent", "hash"}},
		{"active, sticky ignored", lb.Backend{Name: "web", Listen: "127.0.0.1:80", Mode: lb.ModeActive, Sticky: true, Servers: []lb.Server{a, up(b)}},
			[]string{"server 10.0.0.1:8080 max_fails=3 fail_timeout=6s backup;"}, []string{"hash"}},
		{"active, none up", lb.Backend{Name: "tandem", Listen: ":8080", Mode: lb.ModeActive, Servers: []lb.Server{a, b}},
			[]string{"server 10.0.0.1:8080 max_fails=3 fail_timeout=6s; ", "server 10.0.0.2:8080 max_fails=3 fail_timeout=6s; ", `"none_up":true`},
			[]string{"backup", " down;"}},
		{"all, sticky", lb.Backend{Name: "svc.1", Listen: ":9000", Mode: lb.ModeAll, Sticky: true, Servers: []lb.Server{up(a), up(b), c}},
			[]string{"hash $remote_addr consistent;", "server [fd00::3]:8080 max_fails=3 fail_timeout=6s down; ", "upstream tandem_lb_svc.1 {"},
			[]string{"backup"}},
		{"no server", lb.Backend{Name: "empty", Listen: ":9001", Mode: lb.ModeAll},
			[]string{"return 503;", "listen *:9001 default_server;"}, []string{"upstream", "proxy_pass"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := lb.Desired{Backends: []lb.Backend{tc.backend}, Rev: 42}
			if err := check(d); err != nil {
				t.Fatal(err)
			}
			text := render(d, 5, testSettings)
			for _, s := range tc.has {
				if !strings.Contains(text, s) {
					t.Errorf("rendered config lacks %q:\n%s", s, text)
				}
			}
			for _, s := range tc.hasNot {
				if strings.Contains(text, s) {
					t.Errorf("rendered config has %q:\n%s", s, text)
				}
			}
			p, err := parse(text)
			if err != nil {
				t.Fatal(err)
			}
			if p.gen != 5 || !reflect.DeepEqual(p.d, d) {
				t.Errorf("parse: got generation %d %+v, want 5 %+v", p.gen, p.d, d)
			}
		})
	}

	t.Run("nginx -t accepts them all", func(t *testing.T) {
		bin := requireNginx(t)
		s := testSettings
		s.dir = testDir(t)
		if err := os.Mkdir(filepath.Join(s.dir, "tmp"), 0o755); err != nil {
			t.Fatal(err)
		}
		var d lb.Desired
		for i, tc := range cases {
			tc.backend.Name = fmt.Sprintf("%s%d", tc.backend.Name, i)
			tc.backend.Listen = fmt.Sprintf("127.0.0.1:%d", 1+i) // nginx -t binds nothing
			d.Backends = append(d.Backends, tc.backend)
		}
		if err := check(d); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(s.dir, "nginx.conf")
		if err := os.WriteFile(file, []byte(render(d, 1, s)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-t", "-q", "-p", s.dir+"/", "-c", file).CombinedOutput(); err != nil {
			t.Fatalf("nginx -t: %v: %s", err, out)
		}
	})
	t.Run("external renders blocks only", func(t *testing.T) {
		s := testSettings
		s.managed = false
		text := render(lb.Desired{Backends: []lb.Backend{cases[0].backend}}, 1, s)
		for _, top := range []string{"http {", "events {", "pid ", "error_log", "daemon"} {
			if strings.Contains(text, top) {
				t.Errorf("external config has %q", top)
			}
		}
	})
	t.Run("not ours", func(t *testing.T) {
		if _, err := parse("http { }\n"); err == nil {
			t.Error("parse of a file without a header: got no error")
		}
	})
}

// TestFollowRE: only a Location at one of the backend's servers is
// followed (Go's regexp reads this pattern as PCRE does).
func TestFollowRE(t *testing.T) {
	servers := []lb.Server{{Addr: "127.0.0.1:9001"}, {Addr: "[::1]:9002"}}
	re := regexp.MustCompile(followRE("http", servers))
	for loc, want := range map[string]bool{
		"http://127.0.0.1:9001/v1/jobs?x=1": true,
		"http://127.0.0.1:9001":             true,
		"http://127.0.0.1:9001?x":           true,
		"http://[::1]:9002/":                true,
		"http://127.0.0.1:90011/":           false,
		"http://127.0.0.1:9001.evil.com/":   false,
		"http://127.0.0.109001/":            false,
		"https://127.0.0.1:9001/":           false,
		"/relative":                         false,
	} {
		if got := re.MatchString(loc); got != want {
			t.Errorf("%q: got %v, want %v", loc, got, want)
		}
	}
	// A TLS backend follows https only: a standby of a TLS cluster points
	// at https, and an http Location would take the request out of TLS.
	re = regexp.MustCompile(followRE("https", servers))
	for loc, want := range map[string]bool{
		"https://127.0.0.1:9001/v1/jobs": true,
		"https://[::1]:9002":             true,
		"http://127.0.0.1:9001/v1/jobs":  false,
		"https://127.0.0.1:9001.evil/":   false,
	} {
		if got := re.MatchString(loc); got != want {
			t.Errorf("https backend, %q: got %v, want %v", loc, got, want)
		}
	}
}

func TestProbeAddr(t *testing.T) {
	for in, want := range map[string]string{
		":8080":          "127.0.0.1:8080",
		"*:8080":         "127.0.0.1:8080",
		"0.0.0.0:8080":   "127.0.0.1:8080",
		"[::]:8080":      "[::1]:8080",
		"10.1.2.3:80":    "10.1.2.3:80",
		"8080":           "127.0.0.1:8080",
		"localhost:8080": "localhost:8080",
	} {
		if got := probeAddr(in); got != want {
			t.Errorf("probeAddr(%q): got %q, want %q", in, got, want)
		}
	}
}
