// Package etcdview keeps a live copy of some of etcd's keys in memory: read
// once, then kept by a watch from the revision read, read again whenever
// the watch is lost or compacted away. Supervisors and tandem lb decide
// from such a copy; what they decide is a transaction that compares what it
// relied on (or a proxy change that the next change corrects), so a copy a
// little behind etcd costs a retry, never safety.
package etcdview

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Range is one key, or every key under a prefix.
type Range struct {
	Key    string
	Prefix bool
}

// Config says what a Cache holds.
type Config struct {
	// Watch is the prefix watched for changes.
	Watch string
	// Load are the ranges read at every (re)sync, all at one revision; by
	// default the whole Watch prefix.
	Load []Range
	// Keep says which watched keys to hold (default: all): a cache of a
	// cluster's membership ignores its jobs.
	Keep func(key string) bool
	// StallCheck, if positive, is how often the watch is checked to be
	// keeping up (Lag, bounded by StallCheck); a watch that is not is
	// made anew. A watch stream is bound to one etcd member, and a frozen
	// member (a SIGSTOPped process, a cut link) keeps its connection open
	// and delivers nothing: gRPC's keepalive, at least 10 s, is the only
	// other way out. The new watch goes through the next member the
	// client's balancer picks.
	StallCheck time.Duration
	Log        *slog.Logger
}

// Cache is the live copy. Its methods are safe for concurrent use.
type Cache struct {
	cli *clientv3.Client
	cfg Config

	mu     sync.RWMutex
	kvs    map[string]*mvccpb.KeyValue
	rev    int64
	synced bool
	change chan struct{} // closed and replaced on every change
	seenAt time.Time     // when the last change arrived
	revCh  chan struct{} // closed and replaced whenever rev moves on
	// stopWatch ends the current watch, which Run then makes anew.
	stopWatch context.CancelFunc
}

// New returns a Cache of cli's keys as cfg says; Run fills and keeps it.
func New(cli *clientv3.Client, cfg Config) *Cache {
	if len(cfg.Load) == 0 {
		cfg.Load = []Range{{Key: cfg.Watch, Prefix: true}}
	}
	if cfg.Keep == nil {
		cfg.Keep = func(string) bool { return true }
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Cache{cli: cli, cfg: cfg, kvs: map[string]*mvccpb.KeyValue{}, change: make(chan struct{}), revCh: make(chan struct{})}
}

// Snapshot returns a fixed Cache holding kvs as read at rev (no Run).
func Snapshot(kvs []*mvccpb.KeyValue, rev int64) *Cache {
	c := New(nil, Config{})
	for _, kv := range kvs {
		c.kvs[string(kv.Key)] = kv
	}
	c.rev, c.synced = rev, true
	return c
}

// Changed returns a channel closed at the next change.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.change
}

// Rev is the etcd revision the cache has reached.
func (c *Cache) Rev() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.rev
}

// Synced reports whether the cache has read etcd at least once.
func (c *Cache) Synced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced
}

// SeenAt is when the last change of a kept key arrived.
func (c *Cache) SeenAt() time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.seenAt
}

