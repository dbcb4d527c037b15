// Package election is the etcd half of tandem's HA core (DESIGN.md sections
// 3, 4 and 10): winning, giving up, handing off and deposing the ownership of
// one key, and the fence that guards every write of an owner.
//
// Everything tandem makes highly available is owned through a
// keys.Ownership: a lease-bound owner key, a hand-off key and a resign key.
// Whoever creates the owner key owns the thing; its epoch is the key's create
// revision, which etcd makes cluster-wide monotonic, so a newer owner always
// has a higher epoch. A Fence is that key and revision as a value: its
// IsOwner comparison goes into every transaction of the owner, so once the
// key is deleted (lease expiry, resignation, hand-off, deposition) or
// re-created by someone else, etcd itself rejects the write. Safety never
// depends on the lease's timing (I5); the lease only decides how soon a
// crashed owner is replaced.
//
// The same operations serve every form of ownership: the one shard of an
// active/standby cluster (whose owner is the active), each shard of an
// active-active cluster, and later supervised services and schedules.
package election

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
)

// Fence is the proof of ownership a write carries: the owner key and the
// create revision it must still have. It is a value, like etcd's
// concurrency.Mutex: compare it, copy it, put IsOwner in a transaction.
type Fence struct {
	Key string `json:"key"`
	Rev int64  `json:"rev"`
}

// IsOwner is the comparison that fences a write: it holds only while Key is
// the one created at Rev.
func (f Fence) IsOwner() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)
}

// Epoch is the owner's epoch: the owner key's create revision.
func (f Fence) Epoch() int64 { return f.Rev }

// IsZero reports whether f fences nothing (no ownership).
func (f Fence) IsZero() bool { return f.Rev == 0 }

// String implements fmt.Stringer.
func (f Fence) String() string { return fmt.Sprintf("%s@%d", f.Key, f.Rev) }

// Held reports whether the owner key, as read in kvs (the answer of a Get of
// f.Key), is still the one f fences. Transactions put that Get in their Else
// branch to tell a fenced write from another failed comparison.
func (f Fence) Held(kvs []*mvccpb.KeyValue) bool {
	return len(kvs) > 0 && kvs[0].CreateRevision == f.Rev
}

// Owner is the value of an owner key, plus the key's revisions.
type Owner struct {
	ID    string    `json:"id"`
	URL   string    `json:"url"`
	At    time.Time `json:"at"` // when the owner took the key
	Epoch int64     `json:"-"`  // create revision of the owner key
	Lease int64     `json:"-"`  // the lease the key is bound to
	Key   string    `json:"-"`  // the owner key itself
}

// Fence returns the fence of this ownership.
func (o Owner) Fence() Fence { return Fence{Key: o.Key, Rev: o.Epoch} }

// Handoff is the value of a hand-off key: ownership is being handed to To.
type Handoff struct {
	To        string    `json:"to"`
	From      string    `json:"from"`
	FromEpoch int64     `json:"from_epoch"`
	Reason    string    `json:"reason,omitempty"` // a tandem.Cause* value
	At        time.Time `json:"at"`
	ModRev    int64     `json:"-"`
}

// Resignation is the value of a resign key: why an owner gave up on purpose,
// or was deposed as dead.
type Resignation struct {
	From   string `json:"from"`
	Epoch  int64  `json:"epoch"`
	Reason string `json:"reason"` // a tandem.Cause* value
	// Detection says how a dead owner was found out (a tandem.Detect*
	// value), for a deposition.
	Detection string    `json:"detection,omitempty"`
	To        string    `json:"to,omitempty"`
	At        time.Time `json:"at"`
}

// Candidate wins, gives up and hands off ownerships on behalf of one server.
type Candidate struct {
	cli     *clientv3.Client
	id, url string
	now     func() time.Time
}

// NewCandidate returns a Candidate for the server id, reachable at url.
func NewCandidate(cli *clientv3.Client, id, url string) *Candidate {
	return &Candidate{cli: cli, id: id, url: url, now: time.Now}
}

// Cond is more of one transaction: comparisons that must hold as well, and
// operations committed with it. An owner of something other than a shard
// keeps its own bookkeeping consistent with its ownership this way: a
// supervised service's node slots are taken in the transaction that wins the
// service, and its "stopped cleanly" record is written in the one that gives
// it up.
type Cond struct {
	If   []clientv3.Cmp
	Then []clientv3.Op
}

