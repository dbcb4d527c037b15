package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The ledger service is the supervised command of most supervise tests: the
// e2e test binary itself, re-executed with ledgerModeEnv set, which init
// turns into the service before any test machinery starts. It appends to a
// ledger file shared by every node (the namespaces share the file system):
// a "start" line with its epoch as TANDEM_EPOCH and the epoch file give it, a
// heartbeat every ledgerBeat, and a "stop" line when SIGTERM ends it. It
// serves HTTP on ledgerPort: GET /health answers 503 while the file
// sick-<node> exists in LEDGER_DIR, 200 otherwise; any other path answers
// "<service> <node> <epoch> <pid>", for clients that reach it through its VIP.
const (
	ledgerModeEnv = "TANDEM_E2E_SERVICE"
	ledgerPort    = 8080
	ledgerBeat    = 10 * time.Millisecond
	// ledgerGap is the longest silence between two heartbeats of a run that
	// still counts as one stretch of running: longer means the process was
	// not running in between (frozen), or the machine starved it.
	ledgerGap = 150 * time.Millisecond
)

func init() {
	if os.Getenv(ledgerModeEnv) == "ledger" {
		os.Exit(runLedgerService())
	}
}

func runLedgerService() int {
	svc, node, epoch := os.Getenv("TANDEM_SERVICE"), os.Getenv("TANDEM_NODE"), os.Getenv("TANDEM_EPOCH")
	fileEpoch := "-"
	if p := os.Getenv("LEDGER_EPOCH_FILE"); p != "" {
		if b, err := os.ReadFile(p); err == nil {
			fileEpoch = strings.TrimSpace(string(b))
		} else {
			fileEpoch = "unreadable"
		}
	}
	f, err := os.OpenFile(os.Getenv("LEDGER"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		return 1
	}
	pid := os.Getpid()
	// One write per line: O_APPEND makes each land whole at the end, whoever
	// else writes the file.
	write := func(kind string) {
		_, _ = f.WriteString(fmt.Sprintf("%d %s %s %s %d %s %s\n", time.Now().UnixNano(), kind, svc, node, pid, epoch, fileEpoch))
	}
	write("start")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	var ln net.Listener
	for deadline := time.Now().Add(5 * time.Second); ; {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", ledgerPort))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ledger:", err)
		return 1
	}
	sick := filepath.Join(os.Getenv("LEDGER_DIR"), "sick-"+node)
	go func() {
		_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/health" {
				if _, err := os.Stat(sick); err == nil {
					http.Error(w, "sick", http.StatusServiceUnavailable)
					return
				}
				fmt.Fprintln(w, "ok")
				return
			}
			fmt.Fprintf(w, "%s %s %s %d\n", svc, node, epoch, pid)
		}))
	}()
	tick := time.NewTicker(ledgerBeat)
	for {
		select {
		case <-tick.C:
			write("hb")
		case <-sig:
			write("stop")
			return 0
		}
	}
}

// ledgerRun is one run of the ledger service: one process.
type ledgerRun struct {
	Service, Node string
	PID           int
	Epoch         string // TANDEM_EPOCH
	FileEpoch     string // what the epoch file said at the start ("-" if none)
	Start         time.Time
	Beats         []time.Time // the start, every heartbeat and the stop, in order
	Stopped       bool        // it wrote its stop line (SIGTERM)
}

func (r *ledgerRun) String() string {
	return fmt.Sprintf("%s on %s pid %d epoch %s", r.Service, r.Node, r.PID, r.Epoch)
}

// Last is the last sign of life of the run.
func (r *ledgerRun) Last() time.Time { return r.Beats[len(r.Beats)-1] }

// span is a stretch of time [from, to].
type span struct{ from, to time.Time }

// stretches splits the run's life into the stretches in which it wrote a
// heartbeat at least every ledgerGap: the time it was running. Each
// heartbeat stands for one heartbeat period of running, so a stretch ends a
// period after its last one.
func (r *ledgerRun) stretches() []span {
	var out []span
	cur := span{r.Beats[0], r.Beats[0]}
	for _, b := range r.Beats[1:] {
		if b.Sub(cur.to) > ledgerGap {
			out = append(out, span{cur.from, cur.to.Add(ledgerBeat)})
			cur = span{b, b}
			continue
		}
		cur.to = b
	}
	return append(out, span{cur.from, cur.to.Add(ledgerBeat)})
}

