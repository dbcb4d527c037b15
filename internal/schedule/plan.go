package schedule

import (
	"fmt"
	"time"
)

// Outcome is what Plan decides for a nominal time.
type Outcome string

// Outcomes. Fire and Replace end a nominal time with a fired record; Skip
// with a skipped record; Buffer leaves it waiting, to be fired (Released)
// by a later Plan once no run is live.
const (
	Fire    Outcome = "fire"    // start a run now
	Skip    Outcome = "skip"    // record it skipped, with a Reason
	Buffer  Outcome = "buffer"  // record it buffered: it fires when no run is live
	Replace Outcome = "replace" // kill every live run (those started earlier in the same plan too), then start a run now
)

// Reason says why a nominal time was skipped.
type Reason string

// Skip reasons.
const (
	ReasonPaused  Reason = "paused"
	ReasonOverlap Reason = "overlap"
	ReasonCatchup Reason = "catchup"
)

// Decision is Plan's verdict on one nominal time, or, for Skip only, on the
// consecutive nominal times Nominal..Through. A long pause or outage must not
// cost one record per time: a range is one record covering each of its times
// exactly once, and tt.List(d.Nominal.Add(-1), d.Through, 0) expands it.
type Decision struct {
	// Nominal is the nominal time decided (the first, for a range). The run
	// of a fire is named after it.
	Nominal time.Time
	// Through is the last nominal time a Skip covers; equal to Nominal for
	// a single time and for every other outcome.
	Through time.Time
	Outcome Outcome
	Reason  Reason // Skip only
	Detail  string // in plain words
	// Released marks the Fire of a time buffered by an earlier Plan; it is
	// at or before the input cursor and does not move it.
	Released bool
	// Due is Nominal plus its jitter; Late is Now minus Due (for metrics).
	Due  time.Time
	Late time.Duration
}

// PlanInput is the durable state and the local clock Plan decides from.
type PlanInput struct {
	Timetable *Timetable
	ID        string // the schedule's ID, for jitter

	// Cursor is the last nominal time that has a record (fired, skipped or
	// buffered). Plan decides the times after it. The controller sets it
	// when it creates the schedule (e.g. to the creation time, so no past
	// time fires) and it must never be zero.
	Cursor time.Time
	// Now is the local clock. It decides only lateness and whether a time
	// is due; the cursor, not the clock, decides what was already handled.
	Now time.Time
	// Grace: a time less than Grace late is never a catch-up (a failover is
	// not a misfire). Zero or negative means DefaultGrace.
	Grace time.Duration

	// Live is the number of runs of the schedule still live.
	Live int
	// Buffered are the times recorded as buffered and not yet fired, oldest
	// first.
	Buffered []time.Time

	// Limit caps the number of decisions (0: no cap); with More set in the
	// result, call again with the new cursor.
	Limit int
}

// Result is Plan's answer.
type Result struct {
	// Decisions, in order: at most one release of a buffered time (all of
	// them under OverlapAllow), then the due times after the input cursor,
	// each covered by exactly one decision, in increasing order, none of
	// them before its due time by Now.
	Decisions []Decision
	// Cursor is the last nominal time decided (the input cursor if none).
	// Commit it with the decisions, in one fenced transaction.
	Cursor time.Time
	// Wake is when the next nominal time after Cursor is due: the time to
	// call Plan again (liveness only). Zero when Done or More.
	Wake time.Time
	// Done: there is no nominal time after Cursor (the schedule has ended).
	Done bool
	// More: Limit cut the plan short; due times remain after Cursor.
	More bool
}

