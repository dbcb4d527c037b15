package election_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/faultnet"
	"github.com/tandemhq/tandem/internal/keys"
)

var layout = keys.New("test")

// shards is the shard count of the active-active tests; 256 is enough to
// need more than MaxOpsPerTxn operations.
const shards = 256

// testCtx returns a context that bounds every etcd call of a test, so a
// hang fails the test instead of the whole run.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// server is one simulated tandem server: its own etcd client, a candidate,
// and a membership key bound to its session lease, as a real one has.
type server struct {
	id    string
	cli   *clientv3.Client
	cand  *election.Candidate
	lease clientv3.LeaseID
}

func newServer(t *testing.T, e *etcdtest.Etcd, id string) *server {
	t.Helper()
	cli := e.Client(t)
	lease := grant(t, cli)
	if _, err := cli.Put(testCtx(t), layout.Server(id), id, clientv3.WithLease(lease)); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return &server{id: id, cli: cli, cand: election.NewCandidate(cli, id, "http://"+id+":8080"), lease: lease}
}

// target names s as a hand-off target, with the lease it registered with.
func (s *server) target() election.Target {
	return election.Target{ID: s.id, MemberKey: layout.Server(s.id), Lease: s.lease}
}

// acquire makes one attempt by s to own o, bound to its session lease.
func (s *server) acquire(t *testing.T, o keys.Ownership, h *election.Handoff) (election.Fence, bool) {
	t.Helper()
	f, won, err := s.cand.TryAcquire(testCtx(t), o, s.lease, h)
	if err != nil {
		t.Fatalf("%s: acquire %s: %v", s.id, o.Owner, err)
	}
	return f, won
}

// mustAcquire makes s own o, or fails the test.
func (s *server) mustAcquire(t *testing.T, o keys.Ownership, h *election.Handoff) election.Fence {
	t.Helper()
	f, won := s.acquire(t, o, h)
	if !won {
		t.Fatalf("%s: acquire %s: lost, want won", s.id, o.Owner)
	}
	return f
}

func grant(t *testing.T, cli *clientv3.Client) clientv3.LeaseID {
	t.Helper()
	resp, err := cli.Grant(testCtx(t), 30)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	return resp.ID
}

func revoke(t *testing.T, cli *clientv3.Client, lease clientv3.LeaseID) {
	t.Helper()
	if _, err := cli.Revoke(testCtx(t), lease); err != nil {
		t.Fatalf("revoke lease %x: %v", lease, err)
	}
}

// get returns key as stored (at a revision with clientv3.WithRev), or nil.
func get(t *testing.T, cli *clientv3.Client, key string, opts ...clientv3.OpOption) *mvccpb.KeyValue {
	t.Helper()
	resp, err := cli.Get(testCtx(t), key, opts...)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}

func mustDelete(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	if _, err := cli.Delete(testCtx(t), key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
}

// readOwner returns the owner record of key, as a server watching it sees it.
func readOwner(t *testing.T, cli *clientv3.Client, key string) election.Owner {
	t.Helper()
	kv := get(t, cli, key)
	if kv == nil {
		t.Fatalf("owner key %s: absent, want present", key)
	}
	var o election.Owner
	if err := json.Unmarshal(kv.Value, &o); err != nil {
		t.Fatalf("owner key %s: %v", key, err)
	}
	o.Epoch, o.Lease, o.Key = kv.CreateRevision, kv.Lease, string(kv.Key)
	return o
}

// readHandoff returns the pending hand-off of o, as a candidate sees it, or nil.
func readHandoff(t *testing.T, cli *clientv3.Client, o keys.Ownership) *election.Handoff {
	t.Helper()
	kv := get(t, cli, o.Handoff)
	if kv == nil {
		return nil
	}
	var h election.Handoff
	if err := json.Unmarshal(kv.Value, &h); err != nil {
		t.Fatalf("hand-off key %s: %v", o.Handoff, err)
	}
	h.ModRev = kv.ModRevision
	return &h
}

// readResign returns the resign record of o and its key, or fails if there is none.
func readResign(t *testing.T, cli *clientv3.Client, o keys.Ownership) (election.Resignation, *mvccpb.KeyValue) {
	t.Helper()
	kv := get(t, cli, o.Resign)
	if kv == nil {
		t.Fatalf("resign key %s: absent, want present", o.Resign)
	}
	var r election.Resignation
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		t.Fatalf("resign key %s: %v", o.Resign, err)
	}
	return r, kv
}

// checkOwnedBy fails unless o's owner key is the one fence f names.
func checkOwnedBy(t *testing.T, cli *clientv3.Client, o keys.Ownership, f election.Fence) {
	t.Helper()
	kv := get(t, cli, o.Owner)
	if kv == nil {
		t.Fatalf("owner key %s: absent, want created at %d", o.Owner, f.Rev)
	}
	if kv.CreateRevision != f.Rev {
		t.Fatalf("owner key %s: create revision %d, want %d", o.Owner, kv.CreateRevision, f.Rev)
	}
}

func checkAbsent(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	if kv := get(t, cli, key); kv != nil {
		t.Fatalf("key %s: present (%q), want absent", key, kv.Value)
	}
}

// checkBetween fails unless lo <= at <= hi.
func checkBetween(t *testing.T, what string, at, lo, hi time.Time) {
	t.Helper()
	if at.Before(lo) || at.After(hi) {
		t.Fatalf("%s: got %s, want between %s and %s", what, at, lo, hi)
	}
}

