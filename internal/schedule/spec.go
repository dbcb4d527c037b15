package schedule

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tandemhq/tandem"
)

// Overlap says what a nominal time does when a run of the schedule is still
// live (see Plan).
type Overlap string

// Overlap policies.
const (
	OverlapAllow     Overlap = "allow"      // fire anyway: runs may overlap
	OverlapSkip      Overlap = "skip"       // skip the time (the default)
	OverlapBufferOne Overlap = "buffer_one" // keep one time, start it when no run is live; skip further ones
	OverlapBufferAll Overlap = "buffer_all" // keep every time (up to MaxBuffered), start them in order
	OverlapReplace   Overlap = "replace"    // kill the live run(s), then fire
)

// Catchup says which nominal times missed by more than the grace period
// still fire (see Plan).
type Catchup string

// Catch-up policies.
const (
	CatchupAll    Catchup = "all"    // every missed time in the window fires (at most CatchupMax, the latest ones)
	CatchupLatest Catchup = "latest" // only the most recent missed time fires (the default)
	CatchupNone   Catchup = "none"   // no missed time fires
)

// Limits and defaults of a Spec.
const (
	MaxNameLen   = 256
	MaxCron      = 32
	MaxNoteLen   = 1024
	MinEvery     = time.Second
	MaxBuffered  = 100 // buffer_all keeps at most this many times; later ones are skipped (overlap)
	DefaultGrace = time.Minute

	DefaultHistoryFired   = 100
	DefaultHistorySkipped = 100
)

// DefaultAnchor is the anchor of Every when the spec gives none: a fixed
// instant, so every server computes the same grid of times.
var DefaultAnchor = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Spec is a schedule as users write it: the body of POST /v1/schedules.
// Exactly one of Cron and Every is set. What the schedule starts (a job spec
// or a workflow) is added alongside by the API layer.
type Spec struct {
	Name string `json:"name,omitempty"`

	// Cron holds one or more five-field cron expressions (or @daily-style
	// descriptors), read in TZ; the schedule's times are their union.
	Cron []string `json:"cron,omitempty"`
	// Every is a fixed interval in absolute time (no DST effect), on the grid
	// Anchor + k*Every. At least one second.
	Every tandem.Duration `json:"every,omitzero"`
	// Anchor fixes the Every grid; DefaultAnchor when zero. Ignored for Cron.
	Anchor time.Time `json:"anchor,omitzero"`
	// TZ is an IANA zone name for Cron ("Europe/Paris"); UTC when empty.
	TZ string `json:"tz,omitempty"`

	// Start and End bound the nominal times, both inclusive; zero is open.
	Start time.Time `json:"start,omitzero"`
	End   time.Time `json:"end,omitzero"`

	// Jitter delays each fire by a deterministic amount in [0, Jitter):
	// derived from the schedule ID and the nominal time, identical on every
	// server, and always less than the distance to the next nominal time.
	Jitter tandem.Duration `json:"jitter,omitzero"`

	Overlap       Overlap         `json:"overlap,omitempty"`       // OverlapSkip when empty
	Catchup       Catchup         `json:"catchup,omitempty"`       // CatchupLatest when empty
	CatchupWindow tandem.Duration `json:"catchup_window,omitzero"` // 0: no window
	CatchupMax    int             `json:"catchup_max,omitempty"`   // with CatchupAll; 0: no cap

	HistoryLimits HistoryLimits `json:"history_limits,omitzero"`

	Paused    bool   `json:"paused,omitempty"`
	PauseNote string `json:"pause_note,omitempty"`
}

// HistoryLimits are how many fire records of each kind the controller keeps
// (the oldest are pruned; the cursor, not the records, prevents re-fires).
// Zero means the default.
type HistoryLimits struct {
	Fired   int `json:"fired,omitempty"`
	Skipped int `json:"skipped,omitempty"`
}

