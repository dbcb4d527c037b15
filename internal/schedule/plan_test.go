package schedule

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// at is 2026-03-01 h:m:s UTC.
func at(h, m, s int) time.Time { return time.Date(2026, 3, 1, h, m, s, 0, time.UTC) }

func hm(t time.Time) string { return t.UTC().Format("15:04") }

// brief renders a decision as "10:01 fire", "10:01-10:04 skip catchup",
// "09:58 fire released".
func brief(d Decision) string {
	s := hm(d.Nominal)
	if !d.Through.Equal(d.Nominal) {
		s += "-" + hm(d.Through)
	}
	s += " " + string(d.Outcome)
	if d.Reason != "" {
		s += " " + string(d.Reason)
	}
	if d.Released {
		s += " released"
	}
	return s
}

func briefs(ds []Decision) []string {
	out := []string{}
	for _, d := range ds {
		out = append(out, brief(d))
	}
	return out
}

func minutely(mod func(*Spec)) Spec {
	s := Spec{Every: tandem.Duration(time.Minute)}
	if mod != nil {
		mod(&s)
	}
	return s
}

func TestPlan(t *testing.T) {
	allow := func(s *Spec) { s.Overlap = OverlapAllow }
	tests := []struct {
		name       string
		spec       Spec
		in         PlanInput // Timetable and ID are filled in
		want       []string
		cursor     time.Time
		wake       time.Time
		done, more bool
	}{
		{name: "nothing due yet",
			spec: minutely(nil), in: PlanInput{Cursor: at(10, 0, 0), Now: at(10, 0, 59)},
			want: []string{}, cursor: at(10, 0, 0), wake: at(10, 1, 0)},
		{name: "due exactly at its time fires",
			spec: minutely(nil), in: PlanInput{Cursor: at(10, 0, 0), Now: at(10, 1, 0)},
			want: []string{"10:01 fire"}, cursor: at(10, 1, 0), wake: at(10, 2, 0)},
		{name: "late within grace fires (a failover is not a misfire)",
			spec: minutely(func(s *Spec) { s.Catchup = CatchupNone; s.Overlap = OverlapAllow }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 3, 30), Grace: 5 * time.Minute},
			want: []string{"10:01 fire", "10:02 fire", "10:03 fire"}, cursor: at(10, 3, 0), wake: at(10, 4, 0)},
		{name: "default grace is one minute",
			spec: minutely(func(s *Spec) { s.Catchup = CatchupNone }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 1, 59)},
			want: []string{"10:01 fire"}, cursor: at(10, 1, 0), wake: at(10, 2, 0)},
		{name: "paused: one skip range, with the note",
			spec: minutely(func(s *Spec) { s.Paused = true; s.PauseNote = "db migration" }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 5, 30)},
			want: []string{"10:01-10:05 skip paused"}, cursor: at(10, 5, 0), wake: at(10, 6, 0)},
		{name: "paused keeps buffered times",
			spec: minutely(func(s *Spec) { s.Paused = true; s.Overlap = OverlapBufferAll }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 1, 30), Buffered: []time.Time{at(9, 58, 0)}},
			want: []string{"10:01 skip paused"}, cursor: at(10, 1, 0), wake: at(10, 2, 0)},

		// Downtime 10:00-10:10:30, grace 5m: 10:01-10:05 are missed (late
		// >= 5m), 10:06-10:10 on time.
		{name: "catchup latest",
			spec:   minutely(func(s *Spec) { s.Catchup = CatchupLatest; allow(s) }),
			in:     PlanInput{Cursor: at(10, 0, 0), Now: at(10, 10, 30), Grace: 5 * time.Minute},
			want:   []string{"10:01-10:04 skip catchup", "10:05 fire", "10:06 fire", "10:07 fire", "10:08 fire", "10:09 fire", "10:10 fire"},
			cursor: at(10, 10, 0), wake: at(10, 11, 0)},
		{name: "catchup none",
			spec:   minutely(func(s *Spec) { s.Catchup = CatchupNone; allow(s) }),
			in:     PlanInput{Cursor: at(10, 0, 0), Now: at(10, 10, 30), Grace: 5 * time.Minute},
			want:   []string{"10:01-10:05 skip catchup", "10:06 fire", "10:07 fire", "10:08 fire", "10:09 fire", "10:10 fire"},
			cursor: at(10, 10, 0), wake: at(10, 11, 0)},
		{name: "catchup all",
			spec: minutely(func(s *Spec) { s.Catchup = CatchupAll; allow(s) }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 4, 30), Grace: 2 * time.Minute},
			want: []string{"10:01 fire", "10:02 fire", "10:03 fire", "10:04 fire"}, cursor: at(10, 4, 0), wake: at(10, 5, 0)},
		{name: "catchup all with a cap keeps the latest",
			spec:   minutely(func(s *Spec) { s.Catchup = CatchupAll; s.CatchupMax = 2; allow(s) }),
			in:     PlanInput{Cursor: at(10, 0, 0), Now: at(10, 7, 30), Grace: 2 * time.Minute},
			want:   []string{"10:01-10:03 skip catchup", "10:04 fire", "10:05 fire", "10:06 fire", "10:07 fire"},
			cursor: at(10, 7, 0), wake: at(10, 8, 0)},
		{name: "catchup cap larger than the backlog",
			spec: minutely(func(s *Spec) { s.Catchup = CatchupAll; s.CatchupMax = 50; allow(s) }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 3, 30), Grace: time.Minute},
			want: []string{"10:01 fire", "10:02 fire", "10:03 fire"}, cursor: at(10, 3, 0), wake: at(10, 4, 0)},
		{name: "catchup window skips the oldest",
			spec: minutely(func(s *Spec) {
				s.Catchup = CatchupAll
				s.CatchupWindow = tandem.Duration(7 * time.Minute)
				allow(s)
			}),
			in:     PlanInput{Cursor: at(10, 0, 0), Now: at(10, 10, 30), Grace: 5 * time.Minute},
			want:   []string{"10:01-10:03 skip catchup", "10:04 fire", "10:05 fire", "10:06 fire", "10:07 fire", "10:08 fire", "10:09 fire", "10:10 fire"},
			cursor: at(10, 10, 0), wake: at(10, 11, 0)},
		{name: "catchup window then latest: two ranges",
			spec: minutely(func(s *Spec) {
				s.Catchup = CatchupLatest
				s.CatchupWindow = tandem.Duration(7 * time.Minute)
				allow(s)
			}),
			in:     PlanInput{Cursor: at(10, 0, 0), Now: at(10, 10, 30), Grace: 5 * time.Minute},
			want:   []string{"10:01-10:03 skip catchup", "10:04 skip catchup", "10:05 fire", "10:06 fire", "10:07 fire", "10:08 fire", "10:09 fire", "10:10 fire"},
			cursor: at(10, 10, 0), wake: at(10, 11, 0)},
		{name: "a window shorter than the grace never skips on-time times",
			spec: minutely(func(s *Spec) {
				s.Catchup = CatchupAll
				s.CatchupWindow = tandem.Duration(time.Minute)
				allow(s)
			}),
			in:     PlanInput{Cursor: at(10, 0, 0), Now: at(10, 10, 30), Grace: 5 * time.Minute},
			want:   []string{"10:01-10:05 skip catchup", "10:06 fire", "10:07 fire", "10:08 fire", "10:09 fire", "10:10 fire"},
			cursor: at(10, 10, 0), wake: at(10, 11, 0)},
		{name: "whole-cluster downtime with overlap skip: one catch-up run",
			spec: minutely(nil),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(12, 0, 30), Grace: time.Minute},
			want: []string{"10:01-11:58 skip catchup", "11:59 fire", "12:00 skip overlap"}, cursor: at(12, 0, 0), wake: at(12, 1, 0)},

		// Overlap.
		{name: "skip: a live run skips",
			spec: minutely(nil), in: PlanInput{Cursor: at(10, 0, 0), Now: at(10, 2, 30), Live: 1, Grace: 5 * time.Minute},
			want: []string{"10:01-10:02 skip overlap"}, cursor: at(10, 2, 0), wake: at(10, 3, 0)},
		{name: "skip: the first fire makes a run live",
			spec: minutely(nil), in: PlanInput{Cursor: at(10, 0, 0), Now: at(10, 3, 30), Grace: 5 * time.Minute},
			want: []string{"10:01 fire", "10:02-10:03 skip overlap"}, cursor: at(10, 3, 0), wake: at(10, 4, 0)},
		{name: "allow: fires over a live run",
			spec: minutely(allow), in: PlanInput{Cursor: at(10, 0, 0), Now: at(10, 1, 30), Live: 3},
			want: []string{"10:01 fire"}, cursor: at(10, 1, 0), wake: at(10, 2, 0)},
		{name: "buffer_one: one buffered, later ones skipped",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapBufferOne }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 3, 30), Live: 1, Grace: 5 * time.Minute},
			want: []string{"10:01 buffer", "10:02-10:03 skip overlap"}, cursor: at(10, 3, 0), wake: at(10, 4, 0)},
		{name: "buffer_one: already one buffered",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapBufferOne }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 1, 30), Live: 1, Buffered: []time.Time{at(9, 59, 0)}},
			want: []string{"10:01 skip overlap"}, cursor: at(10, 1, 0), wake: at(10, 2, 0)},
		{name: "buffer_all: all buffered",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapBufferAll }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 3, 30), Live: 1, Grace: 5 * time.Minute},
			want: []string{"10:01 buffer", "10:02 buffer", "10:03 buffer"}, cursor: at(10, 3, 0), wake: at(10, 4, 0)},
		{name: "buffer_all: full buffer skips",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapBufferAll }),
			in: PlanInput{Cursor: at(10, 0, 0), Now: at(10, 2, 30), Live: 1, Grace: 5 * time.Minute,
				Buffered: slices.Repeat([]time.Time{at(9, 0, 0)}, MaxBuffered-1)},
			want: []string{"10:01 buffer", "10:02 skip overlap"}, cursor: at(10, 2, 0), wake: at(10, 3, 0)},
		{name: "replace: kills the live run",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapReplace }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 2, 30), Live: 2, Grace: 5 * time.Minute},
			want: []string{"10:01 replace", "10:02 replace"}, cursor: at(10, 2, 0), wake: at(10, 3, 0)},
		{name: "replace: nothing live fires",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapReplace }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 1, 30)},
			want: []string{"10:01 fire"}, cursor: at(10, 1, 0), wake: at(10, 2, 0)},

		// Buffered times.
		{name: "release the oldest buffered time when no run is live",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapBufferAll }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 0, 30), Buffered: []time.Time{at(9, 58, 0), at(9, 59, 0)}},
			want: []string{"09:58 fire released"}, cursor: at(10, 0, 0), wake: at(10, 1, 0)},
		{name: "release, then a due time queues behind the buffer",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapBufferAll }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 1, 30), Buffered: []time.Time{at(9, 58, 0), at(9, 59, 0)}},
			want: []string{"09:58 fire released", "10:01 buffer"}, cursor: at(10, 1, 0), wake: at(10, 2, 0)},
		{name: "no release while a run is live",
			spec: minutely(func(s *Spec) { s.Overlap = OverlapBufferOne }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 0, 30), Live: 1, Buffered: []time.Time{at(9, 58, 0)}},
			want: []string{}, cursor: at(10, 0, 0), wake: at(10, 1, 0)},
		{name: "allow releases everything buffered",
			spec: minutely(allow),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 0, 30), Live: 1, Buffered: []time.Time{at(9, 58, 0), at(9, 59, 0)}},
			want: []string{"09:58 fire released", "09:59 fire released"}, cursor: at(10, 0, 0), wake: at(10, 1, 0)},

		// Limit, end, jitter.
		{name: "limit cuts the plan; More",
			spec: minutely(func(s *Spec) { s.Catchup = CatchupAll; allow(s) }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 10, 30), Grace: time.Minute, Limit: 3},
			want: []string{"10:01 fire", "10:02 fire", "10:03 fire"}, cursor: at(10, 3, 0), more: true},
		{name: "limit counts a skip range once",
			spec: minutely(nil),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(12, 0, 30), Grace: time.Minute, Limit: 2},
			want: []string{"10:01-11:58 skip catchup", "11:59 fire"}, cursor: at(11, 59, 0), more: true},
		{name: "end reached: Done",
			spec: minutely(func(s *Spec) { s.End = at(10, 2, 0); allow(s) }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 5, 30), Grace: 10 * time.Minute},
			want: []string{"10:01 fire", "10:02 fire"}, cursor: at(10, 2, 0), done: true},
		{name: "start in the future",
			spec: minutely(func(s *Spec) { s.Start = at(11, 0, 0) }),
			in:   PlanInput{Cursor: at(10, 0, 0), Now: at(10, 30, 0)},
			want: []string{}, cursor: at(10, 0, 0), wake: at(11, 0, 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.Timetable = mustTimetable(t, tc.spec)
			in.ID = "s"
			res := Plan(in)
			if got := briefs(res.Decisions); !slices.Equal(got, tc.want) {
				t.Errorf("decisions:\ngot  %q\nwant %q", got, tc.want)
			}
			if !res.Cursor.Equal(tc.cursor) {
				t.Errorf("cursor: got %s, want %s", hm(res.Cursor), hm(tc.cursor))
			}
			if !res.Wake.Equal(tc.wake) || res.Done != tc.done || res.More != tc.more {
				t.Errorf("got wake %s done %v more %v, want wake %s done %v more %v",
					res.Wake, res.Done, res.More, tc.wake, tc.done, tc.more)
			}
			checkPlan(t, in, res)
		})
	}
}