// guardedPut writes key=val only if f holds, and reports whether it did and
// whether f.Held agrees with etcd about the owner key.
func guardedPut(t *testing.T, cli *clientv3.Client, f election.Fence, key, val string) bool {
	t.Helper()
	resp, err := cli.Txn(testCtx(t)).If(f.IsOwner()).
		Then(clientv3.OpPut(key, val)).
		Else(clientv3.OpGet(f.Key)).Commit()
	if err != nil {
		t.Fatalf("guarded put: %v", err)
	}
	if !resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().Kvs; f.Held(kvs) {
			t.Fatalf("fence %s: Held(%v) after a failed IsOwner comparison: got true, want false", f, kvs)
		}
	}
	return resp.Succeeded
}

// unreachable returns a client of e behind a proxy that forwards nothing:
// etcd is up, but this client cannot reach it (a partition, not a refusal).
func unreachable(t *testing.T, e *etcdtest.Etcd) *clientv3.Client {
	t.Helper()
	px, err := faultnet.Listen("127.0.0.1:0", strings.TrimPrefix(e.Endpoint, "http://"))
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	t.Cleanup(func() { px.Close() })
	px.Block()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://" + px.Addr()},
		DialTimeout: 500 * time.Millisecond,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client through the proxy: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// within runs f and fails the test if it has not returned after d: the
// calls it is used for must end with their ctx, not hang.
func within(t *testing.T, d time.Duration, what string, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
		return time.Since(start)
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %s, want it to return once its ctx ends", what, d)
		return 0
	}
}

// A Fence is a plain value: its epoch, zero value and text form.
func TestFenceValue(t *testing.T) {
	tests := []struct {
		name       string
		fence      election.Fence
		wantEpoch  int64
		wantZero   bool
		wantString string
	}{
		{"zero", election.Fence{}, 0, true, "@0"},
		{"owned", election.Fence{Key: "/tandem/test/leader", Rev: 42}, 42, false, "/tandem/test/leader@42"},
		{"shard", election.Fence{Key: layout.Shard(7, shards).Owner, Rev: 9}, 9, false, "/tandem/test/shards/0007/owner@9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.fence.Epoch(); got != tc.wantEpoch {
				t.Errorf("Epoch: got %d, want %d", got, tc.wantEpoch)
			}
			if got := tc.fence.IsZero(); got != tc.wantZero {
				t.Errorf("IsZero: got %t, want %t", got, tc.wantZero)
			}
			if got := tc.fence.String(); got != tc.wantString {
				t.Errorf("String: got %q, want %q", got, tc.wantString)
			}
		})
	}
}

// Held tells a fenced write from other failed comparisons by the owner key
// read in the transaction's Else branch.
func TestFenceHeld(t *testing.T) {
	f := election.Fence{Key: "/tandem/test/leader", Rev: 42}
	kv := func(create int64) []*mvccpb.KeyValue {
		return []*mvccpb.KeyValue{{Key: []byte(f.Key), CreateRevision: create, ModRevision: create + 5}}
	}
	tests := []struct {
		name string
		kvs  []*mvccpb.KeyValue
		want bool
	}{
		{"key absent", nil, false},
		{"created at the fence's revision", kv(42), true},
		{"re-created later", kv(50), false},
		{"an older key", kv(41), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := f.Held(tc.kvs); got != tc.want {
				t.Errorf("Held: got %t, want %t", got, tc.want)
			}
		})
	}
}

// I1: a write guarded by a fence succeeds exactly while the owner key has
// the fence's create revision. Once the key is deleted or re-created, by
// anyone, even the same candidate, the old fence rejects every write.
func TestFenceIsOwner(t *testing.T) {
	t.Parallel() // each test has its own etcd
	e := etcdtest.Start(t)
	a, b := newServer(t, e, "a"), newServer(t, e, "b")
	tests := []struct {
		name string
		// end ends a's ownership of o and returns the new owner's fence, if any.
		end func(t *testing.T, o keys.Ownership) (election.Fence, *server)
	}{
		{"deleted", func(t *testing.T, o keys.Ownership) (election.Fence, *server) {
			mustDelete(t, a.cli, o.Owner)
			return election.Fence{}, nil
		}},
		{"re-created by another candidate", func(t *testing.T, o keys.Ownership) (election.Fence, *server) {
			mustDelete(t, a.cli, o.Owner)
			return b.mustAcquire(t, o, nil), b
		}},
		{"re-created by the same candidate", func(t *testing.T, o keys.Ownership) (election.Fence, *server) {
			mustDelete(t, a.cli, o.Owner)
			return a.mustAcquire(t, o, nil), a
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := layout.Shard(i, shards)
			data := fmt.Sprintf("/tandem/test/data/%d", i)
			f := a.mustAcquire(t, o, nil)
			if !guardedPut(t, a.cli, f, data, "by the first owner") {
				t.Fatalf("write guarded by the owner's fence %s: rejected, want accepted", f)
			}
			if kv := get(t, a.cli, o.Owner); !f.Held([]*mvccpb.KeyValue{kv}) {
				t.Fatalf("Held of the owner's fence %s: got false, want true", f)
			}

			next, by := tc.end(t, o)

			if guardedPut(t, a.cli, f, data, "by a deposed owner") {
				t.Fatalf("write guarded by the old fence %s: accepted, want rejected", f)
			}
			if got := string(get(t, a.cli, data).Value); got != "by the first owner" {
				t.Fatalf("data after the fenced write: got %q, want %q", got, "by the first owner")
			}
			if next.IsZero() {
				return
			}
			if next.Rev <= f.Rev {
				t.Fatalf("epoch of the next owner: got %d, want > %d", next.Rev, f.Rev)
			}
			if !guardedPut(t, by.cli, next, data, "by the new owner") {
				t.Fatalf("write guarded by the new fence %s: rejected, want accepted", next)
			}
		})
	}
}

