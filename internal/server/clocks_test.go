package server

import (
	"testing"
	"time"
)

// The correction is the upper median of this server's 0 and each peer's
// tightest bound, never negative, at most the limit.
func TestPeerClocksCorrection(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name  string
		peers map[string][]time.Duration
		want  time.Duration
	}{
		{"alone", nil, 0},
		{"one peer behind us", map[string][]time.Duration{"b": {5*s + 300*time.Millisecond, 5 * s}}, 5 * s},
		{"one peer ahead of us", map[string][]time.Duration{"b": {-5 * s}}, 0},
		{"we are ahead of both", map[string][]time.Duration{"b": {3 * s}, "c": {4 * s}}, 3 * s},
		{"one broken peer is outvoted", map[string][]time.Duration{"b": {time.Hour}, "c": {10 * time.Millisecond}}, 10 * time.Millisecond},
		{"capped at the limit", map[string][]time.Duration{"b": {time.Hour}}, 30 * s},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c peerClocks
			for p, samples := range tc.peers {
				for _, d := range samples {
					c.add(p, d)
				}
			}
			if got := c.correction(30 * s); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}
