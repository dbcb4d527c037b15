package keys

import (
	"testing"
	"time"
)

// Run keys sort as their times do and parse back to what made them.
func TestFireKeys(t *testing.T) {
	l := New("c")
	t1 := time.Date(2026, 3, 8, 2, 30, 0, 5, time.FixedZone("x", -5*3600))
	t2 := t1.Add(time.Nanosecond)
	for _, kind := range []string{RunScheduled, RunManual, RunBackfill} {
		key := l.Fire("s1", t1, kind)
		id, at, k, ok := l.ParseFire(key)
		if !ok || id != "s1" || !at.Equal(t1) || k != kind {
			t.Errorf("ParseFire(%q) = %q %s %q %v", key, id, at, k, ok)
		}
	}
	if a, b := l.Fire("s1", t1, RunScheduled), l.Fire("s1", t2, RunScheduled); a >= b {
		t.Errorf("%q does not sort before %q", a, b)
	}
	for _, bad := range []string{"/tandem/c/fires/s1/", "/tandem/c/fires/s1/2026-03-08", "/tandem/c/fires//2026-03-08T07:30:00.000000005Z",
		"/tandem/c/fires/s1/2026-03-08T07:30:00.000000005Z~other", "/tandem/c/jobs/x"} {
		if _, _, _, ok := l.ParseFire(bad); ok {
			t.Errorf("ParseFire(%q) accepted it", bad)
		}
	}
}

// Suspicion keys parse back to what made them; other keys do not parse.
func TestSuspectKeys(t *testing.T) {
	l := New("c")
	if s, lease, v, ok := l.ParseSuspectKey(l.SuspectVote("rm1", 0x7a, "rm2")); !ok || s != "rm1" || lease != 0x7a || v != "rm2" {
		t.Errorf("vote key parsed as %q %x %q %v, want rm1 7a rm2 true", s, lease, v, ok)
	}
	if s, lease, v, ok := l.ParseSuspectKey(l.SuspectAlive("rm1", 0x7a)); !ok || s != "rm1" || lease != 0x7a || v != "" {
		t.Errorf("alive key parsed as %q %x %q %v, want rm1 7a \"\" true", s, lease, v, ok)
	}
	for _, bad := range []string{"/tandem/c/suspects/rm1/7a/", "/tandem/c/suspects/rm1/zz/alive", "/tandem/c/suspects/rm1/0/alive",
		"/tandem/c/suspects//7a/alive", "/tandem/c/suspects/rm1/7a/votes/", "/tandem/c/suspects/rm1/7a/other", "/tandem/c/jobs/x"} {
		if _, _, _, ok := l.ParseSuspectKey(bad); ok {
			t.Errorf("ParseSuspectKey(%q) accepted it", bad)
		}
	}
}

// Event keys: shard 0 keeps its old key; shards won at one revision get
// distinct keys; keys sort by epoch.
func TestEventKeys(t *testing.T) {
	l := New("c")
	if got, want := l.Event(0, 42), "/tandem/c/events/00000000000000000042"; got != want {
		t.Errorf("Event(0, 42) = %q, want %q", got, want)
	}
	seen := map[string]bool{}
	for shard := 0; shard < 64; shard++ {
		k := l.Event(shard, 42)
		if seen[k] {
			t.Fatalf("Event(%d, 42) = %q, taken by another shard", shard, k)
		}
		seen[k] = true
		if next := l.Event(0, 43); k >= next {
			t.Errorf("Event(%d, 42) = %q does not sort before epoch 43's %q", shard, k, next)
		}
	}
}
