package schedule

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

var propertyZones = []string{
	"UTC", "America/New_York", "America/Santiago", "Australia/Lord_Howe", "Africa/Cairo",
	"Asia/Beirut", "Europe/Dublin", "Europe/London", "Asia/Kathmandu", "Pacific/Chatham",
	"Antarctica/Troll", "America/St_Johns", "Pacific/Apia", "Asia/Tokyo", "America/Havana",
}

func randomField(r *rand.Rand, lo, hi int, steps []int, bias []int) string {
	pick := func() int {
		if len(bias) > 0 && r.IntN(2) == 0 {
			return bias[r.IntN(len(bias))]
		}
		return lo + r.IntN(hi-lo+1)
	}
	switch r.IntN(7) {
	case 0, 1:
		return "*"
	case 2:
		return fmt.Sprintf("*/%d", steps[r.IntN(len(steps))])
	case 3:
		return fmt.Sprint(pick())
	case 4:
		a, b := pick(), pick()
		return fmt.Sprintf("%d,%d", a, b)
	case 5:
		a, b := pick(), pick()
		return fmt.Sprintf("%d-%d", min(a, b), max(a, b))
	default:
		a, b := pick(), pick()
		return fmt.Sprintf("%d-%d/%d", min(a, b), max(a, b), steps[r.IntN(len(steps))])
	}
}

func randomExpr(r *rand.Rand) string {
	if r.IntN(12) == 0 {
		return []string{"@hourly", "@daily", "@weekly", "@monthly", "@yearly"}[r.IntN(5)]
	}
	minute := randomField(r, 0, 59, []int{5, 7, 10, 15, 20, 30}, []int{0, 15, 30, 45, 59})
	hour := randomField(r, 0, 23, []int{2, 3, 4, 6}, []int{0, 1, 2, 3, 22, 23})
	dom, month, dow := "*", "*", "*"
	if r.IntN(4) == 0 {
		dom = randomField(r, 1, 31, []int{2, 3, 10}, []int{1, 7, 15, 28, 29, 30, 31})
	}
	if r.IntN(5) == 0 {
		month = randomField(r, 1, 12, []int{2, 3}, nil)
	}
	if r.IntN(4) == 0 {
		dow = randomField(r, 0, 6, []int{2}, []int{0, 6})
	}
	return strings.Join([]string{minute, hour, dom, month, dow}, " ")
}

// wallMatches is the oracle's own reading of an expression at wall time w.
func wallMatches(e *expr, w int64) bool {
	t := time.Unix(w, 0).UTC()
	return e.minute&(1<<t.Minute()) != 0 && e.hour&(1<<t.Hour()) != 0 && e.dayMatches(t.Month(), t.Day(), t.Weekday())
}

