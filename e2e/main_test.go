// Package e2e tests tandem as users run it: real server processes of the
// tandem binary, killed with SIGKILL, paused with SIGSTOP, and driven
// through the CLI and the Go client.
package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/local"
)

// binary is the tandem binary built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tandem-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "tandem")
	build := exec.Command("go", "build", "-o", binary, "../cmd/tandem")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tandem:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeBasePort finds a base port whose whole range (a local cluster uses
// base to base+999: servers, etcd, agents, proxies) is free right now.
func freeBasePort(t *testing.T, _ int) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		base := 10000 + 1000*rand.IntN(21) // below the ephemeral ports (32768 and up)
		if rangeFree(base, 1000) {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}

func rangeFree(base, n int) bool {
	for p := base; p < base+n; p++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		ln.Close()
	}
	return true
}

// startCluster starts n server processes. With etcd == nil every server
// embeds an etcd member; otherwise they share that etcd.
func startCluster(t *testing.T, n int, etcd *etcdtest.Etcd, extra ...string) *local.Cluster {
	t.Helper()
	cfg := local.Config{Binary: binary, Servers: n, BasePort: freeBasePort(t, n), DataDir: t.TempDir(),
		ExtraArgs: extra, LogLevel: "debug"}
	if etcd != nil {
		cfg.EtcdEndpoints = etcd.Endpoint
	}
	return startLocal(t, cfg)
}

// startLocal starts a local cluster, stops it at cleanup, and shows the
// tail of every process's log when the test failed.
func startLocal(t *testing.T, cfg local.Config) *local.Cluster {
	t.Helper()
	secureCluster(t, &cfg)
	c, err := local.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	registerSecured(t, c)
	t.Cleanup(func() {
		c.Stop(10 * time.Second)
		if t.Failed() {
			for _, p := range append(append([]*local.Proc(nil), c.Servers...), c.Agents...) {
				b, _ := os.ReadFile(p.LogPath)
				t.Logf("---- %s log ----\n%s", p.ID, tail(string(b), 50))
			}
		}
	})
	return c
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

func newClient(t *testing.T, urls []string) *client.Client {
	t.Helper()
	cl, err := client.New(clientConfig(t, client.Config{Servers: urls}))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func waitActive(t *testing.T, c *local.Cluster, not ...int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	i, err := c.WaitActive(ctx, not...)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// countActive counts servers that report themselves active.
func countActive(t *testing.T, c *local.Cluster) int {
	t.Helper()
	n := 0
	for i := range c.Servers {
		if c.PID(i) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := c.Status(ctx, i)
		cancel()
		if err == nil && st.State == "active" {
			n++
		}
	}
	return n
}

// runCLI runs the tandem binary and returns its stdout, stderr and exit code.
func runCLI(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	// A secured cluster's certificates and token first: env may override.
	cmd.Env = append(append(os.Environ(), secureEnv(t)...), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run tandem %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}