// Plan decides what happens to every nominal time of a schedule that is due
// by Now and after Cursor, and to buffered times once no run is live. It is
// a pure function of its input: a new owner given the same stored cursor,
// runs and buffer reaches the same decisions (only Now may differ, and Now
// only moves times between "on time" and "missed").
//
// For each nominal time T after Cursor with Due(T) <= Now, in order:
//
//  1. Paused: every due time is skipped (ReasonPaused), as one range;
//     buffered times stay buffered.
//  2. Catch-up. T is on time if Now-Due(T) < Grace, else missed. On-time
//     times always go on to step 3. Missed times more than CatchupWindow
//     late (if a window is set) are skipped (ReasonCatchup); of the others,
//     CatchupNone skips all, CatchupLatest keeps the most recent one,
//     CatchupAll keeps the most recent CatchupMax (all if 0) and skips the
//     rest (ReasonCatchup).
//  3. Overlap, for the times kept, in order, each seeing the runs started
//     by the decisions before it: with no run live, Fire. With a run live:
//     OverlapAllow fires; OverlapSkip skips (ReasonOverlap);
//     OverlapBufferOne buffers if nothing is buffered, else skips;
//     OverlapBufferAll buffers up to MaxBuffered, then skips;
//     OverlapReplace replaces (kills the live runs, then fires).
//
// Before step 3, when not paused, the oldest buffered time is released
// (fired) if no run is live; under OverlapAllow every buffered time is.
// Consecutive skips with the same reason and detail merge into one
// decision.
func Plan(in PlanInput) Result {
	tt := in.Timetable
	s := tt.spec
	grace := in.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	p := planner{in: in, res: Result{Cursor: in.Cursor}, live: in.Live, buffered: len(in.Buffered)}

	// Releases of buffered times.
	if !s.Paused {
		for _, b := range in.Buffered {
			if p.live > 0 && s.Overlap != OverlapAllow {
				break
			}
			if !p.add(Decision{Nominal: b, Through: b, Outcome: Fire, Released: true, Detail: "buffered time started: no run is live"}) {
				return p.finish()
			}
			p.live++
			p.buffered--
		}
	}

	first, ok := tt.Next(in.Cursor)
	if !ok {
		return p.finish()
	}
	lastDue, ok := p.lastDueBy(in.Now)
	if !ok || lastDue.Before(first) {
		return p.finish()
	}

	if s.Paused {
		detail := "the schedule is paused"
		if s.PauseNote != "" {
			detail += ": " + s.PauseNote
		}
		p.skip(first, lastDue, ReasonPaused, detail)
		return p.finish()
	}

	// Catch-up: split [first, lastDue] into skipped (catch-up) and kept.
	kept := first
	if lastMissed, ok := p.lastDueBy(in.Now.Add(-grace)); ok && !lastMissed.Before(first) {
		// The missed times are [first, lastMissed].
		inWindow := first
		if w := s.CatchupWindow.Std(); w > 0 {
			if lastOut, ok := p.lastDueBy(in.Now.Add(-w - 1)); ok && !lastOut.Before(first) {
				// A window shorter than the grace never touches on-time times.
				lastOut = minTime(lastOut, lastMissed)
				p.skip(first, lastOut, ReasonCatchup, fmt.Sprintf("missed by more than the catch-up window (%s)", w))
				inWindow, ok = tt.Next(lastOut)
				if !ok {
					return p.finish()
				}
			}
		}
		kept = inWindow
		if !lastMissed.Before(inWindow) {
			// The missed times in the window are [inWindow, lastMissed].
			switch keep := s.CatchupMax; {
			case s.Catchup == CatchupNone:
				p.skip(inWindow, lastMissed, ReasonCatchup, "missed; catch-up policy none")
				if kept, ok = tt.Next(lastMissed); !ok {
					return p.finish()
				}
			case s.Catchup == CatchupAll && keep == 0:
				// Every missed time in the window goes on.
			default:
				detail := fmt.Sprintf("missed; catch-up policy all runs only the %d most recent missed times", keep)
				if s.Catchup == CatchupLatest {
					keep, detail = 1, "missed; catch-up policy latest runs only the most recent missed time"
				}
				// kept becomes the keep-th most recent missed time.
				kept = lastMissed
				for i := 1; i < keep; i++ {
					prev, ok := tt.Prev(kept)
					if !ok || prev.Before(inWindow) {
						break
					}
					kept = prev
				}
				if kept.After(inWindow) {
					before, _ := tt.Prev(kept)
					p.skip(inWindow, before, ReasonCatchup, detail)
				}
			}
		}
	}

	// Overlap, for the kept times [kept, lastDue].
	for t := kept; !t.After(lastDue); {
		d := Decision{Nominal: t, Through: t}
		switch {
		case p.live == 0 || s.Overlap == OverlapAllow:
			d.Outcome = Fire
			p.live++
		case s.Overlap == OverlapReplace:
			d.Outcome, d.Detail = Replace, fmt.Sprintf("%d live run(s) killed (overlap policy replace)", p.live)
			p.live = 1
		case s.Overlap == OverlapBufferOne && p.buffered == 0,
			s.Overlap == OverlapBufferAll && p.buffered < MaxBuffered:
			d.Outcome, d.Detail = Buffer, "a run is live: starts when none is"
			p.buffered++
		default:
			// Every remaining time is skipped alike: one range, not a loop.
			detail := "a run is live (overlap policy skip)"
			switch s.Overlap {
			case OverlapBufferOne:
				detail = "a run is live and a time is already buffered (overlap policy buffer_one)"
			case OverlapBufferAll:
				detail = fmt.Sprintf("a run is live and the buffer is full (%d times)", MaxBuffered)
			}
			p.skip(t, lastDue, ReasonOverlap, detail)
			return p.finish()
		}
		if !p.add(d) {
			return p.finish()
		}
		if t, ok = tt.Next(t); !ok {
			break
		}
	}
	return p.finish()
}

