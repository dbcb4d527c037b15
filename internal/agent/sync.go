package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/endpoint"
)

const (
	syncPath = "/v1/agent/sync"
	// dialTimeout bounds connecting to a server whose machine does not answer.
	dialTimeout = 3 * time.Second
	// answerSlack is how long past the poll wait the agent waits for an
	// answer before it takes the server for hung and moves on.
	answerSlack = 3 * time.Second
	// maxRedirects is how many 307s one sync follows: a standby redirects
	// once, to the active; more means an election is under way or a loop.
	maxRedirects = 3
	// maxAnswerBytes bounds a sync answer.
	maxAnswerBytes = 64 << 20
	// quietWarn is the least time between two warnings that no server answers.
	quietWarn = 5 * time.Second
	// minEmptyGap paces a server that answers at once, again and again, with
	// nothing new (it ignores the long-poll wait, or repeats itself): at most
	// one such answer per gap.
	minEmptyGap = 10 * time.Millisecond
)

// syncLoop keeps a sync with the current server in flight until ctx ends.
// Failures move it round-robin to the next server, with backoff; local
// events (an attempt started or ended) cut the sync in flight short so the
// server hears of them at once.
func (a *Agent) syncLoop(ctx context.Context) {
	failures := 0
	var lastWarn time.Time
	answering := "" // the server that answered last, for logs
	for ctx.Err() == nil {
		idx, body, pollCtx, stop := a.composeSync(ctx)
		began := time.Now()
		resp, answeredBy, err := a.exchange(pollCtx, idx, body)
		kicked := pollCtx.Err() != nil && ctx.Err() == nil
		a.mu.Lock()
		a.pollStop = nil
		a.mu.Unlock()
		stop()
		if ctx.Err() != nil {
			return
		}
		if err != nil && kicked {
			continue // a local event: sync again at once, with the same server
		}
		acted := false
		if err == nil {
			acted, err = a.apply(resp, a.servers[answeredBy].base)
		}
		var fsErr *stateError
		switch {
		case err == nil:
		case errors.As(err, &fsErr):
			// The epoch could not be recorded, and acting on the answer
			// could break fencing after a restart; nothing was done.
			a.log.Error("cannot record the epoch; ignoring the answer", logEpoch, resp.Epoch, "err", err)
			if !sleepCtx(ctx, a.cfg.Backoff.Max) {
				return
			}
			continue
		default:
			failures++
			if !errors.Is(err, errDeposed) && time.Since(lastWarn) >= quietWarn {
				a.log.Warn("no server answers as the active; retrying", "server_url", a.servers[idx].base, "err", err, "failures", failures)
				lastWarn = time.Now()
			}
			a.advance(idx)
			if !sleepCtx(ctx, a.backoff(failures)) {
				return
			}
			continue
		}
		if failures > 0 || answering != resp.ServerID {
			a.log.Info("syncing with the active server", "server_url", a.servers[answeredBy].base, "server_id", resp.ServerID, logEpoch, resp.Epoch)
			answering = resp.ServerID
		}
		failures = 0
		lastWarn = time.Time{}
		if !acted && time.Since(began) < minEmptyGap {
			a.pause(ctx, minEmptyGap)
		}
	}
}

// stateError is a failure to write the agent's durable state.
type stateError struct{ err error }

func (e *stateError) Error() string { return e.err.Error() }
func (e *stateError) Unwrap() error { return e.err }

var errDeposed = errors.New("answer from a deposed server")

// composeSync builds the next sync request and makes its context: a child of
// ctx that a local event cancels (see kick).
func (a *Agent) composeSync(ctx context.Context) (idx int, body []byte, pollCtx context.Context, stop context.CancelFunc) {
	pollCtx, stop = context.WithCancel(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.kicked:
	default:
	}
	a.seq++
	req := tandem.SyncRequest{
		Agent:   a.info,
		Epoch:   a.epoch,
		Running: make([]tandem.AttemptReport, 0, len(a.running)),
		Done:    make([]tandem.AttemptReport, 0, len(a.done)),
		WaitMS:  int(a.cfg.PollWait / time.Millisecond),
		Seq:     a.seq,
	}
	for _, at := range a.running {
		req.Running = append(req.Running, at.runningReport())
	}
	for _, r := range a.done {
		req.Done = append(req.Done, r)
	}
	slices.SortFunc(req.Running, func(x, y tandem.AttemptReport) int { return strings.Compare(x.AttemptID, y.AttemptID) })
	slices.SortFunc(req.Done, func(x, y tandem.AttemptReport) int { return strings.Compare(x.AttemptID, y.AttemptID) })
	body, err := json.Marshal(req)
	if err != nil {
		panic(fmt.Sprintf("marshal sync request: %v", err)) // plain data always marshals
	}
	a.pollStop = stop
	return a.current, body, pollCtx, stop
}

// kick tells the sync loop that something happened locally: the sync in
// flight, composed before it, is cancelled and a new one sent at once.
func (a *Agent) kick() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pollStop != nil {
		a.pollStop()
	}
	select {
	case a.kicked <- struct{}{}:
	default:
	}
}

// pause waits d, or less if ctx ends or something happens locally.
func (a *Agent) pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-a.kicked:
	}
}

func (a *Agent) highestEpoch() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.epoch
}

// advance moves the current server past failed.
func (a *Agent) advance(failed int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.current == failed {
		a.current = (failed + 1) % len(a.servers)
	}
}