// TryAcquire wins only a free key with no hand-off to someone else pending,
// binds it to the lease, and its fence is the key's create revision.
func TestTryAcquire(t *testing.T) {
	t.Parallel() // each test has its own etcd
	e := etcdtest.Start(t)
	a, b, c := newServer(t, e, "a"), newServer(t, e, "b"), newServer(t, e, "c")

	t.Run("free key", func(t *testing.T) {
		o := layout.Shard(0, 1) // the legacy leader key of active/standby
		if o.Owner != layout.Leader() {
			t.Fatalf("owner key of a cluster of one shard: got %s, want %s", o.Owner, layout.Leader())
		}
		before := time.Now()
		f := a.mustAcquire(t, o, nil)
		after := time.Now()
		if f.Key != o.Owner {
			t.Fatalf("fence key: got %s, want %s", f.Key, o.Owner)
		}
		kv := get(t, a.cli, o.Owner)
		// The key was created by the transaction, so its create and mod
		// revisions are both the transaction's revision.
		if kv.CreateRevision != f.Rev || kv.ModRevision != f.Rev {
			t.Fatalf("owner key revisions: got create %d mod %d, want both %d (the fence)", kv.CreateRevision, kv.ModRevision, f.Rev)
		}
		if clientv3.LeaseID(kv.Lease) != a.lease {
			t.Fatalf("owner key lease: got %x, want %x", kv.Lease, a.lease)
		}
		owner := readOwner(t, a.cli, o.Owner)
		if owner.ID != "a" || owner.URL != "http://a:8080" {
			t.Fatalf("owner record: got id %q url %q, want %q %q", owner.ID, owner.URL, "a", "http://a:8080")
		}
		checkBetween(t, "owner record At", owner.At, before, after)
		if owner.Fence() != f {
			t.Fatalf("fence of the owner record: got %s, want %s", owner.Fence(), f)
		}

		for _, s := range []*server{b, a} {
			got, won, err := s.cand.TryAcquire(testCtx(t), o, s.lease, nil)
			if err != nil || won || !got.IsZero() {
				t.Fatalf("%s: TryAcquire of a held key: got %s, %t, %v; want a zero fence, false, nil", s.id, got, won, err)
			}
		}
		checkOwnedBy(t, a.cli, o, f)
	})

	t.Run("key bound to the lease", func(t *testing.T) {
		o := layout.Shard(1, shards)
		lease := grant(t, a.cli)
		f, won, err := a.cand.TryAcquire(testCtx(t), o, lease, nil)
		if err != nil || !won {
			t.Fatalf("TryAcquire: got %t, %v; want true, nil", won, err)
		}
		revoke(t, a.cli, lease)
		checkAbsent(t, a.cli, o.Owner)
		if next := b.mustAcquire(t, o, nil); next.Rev <= f.Rev {
			t.Fatalf("epoch after the lease ended: got %d, want > %d", next.Rev, f.Rev)
		}
	})

	t.Run("hand-off keeps the others out", func(t *testing.T) {
		o := layout.Shard(2, shards)
		f := a.mustAcquire(t, o, nil)
		if _, err := a.cand.HandOff(testCtx(t), b.target(), tandem.CauseRebalance, election.Move{Keys: o, Fence: f}); err != nil {
			t.Fatalf("hand off to b: %v", err)
		}
		checkAbsent(t, a.cli, o.Owner)
		h := readHandoff(t, a.cli, o)
		for _, tc := range []struct {
			who  *server
			seen *election.Handoff
		}{
			{c, nil}, // has not seen the hand-off
			{c, h},   // has seen it, and it is not for c
			{a, nil}, // the previous owner
			{a, h},
		} {
			if _, won := tc.who.acquire(t, o, tc.seen); won {
				t.Fatalf("%s (saw hand-off: %t): TryAcquire while a hand-off to b is pending: won, want lost", tc.who.id, tc.seen != nil)
			}
		}
		checkAbsent(t, a.cli, o.Owner)

		fb := b.mustAcquire(t, o, h)
		if fb.Rev <= f.Rev {
			t.Fatalf("b's epoch: got %d, want > %d", fb.Rev, f.Rev)
		}
		// The hand-off key existed just before b's transaction and not
		// after it: deleted by the very transaction that created the owner key.
		if get(t, a.cli, o.Handoff, clientv3.WithRev(fb.Rev-1)) == nil {
			t.Fatalf("hand-off key at revision %d: absent, want present", fb.Rev-1)
		}
		if kv := get(t, a.cli, o.Handoff, clientv3.WithRev(fb.Rev)); kv != nil {
			t.Fatalf("hand-off key at b's epoch %d: present, want deleted in the same transaction", fb.Rev)
		}
		checkOwnedBy(t, a.cli, o, fb)
		if _, won := c.acquire(t, o, nil); won {
			t.Fatal("c: TryAcquire after b took over: won, want lost")
		}
	})

	t.Run("hand-off ends with its target's lease", func(t *testing.T) {
		o := layout.Shard(3, shards)
		d := newServer(t, e, "d")
		f := a.mustAcquire(t, o, nil)
		if _, err := a.cand.HandOff(testCtx(t), d.target(), tandem.CauseRebalance, election.Move{Keys: o, Fence: f}); err != nil {
			t.Fatalf("hand off to d: %v", err)
		}
		h := readHandoff(t, c.cli, o)
		if _, won := c.acquire(t, o, h); won {
			t.Fatal("c: TryAcquire while the hand-off to d is pending: won, want lost")
		}
		revoke(t, d.cli, d.lease) // d dies before taking over
		checkAbsent(t, c.cli, o.Handoff)
		c.mustAcquire(t, o, h) // the hand-off c saw is gone: it is a free key again
	})

	t.Run("stale hand-off", func(t *testing.T) {
		// b's view of a hand-off to b is outdated: the shard went to b, back
		// to a, and is now being handed to b again by a newer hand-off.
		o := layout.Shard(4, shards)
		fa := a.mustAcquire(t, o, nil)
		handOff(t, a, b, o, fa)
		old := readHandoff(t, b.cli, o)
		fb := b.mustAcquire(t, o, old)
		handOff(t, b, a, o, fb)
		fa = a.mustAcquire(t, o, readHandoff(t, a.cli, o))
		handOff(t, a, b, o, fa)
		fresh := readHandoff(t, b.cli, o)
		if fresh.ModRev == old.ModRev {
			t.Fatalf("hand-off mod revision: got %d twice, want a new one", fresh.ModRev)
		}
		if _, won := b.acquire(t, o, old); won {
			t.Fatalf("b: TryAcquire with a stale hand-off (mod revision %d, now %d): won, want lost", old.ModRev, fresh.ModRev)
		}
		if got := readHandoff(t, b.cli, o); got == nil || got.ModRev != fresh.ModRev {
			t.Fatalf("hand-off after the stale attempt: got %+v, want it untouched at %d", got, fresh.ModRev)
		}
		b.mustAcquire(t, o, fresh)
	})

	t.Run("ctx", func(t *testing.T) {
		cancelled, cancel := context.WithCancel(context.Background())
		cancel()
		slow := unreachable(t, e)
		tests := []struct {
			name string
			cli  *clientv3.Client
			ctx  func() (context.Context, context.CancelFunc)
			want error
		}{
			{"cancelled", a.cli, func() (context.Context, context.CancelFunc) { return cancelled, func() {} }, context.Canceled},
			{"etcd unreachable", slow, func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), time.Second)
			}, context.DeadlineExceeded},
		}
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				o := layout.Shard(10+i, shards)
				ctx, cancel := tc.ctx()
				defer cancel()
				var err error
				var won bool
				within(t, 15*time.Second, "TryAcquire", func() {
					_, won, err = election.NewCandidate(tc.cli, "x", "http://x").TryAcquire(ctx, o, a.lease, nil)
				})
				if !errors.Is(err, tc.want) || won {
					t.Fatalf("TryAcquire: got %t, %v; want false, %v", won, err, tc.want)
				}
				checkAbsent(t, a.cli, o.Owner)
			})
		}
	})
}

