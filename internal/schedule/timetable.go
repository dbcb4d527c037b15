package schedule

import (
	"crypto/sha256"
	"encoding/binary"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"
)

// Timetable is a validated Spec compiled for computing: its nominal times,
// their jitter, and the policies Plan applies. It is immutable and safe for
// concurrent use.
type Timetable struct {
	spec   Spec // with defaults
	loc    *time.Location
	exprs  []*expr
	every  time.Duration
	anchor time.Time
	// period is the shortest wall-clock distance between two nominal times
	// (Every, or computed from the cron fields over the 400-year Gregorian
	// cycle). DST can make a real distance shorter; jitter is clamped to the
	// real distance anyway.
	period time.Duration
	// horizon bounds a search for the next cron time: the longest run of
	// days without a matching day, plus margin for zone shifts.
	horizon int64 // seconds
}

// NewTimetable validates s and compiles it. Its error is a *tandem.Error
// with code tandem.EINVALID listing every problem found.
func NewTimetable(s Spec) (*Timetable, error) {
	var p problems
	checkSpecFields(s, &p)
	s = s.WithDefaults()
	tt := &Timetable{spec: s}
	loc, err := LoadLocation(s.TZ)
	if err != nil {
		p.addf("%s", err)
	}
	tt.loc = loc
	for _, c := range s.Cron {
		e, err := parseExpr(c)
		if err != nil {
			p.addf("%s", err)
			continue
		}
		tt.exprs = append(tt.exprs, e)
	}
	if len(p) > 0 {
		return nil, p.err()
	}
	if s.Every != 0 {
		tt.every = s.Every.Std()
		tt.anchor = s.Anchor
		tt.period = tt.every
	} else {
		cal := analyzeCached(tt.exprs)
		for i, e := range tt.exprs {
			if !cal.fires[i] {
				p.addf("cron %q never fires: no date matches its day-of-month, month and day-of-week fields", e.src)
			}
		}
		if len(p) > 0 {
			return nil, p.err()
		}
		tt.period = time.Duration(cal.minGap) * time.Minute
		tt.horizon = (cal.maxDayGap + 3) * secondsPerDay
	}
	if j := s.Jitter.Std(); j > 0 && j >= tt.period {
		p.addf("jitter %s is not shorter than the schedule's period %s", j, tt.period)
	}
	if len(p) == 0 && (!s.Start.IsZero() || !s.End.IsZero()) {
		if _, ok := tt.Next(s.Start.Add(-1)); !ok {
			p.addf("the schedule never fires between start and end")
		}
	}
	if len(p) > 0 {
		return nil, p.err()
	}
	return tt, nil
}

// Spec returns the schedule's spec, with defaults filled in.
func (tt *Timetable) Spec() Spec { return tt.spec }

// Location returns the time zone cron expressions are read in.
func (tt *Timetable) Location() *time.Location { return tt.loc }

// Period returns the shortest wall-clock distance between two nominal times.
func (tt *Timetable) Period() time.Duration { return tt.period }

// Next returns the first nominal time strictly after after, or false if
// there is none (the schedule has ended). It is a pure function of the spec
// and after: every server returns the same answer, and successive calls
// Next(Next(t)) are strictly increasing. Cron times are whole minutes; the
// result is in the schedule's zone.
func (tt *Timetable) Next(after time.Time) (time.Time, bool) {
	s := tt.spec
	if !s.Start.IsZero() && after.Before(s.Start) {
		after = s.Start.Add(-1)
	}
	var t time.Time
	if tt.every != 0 {
		t = tt.nextEvery(after)
	} else {
		lo := after.Unix() + 1 // the first whole second after after
		best, found := int64(0), false
		for _, e := range tt.exprs {
			limit := best + 1
			if !found {
				limit = lo + tt.horizon
			}
			if c, ok := e.next(tt.loc, lo, limit); ok && (!found || c < best) {
				best, found = c, true
			}
		}
		if !found {
			return time.Time{}, false
		}
		t = time.Unix(best, 0)
	}
	if !s.End.IsZero() && t.After(s.End) {
		return time.Time{}, false
	}
	return t.In(tt.loc), true
}

var billion = big.NewInt(1e9)

