package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/tandemhq/tandem"
)

// The agent's durable state lives in its work dir:
//
//	lock                  flock'ed while an agent runs on the dir
//	epoch                 the highest epoch seen per shard (I1), JSON, replaced atomically
//	ledger                every attempt ID ever launched, one per line, append-only (I4)
//	running/<attempt>     an attempt whose process may be running
//	reports/<attempt>.json  a finished attempt's report, until a server acknowledges it
//	attempts/<attempt>/   output.log and the default work dir of each attempt
const (
	lockFile    = "lock"
	epochFile   = "epoch"
	ledgerFile  = "ledger"
	runningDir  = "running"
	reportsDir  = "reports"
	attemptsDir = "attempts"
	logFile     = "output.log"
	outputsFile = "outputs" // a workflow step's KEY=VALUE outputs

	// tmpPrefix starts the names of files being written; no attempt ID
	// starts with a '.', so they never pass for one.
	tmpPrefix = ".tmp-"
)

// attemptIDPattern is what an attempt ID must look like to be used as a file
// name and a ledger line: no '/', no newline, never "." or "..".
var attemptIDPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

func validAttemptID(id string) bool { return attemptIDPattern.MatchString(id) }

// state is the agent's durable state on disk. Its methods are not safe for
// concurrent use; the Agent serializes them.
type state struct {
	dir    string
	lock   *os.File
	ledger *os.File
}

// openState creates the work dir's layout, takes its lock, and returns the
// state with the epochs, the ledger and the pending reports it holds. Attempts
// marked running (their agent process died with them, or the machine
// rebooted) become reports of lost attempts.
func openState(dir string, log *slog.Logger) (_ *state, epochs map[int]int64, ledger map[string]bool, reports map[string]tandem.AttemptReport, err error) {
	for _, d := range []string{dir, filepath.Join(dir, runningDir), filepath.Join(dir, reportsDir), filepath.Join(dir, attemptsDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("create work dir: %w", err)
		}
	}
	st := &state{dir: dir}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	// Two agents on one work dir would each trust their own copy of the
	// ledger and could both launch an attempt (I4).
	st.lock, err = os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(st.lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, nil, nil, fmt.Errorf("work dir %s is in use by another agent", dir)
		}
		return nil, nil, nil, nil, fmt.Errorf("lock work dir %s: %w", dir, err)
	}
	if epochs, err = st.readEpochs(); err != nil {
		return nil, nil, nil, nil, err
	}
	if ledger, err = st.openLedger(); err != nil {
		return nil, nil, nil, nil, err
	}
	if reports, err = st.readReports(); err != nil {
		return nil, nil, nil, nil, err
	}
	markers, err := os.ReadDir(filepath.Join(dir, runningDir))
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("read running markers: %w", err)
	}
	for _, m := range markers {
		id := m.Name()
		if strings.HasPrefix(id, tmpPrefix) {
			_ = os.Remove(filepath.Join(dir, runningDir, id)) // an interrupted write: that attempt never started
			continue
		}
		m := st.readMarker(id)
		if m.PID > 0 && m.Boot != "" && m.Boot == bootID() {
			if err := killLeftoverGroup(m.PID, m.Start); err != nil {
				log.Warn("cannot kill what is left of an attempt that ran before the agent restarted", logAttempt, id, "pgid", m.PID, "err", err)
			}
		}
		if _, ok := reports[id]; !ok && validAttemptID(id) {
			r := lostReport(id, m.Job)
			if err := st.writeReport(r); err != nil {
				return nil, nil, nil, nil, err
			}
			reports[id] = r
		}
		if err := os.Remove(filepath.Join(dir, runningDir, id)); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("remove running marker: %w", err)
		}
	}
	return st, epochs, ledger, reports, nil
}

func (st *state) close() {
	if st.ledger != nil {
		_ = st.ledger.Close()
	}
	if st.lock != nil {
		_ = st.lock.Close() // releases the flock
	}
}

// readEpochs reads the highest epoch seen per shard. The file holds a JSON
// object, shard to epoch ({"0":12,"5":40}); a plain integer is the format of
// tandem before sharding, the epoch of shard 0, and is read as such (the next
// write replaces it). A missing file means no epoch seen; anything else that
// does not parse stops the agent: without it the agent could obey a deposed
// owner (I1).
func (st *state) readEpochs() (map[int]int64, error) {
	path := filepath.Join(st.dir, epochFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[int]int64{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read epoch: %w", err)
	}
	epochs, err := parseEpochs(b)
	if err != nil {
		return nil, fmt.Errorf("epoch file %s is corrupt (%q: %v): refusing to start without knowing the highest epochs seen", path, b, err)
	}
	return epochs, nil
}

func parseEpochs(b []byte) (map[int]int64, error) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] != '{' {
		e, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil || e < 0 {
			return nil, errors.New("neither a JSON object nor an epoch")
		}
		return map[int]int64{0: e}, nil
	}
	epochs := map[int]int64{}
	if err := json.Unmarshal(b, &epochs); err != nil { // also refuses trailing data and an empty file
		return nil, err
	}
	for shard, e := range epochs {
		if e < 0 {
			return nil, fmt.Errorf("shard %d has a negative epoch, %d", shard, e)
		}
	}
	return epochs, nil
}

