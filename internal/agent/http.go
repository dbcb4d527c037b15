package agent

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tandemhq/tandem"
)

// followPoll is how often a followed log is checked for new bytes.
const followPoll = 100 * time.Millisecond

// handler serves the agent's HTTP API:
//
//	GET /healthz                  {"status":"ok","id":...}
//	GET /v1/agent                 the agent's Status
//	GET /v1/attempts/{id}/logs    an attempt's output; ?offset=N, ?follow=1
func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "id": a.cfg.ID})
	})
	mux.HandleFunc("GET /v1/agent", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status())
	})
	mux.HandleFunc("GET /v1/attempts/{id}/logs", a.serveLogs)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// serveLogs streams an attempt's output.log. With follow it keeps the
// response open, sending new bytes as they are written, until the attempt
// has ended and everything is sent, or the client goes away.
func (a *Agent) serveLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validAttemptID(id) {
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no attempt %q on agent %s", id, a.cfg.ID))
		return
	}
	q := r.URL.Query()
	var offset int64
	if v := q.Get("offset"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, tandem.Errorf(tandem.EINVALID, "offset must be a byte count, not %q", v))
			return
		}
		offset = n
	}
	follow := false
	switch v := q.Get("follow"); v {
	case "", "0", "false":
	case "1", "true":
		follow = true
	default:
		writeError(w, tandem.Errorf(tandem.EINVALID, "follow must be 1 or 0, not %q", v))
		return
	}
	f, err := os.Open(filepath.Join(a.cfg.WorkDir, attemptsDir, id, logFile))
	if errors.Is(err, fs.ErrNotExist) {
		writeError(w, tandem.Errorf(tandem.ENOTFOUND, "no attempt %q on agent %s", id, a.cfg.ID))
		return
	}
	if err != nil {
		writeError(w, tandem.Errorf(tandem.EINTERNAL, "open the log of attempt %s: %v", id, err))
		return
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		writeError(w, tandem.Errorf(tandem.EINTERNAL, "seek in the log of attempt %s: %v", id, err))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Tandem-Attempt", id)
	if !follow {
		_, _ = io.Copy(w, f)
		return
	}
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush() // the client knows at once that the stream is open
	buf := make([]byte, 32<<10)
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	for {
		// Whether the attempt is over is read before the file, so the bytes
		// it wrote last are sent before the stream ends.
		over := !a.isLive(id)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				if ferr := rc.Flush(); ferr != nil {
					return
				}
			}
			if err != nil || n == 0 {
				break // io.EOF: all written so far is sent
			}
		}
		if over {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

// isLive reports whether attempt id's process runs, or is about to.
func (a *Agent) isLive(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.running[id] != nil || a.launching[id]
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err *tandem.Error) {
	writeJSON(w, tandem.HTTPStatus(err.Code), tandem.ErrorBody{Error: err})
}
