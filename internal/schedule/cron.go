package schedule

import (
	"fmt"
	"math"
	"math/bits"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// parser accepts the standard five fields (minute hour day-of-month month
// day-of-week) and the descriptors @yearly, @annually, @monthly, @weekly,
// @daily, @midnight and @hourly. No seconds field: a sixth field is ambiguous
// (Quartz puts seconds first, others a year last) and sub-minute schedules are
// what Every is for.
var parser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// starBit is robfig/cron's marker for a field written as "*" or "?".
const starBit = 1 << 63

const (
	secondsPerDay = 86400
	allHours      = 1<<24 - 1
)

// expr is one parsed cron expression, reduced to bit masks. Its nominal times
// are computed here, in wall-clock terms, not by robfig/cron's Next.
type expr struct {
	src                      string
	minute, hour, dom, month uint64 // without starBit
	dow                      uint64
	domStar, dowStar         bool
	hourly                   bool  // the hour field matches all 24 hours
	timesOfDay               []int // minutes after midnight, increasing
}

// parseExpr parses one cron expression. Errors quote the expression and say
// what is wrong with it.
func parseExpr(s string) (*expr, error) {
	src := strings.TrimSpace(s)
	switch {
	case src == "":
		return nil, fmt.Errorf("cron expression is empty")
	case strings.HasPrefix(src, "TZ=") || strings.HasPrefix(src, "CRON_TZ="):
		return nil, fmt.Errorf("cron %q: a time zone prefix is not allowed here: set the tz field", s)
	case strings.HasPrefix(src, "@every"):
		return nil, fmt.Errorf("cron %q: @every is not a cron expression: set the every field", s)
	}
	sch, err := parser.Parse(src)
	if err != nil {
		reason := err.Error()
		if strings.Contains(reason, "fields") {
			reason += " (want 5: minute hour day-of-month month day-of-week; no seconds field)"
		}
		return nil, fmt.Errorf("cron %q is malformed: %s", s, reason)
	}
	spec, ok := sch.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("cron %q is not a calendar expression", s)
	}
	if spec.Second&^starBit != 1 {
		return nil, fmt.Errorf("cron %q: seconds are not supported", s)
	}
	e := &expr{
		src:     src,
		minute:  spec.Minute &^ starBit,
		hour:    spec.Hour &^ starBit,
		dom:     spec.Dom &^ starBit,
		month:   spec.Month &^ starBit,
		dow:     spec.Dow &^ starBit,
		domStar: spec.Dom&starBit != 0,
		dowStar: spec.Dow&starBit != 0,
	}
	e.hourly = e.hour&allHours == allHours
	for h := 0; h < 24; h++ {
		if e.hour&(1<<h) == 0 {
			continue
		}
		for m := 0; m < 60; m++ {
			if e.minute&(1<<m) != 0 {
				e.timesOfDay = append(e.timesOfDay, h*60+m)
			}
		}
	}
	return e, nil
}

// dayMatches applies cron's day rule (as robfig/cron and Vixie cron do): when
// either day field is "*", both must match; otherwise either may.
func (e *expr) dayMatches(month time.Month, day int, wd time.Weekday) bool {
	if e.month&(1<<uint(month)) == 0 {
		return false
	}
	domOK := e.dom&(1<<uint(day)) != 0
	dowOK := e.dow&(1<<uint(wd)) != 0
	if e.domStar || e.dowStar {
		return domOK && dowOK
	}
	return domOK || dowOK
}

// nextBit returns the lowest set bit of mask at or above i.
func nextBit(mask uint64, i int) (int, bool) {
	if i >= 64 {
		return 0, false
	}
	m := mask &^ (1<<uint(i) - 1)
	if m == 0 {
		return 0, false
	}
	return bits.TrailingZeros64(m), true
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// nextWall returns the first wall-clock time w in [lo, hi) that the
// expression matches. Wall-clock times are "local seconds": the Unix seconds
// of the civil date and time read as if in UTC, so calendar arithmetic has no
// DST in it.
func (e *expr) nextWall(lo, hi int64) (int64, bool) {
	w := -floorDiv(-lo, 60) * 60 // round up to a whole minute
	for w < hi {
		t := time.Unix(w, 0).UTC()
		y, mo, d := t.Date()
		if e.month&(1<<uint(mo)) == 0 {
			w = time.Date(y, mo+1, 1, 0, 0, 0, 0, time.UTC).Unix()
			continue
		}
		if e.dayMatches(mo, d, t.Weekday()) {
			day := w - floorDiv(w, secondsPerDay)*secondsPerDay // seconds into the day
			h0, m0 := int(day/3600), int(day%3600/60)
			for h, ok := nextBit(e.hour, h0); ok; h, ok = nextBit(e.hour, h+1) {
				start := 0
				if h == h0 {
					start = m0
				}
				if m, ok := nextBit(e.minute, start); ok {
					if c := w - day + int64(h*3600+m*60); c < hi {
						return c, true
					}
					return 0, false
				}
			}
		}
		w = time.Date(y, mo, d+1, 0, 0, 0, 0, time.UTC).Unix()
	}
	return 0, false
}

// next returns the first nominal instant (Unix seconds) at or after lo and
// before limit, by the DST rules of doc.go:
//
//   - a wall time that exists once fires at that instant;
//   - a wall time skipped by a forward shift: a fixed-hour expression fires
//     once at the first instant after the gap; an hourly one does not fire;
//   - a wall time repeated by a backward shift: a fixed-hour expression fires
//     at the first occurrence only; an hourly one fires at both.
func (e *expr) next(loc *time.Location, lo, limit int64) (int64, bool) {
	seg := segmentAt(loc, lo)
	for {
		wlo := max(lo, seg.start) + seg.off
		if seg.start != math.MinInt64 && !e.hourly {
			prev := segmentAt(loc, seg.start-1)
			switch {
			case prev.off < seg.off && seg.start >= lo:
				// Wall times [start+prev.off, start+off) never happen: they
				// fire once, at the first instant after the gap.
				if _, ok := e.nextWall(seg.start+prev.off, seg.start+seg.off); ok {
					return seg.start, true
				}
			case prev.off > seg.off:
				// Wall times [start+off, start+prev.off) happened in the
				// previous segment: they already fired there.
				wlo = max(wlo, seg.start+prev.off)
			}
		}
		end := min(seg.end, limit)
		if w, ok := e.nextWall(wlo, end+seg.off); ok {
			return w - seg.off, true
		}
		if end >= limit {
			return 0, false
		}
		seg = segmentAt(loc, seg.end)
	}
}
