package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tandemhq/tandem"
)

// jobLogs serves GET /v1/jobs/{id}/logs: the output of one attempt, fetched
// from the agent that ran it. ?attempt=N picks attempt number N (default the
// latest), ?follow=1 streams until the attempt ends, ?offset=B skips B bytes.
func (a *API) jobLogs(w http.ResponseWriter, r *http.Request) {
	job, _, err := a.srv.Job(r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	var at *tandem.Attempt
	if v := q.Get("attempt"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "attempt must be an attempt number (1, 2, ...), not %q", v))
			return
		}
		if n > len(job.Attempts) {
			a.writeError(w, r, tandem.Errorf(tandem.ENOTFOUND, "job %s has %d attempts, not %d", job.ID, len(job.Attempts), n))
			return
		}
		at = &job.Attempts[n-1]
	} else if at = job.LastAttempt(); at == nil {
		a.writeError(w, r, tandem.Errorf(tandem.ENOTFOUND, "job %s has no attempts yet (%s%s)", job.ID, job.State, reasonSuffix(job.Reason)))
		return
	}
	if v := q.Get("offset"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err != nil || n < 0 {
			a.writeError(w, r, tandem.Errorf(tandem.EINVALID, "offset must be a byte count, not %q", v))
			return
		}
	}
	agent, ok := a.srv.Agent(at.Agent)
	if !ok || agent.URL == "" {
		a.writeError(w, r, tandem.Errorf(tandem.EUNAVAILABLE, "agent %s, which ran attempt %s, is not registered", at.Agent, at.ID))
		return
	}
	up := url.Values{}
	if q.Get("follow") == "1" || q.Get("follow") == "true" {
		up.Set("follow", "1")
	}
	if v := q.Get("offset"); v != "" {
		up.Set("offset", v)
	}
	target := fmt.Sprintf("%s/v1/attempts/%s/logs?%s", agent.URL, url.PathEscape(at.ID), up.Encode())
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, target, nil)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := a.logClient.Do(req)
	if err != nil {
		a.writeError(w, r, tandem.Errorf(tandem.EUNAVAILABLE, "agent %s at %s is unreachable: %v", at.Agent, agent.URL, err))
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.Header().Set("X-Tandem-Attempt", at.ID)
	w.Header().Set("X-Tandem-Agent", at.Agent)
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && r.Context().Err() == nil {
				// Cut the connection rather than end the response cleanly, so
				// the client can tell a broken log from a complete one.
				a.log.Debug("log stream from agent broke", "agent", at.Agent, "attempt", at.ID, "err", err)
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

func reasonSuffix(reason string) string {
	if reason == "" {
		return ""
	}
	return ": " + reason
}