// readLedger reads every run in the ledger, ordered by start.
func readLedger(t *testing.T, path string) []*ledgerRun {
	t.Helper()
	runs, err := parseLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

// parseLedger is readLedger without a test to fail.
func parseLedger(path string) ([]*ledgerRun, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	byPID := map[int]*ledgerRun{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 7 {
			continue // a line cut short by a kill -9 while writing
		}
		ns, err1 := strconv.ParseInt(fields[0], 10, 64)
		pid, err2 := strconv.Atoi(fields[4])
		if err1 != nil || err2 != nil {
			continue
		}
		at := time.Unix(0, ns)
		r := byPID[pid]
		if r == nil {
			r = &ledgerRun{Service: fields[2], Node: fields[3], PID: pid, Epoch: fields[5], FileEpoch: fields[6], Start: at}
			byPID[pid] = r
		}
		r.Beats = append(r.Beats, at)
		if fields[1] == "stop" {
			r.Stopped = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the ledger: %w", err)
	}
	var runs []*ledgerRun
	for _, r := range byPID {
		sort.Slice(r.Beats, func(i, j int) bool { return r.Beats[i].Before(r.Beats[j]) })
		runs = append(runs, r)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].Start.Before(runs[j].Start) })
	return runs, nil
}

// runsOf returns the runs of svc ("" for all).
func runsOf(runs []*ledgerRun, svc string) []*ledgerRun {
	var out []*ledgerRun
	for _, r := range runs {
		if svc == "" || r.Service == svc {
			out = append(out, r)
		}
	}
	return out
}

// overlap measures how long runs of svc on two different nodes were running
// at the same time: the total length of the intersections of their
// stretches, and the heartbeats one run wrote inside a stretch of another.
// Either being non-zero means two nodes ran the command at once.
type overlap struct {
	Total time.Duration
	Beats int
	Pairs []string
}

func measureOverlap(runs []*ledgerRun, svc string) overlap {
	var o overlap
	rs := runsOf(runs, svc)
	for i, a := range rs {
		for _, b := range rs[i+1:] {
			if a.Node == b.Node {
				continue
			}
			var d time.Duration
			beats := 0
			for _, sa := range a.stretches() {
				beats += beatsWithin(b.Beats, sa)
				for _, sb := range b.stretches() {
					if from, to := later(sa.from, sb.from), earlier(sa.to, sb.to); to.After(from) {
						d += to.Sub(from)
					}
				}
			}
			for _, sb := range b.stretches() {
				beats += beatsWithin(a.Beats, sb)
			}
			if d > 0 || beats > 0 {
				o.Total += d
				o.Beats += beats
				o.Pairs = append(o.Pairs, fmt.Sprintf("%s and %s: %s, %d heartbeats", a, b, d.Round(time.Millisecond), beats))
			}
		}
	}
	return o
}

func beatsWithin(beats []time.Time, s span) int {
	n := 0
	for _, b := range beats {
		if !b.Before(s.from) && !b.After(s.to) {
			n++
		}
	}
	return n
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// checkLedger fails the test if two nodes ever ran svc at once, or a run
// started with an epoch file that disagreed with its TANDEM_EPOCH.
func checkLedger(t *testing.T, path, svc string) []*ledgerRun {
	t.Helper()
	runs := readLedger(t, path)
	if o := measureOverlap(runs, svc); o.Total > 0 || o.Beats > 0 {
		t.Errorf("two nodes ran %s at once for %s: %s", svc, o.Total, strings.Join(o.Pairs, "; "))
	}
	for _, r := range runsOf(runs, svc) {
		if r.FileEpoch != "-" && r.FileEpoch != r.Epoch {
			t.Errorf("%s started with epoch file %s, want its TANDEM_EPOCH %s", r, r.FileEpoch, r.Epoch)
		}
	}
	return runsOf(runs, svc)
}

// describeRuns lists runs for a log.
func describeRuns(runs []*ledgerRun) string {
	var b strings.Builder
	for _, r := range runs {
		fmt.Fprintf(&b, "\n  %s: %s to %s, %d beats, stopped %v", r, r.Start.Format("15:04:05.000"), r.Last().Format("15:04:05.000"), len(r.Beats), r.Stopped)
	}
	return b.String()
}
