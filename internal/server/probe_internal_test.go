package server

import (
	"testing"
	"time"
)

// A probe that found a server failing in one ownership says nothing of
// the next: the server that handed off answers "not active" to the probe
// that comes just after (rightly), and when it is made active again, in a
// new term under the same lease, clients must be sent to it at once, not
// after the next probe. Within one ownership a failing probe still
// counts, and a new lease (a restarted process) still starts clean.
func TestAnsweringForgetsEarlierTerms(t *testing.T) {
	const interval = 100 * time.Millisecond
	p := &prober{peers: map[string]*peerHealth{
		"rm1": {url: "http://rm1", lease: 7, epoch: 40, failing: true, seen: time.Now().Add(-time.Minute / 2)},
	}}
	if p.answering("rm1", 7, 40, interval) {
		t.Fatal("answering: an owner whose last probe failed, not seen for 30 s, in the ownership probed (epoch 40): want false")
	}
	if !p.answering("rm1", 7, 55, interval) {
		t.Fatal("answering: the same process in a new term (epoch 55, same lease): want true, what was found at epoch 40 does not count")
	}
	if !p.answering("rm1", 8, 40, interval) {
		t.Fatal("answering: a new lease (a restarted process): want true")
	}
	if !p.answering("rm2", 9, 3, interval) {
		t.Fatal("answering: a server never probed: want true")
	}
	p.peers["rm1"].seen = time.Now()
	if !p.answering("rm1", 7, 40, interval) {
		t.Fatal("answering: failing now but seen within the last probes: want true")
	}
}
