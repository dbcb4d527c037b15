package schedule

import (
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

func BenchmarkNewTimetable(b *testing.B) {
	for i := 0; i < b.N; i++ {
		analyses.Lock()
		analyses.m = nil // measure the calendar scan, not the memo
		analyses.Unlock()
		if _, err := NewTimetable(Spec{Cron: []string{"30 2 * * 1-5"}, TZ: "America/New_York"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNext(b *testing.B) {
	for _, c := range []struct {
		name string
		spec Spec
	}{
		{"every", Spec{Every: tandem.Duration(time.Minute)}},
		{"cron_minutely_NY", Spec{Cron: []string{"* * * * *"}, TZ: "America/New_York"}},
		{"cron_daily_Santiago", Spec{Cron: []string{"0 0 * * *"}, TZ: "America/Santiago"}},
		{"cron_feb29", Spec{Cron: []string{"0 0 29 2 *"}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			tt, err := NewTimetable(c.spec)
			if err != nil {
				b.Fatal(err)
			}
			t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t, _ = tt.Next(t)
			}
		})
	}
}

func BenchmarkPlan(b *testing.B) {
	tt, err := NewTimetable(Spec{Cron: []string{"*/5 * * * *"}, TZ: "Europe/Paris", Jitter: tandem.Duration(time.Minute)})
	if err != nil {
		b.Fatal(err)
	}
	cursor := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < b.N; i++ {
		Plan(PlanInput{Timetable: tt, ID: "bench", Cursor: cursor, Now: cursor.Add(5*time.Minute + 90*time.Second)})
	}
}
