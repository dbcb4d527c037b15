package health

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// State is the health of a supervised service as a Monitor sees it.
type State int

// The states of a Monitor, in the order a healthy start goes through them.
const (
	// Starting is the state from start until the service first becomes
	// healthy or its start timeout passes.
	Starting State = iota
	// Healthy means every check passes: each has had Rise successes in a
	// row since it last failed.
	Healthy
	// Unhealthy means a check has failed Fall times in a row since the
	// service was healthy, or the service did not become healthy within its
	// start timeout.
	Unhealthy
)

// String returns "starting", "healthy" or "unhealthy".
func (s State) String() string {
	switch s {
	case Starting:
		return "starting"
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Event is a change of a service's State.
type Event struct {
	// State is the state the service is now in.
	State State
	// At is when the change happened.
	At time.Time
	// Check is the check that caused the change, as Check.String gives it:
	// for Healthy the last check to pass, for Unhealthy the check that
	// failed (or had not passed by the start timeout). It is empty for
	// Starting and when there are no checks.
	Check string
	// Reason says why, in words for an operator.
	Reason string
	// NotRunning says the failure that made the service Unhealthy was an
	// exec check's program exiting 7 (OCF's "not running").
	NotRunning bool
}

// Monitor probes a service's checks and turns their results into changes of
// the service's State, for the supervisor to act on: restart in place, count
// restarts in a window, resign. It only watches; it never acts.
type Monitor struct {
	checks       []Check
	startTimeout time.Duration
	running      atomic.Bool
}

// NewMonitor returns a Monitor of checks, with WithDefaults applied to each
// (validate them first: a check that cannot work only ever fails). The
// service has startTimeout (DefaultStartTimeout if zero or less) from the
// start of Run to first become healthy.
func NewMonitor(checks []Check, startTimeout time.Duration) *Monitor {
	cs := make([]Check, len(checks))
	for i, c := range checks {
		cs[i] = c.WithDefaults()
	}
	if startTimeout <= 0 {
		startTimeout = DefaultStartTimeout
	}
	return &Monitor{checks: cs, startTimeout: startTimeout}
}

// Run probes every check, each on its own Interval and never two probes of
// one check at once, until ctx ends. It sends each change of state on the
// returned channel, Starting first:
//
//   - Starting becomes Healthy once every check has passed Rise times in a
//     row, or Unhealthy when the start timeout passes first.
//   - Healthy becomes Unhealthy when any check fails Fall times in a row.
//   - Unhealthy becomes Healthy again once every check passes Rise times in
//     a row; probing never stops.
//
// With no checks at all, Run sends Starting and Healthy at once and then
// nothing: the service's process is the only check, and the supervisor
// watches that itself.
//
// The channel is unbuffered and no event is dropped: while one waits to be
// received, results wait too, so the receiver should keep receiving. When
// ctx ends, Run stops its probes (killing any exec probe's processes),
// waits for them and closes the channel. Run may be called once per Monitor;
// a second call panics.
func (m *Monitor) Run(ctx context.Context) <-chan Event {
	if !m.running.CompareAndSwap(false, true) {
		panic("health: Monitor.Run called twice")
	}
	out := make(chan Event)
	go m.run(ctx, out)
	return out
}

// outcome is one probe's result, from a check's goroutine to run's.
type outcome struct {
	check int
	res   Result
}

func (m *Monitor) run(ctx context.Context, out chan<- Event) {
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	// On return: stop the probes, wait for them, then close out, so nothing
	// of this Monitor is left running once the receiver sees the close.
	defer close(out)
	defer wg.Wait()
	defer cancel()

	emit := func(e Event) bool {
		select {
		case out <- e:
			return true
		case <-ctx.Done():
			return false
		}
	}
	sm := newMachine(m.checks, m.startTimeout)
	if !emit(Event{State: Starting, At: time.Now(), Reason: "started"}) {
		return
	}
	if len(m.checks) == 0 {
		if emit(Event{State: Healthy, At: time.Now(), Reason: "no health checks"}) {
			<-ctx.Done()
		}
		return
	}

	results := make(chan outcome)
	for i, c := range m.checks {
		wg.Go(func() { probeLoop(ctx, i, c, results) })
	}
	startTimer := time.NewTimer(m.startTimeout)
	defer startTimer.Stop()
	startTimeout := startTimer.C
	for {
		var e Event
		var changed bool
		select {
		case <-ctx.Done():
			return
		case o := <-results:
			e, changed = sm.observe(o.check, o.res, time.Now())
		case now := <-startTimeout:
			e, changed = sm.expire(now)
		}
		if sm.state != Starting {
			startTimeout = nil
		}
		if changed && !emit(e) {
			return
		}
	}
}

// probeLoop probes c until ctx ends, sending each result to results. A
// probe starts Interval after the previous one started, or at once if that
// one took longer.
func probeLoop(ctx context.Context, i int, c Check, results chan<- outcome) {
	tick := time.NewTicker(c.Interval)
	defer tick.Stop()
	for {
		res := c.Probe(ctx)
		if ctx.Err() != nil {
			return // a probe cut short by the end of Run says nothing
		}
		select {
		case results <- outcome{check: i, res: res}:
		case <-ctx.Done():
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// machine is a Monitor's state, apart from its goroutines and clock so that
// what changes the state can be read (and tested) on its own.
type machine struct {
	checks       []Check
	startTimeout time.Duration
	state        State
	per          []checkState
}

// checkState is one check's hysteresis: it passes after Rise successes in a
// row and fails after Fall failures in a row, and a streak shorter than that
// leaves it as it was.
type checkState struct {
	passing  bool
	succ     int    // successes in a row
	fail     int    // failures in a row
	lastFail Result // the latest failed probe, for the reason of an event
}

func newMachine(checks []Check, startTimeout time.Duration) *machine {
	return &machine{checks: checks, startTimeout: startTimeout, per: make([]checkState, len(checks))}
}

// observe records check i's probe result, and returns the event it causes,
// if any.
func (m *machine) observe(i int, r Result, now time.Time) (Event, bool) {
	c, cs := m.checks[i], &m.per[i]
	if r.OK {
		cs.succ, cs.fail = cs.succ+1, 0
		if cs.succ >= c.Rise {
			cs.passing = true
		}
	} else {
		cs.succ, cs.fail = 0, cs.fail+1
		cs.lastFail = r
		if cs.fail >= c.Fall {
			cs.passing = false
		}
	}

	switch {
	case m.state != Healthy && m.allPassing():
		m.state = Healthy
		return Event{
			State:  Healthy,
			At:     now,
			Check:  c.String(),
			Reason: fmt.Sprintf("all checks passing; this one passed %d times in a row", cs.succ),
		}, true
	case m.state == Healthy && !cs.passing:
		// Only the check just observed can have stopped passing.
		m.state = Unhealthy
		return Event{
			State:      Unhealthy,
			At:         now,
			Check:      c.String(),
			Reason:     fmt.Sprintf("failed %d times in a row: %v", cs.fail, r.Err),
			NotRunning: r.NotRunning,
		}, true
	}
	return Event{}, false
}

// expire is the start timeout passing: a service still Starting becomes
// Unhealthy, blaming the first check that is not passing.
func (m *machine) expire(now time.Time) (Event, bool) {
	if m.state != Starting {
		return Event{}, false
	}
	m.state = Unhealthy
	e := Event{State: Unhealthy, At: now}
	for i, cs := range m.per {
		if cs.passing {
			continue
		}
		c := m.checks[i]
		e.Check = c.String()
		switch {
		case cs.fail > 0:
			e.Reason = fmt.Sprintf("did not become healthy within %v: last error: %v", m.startTimeout, cs.lastFail.Err)
			e.NotRunning = cs.lastFail.NotRunning
		case cs.lastFail.Err != nil:
			e.Reason = fmt.Sprintf("did not become healthy within %v: %d of %d successes in a row; last error: %v",
				m.startTimeout, cs.succ, c.Rise, cs.lastFail.Err)
		case cs.succ > 0:
			e.Reason = fmt.Sprintf("did not become healthy within %v: %d of %d successes in a row", m.startTimeout, cs.succ, c.Rise)
		default:
			e.Reason = fmt.Sprintf("did not become healthy within %v: no probe finished", m.startTimeout)
		}
		break
	}
	return e, true
}

func (m *machine) allPassing() bool {
	for _, cs := range m.per {
		if !cs.passing {
			return false
		}
	}
	return true
}
