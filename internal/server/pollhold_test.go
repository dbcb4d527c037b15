package server

import (
	"testing"
	"time"
)

// An idle poll is held between three quarters of its wait and all of it,
// at random, so agents answered together do not come back together: a
// thousand draws cover most of that range and never leave it.
func TestPollHoldSpreadsAgents(t *testing.T) {
	for _, wait := range []time.Duration{2 * time.Second, 5 * time.Second, 3 * time.Millisecond} {
		lo, hi := wait, time.Duration(0)
		for range 1000 {
			h := pollHold(wait)
			if h < wait*3/4 || h > wait {
				t.Fatalf("pollHold(%v) = %v, outside [%v, %v]", wait, h, wait*3/4, wait)
			}
			lo, hi = min(lo, h), max(hi, h)
		}
		// A uniform draw misses the lowest and highest fifth of the range
		// in 1000 tries with a probability of 0.8^1000.
		if span := wait / 4; lo > wait-span*4/5 || hi < wait-span/5 {
			t.Fatalf("pollHold(%v) ranged over [%v, %v] in 1000 draws: not spread over [%v, %v]", wait, lo, hi, wait*3/4, wait)
		}
	}
	for _, wait := range []time.Duration{0, -time.Second} {
		if h := pollHold(wait); h != 0 {
			t.Fatalf("pollHold(%v) = %v, want 0", wait, h)
		}
	}
}
