// Package shard maps jobs to shards and shards to servers, for the
// active-active mode.
//
// A cluster has a fixed number n of shards (1 to 1024, typically 64). A job
// belongs to shard Of(id, n) for its whole life, so the hash in Of must never
// change. Each shard is owned by at most one server at a time, and that owner
// runs the shard's jobs.
//
// Which server should own a shard is its target: Targets computes the whole
// target map from the set of ready servers. It is rendezvous
// (highest-random-weight) hashing with a load cap, as in "consistent hashing
// with bounded loads" (Mirrokni, Thorup and Zadimoghaddam): every (shard,
// server) pair has a pseudo-random weight, and shards go to their
// highest-weight servers, except that no server gets more than Cap shards.
// Rendezvous hashing alone moves as little as possible (when one server
// joins or leaves, only the shards it wins or held move, about n/S of them
// for S servers) but can leave a server with far more than its share: up to
// 3 times n/S for 64 shards over 10 servers. The cap holds every server to
// about 9/8 of its share, and one server joining or leaving still moves
// about n/S shards: with up to 10 servers, on average at most 35% more for
// n = 64 and 12% more for n = 256, and never more than 2*ceil(n/S)+4 in the
// tests.
//
// Every server computes the map on its own, from the ready servers it reads
// at one etcd revision, and they must agree without talking to each other.
// So Targets is a pure function of the set of server IDs: it uses no clock,
// randomness, map order or floating point, and ignores the order of its
// input and any duplicates in it.
//
// The map decides placement and liveness only, never safety. Servers that
// read different revisions may briefly disagree about a target, and a
// handoff may be slow or fail; either costs time, never correctness, because
// every write for a shard is fenced by the epoch of that shard's owner.
package shard

import "slices"

// FNV-1a, 64-bit (http://www.isthe.com/chongo/tech/comp/fnv/).
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// Of returns the shard of the job with the given ID in a cluster of n
// shards: the 64-bit FNV-1a hash of the ID's bytes, put through the
// SplitMix64 finalizer, modulo n. It returns 0 when n <= 1.
//
// A job belongs to its shard forever, and every server and tool must agree
// on it, so this function must never change, not even to a better hash:
// changing it would move stored jobs to shards whose owners do not know
// them. (The finalizer is there because, modulo a power of two, plain
// FNV-1a depends only on the low bits of each byte: with 64 shards '0' and
// 'p' would weigh alike in an ID.)
func Of(id string, n int) int {
	if n <= 1 {
		return 0
	}
	h := uint64(fnvOffset)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= fnvPrime
	}
	return int(mix(h) % uint64(n))
}

// Cap returns the most shards Targets gives one server when n shards are
// spread over the given number of servers: the fair share n/S plus an eighth,
// rounded up, but at least one shard more than ceil(n/S), and never more
// than n. It is 0 when there are no shards or no servers.
//
// The slack keeps movement low: the tighter the fit, the further one server
// joining or leaving ripples. With a cap of ceil(n/S), n = 64 moves about 30%
// more shards than the n/S minimum; with ceil(9n/8S) alone, which has no
// slack when n/S is small, one of 9 servers coming or going could move 7
// of 8 shards. More slack leaves servers less evenly loaded.
func Cap(n, servers int) int {
	if n <= 0 || servers <= 0 {
		return 0
	}
	d := 8 * servers
	return min(n, max((9*n+d-1)/d, (n+servers-1)/servers+1))
}

