package haproxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandemhq/tandem/internal/lb"
)

// checkConfig writes text next to the configuration file and has haproxy
// check it. It returns the temporary file, to rename into place.
func (d *Driver) checkConfig(ctx context.Context, text []byte) (string, error) {
	tmp, err := writeTemp(d.cfgPath, text)
	if err != nil {
		return "", fmt.Errorf("haproxy: write configuration: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, d.cfg.IOTimeout)
	defer cancel()
	out, err := exec.CommandContext(cctx, d.bin, "-c", "-f", tmp).CombinedOutput()
	if err == nil {
		return tmp, nil
	}
	os.Remove(tmp)
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	var alerts []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "[ALERT]") {
			alerts = append(alerts, strings.ReplaceAll(alertText(l), tmp, d.cfgPath))
		}
	}
	if len(alerts) == 0 {
		alerts = []string{strings.TrimSpace(string(out)), err.Error()}
	}
	d.log.Warn("haproxy rejected the configuration", keyError, strings.Join(alerts, "; "))
	return "", fmt.Errorf("%w: %s", ErrRejected, strings.Join(alerts, "; "))
}

// reload installs the checked file tmp and reloads the proxy, one reload
// at a time (the caller holds d.mu), and returns once the new worker
// answers; the caller then applies up and down to it. On failure the
// previous file is put back and the next Apply reloads again, whatever
// the proxy ended up running.
func (d *Driver) reload(ctx context.Context, tmp string, next lb.Desired, text []byte, reason string) error {
	start := time.Now()
	d.log.Info("haproxy reloading", keyReason, reason)
	if err := d.saveState(ctx, next); err != nil {
		// The new worker then starts from its configuration alone, until
		// the up and down applied below.
		d.log.Warn("haproxy server state not saved", keyError, err)
	}
	prev := d.curText
	if err := os.Rename(tmp, d.cfgPath); err != nil {
		return fmt.Errorf("haproxy: install configuration: %w", err)
	}
	// Our connection would keep the old worker alive and talking.
	d.adm.close()
	var err error
	if d.cfg.MasterSocket != "" {
		err = d.reloadMaster(ctx)
	} else {
		err = d.reloadCommand(ctx)
	}
	if err != nil {
		if len(prev) > 0 {
			if werr := writeAtomic(d.cfgPath, prev); werr != nil {
				d.log.Warn("haproxy previous configuration not restored", keyError, werr)
			}
		}
		// Whether the old worker still serves the old configuration or a
		// new one came up late, the next Apply reloads to be sure.
		d.cur = nil
		return err
	}
	d.curText = text
	clear(d.parked) // the new worker has only the configuration's servers
	d.log.Info("haproxy reloaded", keyTook, time.Since(start))
	return nil
}

// saveState writes the running servers' state for the next worker.
func (d *Driver) saveState(ctx context.Context, next lb.Desired) error {
	replies, err := d.runCurrent(ctx, "show servers state")
	if err != nil {
		return err
	}
	version, header, states, err := parseServersState(replies[0])
	if err != nil {
		return err
	}
	return writeAtomic(d.statePath, stateFile(version, header, states, next))
}

// reloadMaster reloads through the master CLI and waits for the master to
// count the reload, a new worker to be listed, and the admin socket to
// answer from it.
func (d *Driver) reloadMaster(ctx context.Context) error {
	before, err := d.showProc(ctx)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrReload, err)
	}
	mark := 0
	if p := d.proc.Load(); p != nil {
		mark = p.logs.mark()
	}
	// The master re-executes itself and drops the connection: no reply.
	if _, err := masterCmd(ctx, d.cfg.MasterSocket, d.cfg.IOTimeout, "reload"); errors.Is(err, ErrUnreachable) {
		return fmt.Errorf("%w: %v", ErrReload, err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ReloadTimeout)
	defer cancel()
	known := map[int]bool{}
	for _, pid := range append(before.workers, before.old...) {
		known[pid] = true
	}
	worker := 0
	for worker == 0 {
		if err := d.procAlive(); err != nil {
			return fmt.Errorf("%w: %v", ErrReload, err)
		}
		// Refused or reset while the master re-executes: ask again.
		if now, err := d.showProc(ctx); err == nil && now.reloads > before.reloads {
			if now.failed > before.failed {
				return fmt.Errorf("%w: the master kept the previous configuration%s", ErrReload, d.alerts(ctx, mark))
			}
			for _, pid := range now.workers {
				if !known[pid] {
					worker = pid
				}
			}
		}
		if worker == 0 {
			if err := waitCtx(ctx, 10*time.Millisecond); err != nil {
				return fmt.Errorf("%w: no new worker within %s: %v", ErrReload, d.cfg.ReloadTimeout, err)
			}
		}
	}
	return d.waitWorker(ctx, func(in info) bool { return in.pid == worker })
}

// reloadCommand runs ReloadCommand and waits for the admin socket to
// answer from a worker other than the one before.
func (d *Driver) reloadCommand(ctx context.Context) error {
	before, err := d.info(ctx)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrReload, err)
	}
	d.adm.close()
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ReloadTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.cfg.ReloadCommand[0], d.cfg.ReloadCommand[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %q: %v: %s", ErrReload, d.cfg.ReloadCommand, err, strings.TrimSpace(string(out)))
	}
	return d.waitWorker(ctx, func(in info) bool { return in.pid != before.pid })
}

// waitWorker polls the admin socket on new connections until the worker
// answering is the one ok wants and is not stopping.
func (d *Driver) waitWorker(ctx context.Context, ok func(info) bool) error {
	for {
		d.adm.close()
		if in, err := d.info(ctx); err == nil && ok(in) && !in.stopping {
			return nil
		}
		if err := d.procAlive(); err != nil {
			return fmt.Errorf("%w: %v", ErrReload, err)
		}
		if err := waitCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("%w: the new worker never answered on %s: %v", ErrReload, d.cfg.AdminSocket, err)
		}
	}
}

func (d *Driver) procAlive() error {
	if p := d.proc.Load(); p != nil {
		if done, err := p.exited(); done {
			return err
		}
	}
	return nil
}

// alerts quotes what the managed master said since mark. The master has
// written it by the time it counts the failure, but our reader may lag: it
// gets a moment to catch up. An external master's output is not ours to
// read (see the proxy's journal).
func (d *Driver) alerts(ctx context.Context, mark int) string {
	p := d.proc.Load()
	if p == nil {
		return ""
	}
	for range 50 {
		if a := p.logs.alerts(mark); len(a) > 0 {
			return quote(a)
		}
		if waitCtx(ctx, 10*time.Millisecond) != nil {
			break
		}
	}
	return ""
}

func quote(alerts []string) string {
	if len(alerts) == 0 {
		return ""
	}
	return ": " + strings.Join(alerts, "; ")
}

// writeTemp writes data to a new file beside path.
func writeTemp(path string, data []byte) (string, error) { return writeTempMode(path, data, 0o644) }

// writeTempMode is writeTemp with the file's mode; the file is never
// readable by others before it gets mode (CreateTemp makes it 0600).
func writeTempMode(path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), mode)
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// writeAtomic replaces path with data: a reader sees the old file or the
// new one, never part of one.
func writeAtomic(path string, data []byte) error { return writeAtomicMode(path, data, 0o644) }

// writeAtomicMode is writeAtomic with the file's mode.
func writeAtomicMode(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTempMode(path, data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
