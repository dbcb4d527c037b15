// Package embedetcd runs an etcd member inside the tandem process, so that a
// few tandem servers form a complete HA cluster with nothing else installed
// (DESIGN.md section 2). tandem never implements consensus itself: this is
// etcd's own server, started through go.etcd.io/etcd/server/v3/embed.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config describes one member.
type Config struct {
	Name      string // member name, unique in the etcd cluster
	Dir       string // data directory
	ClientURL string // e.g. http://127.0.0.1:2379
	PeerURL   string // e.g. http://127.0.0.1:2380
	// AdvertiseClientURL and AdvertisePeerURL are how others reach the
	// member when that differs from where it listens (through a proxy, say);
	// empty means ClientURL and PeerURL.
	AdvertiseClientURL, AdvertisePeerURL string
	InitialCluster                       string // name=peerURL,...; empty means a single-member cluster
	ClusterToken                         string // keeps separate clusters from joining each other
	// HeartbeatMs and ElectionMs tune etcd's raft timing. Zero keeps etcd's
	// defaults (100 ms, 1000 ms), whose smallest lease TTL is 2 s.
	HeartbeatMs, ElectionMs uint
	// StartTimeout bounds how long Start waits for the member to join a quorum.
	StartTimeout time.Duration
	LogLevel     string // etcd's zap level: debug, info, warn, error (default error)
	// UnsafeNoFsync skips fsync: for tests only, where a member's data
	// never has to survive its machine's crash and fsync stalls on a busy
	// disk would cost leases.
	UnsafeNoFsync bool

	// CACert, Cert and Key lock the member down (docs/SECURITY.md, "etcd
	// locked down"): PEM files made by internal/pki, the cluster's CA
	// (several CAs allowed) and this server's certificate and key. With
	// them, the client and peer URLs must be https, both ports speak TLS 1.3
	// and refuse a handshake without a client certificate that chains to
	// CACert, and etcd takes a client certificate's common name as its etcd
	// user (--client-cert-auth). The peer port further accepts only server
	// certificates of the member's own cluster (common name
	// pki.ServerCommonName), so no agent or cli certificate can speak raft.
	// All empty: plain http, as without security. etcd re-reads the
	// certificate and key at every handshake, so a renewed certificate
	// needs no restart; it reads the CA file at start only.
	CACert, Cert, Key string
	// ClientCommonNames, with TLS, are the only common names a client
	// certificate may carry on the client port; others are refused in the
	// handshake. Empty means this cluster's servers and "root"
	// (etcdauth.RootUser); an etcd several clusters share lists each
	// cluster's pki.ServerCommonName.
	ClientCommonNames []string
}

// TLS reports whether the member is configured with certificates.
func (c *Config) TLS() bool { return c.CACert != "" || c.Cert != "" || c.Key != "" }

// newLogger returns etcd's logger at level, to stderr, and the level so
// Close can silence the errors etcd logs while it shuts its listeners.
func newLogger(level string) (*zap.Logger, zap.AtomicLevel, error) {
	lv, err := zap.ParseAtomicLevel(level)
	if err != nil {
		return nil, lv, fmt.Errorf("embedded etcd: log level %q: %w", level, err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = lv
	zc.Sampling = nil
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	lg, err := zc.Build()
	return lg, lv, err
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.Name == "" {
		return errors.New("embedded etcd: a member name is required (--etcd-name)")
	}
	if c.Dir == "" {
		return errors.New("embedded etcd: a data directory is required (--data-dir)")
	}
	if c.AdvertiseClientURL == "" {
		c.AdvertiseClientURL = c.ClientURL
	}
	if c.AdvertisePeerURL == "" {
		c.AdvertisePeerURL = c.PeerURL
	}
	for flag, u := range map[string]string{"--etcd-client-url": c.ClientURL, "--etcd-peer-url": c.PeerURL,
		"--etcd-advertise-client-url": c.AdvertiseClientURL, "--etcd-advertise-peer-url": c.AdvertisePeerURL} {
		if _, err := parseURL(u); err != nil {
			return fmt.Errorf("embedded etcd: %s: %w", flag, err)
		}
	}
	if c.TLS() {
		if c.CACert == "" || c.Cert == "" || c.Key == "" {
			return errors.New("embedded etcd: give a CA, a certificate and its key together (--etcd-cacert, --etcd-cert, --etcd-key), or none")
		}
		for flag, u := range map[string]string{"--etcd-client-url": c.ClientURL, "--etcd-peer-url": c.PeerURL,
			"--etcd-advertise-client-url": c.AdvertiseClientURL, "--etcd-advertise-peer-url": c.AdvertisePeerURL} {
			if !strings.HasPrefix(u, "https://") {
				return fmt.Errorf("embedded etcd: %s %q: with certificates, use an https:// URL", flag, u)
			}
		}
	}
	if c.InitialCluster != "" {
		found := false
		for _, m := range strings.Split(c.InitialCluster, ",") {
			name, peer, ok := strings.Cut(m, "=")
			if !ok || name == "" {
				return fmt.Errorf("embedded etcd: --initial-cluster entry %q is not name=peerURL", m)
			}
			if _, err := parseURL(peer); err != nil {
				return fmt.Errorf("embedded etcd: --initial-cluster member %s: %w", name, err)
			}
			if c.TLS() && !strings.HasPrefix(peer, "https://") {
				return fmt.Errorf("embedded etcd: --initial-cluster member %s: with certificates, use an https:// peer URL", name)
			}
			if name == c.Name {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("embedded etcd: --initial-cluster does not name this member %q", c.Name)
		}
	}
	return nil
}

func parseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http(s)://host:port URL", s)
	}
	return u, nil
}

// Member is a running embedded etcd member.
type Member struct {
	etcd  *embed.Etcd
	cfg   Config
	level zap.AtomicLevel
}

// Start starts the member and waits until it has joined a quorum (or
// StartTimeout passes, when the other members are not up yet).
func Start(cfg Config) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cu, _ := parseURL(cfg.ClientURL)
	pu, _ := parseURL(cfg.PeerURL)
	acu, _ := parseURL(cfg.AdvertiseClientURL)
	apu, _ := parseURL(cfg.AdvertisePeerURL)
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = filepath.Join(cfg.Dir)
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*acu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*apu}
	ec.InitialCluster = cfg.InitialCluster
	if ec.InitialCluster == "" {
		ec.InitialCluster = cfg.Name + "=" + cfg.AdvertisePeerURL
	}
	ec.InitialClusterToken = cfg.ClusterToken
	if ec.InitialClusterToken == "" {
		ec.InitialClusterToken = "tandem"
	}
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	if cfg.HeartbeatMs != 0 {
		ec.TickMs = cfg.HeartbeatMs
	}
	if cfg.ElectionMs != 0 {
		ec.ElectionMs = cfg.ElectionMs
	}
	if cfg.TLS() {
		if err := lockDown(ec, &cfg); err != nil {
			return nil, err
		}
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "error"
	}
	lg, level, err := newLogger(cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	// Keep the history short: tandem reads the current state and watches from now.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "5m"
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: start member %s: %w", cfg.Name, err)
	}
	timeout := cfg.StartTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: member %s: %w", cfg.Name, err)
	case <-time.After(timeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd: member %s did not join a quorum within %s; are the other --initial-cluster members running?", cfg.Name, timeout)
	}
	return &Member{etcd: e, cfg: cfg, level: level}, nil
}

