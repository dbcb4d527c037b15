package schedule

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

const wallFmt = "2006-01-02 15:04 -07:00"

func mustTimetable(t *testing.T, s Spec) *Timetable {
	t.Helper()
	tt, err := NewTimetable(s)
	if err != nil {
		t.Fatalf("NewTimetable(%+v): %v", s, err)
	}
	return tt
}

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// wallTimes lists tt's nominal times in (from, to] as wall clock with offset.
func wallTimes(tt *Timetable, from, to time.Time) []string {
	var out []string
	for _, n := range tt.List(from, to, 1000) {
		out = append(out, n.In(tt.Location()).Format(wallFmt))
	}
	return out
}

// TestDST pins the DST rules of doc.go in four zones: a US zone, a
// southern-hemisphere zone with a midnight gap, a zone with midnight
// transitions on the other side of the world, and a 30-minute DST zone.
func TestDST(t *testing.T) {
	tests := []struct {
		name     string
		tz       string
		cron     []string
		from, to string // wall clock in tz, "2006-01-02 15:04"
		want     []string
	}{
		// America/New_York 2025: gap 2025-03-09 02:00-03:00 (EST->EDT),
		// overlap 2025-11-02 01:00-02:00 (EDT->EST).
		{"NY fixed time in the gap fires at the gap's end", "America/New_York", []string{"30 2 * * *"},
			"2025-03-08 00:00", "2025-03-11 00:00",
			[]string{"2025-03-08 02:30 -05:00", "2025-03-09 03:00 -04:00", "2025-03-10 02:30 -04:00"}},
		{"NY gap start", "America/New_York", []string{"0 2 * * *"},
			"2025-03-09 00:00", "2025-03-09 12:00",
			[]string{"2025-03-09 03:00 -04:00"}},
		{"NY a fixed hour of minutes in the gap fires once", "America/New_York", []string{"*/15 2 * * *"},
			"2025-03-09 00:00", "2025-03-10 00:00",
			[]string{"2025-03-09 03:00 -04:00"}},
		{"NY gap time and gap end time are one nominal time", "America/New_York", []string{"0 2 * * *", "0 3 * * *"},
			"2025-03-09 00:00", "2025-03-09 12:00",
			[]string{"2025-03-09 03:00 -04:00"}},
		{"NY hourly skips the gap", "America/New_York", []string{"0 * * * *"},
			"2025-03-09 00:00", "2025-03-09 04:00",
			[]string{"2025-03-09 01:00 -05:00", "2025-03-09 03:00 -04:00", "2025-03-09 04:00 -04:00"}},
		{"NY every 15 minutes across the gap", "America/New_York", []string{"*/15 * * * *"},
			"2025-03-09 01:30", "2025-03-09 03:30",
			[]string{"2025-03-09 01:45 -05:00", "2025-03-09 03:00 -04:00", "2025-03-09 03:15 -04:00", "2025-03-09 03:30 -04:00"}},
		{"NY @hourly is hourly", "America/New_York", []string{"@hourly"},
			"2025-03-09 00:30", "2025-03-09 03:30",
			[]string{"2025-03-09 01:00 -05:00", "2025-03-09 03:00 -04:00"}},
		{"NY fixed time in the overlap fires once, first occurrence", "America/New_York", []string{"30 1 * * *"},
			"2025-11-01 12:00", "2025-11-03 12:00",
			[]string{"2025-11-02 01:30 -04:00", "2025-11-03 01:30 -05:00"}},
		{"NY fixed hour of minutes in the overlap fires once each", "America/New_York", []string{"*/30 1 * * *"},
			"2025-11-02 00:00", "2025-11-02 12:00",
			[]string{"2025-11-02 01:00 -04:00", "2025-11-02 01:30 -04:00"}},
		{"NY last minute of the overlap", "America/New_York", []string{"59 1 * * *"},
			"2025-11-02 00:00", "2025-11-02 12:00",
			[]string{"2025-11-02 01:59 -04:00"}},
		{"NY hourly fires at both occurrences", "America/New_York", []string{"0 * * * *"},
			"2025-11-02 00:00", "2025-11-02 03:00",
			[]string{"2025-11-02 01:00 -04:00", "2025-11-02 01:00 -05:00", "2025-11-02 02:00 -05:00", "2025-11-02 03:00 -05:00"}},
		{"NY 0-23 is hourly too", "America/New_York", []string{"30 0-23 * * *"},
			"2025-11-02 00:00", "2025-11-02 02:00",
			[]string{"2025-11-02 00:30 -04:00", "2025-11-02 01:30 -04:00", "2025-11-02 01:30 -05:00"}},
		{"NY fixed-hour and hourly in one spec", "America/New_York", []string{"0 * * * *", "30 1 * * *"},
			"2025-11-02 00:30", "2025-11-02 02:00",
			[]string{"2025-11-02 01:00 -04:00", "2025-11-02 01:30 -04:00", "2025-11-02 01:00 -05:00", "2025-11-02 02:00 -05:00"}},

		// America/Santiago 2025: gap Sunday 2025-09-07 00:00-01:00 (-04->-03),
		// overlap Saturday 2025-04-05 23:00-24:00 (-03->-04).
		{"Santiago midnight in the gap fires at 01:00", "America/Santiago", []string{"0 0 * * *"},
			"2025-09-05 12:00", "2025-09-08 12:00",
			[]string{"2025-09-06 00:00 -04:00", "2025-09-07 01:00 -03:00", "2025-09-08 00:00 -03:00"}},
		{"Santiago @daily", "America/Santiago", []string{"@daily"},
			"2025-09-06 12:00", "2025-09-07 12:00",
			[]string{"2025-09-07 01:00 -03:00"}},
		{"Santiago 00:30 in the gap", "America/Santiago", []string{"30 0 * * *"},
			"2025-09-06 12:00", "2025-09-07 12:00",
			[]string{"2025-09-07 01:00 -03:00"}},
		{"Santiago weekly on the gap's Sunday keeps its day", "America/Santiago", []string{"0 0 * * 0"},
			"2025-09-01 00:00", "2025-09-15 00:00",
			[]string{"2025-09-07 01:00 -03:00", "2025-09-14 00:00 -03:00"}},
		{"Santiago hourly skips midnight", "America/Santiago", []string{"0 * * * *"},
			"2025-09-06 21:30", "2025-09-07 02:00",
			[]string{"2025-09-06 22:00 -04:00", "2025-09-06 23:00 -04:00", "2025-09-07 01:00 -03:00", "2025-09-07 02:00 -03:00"}},
		{"Santiago late evening in the overlap fires once", "America/Santiago", []string{"30 23 * * *"},
			"2025-04-05 12:00", "2025-04-06 23:59",
			[]string{"2025-04-05 23:30 -03:00", "2025-04-06 23:30 -04:00"}},
		{"Santiago hourly half-hours in the overlap", "America/Santiago", []string{"0,30 * * * *"},
			"2025-04-05 22:00", "2025-04-06 00:00",
			[]string{"2025-04-05 22:30 -03:00", "2025-04-05 23:00 -03:00", "2025-04-05 23:30 -03:00",
				"2025-04-05 23:00 -04:00", "2025-04-05 23:30 -04:00", "2025-04-06 00:00 -04:00"}},

		// Africa/Cairo 2025: gap Friday 2025-04-25 00:00-01:00, overlap
		// Thursday 2025-10-30 23:00-24:00.
		{"Cairo midnight gap", "Africa/Cairo", []string{"0 0 * * *"},
			"2025-04-24 12:00", "2025-04-25 12:00",
			[]string{"2025-04-25 01:00 +03:00"}},
		{"Cairo overlap fires once", "Africa/Cairo", []string{"30 23 * * *"},
			"2025-10-30 12:00", "2025-10-31 12:00",
			[]string{"2025-10-30 23:30 +03:00"}},

		// Australia/Lord_Howe 2025: gap 2025-10-05 02:00-02:30 (+10:30->+11),
		// overlap 2025-04-06 01:30-02:00 (+11->+10:30).
		{"Lord Howe fixed times in the half-hour gap", "Australia/Lord_Howe", []string{"0 2 * * *", "15 2 * * *", "30 2 * * *"},
			"2025-10-04 12:00", "2025-10-05 12:00",
			[]string{"2025-10-05 02:30 +11:00"}},
		{"Lord Howe hourly quarter-hours across the gap", "Australia/Lord_Howe", []string{"*/15 * * * *"},
			"2025-10-05 01:30", "2025-10-05 02:45",
			[]string{"2025-10-05 01:45 +10:30", "2025-10-05 02:30 +11:00", "2025-10-05 02:45 +11:00"}},
		{"Lord Howe fixed time in the half-hour overlap fires once", "Australia/Lord_Howe", []string{"45 1 * * *"},
			"2025-04-05 12:00", "2025-04-06 12:00",
			[]string{"2025-04-06 01:45 +11:00"}},
		{"Lord Howe hourly :45 fires twice, 30 minutes apart", "Australia/Lord_Howe", []string{"45 * * * *"},
			"2025-04-06 00:00", "2025-04-06 03:00",
			[]string{"2025-04-06 00:45 +11:00", "2025-04-06 01:45 +11:00", "2025-04-06 01:45 +10:30", "2025-04-06 02:45 +10:30"}},
		{"Lord Howe hourly :00 is not repeated", "Australia/Lord_Howe", []string{"0 * * * *"},
			"2025-04-06 00:30", "2025-04-06 02:00",
			[]string{"2025-04-06 01:00 +11:00", "2025-04-06 02:00 +10:30"}},

		// Pacific/Apia skipped all of 2011-12-30 (-10 -> +14).
		{"Apia's missing day: fixed times fire once at its end", "Pacific/Apia", []string{"0 9 * * *", "0 17 * * *"},
			"2011-12-29 12:00", "2011-12-31 12:00",
			[]string{"2011-12-29 17:00 -10:00", "2011-12-31 00:00 +14:00", "2011-12-31 09:00 +14:00"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tt := mustTimetable(t, Spec{Cron: tc.cron, TZ: tc.tz})
			loc := tt.Location()
			from, err := time.ParseInLocation("2006-01-02 15:04", tc.from, loc)
			if err != nil {
				t.Fatal(err)
			}
			to, err := time.ParseInLocation("2006-01-02 15:04", tc.to, loc)
			if err != nil {
				t.Fatal(err)
			}
			if got := wallTimes(tt, from, to); !slices.Equal(got, tc.want) {
				t.Errorf("times in (%s, %s]:\ngot  %q\nwant %q", tc.from, tc.to, got, tc.want)
			}
		})
	}
}

