// Package history records what clients observed of tandem's jobs and checks,
// with porcupine, that it is linearizable: that some order of the operations,
// each taking effect at one instant between its call and its return, explains
// every answer. The fault tests (e2e TestNemesis) use it.
//
// The model is one job's progress. A job does not exist until it is
// submitted; then it only ever moves forward: through its attempts, each
// scheduled, then running, then ended (the job pending for a retry), until
// the job is terminal, which is final. A read that shows less progress than
// an earlier read had shown is time going backwards: a stale read.
package history

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tandemhq/tandem"
)

// Kind is what an operation did.
type Kind string

// Operation kinds.
const (
	Submit Kind = "submit" // a submission the cluster acknowledged (HTTP 201)
	Read   Kind = "read"   // a read of one job: GET /v1/jobs/{id}, or one job of a listing
)

// Stage is how far a job has got within its latest attempt.
type Stage int

// Stages, in the order a job goes through them. Pending is a job with no
// attempt yet; Retrying is a pending job whose latest attempt has ended,
// waiting for the next one (it comes after that attempt was running, and
// before the next attempt is scheduled).
const (
	Pending Stage = iota
	Scheduled
	Running
	Retrying
	Terminal
)

var stageNames = [...]string{"pending", "scheduled", "running", "retrying", "terminal"}

func (s Stage) String() string {
	if s >= 0 && int(s) < len(stageNames) {
		return stageNames[s]
	}
	return fmt.Sprintf("stage(%d)", int(s))
}

// MarshalText implements encoding.TextMarshaler, for readable JSON.
func (s Stage) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Progress is a job's progress as a read shows it: its number of attempts
// and its stage, compared in that order. State is the job's state as read; a
// terminal state must never change, so it takes part in equality.
type Progress struct {
	Attempts int             `json:"attempts"`
	Stage    Stage           `json:"stage"`
	State    tandem.JobState `json:"state"`
}

// ProgressOf returns the progress that job record j shows.
func ProgressOf(j *tandem.Job) Progress {
	p := Progress{Attempts: len(j.Attempts), State: j.State}
	switch {
	case j.State.Terminal():
		p.Stage = Terminal
	case j.State == tandem.JobRunning:
		p.Stage = Running
	case j.State == tandem.JobScheduled:
		p.Stage = Scheduled
	case len(j.Attempts) > 0:
		p.Stage = Retrying
	default:
		p.Stage = Pending
	}
	return p
}

// Compare orders progress: -1 if p is behind q, 0 if level, +1 if ahead.
func (p Progress) Compare(q Progress) int {
	if c := cmp.Compare(p.Attempts, q.Attempts); c != 0 {
		return c
	}
	return cmp.Compare(p.Stage, q.Stage)
}

func (p Progress) String() string {
	if p.Stage == Terminal || p.Stage == Pending {
		return fmt.Sprintf("%s, %d attempts", p.State, p.Attempts)
	}
	return fmt.Sprintf("%s (attempt %d %s)", p.State, p.Attempts, p.Stage)
}

// Input is an operation's input: what it did, to which job.
type Input struct {
	Kind Kind   `json:"kind"`
	Job  string `json:"job"`
}

// Output is an operation's result. Submissions have none (only acknowledged
// ones are recorded); a read either found no such job, or found it removed
// by retention (Removed, with the state it finished in as Progress.State and
// Progress.Stage Terminal: what its tombstone says; its attempts are not
// known), or shows its progress.
type Output struct {
	NotFound bool     `json:"not_found,omitempty"`
	Removed  bool     `json:"removed,omitempty"`
	Progress Progress `json:"progress"`
}

// state is the model's state of one job.
type state struct {
	exists  bool
	removed bool
	p       Progress
}

func step(st state, in Input, out Output) (bool, state) {
	switch in.Kind {
	case Submit:
		if !st.exists {
			return true, state{exists: true, p: Progress{State: tandem.JobPending}}
		}
		// Reads may have seen the job (and its progress) before its
		// submission returned: the job was created at or before them.
		return true, st
	case Read:
		if out.NotFound {
			return !st.exists, st
		}
		if out.Removed {
			return readRemoved(st, out.Progress.State)
		}
		switch {
		case !st.exists, st.removed:
			// Removal is final: the record is gone, and a read that shows
			// it after one that found it removed is time going backwards.
			return false, st
		case st.p.Stage == Terminal:
			return out.Progress == st.p, st // final: later reads return exactly it
		case out.Progress.Compare(st.p) < 0:
			return false, st // time going backwards
		}
		return true, state{exists: true, p: out.Progress}
	}
	return false, st
}

// readRemoved is a read that found the job removed by retention after it
// finished in state final (its tombstone's word). Such a read is a read of
// the job's final state that reveals nothing else (not its attempts): it is
// legal if the job exists and either has not been seen terminal yet (it
// finished, and was removed, since the last operation linearized before
// it) or was seen terminal in that very state. Removal is final: from then
// on, every read must find it removed in the same state.
func readRemoved(st state, final tandem.JobState) (bool, state) {
	switch {
	case !st.exists:
		return false, st // nothing that never existed is removed
	case st.removed || st.p.Stage == Terminal:
		if st.p.State != final {
			return false, st // a terminal state changed
		}
	}
	p := st.p
	if p.Stage != Terminal {
		p = Progress{Attempts: p.Attempts, Stage: Terminal, State: final}
	}
	return true, state{exists: true, removed: true, p: p}
}