// writeEpochs durably replaces the highest epochs seen (I1): after a restart
// the agent still refuses deposed owners. It returns only once the file is
// on disk.
func (st *state) writeEpochs(epochs map[int]int64) error {
	b, err := json.Marshal(epochs) // keys sorted: the file reads the same for the same epochs
	if err != nil {
		return fmt.Errorf("encode epochs: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(st.dir, epochFile), append(b, '\n')); err != nil {
		return fmt.Errorf("write epochs: %w", err)
	}
	return nil
}

// openLedger reads the ledger and opens it for appending. A last line
// without its newline (a crash during an append) still counts as launched:
// the ledger errs on the side of never launching twice.
func (st *state) openLedger() (map[string]bool, error) {
	path := filepath.Join(st.dir, ledgerFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	st.ledger = f
	ids := make(map[string]bool)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 1<<20)
	last := byte('\n')
	for sc.Scan() {
		line := sc.Bytes()
		if id := strings.TrimSpace(string(line)); id != "" {
			ids[id] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read ledger: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat ledger: %w", err)
	}
	if fi.Size() > 0 {
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, fi.Size()-1); err != nil {
			return nil, fmt.Errorf("read ledger: %w", err)
		}
		last = b[0]
	}
	if last != '\n' {
		if _, err := f.Write([]byte("\n")); err != nil {
			return nil, fmt.Errorf("repair ledger: %w", err)
		}
	}
	return ids, nil
}

// appendLedger durably records that attempt id is about to be launched. It
// returns only after the ID is on disk (I4: write-ahead of the launch).
func (st *state) appendLedger(id string) error {
	if _, err := st.ledger.Write([]byte(id + "\n")); err != nil {
		return fmt.Errorf("append %s to the ledger: %w", id, err)
	}
	if err := st.ledger.Sync(); err != nil {
		return fmt.Errorf("sync the ledger: %w", err)
	}
	return nil
}

// marker is the content of running/<attempt>.
type marker struct {
	Job string `json:"job"`
	// PID is the attempt's process (and group) ID, Start its start time
	// (see procStartTime) and Boot the boot it ran in: enough for a
	// restarted agent to kill what is left of the group.
	PID   int    `json:"pid,omitempty"`
	Start uint64 `json:"start,omitempty"`
	Boot  string `json:"boot,omitempty"`
}

// markRunning durably notes, before its process starts, that attempt id's
// process may be running, so a restarted agent reports it lost rather than
// leaving the server to guess.
//
// With durable false the write skips its fsyncs: for details added after the
// start, which only help.
func (st *state) markRunning(id string, m marker, durable bool) error {
	b, _ := json.Marshal(m)
	if err := writeFile(filepath.Join(st.dir, runningDir, id), b, durable); err != nil {
		return fmt.Errorf("mark %s running: %w", id, err)
	}
	return nil
}

func (st *state) readMarker(id string) marker {
	var m marker
	b, _ := os.ReadFile(filepath.Join(st.dir, runningDir, id))
	_ = json.Unmarshal(b, &m) // a torn marker still names an attempt that may have run
	return m
}

func (st *state) unmarkRunning(id string) error {
	err := os.Remove(filepath.Join(st.dir, runningDir, id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove running marker of %s: %w", id, err)
	}
	return nil
}

func (st *state) reportPath(id string) string {
	return filepath.Join(st.dir, reportsDir, id+".json")
}

// writeReport durably stores a finished attempt's report until a server
// acknowledges it.
func (st *state) writeReport(r tandem.AttemptReport) error {
	if !validAttemptID(r.AttemptID) {
		return fmt.Errorf("report of invalid attempt ID %q not stored", r.AttemptID)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode report of %s: %w", r.AttemptID, err)
	}
	if err := writeFileAtomic(st.reportPath(r.AttemptID), append(b, '\n')); err != nil {
		return fmt.Errorf("write report of %s: %w", r.AttemptID, err)
	}
	return nil
}

// removeReport forgets an acknowledged report. No fsync: a report that comes
// back after a crash is sent again, and servers acknowledge it again.
func (st *state) removeReport(id string) error {
	if !validAttemptID(id) {
		return nil // never stored
	}
	err := os.Remove(st.reportPath(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove report of %s: %w", id, err)
	}
	return nil
}

func (st *state) readReports() (map[string]tandem.AttemptReport, error) {
	dir := filepath.Join(st.dir, reportsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read reports: %w", err)
	}
	out := make(map[string]tandem.AttemptReport)
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasPrefix(name, tmpPrefix) {
			_ = os.Remove(path) // an interrupted write; the report it was for is complete elsewhere or never existed
			continue
		}
		id, ok := strings.CutSuffix(name, ".json")
		if !ok || !validAttemptID(id) {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read report %s: %w", name, err)
		}
		var r tandem.AttemptReport
		if err := json.Unmarshal(bytes.TrimSpace(b), &r); err != nil || r.AttemptID != id {
			return nil, fmt.Errorf("report %s is corrupt; move it away to start the agent", path)
		}
		out[id] = r
	}
	return out, nil
}

// writeFileAtomic replaces path with data: a temporary file, fsync, rename,
// fsync of the directory. Readers see the old content or the new, never a mix.
func writeFileAtomic(path string, data []byte) error {
	return writeFile(path, data, true)
}

// writeFile replaces path with data through a temporary file and a rename,
// with fsyncs of the file and its directory when durable.
func writeFile(path string, data []byte, durable bool) error {
	tmp := filepath.Join(filepath.Dir(path), tmpPrefix+filepath.Base(path))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if !durable {
		return nil
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
