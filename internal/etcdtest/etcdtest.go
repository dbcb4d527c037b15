// Package etcdtest starts a real etcd member inside a test process, on free
// loopback ports, for tests of code that talks to etcd. It is etcd itself,
// not a fake.
package etcdtest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem/internal/embedetcd"
)

// Etcd is a running single-member etcd.
type Etcd struct {
	Endpoint string
	Member   *embedetcd.Member
}

// Start starts a single-member etcd for the test and stops it at cleanup.
func Start(t testing.TB) *Etcd {
	t.Helper()
	var m *embedetcd.Member
	var err error
	// A port found free can be taken by another process before etcd binds
	// it; then try other ports.
	for try := 0; try < 5; try++ {
		m, err = embedetcd.Start(embedetcd.Config{
			Name: "etcd-test", Dir: t.TempDir(),
			ClientURL: "http://" + FreeAddr(t), PeerURL: "http://" + FreeAddr(t),
			StartTimeout: 30 * time.Second,
			// Faster raft timing than etcd's default lets tests use 1 s leases.
			HeartbeatMs: 50, ElectionMs: 500,
			LogLevel: "fatal",
			// A test's etcd need not survive a machine crash; without fsync
			// a loaded CI machine does not stall it past a test's leases.
			UnsafeNoFsync: true,
		})
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(m.Close)
	return &Etcd{Endpoint: m.ClientURL(), Member: m}
}

// Client returns a new client of e, closed at cleanup. Each simulated
// process should have its own client, as real ones do.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// FreeAddr returns a loopback host:port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return fmt.Sprintf("127.0.0.1:%d", ln.Addr().(*net.TCPAddr).Port)
}
