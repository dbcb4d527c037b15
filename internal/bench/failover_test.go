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

// A failover's longest wait is the longest a submission under way in the
// window waited; its gap runs from the old epoch's last acknowledgement.
func TestLongestWaitAndLastOf(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	l := &load{newAt: make(chan struct{})}
	for _, a := range []struct {
		sent, at int
		epoch    int64
	}{
		{-100, -90, 1}, // ended before the window
		{-20, 5, 1},    // under way at its start: 25 ms
		{10, 70, 2},    // spans the switch: 60 ms
		{30, 40, 1},    // the old active's last
		{80, 85, 2},    // after the window
	} {
		l.record(ack{sent: at(a.sent), at: at(a.at), epoch: a.epoch})
	}
	if got, want := l.longestWait(at(0), at(70)), 60*time.Millisecond; got != want {
		t.Errorf("longest wait: got %s, want %s", got, want)
	}
	if got, want := l.longestWait(at(0), at(8)), 25*time.Millisecond; got != want {
		t.Errorf("longest wait in [0, 8] ms: got %s, want %s", got, want)
	}
	if last, ok := l.lastOf(1, at(70)); !ok || !last.Equal(at(40)) {
		t.Errorf("last acknowledgement of epoch 1: got %s %v, want 40 ms", last.Sub(t0), ok)
	}
	if _, ok := l.lastOf(3, at(70)); ok {
		t.Error("an epoch that acknowledged nothing has a last acknowledgement")
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
