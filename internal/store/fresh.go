package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Fresh waits until the view holds every write etcd had committed when Fresh
// was called, so that what is read from the view afterwards is
// linearizable: a read on any server sees every write acknowledged before
// it began, whoever made it. It takes etcd's current revision with one
// linearizable read (a quorum round trip, shared by the callers that arrive
// while one is under way, each waiting for a read that began after it
// arrived), then waits for the watch to bring the view there, asking etcd
// for progress notifications so that a revision written outside this
// cluster's keys is reached too. It fails when ctx ends first, or when etcd
// has no quorum: a server that cannot tell whether its view is current does
// not answer from it.
func (s *Store) Fresh(ctx context.Context) error {
	rev, err := s.barrier.revision(ctx, func(ctx context.Context) (int64, error) {
		resp, err := s.cli.Get(ctx, s.keys.Config(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	})
	if err != nil {
		return fmt.Errorf("read etcd's current revision: %w", err)
	}
	return s.waitProgress(ctx, rev)
}

// waitProgress waits until the view has reached rev, asking etcd every
// 25 ms for a progress notification on the view's watch (a revision with no
// event under the cluster's prefix arrives only that way).
func (s *Store) waitProgress(ctx context.Context, rev int64) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	asked := false
	for {
		s.mu.RLock()
		cur, ch := s.rev, s.changed
		s.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		if !asked {
			// The watch's stream is found by its context's metadata: the
			// same require-leader flag as follow uses.
			_ = s.cli.RequestProgress(clientv3.WithRequireLeader(ctx))
			asked = true
		}
		select {
		case <-ch:
		case <-tick.C:
			asked = false
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (view at %d): %w", rev, cur, ctx.Err())
		}
	}
}

// readBarrier shares linearizable reads of etcd's revision among
// concurrent callers. A caller may only use a read that began after it
// arrived (an earlier one could miss a write acknowledged just before the
// caller came), so callers that arrive while a read is under way wait for
// the next one, which starts as soon as it ends: at most one read is in
// flight, and a burst of callers costs two.
type readBarrier struct {
	mu      sync.Mutex
	running bool
	next    *barrierRead
}

type barrierRead struct {
	done chan struct{}
	rev  int64
	err  error
}

// barrierTimeout bounds one read of the barrier, whoever waits for it.
const barrierTimeout = 5 * time.Second

func (b *readBarrier) revision(ctx context.Context, read func(context.Context) (int64, error)) (int64, error) {
	b.mu.Lock()
	if b.next == nil {
		b.next = &barrierRead{done: make(chan struct{})}
	}
	r := b.next
	if !b.running {
		b.running, b.next = true, nil
		// The goroutine ends when no caller waits for another read; each
		// read is bounded by barrierTimeout.
		go b.run(r, read)
	}
	b.mu.Unlock()
	select {
	case <-r.done:
		return r.rev, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (b *readBarrier) run(r *barrierRead, read func(context.Context) (int64, error)) {
	for r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), barrierTimeout)
		r.rev, r.err = read(ctx)
		cancel()
		close(r.done)
		b.mu.Lock()
		r, b.next = b.next, nil
		if r == nil {
			b.running = false
		}
		b.mu.Unlock()
	}
}
