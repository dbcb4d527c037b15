package ha_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/ha"
)

// fence is the fence of shard k at epoch rev; the Core treats it as a value.
func fence(k int, rev int64) election.Fence {
	return election.Fence{Key: fmt.Sprintf("/tandem/test/shards/%04d/owner", k), Rev: rev}
}

func newCore(t *testing.T) *ha.Core {
	t.Helper()
	c := ha.New(nil)
	t.Cleanup(c.Close)
	return c
}

func begin(t *testing.T, c *ha.Core, k int, rev int64) *ha.Term {
	t.Helper()
	tm, err := c.Begin(k, fence(k, rev))
	if err != nil {
		t.Fatalf("Begin(%d, %d): %v", k, rev, err)
	}
	return tm
}

// recv returns the next value of ch, failing the test if none comes within
// a generous timeout.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

func isClosed[T any](ch <-chan T) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func shardsOf(ts []*ha.Term) []int {
	out := make([]int, len(ts))
	for i, t := range ts {
		out[i] = t.Shard
	}
	return out
}

func TestBeginStartsOnTermWork(t *testing.T) {
	c := newCore(t)
	type start struct {
		name string
		term *ha.Term
	}
	started := make(chan start, 2)
	causes := make(chan error, 2)
	for _, name := range []string{"scheduler", "history"} {
		c.OnTerm(name, func(tm *ha.Term) {
			started <- start{name, tm}
			<-tm.Done()
			causes <- context.Cause(tm.Context())
		})
	}

	f := fence(3, 42)
	tm := begin(t, c, 3, 42)
	if tm.Shard != 3 || tm.Fence != f || tm.Epoch() != 42 {
		t.Fatalf("term: got shard %d fence %s epoch %d, want shard 3 fence %s epoch 42", tm.Shard, tm.Fence, tm.Epoch(), f)
	}
	got := map[string]*ha.Term{}
	for range 2 {
		s := recv(t, started, "OnTerm work to start")
		got[s.name] = s.term
	}
	for _, name := range []string{"scheduler", "history"} {
		if got[name] != tm {
			t.Fatalf("%s work: got term %v, want the term Begin returned (%v)", name, got[name], tm)
		}
	}
	if err := tm.Ended(); err != nil || tm.Context().Err() != nil {
		t.Fatalf("term just begun: Ended %v, ctx %v; want nil, nil", err, tm.Context().Err())
	}

	if !c.End(tm, ha.ErrResigned) {
		t.Fatal("End: got false, want true")
	}
	for range 2 {
		if got := recv(t, causes, "OnTerm work to see its term end"); got != ha.ErrResigned {
			t.Fatalf("context.Cause seen by the work: got %v, want %v", got, ha.ErrResigned)
		}
	}
	if got := tm.Ended(); got != ha.ErrResigned {
		t.Fatalf("Ended: got %v, want %v", got, ha.ErrResigned)
	}
	if !isClosed(tm.Done()) {
		t.Fatal("Done after End: open, want closed")
	}
}

func TestEnd(t *testing.T) {
	tests := []struct {
		name string
		pick func(held, earlier *ha.Term) *ha.Term
		want bool
	}{
		{"the held term", func(held, _ *ha.Term) *ha.Term { return held }, true},
		{"an earlier term of the shard", func(_, earlier *ha.Term) *ha.Term { return earlier }, false},
		{"no term", func(*ha.Term, *ha.Term) *ha.Term { return nil }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCore(t)
			earlier := begin(t, c, 1, 41)
			if !c.End(earlier, ha.ErrHandedOff) {
				t.Fatal("End of the first term of shard 1: got false, want true")
			}
			tm := begin(t, c, 1, 42)
			other := begin(t, c, 2, 42)

			end := tc.pick(tm, earlier)
			if got := c.End(end, ha.ErrFenced); got != tc.want {
				t.Fatalf("End(%v): got %t, want %t", end, got, tc.want)
			}
			if other.Ended() != nil || c.Term(2) != other {
				t.Fatalf("term of shard 2: ended %v, want untouched", other.Ended())
			}
			if got := earlier.Ended(); got != ha.ErrHandedOff {
				t.Fatalf("cause of the earlier term: got %v, want its own %v", got, ha.ErrHandedOff)
			}
			if !tc.want {
				if tm.Ended() != nil || c.Term(1) != tm {
					t.Fatalf("term of shard 1 after End that did nothing: ended %v, want held", tm.Ended())
				}
				return
			}
			if got := context.Cause(tm.Context()); got != ha.ErrFenced {
				t.Fatalf("context.Cause: got %v, want %v", got, ha.ErrFenced)
			}
			if got := c.Term(1); got != nil {
				t.Fatalf("Term(1) after End: got %v, want nil", got)
			}
			if c.End(end, ha.ErrDeposed) {
				t.Fatal("second End: got true, want false")
			}
			if got := tm.Ended(); got != ha.ErrFenced {
				t.Fatalf("cause after a second End: got %v, want the first cause %v", got, ha.ErrFenced)
			}
		})
	}
}