// handOff hands o from one server to another, or fails the test.
func handOff(t *testing.T, from, to *server, o keys.Ownership, f election.Fence) {
	t.Helper()
	done, err := from.cand.HandOff(testCtx(t), to.target(), tandem.CauseRebalance, election.Move{Keys: o, Fence: f})
	if err != nil || len(done) != 1 || !done[0] {
		t.Fatalf("%s: hand off %s to %s: got %v, %v; want [true], nil", from.id, o.Owner, to.id, done, err)
	}
}

// Resign gives up each ownership whose fence still holds, records why, and
// touches nothing of one whose fence is stale.
func TestResign(t *testing.T) {
	t.Parallel() // each test has its own etcd
	e := etcdtest.Start(t)
	a, b := newServer(t, e, "a"), newServer(t, e, "b")

	t.Run("one move", func(t *testing.T) {
		o := layout.Shard(0, 1)
		f := a.mustAcquire(t, o, nil)
		before := time.Now()
		done, err := a.cand.Resign(testCtx(t), tandem.CauseShutdown, election.Move{Keys: o, Fence: f})
		after := time.Now()
		if err != nil || len(done) != 1 || !done[0] {
			t.Fatalf("Resign: got %v, %v; want [true], nil", done, err)
		}
		checkAbsent(t, a.cli, o.Owner)
		r, _ := readResign(t, a.cli, o)
		want := election.Resignation{From: "a", Epoch: f.Rev, Reason: tandem.CauseShutdown}
		if r.From != want.From || r.Epoch != want.Epoch || r.Reason != want.Reason || r.To != "" {
			t.Fatalf("resign record: got %+v, want %+v", r, want)
		}
		checkBetween(t, "resign record At", r.At, before, after)

		done, err = a.cand.Resign(testCtx(t), tandem.CauseShutdown, election.Move{Keys: o, Fence: f})
		if !errors.Is(err, tandem.ErrFenced) || len(done) != 1 || done[0] {
			t.Fatalf("second Resign of the same fence: got %v, %v; want [false], %v", done, err, tandem.ErrFenced)
		}
	})

	t.Run("one move, newer owner", func(t *testing.T) {
		o := layout.Shard(1, shards)
		f := a.mustAcquire(t, o, nil)
		mustDelete(t, a.cli, o.Owner)
		fb := b.mustAcquire(t, o, nil)
		_, err := a.cand.Resign(testCtx(t), tandem.CauseShutdown, election.Move{Keys: o, Fence: f})
		if !errors.Is(err, tandem.ErrFenced) {
			t.Fatalf("Resign of a superseded fence: got %v, want %v", err, tandem.ErrFenced)
		}
		checkOwnedBy(t, b.cli, o, fb)
	})

	t.Run("several moves, one stale", func(t *testing.T) {
		os := []keys.Ownership{layout.Shard(2, shards), layout.Shard(3, shards), layout.Shard(4, shards)}
		moves := make([]election.Move, len(os))
		for i, o := range os {
			moves[i] = election.Move{Keys: o, Fence: a.mustAcquire(t, o, nil)}
		}
		// Shard 3 was given up and b owns it now.
		if _, err := a.cand.Resign(testCtx(t), tandem.CauseRebalance, moves[1]); err != nil {
			t.Fatalf("resign shard 3: %v", err)
		}
		_, staleRec := readResign(t, a.cli, os[1])
		fb := b.mustAcquire(t, os[1], nil)

		done, err := a.cand.Resign(testCtx(t), tandem.CauseDrain, moves...)
		if err != nil {
			t.Fatalf("Resign: %v", err)
		}
		if want := []bool{true, false, true}; fmt.Sprint(done) != fmt.Sprint(want) {
			t.Fatalf("Resign: got %v, want %v", done, want)
		}
		checkOwnedBy(t, b.cli, os[1], fb)
		if _, rec := readResign(t, a.cli, os[1]); rec.ModRevision != staleRec.ModRevision {
			t.Fatalf("resign record of the stale shard: rewritten at %d, want untouched since %d", rec.ModRevision, staleRec.ModRevision)
		}
		for _, i := range []int{0, 2} {
			checkAbsent(t, a.cli, os[i].Owner)
			if r, _ := readResign(t, a.cli, os[i]); r.Reason != tandem.CauseDrain || r.Epoch != moves[i].Fence.Rev {
				t.Fatalf("resign record of %s: got %+v, want reason %s epoch %d", os[i].Owner, r, tandem.CauseDrain, moves[i].Fence.Rev)
			}
		}
	})

	t.Run("more moves than one transaction holds", func(t *testing.T) {
		const n, first, stale = 150, 100, 130 // stale is in the second batch
		if n <= election.MaxOpsPerTxn {
			t.Fatalf("%d moves fit in one transaction of %d", n, election.MaxOpsPerTxn)
		}
		moves := make([]election.Move, n)
		for i := range moves {
			o := layout.Shard(first+i, shards)
			moves[i] = election.Move{Keys: o, Fence: a.mustAcquire(t, o, nil)}
		}
		mustDelete(t, a.cli, moves[stale].Keys.Owner)
		fb := b.mustAcquire(t, moves[stale].Keys, nil)

		done, err := a.cand.Resign(testCtx(t), tandem.CauseShutdown, moves...)
		if err != nil {
			t.Fatalf("Resign of %d moves: %v", n, err)
		}
		if len(done) != n {
			t.Fatalf("Resign results: got %d, want %d", len(done), n)
		}
		for i, ok := range done {
			if want := i != stale; ok != want {
				t.Fatalf("Resign result %d (%s): got %t, want %t", i, moves[i].Keys.Owner, ok, want)
			}
		}
		for i, m := range moves {
			if i == stale {
				checkOwnedBy(t, b.cli, m.Keys, fb)
				continue
			}
			checkAbsent(t, a.cli, m.Keys.Owner)
			if r, _ := readResign(t, a.cli, m.Keys); r.Epoch != m.Fence.Rev {
				t.Fatalf("resign record of %s: got epoch %d, want %d", m.Keys.Owner, r.Epoch, m.Fence.Rev)
			}
		}
	})
}