func TestPlanJitterNeverEarly(t *testing.T) {
	tt := mustTimetable(t, Spec{Every: tandem.Duration(time.Minute), Jitter: tandem.Duration(50 * time.Second)})
	for i := 0; i < 50; i++ {
		nt := at(10, i, 0)
		due := tt.Due("j", nt)
		res := Plan(PlanInput{Timetable: tt, ID: "j", Cursor: nt.Add(-time.Minute), Now: due.Add(-time.Nanosecond)})
		if len(res.Decisions) != 0 {
			t.Fatalf("%s decided at %s, before its due time %s", hm(nt), due.Add(-1), due)
		}
		if !res.Wake.Equal(due) {
			t.Fatalf("wake: got %s, want the due time %s", res.Wake, due)
		}
		res = Plan(PlanInput{Timetable: tt, ID: "j", Cursor: nt.Add(-time.Minute), Now: due})
		if got := briefs(res.Decisions); !slices.Equal(got, []string{hm(nt) + " fire"}) || res.Decisions[0].Late != 0 {
			t.Fatalf("at the due time: got %q late %s, want one fire, 0 late", got, res.Decisions[0].Late)
		}
	}
}

func TestPlanDeterministic(t *testing.T) {
	tt := mustTimetable(t, Spec{Cron: []string{"*/7 * * * *"}, Jitter: tandem.Duration(time.Minute), Overlap: OverlapBufferAll, Catchup: CatchupAll, CatchupMax: 4})
	in := PlanInput{Timetable: tt, ID: "x", Cursor: at(9, 0, 0), Now: at(12, 0, 0), Live: 1, Buffered: []time.Time{at(8, 0, 0)}}
	a, b := Plan(in), Plan(in)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("two plans of the same input differ:\n%+v\n%+v", a, b)
	}
}