// WaitRev waits until the cache has reached rev, or ctx ends.
func (c *Cache) WaitRev(ctx context.Context, rev int64) error {
	for {
		c.mu.RLock()
		ch, ok := c.revCh, c.synced && c.rev >= rev
		c.mu.RUnlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Get returns key's value, or nil.
func (c *Cache) Get(key string) *mvccpb.KeyValue {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.kvs[key]
}

// List returns the keys under prefix, in order.
func (c *Cache) List(prefix string) []*mvccpb.KeyValue {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*mvccpb.KeyValue
	for k, kv := range c.kvs {
		if strings.HasPrefix(k, prefix) {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return string(out[i].Key) < string(out[j].Key) })
	return out
}

// Run keeps the cache until ctx ends.
func (c *Cache) Run(ctx context.Context) {
	if c.cfg.StallCheck > 0 {
		go c.checkStalls(ctx)
	}
	for ctx.Err() == nil {
		kvs, rev, err := c.load(ctx)
		if err != nil {
			c.cfg.Log.Warn("read from etcd", "prefix", c.cfg.Watch, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		c.mu.Lock()
		c.kvs = make(map[string]*mvccpb.KeyValue, len(kvs))
		for _, kv := range kvs {
			if c.cfg.Keep(string(kv.Key)) {
				c.kvs[string(kv.Key)] = kv
			}
		}
		c.rev, c.synced = rev, true
		c.seenAt = time.Now()
		c.notify()
		c.notifyRev()
		c.mu.Unlock()

		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		c.mu.Lock()
		c.stopWatch = cancel
		c.mu.Unlock()
		wch := c.cli.Watch(wctx, c.cfg.Watch, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
		for wr := range wch {
			if err := wr.Err(); err != nil {
				c.cfg.Log.Warn("watch ended; reading again", "prefix", c.cfg.Watch, "err", err)
				break
			}
			changed := false
			c.mu.Lock()
			for _, ev := range wr.Events {
				k := string(ev.Kv.Key)
				if !c.cfg.Keep(k) {
					continue
				}
				changed = true
				if ev.Type == clientv3.EventTypeDelete {
					delete(c.kvs, k)
				} else {
					c.kvs[k] = ev.Kv
				}
			}
			if wr.Header.Revision > c.rev {
				c.rev = wr.Header.Revision
				c.notifyRev()
			}
			// Only a change of a kept key wakes the waiters: a cache of
			// membership must not wake for every job written.
			if changed {
				c.seenAt = time.Now()
				c.notify()
			}
			c.mu.Unlock()
		}
		cancel()
	}
}

// load reads every Load range at one revision.
func (c *Cache) load(ctx context.Context) ([]*mvccpb.KeyValue, int64, error) {
	timeout := 5 * time.Second
	if c.cfg.StallCheck > 0 {
		// A read through a frozen member is given up as fast as a watch.
		timeout = max(2*c.cfg.StallCheck, time.Second)
	}
	gctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var kvs []*mvccpb.KeyValue
	var rev int64
	for _, r := range c.cfg.Load {
		var opts []clientv3.OpOption
		if r.Prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.cli.Get(gctx, r.Key, opts...)
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
	}
	return kvs, rev, nil
}

// notifyRev wakes WaitRev's waiters; c.mu is held.
func (c *Cache) notifyRev() {
	close(c.revCh)
	c.revCh = make(chan struct{})
}

// Lag measures how far behind etcd the watch is: the time from reading
// etcd's current revision to the cache reaching it, with a progress
// request so that a watch with nothing to deliver moves on too. A watch
// that is stuck makes it return ctx's error after ctx ends.
func (c *Cache) Lag(ctx context.Context) (time.Duration, error) {
	d, _, err := c.lag(ctx)
	return d, err
}

// lag is Lag, and whether etcd's revision could be read (a failure after
// that is the watch's).
func (c *Cache) lag(ctx context.Context) (time.Duration, bool, error) {
	start := time.Now()
	resp, err := c.cli.Get(ctx, c.cfg.Watch, clientv3.WithCountOnly())
	if err != nil {
		return 0, false, err
	}
	// The request goes on the watch's own stream: clientv3 keys streams by
	// the context's metadata, and the watch runs under WithRequireLeader.
	// It is sent again now and then: one sent while the watch is being
	// (re)created reaches no watcher.
	for {
		if err := c.cli.RequestProgress(clientv3.WithRequireLeader(ctx)); err != nil {
			return time.Since(start), true, err
		}
		wctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		err := c.WaitRev(wctx, resp.Header.Revision)
		cancel()
		if err == nil {
			return time.Since(start), true, nil
		}
		if ctx.Err() != nil {
			return time.Since(start), true, ctx.Err()
		}
	}
}

// checkStalls makes the watch anew whenever it does not reach etcd's
// revision within StallCheck (see Config.StallCheck).
func (c *Cache) checkStalls(ctx context.Context) {
	all := c.cli.Endpoints()
	t := time.NewTicker(c.cfg.StallCheck)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n%20 == 0 {
			c.checkBack(ctx, all)
		}
		if !c.Synced() {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, c.cfg.StallCheck)
		d, read, err := c.lag(lctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			continue // keeping up
		}
		if !read {
			// etcd did not answer through the member this read went to.
			c.leaveOutUnresponsive(ctx, all)
			continue
		}
		c.cfg.Log.Warn("the watch is not keeping up with etcd; watching again", "prefix", c.cfg.Watch,
			"behind_for", d.String(), "err", err)
		c.leaveOutUnresponsive(ctx, all)
		c.mu.Lock()
		if c.stopWatch != nil {
			c.stopWatch()
		}
		c.mu.Unlock()
	}
}

// leaveOutUnresponsive asks each of the client's endpoints for its status,
// each on a connection of its own, and keeps only those that answer within
// StallCheck (unless none does): the new watch, and every read, then go
// through a member that answers. A member left out is taken back when it
// answers again (checkBack).
func (c *Cache) leaveOutUnresponsive(ctx context.Context, all []string) {
	ok := c.responsive(ctx, all)
	if len(ok) == 0 || len(ok) == len(all) || slices.Equal(ok, c.cli.Endpoints()) {
		return // none answers, all do (checkBack's business), or no change
	}
	c.cfg.Log.Warn("leaving out the etcd endpoints that do not answer", "answering", ok, "all", all)
	c.cli.SetEndpoints(ok...)
}

// checkBack puts every endpoint back once all of them answer again.
func (c *Cache) checkBack(ctx context.Context, all []string) {
	if len(c.cli.Endpoints()) == len(all) {
		return
	}
	if ok := c.responsive(ctx, all); len(ok) == len(all) {
		c.cfg.Log.Info("every etcd endpoint answers again", "endpoints", all)
		c.cli.SetEndpoints(all...)
	}
}

// responsive returns the endpoints among eps that answer a status request
// within StallCheck.
func (c *Cache) responsive(ctx context.Context, eps []string) []string {
	answered := make([]bool, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, c.cfg.StallCheck)
			defer cancel()
			_, err := c.cli.Status(sctx, ep)
			answered[i] = err == nil
		})
	}
	wg.Wait()
	var out []string
	for i, ep := range eps {
		if answered[i] {
			out = append(out, ep)
		}
	}
	return out
}

// notify wakes Changed's waiters; c.mu is held.
func (c *Cache) notify() {
	close(c.change)
	c.change = make(chan struct{})
}

// Decode returns kv's JSON value as a T; false if kv is nil or not a T.
func Decode[T any](kv *mvccpb.KeyValue) (T, bool) {
	var t T
	if kv == nil {
		return t, false
	}
	if err := json.Unmarshal(kv.Value, &t); err != nil {
		return t, false
	}
	return t, true
}