// HandOff moves ownerships to a live target in one transaction: nothing
// moves if the target is gone, and the hand-off dies with the target's lease.
func TestHandOff(t *testing.T) {
	t.Parallel() // each test has its own etcd
	e := etcdtest.Start(t)
	a, b, c := newServer(t, e, "a"), newServer(t, e, "b"), newServer(t, e, "c")

	t.Run("target gone moves nothing", func(t *testing.T) {
		// b2 registered, then restarted with a new lease.
		b2 := newServer(t, e, "b2")
		oldLease := b2.lease
		b2.lease = grant(t, b2.cli)
		if _, err := b2.cli.Put(testCtx(t), layout.Server("b2"), "b2", clientv3.WithLease(b2.lease)); err != nil {
			t.Fatalf("re-register b2: %v", err)
		}
		tests := []struct {
			name   string
			target election.Target
		}{
			{"wrong lease", election.Target{ID: "b", MemberKey: layout.Server("b"), Lease: c.lease}},
			{"not registered", election.Target{ID: "ghost", MemberKey: layout.Server("ghost"), Lease: b.lease}},
			{"restarted", election.Target{ID: "b2", MemberKey: layout.Server("b2"), Lease: oldLease}},
		}
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				os := []keys.Ownership{layout.Shard(2*i, shards), layout.Shard(2*i+1, shards)}
				moves := make([]election.Move, len(os))
				for j, o := range os {
					moves[j] = election.Move{Keys: o, Fence: a.mustAcquire(t, o, nil)}
				}
				done, err := a.cand.HandOff(testCtx(t), tc.target, tandem.CauseRebalance, moves...)
				if !errors.Is(err, election.ErrTargetGone) || done != nil {
					t.Fatalf("HandOff: got %v, %v; want nil, %v", done, err, election.ErrTargetGone)
				}
				for _, m := range moves {
					checkOwnedBy(t, a.cli, m.Keys, m.Fence)
					checkAbsent(t, a.cli, m.Keys.Handoff)
					checkAbsent(t, a.cli, m.Keys.Resign)
				}
			})
		}
	})

	t.Run("one move", func(t *testing.T) {
		o := layout.Shard(0, 1)
		f := a.mustAcquire(t, o, nil)
		before := time.Now()
		done, err := a.cand.HandOff(testCtx(t), b.target(), tandem.CauseHandoff, election.Move{Keys: o, Fence: f})
		after := time.Now()
		if err != nil || len(done) != 1 || !done[0] {
			t.Fatalf("HandOff: got %v, %v; want [true], nil", done, err)
		}
		checkAbsent(t, a.cli, o.Owner)
		if kv := get(t, a.cli, o.Handoff); kv == nil || clientv3.LeaseID(kv.Lease) != b.lease {
			t.Fatalf("hand-off key: got %v, want bound to b's lease %x", kv, b.lease)
		}
		h := readHandoff(t, a.cli, o)
		if h.To != "b" || h.From != "a" || h.FromEpoch != f.Rev || h.Reason != tandem.CauseHandoff {
			t.Fatalf("hand-off record: got %+v, want to b from a, epoch %d, reason %s", h, f.Rev, tandem.CauseHandoff)
		}
		checkBetween(t, "hand-off record At", h.At, before, after)
		r, _ := readResign(t, a.cli, o)
		want := election.Resignation{From: "a", Epoch: f.Rev, Reason: tandem.CauseHandoff, To: "b"}
		if r.From != want.From || r.Epoch != want.Epoch || r.Reason != want.Reason || r.To != want.To {
			t.Fatalf("resign record: got %+v, want %+v", r, want)
		}
		checkBetween(t, "resign record At", r.At, before, after)

		// The target takes over with the hand-off it saw; nobody else can.
		if _, won := c.acquire(t, o, h); won {
			t.Fatal("c: TryAcquire of a shard handed to b: won, want lost")
		}
		fb := b.mustAcquire(t, o, h)
		if fb.Rev <= f.Rev {
			t.Fatalf("b's epoch: got %d, want > %d", fb.Rev, f.Rev)
		}
		checkAbsent(t, a.cli, o.Handoff)
		if _, won := c.acquire(t, o, nil); won {
			t.Fatal("c: TryAcquire after b took over: won, want lost")
		}
	})

	t.Run("hand-off key bound to the target's lease", func(t *testing.T) {
		d := newServer(t, e, "d")
		o := layout.Shard(10, shards)
		f := a.mustAcquire(t, o, nil)
		handOff(t, a, d, o, f)
		revoke(t, d.cli, d.lease)
		checkAbsent(t, a.cli, o.Handoff)
		c.mustAcquire(t, o, nil)
	})

	t.Run("several moves, one stale", func(t *testing.T) {
		os := []keys.Ownership{layout.Shard(11, shards), layout.Shard(12, shards), layout.Shard(13, shards)}
		moves := make([]election.Move, len(os))
		for i, o := range os {
			moves[i] = election.Move{Keys: o, Fence: a.mustAcquire(t, o, nil)}
		}
		mustDelete(t, a.cli, os[1].Owner)
		fc := c.mustAcquire(t, os[1], nil)

		done, err := a.cand.HandOff(testCtx(t), b.target(), tandem.CauseRebalance, moves...)
		if err != nil {
			t.Fatalf("HandOff: %v", err)
		}
		if want := []bool{true, false, true}; fmt.Sprint(done) != fmt.Sprint(want) {
			t.Fatalf("HandOff: got %v, want %v", done, want)
		}
		checkOwnedBy(t, c.cli, os[1], fc)
		checkAbsent(t, a.cli, os[1].Handoff)
		checkAbsent(t, a.cli, os[1].Resign)
		for _, i := range []int{0, 2} {
			checkAbsent(t, a.cli, os[i].Owner)
			if h := readHandoff(t, a.cli, os[i]); h == nil || h.To != "b" || h.FromEpoch != moves[i].Fence.Rev {
				t.Fatalf("hand-off of %s: got %+v, want to b from epoch %d", os[i].Owner, h, moves[i].Fence.Rev)
			}
			b.mustAcquire(t, os[i], readHandoff(t, b.cli, os[i]))
		}
	})
}

