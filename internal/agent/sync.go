package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/transport"
)

const (
	syncPath = "/v1/agent/sync"
	// dialTimeout bounds connecting to a server whose machine does not answer.
	dialTimeout = 3 * time.Second
	// answerSlack is how long past the poll wait a session waits for an
	// answer before it takes its server for hung and tries again.
	answerSlack = 3 * time.Second
	// quietWarn is how long no session may go without an answer before the
	// agent warns, and the least time between two such warnings.
	quietWarn = 5 * time.Second
	// minEmptyGap paces a server that answers at once, again and again, with
	// nothing new (it ignores the long-poll wait, or repeats itself): at most
	// one such answer per gap.
	minEmptyGap = 10 * time.Millisecond
)

// stateError is a failure to write the agent's durable state.
type stateError struct{ err error }

func (e *stateError) Error() string { return e.err.Error() }
func (e *stateError) Unwrap() error { return e.err }

// composeSync builds the next sync request of session s and makes its
// context: a child of ctx that a local event cancels (see kick). wait is
// how long the server may hold it (pollWaitLocked).
func (a *Agent) composeSync(ctx context.Context, s *session) (body []byte, wait time.Duration, pollCtx context.Context, stop context.CancelFunc) {
	pollCtx, stop = context.WithCancel(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	wait = a.pollWaitLocked(s)
	select {
	case <-s.kicked: // this request carries whatever the kick was for
	default:
	}
	a.seqs[s.srv.key]++
	req := tandem.SyncRequest{
		Agent:   a.info,
		Epochs:  maps.Clone(a.epochs),
		Running: make([]tandem.AttemptReport, 0, len(a.running)),
		Done:    make([]tandem.AttemptReport, 0, len(a.done)),
		WaitMS:  int(wait / time.Millisecond),
		Session: s.srv.key,
		Seq:     a.seqs[s.srv.key],
	}
	if req.Epochs == nil {
		req.Epochs = map[int]int64{}
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
	s.pollStop = stop
	return body, wait, pollCtx, stop
}

// pollWaitLocked is how long s's server may hold the next sync: PollWait,
// or IdlePollWait while its last answer, with no failure since, said it owns
// no shard. A standby has nothing to tell the agent until it takes a shard,
// and then it answers the sync it holds at once (the server wakes held
// syncs when its shards change), so the longer wait costs no delay; it
// spares the fleet most of its requests to standbys. The caller holds a.mu.
func (a *Agent) pollWaitLocked(s *session) time.Duration {
	if !s.lastAnswer.IsZero() && s.failures == 0 && len(s.terms) == 0 {
		return a.cfg.IdlePollWait
	}
	return a.cfg.PollWait
}

// exchange is the HTTP exchange of one sync: it posts body to the server at
// base, and only to it (transport.Direct: no failover, no redirect
// followed), and returns the server's answer. It waits at most the sync's
// poll wait plus answerSlack, less if ctx ends first. Anything but a 2xx with a
// decodable answer is an error: the server's own *tandem.Error when it
// answered with tandem's JSON envelope (its code prefixed to the message),
// a *transport.NoAnswerError when it did not answer. A redirect, from a
// server of an older version that sent agents to its active, is an error
// too: each session talks to its one server.
func (a *Agent) exchange(ctx context.Context, base string, body []byte, pollWait time.Duration) (*tandem.SyncResponse, error) {
	wait := pollWait + answerSlack
	ctx, cancel := context.WithTimeoutCause(ctx, wait, fmt.Errorf("%s: no answer within %s", base, wait))
	defer cancel()
	var out tandem.SyncResponse
	err := a.tr.Direct(ctx, base, &transport.Call{Op: "sync", Method: http.MethodPost, Path: syncPath, Body: body}, &out)
	var te *tandem.Error
	switch {
	case err == nil:
		return &out, nil
	case errors.As(err, &te):
		return nil, fmt.Errorf("%s: %w", te.Code, err)
	default:
		return nil, err
	}
}
