package shard

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestOfGolden(t *testing.T) {
	// These values pin the hash: jobs belong to their shard forever, so a
	// change here strands every stored job. "a" is a published FNV-1a test
	// vector (0xaf63dc4c8601ec8c), before the finalizer. The values were
	// computed apart from this code (a few lines of Python).
	tests := []struct {
		id   string
		n    int
		want int
	}{
		{"", 64, 27},
		{"a", 64, 56},
		{"a", 1024, 248},
		{"job-1", 64, 16},
		{"job-1", 7, 1},
		{"01k2mz8q4r0000", 64, 45},
		{"01k2mz8q4r0001", 64, 42},
		{"01k2mz8q4r0001", 1024, 362},
		{"7f3c9a1e2b4d", 7, 5},
		{"anything", 1, 0},
		{"anything", 0, 0},
		{"anything", -5, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.id, tt.n), func(t *testing.T) {
			if got := Of(tt.id, tt.n); got != tt.want {
				t.Errorf("Of(%q, %d): got %d, want %d", tt.id, tt.n, got, tt.want)
			}
		})
	}
}

func TestOfIsFinalizedFNV1a(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for range 1000 {
		id := randomID(r)
		n := 1 + r.IntN(1024)
		h := fnv.New64a()
		h.Write([]byte(id))
		if got, want := Of(id, n), int(mix(h.Sum64())%uint64(n)); got != want {
			t.Fatalf("Of(%q, %d): got %d, want %d (mix(FNV-1a) mod n)", id, n, got, want)
		}
	}
}

func TestOfUniform(t *testing.T) {
	const n, ids = 64, 100_000
	r := rand.New(rand.NewPCG(2, 2))
	gens := []struct {
		name string
		id   func(i int) string
	}{
		{"sequential", func(i int) string { return fmt.Sprintf("job-%d", i) }},
		// Like the server's IDs: 10 base32 characters of milliseconds, 4 of
		// sequence, here 100 jobs a millisecond.
		{"time-ordered", func(i int) string { return base32(1_780_000_000_000+int64(i/100), 10) + base32(int64(i%100), 4) }},
		{"random", func(int) string { return fmt.Sprintf("%016x", r.Uint64()) }},
	}
	for _, g := range gens {
		t.Run(g.name, func(t *testing.T) {
			counts := make([]int, n)
			for i := range ids {
				counts[Of(g.id(i), n)]++
			}
			want := float64(ids) / n
			chi2 := 0.0
			for _, c := range counts {
				d := float64(c) - want
				chi2 += d * d / want
			}
			lo, hi := slices.Min(counts), slices.Max(counts)
			t.Logf("chi-square %.1f (63 degrees of freedom), shard sizes %d..%d, want %.0f", chi2, lo, hi, want)
			// Generous: for a uniform hash, chi-square above 150 has odds of
			// about 1e-8, and 15% off the mean is over 6 standard deviations.
			if chi2 > 150 {
				t.Errorf("chi-square: got %.1f, want at most 150", chi2)
			}
			if float64(lo) < 0.85*want || float64(hi) > 1.15*want {
				t.Errorf("shard sizes: got %d..%d, want within 15%% of %.0f", lo, hi, want)
			}
		})
	}
}

func TestCap(t *testing.T) {
	tests := []struct{ n, servers, want int }{
		{64, 0, 0},
		{0, 3, 0},
		{-1, 3, 0},
		{64, -1, 0},
		{1, 1, 1},
		{1, 10, 1},
		{64, 1, 64},
		{64, 2, 36},
		{64, 3, 24},
		{64, 8, 9},
		{64, 9, 9}, // ceil(64*9/72) = 8 leaves no slack over ceil(64/9) = 8
		{64, 10, 8},
		{8, 9, 2},
		{1024, 10, 116},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/%d", tt.n, tt.servers), func(t *testing.T) {
			if got := Cap(tt.n, tt.servers); got != tt.want {
				t.Errorf("Cap(%d, %d): got %d, want %d", tt.n, tt.servers, got, tt.want)
			}
		})
	}
}

func TestTargets(t *testing.T) {
	tests := []struct {
		name    string
		n       int
		servers []string
		want    []string
	}{
		{"no shards", 0, []string{"a"}, nil},
		{"negative shards", -3, []string{"a"}, nil},
		{"no servers", 3, nil, []string{"", "", ""}},
		{"only empty IDs", 2, []string{"", ""}, []string{"", ""}},
		{"one server", 3, []string{"a"}, []string{"a", "a", "a"}},
		{"one server, empty ID ignored", 2, []string{"", "a", ""}, []string{"a", "a"}},
		// A golden map. Servers that run different versions during a
		// rolling upgrade must still agree, so the algorithm must not change
		// by accident either.
		{"golden", 8, []string{"rm1", "rm2", "rm3"}, []string{"rm1", "rm2", "rm1", "rm2", "rm1", "rm2", "rm3", "rm1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Targets(tt.n, tt.servers); !slices.Equal(got, tt.want) {
				t.Errorf("Targets(%d, %q): got %q, want %q", tt.n, tt.servers, got, tt.want)
			}
		})
	}
}

