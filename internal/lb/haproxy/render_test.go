package haproxy

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

func TestValidate(t *testing.T) {
	ok := func() lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{
			Name: "tandem", Listen: "127.0.0.1:8080", Health: "/isActive", Mode: lb.ModeActive,
			Servers: []lb.Server{{Name: "rm1", Addr: "127.0.0.1:9001", Up: true}, {Name: "rm2", Addr: "10.0.0.2:9001"}},
		}}}
	}
	tests := []struct {
		name   string
		change func(*lb.Desired)
		want   string // "" means valid
	}{
		{"valid", func(*lb.Desired) {}, ""},
		{"tcp check", func(d *lb.Desired) { d.Backends[0].Health = "" }, ""},
		{"any address", func(d *lb.Desired) { d.Backends[0].Listen = ":8080" }, ""},
		{"newline in backend name", func(d *lb.Desired) { d.Backends[0].Name = "x\n  server evil 1.2.3.4:80" }, "backend name"},
		{"space in health", func(d *lb.Desired) { d.Backends[0].Health = "/a b" }, "health"},
		{"relative health", func(d *lb.Desired) { d.Backends[0].Health = "isActive" }, "health"},
		{"no mode", func(d *lb.Desired) { d.Backends[0].Mode = "" }, "mode"},
		{"no port", func(d *lb.Desired) { d.Backends[0].Listen = "127.0.0.1" }, "listen"},
		{"server twice", func(d *lb.Desired) { d.Backends[0].Servers[1].Name = "rm1" }, "twice"},
		{"server addr without port", func(d *lb.Desired) { d.Backends[0].Servers[0].Addr = "10.0.0.1" }, "host:port"},
		{"backend twice", func(d *lb.Desired) { d.Backends = append(d.Backends, d.Backends[0]) }, "twice"},
		{"two on one listen", func(d *lb.Desired) {
			b := d.Backends[0]
			b.Name = "other"
			d.Backends = append(d.Backends, b)
		}, "both listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := ok()
			tt.change(&d)
			err := validate(d)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tt.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

func TestRender(t *testing.T) {
	d := normalized(lb.Desired{Backends: []lb.Backend{
		{Name: "svc", Listen: ":9000", Mode: lb.ModeAll, Sticky: true, Servers: []lb.Server{{Name: "b", Addr: "10.0.0.2:80"}, {Name: "a", Addr: "10.0.0.1:80", Up: true}}},
		{Name: "tandem", Listen: "127.0.0.1:8080", Health: "/isActive", Mode: lb.ModeActive, Servers: []lb.Server{{Name: "rm1", Addr: "127.0.0.1:9001"}}},
	}})
	text := string(render(d, lb.Checks{Inter: 100 * time.Millisecond, Fall: 2, Rise: 1}, paths{adminSocket: "/run/a.sock", stateFile: "/var/lib/s"}))
	for _, want := range []string{
		"stats socket /run/a.sock mode 600 level admin expose-fd listeners",
		"server-state-file /var/lib/s",
		"hard-stop-after 30000ms",
		"load-server-state-from-file global",
		"option idle-close-on-response",
		"option redispatch",
		"frontend svc\n    bind :9000\n    default_backend svc",
		"cookie TANDEMLB insert indirect nocache",
		"    server a 10.0.0.1:80 check inter 100ms fall 2 rise 1 pool-purge-delay 1000ms cookie a\n    server b 10.0.0.2:80 check inter 100ms fall 2 rise 1 pool-purge-delay 1000ms cookie b\n",
		"option httpchk GET /isActive\n    http-check expect status 200-299",
		"server rm1 127.0.0.1:9001 check inter 100ms fall 2 rise 1 pool-purge-delay 1000ms\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("rendered configuration lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "disabled") {
		t.Errorf("a server is rendered disabled, which stops its checks:\n%s", text)
	}
	// Up plays no part: the same shape renders the same bytes.
	d.Backends[0].Servers[0].Up = false
	if again := string(render(d, lb.Checks{Inter: 100 * time.Millisecond, Fall: 2, Rise: 1}, paths{adminSocket: "/run/a.sock", stateFile: "/var/lib/s"})); again != text {
		t.Errorf("render depends on Up")
	}

	// For a fresh start, what is not up starts in maintenance.
	d.Backends[0].Servers[0].Up = true
	start := string(renderStart(d, lb.Checks{Inter: 100 * time.Millisecond, Fall: 2, Rise: 1}, paths{adminSocket: "/run/a.sock", stateFile: "/var/lib/s"}))
	for _, want := range []string{"server a 10.0.0.1:80 check inter 100ms fall 2 rise 1 pool-purge-delay 1000ms cookie a\n",
		"server b 10.0.0.2:80 check inter 100ms fall 2 rise 1 pool-purge-delay 1000ms cookie b disabled\n",
		"server rm1 127.0.0.1:9001 check inter 100ms fall 2 rise 1 pool-purge-delay 1000ms disabled\n"} {
		if !strings.Contains(start, want) {
			t.Errorf("configuration for a fresh start lacks %q:\n%s", want, start)
		}
	}
}

func TestDiff(t *testing.T) {
	be := func(sticky bool, servers ...lb.Server) lb.Desired {
		return lb.Desired{Backends: []lb.Backend{{Name: "b", Listen: ":80", Health: "/h", Mode: lb.ModeAll, Sticky: sticky, Servers: servers}}}
	}
	s := func(name, addr string) lb.Server { return lb.Server{Name: name, Addr: addr} }
	tlsS := func(name, addr string) lb.Server { return lb.Server{Name: name, Addr: addr, TLS: true} }
	listenTLS := func(d lb.Desired) lb.Desired { d.Backends[0].ListenTLS = true; return d }
	tests := []struct {
		name       string
		cur, next  lb.Desired
		wantReload bool
		add, del   []string
		addr       []string
	}{
		{"same", be(false, s("a", "10.0.0.1:80")), be(false, s("a", "10.0.0.1:80")), false, nil, nil, nil},
		{"add", be(false, s("a", "10.0.0.1:80")), be(false, s("a", "10.0.0.1:80"), s("c", "10.0.0.3:80")), false, []string{"b/c"}, nil, nil},
		{"remove", be(false, s("a", "10.0.0.1:80"), s("c", "10.0.0.3:80")), be(false, s("c", "10.0.0.3:80")), false, nil, []string{"b/a"}, nil},
		{"move", be(false, s("a", "10.0.0.1:80")), be(false, s("a", "10.0.0.9:81")), false, nil, nil, []string{"b/a"}},
		{"add to sticky", be(true, s("a", "10.0.0.1:80")), be(true, s("a", "10.0.0.1:80"), s("c", "10.0.0.3:80")), true, nil, nil, nil},
		{"remove from sticky", be(true, s("a", "10.0.0.1:80"), s("c", "10.0.0.3:80")), be(true, s("a", "10.0.0.1:80")), false, nil, []string{"b/c"}, nil},
		{"host name", be(false, s("a", "10.0.0.1:80")), be(false, s("a", "10.0.0.1:80"), s("c", "app.internal:80")), true, nil, nil, nil},
		{"sticky changed", be(false, s("a", "10.0.0.1:80")), be(true, s("a", "10.0.0.1:80")), true, nil, nil, nil},
		{"backend added", be(false), lb.Desired{Backends: append(be(false).Backends, lb.Backend{Name: "c", Listen: ":81", Mode: lb.ModeAll})}, true, nil, nil, nil},
		{"add with TLS", be(false, s("a", "10.0.0.1:80")), be(false, s("a", "10.0.0.1:80"), tlsS("c", "10.0.0.3:80")), false, []string{"b/c"}, nil, nil},
		{"TLS turned on", be(false, s("a", "10.0.0.1:80")), be(false, tlsS("a", "10.0.0.1:80")), true, nil, nil, nil},
		{"TLS on the listener", be(false, s("a", "10.0.0.1:80")), listenTLS(be(false, s("a", "10.0.0.1:80"))), true, nil, nil, nil},
	}
	names := func(rs []ref) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.String())
		}
		return out
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := diff(normalized(tt.cur), normalized(tt.next))
			if got := p.reload != ""; got != tt.wantReload {
				t.Fatalf("reload: got %v (%q), want %v", got, p.reload, tt.wantReload)
			}
			if tt.wantReload {
				return
			}
			if got := names(p.add); !reflect.DeepEqual(got, tt.add) {
				t.Errorf("add: got %v, want %v", got, tt.add)
			}
			if got := names(p.del); !reflect.DeepEqual(got, tt.del) {
				t.Errorf("del: got %v, want %v", got, tt.del)
			}
			if got := names(p.addr); !reflect.DeepEqual(got, tt.addr) {
				t.Errorf("addr: got %v, want %v", got, tt.addr)
			}
		})
	}
}