// oracle computes the nominal times in (from, to] by brute force: it walks
// real time minute by minute (all modern offsets and transitions are whole
// minutes), reads the wall clock, and applies the rules of doc.go literally.
func oracle(exprs []*expr, loc *time.Location, from, to time.Time) []time.Time {
	set := map[int64]bool{}
	seen := map[int64]bool{} // wall minutes that have occurred
	prevWall := int64(math.MinInt64)
	for i := from.Add(-6*time.Hour).Unix() / 60 * 60; i <= to.Unix(); i += 60 {
		w := i + offsetAt(loc, i)
		for _, e := range exprs {
			if !e.hourly && prevWall != math.MinInt64 && w-prevWall > 60 {
				for g := prevWall + 60; g < w; g += 60 {
					if wallMatches(e, g) {
						set[i] = true // skipped wall time: fires at the first instant after the gap
						break
					}
				}
			}
			if wallMatches(e, w) && (e.hourly || !seen[w]) {
				set[i] = true
			}
		}
		seen[w] = true
		prevWall = w
	}
	var out []time.Time
	for i := range set {
		if i > from.Unix() && i <= to.Unix() {
			out = append(out, time.Unix(i, 0))
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out
}

// TestNextMatchesOracle is the property test of nominal times: over random
// expressions, zones and windows (half of them centred on a zone
// transition), List agrees with the brute-force oracle, times strictly
// increase, Next from any instant between two times returns the second, and
// Prev walks the same sequence backwards.
func TestNextMatchesOracle(t *testing.T) {
	r := testRand(t)
	cases := 300
	if testing.Short() {
		cases = 60
	}
	lo, hi := time.Date(1996, 1, 1, 0, 0, 0, 0, time.UTC).Unix(), time.Date(2045, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for n := 0; n < cases; n++ {
		zone := propertyZones[r.IntN(len(propertyZones))]
		crons := []string{randomExpr(r)}
		if r.IntN(4) == 0 {
			crons = append(crons, randomExpr(r))
		}
		tt, err := NewTimetable(Spec{Cron: crons, TZ: zone})
		if err != nil {
			if !strings.Contains(err.Error(), "never fires") {
				t.Fatalf("%s %q: %v", zone, crons, err)
			}
			continue
		}
		center := time.Unix(lo+r.Int64N(hi-lo), 0)
		if r.IntN(2) == 0 {
			if seg := segmentAt(tt.loc, center.Unix()); seg.end != math.MaxInt64 {
				center = time.Unix(seg.end, 0)
			}
		}
		from := center.Add(-30*time.Hour - time.Duration(r.IntN(3600))*time.Second)
		to := center.Add(30 * time.Hour)
		got := tt.List(from, to, 0)
		want := oracle(tt.exprs, tt.loc, from, to)
		if !slices.EqualFunc(got, want, time.Time.Equal) {
			t.Fatalf("%s %q in (%s, %s]:\ngot  %s\nwant %s", zone, crons, from.In(tt.loc).Format(wallFmt), to.In(tt.loc).Format(wallFmt),
				fmtTimes(got, tt.loc), fmtTimes(want, tt.loc))
		}
		// A longer chain: strictly increasing, no time skipped by Next from
		// an instant in between, and Prev inverts Next.
		at := from
		for k := 0; k < 30; k++ {
			nx, ok := tt.Next(at)
			if !ok {
				t.Fatalf("%s %q: Next(%s) found nothing", zone, crons, at)
			}
			if !nx.After(at) {
				t.Fatalf("%s %q: Next(%s) = %s, not after", zone, crons, at, nx)
			}
			if k > 0 {
				mid := at.Add(time.Duration(r.Int64N(int64(nx.Sub(at)))))
				if again, _ := tt.Next(mid); !again.Equal(nx) {
					t.Fatalf("%s %q: Next(%s) = %s, want %s", zone, crons, mid, again, nx)
				}
				if pv, ok := tt.Prev(nx); !ok || !pv.Equal(at) {
					t.Fatalf("%s %q: Prev(%s) = %s %v, want %s", zone, crons, nx, pv, ok, at)
				}
			}
			at = nx
		}
	}
}

// testRand returns a generator seeded from SCHEDULE_TEST_SEED if set, else
// from the clock; the seed is logged so a failure can be replayed.
func testRand(t *testing.T) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SCHEDULE_TEST_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SCHEDULE_TEST_SEED=%q: %v", v, err)
		}
		seed = n
	}
	t.Logf("SCHEDULE_TEST_SEED=%d", seed)
	return rand.New(rand.NewPCG(seed, seed))
}

func fmtTimes(ts []time.Time, loc *time.Location) string {
	var s []string
	for _, t := range ts {
		s = append(s, t.In(loc).Format(wallFmt))
	}
	return "[" + strings.Join(s, ", ") + "]"
}

func TestEvery(t *testing.T) {
	anchor := time.Date(2026, 1, 1, 0, 0, 7, 500_000_000, time.UTC)
	tests := []struct {
		name  string
		spec  Spec
		after time.Time
		want  time.Time
	}{
		{"default anchor grid", Spec{Every: tandem.Duration(7 * time.Minute)},
			time.Date(2000, 1, 1, 0, 10, 0, 0, time.UTC), time.Date(2000, 1, 1, 0, 14, 0, 0, time.UTC)},
		{"strictly after a grid point", Spec{Every: tandem.Duration(7 * time.Minute)},
			time.Date(2000, 1, 1, 0, 14, 0, 0, time.UTC), time.Date(2000, 1, 1, 0, 21, 0, 0, time.UTC)},
		{"before the anchor", Spec{Every: tandem.Duration(time.Hour), Anchor: anchor},
			time.Date(2025, 12, 31, 22, 30, 0, 0, time.UTC), time.Date(2025, 12, 31, 23, 0, 7, 500_000_000, time.UTC)},
		{"far from the anchor, sub-second every", Spec{Every: tandem.Duration(1500 * time.Millisecond), Anchor: anchor},
			time.Date(2300, 6, 1, 0, 0, 0, 0, time.UTC), time.Date(2300, 6, 1, 0, 0, 1, 500_000_000, time.UTC)},
		{"start", Spec{Every: tandem.Duration(time.Hour), Start: time.Date(2026, 5, 1, 10, 30, 0, 0, time.UTC)},
			time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 1, 11, 0, 0, 0, time.UTC)},
		{"start on the grid is included", Spec{Every: tandem.Duration(time.Hour), Start: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)},
			time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)},
		{"cron start is included", Spec{Cron: []string{"0 10 * * *"}, Start: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)},
			time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)},
		{"cron Feb 29 across the 2100 gap", Spec{Cron: []string{"0 0 29 2 *"}},
			time.Date(2096, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2104, 2, 29, 0, 0, 0, 0, time.UTC)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tt := mustTimetable(t, tc.spec)
			got, ok := tt.Next(tc.after)
			if !ok || !got.Equal(tc.want) {
				t.Errorf("Next(%s) = %s %v, want %s", tc.after, got, ok, tc.want)
			}
			if pv, ok := tt.Prev(got); ok && !pv.Before(got) {
				t.Errorf("Prev(%s) = %s, not before", got, pv)
			}
		})
	}
}