func TestMoved(t *testing.T) {
	tests := []struct {
		a, b []string
		want int
	}{
		{nil, nil, 0},
		{[]string{"a", "b"}, []string{"a", "b"}, 0},
		{[]string{"a", "b", "c"}, []string{"b", "b", "a"}, 2},
		{[]string{"a"}, []string{"a", "b", "c"}, 2},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q/%q", tt.a, tt.b), func(t *testing.T) {
			if got := Moved(tt.a, tt.b); got != tt.want {
				t.Errorf("Moved: got %d, want %d", got, tt.want)
			}
		})
	}
}

// TestWeightMixing checks the weights without the cap, which would hide
// their flaws: with plain rendezvous hashing, every server, even one of a
// set of short similar IDs, should be the favourite of about 1/S of the
// shards.
func TestWeightMixing(t *testing.T) {
	const n = 4096
	sets := [][]string{
		{"rm1", "rm2", "rm3"},
		{"a", "b"},
		{"s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"},
		{"server-1", "server-2", "server-10", "server-11"},
		{"10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"},
	}
	for _, servers := range sets {
		t.Run(fmt.Sprint(servers), func(t *testing.T) {
			wins := make([]int, len(servers))
			for k := range n {
				best := 0
				for i := range servers {
					if weight(serverSeed(servers[i]), shardSeed(k)) > weight(serverSeed(servers[best]), shardSeed(k)) {
						best = i
					}
				}
				wins[best]++
			}
			// n/S shards each, give or take 6 standard deviations.
			fair := float64(n) / float64(len(servers))
			for i, w := range wins {
				if d := float64(w) - fair; d*d > 36*fair {
					t.Errorf("%s is the favourite of %d shards: got %d, want %.0f give or take %.0f", servers[i], w, w, fair, 6*math.Sqrt(fair))
				}
			}
		})
	}
}

// TestTargetsProperties checks, over thousands of random memberships, that
// the map is a function of the set of servers, that it respects the cap,
// and that one server joining or leaving moves few shards.
func TestTargetsProperties(t *testing.T) {
	for _, n := range []int{1, 8, 64, 256} {
		trials := 300
		if n == 256 {
			trials = 100 // costlier, and steadier: fewer trials show the same
		}
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			r := rand.New(rand.NewPCG(0x5eed, uint64(n)))
			for s := 1; s <= 10; s++ {
				var st moveStats
				for trial := range trials {
					// members has s+1 servers: before is the first s, after
					// all of them, so "after" is one join after "before", and
					// "gone" is one departure after "after".
					members := randomMembers(r, s+1)
					before := Targets(n, members[:s])
					after := Targets(n, members)
					j := r.IntN(s + 1)
					gone := Targets(n, slices.Delete(slices.Clone(members), j, j+1))

					checkValid(t, n, members, after)
					checkValid(t, n, members[:s], before)
					checkOrderFree(t, r, n, members, after)
					if trial%10 == 0 { // the reference is slow
						if want := greedy(n, members); !slices.Equal(after, want) {
							t.Fatalf("Targets(%d, %q): got %q, want %q from sorting all pairs", n, members, after, want)
						}
					}
					st.add(Moved(before, after), Moved(after, gone), after)
				}
				st.check(t, n, s+1, trials)
			}
		})
	}
}

// greedy is Targets as its comment defines it, without the heap: sort all
// pairs from the heaviest down and take each whose shard has no server yet
// and whose server has room.
func greedy(n int, servers []string) []string {
	ids := slices.Clone(servers)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	type pair struct {
		w          uint64
		shard, srv int
	}
	var pairs []pair
	for k := range n {
		for i, id := range ids {
			pairs = append(pairs, pair{weight(serverSeed(id), shardSeed(k)), k, i})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		if c := cmp.Compare(b.w, a.w); c != 0 {
			return c
		}
		if c := cmp.Compare(a.shard, b.shard); c != 0 {
			return c
		}
		return cmp.Compare(a.srv, b.srv)
	})
	out := make([]string, n)
	load := make([]int, len(ids))
	for _, p := range pairs {
		if out[p.shard] == "" && load[p.srv] < Cap(n, len(ids)) {
			out[p.shard] = ids[p.srv]
			load[p.srv]++
		}
	}
	return out
}

// checkValid fails t unless every shard of m has a server from servers and
// no server has more than Cap shards.
func checkValid(t *testing.T, n int, servers, m []string) {
	t.Helper()
	if len(m) != n {
		t.Fatalf("len(Targets(%d, %q)): got %d, want %d", n, servers, len(m), n)
	}
	load := map[string]int{}
	for k, id := range m {
		if !slices.Contains(servers, id) {
			t.Fatalf("Targets(%d, %q)[%d]: got %q, want one of the servers", n, servers, k, id)
		}
		load[id]++
	}
	limit := Cap(n, len(servers))
	for id, l := range load {
		if l > limit {
			t.Fatalf("Targets(%d, %q): %s has %d shards, want at most Cap = %d", n, servers, id, l, limit)
		}
	}
}