// Targets returns the target map of n shards over the given servers: the
// result has length n, and its element k is the ID of the server that shard
// k should belong to. Every shard gets a server and no server gets more than
// Cap(n, S) shards, where S is the number of distinct non-empty IDs in
// servers. The result depends only on n and that set: the order of servers,
// duplicates and empty IDs make no difference. With no servers, every
// element is "". It returns nil when n <= 0.
//
// Each (shard, server) pair has a pseudo-random 64-bit weight. The pairs are
// taken from the heaviest down, and each gives its shard to its server
// unless the shard already has one or the server is full. This is the unique
// assignment in which no shard and server both prefer each other to what
// they got (a stable matching), so a change of membership only disturbs the
// shards the change itself displaces, and the chains they start: the tests
// measure about n/S moved shards per server joining or leaving.
//
// Servers running different versions during a rolling upgrade must still
// agree, so changing any of this is a change of protocol.
func Targets(n int, servers []string) []string {
	if n <= 0 {
		return nil
	}
	out := make([]string, n)
	ids := slices.Clone(servers)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > 0 && ids[0] == "" {
		ids = ids[1:] // "" means unassigned, so it cannot be a server
	}
	if len(ids) == 0 {
		return out
	}

	seeds := make([]uint64, len(ids))
	for i, id := range ids {
		seeds[i] = serverSeed(id)
	}
	limit := Cap(n, len(ids))
	load := make([]int, len(ids))
	// best is shard k's heaviest pair with a server that is not full. A
	// full server stays full, so a pair passed over never comes back, and
	// the heap of every unassigned shard's best pair yields the pairs in
	// the order described above without sorting all n*S of them. Since
	// Cap*S >= n, some server has room while a shard is unassigned.
	best := func(k int32) offer {
		ks := shardSeed(int(k))
		o := offer{shard: k, srv: -1}
		for i, s := range seeds {
			// Strictly heavier, so a tie goes to the first ID in sorted
			// order: two IDs that hash alike tie on every shard, and the
			// result must still be a function of the set alone.
			if w := weight(s, ks); load[i] < limit && (o.srv < 0 || w > o.w) {
				o.w, o.srv = w, int32(i)
			}
		}
		return o
	}
	h := make(offers, n)
	for k := range h {
		h[k] = best(int32(k))
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
	for len(h) > 0 {
		if o := h[0]; load[o.srv] >= limit {
			h[0] = best(o.shard) // the server filled up since
		} else {
			out[o.shard] = ids[o.srv]
			load[o.srv]++
			h[0] = h[len(h)-1]
			h = h[:len(h)-1]
		}
		h.down(0)
	}
	return out
}

// offer is a (shard, server) pair and its weight.
type offer struct {
	w     uint64
	shard int32
	srv   int32
}

// offers is a binary heap with the heaviest offer first; ties, all but
// impossible, go to the lower shard.
type offers []offer

func (h offers) before(i, j int) bool {
	if h[i].w != h[j].w {
		return h[i].w > h[j].w
	}
	return h[i].shard < h[j].shard
}

// down restores the heap below i after h[i] changed.
func (h offers) down(i int) {
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && h.before(c+1, c) {
			c++
		}
		if !h.before(c, i) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// Moved returns how many shards have different servers in the target maps
// a and b. Maps of different lengths differ in every shard beyond the
// shorter one.
func Moved(a, b []string) int {
	moved := max(len(a), len(b)) - min(len(a), len(b))
	for k := range min(len(a), len(b)) {
		if a[k] != b[k] {
			moved++
		}
	}
	return moved
}

// serverSeed hashes a server ID. FNV-1a alone is not enough: for short,
// similar IDs such as rm1, rm2 and rm3 its outputs differ in few bits, and
// their weights would be correlated, so the result goes through a 64-bit
// finalizer.
func serverSeed(id string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= fnvPrime
	}
	return mix(h)
}

// shardSeed spreads consecutive shard numbers over all 64 bits.
func shardSeed(k int) uint64 { return mix(uint64(k) + 0x9e3779b97f4a7c15) }

// weight is the rendezvous weight of a (server, shard) pair. mix is a
// bijection, so two servers with different seeds never tie on a shard.
func weight(server, shard uint64) uint64 { return mix(server ^ shard) }

// mix is the finalizer of SplitMix64 (Steele, Lea and Flood): every input
// bit affects every output bit.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
