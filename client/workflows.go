package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/transport"
)

// Workflows (docs/API.md, "Workflows"; docs/WORKFLOWS.md). Running one goes
// to a server that owns a shard, as a submission does; cancel and retry go to
// the owner of the run's shard; reads are answered by any server from its
// view, linearizably. Every call blocks and fails over as SubmitJob does.

// RunWorkflow starts a run of the workflow spec and returns it. The
// idempotency key (opts.IdempotencyKey, or a random one) is sent unchanged on
// every attempt and redirect, so a retry after an ambiguous failure returns
// the run the first attempt started rather than start a second one, which
// would run every step twice. To make retries of RunWorkflow calls themselves
// safe, pass the same opts.IdempotencyKey to each; the same key with another
// spec is an idempotency_mismatch *tandem.Error.
func (c *Client) RunWorkflow(ctx context.Context, spec tandem.WorkflowSpec, opts SubmitOptions) (*tandem.Workflow, error) {
	key := opts.IdempotencyKey
	if key == "" {
		key = NewIdempotencyKey()
	}
	body, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("run workflow: encode spec: %w", err)
	}
	var wf tandem.Workflow
	if err := c.tr.Do(ctx, &transport.Call{Op: "run workflow", Method: http.MethodPost, Path: "/v1/workflows",
		Body: body, Header: http.Header{IdempotencyKeyHeader: {key}}, Active: true}, &wf); err != nil {
		return nil, err
	}
	return &wf, nil
}

// GetWorkflow returns workflow run id with the state of every step; one
// that does not exist matches tandem.ErrNotFound, one removed by retention
// tandem.ErrRemoved. It has no side effects.
func (c *Client) GetWorkflow(ctx context.Context, id string) (*tandem.Workflow, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "workflow ID is empty")
	}
	var wf tandem.Workflow
	if err := c.tr.Do(ctx, &transport.Call{Op: "get workflow " + strconv.Quote(id), Method: http.MethodGet,
		Path: "/v1/workflows/" + url.PathEscape(id), Active: true}, &wf); err != nil {
		return nil, err
	}
	return &wf, nil
}

// ListWorkflows returns one page of the workflow runs f selects, oldest
// first, and the cursor of the next page: pass it as f.After to get that
// page; "" means there is none. f.Limit 0 means the server's default (100);
// an unknown state or a limit outside 1..1000 is an invalid_argument
// *tandem.Error from the server. It has no side effects.
func (c *Client) ListWorkflows(ctx context.Context, f tandem.WorkflowFilter) ([]*tandem.Workflow, string, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.Schedule != "" {
		q.Set("schedule", f.Schedule)
	}
	if f.Query != "" {
		q.Set("q", f.Query)
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	if f.Limit != 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Workflows []*tandem.Workflow `json:"workflows"`
		Next      string             `json:"next"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "list workflows", Method: http.MethodGet, Path: "/v1/workflows",
		Query: q, Active: true}, &out); err != nil {
		return nil, "", err
	}
	if out.Workflows == nil {
		out.Workflows = []*tandem.Workflow{}
	}
	return out.Workflows, out.Next, nil
}

// CancelWorkflow cancels workflow run id and returns it: every step not
// finished is cancelled (a running step's job is killed) and the run ends
// cancelled once they have; a run that has already ended is returned
// unchanged. A run that does not exist matches tandem.ErrNotFound.
//
// A retry after an ambiguous failure that the server answers with a
// conflict, because the first attempt's cancel took effect, returns the
// cancelled run rather than the conflict.
func (c *Client) CancelWorkflow(ctx context.Context, id string) (*tandem.Workflow, error) {
	return c.workflowAction(ctx, id, "cancel", func(wf *tandem.Workflow) bool { return wf.Cancelled })
}

// RetryWorkflow retries workflow run id, which must have ended failed or
// cancelled (else the server answers with a conflict *tandem.Error): its
// steps that did not succeed, and every step after them, go back to pending
// and run again; succeeded steps keep their state and outputs. It returns the
// run, running again.
//
// A retry after an ambiguous failure that the server answers with a
// conflict, because the first attempt's retry took effect and the run is
// running again, returns that run rather than the conflict.
func (c *Client) RetryWorkflow(ctx context.Context, id string) (*tandem.Workflow, error) {
	return c.workflowAction(ctx, id, "retry", func(wf *tandem.Workflow) bool {
		return wf.State == tandem.WorkflowRunning && wf.Retried > 0
	})
}

// workflowAction posts action to workflow run id. done says, of the run
// read after a conflict on a repeated attempt, whether an earlier attempt of
// this call already did what it asked.
func (c *Client) workflowAction(ctx context.Context, id, action string, done func(*tandem.Workflow) bool) (*tandem.Workflow, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "workflow ID is empty")
	}
	cl := &transport.Call{Op: action + " workflow " + strconv.Quote(id), Method: http.MethodPost,
		Path: "/v1/workflows/" + url.PathEscape(id) + "/" + action, Body: []byte("{}"), Active: true}
	var wf tandem.Workflow
	err := c.tr.Do(ctx, cl, &wf)
	if err != nil && cl.Tries > 1 && tandem.ErrorCode(err) == tandem.ECONFLICT {
		if got, gerr := c.GetWorkflow(ctx, id); gerr == nil && done(got) {
			return got, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return &wf, nil
}

// WaitWorkflow polls workflow run id every poll (DefaultPoll when poll <=
// 0) until it has ended (its state is terminal) and returns it. Each poll
// is a GetWorkflow, with its failover; an error from it ends the wait. When
// ctx is done first, WaitWorkflow returns the run as last seen (nil if no
// poll answered) with an error wrapping context.Cause(ctx).
func (c *Client) WaitWorkflow(ctx context.Context, id string, poll time.Duration) (*tandem.Workflow, error) {
	if poll <= 0 {
		poll = DefaultPoll
	}
	var last *tandem.Workflow
	for {
		wf, err := c.GetWorkflow(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return last, fmt.Errorf("wait for workflow %q: %w", id, context.Cause(ctx))
			}
			return last, err
		}
		last = wf
		if wf.State.Terminal() {
			return wf, nil
		}
		if err := c.sleep(ctx, poll); err != nil {
			return last, fmt.Errorf("wait for workflow %q: %w", id, context.Cause(ctx))
		}
	}
}
