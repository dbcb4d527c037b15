package lb

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise"
)

func put(t *testing.T, cli *clientv3.Client, key string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, string(b)); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
}

// waitDesired waits until the source's desired state satisfies ok.
func waitDesired(t *testing.T, s *Source, what string, ok func(Desired) bool) Desired {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		ch := s.Changed()
		if d := s.Desired(); s.Synced() && ok(d) {
			return d
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s: never; last desired %+v", what, s.Desired())
		}
	}
}

func up(d Desired, backend string) []string {
	var out []string
	for _, b := range d.Backends {
		if b.Name != backend {
			continue
		}
		for _, s := range b.Servers {
			if s.Up {
				out = append(out, s.Name)
			}
		}
	}
	return out
}

func TestSourceFollowsMembership(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	l := keys.New("c1")
	src, err := NewSource(cli, "c1", API{Listen: "127.0.0.1:18080"}, []Service{{Name: "web", Listen: ":18081", Port: 8000, Health: "/h"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go src.Run(ctx)

	for i, id := range []string{"rm1", "rm2", "rm3"} {
		put(t, cli, l.Server(id), tandem.ServerInfo{ID: id, URL: "http://127.0.0.1:707" + string(rune('0'+i))})
	}
	put(t, cli, l.Leader(), election.Owner{ID: "rm2", URL: "http://127.0.0.1:7071"})
	d := waitDesired(t, src, "rm2 the only one up", func(d Desired) bool {
		u := up(d, "tandem")
		return len(u) == 1 && u[0] == "rm2" && len(d.Backends[0].Servers) == 3
	})
	if b := d.Backends[0]; b.Name != "tandem" || b.Mode != ModeActive || b.Health != "/isActive" || b.Servers[1].Addr != "127.0.0.1:7071" {
		t.Fatalf("tandem backend %+v", b)
	}

	// Failover: the leader key goes, then another server takes it.
	del(t, cli, l.Leader())
	waitDesired(t, src, "nobody up", func(d Desired) bool { return len(up(d, "tandem")) == 0 })
	put(t, cli, l.Leader(), election.Owner{ID: "rm3"})
	waitDesired(t, src, "rm3 up", func(d Desired) bool { u := up(d, "tandem"); return len(u) == 1 && u[0] == "rm3" })

	// Active-active: every owner of a shard is up, whoever holds the leader key.
	del(t, cli, l.Leader())
	put(t, cli, l.Shard(0, 4).Owner, election.Owner{ID: "rm1"})
	put(t, cli, l.Shard(1, 4).Owner, election.Owner{ID: "rm3"})
	d = waitDesired(t, src, "rm1 and rm3 up", func(d Desired) bool { return len(up(d, "tandem")) == 2 })
	if d.Backends[0].Mode != ModeAll {
		t.Fatalf("mode %q with shards, want all", d.Backends[0].Mode)
	}

	// A supervised service: every node offering it, its owner up.
	put(t, cli, l.SuperviseNode("n1"), supervise.NodeInfo{Node: "n1", Addr: "10.0.0.1", Services: []string{"web"}})
	put(t, cli, l.SuperviseNode("n2"), supervise.NodeInfo{Node: "n2", Addr: "10.0.0.2", Pool: true})
	put(t, cli, l.SuperviseNode("n3"), supervise.NodeInfo{Node: "n3", Addr: "10.0.0.3", Services: []string{"other"}})
	put(t, cli, l.SuperviseOwnership("web").Owner, election.Owner{ID: "n2"})
	d = waitDesired(t, src, "web on n2", func(d Desired) bool { u := up(d, "web"); return len(u) == 1 && u[0] == "n2" })
	for _, b := range d.Backends {
		if b.Name == "web" && (len(b.Servers) != 2 || b.Servers[1].Addr != "10.0.0.2:8000" || b.Health != "/h" || b.Listen != ":18081") {
			t.Fatalf("web backend %+v: want n1 and n2 on port 8000", b)
		}
	}

	// Defined with an instance on every node: the nodes that list it (not
	// the pool), each up while its instance is registered, spread over.
	put(t, cli, l.SuperviseService("web"), supervise.Service{Name: "web", Instances: supervise.InstancesEveryNode})
	put(t, cli, l.SuperviseNode("n3"), supervise.NodeInfo{Node: "n3", Addr: "10.0.0.3", Services: []string{"web"}})
	put(t, cli, l.SuperviseInstance("web", "n1"), supervise.Instance{Service: "web", Node: "n1"})
	put(t, cli, l.SuperviseInstance("web", "n3"), supervise.Instance{Service: "web", Node: "n3"})
	d = waitDesired(t, src, "web on n1 and n3", func(d Desired) bool { u := up(d, "web"); return len(u) == 2 && u[0] == "n1" && u[1] == "n3" })
	for _, b := range d.Backends {
		if b.Name == "web" && (b.Mode != ModeAll || len(b.Servers) != 2) {
			t.Fatalf("every-node web backend %+v: want n1 and n3, mode all (the pool node n2 runs no instance)", b)
		}
	}
	del(t, cli, l.SuperviseInstance("web", "n1"))
	waitDesired(t, src, "web on n3 alone", func(d Desired) bool { u := up(d, "web"); return len(u) == 1 && u[0] == "n3" })
}

func TestParseService(t *testing.T) {
	good := map[string]Service{
		"web=:8081,port=8000":                        {Name: "web", Listen: ":8081", Port: 8000},
		"hue=0.0.0.0:8888,port=8888,health=/,sticky": {Name: "hue", Listen: "0.0.0.0:8888", Port: 8888, Health: "/", Sticky: true},
	}
	for in, want := range good {
		got, err := ParseService(in)
		if err != nil || got != want {
			t.Errorf("ParseService(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "web", "=:1,port=2", "web=:8081", "web=:8081,port=0", "web=nope,port=1", "web=:8081,port=1,health=x",
		"web=:8081,port=1,color=red", "we/b=:1,port=1"} {
		if _, err := ParseService(in); err == nil {
			t.Errorf("ParseService(%q): no error", in)
		}
	}
	if _, err := NewSource(nil, "c", API{}, nil, nil); err == nil {
		t.Error("NewSource with nothing to balance: no error")
	}
	if _, err := NewSource(nil, "c", API{Listen: ":1"}, []Service{{Name: "a", Listen: ":1", Port: 2}}, nil); err == nil {
		t.Error("NewSource with one listen address twice: no error")
	}
}

// TestSourceTLS: a server is called over TLS when it advertises an
// https:// URL, or always with API.TLS; API.ListenTLS makes the proxy serve
// TLS. Services stay as they are.
func TestSourceTLS(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	l := keys.New("c1")
	put(t, cli, l.Server("rm1"), tandem.ServerInfo{ID: "rm1", URL: "https://127.0.0.1:7070"})
	put(t, cli, l.Server("rm2"), tandem.ServerInfo{ID: "rm2", URL: "http://127.0.0.1:7071"})
	put(t, cli, l.Server("rm3"), tandem.ServerInfo{ID: "rm3", URL: "HTTPS://rm3.example.com"})
	for _, tt := range []struct {
		api     API
		wantTLS []bool
	}{
		{API{Listen: "127.0.0.1:18080"}, []bool{true, false, true}},
		{API{Listen: "127.0.0.1:18080", TLS: true, ListenTLS: true}, []bool{true, true, true}},
	} {
		src, err := NewSource(cli, "c1", tt.api, []Service{{Name: "web", Listen: ":18081", Port: 8000}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go src.Run(ctx)
		d := waitDesired(t, src, "three servers", func(d Desired) bool { return len(d.Backends[0].Servers) == 3 })
		cancel()
		b := d.Backends[0]
		for i, s := range b.Servers {
			if s.TLS != tt.wantTLS[i] {
				t.Errorf("%+v: server %s: TLS %v, want %v", tt.api, s.Name, s.TLS, tt.wantTLS[i])
			}
		}
		if b.Servers[2].Addr != "rm3.example.com:443" {
			t.Errorf("server rm3: addr %q, want rm3.example.com:443", b.Servers[2].Addr)
		}
		if b.ListenTLS != tt.api.ListenTLS || d.Backends[1].ListenTLS {
			t.Errorf("%+v: ListenTLS of tandem %v and of web %v; want %v and false", tt.api, b.ListenTLS, d.Backends[1].ListenTLS, tt.api.ListenTLS)
		}
	}
}