// A dead owner is deposed in one transaction, fenced per ownership.
func TestDepose(t *testing.T) {
	t.Parallel() // each test has its own etcd
	e := etcdtest.Start(t)
	dead, b, c := newServer(t, e, "dead"), newServer(t, e, "b"), newServer(t, e, "c")

	var owned []election.Deposed
	for k := range 5 {
		o := layout.Shard(k, shards)
		dead.mustAcquire(t, o, nil)
		owned = append(owned, election.Deposed{Keys: o, Owner: readOwner(t, c.cli, o.Owner)})
	}
	// Shard 3 has moved on since c read dead's ownerships: b owns it now.
	const stale = 3
	done, err := dead.cand.Resign(testCtx(t), tandem.CauseRebalance, election.Move{Keys: owned[stale].Keys, Fence: owned[stale].Owner.Fence()})
	if err != nil || !done[0] {
		t.Fatalf("resign shard %d: got %v, %v; want [true], nil", stale, done, err)
	}
	_, staleRec := readResign(t, c.cli, owned[stale].Keys)
	fb := b.mustAcquire(t, owned[stale].Keys, nil)
	// A shard dead never owned, and not listed, stays with its owner.
	bystander := layout.Shard(5, shards)
	fc := c.mustAcquire(t, bystander, nil)

	seen := time.Now().Add(-3 * time.Second)
	n, err := election.Depose(testCtx(t), c.cli, dead.lease, seen, owned...)
	if err != nil {
		t.Fatalf("Depose: %v", err)
	}
	if n != len(owned)-1 {
		t.Fatalf("Depose: freed %d, want %d", n, len(owned)-1)
	}

	var rev int64
	for k, d := range owned {
		if k == stale {
			continue
		}
		r, kv := readResign(t, c.cli, d.Keys)
		if r.From != "dead" || r.Epoch != d.Owner.Epoch || r.Reason != tandem.CauseCrashed || r.To != "" {
			t.Fatalf("resign record of shard %d: got %+v, want from dead, epoch %d, reason %s", k, r, d.Owner.Epoch, tandem.CauseCrashed)
		}
		if !r.At.Equal(seen) {
			t.Fatalf("resign record of shard %d: At %s, want %s (last seen alive)", k, r.At, seen)
		}
		// The resign record is written in the transaction that deletes the
		// owner key: the key is there just before that revision, gone at it.
		if rev == 0 {
			rev = kv.ModRevision
		}
		if kv.ModRevision != rev {
			t.Fatalf("shard %d deposed at revision %d, want %d like the others (one transaction)", k, kv.ModRevision, rev)
		}
		if get(t, c.cli, d.Keys.Owner, clientv3.WithRev(rev-1)) == nil {
			t.Fatalf("owner key of shard %d at revision %d: absent, want present", k, rev-1)
		}
		if kv := get(t, c.cli, d.Keys.Owner, clientv3.WithRev(rev)); kv != nil {
			t.Fatalf("owner key of shard %d at revision %d: present, want deleted", k, rev)
		}
	}
	checkAbsent(t, c.cli, layout.Server("dead"))
	ttl, err := c.cli.TimeToLive(testCtx(t), dead.lease)
	if err != nil {
		t.Fatalf("TimeToLive of dead's lease: %v", err)
	}
	if ttl.TTL != -1 {
		t.Fatalf("dead's lease after Depose: got TTL %d, want -1 (revoked)", ttl.TTL)
	}

	checkOwnedBy(t, c.cli, owned[stale].Keys, fb)
	if _, kv := readResign(t, c.cli, owned[stale].Keys); kv.ModRevision != staleRec.ModRevision {
		t.Fatalf("resign record of the stale shard: rewritten at %d, want untouched since %d", kv.ModRevision, staleRec.ModRevision)
	}
	checkOwnedBy(t, c.cli, bystander, fc)
	checkAbsent(t, c.cli, bystander.Resign)

	// Deposing the same ownerships again frees nothing.
	if n, err := election.Depose(testCtx(t), c.cli, dead.lease, seen, owned...); err != nil || n != 0 {
		t.Fatalf("second Depose: got %d, %v; want 0, nil", n, err)
	}
}