// Model returns the porcupine model of jobs, partitioned by job: operations
// are Input and Output values (not pointers).
func Model() porcupine.Model {
	return porcupine.Model{
		Partition: partition,
		Init:      func() any { return state{} },
		Step: func(st, in, out any) (bool, any) {
			ok, next := step(st.(state), in.(Input), out.(Output))
			return ok, next
		},
		Equal: func(a, b any) bool { return a.(state) == b.(state) },
		Hash: func(st any) uint64 {
			s := st.(state)
			h := fnv.New64a()
			fmt.Fprintf(h, "%t/%t/%d/%d/%s", s.exists, s.removed, s.p.Attempts, s.p.Stage, s.p.State)
			return h.Sum64()
		},
		DescribeOperation: func(in, out any) string {
			i, o := in.(Input), out.(Output)
			switch {
			case i.Kind == Submit:
				return "submit " + i.Job
			case o.NotFound:
				return "read " + i.Job + " -> not found"
			case o.Removed:
				return "read " + i.Job + " -> removed (finished " + string(o.Progress.State) + ")"
			}
			return "read " + i.Job + " -> " + o.Progress.String()
		},
		DescribeState: func(st any) string {
			s := st.(state)
			switch {
			case !s.exists:
				return "not created"
			case s.removed:
				return "removed after it finished " + string(s.p.State)
			}
			return s.p.String()
		},
		DescribeOperationMetadata: func(md any) string {
			if s, ok := md.(string); ok && s != "" {
				return "answered by " + s
			}
			return ""
		},
	}
}

// partition splits a history into one history per job, in order of job ID.
func partition(ops []porcupine.Operation) [][]porcupine.Operation {
	byJob := map[string][]porcupine.Operation{}
	for _, op := range ops {
		id := op.Input.(Input).Job
		byJob[id] = append(byJob[id], op)
	}
	ids := make([]string, 0, len(byJob))
	for id := range byJob {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([][]porcupine.Operation, len(ids))
	for i, id := range ids {
		out[i] = byJob[id]
	}
	return out
}

// Result is the outcome of Check.
type Result struct {
	// Outcome is porcupine.Ok when the history is linearizable, Illegal
	// when it is not, and Unknown when the check ran out of time, which
	// proves nothing either way.
	Outcome porcupine.CheckResult
	// Illegal lists the jobs whose histories are not linearizable.
	Illegal []string
	// Info is porcupine's account of the check, for Visualize: of every
	// job's history, or only of the illegal ones when there are some.
	Info porcupine.LinearizationInfo
}

// Check checks that ops, a history of operations with Input and Output
// values, is linearizable, giving porcupine at most timeout (0: no limit).
func Check(ops []porcupine.Operation, timeout time.Duration) Result {
	m := Model()
	outcome, info := porcupine.CheckOperationsVerbose(m, ops, timeout)
	r := Result{Outcome: outcome, Info: info}
	if outcome != porcupine.Illegal {
		return r
	}
	// Name the culprits, and keep only their histories for the picture: a
	// visualisation of a thousand good jobs hides the bad one.
	var bad []porcupine.Operation
	for _, part := range partition(ops) {
		if porcupine.CheckOperationsTimeout(m, part, timeout) == porcupine.Illegal {
			r.Illegal = append(r.Illegal, part[0].Input.(Input).Job)
			bad = append(bad, part...)
		}
	}
	if len(bad) > 0 {
		_, r.Info = porcupine.CheckOperationsVerbose(m, bad, timeout)
	}
	return r
}

// Recorder collects a history from concurrent clients. Times are nanoseconds
// since the Recorder was made, from the monotonic clock.
type Recorder struct {
	start time.Time

	mu  sync.Mutex
	ops []porcupine.Operation
}

// NewRecorder returns an empty Recorder whose clock starts now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Start returns the time the Recorder's clock counts from.
func (r *Recorder) Start() time.Time { return r.start }

// Nanos returns t on the Recorder's clock.
func (r *Recorder) Nanos(t time.Time) int64 { return t.Sub(r.start).Nanoseconds() }

// Submit records an acknowledged submission of job, called at call and
// returned at ret, by client (0, 1, ...), answered by server via (the
// operation's metadata; "" if unknown). Submissions that failed are not
// recorded: whether they created a job is unknown.
func (r *Recorder) Submit(client int, via, job string, call, ret time.Time) {
	r.add(porcupine.Operation{ClientId: client, Input: Input{Kind: Submit, Job: job},
		Output: Output{}, Call: r.Nanos(call), Return: r.Nanos(ret), Metadata: via})
}

// Read records a read of job that returned j, or no such job when j is nil,
// answered by server via. Reads that failed are not recorded: they tell
// nothing.
func (r *Recorder) Read(client int, via, job string, j *tandem.Job, call, ret time.Time) {
	out := Output{NotFound: true}
	if j != nil {
		out = Output{Progress: ProgressOf(j)}
	}
	r.add(porcupine.Operation{ClientId: client, Input: Input{Kind: Read, Job: job},
		Output: out, Call: r.Nanos(call), Return: r.Nanos(ret), Metadata: via})
}

// ReadRemoved records a read of job that answered that retention had
// removed it after it finished in state final (HTTP 410 removed; the
// state is its tombstone's), answered by server via.
func (r *Recorder) ReadRemoved(client int, via, job string, final tandem.JobState, call, ret time.Time) {
	r.add(porcupine.Operation{ClientId: client, Input: Input{Kind: Read, Job: job},
		Output: Output{Removed: true, Progress: Progress{Stage: Terminal, State: final}},
		Call:   r.Nanos(call), Return: r.Nanos(ret), Metadata: via})
}

func (r *Recorder) add(op porcupine.Operation) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// Operations returns a copy of the history recorded so far.
func (r *Recorder) Operations() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ops)
}