// checkOrderFree fails t unless the map of servers in another order, with
// duplicates and empty IDs, is want.
func checkOrderFree(t *testing.T, r *rand.Rand, n int, servers, want []string) {
	t.Helper()
	mixed := slices.Clone(servers)
	for range 1 + r.IntN(3) {
		mixed = append(mixed, servers[r.IntN(len(servers))])
	}
	mixed = append(mixed, "")
	r.Shuffle(len(mixed), func(i, j int) { mixed[i], mixed[j] = mixed[j], mixed[i] })
	if got := Targets(n, mixed); !slices.Equal(got, want) {
		t.Fatalf("Targets(%d, %q): got %q, want %q as for %q", n, mixed, got, want, servers)
	}
}

// moveStats collects, for one n and one size S of the membership that
// includes the server that comes or goes, how many shards moved.
type moveStats struct {
	sumJoin, sumLeave, maxJoin, maxLeave int
	maxLoad                              int
}

func (st *moveStats) add(join, leave int, m []string) {
	st.sumJoin += join
	st.sumLeave += leave
	st.maxJoin = max(st.maxJoin, join)
	st.maxLeave = max(st.maxLeave, leave)
	load := map[string]int{}
	for _, id := range m {
		load[id]++
	}
	for _, l := range load {
		st.maxLoad = max(st.maxLoad, l)
	}
}

// check logs the figures and fails t if a change moved more than the bound
// or, for n large enough to average out, more than 1.5 times n/S on
// average. The ideal is n/S: the shards the joining server wins, or those
// the leaving server held.
func (st *moveStats) check(t *testing.T, n, s, trials int) {
	t.Helper()
	ideal := float64(n) / float64(s)
	avgJoin := float64(st.sumJoin) / float64(trials)
	avgLeave := float64(st.sumLeave) / float64(trials)
	bound := moveBound(n, s)
	t.Logf("n=%d S=%d->%d: join moves avg %.1f max %d; S=%d->%d: leave moves avg %.1f max %d; n/S=%.1f bound %d; max load %d = %.2f n/S, Cap %d",
		n, s-1, s, avgJoin, st.maxJoin, s, s-1, avgLeave, st.maxLeave, ideal, bound, st.maxLoad, float64(st.maxLoad)/ideal, Cap(n, s))
	if st.maxJoin > bound || st.maxLeave > bound {
		t.Errorf("n=%d S=%d: moved up to %d (join) and %d (leave), want at most 2*ceil(n/S)+4 = %d", n, s, st.maxJoin, st.maxLeave, bound)
	}
	if n >= 64 && (avgJoin > 1.5*ideal || avgLeave > 1.5*ideal) {
		t.Errorf("n=%d S=%d: moved %.1f (join) and %.1f (leave) on average, want at most 1.5*n/S = %.1f", n, s, avgJoin, avgLeave, 1.5*ideal)
	}
}

// moveBound is the most shards one server joining or leaving may move, when
// the membership that includes it has s servers. The worst seen in 10^5 and
// more random memberships per n is 2*ceil(n/S)+3, at small n.
func moveBound(n, s int) int { return 2*((n+s-1)/s) + 4 }

func BenchmarkTargets(b *testing.B) {
	for _, bc := range []struct{ n, s int }{{64, 3}, {1024, 10}} {
		b.Run(fmt.Sprintf("n=%d/S=%d", bc.n, bc.s), func(b *testing.B) {
			servers := randomMembers(rand.New(rand.NewPCG(3, 3)), bc.s)
			b.ReportAllocs()
			for b.Loop() {
				Targets(bc.n, servers)
			}
		})
	}
}

// randomMembers returns s distinct server IDs, mixing short similar IDs,
// numbered names and random strings.
func randomMembers(r *rand.Rand, s int) []string {
	seen := map[string]bool{}
	var ids []string
	for len(ids) < s {
		var id string
		switch r.IntN(3) {
		case 0:
			id = fmt.Sprintf("rm%d", r.IntN(30))
		case 1:
			id = fmt.Sprintf("server-%d", r.IntN(1000))
		default:
			id = randomID(r)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids
}

func randomID(r *rand.Rand) string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789-"
	b := make([]byte, 1+r.IntN(16))
	for i := range b {
		b[i] = chars[r.IntN(len(chars))]
	}
	return string(b)
}

// base32 encodes v in width characters of the server's job ID alphabet.
func base32(v int64, width int) string {
	const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	b := make([]byte, width)
	for i := width - 1; i >= 0; i-- {
		b[i] = alphabet[v&31]
		v >>= 5
	}
	return string(b)
}
