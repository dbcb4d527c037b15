package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/workflow"
)

// lostReason is the reason of an attempt that was launched by an earlier
// process of this agent: its process died with that agent process.
const lostReason = "launched before the agent restarted; its outcome is unknown"

// stopCause says why the agent is stopping an attempt's process.
type stopCause int

const (
	stopNone    stopCause = iota
	stopKill              // a kill order
	stopTimeout           // the spec's timeout ran out
)

// attempt is one launched attempt whose process runs.
type attempt struct {
	id, job string
	shard   int // the job's shard
	pid     int // also the process group's ID (Setpgid)
	started time.Time
	user    string // who it runs as
	outputs string // the outputs file of a workflow step ("" for other jobs)
	log     *slog.Logger
	timer   *time.Timer // the timeout, if any

	// sigMu orders signals against the leader's exit: signals to the group
	// are sent only while the leader is not yet reaped, so its PID, which is
	// the group's ID, cannot have been reused by an unrelated process.
	sigMu  sync.Mutex
	exited chan struct{} // closed, under sigMu, once the leader has exited

	// Guarded by Agent.mu.
	stop       stopCause
	stopReason string
}

func (at *attempt) runningReport() tandem.AttemptReport {
	started := at.started
	return tandem.AttemptReport{AttemptID: at.id, JobID: at.job, State: tandem.AttemptRunning, PID: at.pid, StartedAt: &started}
}

func lostReport(id, job string) tandem.AttemptReport {
	now := time.Now().UTC()
	return tandem.AttemptReport{AttemptID: id, JobID: job, State: tandem.AttemptLost, EndedAt: &now, Reason: lostReason}
}

// assign handles one assignment, whose epoch the caller has checked (I1),
// and reports whether it was news: not an attempt this process already runs
// or has reported. The caller holds launchMu, which makes the ledger check
// and the launch one step (I4).
func (a *Agent) assign(as tandem.Assignment) bool {
	id := as.AttemptID
	log := a.log.With(logAttempt, id, logJob, as.JobID, logShard, as.Shard, logEpoch, as.Epoch)
	a.mu.Lock()
	_, isDone := a.done[id]
	known := a.running[id] != nil || isDone || a.acked[id]
	a.mu.Unlock()
	if known {
		return false // launched by this process; the next sync reports it
	}
	if a.ledger[id] {
		// I4: launched by an earlier process of this agent, and neither
		// running nor reported since: it died with that process. Never
		// launch it again.
		a.finish(lostReport(id, as.JobID))
		log.Warn("assignment refused: the attempt was launched before the agent restarted; reporting it lost")
		return true
	}
	if !validAttemptID(id) {
		// Never launched, so never in the ledger: a report in memory only.
		now := time.Now().UTC()
		a.mu.Lock()
		a.done[id] = tandem.AttemptReport{AttemptID: id, JobID: as.JobID, State: tandem.AttemptFailed, EndedAt: &now,
			Reason: fmt.Sprintf("invalid attempt ID %q: want 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit", id)}
		a.mu.Unlock()
		log.Error("assignment refused: invalid attempt ID")
		a.kick()
		return true
	}

	// I4: the ID is on disk before any process can start. If the append
	// fails the attempt is not launched; the server sends it again.
	if err := a.st.appendLedger(id); err != nil {
		log.Error("cannot record the attempt in the ledger; not launching it", "err", err)
		return false
	}
	a.ledger[id] = true
	a.mu.Lock()
	a.launching[id] = true
	a.mu.Unlock()

	at, cmd, failure := a.launch(as, log)

	a.mu.Lock()
	delete(a.launching, id)
	if at != nil {
		a.running[id] = at
	}
	a.mu.Unlock()
	if at == nil {
		log.Warn("attempt could not start", "reason", failure.Reason)
		a.finish(failure)
		return true
	}
	log.Info("attempt launched", "pid", at.pid, "command", as.Spec.Command, "user", at.user)
	if t := as.Spec.Timeout.Std(); t > 0 {
		at.timer = time.AfterFunc(t, func() {
			if a.stopAttempt(at, stopTimeout, fmt.Sprintf("timed out after %s", t)) {
				at.log.Info("attempt timed out; stopping it", "timeout", t.String())
			}
		})
	}
	go a.wait(at, cmd)
	a.kick()
	return true
}