type planner struct {
	in       PlanInput
	res      Result
	live     int
	buffered int
	full     bool
}

// lastDueBy returns the last nominal time T with Due(T) <= x. Because jitter
// is less than the distance to the next time, it is the last time at or
// before x, or the one before that.
func (p *planner) lastDueBy(x time.Time) (time.Time, bool) {
	tt := p.in.Timetable
	t, ok := tt.Prev(x.Add(1))
	if !ok {
		return time.Time{}, false
	}
	if tt.Due(p.in.ID, t).After(x) {
		return tt.Prev(t)
	}
	return t, true
}

// add appends d unless the limit is reached (then it sets More and returns
// false). Non-released decisions advance the cursor.
func (p *planner) add(d Decision) bool {
	if p.full || (p.in.Limit > 0 && len(p.res.Decisions) >= p.in.Limit) {
		p.full = true
		return false
	}
	d.Due = p.in.Timetable.Due(p.in.ID, d.Nominal)
	d.Late = p.in.Now.Sub(d.Due)
	if !d.Released {
		p.res.Cursor = d.Through
	}
	p.res.Decisions = append(p.res.Decisions, d)
	return true
}

// skip records the times [from, through] skipped, merged into the previous
// decision when that is the same kind of skip.
func (p *planner) skip(from, through time.Time, r Reason, detail string) {
	if p.full {
		return
	}
	if n := len(p.res.Decisions); n > 0 {
		last := &p.res.Decisions[n-1]
		if last.Outcome == Skip && last.Reason == r && last.Detail == detail && !last.Released {
			last.Through = through
			p.res.Cursor = through
			return
		}
	}
	p.add(Decision{Nominal: from, Through: through, Outcome: Skip, Reason: r, Detail: detail})
}

func (p *planner) finish() Result {
	if p.full {
		p.res.More = true
		return p.res
	}
	next, ok := p.in.Timetable.Next(p.res.Cursor)
	if !ok {
		p.res.Done = true
		return p.res
	}
	p.res.Wake = p.in.Timetable.Due(p.in.ID, next)
	return p.res
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
