package bench

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/history"
	"github.com/tandemhq/tandem/internal/keys"
)

func TestSummarizeInts(t *testing.T) {
	tests := []struct {
		in   []int64
		want IntSummary
	}{
		{nil, IntSummary{}},
		{[]int64{7}, IntSummary{N: 1, P50: 7, P90: 7, P99: 7, Max: 7}},
		{[]int64{5, 1, 4, 2, 3}, IntSummary{N: 5, P50: 3, P90: 5, P99: 5, Max: 5}},
		{[]int64{10, 1, 2, 3, 4, 5, 6, 7, 8, 9}, IntSummary{N: 10, P50: 5, P90: 9, P99: 10, Max: 10}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.in), func(t *testing.T) {
			if got := SummarizeInts(tt.in); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestGapsOf(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	events := []ownerEvent{
		{At: at(0), Rev: 100, Shard: 1, Owner: "rm1", Epoch: 10, Deleted: true},
		{At: at(0), Rev: 100, Shard: 2, Owner: "rm1", Epoch: 11, Deleted: true},
		{At: at(30), Rev: 104, Shard: 1, Owner: "rm2", Epoch: 104},
		{At: at(5), Rev: 101, Shard: 3, Owner: "rm3", Epoch: 101}, // free before the events: no gap
		{At: at(50), Rev: 110, Shard: 2, Owner: "rm3", Epoch: 110},
		// Shard 2 moves again: a second gap.
		{At: at(60), Rev: 120, Shard: 2, Owner: "rm3", Epoch: 110, Deleted: true},
		{At: at(61), Rev: 121, Shard: 2, Owner: "rm2", Epoch: 121},
		// Shard 4 is still free at the end.
		{At: at(70), Rev: 130, Shard: 4, Owner: "rm1", Epoch: 12, Deleted: true},
	}
	gaps, open := gapsOf(events)
	type g struct {
		shard    int
		from, to string
		ms       int
		revs     int64
		ended    int64
	}
	var got []g
	for _, x := range gaps {
		got = append(got, g{x.Shard, x.From, x.To, int(x.Duration().Milliseconds()), x.Revs, x.Ended})
	}
	want := []g{{1, "rm1", "rm2", 30, 4, 100}, {2, "rm1", "rm3", 50, 10, 100}, {2, "rm3", "rm2", 1, 1, 120}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("gaps: got %+v, want %+v", got, want)
	}
	if len(open) != 1 || open[0].Shard != 4 {
		t.Errorf("open: got %+v, want shard 4 alone", open)
	}
	if n := len(deletionsOf(events, "rm1")); n != 3 {
		t.Errorf("deletions of rm1: got %d, want 3", n)
	}
	if n := creationsOf(events); n != 4 {
		t.Errorf("creations: got %d, want 4", n)
	}
}

func TestTenureGaps(t *testing.T) {
	ts := []history.Tenure{ // in order of epoch, as AuditEtcd returns them
		{Shard: 0, Owner: "rm1", Epoch: 5, Ended: 40},
		{Shard: 1, Owner: "rm2", Epoch: 6, Ended: 60},
		{Shard: 0, Owner: "rm2", Epoch: 43, Ended: 0},
		{Shard: 1, Owner: "rm3", Epoch: 70},
		{Shard: 2, Owner: "rm3", Epoch: 71},
	}
	got := tenureGaps(ts)
	want := []histGap{{Shard: 0, Ended: 40, Revs: 3}, {Shard: 1, Ended: 60, Revs: 10}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	// The same count as history.Audit.Gaps, which the result reports.
	if n := len((&history.Audit{Tenures: ts}).Gaps()); n != len(got) {
		t.Errorf("history.Audit.Gaps has %d gaps, tenureGaps %d", n, len(got))
	}
}

func TestMultisetDiff(t *testing.T) {
	tests := []struct {
		a, b []int64
		want int
	}{
		{nil, nil, 0},
		{[]int64{3, 1, 2}, []int64{1, 2, 3}, 0},
		{[]int64{1, 1, 2}, []int64{1, 2, 2}, 2},
		{[]int64{1, 2}, nil, 2},
	}
	for _, tt := range tests {
		if got := multisetDiff(tt.a, tt.b); got != tt.want {
			t.Errorf("multisetDiff(%v, %v): got %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestSummarizeCauses(t *testing.T) {
	det := func(s float64) *float64 { return &s }
	trials := []ShardTrial{
		{Cause: CauseCrash, ServersBefore: 3, ServersAfter: 2, Moved: 20, NewTenures: 20, TargetMoved: 20, FairShare: 64.0 / 3,
			GapsMS: []float64{10, 20}, AuditGapRevs: []int64{5, 7}, DetectionS: det(0.3), DowntimeMS: []float64{310, 320}, SettledS: 1},
		{Cause: CauseJoin, ServersBefore: 3, ServersAfter: 4, Moved: 18, NewTenures: 19, TargetMoved: 18, FairShare: 16,
			GapsMS: []float64{100}, AuditGapRevs: []int64{30}, SettledS: 2},
		{Cause: CauseCrash, ServersBefore: 3, ServersAfter: 2, Moved: 22, NewTenures: 24, TargetMoved: 22, FairShare: 64.0 / 3,
			GapsMS: []float64{30}, AuditGapRevs: []int64{9}, DetectionS: det(0.2), DowntimeMS: []float64{230}, SettledS: 3},
	}
	got := summarizeCauses(trials)
	if len(got) != 2 || got[0].Cause != CauseJoin || got[1].Cause != CauseCrash {
		t.Fatalf("got causes %+v, want join then crash", got)
	}
	c := got[1]
	if c.Trials != 2 || c.Change != "3->2" || c.Moved != 21 || c.NewTenures != 22 || c.TargetMoved != 21 {
		t.Errorf("crash: got %+v, want 2 trials 3->2, 21 moved, 22 new tenures, target 21", c)
	}
	if c.GapS.N != 3 || c.GapS.Max != 0.03 || c.GapRevs.N != 3 || c.GapRevs.Max != 9 {
		t.Errorf("crash gaps: got %+v and %+v, want 3 gaps, max 30 ms and 9 revisions", c.GapS, c.GapRevs)
	}
	if c.DetectionS.N != 2 || c.DetectionS.Max != 0.3 || c.DowntimeS.N != 3 {
		t.Errorf("crash detection: got %+v and downtime %+v, want 2 detections (max 0.3 s), 3 downtimes", c.DetectionS, c.DowntimeS)
	}
	if got[0].DetectionS.N != 0 {
		t.Errorf("join: got a detection %+v, want none", got[0].DetectionS)
	}
}

func TestRotate(t *testing.T) {
	urls := []string{"a", "b", "c"}
	for i, want := range []string{"a,b,c", "b,c,a", "c,a,b", "a,b,c"} {
		if got := strings.Join(rotate(urls, i), ","); got != want {
			t.Errorf("rotate(%d): got %s, want %s", i, got, want)
		}
	}
	if urls[0] != "a" {
		t.Errorf("rotate changed its input: %v", urls)
	}
}

// The watch of owner keys sees what was there, every deletion (naming the
// owner that went) and creation after, and ignores other keys and an owner
// rewriting its own key.
func TestOwnerWatch(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	layout := keys.New("default")
	const n = 4
	put := func(k int, id string) int64 {
		t.Helper()
		resp, err := cli.Put(ctx, layout.Shard(k, n).Owner, fmt.Sprintf(`{"id":%q,"url":"http://x"}`, id))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	del := func(k int) int64 {
		t.Helper()
		resp, err := cli.Delete(ctx, layout.Shard(k, n).Owner)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	put(0, "rm1")
	put(1, "rm2")
	w, err := watchOwners(ctx, cli, layout, n)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := w.snapshot(), []string{"rm1", "rm2", "", ""}; !reflect.DeepEqual(got, want) {
		t.Fatalf("first snapshot: got %v, want %v", got, want)
	}
	if _, err := w.waitFor(ctx, []string{"rm1", "rm2", "rm3", ""}, 200*time.Millisecond); err == nil {
		t.Fatal("waitFor owners that never were returned no error")
	}
	mark := w.mark()
	d := del(1)
	if _, err := cli.Put(ctx, layout.Shard(1, n).Handoff, `{"to":"rm3"}`); err != nil {
		t.Fatal(err)
	}
	c := put(1, "rm3")
	put(2, "rm3")
	put(2, "rm3") // the owner rewriting its key: not a new tenure
	rev, err := w.waitFor(ctx, []string{"rm1", "rm3", "rm3", ""}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rev < c {
		t.Errorf("waitFor: got revision %d, want at least %d", rev, c)
	}
	ev := w.since(mark)
	if len(ev) != 3 {
		t.Fatalf("got events %+v, want 3 (delete, create, create)", ev)
	}
	if !ev[0].Deleted || ev[0].Owner != "rm2" || ev[0].Rev != d || ev[0].Shard != 1 {
		t.Errorf("got %+v, want the deletion of rm2's key of shard 1 at revision %d", ev[0], d)
	}
	if ev[1].Deleted || ev[1].Owner != "rm3" || ev[1].Epoch != c {
		t.Errorf("got %+v, want rm3's key of shard 1 created at revision %d", ev[1], c)
	}
	gaps, _ := gapsOf(ev)
	if len(gaps) != 1 || gaps[0].Revs != c-d || gaps[0].Duration() < 0 {
		t.Errorf("got gaps %+v, want one of %d revisions", gaps, c-d)
	}
}