func TestBeginHeldShard(t *testing.T) {
	c := newCore(t)
	tm := begin(t, c, 1, 42)
	for _, rev := range []int64{42, 43} {
		if _, err := c.Begin(1, fence(1, rev)); err == nil {
			t.Fatalf("Begin(1, %d) while shard 1 is held: got nil error, want one", rev)
		}
	}
	if c.Term(1) != tm || tm.Ended() != nil || c.Count() != 1 {
		t.Fatalf("after failed Begins: Term(1) %v ended %v count %d, want the first term, held, 1", c.Term(1), tm.Ended(), c.Count())
	}
	// Once it ends, the shard can be held again.
	c.End(tm, ha.ErrDeposed)
	if next := begin(t, c, 1, 50); next.Epoch() != 50 {
		t.Fatalf("epoch of the next term: got %d, want 50", next.Epoch())
	}
}

func TestBeginAfterClose(t *testing.T) {
	c := newCore(t)
	c.Close()
	tm, err := c.Begin(1, fence(1, 42))
	if !errors.Is(err, ha.ErrClosed) || tm != nil {
		t.Fatalf("Begin after Close: got %v, %v; want nil, %v", tm, err, ha.ErrClosed)
	}
	if c.Count() != 0 {
		t.Fatalf("Count after a refused Begin: got %d, want 0", c.Count())
	}
}

func TestEndAll(t *testing.T) {
	c := newCore(t)
	var terms []*ha.Term
	for _, k := range []int{5, 2, 9} {
		terms = append(terms, begin(t, c, k, int64(100+k)))
	}
	ended := c.EndAll(ha.ErrSessionLost)
	if got, want := shardsOf(ended), []int{2, 5, 9}; !slices.Equal(got, want) {
		t.Fatalf("EndAll: got shards %v, want %v", got, want)
	}
	for _, tm := range terms {
		if !slices.Contains(ended, tm) {
			t.Fatalf("EndAll: term %v missing", tm)
		}
		if got := tm.Ended(); got != ha.ErrSessionLost {
			t.Fatalf("term %v: ended with %v, want %v", tm, got, ha.ErrSessionLost)
		}
	}
	if c.Count() != 0 || len(c.Held()) != 0 || len(c.Owned()) != 0 {
		t.Fatalf("after EndAll: count %d held %v owned %v, want none", c.Count(), c.Held(), c.Owned())
	}
	if again := c.EndAll(ha.ErrStopping); len(again) != 0 {
		t.Fatalf("second EndAll: got %v, want none", again)
	}
}

// Held, Owned, Count and Term reflect the terms, and Changed is closed by
// every Begin and End that changes them, and only by those.
func TestState(t *testing.T) {
	c := newCore(t)
	terms := map[int]*ha.Term{}
	steps := []struct {
		name        string
		do          func() error
		wantOwned   []int
		wantChanged bool
	}{
		{"begin 4", func() error { var err error; terms[4], err = c.Begin(4, fence(4, 10)); return err }, []int{4}, true},
		{"begin 1", func() error { var err error; terms[1], err = c.Begin(1, fence(1, 11)); return err }, []int{1, 4}, true},
		{"begin 7", func() error { var err error; terms[7], err = c.Begin(7, fence(7, 12)); return err }, []int{1, 4, 7}, true},
		{"begin a held shard", func() error {
			if _, err := c.Begin(4, fence(4, 13)); err == nil {
				return errors.New("Begin of a held shard succeeded")
			}
			return nil
		}, []int{1, 4, 7}, false},
		{"end a term that is over", func() error {
			over := &ha.Term{Shard: 4, Fence: fence(4, 9)}
			if c.End(over, ha.ErrDeposed) {
				return errors.New("End of a term not held ended one")
			}
			return nil
		}, []int{1, 4, 7}, false},
		{"end 4", func() error {
			if !c.End(terms[4], ha.ErrDeposed) {
				return errors.New("End of shard 4's term ended nothing")
			}
			delete(terms, 4)
			return nil
		}, []int{1, 7}, true},
		{"end all", func() error { c.EndAll(ha.ErrSessionLost); clear(terms); return nil }, []int{}, true},
	}
	for _, s := range steps {
		changed := c.Changed()
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := isClosed(changed); got != s.wantChanged {
			t.Fatalf("%s: Changed closed %t, want %t", s.name, got, s.wantChanged)
		}
		if s.wantChanged && isClosed(c.Changed()) {
			t.Fatalf("%s: the next Changed channel is already closed, want open", s.name)
		}
		if got := c.Owned(); !slices.Equal(got, s.wantOwned) {
			t.Fatalf("%s: Owned got %v, want %v", s.name, got, s.wantOwned)
		}
		if got := shardsOf(c.Held()); !slices.Equal(got, s.wantOwned) {
			t.Fatalf("%s: Held got shards %v, want %v", s.name, got, s.wantOwned)
		}
		if got := c.Count(); got != len(s.wantOwned) {
			t.Fatalf("%s: Count got %d, want %d", s.name, got, len(s.wantOwned))
		}
		for k := range 10 {
			if got, want := c.Term(k), terms[k]; got != want {
				t.Fatalf("%s: Term(%d) got %v, want %v", s.name, k, got, want)
			}
		}
	}
}

