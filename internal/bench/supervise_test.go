package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAnswer(t *testing.T) {
	tests := []struct {
		body    string
		node    string
		epoch   int64
		pid     int
		wantErr bool
	}{
		{body: "n2 57 4242\n", node: "n2", epoch: 57, pid: 4242},
		{body: "n1 0 1", node: "n1", epoch: 0, pid: 1},
		{body: "n1 57\n", wantErr: true},
		{body: "n1 x 4242", wantErr: true},
		{body: "n1 57 y", wantErr: true},
		{body: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			node, epoch, pid, err := parseAnswer(tt.body)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err == nil && (node != tt.node || epoch != tt.epoch || pid != tt.pid) {
				t.Errorf("got %s %d %d, want %s %d %d", node, epoch, pid, tt.node, tt.epoch, tt.pid)
			}
		})
	}
}

// at is a moment n milliseconds after a fixed origin.
func at(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }

func TestClientOutage(t *testing.T) {
	old := func(start, end int) answer {
		return answer{start: at(start), end: at(end), ok: true, epoch: 5, pid: 100}
	}
	nw := func(start, end int) answer {
		return answer{start: at(start), end: at(end), ok: true, epoch: 9, pid: 200}
	}
	fail := func(start, end int) answer { return answer{start: at(start), end: at(end)} }
	isOld := func(a answer) bool { return a.epoch == 5 && a.pid == 100 }
	isNew := func(a answer) bool { return a.epoch == 9 && a.pid == 200 }
	tests := []struct {
		name     string
		answers  []answer
		ok       bool
		lastOld  time.Time
		firstNew time.Time
		stale    int
	}{
		{
			name:    "clean failover",
			answers: []answer{old(0, 2), old(5, 7), fail(10, 1010), fail(15, 1015), nw(900, 1100), nw(1105, 1107)},
			ok:      true, lastOld: at(7), firstNew: at(1100),
		},
		{
			// Isolation: the old node keeps answering after the fault until
			// it fences itself; only the gap counts.
			name:    "old run answers until it fences itself",
			answers: []answer{old(0, 2), old(1400, 1402), fail(1500, 2500), nw(2000, 2010)},
			ok:      true, lastOld: at(1402), firstNew: at(2010),
		},
		{
			name:    "an old request in flight ends after the new run's first answer",
			answers: []answer{old(0, 2), nw(100, 110), old(50, 120)},
			ok:      true, lastOld: at(2), firstNew: at(110),
		},
		{
			name:    "the old run answers a request that started after the new run answered",
			answers: []answer{old(0, 2), nw(100, 110), old(200, 210)},
			ok:      true, lastOld: at(2), firstNew: at(110), stale: 1,
		},
		{
			name:    "the new run never answers",
			answers: []answer{old(0, 2), fail(10, 1010)},
			ok:      false,
		},
		{
			name:    "failed requests never count",
			answers: []answer{{start: at(0), end: at(1), epoch: 9, pid: 200}, nw(50, 60)},
			ok:      true, firstNew: at(60),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, ok := clientOutage(tt.answers, isOld, isNew)
			if ok != tt.ok {
				t.Fatalf("got ok %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if !o.LastOld.Equal(tt.lastOld) || !o.FirstNew.Equal(tt.firstNew) || o.Stale != tt.stale {
				t.Errorf("got last old %v, first new %v, stale %d; want %v, %v, %d",
					o.LastOld, o.FirstNew, o.Stale, tt.lastOld, tt.firstNew, tt.stale)
			}
		})
	}
}

func TestOverlaps(t *testing.T) {
	sp := func(node string, pid, first, last int) span {
		return span{Node: node, PID: pid, First: at(first), Last: at(last)}
	}
	tests := []struct {
		name  string
		spans []span
		want  []time.Duration // the overlaps' lengths, in order
	}{
		{name: "one after the other", spans: []span{sp("n1", 1, 0, 100), sp("n2", 2, 102, 300)}},
		{name: "same node, restarted", spans: []span{sp("n1", 1, 0, 100), sp("n1", 2, 100, 300)}},
		{name: "seen at the same instant", spans: []span{sp("n1", 1, 0, 100), sp("n2", 2, 100, 300)}, want: []time.Duration{0}},
		{name: "overlap", spans: []span{sp("n1", 1, 0, 150), sp("n2", 2, 100, 300)}, want: []time.Duration{50 * time.Millisecond}},
		{
			name:  "three nodes",
			spans: []span{sp("n1", 1, 0, 500), sp("n2", 2, 100, 200), sp("n3", 3, 400, 600)},
			want:  []time.Duration{100 * time.Millisecond, 100 * time.Millisecond},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := overlaps(tt.spans)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d overlaps (%v), want %d", len(got), got, len(tt.want))
			}
			for i, o := range got {
				if o.For != tt.want[i] {
					t.Errorf("overlap %d: got %v, want %v", i, o.For, tt.want[i])
				}
				if o.A.Node == o.B.Node {
					t.Errorf("overlap %d: got two spans of node %s, want two nodes", i, o.A.Node)
				}
			}
		})
	}
}