// TryAcquire makes one attempt to create o's owner key bound to lease. It
// does not wait for the key to be free: callers retry when they see it
// deleted. handoff is the pending hand-off the caller has seen, or nil: a
// hand-off to another server keeps this one out until it completes or its
// target's lease ends, and one to this server is taken and cleared in the
// same transaction. It returns the new fence and true if this server now
// owns o; false with a nil error when someone else got there first.
func (c *Candidate) TryAcquire(ctx context.Context, o keys.Ownership, lease clientv3.LeaseID, handoff *Handoff) (Fence, bool, error) {
	fence, resp, err := c.Acquire(ctx, o, lease, handoff, Cond{})
	return fence, resp != nil, err
}

// Acquire is TryAcquire with also in the same transaction: every comparison
// of also must hold as well, and its operations are committed with the win.
// On a win it returns the fence and the transaction's answer (the answers
// to also.Then follow the owner key's put and, with a hand-off to this
// server, its deletion); on a loss a nil answer and a nil error.
func (c *Candidate) Acquire(ctx context.Context, o keys.Ownership, lease clientv3.LeaseID, handoff *Handoff, also Cond) (Fence, *clientv3.TxnResponse, error) {
	val, err := json.Marshal(Owner{ID: c.id, URL: c.url, At: c.now().UTC()})
	if err != nil {
		return Fence{}, nil, err
	}
	ifs, thens := c.acquireOps(o, lease, handoff, string(val))
	resp, err := c.cli.Txn(ctx).If(append(ifs, also.If...)...).Then(append(thens, also.Then...)...).Commit()
	if err != nil {
		return Fence{}, nil, fmt.Errorf("campaign for %s: %w", o.Owner, err)
	}
	if !resp.Succeeded {
		return Fence{}, nil, nil
	}
	// The key did not exist, so the transaction's revision is its create revision.
	return Fence{Key: o.Owner, Rev: resp.Header.Revision}, resp, nil
}

// Claim is one ownership AcquireEach tries to win: its keys and the
// pending hand-off the caller has seen for it, or nil, as for TryAcquire.
type Claim struct {
	Keys    keys.Ownership
	Handoff *Handoff
}

// AcquireEach makes one attempt to win every claim, bound to lease, in one
// transaction, so a server that is handed several shards (or finds several
// free) takes them all at one revision instead of one transaction each.
//
// Each claim is won or lost on its own, not all or nothing: a claim whose
// owner key exists, or whose hand-off is for another server or is not the
// one the caller saw, is lost exactly as TryAcquire would lose it, and costs
// the others nothing. Every claim won in one transaction has the same create
// revision, so the same epoch; each is fenced by its own owner key at that
// revision (a fence is the key and the revision, never the revision alone).
//
// It returns one fence per claim, in order, the zero Fence for a claim
// lost. More than MaxOpsPerTxn claims take several transactions (each claim
// in one of them, won at that transaction's revision). On an error it
// returns the fences of the transactions committed before it; the outcome
// of the failing one is unknown, as with any etcd error, and claims it may
// have won are bound to lease all the same. Two claims of one owner key are
// refused before anything is sent.
func (c *Candidate) AcquireEach(ctx context.Context, lease clientv3.LeaseID, claims ...Claim) ([]Fence, error) {
	fences := make([]Fence, len(claims))
	if len(claims) == 0 {
		return fences, nil
	}
	seen := make(map[string]bool, len(claims))
	for _, cl := range claims {
		if seen[cl.Keys.Owner] {
			return fences, fmt.Errorf("acquire %s twice in one transaction", cl.Keys.Owner)
		}
		seen[cl.Keys.Owner] = true
	}
	val, err := json.Marshal(Owner{ID: c.id, URL: c.url, At: c.now().UTC()})
	if err != nil {
		return fences, err
	}
	ops := make([]clientv3.Op, len(claims))
	for i, cl := range claims {
		ifs, thens := c.acquireOps(cl.Keys, lease, cl.Handoff, string(val))
		ops[i] = clientv3.OpTxn(ifs, thens, nil)
	}
	for lo := 0; lo < len(ops); lo += MaxOpsPerTxn {
		hi := min(lo+MaxOpsPerTxn, len(ops))
		resp, err := c.cli.Txn(ctx).Then(ops[lo:hi]...).Commit()
		if err != nil {
			return fences, fmt.Errorf("campaign for %d ownerships: %w", len(claims), err)
		}
		for i, r := range resp.Responses {
			if r.GetResponseTxn().GetSucceeded() {
				// The key did not exist, so the transaction's revision is its
				// create revision.
				fences[lo+i] = Fence{Key: claims[lo+i].Keys.Owner, Rev: resp.Header.Revision}
			}
		}
	}
	return fences, nil
}

