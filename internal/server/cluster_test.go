package server_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/api"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/server"
)

// node is one in-process server with its own etcd client and HTTP listener,
// as a separate process would have.
type node struct {
	srv  *server.Server
	cli  *clientv3.Client
	http *httptest.Server
	url  string
	dead bool
}

type cluster struct {
	t     testing.TB
	etcd  *etcdtest.Etcd
	nodes []*node
	mod   func(*server.Config)
}

const (
	testTTL       = time.Second
	probeInterval = 50 * time.Millisecond
)

// newCluster starts n servers (rm1..rmN) on one real etcd.
func newCluster(t testing.TB, n int, mod func(*server.Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, etcd: etcdtest.Start(t), mod: mod}
	for i := 0; i < n; i++ {
		c.nodes = append(c.nodes, c.start("rm"+string(rune('1'+i))))
	}
	return c
}

func testLogger() *slog.Logger {
	if os.Getenv("TANDEM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (c *cluster) start(id string) *node {
	c.t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	n := &node{cli: c.etcd.Client(c.t), http: ts, url: "http://" + ts.Listener.Addr().String()}
	cfg := server.DefaultConfig()
	cfg.ID, cfg.Cluster, cfg.URL, cfg.Etcd, cfg.LeaseTTL, cfg.Logger = id, "test", n.url, n.cli, testTTL, testLogger()
	cfg.ProbeInterval = probeInterval
	if c.mod != nil {
		c.mod(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		c.t.Fatalf("new server %s: %v", id, err)
	}
	n.srv = srv
	ts.Config.Handler = api.New(srv, cfg.Logger)
	ts.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		c.t.Fatalf("start server %s: %v", id, err)
	}
	c.t.Cleanup(func() {
		if !n.dead {
			_ = srv.Close()
		}
		ts.Close()
	})
	return n
}

// crash makes node i vanish the way kill -9 does: its HTTP listener and its
// etcd connection go away without a word, so its lease runs out on its own.
func (c *cluster) crash(i int) {
	c.t.Helper()
	n := c.nodes[i]
	n.dead = true
	n.http.CloseClientConnections()
	n.http.Close()
	n.cli.Close()
	done := make(chan struct{})
	go func() { _ = n.srv.Close(); close(done) }() // ends its goroutines; its etcd calls all fail
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.t.Fatalf("crashed server %d did not stop its goroutines", i)
	}
}

// waitActive waits until exactly one live node is active and returns it.
func (c *cluster) waitActive(not ...int) int {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		active := -1
		count := 0
		for i, n := range c.nodes {
			skip := n.dead
			for _, x := range not {
				skip = skip || x == i
			}
			if skip {
				continue
			}
			if _, ok := n.srv.ActiveEpoch(); ok {
				active, count = i, count+1
			}
		}
		if count == 1 {
			return active
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("no single active server within 15s")
	return -1
}

// activeCount counts live nodes that consider themselves active.
func (c *cluster) activeCount() int {
	n := 0
	for _, nd := range c.nodes {
		if _, ok := nd.srv.ActiveEpoch(); ok && !nd.dead {
			n++
		}
	}
	return n
}

func (c *cluster) urls() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.url)
	}
	return out
}

func (c *cluster) client(urls ...string) *client.Client {
	c.t.Helper()
	if len(urls) == 0 {
		urls = c.urls()
	}
	cl, err := client.New(client.Config{Servers: urls})
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// countJobs counts job records in etcd itself, not in any server's view.
func (c *cluster) countJobs() int64 {
	c.t.Helper()
	cli := c.etcd.Client(c.t)
	resp, err := cli.Get(context.Background(), "/tandem/test/jobs/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.Count
}

// noRedirect is an HTTP client that shows redirects instead of following them.
var noRedirect = &http.Client{
	Timeout:       5 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, method, url, contentType, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

// errorCode decodes an API error body's code ("" if it is not one).
func errorCode(body string) string {
	var eb tandem.ErrorBody
	if json.Unmarshal([]byte(body), &eb) != nil || eb.Error == nil {
		return ""
	}
	return eb.Error.Code
}

// errorMessage decodes an API error body's message.
func errorMessage(body string) string {
	var eb tandem.ErrorBody
	if json.Unmarshal([]byte(body), &eb) != nil || eb.Error == nil {
		return ""
	}
	return eb.Error.Message
}
