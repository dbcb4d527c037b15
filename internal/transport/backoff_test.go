package transport

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: 10 * time.Millisecond, Max: 40 * time.Millisecond}
	for _, tt := range []struct {
		retry int
		want  time.Duration
	}{
		{0, 0},
		{1, 0}, // the first retry goes to the next server at once
		{2, 10 * time.Millisecond},
		{3, 20 * time.Millisecond},
		{4, 40 * time.Millisecond},
		{5, 40 * time.Millisecond}, // capped at Max
		{1000, 40 * time.Millisecond},
	} {
		if got := b.Delay(tt.retry); got != tt.want {
			t.Errorf("Delay(%d): got %v, want %v", tt.retry, got, tt.want)
		}
	}
}

func TestDefaultBackoffSchedule(t *testing.T) {
	b := DefaultBackoff()
	var total time.Duration
	for retry := 1; retry < b.Attempts; retry++ {
		total += b.Delay(retry)
	}
	// About 9s of retrying in the worst case, never more than Max per sleep.
	if total < 8*time.Second || total > 10*time.Second {
		t.Errorf("got total nominal sleep %v, want about 9s", total)
	}
	if got := b.Delay(1); got != 0 {
		t.Errorf("got first retry delay %v, want 0", got)
	}
	if got := b.Delay(2); got != b.Base {
		t.Errorf("got second retry delay %v, want Base %v", got, b.Base)
	}
	if got := b.Delay(b.Attempts - 1); got != b.Max {
		t.Errorf("got last delay %v, want Max %v", got, b.Max)
	}
}

func TestJitterStaysWithinHalfToFull(t *testing.T) {
	for _, pick := range []struct {
		name  string
		randN func(int64) int64
		want  time.Duration
	}{
		{"lowest", func(int64) int64 { return 0 }, 50 * time.Millisecond},
		{"highest", func(n int64) int64 { return n - 1 }, 100 * time.Millisecond},
	} {
		if got := Jitter(100*time.Millisecond, pick.randN); got != pick.want {
			t.Errorf("%s: got jitter %v, want %v", pick.name, got, pick.want)
		}
	}
	for _, randN := range []func(int64) int64{rand.Int64N, nil} {
		for range 1000 {
			if got := Jitter(100*time.Millisecond, randN); got < 50*time.Millisecond || got > 100*time.Millisecond {
				t.Fatalf("got jitter %v, want within [50ms, 100ms]", got)
			}
		}
	}
	if got := Jitter(0, func(int64) int64 { panic("drawn for no delay") }); got != 0 {
		t.Errorf("got jitter of 0 = %v, want 0", got)
	}
}

// The agent retries for ever with Base and Max only: Jittered gives it the
// n-th sleep, jitter included, from the random source it is given.
func TestJitteredForAnAgent(t *testing.T) {
	b := Backoff{Base: 20 * time.Millisecond, Max: 250 * time.Millisecond}
	var drawn []int64
	low := func(n int64) int64 { drawn = append(drawn, n); return 0 }
	want := []time.Duration{0, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond, 125 * time.Millisecond, 125 * time.Millisecond}
	for i, w := range want {
		if got := b.Jittered(i+1, low); got != w {
			t.Errorf("Jittered(%d) with the lowest draw: got %v, want %v", i+1, got, w)
		}
	}
	if got, want := drawn[0], int64(10*time.Millisecond+1); got != want {
		t.Errorf("got the draw for the second retry over [0, %d), want over [0, %d)", got, want)
	}
	if got := b.Jittered(100, func(n int64) int64 { return n - 1 }); got != b.Max {
		t.Errorf("Jittered(100) with the highest draw: got %v, want Max %v", got, b.Max)
	}
}

func TestBackoffValidate(t *testing.T) {
	tests := []struct {
		name    string
		b       Backoff
		wantErr string // "" means valid
	}{
		{"default", DefaultBackoff(), ""},
		{"one attempt", Backoff{Base: time.Millisecond, Max: time.Millisecond, Attempts: 1}, ""},
		{"zero base", Backoff{Max: time.Second, Attempts: 3}, "backoff base is 0s: it must be greater than zero"},
		{"max below base", Backoff{Base: time.Second, Max: time.Millisecond, Attempts: 3}, "backoff max 1ms is less than its base 1s"},
		{"no attempts", Backoff{Base: time.Millisecond, Max: time.Second}, "backoff attempts is 0: it must be at least 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.b.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("got error %v, want none", err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("got error %v, want %q", err, tt.wantErr)
			}
			if got := tandem.ErrorCode(err); got != tandem.EINVALID {
				t.Errorf("got code %q, want %q", got, tandem.EINVALID)
			}
		})
	}
}

func TestSleep(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Errorf("Sleep: got %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep with a cancelled ctx: got %v, want context.Canceled", err)
	}
}

func TestNextServerPassesOverHungServers(t *testing.T) {
	for _, tc := range []struct {
		idx, n int
		hung   []int
		want   int
	}{
		{0, 3, nil, 1},
		{2, 3, nil, 0},
		{1, 3, []int{2}, 0},
		{2, 3, []int{0}, 1},
		{0, 3, []int{0, 1}, 2},
		{0, 3, []int{0, 1, 2}, 1}, // all hung: start again in order
		{0, 1, []int{0}, 0},
	} {
		hung := map[int]bool{}
		for _, h := range tc.hung {
			hung[h] = true
		}
		if got := nextServer(tc.idx, tc.n, hung); got != tc.want {
			t.Errorf("nextServer(%d, %d, hung %v): got %d, want %d", tc.idx, tc.n, tc.hung, got, tc.want)
		}
	}
}

// sleeps returns the sleep events among events.
func sleeps(events []string) string {
	var out []string
	for _, e := range events {
		if strings.HasPrefix(e, "sleep ") {
			out = append(out, e)
		}
	}
	return strings.Join(out, ",")
}