// checkPlan asserts the contract of Plan on any input: the decisions after
// the releases cover exactly the nominal times in (in.Cursor, res.Cursor],
// each once and in order; each is due by Now; on-time times are never
// skipped for catch-up; released times come from the buffer, oldest first;
// and without More, no due time is left undecided.
func checkPlan(t *testing.T, in PlanInput, res Result) {
	t.Helper()
	tt := in.Timetable
	grace := in.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	i := 0
	for ; i < len(res.Decisions) && res.Decisions[i].Released; i++ {
		if i >= len(in.Buffered) || !res.Decisions[i].Nominal.Equal(in.Buffered[i]) || res.Decisions[i].Outcome != Fire {
			t.Fatalf("release %d: %s, want the buffered times fired in order %v", i, brief(res.Decisions[i]), in.Buffered)
		}
	}
	if tt.Spec().Paused && i > 0 {
		t.Fatalf("released %d buffered times while paused", i)
	}
	cur := in.Cursor
	for _, d := range res.Decisions[i:] {
		if d.Released {
			t.Fatalf("release after the due times: %s", brief(d))
		}
		n, ok := tt.Next(cur)
		if !ok || !n.Equal(d.Nominal) {
			t.Fatalf("decision %s: want it to start at the next nominal time %s", brief(d), n)
		}
		if d.Outcome != Skip && !d.Through.Equal(d.Nominal) {
			t.Fatalf("decision %s: only skips cover ranges", brief(d))
		}
		if d.Outcome == Skip && d.Reason == "" || d.Outcome != Skip && d.Reason != "" {
			t.Fatalf("decision %s: a reason goes with skips only", brief(d))
		}
		for _, nt := range tt.List(cur, d.Through, 0) {
			due := tt.Due(in.ID, nt)
			if due.After(in.Now) {
				t.Fatalf("decision %s covers %s, due %s, after now %s", brief(d), nt, due, in.Now)
			}
			if d.Reason == ReasonCatchup && in.Now.Sub(due) < grace {
				t.Fatalf("decision %s skips %s for catch-up, only %s late (grace %s)", brief(d), nt, in.Now.Sub(due), grace)
			}
		}
		cur = d.Through
	}
	if !cur.Equal(res.Cursor) {
		t.Fatalf("cursor %s, want the last decided time %s", res.Cursor, cur)
	}
	if n, ok := tt.Next(res.Cursor); ok && !res.More && !tt.Due(in.ID, n).After(in.Now) {
		t.Fatalf("%s is due by %s but undecided", n, in.Now)
	}
	if res.More && in.Limit > 0 && len(res.Decisions) != in.Limit {
		t.Fatalf("More with %d decisions, limit %d", len(res.Decisions), in.Limit)
	}
}

