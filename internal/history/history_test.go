package history

import (
	"slices"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tandemhq/tandem"
)

// op is one operation of a hand-written history: [call, ret] on a clock of
// small integers.
type op struct {
	client    int
	call, ret int64
	in        Input
	out       Output
}

func submit(client int, call, ret int64, job string) op {
	return op{client, call, ret, Input{Submit, job}, Output{}}
}

func read(client int, call, ret int64, job string, p Progress) op {
	return op{client, call, ret, Input{Read, job}, Output{Progress: p}}
}

func notFound(client int, call, ret int64, job string) op {
	return op{client, call, ret, Input{Read, job}, Output{NotFound: true}}
}

func removed(client int, call, ret int64, job string, final tandem.JobState) op {
	return op{client, call, ret, Input{Read, job}, Output{Removed: true, Progress: Progress{Stage: Terminal, State: final}}}
}

func ops(h []op) []porcupine.Operation {
	var out []porcupine.Operation
	for _, o := range h {
		out = append(out, porcupine.Operation{ClientId: o.client, Input: o.in, Output: o.out, Call: o.call, Return: o.ret})
	}
	return out
}

var (
	pending    = Progress{0, Pending, tandem.JobPending}
	scheduled1 = Progress{1, Scheduled, tandem.JobScheduled}
	running1   = Progress{1, Running, tandem.JobRunning}
	retrying1  = Progress{1, Retrying, tandem.JobPending}
	scheduled2 = Progress{2, Scheduled, tandem.JobScheduled}
	running2   = Progress{2, Running, tandem.JobRunning}
	succeeded1 = Progress{1, Terminal, tandem.JobSucceeded}
	failed1    = Progress{1, Terminal, tandem.JobFailed}
	succeeded2 = Progress{2, Terminal, tandem.JobSucceeded}
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		history []op
		illegal []string // jobs whose histories must be found illegal; nil: linearizable
	}{
		{"empty", nil, nil},
		{"submit then reads moving forward", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", pending),
			read(2, 40, 50, "a", scheduled1),
			read(1, 60, 70, "a", running1),
			read(2, 80, 90, "a", succeeded1),
			read(1, 100, 110, "a", succeeded1),
		}, nil},
		{"a retry: running, pending again, the next attempt", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", running1),
			read(1, 40, 50, "a", retrying1),
			read(2, 60, 70, "a", scheduled2),
			read(1, 80, 90, "a", running2),
			read(2, 100, 110, "a", succeeded2),
		}, nil},
		{"attempt 1 ends and the job fails for good", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", running1),
			read(1, 40, 50, "a", failed1),
		}, nil},
		{"a read sees the job before its submission returns", []op{
			submit(0, 0, 100, "a"),
			read(1, 10, 20, "a", running1),
			read(2, 30, 40, "a", succeeded1),
		}, nil},
		{"not found while the submission is under way", []op{
			submit(0, 0, 100, "a"),
			notFound(1, 10, 20, "a"),
			read(2, 30, 40, "a", pending),
		}, nil},
		{"concurrent reads may return in either order", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 60, "a", running1),
			read(2, 30, 50, "a", scheduled1),
		}, nil},
		{"repeating a level read is fine", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", running1),
			read(2, 40, 50, "a", running1),
		}, nil},
		{"removed after it was seen finished, in that state", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", succeeded1),
			removed(2, 40, 50, "a", tandem.JobSucceeded),
			removed(1, 60, 70, "a", tandem.JobSucceeded),
		}, nil},
		{"removed while last seen running: it finished since", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", running1),
			removed(2, 40, 50, "a", tandem.JobFailed),
		}, nil},
		{"a read concurrent with the removal may still find the record", []op{
			submit(0, 0, 10, "a"),
			removed(1, 20, 60, "a", tandem.JobSucceeded),
			read(2, 30, 50, "a", succeeded1),
		}, nil},

		{"running, then pending with no retry: time went backwards", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", running1),
			read(2, 40, 50, "a", pending),
		}, []string{"a"}},
		{"scheduled, then an earlier stage of the same attempt", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", running1),
			read(1, 40, 50, "a", scheduled1),
		}, []string{"a"}},
		{"attempt 2, then back to attempt 1's retry wait", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", scheduled2),
			read(2, 40, 50, "a", retrying1),
		}, []string{"a"}},
		{"not found after the submission returned", []op{
			submit(0, 0, 10, "a"),
			notFound(1, 20, 30, "a"),
		}, []string{"a"}},
		{"not found after a read found it", []op{
			submit(0, 0, 100, "a"),
			read(1, 10, 20, "a", pending),
			notFound(2, 30, 40, "a"),
		}, []string{"a"}},
		{"succeeded, then failed: a terminal state changed", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", succeeded1),
			read(2, 40, 50, "a", failed1),
		}, []string{"a"}},
		{"terminal, then running again", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", succeeded1),
			read(2, 40, 50, "a", running2),
		}, []string{"a"}},
		{"found again after it was found removed", []op{
			submit(0, 0, 10, "a"),
			removed(1, 20, 30, "a", tandem.JobSucceeded),
			read(2, 40, 50, "a", succeeded1),
		}, []string{"a"}},
		{"not found after it was found removed", []op{
			submit(0, 0, 10, "a"),
			removed(1, 20, 30, "a", tandem.JobSucceeded),
			notFound(2, 40, 50, "a"),
		}, []string{"a"}},
		{"removed in another state than it finished in", []op{
			submit(0, 0, 10, "a"),
			read(1, 20, 30, "a", succeeded1),
			removed(2, 40, 50, "a", tandem.JobFailed),
		}, []string{"a"}},
		{"removed before it was submitted", []op{
			removed(1, 0, 10, "a", tandem.JobSucceeded),
			submit(0, 20, 30, "a"),
		}, []string{"a"}},
		{"only the bad job is named", []op{
			submit(0, 0, 10, "a"),
			submit(1, 0, 10, "b"),
			read(2, 20, 30, "a", running1),
			read(2, 20, 30, "b", running1),
			read(3, 40, 50, "a", succeeded1),
			read(3, 40, 50, "b", scheduled1),
		}, []string{"b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Check(ops(tt.history), 10*time.Second)
			want := porcupine.Ok
			if tt.illegal != nil {
				want = porcupine.Illegal
			}
			if res.Outcome != want || !slices.Equal(res.Illegal, tt.illegal) {
				t.Fatalf("got %s, illegal jobs %v; want %s, %v", res.Outcome, res.Illegal, want, tt.illegal)
			}
		})
	}
}