// nextEvery returns Anchor + k*Every for the least k with a result after
// after. Arithmetic is exact: big integers far from the anchor, so no
// overflow however far it is.
func (tt *Timetable) nextEvery(after time.Time) time.Time {
	if d := after.Sub(tt.anchor); d > -1<<62 && d < 1<<62 {
		// Within ±146 years of the anchor int64 nanoseconds cannot overflow.
		k := floorDiv(int64(d), int64(tt.every)) + 1
		return tt.anchor.Add(time.Duration(k * int64(tt.every)))
	}
	d := big.NewInt(after.Unix() - tt.anchor.Unix())
	d.Mul(d, billion)
	d.Add(d, big.NewInt(int64(after.Nanosecond()-tt.anchor.Nanosecond())))
	k := d.Div(d, big.NewInt(int64(tt.every))) // Euclidean: floor for a positive divisor
	k.Add(k, big.NewInt(1))
	off := k.Mul(k, big.NewInt(int64(tt.every)))
	sec, ns := new(big.Int).DivMod(off, billion, new(big.Int))
	return time.Unix(tt.anchor.Unix()+sec.Int64(), int64(tt.anchor.Nanosecond())+ns.Int64())
}

// Prev returns the last nominal time strictly before before, or false.
func (tt *Timetable) Prev(before time.Time) (time.Time, bool) {
	if e := tt.spec.End; !e.IsZero() && before.After(e) {
		before = e.Add(1)
	}
	lowest := before.Add(-time.Duration(tt.horizon) * time.Second)
	if tt.every != 0 {
		lowest = before.Add(-2 * tt.every)
	}
	if s := tt.spec.Start; !s.IsZero() && s.After(lowest) {
		lowest = s
	}
	span := max(tt.period, time.Minute)
	for {
		from, final := before.Add(-span), false
		if !from.After(lowest) {
			from, final = lowest.Add(-1), true
		}
		var last time.Time
		found := false
		for t := from; ; {
			n, ok := tt.Next(t)
			if !ok || !n.Before(before) {
				break
			}
			last, found, t = n, true, n
		}
		if found {
			return last, true
		}
		if final {
			return time.Time{}, false
		}
		span *= 2
	}
}

// List returns the nominal times in (from, to], at most max of them (max <= 0
// means no cap), in increasing order.
func (tt *Timetable) List(from, to time.Time, max int) []time.Time {
	var out []time.Time
	for t := from; max <= 0 || len(out) < max; {
		n, ok := tt.Next(t)
		if !ok || n.After(to) {
			break
		}
		out = append(out, n)
		t = n
	}
	return out
}

// Jitter returns the delay of the fire of nominal time t of the schedule
// with the given ID: the first 8 bytes of SHA-256(id "\n" t in RFC 3339 UTC
// with nanoseconds), big-endian, modulo min(Spec.Jitter, Next(t)-t) in
// nanoseconds. It is zero without jitter, identical on every server, and
// always less than the distance to the next nominal time, so fires keep the
// order of their nominal times.
func (tt *Timetable) Jitter(id string, t time.Time) time.Duration {
	bound := tt.spec.Jitter.Std()
	if bound <= 0 {
		return 0
	}
	if n, ok := tt.Next(t); ok {
		bound = min(bound, n.Sub(t))
	}
	h := sha256.Sum256([]byte(id + "\n" + t.UTC().Format(time.RFC3339Nano)))
	return time.Duration(binary.BigEndian.Uint64(h[:8]) % uint64(bound))
}

// Due returns when nominal time t may fire: t plus its jitter. Nothing fires
// before its due time by the local clock.
func (tt *Timetable) Due(id string, t time.Time) time.Time {
	return t.Add(tt.Jitter(id, t))
}

// calendar is what analyze learns from a 400-year Gregorian cycle, after
// which dates and weekdays repeat exactly.
type calendar struct {
	fires     []bool // per expression: matches at least one date
	minGap    int64  // minutes between the two closest wall-clock times of the union
	maxDayGap int64  // days, the longest distance between consecutive matching days
}

// analyses memoises analyze by expression list: the scan costs about a
// millisecond and a controller compiles the same specs again and again.
var analyses struct {
	sync.Mutex
	m map[string]calendar
}

func analyzeCached(exprs []*expr) calendar {
	var key strings.Builder
	for _, e := range exprs {
		key.WriteString(e.src)
		key.WriteByte('\n')
	}
	analyses.Lock()
	cal, ok := analyses.m[key.String()]
	analyses.Unlock()
	if ok {
		return cal
	}
	cal = analyze(exprs)
	analyses.Lock()
	if analyses.m == nil || len(analyses.m) >= 4096 {
		analyses.m = make(map[string]calendar)
	}
	analyses.m[key.String()] = cal
	analyses.Unlock()
	return cal
}

// dayUnion is the union of the times of day of the expressions matching a
// day.
type dayUnion struct {
	times    []int // minutes after midnight, increasing
	innerGap int64 // minutes between its two closest times; -1 if one time
}