// randomSpec returns a random spec and its period, the unit random
// durations are scaled by (so a 1s schedule is not asked to plan a year).
func randomSpec(t *testing.T, r *rand.Rand) (Spec, time.Duration) {
	s := Spec{}
	if r.IntN(2) == 0 {
		s.Every = tandem.Duration([]time.Duration{time.Second, 7 * time.Second, time.Minute, 90 * time.Minute}[r.IntN(4)])
	} else {
		s.Cron = []string{[]string{"* * * * *", "*/5 * * * *", "0 * * * *", "30 2 * * *", "0,1,2 9 * * 1-5"}[r.IntN(5)]}
		s.TZ = []string{"UTC", "America/New_York", "Australia/Lord_Howe"}[r.IntN(3)]
	}
	unit := mustTimetable(t, s).Period()
	s.Overlap = []Overlap{OverlapAllow, OverlapSkip, OverlapBufferOne, OverlapBufferAll, OverlapReplace}[r.IntN(5)]
	s.Catchup = []Catchup{CatchupAll, CatchupLatest, CatchupNone}[r.IntN(3)]
	if s.Catchup == CatchupAll && r.IntN(2) == 0 {
		s.CatchupMax = 1 + r.IntN(5)
	}
	if r.IntN(2) == 0 {
		s.CatchupWindow = tandem.Duration(r.Int64N(int64(100 * unit)))
	}
	if r.IntN(2) == 0 {
		s.Jitter = tandem.Duration(time.Duration(r.Int64N(int64(time.Second))))
	}
	s.Paused = r.IntN(8) == 0
	return s, unit
}

