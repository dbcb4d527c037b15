package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

func TestScaleConfigRefusesBadValues(t *testing.T) {
	ok := ScaleConfig{Binary: "tandem"}
	for _, tt := range []struct {
		name string
		edit func(*ScaleConfig)
		want string
	}{
		{"no binary", func(c *ScaleConfig) { c.Binary = "" }, "binary"},
		{"unknown phase", func(c *ScaleConfig) { c.Phase = "both" }, "phase"},
		{"negative jobs", func(c *ScaleConfig) { c.Jobs = -1 }, "must be positive"},
		{"too many agents", func(c *ScaleConfig) { c.Agents = maxScaleAgents + 1 }, "at most"},
		{"unknown sessions", func(c *ScaleConfig) { c.AgentSessions = "some" }, "agent sessions"},
		{"short sample", func(c *ScaleConfig) { c.Sample = time.Millisecond }, "sample"},
		{"zero rate", func(c *ScaleConfig) { c.Rate = -3 }, "rate"},
		{"negative keep", func(c *ScaleConfig) { c.RetentionKeep = -1 }, "negative"},
		{"short tombstones", func(c *ScaleConfig) { c.TombstoneTTL = time.Millisecond }, "tombstone"},
		{"bad base port", func(c *ScaleConfig) { c.BasePort = 80 }, "base port"},
		{"ten servers", func(c *ScaleConfig) { c.Servers = 10 }, "servers"},
		{"long idle poll wait", func(c *ScaleConfig) { c.IdlePollWait = 2 * time.Minute }, "idle poll wait"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			_, err := c.withDefaults()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
	c, err := ok.withDefaults()
	if err != nil || c.Jobs != 1000000 || c.Agents != 1000 || c.Phase != ScalePhaseAll || c.RetentionAge != 30*time.Second {
		t.Errorf("defaults: got %+v, %v; want a million jobs, a thousand agents, both phases, retention after 30s", c, err)
	}
}

func TestParseVmRSSAndMetrics(t *testing.T) {
	rss, err := parseVmRSS([]byte("Name:\ttandem\nVmPeak:\t  9 kB\nVmRSS:\t  2048 kB\nThreads: 3\n"))
	if err != nil || rss != 2048<<10 {
		t.Errorf("parseVmRSS: got %d, %v; want %d", rss, err, 2048<<10)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthreadd\n")); err == nil {
		t.Error("parseVmRSS of a status without VmRSS: got no error")
	}
	m, err := parseMetrics(strings.NewReader(`# HELP tandem_jobs Jobs.
# TYPE tandem_jobs gauge
tandem_jobs{state="pending"} 12
tandem_jobs{state="a b"} 3
go_memstats_heap_inuse_bytes 1.5e+07
broken_line
`))
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{`tandem_jobs{state="pending"}`: 12, `tandem_jobs{state="a b"}`: 3, "go_memstats_heap_inuse_bytes": 1.5e7, "absent": 0} {
		if got := m.get(series); got != want {
			t.Errorf("%s: got %g, want %g", series, got, want)
		}
	}
}

// Flatness compares the middle and last thirds of the samples under load
// after retention began, and says when there are too few.
func TestFlatness(t *testing.T) {
	var ss []ScaleSample
	for i := 0; i < 9; i++ {
		db := int64(100 << 20)
		if i >= 6 {
			db = 130 << 20 // the last third grows by 30%
		}
		ss = append(ss, ScaleSample{T: float64(i), Load: true, Finished: int64(i * 1000), EtcdDB: db, Active: "rm1",
			RSS: map[string]int64{"rm1": 50 << 20}, Heap: map[string]int64{"rm1": 20 << 20}, FinishPS: 100})
	}
	ss = append(ss, ScaleSample{T: 9, Load: false, EtcdDB: 1 << 40}) // after the load: ignored
	byName := func(fs []Flatness) map[string]Flatness {
		m := map[string]Flatness{}
		for _, f := range fs {
			m[f.Measure] = f
		}
		return m
	}
	got := byName(flatness(ss, 0))
	if f := got["etcd db size"]; f.Verdict != "growing" || f.Middle != 100 || f.Last != 130 {
		t.Errorf("etcd db size: got %+v, want growing from 100 to 130 MiB", f)
	}
	if f := got["active RSS"]; f.Verdict != "flat (within 10%)" {
		t.Errorf("active RSS: got %+v, want flat", f)
	}
	// Retention began at t=5: only 4 samples under load from then on.
	for _, f := range flatness(ss, 5) {
		if !strings.HasPrefix(f.Verdict, "too few samples") {
			t.Errorf("%s: got verdict %q with 4 samples, want too few", f.Measure, f.Verdict)
		}
	}
}

// A real run, small: three server processes, a few hundred jobs through
// simulated agents with retention after a second, three graceful
// failovers, then thirty agents long-polling while jobs are submitted.
// Every job submitted ends succeeded or removed by retention, retention
// removes jobs during the run, every job of the agents phase reaches an
// agent, and no attempt goes to two agents. Needs the tandem binary:
// built here, or $TANDEM_BINARY.
func TestRunScaleSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real cluster (about 40 s)")
	}
	bin := os.Getenv("TANDEM_BINARY")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "tandem")
		build := exec.Command("go", "build", "-o", bin, "../../cmd/tandem")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build tandem: %v\n%s", err, out)
		}
	}
	var (
		mu  sync.Mutex
		ids []string
	)
	const jobs, keep = 300, 50
	states := map[string]int{}
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := RunScale(ctx, ScaleConfig{Binary: bin, Jobs: jobs, Clients: 4, Backlog: 100, JobAgents: 3,
		Sample: 500 * time.Millisecond, Transitions: true, Agents: 30, PollWait: 300 * time.Millisecond, IdlePollWait: time.Second, AgentsIdle: 2 * time.Second, AgentsDuration: 3 * time.Second, Rate: 20,
		RetentionAge: time.Second, RetentionKeep: keep, RetentionInterval: 500 * time.Millisecond, TombstoneTTL: time.Minute,
		BasePort: freePorts(t), DataDir: t.TempDir(), Out: &log,
		onSubmitted: func(id string) {
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
		},
		beforeStop: func(ctx context.Context, cl *client.Client) error {
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				j, err := cl.GetJob(ctx, id)
				switch {
				case errors.Is(err, tandem.ErrRemoved):
					states["removed"]++
				case err != nil:
					return fmt.Errorf("job %s: %w", id, err)
				case !j.State.Terminal():
					return fmt.Errorf("job %s is still %s", id, j.State)
				default:
					states[string(j.State)]++
				}
			}
			return nil
		},
	})
	t.Log(log.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Failed(); err != nil {
		t.Error(err)
	}
	j := res.Jobs
	if j.Submitted != jobs || j.Failed != 0 || j.Finished == 0 {
		t.Errorf("jobs phase: got %d submitted, %d failed, %d finished; want %d, 0, some", j.Submitted, j.Failed, j.Finished, jobs)
	}
	// Every job ended (a lost agent on an overloaded machine may end some
	// lost rather than succeeded) or was removed by retention (by the
	// check, after the agents phase, most or all of them: only the 50 most
	// recently finished are kept, and the agents phase finishes more).
	ended := 0
	for _, n := range states {
		ended += n
	}
	if len(ids) != jobs || ended != jobs || states["removed"] == 0 {
		t.Errorf("got %d jobs submitted, ending %v; want %d, each ended or removed, some removed", len(ids), states, jobs)
	}
	if len(j.Samples) < 3 || j.RetentionFirstS < 0 {
		t.Errorf("got %d samples, retention first removing at %gs; want at least 3, retention at work", len(j.Samples), j.RetentionFirstS)
	}
	if last := j.Samples[len(j.Samples)-1]; last.Tombstones == 0 || last.EtcdDB == 0 || last.RSS[last.Active] == 0 || last.Heap[last.Active] == 0 || last.LiveHeap[last.Active] == 0 {
		t.Errorf("last sample %+v: want tombstones, etcd's size, the active's RSS, heap and live heap", last)
	}
	if len(j.Transitions) != 3 {
		t.Fatalf("got %d transitions, want 3", len(j.Transitions))
	}
	for _, tr := range j.Transitions {
		if tr.TransitionS == nil || tr.To == tr.From || tr.To == "" {
			t.Errorf("transition %+v: want a timed move to another server", tr)
		}
	}
	a := res.Agents
	if a.Submitted == 0 || a.Failed != 0 || a.Assigned != a.Submitted || a.Unplaced != 0 || a.Latency.N != a.Submitted {
		t.Errorf("agents phase: got %d submitted, %d failed, %d assigned, %d not, %d latencies; want every submission assigned and timed",
			a.Submitted, a.Failed, a.Assigned, a.Unplaced, a.Latency.N)
	}
	if a.Idle.Syncs == 0 || a.Load.Syncs == 0 || a.Load.ActiveCPUS <= 0 {
		t.Errorf("agents phase: got idle %+v, load %+v; want syncs counted in both and the active's CPU", a.Idle, a.Load)
	}
}
