package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/transport"
)

// IdempotencyKeyHeader is the request header that carries a submission's
// idempotency key.
const IdempotencyKeyHeader = "Idempotency-Key"

// SubmitOptions are the options of SubmitJob.
type SubmitOptions struct {
	// IdempotencyKey identifies the submission: the active answers a
	// resubmission with the same key and spec with the job it already
	// created, and one with the same key and another spec with an
	// idempotency_mismatch error. When empty, SubmitJob generates a random
	// key for the call.
	IdempotencyKey string
}

// SubmitJob submits a job to the active server and returns the job as
// stored. It blocks until a server accepts the job, answers with an error
// that another server would repeat (any 4xx, or a 500), the backoff's
// attempts are exhausted (an unavailable *tandem.Error naming each server's
// last error), or ctx is done (an error wrapping context.Cause(ctx), which is
// ctx.Err() unless ctx was given a cause).
//
// SubmitJob is idempotent (I3): it sends the same idempotency key on every
// attempt and redirect, generating one per call when opts has none, so a
// retry after an ambiguous failure (the connection dropped after the active
// stored the job) returns the job created by the first attempt instead of
// creating a second. To make retries of SubmitJob calls themselves safe,
// pass the same opts.IdempotencyKey to each.
func (c *Client) SubmitJob(ctx context.Context, spec tandem.JobSpec, opts SubmitOptions) (*tandem.Job, error) {
	key := opts.IdempotencyKey
	if key == "" {
		key = NewIdempotencyKey()
	}
	body, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("submit job: encode spec: %w", err)
	}
	var job tandem.Job
	err = c.tr.Do(ctx, &transport.Call{
		Op:     "submit job",
		Method: http.MethodPost,
		Path:   "/v1/jobs",
		Body:   body,
		Header: http.Header{IdempotencyKeyHeader: {key}},
		Active: true,
	}, &job)
	if err != nil {
		return nil, err
	}
	return &job, nil
}

// NewIdempotencyKey returns a random idempotency key: 128 bits from
// crypto/rand, hex-encoded.
func NewIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return hex.EncodeToString(b[:])
}

// GetJob returns the job with the given ID from the active server. A job that
// does not exist is a *tandem.Error matching tandem.ErrNotFound; one that
// finished and was removed by retention matches tandem.ErrRemoved (410). It
// blocks and fails over as SubmitJob does; it has no side effects.
func (c *Client) GetJob(ctx context.Context, id string) (*tandem.Job, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "job ID is empty")
	}
	var job tandem.Job
	err := c.tr.Do(ctx, &transport.Call{
		Op:     "get job " + strconv.Quote(id),
		Method: http.MethodGet,
		Path:   "/v1/jobs/" + url.PathEscape(id),
		Active: true,
	}, &job)
	if err != nil {
		return nil, err
	}
	return &job, nil
}

// ListOptions select a page of jobs for ListJobs.
type ListOptions struct {
	Limit int             // jobs per page, 1..1000; 0 means the server's default (100)
	After string          // return jobs after this ID: JobList.Next of the previous page
	State tandem.JobState // only jobs in this state; empty means all
	// Schedule and Workflow, when set, select the jobs that schedule
	// started, or that workflow run started (one job per attempt of a
	// step).
	Schedule string
	Workflow string
}

// ListJobs returns one page of jobs, oldest first, from the active server.
// Pass the page's Next as opts.After to get the following page; an empty Next
// means there is none. It blocks and fails over as SubmitJob does; it has no
// side effects.
func (c *Client) ListJobs(ctx context.Context, opts ListOptions) (*tandem.JobList, error) {
	q := url.Values{}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.After != "" {
		q.Set("after", opts.After)
	}
	if opts.State != "" {
		q.Set("state", string(opts.State))
	}
	if opts.Schedule != "" {
		q.Set("schedule", opts.Schedule)
	}
	if opts.Workflow != "" {
		q.Set("workflow", opts.Workflow)
	}
	var list tandem.JobList
	err := c.tr.Do(ctx, &transport.Call{Op: "list jobs", Method: http.MethodGet, Path: "/v1/jobs", Query: q, Active: true}, &list)
	if err != nil {
		return nil, err
	}
	if list.Jobs == nil {
		list.Jobs = []*tandem.Job{}
	}
	return &list, nil
}