// backoff returns the sleep after the n-th failure in a row: none after the
// first (the next server is tried at once), then Base doubling up to Max,
// with jitter in [1/2, 1].
func (a *Agent) backoff(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := a.cfg.Backoff.Base
	for i := 2; i < n && d < a.cfg.Backoff.Max; i++ {
		d *= 2
	}
	d = min(d, a.cfg.Backoff.Max)
	half := int64(d / 2)
	return time.Duration(half + rand.Int64N(int64(d)-half+1))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// exchange sends one sync to server idx, following up to maxRedirects
// redirects with the same body. On a 200 it returns the answer and the
// index of the configured server that gave it (idx when the answer came from
// a server not configured); a redirect to a configured server makes that
// server the current one. Anything else is an error.
func (a *Agent) exchange(ctx context.Context, idx int, body []byte) (*tandem.SyncResponse, int, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.PollWait+answerSlack)
	defer cancel()
	target := a.servers[idx].base + syncPath
	for hops := 0; ; hops++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
		if err != nil {
			return nil, idx, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "tandem-agent/"+tandem.Version)
		resp, err := a.hc.Do(req)
		if err != nil {
			return nil, idx, fmt.Errorf("%s: %s", target, endpoint.Describe(err))
		}
		if resp.StatusCode == http.StatusTemporaryRedirect || resp.StatusCode == http.StatusPermanentRedirect {
			drain(resp)
			loc := resp.Header.Get("Location")
			next, err := resp.Request.URL.Parse(loc)
			switch {
			case loc == "" || err != nil || (next.Scheme != "http" && next.Scheme != "https"):
				return nil, idx, fmt.Errorf("%s: %d with an unusable Location %q", target, resp.StatusCode, loc)
			case hops == maxRedirects:
				return nil, idx, fmt.Errorf("%s: more than %d redirects", target, maxRedirects)
			}
			target = next.String()
			continue
		}
		answered := a.serverIndex(resp.Request.URL)
		if resp.StatusCode != http.StatusOK {
			msg := errorMessage(resp)
			return nil, idx, fmt.Errorf("%s: HTTP %d: %s", target, resp.StatusCode, msg)
		}
		var out tandem.SyncResponse
		err = json.NewDecoder(io.LimitReader(resp.Body, maxAnswerBytes)).Decode(&out)
		drain(resp)
		if err != nil {
			return nil, idx, fmt.Errorf("%s: undecodable answer: %s", target, endpoint.Describe(err))
		}
		if answered < 0 {
			answered = idx
		} else if answered != idx {
			a.mu.Lock()
			if a.current == idx {
				a.current = answered
			}
			a.mu.Unlock()
		}
		return &out, answered, nil
	}
}

// serverIndex returns the index of the configured server u belongs to, or -1.
func (a *Agent) serverIndex(u *url.URL) int {
	k := endpoint.KeyOf(u)
	for i, s := range a.servers {
		if s.key == k {
			return i
		}
	}
	return -1
}

// errorMessage reads an error answer: the server's own message when it is
// tandem's JSON envelope, else the start of the body.
func errorMessage(resp *http.Response) string {
	defer drain(resp)
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb tandem.ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		return eb.Error.Code + ": " + eb.Error.Message
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return strings.TrimSpace(string(b))
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// apply acts on an answer from server (a base URL, for logs). An answer
// whose epoch is lower than the highest seen is refused whole, with
// errDeposed: nothing in it is launched, killed or forgotten (I1). Otherwise
// apply records a higher epoch first, so that a restarted agent still
// refuses deposed servers (a *stateError, having done nothing, if it
// cannot), then forgets acknowledged reports, launches what it is assigned,
// and kills what it is told to kill. It reports whether anything in the
// answer was news. It is safe for concurrent use; answers are applied one at
// a time.
func (a *Agent) apply(resp *tandem.SyncResponse, server string) (acted bool, err error) {
	// Holding launchMu throughout keeps a concurrent answer with a higher
	// epoch from slipping in between the epoch check and the launches.
	a.launchMu.Lock()
	defer a.launchMu.Unlock()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return false, nil
	}
	if resp.Epoch < a.epoch {
		a.mu.Unlock()
		a.log.Warn("refused sync response from deposed server", "server_url", server, "server_id", resp.ServerID,
			logEpoch, resp.Epoch, "highest_epoch", a.epoch,
			"assignments_refused", len(resp.Assign), "kills_refused", len(resp.Kill))
		return false, errDeposed
	}
	if resp.Epoch > a.epoch {
		if err := a.st.writeEpoch(resp.Epoch); err != nil {
			a.mu.Unlock()
			return false, &stateError{err}
		}
		a.log.Info("new epoch", logEpoch, resp.Epoch, "previous", a.epoch, "server_id", resp.ServerID)
		a.epoch = resp.Epoch
	}
	for _, id := range resp.Ack {
		if _, ok := a.done[id]; !ok {
			continue
		}
		if err := a.st.removeReport(id); err != nil {
			a.log.Warn("cannot remove an acknowledged report; it will be sent again after a restart", logAttempt, id, "err", err)
		}
		delete(a.done, id)
		a.acked[id] = true
		acted = true
	}
	a.mu.Unlock()

	// Assignments before kill orders: an attempt assigned and killed in one
	// answer starts, is killed, and is reported killed, rather than being
	// skipped and assigned again forever.
	for _, as := range resp.Assign {
		if a.assign(as) {
			acted = true
		}
	}
	for _, k := range resp.Kill {
		if a.killOrder(k) {
			acted = true
		}
	}
	return acted, nil
}