func TestProgressOf(t *testing.T) {
	ended := tandem.Attempt{State: tandem.AttemptFailed}
	live := tandem.Attempt{State: tandem.AttemptRunning}
	tests := []struct {
		job  tandem.Job
		want Progress
	}{
		{tandem.Job{State: tandem.JobPending}, pending},
		{tandem.Job{State: tandem.JobScheduled, Attempts: []tandem.Attempt{{State: tandem.AttemptScheduled}}}, scheduled1},
		{tandem.Job{State: tandem.JobRunning, Attempts: []tandem.Attempt{live}}, running1},
		{tandem.Job{State: tandem.JobPending, Attempts: []tandem.Attempt{ended}}, retrying1},
		{tandem.Job{State: tandem.JobRunning, Attempts: []tandem.Attempt{ended, live}}, running2},
		{tandem.Job{State: tandem.JobFailed, Attempts: []tandem.Attempt{ended}}, failed1},
	}
	for _, tt := range tests {
		if got := ProgressOf(&tt.job); got != tt.want {
			t.Errorf("ProgressOf(%s with %d attempts) = %v, want %v", tt.job.State, len(tt.job.Attempts), got, tt.want)
		}
	}
	// The order a job goes through, and that a retry comes after the
	// attempt it retries.
	order := []Progress{pending, scheduled1, running1, retrying1, scheduled2, running2, succeeded2}
	for i := 1; i < len(order); i++ {
		if order[i-1].Compare(order[i]) >= 0 || order[i].Compare(order[i-1]) <= 0 {
			t.Errorf("%v is not behind %v", order[i-1], order[i])
		}
	}
}

func TestRecorderAndVisualize(t *testing.T) {
	r := NewRecorder()
	t0 := r.Start()
	r.Submit(0, "rm1", "a", t0, t0.Add(time.Millisecond))
	r.Read(1, "rm1", "a", &tandem.Job{State: tandem.JobRunning, Attempts: []tandem.Attempt{{}}}, t0.Add(2*time.Millisecond), t0.Add(3*time.Millisecond))
	r.Read(1, "rm1", "a", nil, t0.Add(4*time.Millisecond), t0.Add(5*time.Millisecond))
	h := r.Operations()
	if len(h) != 3 || h[1].Call != int64(2*time.Millisecond) || h[1].Metadata != "rm1" {
		t.Fatalf("recorded %+v", h)
	}
	res := Check(h, 10*time.Second)
	if res.Outcome != porcupine.Illegal || !slices.Equal(res.Illegal, []string{"a"}) {
		t.Fatalf("got %s %v, want the not-found read after running to be illegal", res.Outcome, res.Illegal)
	}
	if err := porcupine.VisualizePath(Model(), res.Info, t.TempDir()+"/a.html"); err != nil {
		t.Fatal(err)
	}
}