// generation is one run of WhileOwning work, held by the test: after its
// ctx ends it does not return until the test closes release.
type generation struct {
	n       int
	ctx     context.Context
	release chan struct{}
}

// WhileOwning work runs once while any term is held, however terms come and
// go, and a new generation starts only after the previous one has returned.
// The test runs in a synctest bubble, so synctest.Wait lets every goroutine
// of the Core run until it blocks: a generation that has not started by then
// would never start without the test's next step.
func TestWhileOwning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := ha.New(nil)
		started := make(chan *generation, 10)
		stop := make(chan struct{}) // closed at cleanup, so a failed test leaves nothing blocked
		n := 0
		c.WhileOwning("work", func(ctx context.Context) {
			n++ // generations never overlap, so this is not a race
			g := &generation{n: n, ctx: ctx, release: make(chan struct{})}
			started <- g
			<-ctx.Done()
			select {
			case <-g.release:
			case <-stop:
			}
		})
		t.Cleanup(func() {
			close(stop)
			c.Close()
		})
		noStart := func(when string) {
			t.Helper()
			synctest.Wait()
			select {
			case g := <-started:
				t.Fatalf("%s: generation %d started, want none", when, g.n)
			default:
			}
		}
		mustStart := func(when string) *generation {
			t.Helper()
			synctest.Wait()
			select {
			case g := <-started:
				return g
			default:
				t.Fatalf("%s: no generation started, want one", when)
				return nil
			}
		}

		noStart("before any term")
		t0 := begin(t, c, 0, 1)
		g1 := mustStart("first term began")
		if g1.n != 1 {
			t.Fatalf("first generation: got %d, want 1", g1.n)
		}

		// Terms come and go; at least one is held throughout.
		var t1, t2 *ha.Term
		steps := []struct {
			name string
			do   func()
		}{
			{"begin 1", func() { t1 = begin(t, c, 1, 2) }},
			{"end 0", func() { c.End(t0, ha.ErrHandedOff) }},
			{"begin 2", func() { t2 = begin(t, c, 2, 3) }},
			{"end 1", func() { c.End(t1, ha.ErrFenced) }},
			{"begin 0 again", func() { t0 = begin(t, c, 0, 4) }},
			{"end 2", func() { c.End(t2, ha.ErrDeposed) }},
		}
		for _, s := range steps {
			s.do()
			noStart(s.name)
			if err := g1.ctx.Err(); err != nil {
				t.Fatalf("%s (holding %v): generation 1's ctx ended (%v), want it running", s.name, c.Owned(), err)
			}
		}

		c.End(t0, ha.ErrResigned) // the last term
		synctest.Wait()
		if g1.ctx.Err() == nil {
			t.Fatal("after the last term ended: generation 1's ctx is live, want it done")
		}

		// Generation 1 has seen its ctx end but has not returned yet: a new
		// term must not start generation 2 until it has.
		t5 := begin(t, c, 5, 5)
		noStart("a term began while generation 1 had not returned")
		close(g1.release)
		g2 := mustStart("generation 1 returned")
		if g2.n != 2 || g2.ctx.Err() != nil {
			t.Fatalf("next generation: got %d with ctx %v, want 2 with a live ctx", g2.n, g2.ctx.Err())
		}

		c.End(t5, ha.ErrResigned)
		close(g2.release)
		c.Close()
		noStart("after Close")
	})
}

