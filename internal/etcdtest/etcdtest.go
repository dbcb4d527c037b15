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
	// PeerURL is where the member listens for its peers.
	PeerURL string
}

// Start starts a single-member etcd for the test and stops it at cleanup.
func Start(t testing.TB) *Etcd {
	t.Helper()
	return start(t, "http", nil)
}

// TLS describes the certificates of StartTLS: internal/pki files.
type TLS struct {
	CACert, Cert, Key string // the member's CA file and server certificate
	// ClientCommonNames are the common names the client port accepts
	// (embedetcd.Config.ClientCommonNames); empty: the default.
	ClientCommonNames []string
}

// StartTLS starts a single-member etcd locked down with the certificates
// of c (https on both ports, client certificates required), and stops it
// at cleanup. It turns on no etcd authentication: etcdauth.Setup does.
func StartTLS(t testing.TB, c TLS) *Etcd {
	t.Helper()
	return start(t, "https", func(cfg *embedetcd.Config) {
		cfg.CACert, cfg.Cert, cfg.Key, cfg.ClientCommonNames = c.CACert, c.Cert, c.Key, c.ClientCommonNames
	})
}

func start(t testing.TB, scheme string, edit func(*embedetcd.Config)) *Etcd {
	t.Helper()
	var m *embedetcd.Member
	var cfg embedetcd.Config
	var err error
	// A port found free can be taken by another process before etcd binds
	// it; then try other ports.
	for try := 0; try < 5; try++ {
		cfg = embedetcd.Config{
			Name: "etcd-test", Dir: t.TempDir(),
			ClientURL: scheme + "://" + FreeAddr(t), PeerURL: scheme + "://" + FreeAddr(t),
			StartTimeout: 30 * time.Second,
			// Faster raft timing than etcd's default lets tests use 1 s leases.
			HeartbeatMs: 50, ElectionMs: 500,
			LogLevel: "fatal",
			// A test's etcd need not survive a machine crash; without fsync
			// a loaded CI machine does not stall it past a test's leases.
			UnsafeNoFsync: true,
		}
		if edit != nil {
			edit(&cfg)
		}
		m, err = embedetcd.Start(cfg)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(m.Close)
	return &Etcd{Endpoint: m.ClientURL(), Member: m, PeerURL: cfg.PeerURL}
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