func TestEnd(t *testing.T) {
	end := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tt := mustTimetable(t, Spec{Every: tandem.Duration(time.Hour), End: end})
	if got, ok := tt.Next(end.Add(-time.Minute)); !ok || !got.Equal(end) {
		t.Errorf("Next before end = %s %v, want %s (end is inclusive)", got, ok, end)
	}
	if got, ok := tt.Next(end); ok {
		t.Errorf("Next(end) = %s, want none", got)
	}
	if got := tt.List(end.Add(-3*time.Hour), end.Add(3*time.Hour), 0); len(got) != 3 {
		t.Errorf("List around end: got %d times, want 3", len(got))
	}
	if got := tt.List(end.Add(-10*time.Hour), end, 2); len(got) != 2 {
		t.Errorf("List with max 2: got %d times", len(got))
	}
}

func TestPeriod(t *testing.T) {
	tests := []struct {
		cron []string
		want time.Duration
	}{
		{[]string{"*/15 * * * *"}, 15 * time.Minute},
		{[]string{"0 9 * * *"}, 24 * time.Hour},
		{[]string{"0 9 * * 1-5"}, 24 * time.Hour},
		{[]string{"0 9 * * 1"}, 7 * 24 * time.Hour},
		{[]string{"0 9 * * *", "5 9 * * *"}, 5 * time.Minute},
		{[]string{"0 23 * * *", "30 0 * * *"}, 90 * time.Minute},
		{[]string{"0 0 1 * *"}, 28 * 24 * time.Hour},
		{[]string{"0 0 29 2 *"}, 1461 * 24 * time.Hour}, // four years; 2096 to 2104 is longer
		{[]string{"0,50 10 * * *"}, 50 * time.Minute},
	}
	for _, tc := range tests {
		tt := mustTimetable(t, Spec{Cron: tc.cron})
		if got := tt.Period(); got != tc.want {
			t.Errorf("period of %q: got %s, want %s", tc.cron, got, tc.want)
		}
	}
}

// TestAnalyzeBruteForce checks the per-kind-of-year calendar scan against a
// plain walk of every day of the 400-year cycle.
func TestAnalyzeBruteForce(t *testing.T) {
	r := testRand(t)
	fixed := [][]string{
		{"0 0 29 2 *"}, {"59 23 31 12 *", "0 0 1 1 *"}, {"0 12 13 * 5"}, {"0 0 30 2 *", "@weekly"}, {"*/5 * 31 */2 *"},
	}
	for n := 0; n < len(fixed)+10; n++ {
		var srcs []string
		if n < len(fixed) {
			srcs = fixed[n]
		} else {
			for range 1 + r.IntN(3) {
				srcs = append(srcs, randomExpr(r))
			}
		}
		var exprs []*expr
		for _, src := range srcs {
			e, err := parseExpr(src)
			if err != nil {
				t.Fatal(err)
			}
			exprs = append(exprs, e)
		}
		got := analyze(exprs)

		want := calendar{fires: make([]bool, len(exprs)), minGap: -1}
		gap := func(g int64) {
			if want.minGap < 0 || g < want.minGap {
				want.minGap = g
			}
		}
		firstDay, lastDay := -1, -1
		unions := map[int][]int{} // times of day of a set of expressions
		var firstTod, lastTod []int
		d := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
		for day := 0; day < 146097; day, d = day+1, d.Add(24*time.Hour) {
			set := 0
			for i, e := range exprs {
				if e.dayMatches(d.Month(), d.Day(), d.Weekday()) {
					want.fires[i] = true
					set |= 1 << i
				}
			}
			if set == 0 {
				continue
			}
			tod, ok := unions[set]
			if !ok {
				for i, e := range exprs {
					if set&(1<<i) != 0 {
						tod = append(tod, e.timesOfDay...)
					}
				}
				slices.Sort(tod)
				tod = slices.Compact(tod)
				unions[set] = tod
			}
			for i := 1; i < len(tod); i++ {
				gap(int64(tod[i] - tod[i-1]))
			}
			if lastDay >= 0 {
				gap(int64(day-lastDay)*1440 + int64(tod[0]-lastTod[len(lastTod)-1]))
				want.maxDayGap = max(want.maxDayGap, int64(day-lastDay))
			} else {
				firstDay, firstTod = day, tod
			}
			lastDay, lastTod = day, tod
		}
		if firstDay >= 0 { // into the next cycle
			gap(int64(firstDay+146097-lastDay)*1440 + int64(firstTod[0]-lastTod[len(lastTod)-1]))
			want.maxDayGap = max(want.maxDayGap, int64(firstDay+146097-lastDay))
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("analyze(%s): got %+v, want %+v", exprSources(exprs), got, want)
		}
	}
}

func exprSources(exprs []*expr) string {
	var s []string
	for _, e := range exprs {
		s = append(s, strconv.Quote(e.src))
	}
	return strings.Join(s, ", ")
}
