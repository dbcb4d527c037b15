package bench

import (
	"testing"
	"time"
)

// The longest stall a must-not trial reports is the longest time in its
// window without an acknowledgement, the window's edges included.
func TestLongestGap(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	l := &load{newAt: make(chan struct{})}
	for _, ms := range []int{-50, 600, 100, 150, 1200} { // out of order, and outside the window
		l.record(ack{at: at(ms)})
	}
	for _, tc := range []struct {
		from, to int
		want     time.Duration
	}{
		{0, 1000, 450 * time.Millisecond},   // 150 -> 600
		{0, 1500, 600 * time.Millisecond},   // 600 -> 1200
		{700, 1000, 300 * time.Millisecond}, // no ack inside: the whole window
	} {
		if got := l.longestGap(at(tc.from), at(tc.to)); got != tc.want {
			t.Errorf("longest gap in [%d, %d] ms: got %s, want %s", tc.from, tc.to, got, tc.want)
		}
	}
}

// Only the faults that must leave the active in place count failovers: the
// three of issue 13, and killing etcd's leader (the active lives elsewhere).
func TestMustNotFailOver(t *testing.T) {
	for _, f := range Faults {
		want := f == FaultStandbyCut || f == FaultPause200 || f == FaultCPUHog || f == FaultEtcdLeaderKill
		if got := mustNotFailOver(f); got != want {
			t.Errorf("mustNotFailOver(%q) = %v, want %v", f, got, want)
		}
	}
}