// yearScan is what one kind of year (the weekday of January 1, leap or not)
// holds; the 400-year cycle is a sequence of 14 kinds.
type yearScan struct {
	fires         uint64 // expressions matching some day
	first, last   int64  // matching days of the year, -1 if none
	firstU, lastU dayUnion
	minGap        int64 // minutes, between times within the year; -1 if none
	maxDayGap     int64 // days, between matching days within the year
}

// analyze scans the 400-year Gregorian cycle, one scan per kind of year.
func analyze(exprs []*expr) calendar {
	unions := map[uint64]dayUnion{}
	unionOf := func(set uint64) dayUnion {
		if u, ok := unions[set]; ok {
			return u
		}
		var ts []int
		for i, e := range exprs {
			if set&(1<<i) != 0 {
				ts = append(ts, e.timesOfDay...)
			}
		}
		slices.Sort(ts)
		ts = slices.Compact(ts)
		u := dayUnion{times: ts, innerGap: -1}
		for i := 1; i < len(ts); i++ {
			if g := int64(ts[i] - ts[i-1]); u.innerGap < 0 || g < u.innerGap {
				u.innerGap = g
			}
		}
		unions[set] = u
		return u
	}
	// crossGap is the distance in minutes from the last time of a day to
	// the first time of a day days later.
	crossGap := func(days int64, from, to dayUnion) int64 {
		return days*1440 + int64(to.times[0]-from.times[len(from.times)-1])
	}
	minGap := func(a, b int64) int64 {
		if a < 0 || (b >= 0 && b < a) {
			return b
		}
		return a
	}
	scanYear := func(wd time.Weekday, leap bool) yearScan {
		y := 2001 // a common year
		if leap {
			y = 2004
		}
		ys := yearScan{first: -1, last: -1, minGap: -1}
		day := int64(0)
		for m := time.January; m <= time.December; m++ {
			for d := 1; d <= daysIn(y, m); d, day, wd = d+1, day+1, (wd+1)%7 {
				var set uint64
				for i, e := range exprs {
					if e.dayMatches(m, d, wd) {
						set |= 1 << i
					}
				}
				if set == 0 {
					continue
				}
				ys.fires |= set
				u := unionOf(set)
				ys.minGap = minGap(ys.minGap, u.innerGap)
				if ys.last >= 0 {
					ys.minGap = minGap(ys.minGap, crossGap(day-ys.last, ys.lastU, u))
					ys.maxDayGap = max(ys.maxDayGap, day-ys.last)
				} else {
					ys.first, ys.firstU = day, u
				}
				ys.last, ys.lastU = day, u
			}
		}
		return ys
	}

	cal := calendar{fires: make([]bool, len(exprs)), minGap: -1}
	var (
		kinds         [14]*yearScan
		start         int64 // first day of the year in the cycle
		first, last   int64 = -1, -1
		firstU, lastU dayUnion
		wd            = time.Saturday // 2000-01-01
	)
	for y := 2000; y < 2400; y++ {
		leap := daysIn(y, time.February) == 29
		k := int(wd) * 2
		if leap {
			k++
		}
		if kinds[k] == nil {
			ys := scanYear(wd, leap)
			kinds[k] = &ys
		}
		ys := kinds[k]
		length := int64(365)
		if leap {
			length = 366
		}
		if ys.first >= 0 {
			for i := range exprs {
				cal.fires[i] = cal.fires[i] || ys.fires&(1<<i) != 0
			}
			cal.minGap = minGap(cal.minGap, ys.minGap)
			cal.maxDayGap = max(cal.maxDayGap, ys.maxDayGap)
			if last >= 0 {
				cal.minGap = minGap(cal.minGap, crossGap(start+ys.first-last, lastU, ys.firstU))
				cal.maxDayGap = max(cal.maxDayGap, start+ys.first-last)
			} else {
				first, firstU = start+ys.first, ys.firstU
			}
			last, lastU = start+ys.last, ys.lastU
		}
		start += length
		wd = (wd + time.Weekday(length%7)) % 7
	}
	if first >= 0 {
		// Wrap around the cycle: start is now its length, 146097 days
		// (20871 weeks), and the next cycle begins as this one did.
		cal.minGap = minGap(cal.minGap, crossGap(first+start-last, lastU, firstU))
		cal.maxDayGap = max(cal.maxDayGap, first+start-last)
	}
	return cal
}

func daysIn(y int, m time.Month) int {
	switch m {
	case time.February:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case time.April, time.June, time.September, time.November:
		return 30
	}
	return 31
}