func TestStateCmdsUpFirst(t *testing.T) {
	d := lb.Desired{Backends: []lb.Backend{
		{Name: "http", Health: "/isActive", Servers: []lb.Server{{Name: "old"}, {Name: "new", Up: true}}},
		{Name: "tcp", Servers: []lb.Server{{Name: "x"}}},
	}}
	got := stateCmds(d)
	want := []string{
		"set server http/new state ready", "set server http/new health up",
		"set server http/old health down", "set server http/old state ready", "set server http/old health down",
		"set server tcp/x state maint",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestParseProcs(t *testing.T) {
	out := `#<PID>          <type>          <reloads>       <uptime>        <version>      
17633           master          3 [failed: 1]   0d00h00m53s     2.6.12-1+deb12u4
# workers
19470           worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
18450           worker          2               0d00h00m27s     2.6.12-1+deb12u4
# programs

`
	got, err := parseProcs(out)
	if err != nil {
		t.Fatal(err)
	}
	want := procs{master: 17633, reloads: 3, failed: 1, workers: []int{19470}, old: []int{18450}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if _, err := parseProcs("Unknown command.\n"); err == nil {
		t.Fatal("got no error for a reply without a master")
	}
}

func TestParseServersStateAndStateFile(t *testing.T) {
	out := `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 tandem 1 a 127.0.0.1 2 0 1 1 12 8 2 0 6 0 0 0 - 19005 - 0 0 - - 0
3 tandem 2 b 127.0.0.1 2 1 1 1 0 8 2 2 6 0 0 0 - 19002 - 0 0 - - 0
3 tandem 3 c 127.0.0.1 0 0 1 1 0 8 2 2 6 0 0 0 - 19003 - 0 0 - - 0
`
	version, header, states, err := parseServersState(out)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range states {
		got = append(got, s.backend+"/"+s.server+"@"+s.addr+map[bool]string{true: " up", false: " down"}[s.routable()])
	}
	want := []string{"tandem/a@127.0.0.1:19005 up", "tandem/b@127.0.0.1:19002 down", "tandem/c@127.0.0.1:19003 down"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	// The next configuration keeps a, moves b and drops c: only a's
	// state may carry over.
	next := lb.Desired{Backends: []lb.Backend{{Name: "tandem", Servers: []lb.Server{
		{Name: "a", Addr: "127.0.0.1:19005"}, {Name: "b", Addr: "127.0.0.1:19999"},
	}}}}
	file := string(stateFile(version, header, states, next))
	if lines := strings.Split(strings.TrimSpace(file), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[2], "3 tandem 1 a ") {
		t.Fatalf("state file: got\n%s\nwant version, header and a's line", file)
	}
}

func TestCheckReplies(t *testing.T) {
	tests := []struct {
		cmd, reply string
		ok         bool
	}{
		{"set server b/s health up", "", true},
		{"set server b/s health up", "No such server.", false},
		{"add server b/s 10.0.0.1:80 check", "New server registered.", true},
		{"add server b/s 10.0.0.1:80 check", "Already exists a server with the same name in backend.", false},
		{"del server b/s", "Server deleted.", true},
		{"del server b/s", "Only servers in maintenance mode can be deleted.", false},
		{"set server b/s addr 10.0.0.1 port 81", "no need to change the addr, port changed from '80' to '81' by 'stats socket command'", true},
		{"set server b/s addr 10.0.0.1 port 81", "No such server.", false},
	}
	for _, tt := range tests {
		err := check([]string{tt.cmd}, []string{tt.reply})
		var ce *CommandError
		if tt.ok != (err == nil) || (!tt.ok && (!errors.As(err, &ce) || ce.Cmd != tt.cmd)) {
			t.Errorf("%q answered %q: got %v, want ok=%v", tt.cmd, tt.reply, err, tt.ok)
		}
	}
}
