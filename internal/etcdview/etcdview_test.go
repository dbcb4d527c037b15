package etcdview

import (
	"context"
	"fmt"
	"github.com/tandemhq/tandem/internal/faultnet"
	"go.uber.org/zap"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/etcdtest"
)

func TestCache(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	put := func(k, v string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	put("/c/a", `{"n":1}`)
	put("/c/jobs/1", "x")
	put("/other", "y")

	c := New(cli, Config{Watch: "/c/", Keep: func(k string) bool { return !strings.HasPrefix(k, "/c/jobs/") }})
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Run(rctx)
	if err := c.WaitRev(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if kv := c.Get("/c/a"); kv == nil || string(kv.Value) != `{"n":1}` {
		t.Fatalf("Get /c/a: %v", kv)
	}
	if c.Get("/c/jobs/1") != nil || c.Get("/other") != nil {
		t.Fatal("kept a key Keep refused, or one outside the prefix")
	}
	v, ok := Decode[struct{ N int }](c.Get("/c/a"))
	if !ok || v.N != 1 {
		t.Fatalf("Decode: %+v %v", v, ok)
	}

	// A kept change wakes the waiters and is there when they look.
	ch := c.Changed()
	rev := put("/c/b", "2")
	<-ch
	if err := c.WaitRev(ctx, rev); err != nil || c.Get("/c/b") == nil {
		t.Fatalf("after a put: %v, %v", err, c.Get("/c/b"))
	}
	if got := c.List("/c/"); len(got) != 2 || string(got[0].Key) != "/c/a" || string(got[1].Key) != "/c/b" {
		t.Fatalf("List: %v", got)
	}
	if _, err := cli.Delete(ctx, "/c/a"); err != nil {
		t.Fatal(err)
	}
	for c.Get("/c/a") != nil {
		select {
		case <-c.Changed():
		case <-ctx.Done():
			t.Fatal("the deletion never reached the cache")
		}
	}

	// A cache that loads named keys, over a compacted history.
	stop()
	rev = put("/c/d", "4")
	if _, err := cli.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	c2 := New(cli, Config{Watch: "/c/", Load: []Range{{Key: "/c/b"}, {Key: "/c/d"}}})
	go c2.Run(ctx)
	if err := c2.WaitRev(ctx, rev); err != nil || c2.Get("/c/b") == nil || c2.Get("/c/d") == nil {
		t.Fatalf("a cache loading two keys: %v", err)
	}
	resp, err := cli.Get(ctx, "/c/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	snap := Snapshot(resp.Kvs, resp.Header.Revision)
	if snap.Rev() != resp.Header.Revision || len(snap.List("/c/")) != len(resp.Kvs) || !snap.Synced() {
		t.Fatalf("Snapshot: rev %d, %d keys", snap.Rev(), len(snap.List("/c/")))
	}
}

// TestLag: writes outside the watched prefix move etcd's revision on
// without any event for the watch; Lag still sees the watch reach it (a
// progress request), and WaitRev wakes for a revision that came that way.
func TestLag(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := New(cli, Config{Watch: "/c/"})
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Run(rctx)
	if err := c.WaitRev(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var last int64
	for i := range 20 {
		resp, err := cli.Put(ctx, fmt.Sprintf("/elsewhere/%d", i), "x")
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	lag, err := c.Lag(lctx)
	if err != nil {
		t.Fatalf("Lag: %v (after %s)", err, lag)
	}
	if lag <= 0 {
		t.Errorf("lag %s, want a positive duration", lag)
	}
	if rev := c.Rev(); rev < last {
		t.Errorf("after Lag the cache is at revision %d, want at least %d", rev, last)
	}
}

// TestStallCheck: the watch goes through an etcd endpoint that freezes
// (a proxy that stops forwarding, as a SIGSTOPped member would); with
// StallCheck the cache notices and watches again through the other
// endpoint, and a change made meanwhile arrives.
func TestStallCheck(t *testing.T) {
	e := etcdtest.Start(t)
	direct := strings.TrimPrefix(e.Endpoint, "http://")
	px, err := faultnet.Listen("127.0.0.1:0", direct)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + px.Addr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := New(cli, Config{Watch: "/c/", StallCheck: 200 * time.Millisecond})
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Run(rctx)
	if err := c.WaitRev(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// The watch runs through the proxy; now the client may also use etcd
	// directly, and the proxy freezes.
	cli.SetEndpoints("http://"+px.Addr(), e.Endpoint)
	px.Block()
	writer := e.Client(t)
	if _, err := writer.Put(ctx, "/c/after-freeze", "x"); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	for c.Get("/c/after-freeze") == nil {
		select {
		case <-c.Changed():
		case <-wctx.Done():
			t.Fatal("the change made while the watch's endpoint was frozen never arrived")
		}
	}
}
