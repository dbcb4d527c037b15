// Package election elects one active server per cluster on etcd and fences
// everything it writes (DESIGN.md sections 3 and 4).
//
// The leader key is a single lease-bound key. Whoever creates it is active;
// its epoch is the key's create revision, which etcd makes cluster-wide
// monotonic, so a newer active always has a higher epoch. Every write of the
// active carries Guard(epoch) in its transaction: once the key is deleted
// (lease expiry, resignation, hand-off) or re-created by someone else, the
// guard fails and the write is rejected by etcd itself. Safety never depends
// on the lease's timing (I5); the lease only decides how soon a crashed
// active is replaced.
package election

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
)

// Leader is the value of the leader key, plus the key's revisions.
type Leader struct {
	ID    string `json:"id"`
	URL   string `json:"url"`
	Epoch int64  `json:"-"` // create revision of the leader key
	Lease int64  `json:"-"`
}

// Handoff is the value of the hand-off key: leadership is being handed to To.
type Handoff struct {
	To        string    `json:"to"`
	From      string    `json:"from"`
	FromEpoch int64     `json:"from_epoch"`
	At        time.Time `json:"at"`
	ModRev    int64     `json:"-"`
}

// Resignation is the value of the resign key: why an active gave up on purpose.
type Resignation struct {
	From   string    `json:"from"`
	Epoch  int64     `json:"epoch"`
	Reason string    `json:"reason"` // a tandem.Cause* value
	To     string    `json:"to,omitempty"`
	At     time.Time `json:"at"`
}

// Election campaigns for and gives up the leader key of one cluster.
type Election struct {
	cli  *clientv3.Client
	keys keys.Layout
	me   Leader
}

// New returns an Election for the server me (ID and URL) in the cluster laid
// out by layout.
func New(cli *clientv3.Client, layout keys.Layout, id, url string) *Election {
	return &Election{cli: cli, keys: layout, me: Leader{ID: id, URL: url}}
}

// Guard is the comparison that fences a write to epoch: it holds only while
// the leader key is the one created at that revision.
func Guard(layout keys.Layout, epoch int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(layout.Leader()), "=", epoch)
}

// TryAcquire makes one attempt to create the leader key bound to lease. It
// does not block waiting for the key to be free: callers retry when they see
// the key deleted. handoff is the pending hand-off the caller has seen, or
// nil: a hand-off to another server keeps this server out until it completes
// or its target's lease ends. It returns the new epoch and true if this server
// is now the leader.
func (e *Election) TryAcquire(ctx context.Context, lease clientv3.LeaseID, handoff *Handoff) (int64, bool, error) {
	val, err := json.Marshal(e.me)
	if err != nil {
		return 0, false, err
	}
	put := clientv3.OpPut(e.keys.Leader(), string(val), clientv3.WithLease(lease))
	free := clientv3.Compare(clientv3.CreateRevision(e.keys.Leader()), "=", 0)
	var txn clientv3.Txn
	switch {
	case handoff != nil && handoff.To == e.me.ID:
		// The hand-off names us: take it and clear it in one step.
		txn = e.cli.Txn(ctx).If(free, clientv3.Compare(clientv3.ModRevision(e.keys.Handoff()), "=", handoff.ModRev)).
			Then(put, clientv3.OpDelete(e.keys.Handoff()))
	default:
		txn = e.cli.Txn(ctx).If(free, clientv3.Compare(clientv3.CreateRevision(e.keys.Handoff()), "=", 0)).Then(put)
	}
	resp, err := txn.Commit()
	if err != nil {
		return 0, false, fmt.Errorf("campaign: %w", err)
	}
	if !resp.Succeeded {
		return 0, false, nil
	}
	// The key did not exist, so the transaction's revision is its create revision.
	return resp.Header.Revision, true, nil
}

