package server

import (
	"slices"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/keys"
)

// The agreement rule: a majority of the live servers other than the suspect,
// counting only live voters and never the suspect, and no answer from the
// suspect after the latest counted vote.
func TestTally(t *testing.T) {
	for _, tc := range []struct {
		name       string
		votes      map[string]int64
		alive      int64
		live       []string
		wantVoters []string
		wantNeed   int
		wantAgreed bool
	}{
		{"three servers, both standbys vote", map[string]int64{"rm2": 10, "rm3": 11}, 0, []string{"rm1", "rm2", "rm3"}, []string{"rm2", "rm3"}, 2, true},
		{"three servers, one standby cut off alone", map[string]int64{"rm2": 10}, 0, []string{"rm1", "rm2", "rm3"}, []string{"rm2"}, 2, false},
		{"two servers, the one standby is a majority", map[string]int64{"rm2": 10}, 0, []string{"rm1", "rm2"}, []string{"rm2"}, 1, true},
		{"two servers, the suspect answered the vote", map[string]int64{"rm2": 10}, 12, []string{"rm1", "rm2"}, []string{"rm2"}, 1, false},
		{"answered the first vote, silent since the second", map[string]int64{"rm2": 10, "rm3": 14}, 12, []string{"rm1", "rm2", "rm3"}, []string{"rm2", "rm3"}, 2, true},
		{"answered after every vote", map[string]int64{"rm2": 10, "rm3": 14}, 15, []string{"rm1", "rm2", "rm3"}, []string{"rm2", "rm3"}, 2, false},
		{"a vote by a server no longer live does not count", map[string]int64{"rm2": 10, "rm4": 11}, 0, []string{"rm1", "rm2", "rm3"}, []string{"rm2"}, 2, false},
		{"the suspect's own vote does not count", map[string]int64{"rm1": 9, "rm2": 10}, 0, []string{"rm1", "rm2", "rm3"}, []string{"rm2"}, 2, false},
		{"the suspect gone from the registry: still a majority of the others", map[string]int64{"rm2": 10, "rm3": 11}, 0, []string{"rm2", "rm3"}, []string{"rm2", "rm3"}, 2, true},
		{"five servers, two of four votes", map[string]int64{"rm2": 10, "rm3": 11}, 0, []string{"rm1", "rm2", "rm3", "rm4", "rm5"}, []string{"rm2", "rm3"}, 3, false},
		{"five servers, three of four votes", map[string]int64{"rm2": 10, "rm3": 11, "rm5": 12}, 0, []string{"rm1", "rm2", "rm3", "rm4", "rm5"}, []string{"rm2", "rm3", "rm5"}, 3, true},
		{"a lone server has nobody to agree", map[string]int64{}, 0, []string{"rm1"}, nil, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tally("rm1", &suspicion{votes: tc.votes, alive: tc.alive}, tc.live)
			if !slices.Equal(v.voters, tc.wantVoters) || v.need != tc.wantNeed || v.agreed() != tc.wantAgreed {
				t.Fatalf("got voters %v, need %d, agreed %v; want %v, %d, %v", v.voters, v.need, v.agreed(), tc.wantVoters, tc.wantNeed, tc.wantAgreed)
			}
		})
	}
}

// Suspicion keys group by suspect incarnation: votes against a server's old
// lease never count against its new one.
func TestSuspicionsGroupByIncarnation(t *testing.T) {
	l := keys.New("c")
	kvs := map[string]int64{
		l.SuspectVote("rm1", 0xa, "rm2"): 5,
		l.SuspectVote("rm1", 0xa, "rm3"): 6,
		l.SuspectAlive("rm1", 0xa):       7,
		l.SuspectVote("rm1", 0xb, "rm2"): 8,
		l.Leader():                       3, // not a suspicion key
	}
	got := suspicions(l, kvs)
	if len(got) != 2 {
		t.Fatalf("got %d suspects, want 2 (rm1 under two leases)", len(got))
	}
	a, b := got[peerKey{"rm1", 0xa}], got[peerKey{"rm1", 0xb}]
	if a == nil || len(a.votes) != 2 || a.alive != 7 || b == nil || len(b.votes) != 1 || b.alive != 0 {
		t.Fatalf("got %+v and %+v; want two votes answered at 7, and one vote unanswered", a, b)
	}
}

// Bad settings are refused with a clear error.
func TestValidateSuspicion(t *testing.T) {
	for _, tc := range []struct {
		after time.Duration
		addrs map[string]string
		ok    bool
	}{
		{DefaultSuspectAfter, nil, true},
		{0, nil, true},
		{100 * time.Millisecond, nil, false},
		{2 * time.Minute, nil, false},
		{time.Second, map[string]string{"rm1": "127.0.0.1:7070"}, true},
		{time.Second, map[string]string{"rm1": "127.0.0.1"}, false},
		{time.Second, map[string]string{"rm/1": "127.0.0.1:7070"}, false},
	} {
		if err := validateSuspicion(tc.after, tc.addrs); (err == nil) != tc.ok {
			t.Errorf("validateSuspicion(%s, %v) = %v; want ok %v", tc.after, tc.addrs, err, tc.ok)
		}
	}
}

// A peer address replaces only the host and port of the advertised URL.
func TestPeerURL(t *testing.T) {
	s := &Server{cfg: Config{PeerAddrs: map[string]string{"rm1": "127.0.0.1:9999"}}}
	if got := s.peerURL("rm1", "https://127.0.0.1:7070"); got != "https://127.0.0.1:9999" {
		t.Errorf("peer URL of rm1: got %s, want https://127.0.0.1:9999", got)
	}
	if got := s.peerURL("rm2", "http://127.0.0.1:7071"); got != "http://127.0.0.1:7071" {
		t.Errorf("peer URL of rm2: got %s, want its advertised URL", got)
	}
}