// acquireOps are the comparisons and operations that win o for this
// candidate: the owner key is free, and either no hand-off is pending or
// the one to this server that the caller saw is (and goes with the win).
func (c *Candidate) acquireOps(o keys.Ownership, lease clientv3.LeaseID, handoff *Handoff, val string) ([]clientv3.Cmp, []clientv3.Op) {
	ifs := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(o.Owner), "=", 0)}
	thens := []clientv3.Op{clientv3.OpPut(o.Owner, val, clientv3.WithLease(lease))}
	if handoff != nil && handoff.To == c.id {
		ifs = append(ifs, clientv3.Compare(clientv3.ModRevision(o.Handoff), "=", handoff.ModRev))
		thens = append(thens, clientv3.OpDelete(o.Handoff))
	} else {
		ifs = append(ifs, clientv3.Compare(clientv3.CreateRevision(o.Handoff), "=", 0))
	}
	return ifs, thens
}

// Release gives up one ownership, like Resign, with also in the same
// transaction. It fails with tandem.ErrFenced if the fence no longer held,
// and with ErrCondFailed if only also's comparisons did not.
func (c *Candidate) Release(ctx context.Context, m Move, reason string, also Cond) error {
	rec, _ := json.Marshal(Resignation{From: c.id, Epoch: m.Fence.Rev, Reason: reason, At: c.now().UTC()})
	resp, err := c.cli.Txn(ctx).If(append([]clientv3.Cmp{m.Fence.IsOwner()}, also.If...)...).
		Then(append([]clientv3.Op{clientv3.OpDelete(m.Keys.Owner), clientv3.OpPut(m.Keys.Resign, string(rec))}, also.Then...)...).
		Else(clientv3.OpGet(m.Keys.Owner)).Commit()
	if err != nil {
		return fmt.Errorf("release %s: %w", m.Fence, err)
	}
	if resp.Succeeded {
		return nil
	}
	if !m.Fence.Held(resp.Responses[0].GetResponseRange().Kvs) {
		return fmt.Errorf("release %s: %w", m.Fence, tandem.ErrFenced)
	}
	return fmt.Errorf("release %s: %w", m.Fence, ErrCondFailed)
}

// ErrCondFailed means the fence held but a comparison the caller added
// (Cond.If) did not.
var ErrCondFailed = errors.New("election: a comparison of the transaction failed")

// Resign gives up the ownerships of moves, each only if its fence still
// holds, in one transaction, recording reason so each next owner can say why
// it took over. It returns, for each move, whether it was given up; one
// whose fence no longer held already has another owner, which is as good as
// resigned. With a single move, that case is an ErrFenced error.
func (c *Candidate) Resign(ctx context.Context, reason string, moves ...Move) ([]bool, error) {
	if len(moves) == 0 {
		return nil, nil
	}
	now := c.now().UTC()
	ops := make([]clientv3.Op, 0, len(moves))
	for _, m := range moves {
		rec, _ := json.Marshal(Resignation{From: c.id, Epoch: m.Fence.Rev, Reason: reason, At: now})
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{m.Fence.IsOwner()},
			[]clientv3.Op{clientv3.OpDelete(m.Keys.Owner), clientv3.OpPut(m.Keys.Resign, string(rec))}, nil))
	}
	done, err := commitEach(ctx, c.cli, ops)
	if err != nil {
		return done, fmt.Errorf("resign %d ownerships: %w", len(moves), err)
	}
	if len(moves) == 1 && !done[0] {
		return done, fmt.Errorf("resign %s: %w", moves[0].Fence, tandem.ErrFenced)
	}
	return done, nil
}

// ErrTargetGone means the hand-off target is no longer registered with the
// lease the caller saw: it restarted or died.
var ErrTargetGone = errors.New("election: hand-off target is not registered with that lease")

// Target is the server a hand-off goes to: its ID, its membership key and
// the lease that key is bound to.
type Target struct {
	ID        string
	MemberKey string
	Lease     clientv3.LeaseID
}

// Move is one ownership to hand off: its keys and the fence it is held by.
type Move struct {
	Keys  keys.Ownership
	Fence Fence
}