// launch starts an attempt's process. It returns the running attempt, or a
// failed report saying why the process could not start.
func (a *Agent) launch(as tandem.Assignment, log *slog.Logger) (*attempt, *exec.Cmd, tandem.AttemptReport) {
	id, spec := as.AttemptID, as.Spec
	fail := func(format string, args ...any) (*attempt, *exec.Cmd, tandem.AttemptReport) {
		now := time.Now().UTC()
		return nil, nil, tandem.AttemptReport{AttemptID: id, JobID: as.JobID, State: tandem.AttemptFailed, EndedAt: &now,
			Reason: fmt.Sprintf(format, args...)}
	}
	name := ""
	if len(spec.Command) > 0 {
		name = spec.Command[0]
	}
	if name == "" {
		return fail("cannot start the attempt: its command is empty")
	}
	// Who it runs as is settled before anything is created for it: an
	// attempt the agent may not run as its job's user never starts.
	user, err := a.users.forJob(spec.User)
	if err != nil {
		return fail("cannot start %q as user %q on agent %s: %v", name, spec.User, a.cfg.ID, err)
	}
	cred := a.users.credential(user)
	dir := filepath.Join(a.cfg.WorkDir, attemptsDir, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail("cannot start %q: the agent cannot create the attempt's directory: %v", name, err)
	}
	out, err := os.OpenFile(filepath.Join(dir, logFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fail("cannot start %q: the agent cannot create the attempt's log: %v", name, err)
	}
	defer out.Close() // the child has its own copy once started
	workDir := spec.WorkDir
	if workDir == "" {
		workDir = filepath.Join(dir, "work")
		if err := os.MkdirAll(workDir, 0o755); err != nil {
			return fail("cannot start %q: the agent cannot create the work dir: %v", name, err)
		}
		// The attempt's own dir is its user's to write; its log, one level
		// up, stays the agent's, written through the descriptor it inherits.
		if cred != nil {
			if err := os.Chown(workDir, int(user.uid), int(user.gid)); err != nil {
				return fail("cannot start %q: the agent cannot give the work dir to user %s: %v", name, user, err)
			}
		}
	} else if fi, err := os.Stat(workDir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fail("cannot start %q: workdir %q does not exist on agent %s", name, workDir, a.cfg.ID)
		}
		return fail("cannot start %q: workdir %q: %v", name, workDir, err)
	} else if !fi.IsDir() {
		return fail("cannot start %q: workdir %q is not a directory", name, workDir)
	}

	cmd := exec.Command(name, spec.Command[1:]...)
	cmd.Dir = workDir
	cmd.Env = os.Environ()
	if cred != nil {
		// As login(1) would; the job's env may still override them.
		cmd.Env = append(cmd.Env, "HOME="+user.home, "USER="+user.name, "LOGNAME="+user.name)
	}
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		cmd.Env = append(cmd.Env, k+"="+spec.Env[k])
	}
	cmd.Env = append(cmd.Env, "TANDEM_JOB_ID="+as.JobID, "TANDEM_ATTEMPT_ID="+id, "TANDEM_AGENT_ID="+a.cfg.ID,
		"TANDEM_SHARD="+strconv.Itoa(as.Shard), "TANDEM_EPOCH="+strconv.FormatInt(as.Epoch, 10))
	outputs := ""
	if spec.Env[tandem.EnvWorkflowID] != "" {
		// A workflow step may leave small outputs for the steps after it:
		// KEY=VALUE lines in a file of its own, read when it ends.
		outputs = filepath.Join(dir, outputsFile)
		f, err := os.OpenFile(outputs, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return fail("cannot start %q: the agent cannot create the outputs file: %v", name, err)
		}
		f.Close()
		if cred != nil {
			if err := os.Chown(outputs, int(user.uid), int(user.gid)); err != nil {
				return fail("cannot start %q: the agent cannot give the outputs file to user %s: %v", name, user, err)
			}
		}
		cmd.Env = append(cmd.Env, tandem.EnvOutputs+"="+outputs)
	}
	cmd.Stdout, cmd.Stderr = out, out // one *os.File: interleaved, and no copying goroutines
	// Its own process group, so a kill reaches its children too; and it
	// dies with the agent process, so a restarted agent never has an
	// attempt running that it does not know about.
	// Credential switches to the attempt's user (uid, gid, supplementary
	// groups) before exec; Go sets Pdeathsig after it, so the switch does
	// not clear it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}

	if err := a.st.markRunning(id, marker{Job: as.JobID}, true); err != nil {
		return fail("cannot start %q: the agent cannot record it: %v", name, err)
	}
	if err := cmd.Start(); err != nil {
		if err := a.st.unmarkRunning(id); err != nil {
			log.Warn("cannot remove the running marker", "err", err)
		}
		if cred != nil {
			return fail("cannot start %q as user %s: %v", name, user, err)
		}
		return fail("cannot start %q: %v", name, err)
	}
	at := &attempt{
		id: id, job: as.JobID, shard: as.Shard, pid: cmd.Process.Pid, started: time.Now().UTC(),
		user: user.name, log: log, exited: make(chan struct{}), outputs: outputs,
	}
	// The leader is not reaped yet, so its /proc entry is there. Recording
	// it lets a restarted agent kill the attempt's leftover children;
	// without it, only the leader dies with the agent.
	if start, err := procStartTime(at.pid); err == nil {
		if err := a.st.markRunning(id, marker{Job: as.JobID, PID: at.pid, Start: start, Boot: a.boot}, false); err != nil {
			log.Warn("cannot record the attempt's process in its running marker", "err", err)
		}
	}
	return at, cmd, tandem.AttemptReport{}
}

