package server

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
)

// fleet returns n agents, a third of them labelled zone=b and the rest
// zone=a, with random free resources from a few discrete values (so that
// ties on free CPU, which the lowest ID breaks, are common).
func fleet(r *rand.Rand, n int) (map[string]tandem.AgentInfo, map[string]tandem.Resources) {
	agents := make(map[string]tandem.AgentInfo, n)
	free := make(map[string]tandem.Resources, n)
	for i := range n {
		id := fmt.Sprintf("agent-%04d", r.IntN(10*n)) // IDs not in creation order
		zone := "a"
		if i%3 == 0 {
			zone = "b"
		}
		agents[id] = tandem.AgentInfo{ID: id, URL: "http://" + id, Capacity: tandem.Resources{CPU: 4, MemoryMB: 4096},
			Labels: map[string]string{"zone": zone}}
		free[id] = tandem.Resources{CPU: float64(r.IntN(5)) * 0.5, MemoryMB: int64(r.IntN(5)) * 512}
	}
	return agents, free
}

func BenchmarkPlace(b *testing.B) {
	for _, tc := range []struct {
		name        string
		constraints map[string]string
	}{
		{"any", nil},
		{"zone=b", map[string]string{"zone": "b"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			agents, free := fleet(rand.New(rand.NewPCG(1, 2)), 1000)
			spec := tandem.JobSpec{Resources: tandem.Resources{CPU: 0.5, MemoryMB: 256}, Constraints: tc.constraints}
			b.ReportAllocs()
			for b.Loop() {
				if a, _ := place(spec, agents, free); a == "" {
					b.Fatal("no agent placed")
				}
			}
		})
	}
}

// placeByIDOrder is place as it was written first: every agent in ID order,
// the first with the most free CPU wins, a note for every one that does not
// fit. place must decide exactly as it does, and say the same when nothing
// fits.
func placeByIDOrder(spec tandem.JobSpec, agents map[string]tandem.AgentInfo, free map[string]tandem.Resources) (string, string) {
	if len(agents) == 0 {
		return "", "waiting for an agent: none is connected"
	}
	ids := make([]string, 0, len(agents))
	for id := range agents {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	best := ""
	var notes []string
	for _, id := range ids {
		a := agents[id]
		if miss := missingLabels(spec.Constraints, a.Labels); miss != "" {
			notes = append(notes, fmt.Sprintf("%s lacks %s", id, miss))
			continue
		}
		f := free[id]
		if !spec.Resources.Fits(f) {
			notes = append(notes, fmt.Sprintf("%s has %g cpu and %d MiB free", id, f.CPU, f.MemoryMB))
			continue
		}
		if best == "" || f.CPU > free[best].CPU {
			best = id
		}
	}
	if best != "" {
		return best, ""
	}
	return "", fmt.Sprintf("no agent fits %g cpu and %d MiB%s: %s", spec.Resources.CPU, spec.Resources.MemoryMB,
		constraintText(spec.Constraints), strings.Join(notes, "; "))
}

// place decides as a scan of the fleet in ID order would, on fleets of 0
// to 40 agents with frequent ties, constraints that some, all or none
// match (among them one on an empty value, which an agent without the
// label matches), and requests that fit often, seldom or never.
func TestPlaceDecidesAsAScanInIDOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	constraints := []map[string]string{nil, {"zone": "a"}, {"zone": "b"}, {"zone": "c"}, {"zone": ""}, {"zone": "a", "gpu": "yes"}}
	placed, unplaced := 0, 0
	for i := range 20000 {
		agents, free := fleet(r, r.IntN(41))
		for id, a := range agents {
			if r.IntN(4) == 0 {
				a.Labels = map[string]string{"zone": "a", "gpu": "yes"}
			}
			if r.IntN(8) == 0 {
				a.Labels = nil
			}
			agents[id] = a
		}
		spec := tandem.JobSpec{Resources: tandem.Resources{CPU: float64(r.IntN(4)) * 0.5, MemoryMB: int64(r.IntN(4)) * 512},
			Constraints: constraints[r.IntN(len(constraints))]}
		gotAgent, gotWhy := place(spec, agents, free)
		wantAgent, wantWhy := placeByIDOrder(spec, agents, free)
		if gotAgent != wantAgent || gotWhy != wantWhy {
			t.Fatalf("case %d: place(%+v) on %d agents = %q, %q; a scan in ID order gives %q, %q", i, spec, len(agents), gotAgent, gotWhy, wantAgent, wantWhy)
		}
		if gotAgent != "" {
			placed++
		} else {
			unplaced++
		}
	}
	if placed < 1000 || unplaced < 1000 {
		t.Fatalf("the cases placed %d jobs and left %d: want both common", placed, unplaced)
	}
}

// The ready agents are copied once per change of the fleet, not once per
// scheduler pass, and every change shows: an agent appearing, saying
// something new of itself, going silent, crashing, coming back. A sync
// that changes nothing keeps the version (and the shared map).
func TestReadyAgentsVersion(t *testing.T) {
	var tab agentTable
	now := time.Now()
	a := tandem.AgentInfo{ID: "a", URL: "http://a", Capacity: tandem.Resources{CPU: 2, MemoryMB: 1024}, PID: 1, StartedAt: now}
	b := tandem.AgentInfo{ID: "b", URL: "http://b", Capacity: tandem.Resources{CPU: 2, MemoryMB: 1024}, PID: 2, StartedAt: now}
	tab.expect([]string{"c"}, now) // known from the records, not yet in touch: not ready
	m0, v0 := tab.ready()
	if len(m0) != 0 {
		t.Fatalf("ready before any sync: %v", m0)
	}
	seq := uint64(0)
	contact := func(info tandem.AgentInfo) {
		t.Helper()
		seq++
		if _, stale := tab.contact(info, "s", seq, now); stale {
			t.Fatal("sync refused as stale")
		}
	}
	step := func(what string, wantIDs string, wantNew bool) {
		t.Helper()
		m, v := tab.ready()
		ids := make([]string, 0, len(m))
		for id := range m {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		if got := strings.Join(ids, ","); got != wantIDs {
			t.Fatalf("%s: ready agents %q, want %q", what, got, wantIDs)
		}
		if (v != v0) != wantNew {
			t.Fatalf("%s: version %d after %d: want a new one %v", what, v, v0, wantNew)
		}
		if m2, v2 := tab.ready(); v2 != v || len(m2) != len(m) {
			t.Fatalf("%s: a second read changed the version (%d, %d) or the set", what, v, v2)
		}
		v0 = v
	}
	contact(a)
	step("a appears", "a", true)
	contact(b)
	step("b appears", "a,b", true)
	contact(a)
	step("a syncs again, unchanged", "a,b", false)
	a.Labels = map[string]string{"zone": "x"}
	contact(a)
	step("a has a new label", "a,b", true)
	if m, _ := tab.ready(); m["a"].Labels["zone"] != "x" {
		t.Fatalf("ready keeps a's old record: %+v", m["a"])
	}
	if lost := tab.silent(now.Add(time.Second)); strings.Join(lost, ",") != "a,b,c" {
		t.Fatalf("silent: %v", lost)
	}
	step("everyone silent", "", true)
	contact(b)
	step("b is back", "b", true)
	if !tab.crashed(b, now) {
		t.Fatal("crashed: b not marked lost")
	}
	step("b crashed", "", true)
}
