package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/shard"
)

// ownerEvent is the creation or deletion of one shard's owner key, as the
// bench's watch received it.
type ownerEvent struct {
	At      time.Time // when the watch response carrying it arrived
	Rev     int64     // etcd revision of the change
	Shard   int
	Owner   string // the new owner, or (deleted) the owner whose key went
	Epoch   int64  // the owner key's create revision
	Deleted bool
}

// ownerWatch follows every shard's owner key through one etcd watch and
// keeps the log of creations and deletions with their arrival times: the
// bench's own record of ownership, independent of what the servers report.
type ownerWatch struct {
	layout keys.Layout
	shards int

	mu      sync.Mutex
	events  []ownerEvent
	owners  map[int]string // shard -> current owner ("" or absent: free)
	rev     int64          // the revision the log has reached
	changed chan struct{}  // closed and replaced on every change
	err     error          // why the watch ended
}

// watchOwners reads the owner keys as they are and follows them from there.
// The watch ends with ctx.
func watchOwners(ctx context.Context, cli *clientv3.Client, layout keys.Layout, shards int) (*ownerWatch, error) {
	w := &ownerWatch{layout: layout, shards: shards, owners: map[int]string{}, changed: make(chan struct{})}
	resp, err := cli.Get(ctx, layout.ShardsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the shards' owners: %w", err)
	}
	for _, kv := range resp.Kvs {
		if k, ok := w.ownerKey(string(kv.Key)); ok {
			w.owners[k] = ownerIDOf(kv.Value)
		}
	}
	w.rev = resp.Header.Revision
	wch := cli.Watch(ctx, layout.ShardsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(w.rev+1), clientv3.WithPrevKV())
	go func() { // ends with ctx, which closes wch
		for wr := range wch {
			now := time.Now()
			if err := wr.Err(); err != nil {
				w.fail(err)
				return
			}
			w.mu.Lock()
			for _, ev := range wr.Events {
				k, ok := w.ownerKey(string(ev.Kv.Key))
				if !ok {
					continue
				}
				e := ownerEvent{At: now, Rev: ev.Kv.ModRevision, Shard: k}
				switch {
				case ev.Type == clientv3.EventTypeDelete:
					e.Deleted = true
					if ev.PrevKv != nil {
						e.Owner, e.Epoch = ownerIDOf(ev.PrevKv.Value), ev.PrevKv.CreateRevision
					}
					delete(w.owners, k)
				case ev.Kv.CreateRevision == ev.Kv.ModRevision:
					e.Owner, e.Epoch = ownerIDOf(ev.Kv.Value), ev.Kv.CreateRevision
					w.owners[k] = e.Owner
				default:
					continue // an owner rewriting its own key: no change of owner
				}
				w.events = append(w.events, e)
			}
			if wr.Header.Revision > w.rev {
				w.rev = wr.Header.Revision
			}
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
		w.fail(errors.New("the etcd watch of the owner keys ended"))
	}()
	return w, nil
}

func (w *ownerWatch) ownerKey(key string) (int, bool) {
	k, part, ok := w.layout.ParseShardKey(key)
	return k, ok && part == "owner" && k < w.shards
}

func ownerIDOf(v []byte) string {
	var o struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(v, &o)
	return o.ID
}

func (w *ownerWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		close(w.changed)
	}
}

// mark returns how many events the log holds, to cut it into trials.
func (w *ownerWatch) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.events)
}

// since returns a copy of the events from index i.
func (w *ownerWatch) since(i int) []ownerEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ownerEvent(nil), w.events[min(i, len(w.events)):]...)
}

// snapshot returns the current owner of every shard ("" when free).
func (w *ownerWatch) snapshot() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, w.shards)
	for k, o := range w.owners {
		out[k] = o
	}
	return out
}

// waitFor blocks until the owners are exactly want, and returns the
// revision the watch had reached then; it fails after limit, or when ctx
// ends or the watch breaks.
func (w *ownerWatch) waitFor(ctx context.Context, want []string, limit time.Duration) (int64, error) {
	timeout := time.NewTimer(limit)
	defer timeout.Stop()
	for {
		w.mu.Lock()
		ch, err, rev := w.changed, w.err, w.rev
		same := len(want) == w.shards
		for k := 0; same && k < w.shards; k++ {
			same = w.owners[k] == want[k]
		}
		w.mu.Unlock()
		if same {
			return rev, nil
		}
		if err != nil {
			return 0, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-timeout.C:
			got := w.snapshot()
			return 0, fmt.Errorf("the owners did not match the target map within %s: %d of %d shards differ (%s)",
				limit, shard.Moved(got, want), len(want), ownerCounts(got))
		}
	}
}

// ownerCounts describes how many shards each server owns, e.g. "rm1=22 rm2=21 free=21".
func ownerCounts(owners []string) string {
	n := map[string]int{}
	for _, o := range owners {
		if o == "" {
			o = "free"
		}
		n[o]++
	}
	ids := make([]string, 0, len(n))
	for id := range n {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	s := ""
	for i, id := range ids {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s=%d", id, n[id])
	}
	return s
}

// ownerGap is the time one shard had no owner: from the deletion of its
// owner's key to the creation of the next one's.
type ownerGap struct {
	Shard    int
	From, To string
	Deleted  time.Time // arrival of the deletion
	Created  time.Time // arrival of the creation
	Revs     int64     // the new key's create revision minus the deletion's revision
	Ended    int64     // the revision of the deletion
}

// Duration is the gap as the watch saw it.
func (g ownerGap) Duration() time.Duration { return g.Created.Sub(g.Deleted) }

// gapsOf pairs each deletion in events with the next creation of the same
// shard. A deletion with no creation after it in events (the shard was
// still free at the end) is returned in open.
func gapsOf(events []ownerEvent) (gaps []ownerGap, open []ownerEvent) {
	pending := map[int]ownerEvent{}
	for _, e := range events {
		if e.Deleted {
			pending[e.Shard] = e
			continue
		}
		d, ok := pending[e.Shard]
		if !ok {
			continue // a creation on a shard that was free before the events began
		}
		delete(pending, e.Shard)
		gaps = append(gaps, ownerGap{Shard: e.Shard, From: d.Owner, To: e.Owner, Deleted: d.At, Created: e.At,
			Revs: e.Epoch - d.Rev, Ended: d.Rev})
	}
	for _, d := range pending {
		open = append(open, d)
	}
	sort.Slice(open, func(i, j int) bool { return open[i].Shard < open[j].Shard })
	return gaps, open
}

// deletionsOf returns the deletions of owner's keys in events.
func deletionsOf(events []ownerEvent, owner string) []ownerEvent {
	var out []ownerEvent
	for _, e := range events {
		if e.Deleted && e.Owner == owner {
			out = append(out, e)
		}
	}
	return out
}

// creationsOf counts the owner keys created in events: every new tenure,
// including a shard that moved twice.
func creationsOf(events []ownerEvent) int {
	n := 0
	for _, e := range events {
		if !e.Deleted {
			n++
		}
	}
	return n
}
