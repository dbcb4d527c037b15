package haproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// prompt ends every reply of the runtime API in prompt mode: the output,
// then a newline and "> ". A command with no output answers "\n> ".
var prompt = []byte("\n> ")

// adminConn is the one persistent connection to a worker's admin socket
// (the runtime API) in prompt mode, so that a change of active costs one
// write and one read on an open socket. It is not safe for concurrent use:
// the Driver's mutex serialises it.
type adminConn struct {
	path    string
	timeout time.Duration // bound on every exchange, ctx may shorten it

	conn net.Conn
	buf  []byte // bytes read past the last reply
}

// run sends cmds in one write (pipelined) and returns one reply per
// command, each without its prompt. A connection the proxy closed while it
// sat idle (stats timeout, a worker that left after a reload) is replaced
// once; that is safe because nothing was answered on it, so nothing ran.
func (a *adminConn) run(ctx context.Context, cmds ...string) ([]string, error) {
	fresh := false
	if a.conn == nil {
		if err := a.dial(ctx); err != nil {
			return nil, err
		}
		fresh = true
	}
	replies, got, err := a.exchange(ctx, cmds)
	if err != nil && !fresh && got == 0 && ctx.Err() == nil {
		a.close()
		if err := a.dial(ctx); err != nil {
			return nil, err
		}
		replies, _, err = a.exchange(ctx, cmds)
	}
	if err != nil {
		a.close()
		return nil, err
	}
	return replies, nil
}

func (a *adminConn) dial(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "unix", a.path)
	if err != nil {
		return fmt.Errorf("%w: admin socket %s: %v", ErrUnreachable, a.path, err)
	}
	a.conn, a.buf = c, nil
	if _, _, err := a.exchange(ctx, []string{"prompt"}); err != nil {
		a.close()
		return fmt.Errorf("%w: admin socket %s: enter prompt mode: %v", ErrUnreachable, a.path, err)
	}
	return nil
}

func (a *adminConn) close() {
	if a.conn != nil {
		a.conn.Close()
		a.conn, a.buf = nil, nil
	}
}

// exchange writes cmds and reads len(cmds) replies; got is how many bytes
// came back, which tells a dead connection from a failed command.
func (a *adminConn) exchange(ctx context.Context, cmds []string) (replies []string, got int, err error) {
	c := a.conn
	c.SetDeadline(deadline(ctx, a.timeout))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req bytes.Buffer
	for _, cmd := range cmds {
		req.WriteString(cmd)
		req.WriteByte('\n')
	}
	// Write while reading: a long batch whose replies fill the socket
	// buffer would otherwise stall both ends until the deadline.
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(req.Bytes())
		werr <- err
	}()
	chunk := make([]byte, 32<<10)
	for len(replies) < len(cmds) {
		if i := bytes.Index(a.buf, prompt); i >= 0 {
			replies = append(replies, string(a.buf[:i]))
			a.buf = a.buf[i+len(prompt):]
			continue
		}
		n, rerr := c.Read(chunk)
		got += n
		a.buf = append(a.buf, chunk[:n]...)
		if rerr != nil {
			c.SetDeadline(time.Unix(1, 0)) // end the writer too
			<-werr
			return nil, got, fmt.Errorf("%w: admin socket %s: %q: %v", ErrUnreachable, a.path, cmds[len(replies)], ctxErr(ctx, rerr))
		}
	}
	if e := <-werr; e != nil {
		return nil, got, fmt.Errorf("%w: admin socket %s: %v", ErrUnreachable, a.path, ctxErr(ctx, e))
	}
	return replies, got, nil
}

// deadline is now+timeout, or ctx's deadline when that is sooner.
func deadline(ctx context.Context, timeout time.Duration) time.Time {
	dl := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		return d
	}
	return dl
}