// Close ends every term with ErrStopping and returns only once all work has
// returned, even work that lingers after its ctx ended.
func TestClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := ha.New(nil)
		termRelease, owningRelease := make(chan struct{}), make(chan struct{})
		releaseTerms := sync.OnceFunc(func() { close(termRelease) })
		releaseOwning := sync.OnceFunc(func() { close(owningRelease) })
		// A failed test still lets all work, and so Close, return.
		t.Cleanup(releaseTerms)
		t.Cleanup(releaseOwning)
		causes := make(chan error, 2)
		c.OnTerm("work", func(tm *ha.Term) {
			<-tm.Done()
			causes <- context.Cause(tm.Context())
			<-termRelease
		})
		c.WhileOwning("work", func(ctx context.Context) {
			<-ctx.Done()
			<-owningRelease
		})
		terms := []*ha.Term{begin(t, c, 0, 1), begin(t, c, 1, 2)}

		closed := make(chan struct{})
		go func() {
			c.Close()
			close(closed)
		}()
		synctest.Wait()
		for _, tm := range terms {
			if got := tm.Ended(); got != ha.ErrStopping {
				t.Fatalf("term %v after Close: ended with %v, want %v", tm, got, ha.ErrStopping)
			}
		}
		for range terms {
			select {
			case got := <-causes:
				if got != ha.ErrStopping {
					t.Fatalf("cause seen by OnTerm work: got %v, want %v", got, ha.ErrStopping)
				}
			default:
				t.Fatal("OnTerm work did not see its term end")
			}
		}
		if c.Count() != 0 {
			t.Fatalf("Count while closing: got %d, want 0", c.Count())
		}
		if _, err := c.Begin(2, fence(2, 3)); !errors.Is(err, ha.ErrClosed) {
			t.Fatalf("Begin while closing: got %v, want %v", err, ha.ErrClosed)
		}
		if isClosed(closed) {
			t.Fatal("Close returned while all work was still running")
		}

		releaseTerms()
		synctest.Wait()
		if isClosed(closed) {
			t.Fatal("Close returned while WhileOwning work was still running")
		}

		releaseOwning()
		synctest.Wait()
		if !isClosed(closed) {
			t.Fatal("Close still blocked after all work returned")
		}
		c.Close() // a second Close is fine and returns at once
	})
}

// Begin, End and the readers are safe from many goroutines at once, every
// term begun gets its work, and WhileOwning generations never overlap.
func TestConcurrent(t *testing.T) {
	c := ha.New(nil)
	var begun, workStarted, workEnded, running, overlaps atomic.Int64
	c.OnTerm("work", func(tm *ha.Term) {
		workStarted.Add(1)
		<-tm.Done()
		workEnded.Add(1)
	})
	c.WhileOwning("work", func(ctx context.Context) {
		if running.Add(1) > 1 {
			overlaps.Add(1)
		}
		<-ctx.Done()
		running.Add(-1)
	})

	const goroutines, rounds, shards = 8, 300, 6 // fewer shards than goroutines: they contend
	var rev atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 1))
			for range rounds {
				k := rnd.IntN(shards)
				switch rnd.IntN(4) {
				case 0, 1:
					if _, err := c.Begin(k, fence(k, rev.Add(1))); err == nil {
						begun.Add(1)
					}
				case 2:
					c.End(c.Term(k), ha.ErrDeposed)
				default:
					_ = c.Held()
					_ = c.Owned()
					_ = c.Count()
					<-c.Changed() // closed on the next change; keep it moving
				}
			}
		})
	}
	// Keep the readers above from blocking for ever on Changed.
	stop := make(chan struct{})
	churn := make(chan struct{})
	go func() {
		defer close(churn)
		for {
			select {
			case <-stop:
				return
			default:
				if _, err := c.Begin(shards, fence(shards, rev.Add(1))); err == nil {
					begun.Add(1)
				}
				c.End(c.Term(shards), ha.ErrResigned)
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-churn

	c.Close()
	if got := overlaps.Load(); got != 0 {
		t.Fatalf("overlapping WhileOwning generations: got %d, want 0", got)
	}
	if c.Count() != 0 {
		t.Fatalf("Count after Close: got %d, want 0", c.Count())
	}
	if s, e, b := workStarted.Load(), workEnded.Load(), begun.Load(); s != b || e != b {
		t.Fatalf("OnTerm work: started %d, ended %d; want both %d (terms begun)", s, e, b)
	}
}