func TestScanLog(t *testing.T) {
	log := `{"time":"2026-11-30T08:31:51.670021413Z","level":"INFO","msg":"supervising","node":"n2"}
not json at all
{"time":"2026-11-30T08:32:09.714165961Z","level":"WARN","msg":"the service failed; restarting it in place","node":"n1","failures_in_window":1}
{"time":"2026-11-30T08:32:09.721000000Z","level":"INFO","msg":"started the command","node":"n1","pid":4321}
{"time":"2026-11-30T08:32:19.000000000Z","level":"INFO","msg":"started the command","node":"n1","pid":4400}
`
	got := scanLog(strings.NewReader(log))
	failed, ok := got[msgRestarting]
	if !ok || !failed.Time.Equal(time.Date(2026, 11, 30, 8, 32, 9, 714165961, time.UTC)) {
		t.Errorf("restart record: got %+v (found %v), want the one at 08:32:09.714165961", failed, ok)
	}
	started, ok := got[msgStarted]
	if !ok || started.PID != 4321 {
		t.Errorf("start record: got %+v (found %v), want the first one, pid 4321", started, ok)
	}

	path := filepath.Join(t.TempDir(), "supervisor.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	off := int64(strings.Index(log, `{"time":"2026-11-30T08:32:19`))
	lines, err := logFrom(path, off)
	if err != nil {
		t.Fatal(err)
	}
	if l := lines[msgStarted]; l.PID != 4400 {
		t.Errorf("from offset %d: got start pid %d, want 4400", off, l.PID)
	}
	if _, ok := lines[msgRestarting]; ok {
		t.Errorf("from offset %d: got a restart record before the offset, want none", off)
	}
}

func TestSummarizeLead(t *testing.T) {
	if got := summarizeLead(nil); got != nil {
		t.Errorf("no leads: got %+v, want nil", got)
	}
	ms := func(v int) time.Duration { return time.Duration(v) * time.Millisecond }
	got := summarizeLead([]time.Duration{ms(700), ms(-30), ms(400), ms(900)})
	if got.N != 4 || got.Min != -0.03 || got.P50 != 0.4 || got.P99 != 0.9 {
		t.Errorf("got %+v, want n 4, min -0.03, p50 0.4, p99 0.9", got)
	}
}

func TestSuperviseFaultSummarize(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	fr := SuperviseFault{Fault: FaultIsolate, Details: []SuperviseTrial{
		{DetectionS: f(2.0), OutageS: 0.7, LeadS: f(0.37)},
		{DetectionS: f(2.3), OutageS: 1.1, LeadS: f(0.69)},
		{OutageS: 0.9}, // a trial whose record was not found
	}}
	fr.summarize()
	switch {
	case fr.Trials != 3:
		t.Errorf("trials: got %d, want 3", fr.Trials)
	case fr.DetectionS.N != 2 || fr.DetectionS.Max != 2.3:
		t.Errorf("detection: got %+v, want 2 samples, max 2.3", fr.DetectionS)
	case fr.OutageS.N != 3 || fr.OutageS.P50 != 0.9:
		t.Errorf("outage: got %+v, want 3 samples, p50 0.9", fr.OutageS)
	case fr.ElectionS.N != 0:
		t.Errorf("election: got %+v, want no samples", fr.ElectionS)
	case fr.LeadS == nil || fr.LeadS.Min != 0.37:
		t.Errorf("lead: got %+v, want min 0.37", fr.LeadS)
	case fr.VIPLeadS != nil:
		t.Errorf("VIP lead: got %+v, want none", fr.VIPLeadS)
	}
}

func TestSuperviseResultFailed(t *testing.T) {
	if err := (&SuperviseResult{}).Failed(); err != nil {
		t.Errorf("no violation: got %v, want nil", err)
	}
	r := &SuperviseResult{Violations: []string{"two commands at once: n1 (pid 1) and n2 (pid 2)"}}
	if err := r.Failed(); err == nil || !strings.Contains(err.Error(), "two commands at once") {
		t.Errorf("a violation: got %v, want it named", err)
	}
	r = &SuperviseResult{Aborted: "freeze trial 3: no takeover"}
	if err := r.Failed(); err == nil || !strings.Contains(err.Error(), "no takeover") {
		t.Errorf("an aborted run: got %v, want it to fail with the reason", err)
	}
}

func TestSuperviseConfigValidate(t *testing.T) {
	good := func() SuperviseConfig {
		return SuperviseConfig{Nodes: 3, Trials: 1, LeaseTTL: 2 * time.Second, Fencing: FencingStrict,
			HealthInterval: 100 * time.Millisecond, ProbeEvery: 5 * time.Millisecond, BasePort: 20070}
	}
	c := good()
	if err := c.validate(); err != nil {
		t.Fatalf("good config: got %v, want nil", err)
	}
	if strings.Join(c.Faults, ",") != strings.Join(SuperviseFaults, ",") {
		t.Errorf("default faults: got %v, want %v", c.Faults, SuperviseFaults)
	}
	tests := []struct {
		name string
		edit func(*SuperviseConfig)
		want string
	}{
		{"unknown fault", func(c *SuperviseConfig) { c.Faults = []string{"freeze", "flood"} }, `"flood"`},
		{"one node", func(c *SuperviseConfig) { c.Nodes = 1 }, "nodes 1"},
		{"no trial", func(c *SuperviseConfig) { c.Trials = 0 }, "trials"},
		{"lease in ms", func(c *SuperviseConfig) { c.LeaseTTL = 1500 * time.Millisecond }, "1.5s"},
		{"fencing", func(c *SuperviseConfig) { c.Fencing = "none" }, `"none"`},
		{"probe", func(c *SuperviseConfig) { c.ProbeEvery = 0 }, "probe interval"},
		{"port", func(c *SuperviseConfig) { c.BasePort = 80 }, "base port 80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.edit(&c)
			err := c.validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error mentioning %s", err, tt.want)
			}
		})
	}
}

// The fence hook kills the fenced node's command cgroup (here a plain
// directory standing in for it, already empty) and refuses a node it does
// not know.
func TestFenceHook(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "cg")
	cg := filepath.Join(base, "n2", "services", "web")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.events"), []byte("populated 0\nfrozen 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(dir, "fence-hook")
	script := fenceHook([]string{"n1", "n2"}, map[string]string{"n1": "tdt-test-absent-n1", "n2": "tdt-test-absent-n2"},
		base, "10.99.0.200/24", "svc0")
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(node string) error {
		cmd := exec.Command(hook)
		cmd.Env = append(os.Environ(), "TANDEM_FENCE_NODE="+node, "TANDEM_SERVICE=web")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	if err := run("n2"); err != nil {
		t.Fatalf("fence n2: got %v, want exit 0", err)
	}
	if b, err := os.ReadFile(filepath.Join(cg, "cgroup.kill")); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Errorf("fence n2: cgroup.kill holds %q (%v), want 1", b, err)
	}
	if err := run("n1"); err != nil {
		t.Errorf("fence n1, which never ran the command (no cgroup): got %v, want exit 0", err)
	}
	if err := run("n9"); err == nil {
		t.Errorf("fence n9, an unknown node: got exit 0, want a failure")
	}
}

func TestIsZombie(t *testing.T) {
	tests := []struct {
		stat string
		want bool
	}{
		{"4242 (tandem) S 1 4242 4242 0 -1", false},
		{"4242 (tandem) Z 1 4242 4242 0 -1", true},
		{"4242 (a (b) c) Z 1", true},
		{"4242 (a) Z) R 1", false},
		{"garbage", false},
	}
	for _, tt := range tests {
		if got := isZombie([]byte(tt.stat)); got != tt.want {
			t.Errorf("isZombie(%q): got %v, want %v", tt.stat, got, tt.want)
		}
	}
}