// Servers returns the live servers of the cluster's membership registry,
// sorted by ID, as whichever server answers first sees them (standbys answer
// too, so the answer does not change which server the client sticks to). It
// retries across servers like SubmitJob.
func (c *Client) Servers(ctx context.Context) ([]tandem.ServerInfo, error) {
	var resp struct {
		Servers []tandem.ServerInfo `json:"servers"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "list servers", Method: http.MethodGet, Path: "/v1/cluster/servers"}, &resp); err != nil {
		return nil, err
	}
	if resp.Servers == nil {
		resp.Servers = []tandem.ServerInfo{}
	}
	return resp.Servers, nil
}

// History returns the cluster's failover events, oldest first, from whichever
// server answers first. It retries across servers like SubmitJob.
func (c *Client) History(ctx context.Context) ([]tandem.FailoverEvent, error) {
	var resp struct {
		Events []tandem.FailoverEvent `json:"events"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "failover history", Method: http.MethodGet, Path: "/v1/ha/history"}, &resp); err != nil {
		return nil, err
	}
	if resp.Events == nil {
		resp.Events = []tandem.FailoverEvent{}
	}
	return resp.Events, nil
}

// ServerStatus returns the server at serverURL's own account of itself
// (GET /v1/ha/state). Like every per-server call it makes exactly one request,
// to serverURL only: no failover, no retry, no redirect. A server that cannot
// be reached is an unavailable *tandem.Error; a done ctx gives an error
// wrapping context.Cause(ctx).
func (c *Client) ServerStatus(ctx context.Context, serverURL string) (*tandem.ServerStatus, error) {
	var st tandem.ServerStatus
	if err := c.direct(ctx, serverURL, "server status", http.MethodGet, "/v1/ha/state", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Health reports whether the server at serverURL is healthy (GET /healthz
// answers 200): nil if so, else a *tandem.Error saying why (unreachable, or
// the status and body of its answer). It makes exactly one request, to
// serverURL only.
func (c *Client) Health(ctx context.Context, serverURL string) error {
	return c.direct(ctx, serverURL, "health check", http.MethodGet, "/healthz", nil, nil)
}

// Transition asks the server at serverURL to change its own HA state
// (POST /v1/ha/transition) and returns its status afterwards. While automatic
// failover is on the server refuses unless req.ForceManual is set, with a
// *tandem.Error of code refused_auto_failover whose message explains; making
// a server active while another is active is a conflict. It makes exactly one
// request, to serverURL only, and is not retried.
func (c *Client) Transition(ctx context.Context, serverURL string, req tandem.TransitionRequest) (*tandem.ServerStatus, error) {
	var st tandem.ServerStatus
	if err := c.direct(ctx, serverURL, "transition", http.MethodPost, "/v1/ha/transition", req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Failover asks the active at serverURL, which must be req.From, to hand
// leadership gracefully to req.To (POST /v1/ha/failover). It blocks until
// req.To is active or the server gives up, and returns the status of req.From
// afterwards; a server that is not the active answers with a conflict
// *tandem.Error. It makes exactly one request, to serverURL only, and is not
// retried.
func (c *Client) Failover(ctx context.Context, serverURL string, req tandem.HandoffRequest) (*tandem.ServerStatus, error) {
	var st tandem.ServerStatus
	if err := c.direct(ctx, serverURL, "failover", http.MethodPost, "/v1/ha/failover", req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Shards returns every shard's ownership (owner, epoch, since when, and in an
// active-active cluster its target and any hand-off under way), from
// whichever server answers first. A cluster of one shard has one entry,
// whose owner is the active. It retries across servers like SubmitJob.
func (c *Client) Shards(ctx context.Context) ([]tandem.ShardInfo, error) {
	var resp struct {
		Shards []tandem.ShardInfo `json:"shards"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "list shards", Method: http.MethodGet, Path: "/v1/cluster/shards"}, &resp); err != nil {
		return nil, err
	}
	if resp.Shards == nil {
		resp.Shards = []tandem.ShardInfo{}
	}
	return resp.Shards, nil
}

// Drain asks the server at serverURL to give up every shard it owns and
// take none (req.Drain), or to take shards again (!req.Drain), through
// POST /v1/ha/drain. Draining blocks until the server owns nothing or
// req.WaitMS passes (an unavailable *tandem.Error; the drain goes on);
// draining the last server that could take the shards is a conflict. It
// returns the server's status afterwards, and makes exactly one request, to
// serverURL only.
func (c *Client) Drain(ctx context.Context, serverURL string, req tandem.DrainRequest) (*tandem.ServerStatus, error) {
	var st tandem.ServerStatus
	if err := c.direct(ctx, serverURL, "drain", http.MethodPost, "/v1/ha/drain", req, &st); err != nil {
		return nil, err
	}
	return &st, nil
}
