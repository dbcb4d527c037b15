package election_test

import (
	"errors"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
)

// Acquire, Release and HandOffWith commit the caller's own comparisons and
// operations with the ownership change, all or nothing: a supervised
// service's node slots are taken in the transaction that wins it.
func TestCond(t *testing.T) {
	t.Parallel()
	e := etcdtest.Start(t)
	a, b := newServer(t, e, "a"), newServer(t, e, "b")
	const slot = "/test/slot"

	t.Run("acquire commits also, or nothing", func(t *testing.T) {
		o := layout.SuperviseOwnership("acq")
		fails := election.Cond{If: []clientv3.Cmp{clientv3.Compare(clientv3.Version(slot), ">", 0)},
			Then: []clientv3.Op{clientv3.OpPut(slot, "a")}}
		f, resp, err := a.cand.Acquire(testCtx(t), o, a.lease, nil, fails)
		if err != nil || resp != nil || !f.IsZero() {
			t.Fatalf("Acquire with a failing comparison: %v, %v, %v; want a loss", f, resp, err)
		}
		checkAbsent(t, a.cli, o.Owner)
		holds := election.Cond{If: []clientv3.Cmp{clientv3.Compare(clientv3.Version(slot), "=", 0)},
			Then: []clientv3.Op{clientv3.OpPut(slot, "a")}}
		f, resp, err = a.cand.Acquire(testCtx(t), o, a.lease, nil, holds)
		if err != nil || resp == nil {
			t.Fatalf("Acquire: %v, %v; want a win", resp, err)
		}
		checkOwnedBy(t, a.cli, o, f)
		if kv := get(t, a.cli, slot); kv == nil || string(kv.Value) != "a" || kv.ModRevision != f.Rev {
			t.Fatalf("slot %v: want written by the winning transaction (rev %d)", kv, f.Rev)
		}
		// b cannot take it, whatever its own conditions.
		if _, resp, err := b.cand.Acquire(testCtx(t), o, b.lease, nil, election.Cond{}); err != nil || resp != nil {
			t.Fatalf("b's Acquire of a held key: %v, %v; want a loss", resp, err)
		}
	})

	t.Run("release", func(t *testing.T) {
		o := layout.SuperviseOwnership("rel")
		f := a.mustAcquire(t, o, nil)
		m := election.Move{Keys: o, Fence: f}
		bad := election.Cond{If: []clientv3.Cmp{clientv3.Compare(clientv3.Value(slot), "=", "nope")}}
		if err := a.cand.Release(testCtx(t), m, "test", bad); !errors.Is(err, election.ErrCondFailed) {
			t.Fatalf("Release with a failing comparison: %v; want ErrCondFailed", err)
		}
		checkOwnedBy(t, a.cli, o, f)
		good := election.Cond{Then: []clientv3.Op{clientv3.OpPut(slot, "released")}}
		if err := a.cand.Release(testCtx(t), m, "test", good); err != nil {
			t.Fatalf("Release: %v", err)
		}
		checkAbsent(t, a.cli, o.Owner)
		if kv := get(t, a.cli, slot); string(kv.Value) != "released" {
			t.Fatalf("slot %q: want released with the key", kv.Value)
		}
		if r, _ := readResign(t, a.cli, o); r.Epoch != f.Rev || r.Reason != "test" || r.From != "a" {
			t.Fatalf("resignation %+v", r)
		}
		// Releasing again is fenced: the key is gone.
		if err := a.cand.Release(testCtx(t), m, "test", good); !errors.Is(err, tandem.ErrFenced) {
			t.Fatalf("second Release: %v; want ErrFenced", err)
		}
	})

	t.Run("hand off with", func(t *testing.T) {
		o := layout.SuperviseOwnership("hand")
		f := a.mustAcquire(t, o, nil)
		m := election.Move{Keys: o, Fence: f}
		gone := election.Target{ID: "b", MemberKey: layout.Server("b"), Lease: a.lease}
		if err := a.cand.HandOffWith(testCtx(t), gone, "move", m, election.Cond{}); !errors.Is(err, election.ErrTargetGone) {
			t.Fatalf("HandOffWith to a wrong lease: %v; want ErrTargetGone", err)
		}
		bad := election.Cond{If: []clientv3.Cmp{clientv3.Compare(clientv3.Value(slot), "=", "nope")}}
		if err := a.cand.HandOffWith(testCtx(t), b.target(), "move", m, bad); !errors.Is(err, election.ErrCondFailed) {
			t.Fatalf("HandOffWith with a failing comparison: %v; want ErrCondFailed", err)
		}
		checkOwnedBy(t, a.cli, o, f)
		if err := a.cand.HandOffWith(testCtx(t), b.target(), "move", m, election.Cond{Then: []clientv3.Op{clientv3.OpPut(slot, "moved")}}); err != nil {
			t.Fatalf("HandOffWith: %v", err)
		}
		h := readHandoff(t, a.cli, o)
		if h == nil || h.To != "b" || h.FromEpoch != f.Rev {
			t.Fatalf("hand-off %+v", h)
		}
		if kv := get(t, a.cli, slot); string(kv.Value) != "moved" {
			t.Fatalf("slot %q", kv.Value)
		}
		// Only b can take it now, and taking it clears the hand-off.
		if _, won := a.acquire(t, o, nil); won {
			t.Fatal("a took a key handed to b")
		}
		b.mustAcquire(t, o, h)
		checkAbsent(t, a.cli, o.Handoff)
		if err := a.cand.HandOffWith(testCtx(t), b.target(), "move", m, election.Cond{}); !errors.Is(err, tandem.ErrFenced) {
			t.Fatalf("HandOffWith of a lost key: %v; want ErrFenced", err)
		}
	})
}
