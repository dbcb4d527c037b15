package store

import (
	"hash/maphash"
	"maps"
	"slices"
	"strings"

	"github.com/tandemhq/tandem"
)

// interner holds once, for the whole view, what many jobs hold alike:
// their states, the IDs of the agents and servers that ran and wrote them,
// their submitters, and their commands, labels, environments and
// constraints, which jobs submitted by one tool or schedule mostly repeat.
// Decoding a record makes fresh copies of all of these; a job in the view
// keeps the interned ones instead, and the copies are garbage at once
// (docs/BENCHMARKS.md, "Memory per job").
//
// What is interned is shared between jobs, so it must never be written
// into: strings cannot be, and the slices and maps are part of what
// cloneJob already says callers only read.
//
// Each table is bounded: when one is full it starts again empty (what
// the view holds stays as it is; only later jobs stop sharing with it), so
// a view of all-different values costs at most internMax entries a table.
// The interner belongs to the view and is used under its write lock.
type interner struct {
	strs map[string]string
	cmds map[uint64][]string
	maps map[uint64]map[string]string
}

const (
	internMax    = 4096 // entries of a table before it starts again
	internMaxLen = 256  // longer strings are not interned
	internMaxMap = 16   // nor maps or commands with more entries
)

// internSeed is the seed of every interner's hashes.
var internSeed = maphash.MakeSeed()

func (in *interner) reset() { *in = interner{} }

// job replaces j's values with the interned ones, interning those not seen
// yet. owned says whether j's slices and maps belong to the view (freshly
// decoded) or may still be the caller's (copied before they are kept).
func (in *interner) job(j *tandem.Job, owned bool) {
	j.State = jobState(j.State)
	j.Submitter = in.str(j.Submitter)
	j.AcceptedBy = in.str(j.AcceptedBy)
	j.UpdatedBy = in.str(j.UpdatedBy)
	j.User = in.str(j.User)
	j.WorkDir = in.str(j.WorkDir)
	j.ScheduleID = in.str(j.ScheduleID)
	j.WorkflowID = in.str(j.WorkflowID)
	j.Step = in.str(j.Step)
	j.Command = in.slice(j.Command, owned)
	j.Env = in.strMap(j.Env, owned)
	j.Labels = in.strMap(j.Labels, owned)
	j.Constraints = in.strMap(j.Constraints, owned)
	for i := range j.Attempts {
		a := &j.Attempts[i]
		a.State = attemptState(a.State)
		a.Agent = in.str(a.Agent)
		a.Signal = in.str(a.Signal)
	}
}

func (in *interner) str(s string) string {
	if s == "" || len(s) > internMaxLen {
		return s
	}
	if c, ok := in.strs[s]; ok {
		return c
	}
	if in.strs == nil || len(in.strs) >= internMax {
		in.strs = make(map[string]string)
	}
	s = strings.Clone(s) // never keep a larger string alive through a part of it
	in.strs[s] = s
	return s
}

func (in *interner) slice(v []string, owned bool) []string {
	if len(v) == 0 || len(v) > internMaxMap {
		return v
	}
	var h maphash.Hash
	h.SetSeed(internSeed)
	for _, s := range v {
		h.WriteString(s)
		h.WriteByte(0)
	}
	sum := h.Sum64()
	if c, ok := in.cmds[sum]; ok && slices.Equal(c, v) {
		return c
	}
	if !owned {
		v = slices.Clone(v)
	}
	for i, s := range v {
		v[i] = in.str(s)
	}
	if in.cmds == nil || len(in.cmds) >= internMax {
		in.cmds = make(map[uint64][]string)
	}
	in.cmds[sum] = v
	return v
}

func (in *interner) strMap(m map[string]string, owned bool) map[string]string {
	if len(m) == 0 || len(m) > internMaxMap {
		return m
	}
	var buf [internMaxMap]string
	keys := buf[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var h maphash.Hash
	h.SetSeed(internSeed)
	for _, k := range keys {
		h.WriteString(k)
		h.WriteByte(0)
		h.WriteString(m[k])
		h.WriteByte(0)
	}
	sum := h.Sum64()
	if c, ok := in.maps[sum]; ok && maps.Equal(c, m) {
		return c
	}
	if !owned {
		m = maps.Clone(m)
	}
	if in.maps == nil || len(in.maps) >= internMax {
		in.maps = make(map[uint64]map[string]string)
	}
	in.maps[sum] = m
	return m
}

// jobState returns s as the constant of its state, whose bytes every job
// shares.
func jobState(s tandem.JobState) tandem.JobState {
	for _, k := range tandem.JobStates {
		if s == k {
			return k
		}
	}
	return s
}

var attemptStates = []tandem.AttemptState{tandem.AttemptScheduled, tandem.AttemptRunning, tandem.AttemptSucceeded,
	tandem.AttemptFailed, tandem.AttemptKilled, tandem.AttemptLost}

// attemptState returns s as the constant of its state.
func attemptState(s tandem.AttemptState) tandem.AttemptState {
	for _, k := range attemptStates {
		if s == k {
			return k
		}
	}
	return s
}
