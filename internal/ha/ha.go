// Package ha holds the terms of one process: what it owns right now, and the
// work that runs while it owns it (DESIGN.md section 10).
//
// Winning an owned key (package election) yields a Term: the key's fence
// and a context cancelled the instant ownership ends, whatever ends it (a
// fenced write, the lease lost, a hand-off, a deposition, a step-down). Work
// is registered with the Core once, like hashicorp/raft's LeaderCh: OnTerm
// work runs for every term, for as long as it lasts; WhileOwning work runs
// while the process holds at least one term. The code that wins and loses
// ownership only calls Begin and End; it never names the work, so the
// scheduler, agent handling, history recording, and later schedules and
// supervised services plug in without touching it.
package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/tandemhq/tandem/internal/election"
)

// Causes of the end of a term, as Term.Cause reports them.
var (
	ErrDeposed     = errors.New("ha: another owner holds the key (deposed)")
	ErrFenced      = errors.New("ha: etcd rejected a write guarded by the term's fence")
	ErrSessionLost = errors.New("ha: the etcd session ended, and every key bound to its lease with it")
	ErrResigned    = errors.New("ha: ownership given up on purpose")
	ErrHandedOff   = errors.New("ha: ownership handed off to another server")
	ErrStopping    = errors.New("ha: the process is stopping")
)

// Term is one tenure of ownership of one shard (or other owned thing): its
// fence and a context that ends the moment the ownership does.
type Term struct {
	Shard int
	Fence election.Fence
	// Began is when the term began serving.
	Began time.Time

	ctx    context.Context
	cancel context.CancelCauseFunc
}

// Context returns a context cancelled the instant the term ends; its cause
// (context.Cause) is one of the Err* values of this package.
func (t *Term) Context() context.Context { return t.ctx }

// Done returns a channel closed when the term ends.
func (t *Term) Done() <-chan struct{} { return t.ctx.Done() }

// Epoch returns the term's epoch: its owner key's create revision.
func (t *Term) Epoch() int64 { return t.Fence.Rev }

// Ended returns why the term ended, or nil while it lasts.
func (t *Term) Ended() error {
	if t.ctx.Err() == nil {
		return nil
	}
	return context.Cause(t.ctx)
}

// String implements fmt.Stringer.
func (t *Term) String() string { return fmt.Sprintf("shard %d epoch %d", t.Shard, t.Fence.Rev) }

type work struct {
	name string
	fn   any // func(*Term) or func(context.Context)
}

// Core holds the terms of one process and runs the work registered for them.
// Its methods are safe for concurrent use.
type Core struct {
	log *slog.Logger

	mu          sync.Mutex
	terms       map[int]*Term
	perTerm     []work
	whileOwning []work
	changed     chan struct{} // closed and replaced whenever the set of terms changes
	owning      context.CancelFunc
	owningDone  chan struct{} // closed when the last generation of WhileOwning work has returned
	closed      bool
	wg          sync.WaitGroup
}

// New returns an empty Core; log receives a record of each term begun and
// ended.
func New(log *slog.Logger) *Core {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	done := make(chan struct{})
	close(done)
	return &Core{log: log, terms: make(map[int]*Term), changed: make(chan struct{}), owningDone: done}
}

// OnTerm registers fn to run, in its own goroutine, at the start of every
// term. fn must return once t.Done() is closed. Register work before the
// first term begins: a term already held does not get it.
func (c *Core) OnTerm(name string, fn func(t *Term)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.perTerm = append(c.perTerm, work{name, fn})
}

// WhileOwning registers fn to run, in its own goroutine, whenever the
// process goes from holding no term to holding one; its ctx ends when the
// process holds none again, and fn must then return. A new generation only
// starts once the previous one has returned, so two never overlap. Use
// Held, Term and Changed from fn to see which terms are held.
func (c *Core) WhileOwning(name string, fn func(ctx context.Context)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.whileOwning = append(c.whileOwning, work{name, fn})
}

// ErrClosed means the Core is closed: no term can begin.
var ErrClosed = errors.New("ha: closed")

// Begin starts a term for shard under fence and starts the work registered
// for it. It fails if the Core is closed or a term for shard is already
// held (end it first).
func (c *Core) Begin(shard int, fence election.Fence) (*Term, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if t, ok := c.terms[shard]; ok {
		return nil, fmt.Errorf("ha: shard %d is already held (epoch %d)", shard, t.Epoch())
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	t := &Term{Shard: shard, Fence: fence, Began: time.Now(), ctx: ctx, cancel: cancel}
	c.terms[shard] = t
	if len(c.terms) == 1 {
		c.startOwningLocked()
	}
	for _, w := range c.perTerm {
		fn := w.fn.(func(*Term))
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			fn(t)
		}()
	}
	c.notifyLocked()
	c.log.Info("term began", "shard", shard, "epoch", fence.Rev)
	return t, nil
}

// startOwningLocked starts a generation of WhileOwning work, after the
// previous generation has returned.
func (c *Core) startOwningLocked() {
	ctx, cancel := context.WithCancel(context.Background())
	prev, done := c.owningDone, make(chan struct{})
	c.owning, c.owningDone = cancel, done
	works := append([]work(nil), c.whileOwning...)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(done)
		<-prev
		var wg sync.WaitGroup
		for _, w := range works {
			fn := w.fn.(func(context.Context))
			wg.Add(1)
			go func() {
				defer wg.Done()
				fn(ctx)
			}()
		}
		wg.Wait()
	}()
}

// End ends the term t with cause, if it is still the term held for its
// shard: its context is cancelled at once. It reports whether it ended t;
// a term already over (a newer one may hold the shard) is left alone. It is
// safe to call from any goroutine and more than once.
func (c *Core) End(t *Term, cause error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t == nil || c.terms[t.Shard] != t {
		return false
	}
	c.endLocked(t, cause)
	return true
}

// EndAll ends every term with cause and returns them: a lost etcd session
// drops every ownership at once, before anything else happens.
func (c *Core) EndAll(cause error) []*Term {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Term
	for _, t := range c.terms {
		out = append(out, t)
	}
	for _, t := range out {
		c.endLocked(t, cause)
	}
	sortTerms(out)
	return out
}

func (c *Core) endLocked(t *Term, cause error) {
	delete(c.terms, t.Shard)
	t.cancel(cause)
	if len(c.terms) == 0 && c.owning != nil {
		c.owning()
		c.owning = nil
	}
	c.notifyLocked()
	c.log.Info("term ended", "shard", t.Shard, "epoch", t.Epoch(), "cause", cause)
}

func (c *Core) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Term returns the term held for shard, or nil.
func (c *Core) Term(shard int) *Term {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.terms[shard]
}

// Held returns the terms held now, by shard.
func (c *Core) Held() []*Term {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Term, 0, len(c.terms))
	for _, t := range c.terms {
		out = append(out, t)
	}
	sortTerms(out)
	return out
}

// Owned returns the shards held now, in order.
func (c *Core) Owned() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, 0, len(c.terms))
	for k := range c.terms {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// Count returns how many terms are held.
func (c *Core) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.terms)
}

// Changed returns a channel closed the next time a term begins or ends.
func (c *Core) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Close ends every term with ErrStopping, refuses new ones, and waits for
// all registered work to return.
func (c *Core) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return
	}
	c.closed = true
	c.mu.Unlock()
	c.EndAll(ErrStopping)
	c.wg.Wait()
}

func sortTerms(ts []*Term) {
	sort.Slice(ts, func(a, b int) bool { return ts[a].Shard < ts[b].Shard })
}