// HandOff gives the ownerships of moves to the server to, in one
// transaction and without waiting for any TTL: for each move whose fence
// still holds, the owner key is deleted and a hand-off key naming to, bound
// to to's lease, keeps every other server from taking it. If to dies before
// taking over, its lease takes the hand-off keys with it and the others
// campaign as usual. reason (a tandem.Cause* value) is recorded as the
// resignation's reason.
//
// It returns, for each move, whether it was handed off; a move whose fence no
// longer held is left alone (its owner is already someone else). The whole
// call fails with ErrTargetGone, moving nothing, if to is not registered
// with that lease any more. At most MaxOpsPerTxn moves go in one call.
func (c *Candidate) HandOff(ctx context.Context, to Target, reason string, moves ...Move) ([]bool, error) {
	if len(moves) == 0 {
		return nil, nil
	}
	if len(moves) > MaxOpsPerTxn {
		// One transaction, so the target check covers every move: etcd counts
		// the nested operations too.
		return nil, fmt.Errorf("hand off %d ownerships at once: at most %d fit in one transaction", len(moves), MaxOpsPerTxn)
	}
	now := c.now().UTC()
	ops := make([]clientv3.Op, 0, len(moves))
	for _, m := range moves {
		rec, _ := json.Marshal(Resignation{From: c.id, Epoch: m.Fence.Rev, Reason: reason, To: to.ID, At: now})
		h, _ := json.Marshal(Handoff{To: to.ID, From: c.id, FromEpoch: m.Fence.Rev, Reason: reason, At: now})
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{m.Fence.IsOwner()},
			[]clientv3.Op{
				clientv3.OpDelete(m.Keys.Owner),
				clientv3.OpPut(m.Keys.Handoff, string(h), clientv3.WithLease(to.Lease)),
				clientv3.OpPut(m.Keys.Resign, string(rec)),
			}, nil))
	}
	target := clientv3.Compare(clientv3.LeaseValue(to.MemberKey), "=", to.Lease)
	resp, err := c.cli.Txn(ctx).If(target).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("hand off %d ownerships to %s: %w", len(moves), to.ID, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("hand off to %s: %w", to.ID, ErrTargetGone)
	}
	done := make([]bool, len(moves))
	for i, r := range resp.Responses {
		done[i] = r.GetResponseTxn().GetSucceeded()
	}
	return done, nil
}

// HandOffWith hands one ownership to the server to, like HandOff, with
// also in the same transaction. It fails with ErrTargetGone if to is no
// longer registered with that lease, tandem.ErrFenced if the fence no
// longer held, and ErrCondFailed if only also's comparisons did not.
func (c *Candidate) HandOffWith(ctx context.Context, to Target, reason string, m Move, also Cond) error {
	now := c.now().UTC()
	rec, _ := json.Marshal(Resignation{From: c.id, Epoch: m.Fence.Rev, Reason: reason, To: to.ID, At: now})
	h, _ := json.Marshal(Handoff{To: to.ID, From: c.id, FromEpoch: m.Fence.Rev, Reason: reason, At: now})
	target := clientv3.Compare(clientv3.LeaseValue(to.MemberKey), "=", to.Lease)
	resp, err := c.cli.Txn(ctx).If(append([]clientv3.Cmp{target, m.Fence.IsOwner()}, also.If...)...).
		Then(append([]clientv3.Op{
			clientv3.OpDelete(m.Keys.Owner),
			clientv3.OpPut(m.Keys.Handoff, string(h), clientv3.WithLease(to.Lease)),
			clientv3.OpPut(m.Keys.Resign, string(rec)),
		}, also.Then...)...).
		Else(clientv3.OpGet(m.Keys.Owner), clientv3.OpGet(to.MemberKey)).Commit()
	if err != nil {
		return fmt.Errorf("hand off %s to %s: %w", m.Fence, to.ID, err)
	}
	if resp.Succeeded {
		return nil
	}
	if !m.Fence.Held(resp.Responses[0].GetResponseRange().Kvs) {
		return fmt.Errorf("hand off %s: %w", m.Fence, tandem.ErrFenced)
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 0 || clientv3.LeaseID(kvs[0].Lease) != to.Lease {
		return fmt.Errorf("hand off to %s: %w", to.ID, ErrTargetGone)
	}
	return fmt.Errorf("hand off %s to %s: %w", m.Fence, to.ID, ErrCondFailed)
}

// Deposed is one ownership of a dead server: its keys and its owner record
// (whose Epoch fences the deposition).
type Deposed struct {
	Keys  keys.Ownership
	Owner Owner
	// Detection says how the death was found out (a tandem.Detect* value,
	// recorded in the resignation; may be empty).
	Detection string
}

// Depose removes every ownership in owned, all held by one server found
// dead (its port refuses connections) or agreed unresponsive by the others
// (DeposeIf), instead of waiting for its lease to run out. Each deletion is
// fenced by that ownership's epoch, so it can never remove a newer owner; a
// wrongly deposed owner is merely fenced (I1): this is a liveness shortcut,
// not something safety rests on (I5). All of them go in one transaction (up
// to MaxOpsPerTxn of them), so every ownership of the server is freed at one
// revision. seenAt, the last time the server was seen alive, is recorded as
// the resignation time, so a new owner can tell how long detection took.
// Then the server's lease is revoked (best effort), which removes its other
// keys. It returns how many ownerships it freed.
func Depose(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID, seenAt time.Time, owned ...Deposed) (int, error) {
	return DeposeIf(ctx, cli, lease, seenAt, nil, owned...)
}

// DeposeIf is Depose, only if every comparison of also holds as well, in the
// same transaction (the evidence the deposition rests on is unchanged: the
// votes of an agreement, say). If they do not, it stops with ErrCondFailed,
// having freed nothing (or, with more than MaxOpsPerTxn ownerships, only
// those of the transactions before).
func DeposeIf(ctx context.Context, cli *clientv3.Client, lease clientv3.LeaseID, seenAt time.Time, also []clientv3.Cmp, owned ...Deposed) (int, error) {
	if len(owned) == 0 {
		return 0, nil
	}
	ops := make([]clientv3.Op, 0, len(owned))
	for _, d := range owned {
		rec, _ := json.Marshal(Resignation{From: d.Owner.ID, Epoch: d.Owner.Epoch, Reason: tandem.CauseCrashed, Detection: d.Detection, At: seenAt.UTC()})
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{d.Owner.Fence().IsOwner()},
			[]clientv3.Op{clientv3.OpDelete(d.Keys.Owner), clientv3.OpPut(d.Keys.Resign, string(rec))}, nil))
	}
	// More than MaxOpsPerTxn ownerships take several transactions, each
	// under the same comparisons: should they stop holding half-way, the
	// rest stays with its owner, which is then evidently alive.
	done, err := commitEachIf(ctx, cli, also, ops)
	n := 0
	for _, ok := range done {
		if ok {
			n++
		}
	}
	if err != nil {
		return n, fmt.Errorf("depose %s: %w", owned[0].Owner.ID, err)
	}
	if lease != 0 && n > 0 {
		_, _ = cli.Revoke(ctx, lease) // best effort: the lease expires anyway
	}
	return n, nil
}