// wait reaps an attempt's process and reports how it ended.
func (a *Agent) wait(at *attempt, cmd *exec.Cmd) {
	if err := waitExited(at.pid); err != nil {
		at.log.Warn("waiting for the attempt's process without reaping it failed", "err", err)
	}
	at.sigMu.Lock()
	close(at.exited)
	// An attempt's processes do not outlive it: whatever it left behind in
	// its group goes too, while the unreaped leader still holds the group ID.
	_ = syscall.Kill(-at.pid, syscall.SIGKILL)
	at.sigMu.Unlock()
	waitErr := cmd.Wait()
	ended := time.Now().UTC()
	if at.timer != nil {
		at.timer.Stop()
	}

	a.mu.Lock()
	stop, stopReason := at.stop, at.stopReason
	a.mu.Unlock()

	started := at.started
	r := tandem.AttemptReport{AttemptID: at.id, JobID: at.job, PID: at.pid, StartedAt: &started, EndedAt: &ended}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ws.Exited():
		code := ws.ExitStatus()
		r.ExitCode = &code
	case ws.Signaled():
		r.Signal = ws.Signal().String()
	}
	switch {
	case stop == stopKill:
		r.State, r.Reason = tandem.AttemptKilled, stopReason
	case stop == stopTimeout:
		r.State, r.Reason = tandem.AttemptFailed, stopReason
	case r.ExitCode != nil && *r.ExitCode == 0:
		r.State = tandem.AttemptSucceeded
	case r.ExitCode != nil:
		r.State, r.Reason = tandem.AttemptFailed, fmt.Sprintf("exit status %d", *r.ExitCode)
	case r.Signal != "":
		r.State, r.Reason = tandem.AttemptFailed, "signal: "+r.Signal
	default:
		r.State, r.Reason = tandem.AttemptFailed, fmt.Sprintf("wait: %v", waitErr)
	}
	if at.outputs != "" {
		readOutputs(at.outputs, &r)
	}
	attrs := []any{"state", r.State, "duration", ended.Sub(started).Round(time.Millisecond).String()}
	if r.ExitCode != nil {
		attrs = append(attrs, "exit_code", *r.ExitCode)
	}
	if r.Signal != "" {
		attrs = append(attrs, "signal", r.Signal)
	}
	if r.Reason != "" {
		attrs = append(attrs, "reason", r.Reason)
	}
	at.log.Info("attempt ended", attrs...)
	a.finish(r)
}