// ClientURL returns the URL clients use to reach this member.
func (m *Member) ClientURL() string { return m.cfg.ClientURL }

// IsLeader reports whether this member is the etcd raft leader.
func (m *Member) IsLeader() bool { return m.etcd.Server.Leader() == m.etcd.Server.MemberID() }

// ID returns the member's etcd ID.
func (m *Member) ID() uint64 { return uint64(m.etcd.Server.MemberID()) }

// Err returns a channel that reports a fatal error of the member.
func (m *Member) Err() <-chan error { return m.etcd.Err() }

// hears reports whether the member at endpoint and this member, the
// leader, hear each other: through cli, the member's status names this
// member its leader in its term, and a linearizable read of key through
// that member alone completes within hearWithin (etcd serves it only after
// the member has asked the leader for its commit index and the leader has
// answered: a round trip over the peer ports, both ways). A member whose
// client port answers may still be cut off from the leader on the peer
// port, in either direction (a partition); handing it leadership would
// stall every write until the transfer times out.
func (m *Member) hears(ctx context.Context, cli *clientv3.Client, endpoint, key string) bool {
	const hearWithin = 500 * time.Millisecond
	srv := m.etcd.Server
	hctx, cancel := context.WithTimeout(ctx, hearWithin)
	defer cancel()
	st, err := cli.Status(hctx, endpoint)
	if err != nil || st.Leader != uint64(srv.MemberID()) || st.RaftTerm != srv.Term() {
		return false
	}
	conn, err := cli.Dial(endpoint)
	if err != nil {
		return false
	}
	defer conn.Close()
	_, err = pb.NewKVClient(conn).Range(hctx, &pb.RangeRequest{Key: []byte(key), CountOnly: true})
	return err == nil
}

// Close stops the member and waits for it to shut down.
func (m *Member) Close() {
	m.level.SetLevel(zap.FatalLevel) // closing listeners is not an error worth printing
	m.etcd.Close()
}

// MoveLeadershipAway hands etcd's raft leadership to another live voting
// member if this member holds it, and returns the new leader's name.
//
// Why: a tandem active whose own member leads etcd wins elections fastest,
// so the two tend to share a process. Killing that process then costs an
// etcd election first, and etcd's new leader renews every lease to its full
// TTL, so detection takes roughly election timeout + TTL instead of TTL.
// Keeping etcd leadership on a standby's member avoids that. A peer counts
// as live when it and this leader hear each other (see hears), which a
// linearizable read of key (one cli may read) through it shows.
func (m *Member) MoveLeadershipAway(ctx context.Context, cli *clientv3.Client, key string) (string, error) {
	srv := m.etcd.Server
	if srv.Leader() != srv.MemberID() {
		return "", nil
	}
	for _, peer := range srv.Cluster().Members() {
		if peer.ID == srv.MemberID() || peer.IsLearner || len(peer.ClientURLs) == 0 {
			continue
		}
		if !m.hears(ctx, cli, peer.ClientURLs[0], key) {
			continue // never hand leadership to a member that may not hear this one
		}
		mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := srv.MoveLeader(mctx, uint64(srv.MemberID()), uint64(peer.ID))
		cancel()
		if err != nil {
			return "", fmt.Errorf("move etcd leadership to %s: %w", peer.Name, err)
		}
		return peer.Name, nil
	}
	return "", errors.New("no live peer to take etcd leadership")
}