// NewSession grants a lease of ttl seconds and keeps it alive until the
// session is closed or the lease is lost. Unlike concurrency.NewSession, the
// grant honours ctx: with etcd unreachable it fails when ctx ends instead of
// blocking for as long as the client lives.
func NewSession(ctx context.Context, cli *clientv3.Client, ttl int) (*concurrency.Session, error) {
	resp, err := cli.Grant(ctx, int64(ttl))
	if err != nil {
		return nil, fmt.Errorf("grant a %ds lease: %w", ttl, err)
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(resp.ID), concurrency.WithTTL(ttl))
	if err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = cli.Revoke(rctx, resp.ID)
		cancel()
		return nil, fmt.Errorf("keep lease %x alive: %w", resp.ID, err)
	}
	return sess, nil
}

// MaxOpsPerTxn bounds the operations of one transaction, within etcd's
// default limit of 128 (--max-txn-ops).
const MaxOpsPerTxn = 100

// commitEach commits ops, each a nested transaction, in as few transactions
// as etcd's limit allows, and reports which nested ones succeeded. On an
// error, the ones before the failing transaction are reported.
func commitEach(ctx context.Context, cli *clientv3.Client, ops []clientv3.Op) ([]bool, error) {
	return commitEachIf(ctx, cli, nil, ops)
}

// commitEachIf is commitEach with the comparisons also in every
// transaction; when they fail, it stops there with ErrCondFailed.
func commitEachIf(ctx context.Context, cli *clientv3.Client, also []clientv3.Cmp, ops []clientv3.Op) ([]bool, error) {
	done := make([]bool, len(ops))
	for lo := 0; lo < len(ops); lo += MaxOpsPerTxn {
		hi := min(lo+MaxOpsPerTxn, len(ops))
		resp, err := cli.Txn(ctx).If(also...).Then(ops[lo:hi]...).Commit()
		if err != nil {
			return done, err
		}
		if !resp.Succeeded {
			return done, ErrCondFailed
		}
		for i, r := range resp.Responses {
			done[lo+i] = r.GetResponseTxn().GetSucceeded()
		}
	}
	return done, nil
}