// readOutputs adds to r the outputs a workflow step's attempt wrote to
// path. Outputs that cannot be read or parsed (too large, not KEY=VALUE)
// are not reported, and fail an attempt that would have succeeded: the
// steps after it would read wrong values.
func readOutputs(path string, r *tandem.AttemptReport) {
	f, err := os.Open(path)
	if err == nil {
		defer f.Close()
		var b []byte
		b, err = io.ReadAll(io.LimitReader(f, tandem.MaxOutputBytes+1))
		if err == nil {
			r.Outputs, err = workflow.ParseOutputs(b)
		}
	}
	if err != nil {
		r.Outputs = nil
		if r.State == tandem.AttemptSucceeded {
			r.State, r.Reason = tandem.AttemptFailed, "outputs ($"+tandem.EnvOutputs+"): "+tandem.ErrorMessage(err)
		}
	}
}

// finish records a finished attempt: its report goes to disk, then into the
// Done set (replacing it in the running set at the same instant), and the
// next sync carries it. After Close nothing is recorded: the agent behaves
// as if its process had died, and the next agent on the work dir reports
// the attempt lost.
func (a *Agent) finish(r tandem.AttemptReport) {
	a.diskMu.RLock()
	defer a.diskMu.RUnlock()
	if a.diskClosed {
		return
	}
	log := a.log.With(logAttempt, r.AttemptID, logJob, r.JobID)
	if err := a.st.writeReport(r); err != nil {
		// Still reported from memory; only a restart before the
		// acknowledgement would lose it (the server then declares the
		// attempt lost).
		log.Error("cannot persist the attempt's report", "err", err)
	}
	if err := a.st.unmarkRunning(r.AttemptID); err != nil {
		log.Warn("cannot remove the running marker", "err", err)
	}
	a.mu.Lock()
	delete(a.running, r.AttemptID)
	a.done[r.AttemptID] = r
	a.mu.Unlock()
	a.kick()
}

// killOrder carries out a kill order, whose epoch the caller has checked
// (I1), and reports whether it was news. Orders for attempts that do not run
// here (unknown, or already finished) and repeated orders are ignored; so is
// an order of another shard than the attempt's, whose epoch vouches for
// nothing about the attempt.
func (a *Agent) killOrder(k tandem.KillOrder) bool {
	a.mu.Lock()
	at := a.running[k.AttemptID]
	a.mu.Unlock()
	if at == nil {
		return false
	}
	if k.Shard != at.shard {
		at.log.Warn("kill order refused: it is for another shard than the attempt's", "order_shard", k.Shard, "order_epoch", k.Epoch)
		return false
	}
	reason := k.Reason
	if reason == "" {
		reason = "killed by the server"
	}
	if !a.stopAttempt(at, stopKill, reason) {
		return false
	}
	at.log.Info("killing attempt", "reason", reason, "grace", a.cfg.KillGrace.String())
	return true
}

// stopAttempt sends SIGTERM to the attempt's process group and SIGKILL after
// the kill grace if it still runs. Only the first stop of an attempt counts;
// it reports whether this one did.
func (a *Agent) stopAttempt(at *attempt, cause stopCause, reason string) bool {
	at.sigMu.Lock()
	defer at.sigMu.Unlock()
	if isClosed(at.exited) {
		return false
	}
	a.mu.Lock()
	first := at.stop == stopNone
	if first {
		at.stop, at.stopReason = cause, reason
	}
	a.mu.Unlock()
	if !first {
		return false
	}
	_ = syscall.Kill(-at.pid, syscall.SIGTERM)
	go func() {
		t := time.NewTimer(a.cfg.KillGrace)
		defer t.Stop()
		select {
		case <-t.C:
			at.signalGroup(syscall.SIGKILL)
		case <-at.exited:
		}
	}()
	return true
}

// signalGroup sends sig to the attempt's process group unless its leader
// has exited.
func (at *attempt) signalGroup(sig syscall.Signal) {
	at.sigMu.Lock()
	defer at.sigMu.Unlock()
	if !isClosed(at.exited) {
		_ = syscall.Kill(-at.pid, sig)
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// waitExited blocks until process pid has exited, without reaping it
// (waitid with WNOWAIT): until it is reaped, its PID stays reserved.
func waitExited(pid int) error {
	const pPID = 1     // idtype_t P_PID
	var info [128]byte // siginfo_t, unread
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info[0])), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		switch errno {
		case 0:
			return nil
		case syscall.EINTR:
			continue
		default:
			return errno
		}
	}
}