// NewSession keeps its lease alive, and honours ctx when etcd is unreachable.
func TestNewSession(t *testing.T) {
	t.Parallel() // each test has its own etcd
	e := etcdtest.Start(t)

	t.Run("kept alive past its TTL", func(t *testing.T) {
		cli := e.Client(t)
		const ttl = 2
		sess, err := election.NewSession(testCtx(t), cli, ttl)
		if err != nil {
			t.Fatalf("NewSession: %v", err)
		}
		defer sess.Close()
		first, err := cli.TimeToLive(testCtx(t), sess.Lease())
		if err != nil || first.TTL < 0 {
			t.Fatalf("new session's lease: got TTL %d, %v; want a live lease", first.TTL, err)
		}
		// Watch the lease for a second more than its TTL (etcd may round a
		// short TTL up): it must stay alive throughout.
		start := time.Now()
		end := start.Add(time.Duration(first.GrantedTTL)*time.Second + time.Second)
		for time.Now().Before(end) {
			select {
			case <-sess.Done():
				t.Fatal("session ended, want it kept alive")
			case <-time.After(100 * time.Millisecond):
			}
			resp, err := cli.TimeToLive(testCtx(t), sess.Lease())
			if err != nil {
				t.Fatalf("TimeToLive: %v", err)
			}
			// etcd reports whole seconds left, rounded down, and -1 for a
			// lease that has expired.
			if resp.TTL < 0 {
				t.Fatalf("lease %x after %s: TTL %d, want >= 0 (kept alive)", sess.Lease(), time.Since(start).Round(time.Millisecond), resp.TTL)
			}
		}
		if err := sess.Close(); err != nil {
			t.Fatalf("close the session: %v", err)
		}
		resp, err := cli.TimeToLive(testCtx(t), sess.Lease())
		if err != nil {
			t.Fatalf("TimeToLive after Close: %v", err)
		}
		if resp.TTL != -1 {
			t.Fatalf("lease after Close: got TTL %d, want -1 (revoked)", resp.TTL)
		}
	})

	t.Run("etcd unreachable", func(t *testing.T) {
		cli := unreachable(t, e)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		took := within(t, 15*time.Second, "NewSession", func() {
			var sess *concurrency.Session
			sess, err = election.NewSession(ctx, cli, 1)
			if err == nil {
				sess.Close()
			}
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("NewSession with etcd unreachable: got %v after %s, want %v", err, took, context.DeadlineExceeded)
		}
	})
}

// AcquireEach wins several ownerships in one transaction, each on its own:
// the claims it can win share one revision (each fenced by its own key at
// it), and a claim it cannot win is lost exactly as TryAcquire would lose it,
// touching nothing and costing the others nothing.
func TestAcquireEach(t *testing.T) {
	t.Parallel() // each test has its own etcd
	e := etcdtest.Start(t)
	a, b, c := newServer(t, e, "a"), newServer(t, e, "b"), newServer(t, e, "c")

	t.Run("each claim won or lost on its own", func(t *testing.T) {
		free1, free2 := layout.Shard(20, shards), layout.Shard(21, shards)
		held := layout.Shard(22, shards)    // b owns it
		toMe := layout.Shard(23, shards)    // handed off to a
		toOther := layout.Shard(24, shards) // handed off to c
		stale := layout.Shard(25, shards)   // handed off to a again since a saw it
		fHeld := b.mustAcquire(t, held, nil)
		handOff(t, b, a, toMe, b.mustAcquire(t, toMe, nil))
		handOff(t, b, c, toOther, b.mustAcquire(t, toOther, nil))
		fs := b.mustAcquire(t, stale, nil)
		handOff(t, b, a, stale, fs)
		old := readHandoff(t, a.cli, stale)
		fs = a.mustAcquire(t, stale, old)
		handOff(t, a, b, stale, fs)
		handOff(t, b, a, stale, b.mustAcquire(t, stale, readHandoff(t, b.cli, stale)))

		hMe, hOther := readHandoff(t, a.cli, toMe), readHandoff(t, a.cli, toOther)
		claims := []election.Claim{
			{Keys: free1}, {Keys: held}, {Keys: toMe, Handoff: hMe}, {Keys: toOther, Handoff: hOther},
			{Keys: stale, Handoff: old}, {Keys: free2},
		}
		wantWon := []bool{true, false, true, false, false, true}
		fences, err := a.cand.AcquireEach(testCtx(t), a.lease, claims...)
		if err != nil || len(fences) != len(claims) {
			t.Fatalf("AcquireEach: got %d fences, %v; want %d, nil", len(fences), err, len(claims))
		}
		var rev int64
		for i, f := range fences {
			if won := !f.IsZero(); won != wantWon[i] {
				t.Fatalf("claim %d (%s): won %t, want %t", i, claims[i].Keys.Owner, won, wantWon[i])
			}
			if f.IsZero() {
				continue
			}
			if rev == 0 {
				rev = f.Rev
			}
			if f.Rev != rev || f.Key != claims[i].Keys.Owner {
				t.Fatalf("claim %d: fence %s, want %s@%d (one transaction, its own key)", i, f, claims[i].Keys.Owner, rev)
			}
			checkOwnedBy(t, a.cli, claims[i].Keys, f)
			if kv := get(t, a.cli, f.Key); clientv3.LeaseID(kv.Lease) != a.lease {
				t.Fatalf("owner key %s: lease %x, want %x", f.Key, kv.Lease, a.lease)
			}
		}
		// The hand-off to a went with the win; the others are untouched.
		checkAbsent(t, a.cli, toMe.Handoff)
		checkOwnedBy(t, a.cli, held, fHeld)
		if h := readHandoff(t, a.cli, toOther); h == nil || h.ModRev != hOther.ModRev {
			t.Fatalf("hand-off to c after a's claim: got %+v, want it untouched at %d", h, hOther.ModRev)
		}
		checkAbsent(t, a.cli, toOther.Owner)
		checkAbsent(t, a.cli, stale.Owner)
		// Each fence guards on its own: giving up one leaves the others held.
		if _, err := a.cand.Resign(testCtx(t), tandem.CauseShutdown, election.Move{Keys: free1, Fence: fences[0]}); err != nil {
			t.Fatalf("resign %s: %v", fences[0], err)
		}
		if guardedPut(t, a.cli, fences[0], "x", "1") {
			t.Fatalf("write fenced by %s after resigning it: succeeded, want refused", fences[0])
		}
		if !guardedPut(t, a.cli, fences[5], "x", "2") {
			t.Fatalf("write fenced by %s, won with the resigned one: refused, want it to succeed", fences[5])
		}
		// What a lost: the same as TryAcquire loses.
		for _, i := range []int{1, 3, 4} {
			if _, won := a.acquire(t, claims[i].Keys, claims[i].Handoff); won {
				t.Fatalf("TryAcquire of claim %d, lost by AcquireEach: won, want lost", i)
			}
		}
	})

	t.Run("more than one transaction holds", func(t *testing.T) {
		const n = election.MaxOpsPerTxn + 30
		claims := make([]election.Claim, n)
		for i := range claims {
			claims[i] = election.Claim{Keys: layout.Shard(100+i, shards)}
		}
		fences, err := b.cand.AcquireEach(testCtx(t), b.lease, claims...)
		if err != nil {
			t.Fatalf("AcquireEach of %d: %v", n, err)
		}
		revs := map[int64]int{}
		for i, f := range fences {
			if f.IsZero() {
				t.Fatalf("claim %d of %d free keys: lost, want won", i, n)
			}
			checkOwnedBy(t, b.cli, claims[i].Keys, f)
			revs[f.Rev]++
		}
		// Two transactions, each within etcd's limit.
		if len(revs) != 2 {
			t.Fatalf("revisions of %d claims: %v, want 2 transactions", n, revs)
		}
		for rev, k := range revs {
			if k > election.MaxOpsPerTxn {
				t.Fatalf("%d claims won at revision %d: more than MaxOpsPerTxn (%d) in one transaction", k, rev, election.MaxOpsPerTxn)
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		o := layout.Shard(90, shards)
		if _, err := c.cand.AcquireEach(testCtx(t), c.lease, election.Claim{Keys: o}, election.Claim{Keys: o}); err == nil {
			t.Fatal("AcquireEach with one key claimed twice: got nil error, want it refused")
		}
		checkAbsent(t, c.cli, o.Owner)
		cancelled, cancel := context.WithCancel(context.Background())
		cancel()
		fences, err := c.cand.AcquireEach(cancelled, c.lease, election.Claim{Keys: o})
		if !errors.Is(err, context.Canceled) || !fences[0].IsZero() {
			t.Fatalf("AcquireEach with a cancelled ctx: got %v, %v; want a zero fence and %v", fences, err, context.Canceled)
		}
		checkAbsent(t, c.cli, o.Owner)
		if fences, err := c.cand.AcquireEach(testCtx(t), c.lease); err != nil || len(fences) != 0 {
			t.Fatalf("AcquireEach of nothing: got %v, %v; want none, nil", fences, err)
		}
	})
}