// Resign gives up leadership held at epoch, recording reason so the next
// active can say why it took over. ErrFenced means epoch was no longer the
// leader's: someone else already leads, which is as good as resigned.
func (e *Election) Resign(ctx context.Context, epoch int64, reason string) error {
	rec, _ := json.Marshal(Resignation{From: e.me.ID, Epoch: epoch, Reason: reason, At: time.Now()})
	resp, err := e.cli.Txn(ctx).If(Guard(e.keys, epoch)).
		Then(clientv3.OpDelete(e.keys.Leader()), clientv3.OpPut(e.keys.Resign(), string(rec))).Commit()
	if err != nil {
		return fmt.Errorf("resign epoch %d: %w", epoch, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("resign epoch %d: %w", epoch, tandem.ErrFenced)
	}
	return nil
}

// ErrTargetGone means the hand-off target is no longer registered with the
// lease the caller saw: it restarted or died.
var ErrTargetGone = errors.New("election: hand-off target is not registered with that lease")

// HandOff gives leadership held at epoch to the server to, whose membership
// record is bound to toLease, in one transaction: the leader key is deleted
// and a hand-off key naming to, bound to to's lease, keeps every other server
// from taking the key. If to dies before taking over, its lease takes the
// hand-off key with it and the others campaign as usual.
func (e *Election) HandOff(ctx context.Context, epoch int64, to string, toLease clientv3.LeaseID) error {
	now := time.Now()
	rec, _ := json.Marshal(Resignation{From: e.me.ID, Epoch: epoch, Reason: tandem.CauseHandoff, To: to, At: now})
	h, _ := json.Marshal(Handoff{To: to, From: e.me.ID, FromEpoch: epoch, At: now})
	target := clientv3.Compare(clientv3.LeaseValue(e.keys.Server(to)), "=", toLease)
	resp, err := e.cli.Txn(ctx).If(Guard(e.keys, epoch), target).
		Then(
			clientv3.OpDelete(e.keys.Leader()),
			clientv3.OpPut(e.keys.Handoff(), string(h), clientv3.WithLease(toLease)),
			clientv3.OpPut(e.keys.Resign(), string(rec)),
		).
		Else(clientv3.OpGet(e.keys.Leader(), clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return fmt.Errorf("hand off epoch %d to %s: %w", epoch, to, err)
	}
	if resp.Succeeded {
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].CreateRevision != epoch {
		return fmt.Errorf("hand off epoch %d to %s: %w", epoch, to, tandem.ErrFenced)
	}
	return fmt.Errorf("hand off to %s: %w", to, ErrTargetGone)
}

// Depose removes leader l on another server's behalf, when that server is
// known to be dead (its port refuses connections), instead of waiting for
// its lease to run out. The transaction only deletes the key created at
// l.Epoch, so it can never remove a newer leader; and a wrongly deposed
// active is merely fenced (I1), so this is a liveness shortcut, not
// something safety rests on (I5). seenAt, the last time l was seen alive,
// is recorded as the resignation time, so the new active can tell how long
// detection took. It then revokes l's lease, which removes the dead server's
// other keys. It reports false if l was no longer the leader.
func Depose(ctx context.Context, cli *clientv3.Client, layout keys.Layout, l Leader, seenAt time.Time) (bool, error) {
	rec, _ := json.Marshal(Resignation{From: l.ID, Epoch: l.Epoch, Reason: tandem.CauseCrashed, At: seenAt})
	resp, err := cli.Txn(ctx).If(Guard(layout, l.Epoch)).
		Then(clientv3.OpDelete(layout.Leader()), clientv3.OpPut(layout.Resign(), string(rec))).Commit()
	if err != nil {
		return false, fmt.Errorf("depose %s (epoch %d): %w", l.ID, l.Epoch, err)
	}
	if !resp.Succeeded {
		return false, nil
	}
	if l.Lease != 0 {
		_, _ = cli.Revoke(ctx, clientv3.LeaseID(l.Lease)) // best effort: the lease expires anyway
	}
	return true, nil
}
