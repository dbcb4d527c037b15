package ui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tandemhq/tandem"
)

// The log panel. GET /ui/jobs/{id}/log reads an attempt's log straight from
// the agent that ran it (Config.AgentClient), for any server: the job and
// the agent's URL come from this server's own view, so a standby serves it
// while the active is down, and the browser follows the log across a
// failover without noticing. Parameters:
//
//	attempt=N   the attempt (default the latest)
//	offset=B    start at byte B; with limit=L at most L bytes
//	tail=L      the last L bytes (the log's size is found first)
//	download=1  the whole log, as a file
//
// Answers carry X-Log-Start and X-Log-End (the byte range sent), X-Log-More
// (1 when more bytes follow the range right now) and X-Log-Live (1 while the
// attempt is live). static/ui.js appends only bytes past what it has, so a
// follow never re-appends the log (offset = the last X-Log-End).

// Log panel bounds.
const (
	maxLogChunk    = 1 << 20 // bytes in one answer
	defaultLogTail = 64 << 10
)

func (u *UI) jobLog(w http.ResponseWriter, r *http.Request) {
	j, _, err := u.svc.Job(r.PathValue("id"))
	if err != nil {
		logError(w, err)
		return
	}
	q := r.URL.Query()
	at := j.LastAttempt()
	if v := q.Get("attempt"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > len(j.Attempts) {
			logError(w, tandem.Errorf(tandem.EINVALID, "job %s has no attempt %q", j.ID, v))
			return
		}
		at = &j.Attempts[n-1]
	}
	if at == nil {
		logError(w, tandem.Errorf(tandem.ENOTFOUND, "job %s has no attempt yet (%s)", j.ID, j.State))
		return
	}
	agent, ok := u.svc.Agent(at.Agent)
	if !ok || agent.URL == "" {
		logError(w, tandem.Errorf(tandem.EUNAVAILABLE, "agent %s, which ran attempt %d, is not registered", at.Agent, at.Number))
		return
	}
	lr := logReader{u: u, base: agent.URL + "/v1/attempts/" + url.PathEscape(at.ID) + "/logs"}
	live := at.State.Live()
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Log-Attempt", strconv.Itoa(at.Number))
	h.Set("X-Log-Live", boolStr(live))

	if q.Get("download") == "1" {
		resp, err := lr.open(r.Context(), 0)
		if err != nil {
			logError(w, err)
			return
		}
		defer resp.Body.Close()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", fmt.Sprintf("%s-attempt-%d.log", j.ID, at.Number)))
		_, _ = io.Copy(w, resp.Body)
		return
	}

	var start, limit int64 = 0, maxLogChunk
	if v := q.Get("tail"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > maxLogChunk {
			logError(w, tandem.Errorf(tandem.EINVALID, "tail must be 1 to %d bytes", maxLogChunk))
			return
		}
		size, err := lr.size(r.Context())
		if err != nil {
			logError(w, err)
			return
		}
		start, limit = max(0, size-n), n
	} else {
		if v := q.Get("offset"); v != "" {
			if start, err = strconv.ParseInt(v, 10, 64); err != nil || start < 0 {
				logError(w, tandem.Errorf(tandem.EINVALID, "offset must be a byte count, not %q", v))
				return
			}
		}
		if v := q.Get("limit"); v != "" {
			if limit, err = strconv.ParseInt(v, 10, 64); err != nil || limit < 1 || limit > maxLogChunk {
				logError(w, tandem.Errorf(tandem.EINVALID, "limit must be 1 to %d bytes", maxLogChunk))
				return
			}
		}
	}
	b, more, err := lr.read(r.Context(), start, limit)
	if err != nil {
		logError(w, err)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Log-Start", strconv.FormatInt(start, 10))
	h.Set("X-Log-End", strconv.FormatInt(start+int64(len(b)), 10))
	h.Set("X-Log-More", boolStr(more))
	_, _ = w.Write(b)
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func logError(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(tandem.HTTPStatus(tandem.ErrorCode(err)))
	_, _ = io.WriteString(w, tandem.ErrorMessage(err))
}

// logReader reads one attempt's log from its agent.
type logReader struct {
	u    *UI
	base string
}

// logFetchTimeout bounds one read of a log from an agent.
const logFetchTimeout = 10 * time.Second

func (l logReader) open(ctx context.Context, offset int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.base+"?offset="+strconv.FormatInt(offset, 10), nil)
	if err != nil {
		return nil, err
	}
	resp, err := l.u.cfg.AgentClient.Do(req)
	if err != nil {
		return nil, tandem.Errorf(tandem.EUNAVAILABLE, "the agent is unreachable: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		code := tandem.EUNAVAILABLE
		if resp.StatusCode == http.StatusNotFound {
			code = tandem.ENOTFOUND
		}
		return nil, tandem.Errorf(code, "the agent answered %d: %s", resp.StatusCode, b)
	}
	return resp, nil
}

// read returns at most limit bytes from offset, and whether more follow.
// It stops reading (and drops the connection) past limit, so a huge log
// costs no more than the bytes asked for.
func (l logReader) read(ctx context.Context, offset, limit int64) ([]byte, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, logFetchTimeout)
	defer cancel()
	resp, err := l.open(ctx, offset)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, tandem.Errorf(tandem.EUNAVAILABLE, "reading the log from the agent: %v", err)
	}
	if int64(len(b)) > limit {
		return b[:limit], true, nil
	}
	return b, false, nil
}

// has reports whether the log has a byte at offset.
func (l logReader) has(ctx context.Context, offset int64) (bool, error) {
	b, _, err := l.read(ctx, offset, 1)
	return len(b) == 1, err
}

// size finds the log's length with reads of one byte: doubling, then
// halving (about 2·log2(size) small requests). The agent's log endpoint
// tells no size; this costs no transfer of the log itself.
func (l logReader) size(ctx context.Context) (int64, error) {
	ok, err := l.has(ctx, 0)
	if err != nil || !ok {
		return 0, err
	}
	lo, hi := int64(0), int64(defaultLogTail) // a byte at lo; hi unknown
	for {
		ok, err := l.has(ctx, hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 { // a byte at lo, none at hi
		mid := lo + (hi-lo)/2
		ok, err := l.has(ctx, mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}