// TestPlanProperties checks the contract of Plan on random inputs.
func TestPlanProperties(t *testing.T) {
	r := testRand(t)
	base := time.Date(2025, 11, 1, 0, 0, 0, 0, time.UTC)
	for n := 0; n < 400; n++ {
		s, unit := randomSpec(t, r)
		tt := mustTimetable(t, s)
		cursor := base.Add(time.Duration(r.Int64N(int64(72 * time.Hour))))
		in := PlanInput{
			Timetable: tt, ID: fmt.Sprint("s", n), Cursor: cursor,
			Now:   cursor.Add(time.Duration(r.Int64N(int64([]time.Duration{unit, 10 * unit, 200 * unit}[r.IntN(3)])))),
			Grace: time.Duration(r.Int64N(int64(20 * unit))), Live: r.IntN(3), Limit: r.IntN(6),
		}
		for range r.IntN(3) {
			in.Buffered = append(in.Buffered, cursor.Add(-time.Duration(10-len(in.Buffered))*time.Second))
		}
		res := Plan(in)
		checkPlan(t, in, res)
	}
}

// TestExactlyOnceAcrossFailovers simulates a controller over days of a
// schedule's life with failovers at every step: an owner computes a plan
// and is deposed before committing it (its decisions are lost, as a fenced
// transaction would lose them), clocks jump, the whole cluster goes down
// for hours, runs end. At the end every nominal time has exactly one final
// record (fired or skipped), a fired time has exactly one run, and no time
// was fired before it was due.
func TestExactlyOnceAcrossFailovers(t *testing.T) {
	r := testRand(t)
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	for round := 0; round < rounds; round++ {
		s, unit := randomSpec(t, r)
		s.Paused = false
		tt := mustTimetable(t, s)
		type record struct {
			outcome Outcome
			runs    int
		}
		created := time.Date(2025, 3, 8, 0, 0, 0, 0, time.UTC)
		var (
			cursor   = created
			now      = created
			records  = map[int64]*record{}
			buffered []time.Time
			live     []time.Time // end times of live runs
		)
		for step := 0; step < 300; step++ {
			switch r.IntN(10) {
			case 0:
				now = now.Add(time.Duration(r.Int64N(int64(200 * unit)))) // the whole cluster was down
			default:
				now = now.Add(time.Duration(r.Int64N(int64(3 * unit))))
			}
			live = slices.DeleteFunc(live, func(end time.Time) bool { return !end.After(now) })
			paused := r.IntN(10) == 0
			spec := s
			spec.Paused = paused
			ptt := tt
			if paused {
				ptt = mustTimetable(t, spec)
			}
			res := Plan(PlanInput{Timetable: ptt, ID: "sim", Cursor: cursor, Now: now, Grace: 2 * unit,
				Live: len(live), Buffered: buffered, Limit: r.IntN(5)})
			if r.IntN(4) == 0 {
				continue // deposed before the commit: nothing of this plan happened
			}
			for _, d := range res.Decisions {
				if d.Released {
					rec := records[d.Nominal.UnixNano()]
					if rec == nil || rec.outcome != Buffer || !buffered[0].Equal(d.Nominal) {
						t.Fatalf("released %s, which is not the oldest buffered time", d.Nominal)
					}
					rec.outcome, rec.runs = Fire, rec.runs+1
					buffered = buffered[1:]
					live = append(live, now.Add(time.Duration(r.Int64N(int64(5*unit)))))
					continue
				}
				for _, nt := range tt.List(cursor, d.Through, 0) {
					if records[nt.UnixNano()] != nil {
						t.Fatalf("%s decided twice", nt)
					}
					if tt.Due("sim", nt).After(now) {
						t.Fatalf("%s decided before its due time", nt)
					}
					rec := &record{outcome: d.Outcome}
					switch d.Outcome {
					case Fire, Replace:
						rec.runs = 1
						if d.Outcome == Replace {
							live = live[:0]
						}
						live = append(live, now.Add(time.Duration(r.Int64N(int64(5*unit)))))
					case Buffer:
						buffered = append(buffered, nt)
					}
					records[nt.UnixNano()] = rec
					cursor = nt
				}
			}
			if !cursor.Equal(res.Cursor) {
				t.Fatalf("cursor %s, result says %s", cursor, res.Cursor)
			}
		}
		all := tt.List(created, cursor, 0)
		if len(all) != len(records) {
			t.Fatalf("%d nominal times up to the cursor, %d records", len(all), len(records))
		}
		for _, nt := range all {
			rec := records[nt.UnixNano()]
			switch {
			case rec == nil:
				t.Fatalf("%s has no record (missed)", nt)
			case rec.outcome == Buffer:
				if !slices.Contains(buffered, nt) {
					t.Fatalf("%s buffered but not in the buffer", nt)
				}
			case (rec.outcome == Fire || rec.outcome == Replace) != (rec.runs == 1), rec.runs > 1:
				t.Fatalf("%s: outcome %s with %d runs", nt, rec.outcome, rec.runs)
			}
		}
	}
}
