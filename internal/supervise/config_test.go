package supervise

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/supervise/health"
)

// validService is a service that passes Validate; each case breaks one
// thing of it.
func validService() Service {
	return Service{Name: "web", Command: []string{"/bin/sleep", "1000"}, Fencing: FencingSelf}.WithDefaults()
}

func validConfig() Config {
	c := DefaultConfig()
	c.Node, c.URL, c.SelfFenceMargin, c.Services = "n1", "http://127.0.0.1:7480", 500*time.Millisecond, []Service{validService()}
	return c
}

func TestConfigValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config: got %v, want nil", err)
	}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"no node", func(c *Config) { c.Node = "" }, `--node: invalid node name ""`},
		{"bad node", func(c *Config) { c.Node = "n 1" }, `--node: invalid node name "n 1"`},
		{"bad cluster", func(c *Config) { c.Cluster = "a/b" }, `--cluster: invalid cluster name "a/b"`},
		{"no slot", func(c *Config) { c.Slots = 0 }, "slots 0: must be at least 1"},
		{"lease TTL not whole seconds", func(c *Config) { c.LeaseTTL = 1500 * time.Millisecond }, "lease TTL 1.5s: use whole seconds"},
		{"lease TTL under a second", func(c *Config) { c.LeaseTTL = 0 }, "lease TTL 0s: use whole seconds, at least 1s"},
		{"margin as long as the TTL", func(c *Config) { c.SelfFenceMargin = c.LeaseTTL }, "self-fence margin 2s: must be from 0 to less than the lease TTL 2s"},
		{"negative margin", func(c *Config) { c.SelfFenceMargin = -time.Second }, "self-fence margin -1s"},
		{"URL without scheme", func(c *Config) { c.URL = "127.0.0.1:7480" }, `advertise URL "127.0.0.1:7480": want http://HOST:PORT`},
		{"URL without host", func(c *Config) { c.URL = "http://" }, `advertise URL "http://"`},
		{"no service", func(c *Config) { c.Services = nil }, "no service: give one with --service"},
		{"duplicate service", func(c *Config) { c.Services = append(c.Services, validService()) }, "service web defined twice"},
		{"bad service", func(c *Config) { c.Services[0].Command = nil }, "service web: no command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	// A pool node needs no service of its own.
	c := validConfig()
	c.Services, c.Pool = nil, true
	if err := c.Validate(); err != nil {
		t.Errorf("pool node without services: got %v, want nil", err)
	}
}

func TestServiceValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Service)
		want   string
	}{
		{"no name", func(s *Service) { s.Name = "" }, `invalid service name ""`},
		{"bad name", func(s *Service) { s.Name = "web/1" }, `invalid service name "web/1"`},
		{"no command", func(s *Service) { s.Command = nil }, "service web: no command: give the command to run after --"},
		{"empty program", func(s *Service) { s.Command = []string{""} }, "service web: no command"},
		{"bad fencing", func(s *Service) { s.Fencing = "maybe" }, `service web: fencing "maybe": want strict or self`},
		{"strict without a fence hook", func(s *Service) { s.Fencing = FencingStrict },
			"service web: fencing strict needs at least one fence hook (--fence LEVEL:PATH)"},
		{"negative restarts", func(s *Service) { s.Restarts = -1 }, "service web: restarts -1: must not be negative"},
		{"negative stop timeout", func(s *Service) { s.StopTimeout = Duration(-time.Second) }, "service web: stop_timeout -1s: must not be negative"},
		{"negative ban", func(s *Service) { s.Ban = Duration(-time.Second) }, "service web: ban -1s: must not be negative"},
		{"fence level 0", func(s *Service) { s.Fence = []FenceHook{{Level: 0, Hook: "/bin/true"}} },
			`service web: fence hook "/bin/true": level 0, want 1 or more`},
		{"empty fence hook", func(s *Service) { s.Fence = []FenceHook{{Level: 1, Hook: "  "}} }, "service web: fence hook: hook: empty hook"},
		{"empty pre-start hook", func(s *Service) { s.Hooks.PreStart = " " }, "service web: pre-start hook: hook: empty hook"},
		{"VIP without device", func(s *Service) { s.VIP = "10.0.0.50/24" }, `service web: invalid VIP "10.0.0.50/24": no "@DEV"`},
		{"VIP without prefix length", func(s *Service) { s.VIP = "10.0.0.50@eth0" }, `no "/BITS" after the address`},
		{"VIP IPv6", func(s *Service) { s.VIP = "fd00::5/64@eth0" }, "IPv6, which is not supported yet"},
		{"relative epoch file", func(s *Service) { s.EpochFile = "epoch" }, `service web: epoch file "epoch": use an absolute path`},
		{"bad node", func(s *Service) { s.Nodes = []string{"n1", "n 2"} }, `service web: invalid node name "n 2"`},
		{"bad anti-affinity", func(s *Service) { s.AntiAffinity = []string{"db!"} }, `service web: anti-affinity: invalid service name "db!"`},
		{"anti-affinity with itself", func(s *Service) { s.AntiAffinity = []string{"db", "web"} }, "service web: anti-affinity with itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validService()
			tt.change(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	s := validService()
	s.Fencing, s.Fence = FencingStrict, []FenceHook{{Level: 1, Hook: "/usr/local/bin/fence-ipmi --host bmc1"}, {Level: 2, Hook: "/bin/true"}}
	s.VIP, s.EpochFile, s.Nodes, s.AntiAffinity = "10.0.0.50/24@eth0", "/var/lib/web/epoch", []string{"n1", "n2"}, []string{"db"}
	if err := s.Validate(); err != nil {
		t.Errorf("valid service with every setting: got %v, want nil", err)
	}
}

func TestServiceCheck(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "fence")
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustCheck := func(spec string) health.Check {
		c, err := health.Parse(spec)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name   string
		change func(*Service)
		want   string
	}{
		{"no command", func(s *Service) { s.Command = nil }, "service web: no command"},
		{"command not found", func(s *Service) { s.Command = []string{"no-such-program-tandem"} },
			`service web: command "no-such-program-tandem": exec: "no-such-program-tandem": executable file not found in $PATH`},
		{"command not executable", func(s *Service) { s.Command = []string{plain} }, `service web: command "` + plain + `"`},
		{"health host does not resolve", func(s *Service) { s.Health = []health.Check{mustCheck("http:http://db.invalid:8080/")} },
			"unreachable health URL"},
		{"health program missing", func(s *Service) { s.Health = []health.Check{mustCheck("exec:/no/such/check")} }, "/no/such/check"},
		{"fence hook not executable", func(s *Service) { s.Fence = []FenceHook{{Level: 1, Hook: plain}} },
			"service web: fence hook (level 1): hook " + plain + ": mode -rw-r--r-- has no execute bit"},
		{"fence hook relative", func(s *Service) { s.Fence = []FenceHook{{Level: 2, Hook: "fence-ipmi"}} },
			"service web: fence hook (level 2): hook fence-ipmi: hook: path is not absolute"},
		{"fence hook missing", func(s *Service) { s.Fence = []FenceHook{{Level: 1, Hook: exe}, {Level: 1, Hook: "/no/such/fence arg"}} },
			"service web: fence hook (level 1): hook /no/such/fence: does not exist"},
		{"post-stop hook missing", func(s *Service) { s.Hooks.PostStop = "/no/such/hook" }, "service web: post-stop hook: hook /no/such/hook: does not exist"},
		{"VIP device missing", func(s *Service) { s.VIP = "10.0.0.50/24@nosuchdev0" }, "no device nosuchdev0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validService()
			tt.change(&s)
			err := s.Check()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	s := validService()
	s.Command, s.Fence, s.Hooks.PreStart = []string{"sleep", "1"}, []FenceHook{{Level: 1, Hook: exe + " --force"}}, exe
	if err := s.Check(); err != nil {
		t.Errorf("service whose programs exist: got %v, want nil", err)
	}
}

func TestParseFence(t *testing.T) {
	tests := []struct {
		in   string
		want string // error; "" for none
	}{
		{"1:/etc/tandem/fence-ipmi --host bmc1", ""},
		{"0:/x", `--fence "0:/x": level 0, want 1 or more`},
		{"-1:/x", `--fence "-1:/x": level -1, want 1 or more`},
		{"/x", `--fence "/x": want LEVEL:PATH`},
		{"01:/x", `--fence "01:/x": want LEVEL:PATH`},
		{"one:/x", `--fence "one:/x": want LEVEL:PATH`},
		{"1:", `--fence "1:": hook: empty hook`},
	}
	for _, tt := range tests {
		f, err := ParseFence(tt.in)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ParseFence(%q): got %v, want nil", tt.in, err)
		case tt.want == "" && (f.Level != 1 || f.Hook != "/etc/tandem/fence-ipmi --host bmc1"):
			t.Errorf("ParseFence(%q): got %+v, want level 1 and the hook", tt.in, f)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("ParseFence(%q): got %v, want an error containing %q", tt.in, err, tt.want)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	for in, want := range map[string]time.Duration{`"1.5s"`: 1500 * time.Millisecond, `2`: 2 * time.Second, `0.25`: 250 * time.Millisecond} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err != nil || d.D() != want {
			t.Errorf("unmarshal %s: got %v, %v, want %v", in, d.D(), err, want)
		}
	}
	for _, in := range []string{`"10"`, `true`, `"1 h"`} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err == nil {
			t.Errorf("unmarshal %s: got %v, want an error", in, d.D())
		}
	}
	b, _ := json.Marshal(Duration(90 * time.Second))
	if string(b) != `"1m30s"` {
		t.Errorf("marshal 90s: got %s, want \"1m30s\"", b)
	}
}
