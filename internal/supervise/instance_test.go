package supervise

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/supervise/health"
)

// TestEveryNode: a service with an instance on every node that lists it.
// Each node runs and checks its own (one definition, the health URL naming
// the node's address), registers it while healthy, restarts it in place
// when it dies, stops it when banned or when the supervisor stops, and no
// node becomes an owner.
func TestEveryNode(t *testing.T) {
	c := newCluster(t)
	port := freePort(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	hc, err := health.Parse(fmt.Sprintf("http:http://${TANDEM_NODE_ADDR}:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	hc.Interval, hc.Rise = Duration(100*time.Millisecond).D(), 1
	svc := Service{Name: "hue", Instances: InstancesEveryNode, Command: []string{self},
		Env:    map[string]string{helperEnv: "http", helperAddrEnv: fmt.Sprintf("${TANDEM_NODE_ADDR}:%d", port)},
		Health: []health.Check{hc}, StopTimeout: Duration(3 * time.Second), Restarts: 5}
	nodes := map[string]*node{}
	for i, name := range []string{"n1", "n2"} {
		cfg := c.config(name, svc)
		cfg.Addr = fmt.Sprintf("127.0.0.%d", i+2)
		nodes[name] = c.start(cfg)
	}
	instances := func() map[string]Instance {
		out := map[string]Instance{}
		for _, in := range c.status("hue").Instances {
			out[in.Node] = in
		}
		return out
	}
	answer := func(addr string) string {
		resp, err := (&http.Client{Timeout: time.Second}).Get(fmt.Sprintf("http://%s:%d/", addr, port))
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b))
	}
	waitFor(t, "an instance on n1 and n2", long, func() bool { return len(instances()) == 2 })
	st := c.status("hue")
	if st.State != StateEveryNode || st.Node != "" || c.owner("hue") != nil {
		t.Fatalf("status %+v, owner %v: want state every-node and no owner", st, c.owner("hue"))
	}
	for name, addr := range map[string]string{"n1": "127.0.0.2", "n2": "127.0.0.3"} {
		if got := answer(addr); !strings.HasPrefix(got+" ", "ok "+name+" ") {
			t.Errorf("%s's instance at %s answers %q, want ok %s", name, addr, got, name)
		}
	}

	// n1's instance dies: its registration goes, it restarts in place and
	// registers again.
	first := instances()["n1"]
	if err := syscall.Kill(first.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1's instance restarted and registered", long, func() bool {
		in, ok := instances()["n1"]
		return ok && in.PID != first.PID && in.Restarts == 1
	})
	if got := answer("127.0.0.2"); !strings.HasPrefix(got+" ", "ok n1 ") {
		t.Errorf("n1's restarted instance answers %q", got)
	}

	// Banned, n2 stops its instance; cleared, it starts it again.
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	if err := c.admin.Ban(ctx, "hue", "n2", time.Hour, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2's instance stopped by the ban", long, func() bool {
		_, ok := instances()["n2"]
		return !ok && len(nodes["n2"].procs("hue")) == 0
	})
	if n, err := c.admin.Clear(ctx, "hue"); err != nil || n != 1 {
		t.Fatalf("clear: %d, %v", n, err)
	}
	waitFor(t, "n2's instance back after the ban", long, func() bool { _, ok := instances()["n2"]; return ok })

	// Nothing to move.
	if err := c.admin.Move(ctx, "hue", "n2"); err == nil || !strings.Contains(err.Error(), "nothing to move") {
		t.Errorf("move of an every-node service: got %v, want an error saying there is nothing to move", err)
	}

	// A clean stop removes n1's registration and its command.
	nodes["n1"].stop(t)
	if _, ok := instances()["n1"]; ok {
		t.Error("n1 stopped, its instance is still registered")
	}
	if pids := nodes["n1"].procs("hue"); len(pids) != 0 {
		t.Errorf("n1 stopped, its instance's cgroup still has %v", pids)
	}
	if got := answer("127.0.0.3"); !strings.HasPrefix(got+" ", "ok n2 ") {
		t.Errorf("n2's instance answers %q after n1 stopped", got)
	}
}

// TestEveryNodeValidate: what does not apply to an instance on every node
// is refused, with a message that says why.
func TestEveryNodeValidate(t *testing.T) {
	base := Service{Name: "hue", Instances: InstancesEveryNode, Command: []string{"/bin/true"}}.WithDefaults()
	if err := base.Validate(); err != nil {
		t.Fatalf("plain every-node service: %v", err)
	}
	for name, mod := range map[string]func(*Service){
		"vip":        func(s *Service) { s.VIP = "10.0.0.5/24@eth0" },
		"fence hook": func(s *Service) { s.Fence = []FenceHook{{Level: 1, Hook: "/bin/true"}} },
		"epoch file": func(s *Service) { s.EpochFile = "/tmp/epoch" },
		"nodes":      func(s *Service) { s.Nodes = []string{"n1"} },
		"hooks":      func(s *Service) { s.Hooks.PreStart = "/bin/true" },
	} {
		s := base
		mod(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "every-node") {
			t.Errorf("%s: got %v, want an error naming every-node", name, err)
		}
	}
	s := base
	s.Instances = "two"
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), `instances "two"`) {
		t.Errorf("instances two: got %v", err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
