package schedule

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

func TestValidate(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	every := tandem.Duration(time.Minute)
	tests := []struct {
		name string
		spec Spec
		want []string // substrings of the message; none: valid
	}{
		{"cron", Spec{Cron: []string{"*/5 * * * *"}}, nil},
		{"several crons", Spec{Cron: []string{"0 9 * * 1-5", "0 12 * * 6,0"}, TZ: "Europe/Paris"}, nil},
		{"descriptor", Spec{Cron: []string{"@daily"}}, nil},
		{"names", Spec{Cron: []string{"0 9 * jan-mar mon-fri"}}, nil},
		{"every", Spec{Every: every}, nil},
		{"every with anchor and window", Spec{Every: every, Anchor: t0, Start: t0, End: t0.Add(time.Hour)}, nil},
		{"all policies", Spec{Every: every, Overlap: OverlapBufferAll, Catchup: CatchupAll, CatchupMax: 3,
			CatchupWindow: tandem.Duration(time.Hour), Jitter: tandem.Duration(30 * time.Second), Paused: true, PauseNote: "maintenance"}, nil},
		{"Feb 29 fires", Spec{Cron: []string{"0 0 29 2 *"}}, nil},
		{"31st or Monday fires", Spec{Cron: []string{"0 0 31 2 1"}}, nil},

		{"neither", Spec{}, []string{"give either cron"}},
		{"both", Spec{Cron: []string{"@daily"}, Every: every}, []string{"not both"}},
		{"malformed cron", Spec{Cron: []string{"61 * * * *"}}, []string{`cron "61 * * * *" is malformed`, "above maximum"}},
		{"garbage cron", Spec{Cron: []string{"every day"}}, []string{`cron "every day" is malformed`}},
		{"seconds field", Spec{Cron: []string{"0 */5 * * * *"}}, []string{"is malformed", "no seconds field"}},
		{"empty cron", Spec{Cron: []string{" "}}, []string{"cron expression is empty"}},
		{"@every", Spec{Cron: []string{"@every 5m"}}, []string{"set the every field"}},
		{"TZ prefix", Spec{Cron: []string{"CRON_TZ=Europe/Paris 0 9 * * *"}}, []string{"set the tz field"}},
		{"Sunday as 7", Spec{Cron: []string{"0 0 * * 7"}}, []string{"is malformed"}},
		{"never fires: Feb 30", Spec{Cron: []string{"0 0 30 2 *"}}, []string{`cron "0 0 30 2 *" never fires`}},
		{"never fires: Apr 31", Spec{Cron: []string{"0 0 31 4 *"}}, []string{`cron "0 0 31 4 *" never fires`}},
		{"never fires among good ones", Spec{Cron: []string{"@daily", "0 0 30 2 *"}}, []string{`"0 0 30 2 *" never fires`}},
		{"unknown zone", Spec{Cron: []string{"@daily"}, TZ: "Mars/Olympus"}, []string{`unknown time zone "Mars/Olympus"`}},
		{"local zone", Spec{Cron: []string{"@daily"}, TZ: "Local"}, []string{`unknown time zone "Local"`}},
		{"every too short", Spec{Every: tandem.Duration(500 * time.Millisecond)}, []string{"every 500ms is shorter than the minimum of 1s"}},
		{"negative every", Spec{Every: tandem.Duration(-time.Minute)}, []string{"shorter than the minimum"}},
		{"end before start", Spec{Every: every, Start: t0, End: t0.Add(-time.Second)}, []string{"end 2025-12-31T23:59:59Z is before start 2026-01-01T00:00:00Z"}},
		{"no time between start and end", Spec{Cron: []string{"0 9 * * *"}, Start: t0.Add(10 * time.Hour), End: t0.Add(20 * time.Hour)},
			[]string{"never fires between start and end"}},
		{"bad overlap", Spec{Every: every, Overlap: "queue"}, []string{`overlap "queue" is not one of allow, skip, buffer_one, buffer_all, replace`}},
		{"bad catchup", Spec{Every: every, Catchup: "some"}, []string{`catchup "some" is not one of all, latest, none`}},
		{"catchup_max without all", Spec{Every: every, CatchupMax: 2}, []string{"catchup_max applies to catchup \"all\" only"}},
		{"negative catchup", Spec{Every: every, Catchup: CatchupAll, CatchupMax: -1, CatchupWindow: tandem.Duration(-time.Second)},
			[]string{"catchup_max -1 is negative", "catchup_window -1s is negative"}},
		{"jitter equal to every", Spec{Every: every, Jitter: every}, []string{"jitter 1m0s is not shorter than the schedule's period 1m0s"}},
		{"jitter above cron period", Spec{Cron: []string{"*/5 * * * *"}, Jitter: tandem.Duration(6 * time.Minute)}, []string{"period 5m0s"}},
		{"jitter above union period", Spec{Cron: []string{"0 9 * * *", "2 9 * * *"}, Jitter: tandem.Duration(3 * time.Minute)}, []string{"period 2m0s"}},
		{"negative jitter", Spec{Every: every, Jitter: tandem.Duration(-time.Second)}, []string{"jitter -1s is negative"}},
		{"anchor with cron", Spec{Cron: []string{"@daily"}, Anchor: t0}, []string{"anchor applies to every"}},
		{"tz with every", Spec{Every: every, TZ: "Europe/Paris"}, []string{"tz applies to cron"}},
		{"long name", Spec{Every: every, Name: strings.Repeat("x", MaxNameLen+1)}, []string{"name is 257 bytes"}},
		{"several problems at once", Spec{Cron: []string{"bad"}, TZ: "Nowhere", Overlap: "x"},
			[]string{`cron "bad" is malformed`, `unknown time zone "Nowhere"`, `overlap "x"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("got valid, want an error containing %q", tc.want)
			}
			if !errors.Is(err, &tandem.Error{Code: tandem.EINVALID}) {
				t.Errorf("got code %q, want %q", tandem.ErrorCode(err), tandem.EINVALID)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestSpecJSON(t *testing.T) {
	body := `{"name":"nightly","cron":["30 2 * * *"],"tz":"America/New_York","start":"2026-01-01T00:00:00Z",
		"jitter":"30s","overlap":"buffer_one","catchup":"all","catchup_window":"6h","catchup_max":3,
		"history_limits":{"fired":10,"skipped":5},"paused":true,"pause_note":"migration"}`
	var s Spec
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	want := Spec{Name: "nightly", Cron: []string{"30 2 * * *"}, TZ: "America/New_York",
		Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Jitter: tandem.Duration(30 * time.Second),
		Overlap: OverlapBufferOne, Catchup: CatchupAll, CatchupWindow: tandem.Duration(6 * time.Hour), CatchupMax: 3,
		HistoryLimits: HistoryLimits{Fired: 10, Skipped: 5}, Paused: true, PauseNote: "migration"}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got %+v, want %+v", s, want)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(Spec{Every: tandem.Duration(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), `{"every":"1m30s"}`; got != want {
		t.Errorf("got %s, want %s (zero fields omitted)", got, want)
	}
}

func TestDefaults(t *testing.T) {
	tt := mustTimetable(t, Spec{Every: tandem.Duration(time.Minute)})
	s := tt.Spec()
	if s.Overlap != OverlapSkip || s.Catchup != CatchupLatest || s.TZ != "UTC" || !s.Anchor.Equal(DefaultAnchor) ||
		s.HistoryLimits != (HistoryLimits{DefaultHistoryFired, DefaultHistorySkipped}) {
		t.Errorf("got %+v, want the documented defaults", s)
	}
}

func TestJitter(t *testing.T) {
	tt := mustTimetable(t, Spec{Every: tandem.Duration(time.Minute), Jitter: tandem.Duration(40 * time.Second)})
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	lo, hi := time.Duration(1<<62), time.Duration(0)
	same := 0
	for i := 0; i < 2000; i++ {
		nt := t0.Add(time.Duration(i) * time.Minute)
		j := tt.Jitter("sched-1", nt)
		if j != tt.Jitter("sched-1", nt) {
			t.Fatalf("jitter of %s is not deterministic", nt)
		}
		if j < 0 || j >= 40*time.Second {
			t.Fatalf("jitter of %s = %s, want in [0, 40s)", nt, j)
		}
		if tt.Due("sched-1", nt) != nt.Add(j) {
			t.Fatalf("Due disagrees with Jitter")
		}
		if j == tt.Jitter("sched-2", nt) {
			same++
		}
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo > 2*time.Second || hi < 38*time.Second {
		t.Errorf("jitter spread [%s, %s], want it to cover most of [0, 40s)", lo, hi)
	}
	if same > 5 {
		t.Errorf("%d of 2000 jitters equal for two schedule IDs: want the ID in the hash", same)
	}
	// A pinned value: the hash is part of the contract (servers of
	// different versions must agree).
	if got, want := tt.Jitter("sched-1", t0), pinnedJitter; got != want {
		t.Errorf("Jitter(sched-1, %s) = %d, want %d", t0, got, want)
	}
	if got := mustTimetable(t, Spec{Every: tandem.Duration(time.Minute)}).Jitter("sched-1", t0); got != 0 {
		t.Errorf("no jitter configured: got %s", got)
	}
}

// TestJitterBelowRealGap: on the gap day of a fixed-hour schedule two
// nominal times may be closer than the period; jitter stays below the real
// distance so due times keep their order.
func TestJitterBelowRealGap(t *testing.T) {
	// "0 1,3 * * *" in New York: on 2025-03-09, 01:00 EST and 03:00 EDT are
	// one hour apart; on other days two hours.
	tt := mustTimetable(t, Spec{Cron: []string{"0 1,3 * * *"}, TZ: "America/New_York", Jitter: tandem.Duration(119 * time.Minute)})
	from := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	times := tt.List(from, from.AddDate(0, 0, 20), 0)
	for i := 0; i+1 < len(times); i++ {
		for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
			if due := tt.Due(id, times[i]); !due.Before(times[i+1]) {
				t.Fatalf("due %s of %s is not before the next time %s", due, times[i], times[i+1])
			}
		}
	}
}

// pinnedJitter is SHA-256("sched-1\n2026-03-01T00:00:00Z")[:8] mod 40e9, as
// computed independently (Python hashlib).
const pinnedJitter = time.Duration(13789203758)