// WithDefaults returns s with every defaulted field filled in.
func (s Spec) WithDefaults() Spec {
	if s.TZ == "" {
		s.TZ = "UTC"
	}
	if s.Every != 0 && s.Anchor.IsZero() {
		s.Anchor = DefaultAnchor
	}
	if s.Overlap == "" {
		s.Overlap = OverlapSkip
	}
	if s.Catchup == "" {
		s.Catchup = CatchupLatest
	}
	if s.HistoryLimits.Fired == 0 {
		s.HistoryLimits.Fired = DefaultHistoryFired
	}
	if s.HistoryLimits.Skipped == 0 {
		s.HistoryLimits.Skipped = DefaultHistorySkipped
	}
	return s
}

// Validate reports every problem with s in one *tandem.Error with code
// tandem.EINVALID (an HTTP 400), or nil.
func (s *Spec) Validate() error {
	_, err := NewTimetable(*s)
	return err
}

// problems collects validation messages.
type problems []string

func (p *problems) addf(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return tandem.Errorf(tandem.EINVALID, "invalid schedule: %s", strings.Join(p, "; "))
}

func checkSpecFields(s Spec, p *problems) {
	if len(s.Name) > MaxNameLen {
		p.addf("name is %d bytes, more than the limit of %d", len(s.Name), MaxNameLen)
	}
	if !utf8.ValidString(s.Name) {
		p.addf("name is not valid UTF-8")
	}
	switch {
	case len(s.Cron) == 0 && s.Every == 0:
		p.addf("give either cron (one or more expressions) or every (an interval such as \"5m\")")
	case len(s.Cron) > 0 && s.Every != 0:
		p.addf("give either cron or every, not both")
	}
	if len(s.Cron) > MaxCron {
		p.addf("cron has %d expressions, more than the limit of %d", len(s.Cron), MaxCron)
	}
	if s.Every != 0 && s.Every.Std() < MinEvery {
		p.addf("every %s is shorter than the minimum of %s", s.Every.Std(), MinEvery)
	}
	if !s.Anchor.IsZero() && len(s.Cron) > 0 {
		p.addf("anchor applies to every, not to cron")
	}
	if s.TZ != "" && s.Every != 0 && len(s.Cron) == 0 && s.TZ != "UTC" {
		// Harmless, but a user who sets it probably expects wall-clock
		// behaviour that every does not have.
		p.addf("tz applies to cron, not to every (every is an interval in absolute time)")
	}
	if !s.Start.IsZero() && !s.End.IsZero() && s.End.Before(s.Start) {
		p.addf("end %s is before start %s", s.End.Format(time.RFC3339), s.Start.Format(time.RFC3339))
	}
	if s.Jitter < 0 {
		p.addf("jitter %s is negative", s.Jitter.Std())
	}
	switch s.Overlap {
	case "", OverlapAllow, OverlapSkip, OverlapBufferOne, OverlapBufferAll, OverlapReplace:
	default:
		p.addf("overlap %q is not one of allow, skip, buffer_one, buffer_all, replace", s.Overlap)
	}
	switch s.Catchup {
	case "", CatchupAll, CatchupLatest, CatchupNone:
	default:
		p.addf("catchup %q is not one of all, latest, none", s.Catchup)
	}
	if s.CatchupWindow < 0 {
		p.addf("catchup_window %s is negative", s.CatchupWindow.Std())
	}
	if s.CatchupMax < 0 {
		p.addf("catchup_max %d is negative", s.CatchupMax)
	}
	if s.CatchupMax > 0 && s.Catchup != CatchupAll {
		p.addf("catchup_max applies to catchup \"all\" only")
	}
	if s.HistoryLimits.Fired < 0 || s.HistoryLimits.Skipped < 0 {
		p.addf("history_limits must not be negative")
	}
	if len(s.PauseNote) > MaxNoteLen {
		p.addf("pause_note is %d bytes, more than the limit of %d", len(s.PauseNote), MaxNoteLen)
	}
}