// TestEveryIgnoresDST: every is absolute time, so the wall clock jumps.
func TestEveryIgnoresDST(t *testing.T) {
	tt := mustTimetable(t, Spec{Every: tandem.Duration(30 * time.Minute)})
	ny := mustLoc(t, "America/New_York")
	from := time.Date(2025, 11, 2, 0, 15, 0, 0, ny)
	var got []string
	for _, n := range tt.List(from, from.Add(2*time.Hour), 0) {
		got = append(got, n.In(ny).Format(wallFmt))
	}
	want := []string{"2025-11-02 00:30 -04:00", "2025-11-02 01:00 -04:00", "2025-11-02 01:30 -04:00",
		"2025-11-02 01:00 -05:00"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestWhereRobfigIsWrong: robfig/cron v3.0.1's SpecSchedule.Next, given the
// same fields and zone, answers (observed) Santiago 2025-09-08 00:00 (the 7th
// is lost), New York 2025-03-10 02:30 (the 9th is lost) and New York
// 2025-11-02 01:30 twice (-04:00 and -05:00). These are the times we owe.
func TestWhereRobfigIsWrong(t *testing.T) {
	tests := []struct {
		tz, cron, after string
		want            []string
	}{
		{"America/Santiago", "0 0 * * *", "2025-09-06 12:00", []string{"2025-09-07 01:00 -03:00", "2025-09-08 00:00 -03:00"}},
		{"America/New_York", "30 2 * * *", "2025-03-08 12:00", []string{"2025-03-09 03:00 -04:00", "2025-03-10 02:30 -04:00"}},
		{"America/New_York", "30 1 * * *", "2025-11-01 12:00", []string{"2025-11-02 01:30 -04:00", "2025-11-03 01:30 -05:00"}},
		{"Australia/Lord_Howe", "15 2 * * *", "2025-10-04 12:00", []string{"2025-10-05 02:30 +11:00", "2025-10-06 02:15 +11:00"}},
	}
	for _, tc := range tests {
		tt := mustTimetable(t, Spec{Cron: []string{tc.cron}, TZ: tc.tz})
		at, err := time.ParseInLocation("2006-01-02 15:04", tc.after, tt.Location())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for range tc.want {
			n, ok := tt.Next(at)
			if !ok {
				t.Fatalf("%s %q: Next(%s) found nothing", tc.tz, tc.cron, at)
			}
			got, at = append(got, n.Format(wallFmt)), n
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s %q: got %q, want %q", tc.tz, tc.cron, got, tc.want)
		}
	}
}

func TestZonesAreEmbedded(t *testing.T) {
	for _, name := range []string{"America/New_York", "America/Santiago", "Australia/Lord_Howe", "Asia/Kathmandu", "Etc/UTC"} {
		if _, err := LoadLocation(name); err != nil {
			t.Errorf("LoadLocation(%q): %v", name, err)
		}
	}
	for _, name := range []string{"Local", "Mars/Olympus", "america/new_york", "../etc/passwd"} {
		_, err := LoadLocation(name)
		if err == nil || !strings.Contains(err.Error(), "unknown time zone") {
			t.Errorf("LoadLocation(%q): got %v, want an unknown time zone error", name, err)
		}
	}
}