// ctxErr prefers the context's error to the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// masterCmd runs one command on the master CLI (a new connection each
// time: the master re-executes itself on reload and drops them all) and
// returns its whole output.
func masterCmd(ctx context.Context, path string, timeout time.Duration, cmd string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "unix", path)
	if err != nil {
		return "", fmt.Errorf("%w: master socket %s: %v", ErrUnreachable, path, err)
	}
	defer c.Close()
	c.SetDeadline(deadline(ctx, timeout))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", fmt.Errorf("master socket %s: %q: %w", path, cmd, ctxErr(ctx, err))
	}
	// Without prompt mode the master answers and closes once our side is
	// shut for writing.
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return string(out), fmt.Errorf("master socket %s: %q: %w", path, cmd, ctxErr(ctx, err))
	}
	return string(out), nil
}

// info is what `show info` says about the worker answering.
type info struct {
	pid      int
	stopping bool // soft-stopping: an old worker after a reload
}

func parseInfo(out string) (info, error) {
	var in info
	var havePID bool
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Pid":
			n, err := strconv.Atoi(v)
			if err != nil {
				return in, fmt.Errorf("show info: Pid %q: %v", v, err)
			}
			in.pid, havePID = n, true
		case "Stopping":
			in.stopping = v != "0"
		}
	}
	if !havePID {
		return in, fmt.Errorf("show info: no Pid in %q", truncate(out, 200))
	}
	return in, nil
}

// procs is the master's `show proc`.
type procs struct {
	master  int
	reloads int // reloads the master went through, failed ones included
	failed  int // failed reloads since the last good one
	workers []int
	old     []int // soft-stopping workers of earlier generations
}

func parseProcs(out string) (procs, error) {
	var p procs
	section := ""
	haveMaster := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "#<PID>"):
			continue
		case strings.HasPrefix(line, "#"):
			section = strings.TrimSpace(strings.TrimPrefix(line, "#"))
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			return p, fmt.Errorf("show proc: line %q: %v", line, err)
		}
		switch {
		case f[1] == "master":
			p.master, haveMaster = pid, true
			if p.reloads, err = strconv.Atoi(f[2]); err != nil {
				return p, fmt.Errorf("show proc: master line %q: %v", line, err)
			}
			// "5 [failed: 1]"
			if i := strings.Index(line, "[failed:"); i >= 0 {
				rest := strings.TrimSpace(line[i+len("[failed:"):])
				n, _, _ := strings.Cut(rest, "]")
				if p.failed, err = strconv.Atoi(strings.TrimSpace(n)); err != nil {
					return p, fmt.Errorf("show proc: master line %q: %v", line, err)
				}
			}
		case f[1] == "worker" && section == "workers":
			p.workers = append(p.workers, pid)
		case f[1] == "worker" && section == "old workers":
			p.old = append(p.old, pid)
		}
	}
	if !haveMaster {
		return p, fmt.Errorf("show proc: no master in %q", truncate(out, 200))
	}
	return p, nil
}

// CommandError is a runtime API command that did not answer as it does on
// success.
type CommandError struct {
	Cmd   string
	Reply string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("haproxy: command %q: unexpected reply %q", e.Cmd, e.Reply)
}

// check matches each reply with what its command answers on success.
func check(cmds, replies []string) error {
	var errs []error
	for i, cmd := range cmds {
		if !replyOK(cmd, strings.TrimSpace(replies[i])) {
			errs = append(errs, &CommandError{Cmd: cmd, Reply: strings.TrimSpace(replies[i])})
		}
	}
	return errors.Join(errs...)
}

func replyOK(cmd, reply string) bool {
	switch {
	case strings.HasPrefix(cmd, "add server "):
		return reply == "New server registered."
	case strings.HasPrefix(cmd, "del server "):
		return reply == "Server deleted."
	case strings.HasPrefix(cmd, "set server ") && strings.Contains(cmd, " addr "):
		return strings.Contains(reply, "changed from") || strings.HasPrefix(reply, "no need to change")
	case strings.HasPrefix(cmd, "show "):
		return true
	default:
		// set server ... state|health, enable/disable server|health,
		// shutdown sessions: silent on success.
		return reply == ""
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
