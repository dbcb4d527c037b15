package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/transport"
)

// DefaultPoll is how often WaitJob asks for the job when given no interval.
const DefaultPoll = 200 * time.Millisecond

// defaultFollowCheck is how long a followed log stream may bring nothing
// before FollowJobLogs asks the cluster whether the attempt has ended or the
// active has changed (a hung active keeps its connections open).
const defaultFollowCheck = 5 * time.Second

// Response headers of GET /v1/jobs/{id}/logs.
const (
	attemptHeader = "X-Tandem-Attempt" // the ID of the attempt whose log this is
)

// KillJob asks the active server to kill the job with the given ID and
// returns the job afterwards: killed at once if it had not started, else
// with KillRequested set, ending killed once its agent reports. Killing a
// job that has already ended is a conflict *tandem.Error; a job that does
// not exist matches tandem.ErrNotFound. It blocks and fails over as
// SubmitJob does.
//
// KillJob is idempotent: a retry after an ambiguous failure (the connection
// dropped after the active killed the job) that the server answers with a
// conflict because the job is now killed returns that job, not the
// conflict.
func (c *Client) KillJob(ctx context.Context, id string) (*tandem.Job, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "job ID is empty")
	}
	cl := &transport.Call{
		Op:     "kill job " + strconv.Quote(id),
		Method: http.MethodPost,
		Path:   "/v1/jobs/" + url.PathEscape(id) + "/kill",
		Active: true,
	}
	var job tandem.Job
	err := c.tr.Do(ctx, cl, &job)
	if err != nil && cl.Tries > 1 && tandem.ErrorCode(err) == tandem.ECONFLICT {
		// An earlier attempt may have killed a job that had not started,
		// which ends it at once; the retry then finds it ended.
		if j, gerr := c.GetJob(ctx, id); gerr == nil && j.State == tandem.JobKilled && j.KillRequested {
			return j, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return &job, nil
}

// Agents returns the agents the active server knows, ready and lost, with
// what each has in use. It blocks and fails over as SubmitJob does; it has
// no side effects.
func (c *Client) Agents(ctx context.Context) ([]tandem.AgentStatus, error) {
	var resp struct {
		Agents []tandem.AgentStatus `json:"agents"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "list agents", Method: http.MethodGet, Path: "/v1/cluster/agents", Active: true}, &resp); err != nil {
		return nil, err
	}
	if resp.Agents == nil {
		resp.Agents = []tandem.AgentStatus{}
	}
	return resp.Agents, nil
}

// WaitJob polls the job with the given ID every poll (DefaultPoll when
// poll <= 0) until it has ended (its state is terminal) and returns it.
// Each poll is a GetJob, with its failover; an error from it ends the wait.
// When ctx is done first, WaitJob returns the job as last seen (nil if no
// poll answered) with an error wrapping context.Cause(ctx).
func (c *Client) WaitJob(ctx context.Context, id string, poll time.Duration) (*tandem.Job, error) {
	if poll <= 0 {
		poll = DefaultPoll
	}
	var last *tandem.Job
	for {
		job, err := c.GetJob(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return last, fmt.Errorf("wait for job %q: %w", id, context.Cause(ctx))
			}
			return last, err
		}
		last = job
		if job.State.Terminal() {
			return job, nil
		}
		if err := c.sleep(ctx, poll); err != nil {
			return last, fmt.Errorf("wait for job %q: %w", id, context.Cause(ctx))
		}
	}
}

// LogOptions select the log JobLogs and FollowJobLogs read.
type LogOptions struct {
	// Attempt is the attempt's number (1, 2, ...); 0 means the latest.
	Attempt int
	// Follow keeps the stream open until the attempt ends.
	Follow bool
	// Offset skips this many bytes of the log.
	Offset int64
}

func (o LogOptions) validate() error {
	switch {
	case o.Attempt < 0:
		return tandem.Errorf(tandem.EINVALID, "attempt is %d: give an attempt number (1, 2, ...) or 0 for the latest", o.Attempt)
	case o.Offset < 0:
		return tandem.Errorf(tandem.EINVALID, "offset is %d: it must not be negative", o.Offset)
	}
	return nil
}

// JobLogs returns the log of one attempt of the job: its stdout and stderr,
// combined, as the agent that ran it recorded them, proxied by the active
// server. The request fails over and follows redirects as GetJob does; once
// a server answers, the body streams from it, with no failover: with
// opts.Follow it stays open until the attempt ends, and a failover of the
// active breaks it (FollowJobLogs resumes after one). The caller must close
// it.
//
// A job with no attempts yet is a *tandem.Error matching tandem.ErrNotFound
// whose message says the job's state and why; an agent the active cannot
// reach is an unavailable one.
func (c *Client) JobLogs(ctx context.Context, id string, opts LogOptions) (io.ReadCloser, error) {
	resp, err := c.openLogs(ctx, id, opts)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

func (c *Client) openLogs(ctx context.Context, id string, opts LogOptions) (*http.Response, error) {
	if id == "" {
		return nil, tandem.Errorf(tandem.EINVALID, "job ID is empty")
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	q := url.Values{}
	if opts.Attempt > 0 {
		q.Set("attempt", strconv.Itoa(opts.Attempt))
	}
	if opts.Follow {
		q.Set("follow", "1")
	}
	if opts.Offset > 0 {
		q.Set("offset", strconv.FormatInt(opts.Offset, 10))
	}
	return c.tr.Exchange(ctx, &transport.Call{
		Op:     "logs of job " + strconv.Quote(id),
		Method: http.MethodGet,
		Path:   "/v1/jobs/" + url.PathEscape(id) + "/logs",
		Query:  q,
		Header: http.Header{"Accept": {"text/plain, application/json"}},
		Active: true,
		Stream: true,
	}, nil)
}

// FollowJobLogs copies the log of one attempt of the job to w as it grows,
// until the attempt has ended and its log has been copied in full; it
// returns nil then. opts selects the attempt (0: the latest when the first
// request is answered; it stays the one followed) and where to start;
// opts.Follow is implied.
//
// It survives failovers of the Active: when the stream breaks before the
// attempt has ended (the active died), or brings nothing for a while and
// the cluster says the active has changed (the active hung), it asks again
// through the failover path with the offset of the bytes already written,
// so w receives every byte of the log exactly once. It returns an error when
// a request fails after the client's own retries (such as the job's agent
// being unreachable), when writing to w fails, or, wrapping
// context.Cause(ctx), when ctx is done.
func (c *Client) FollowJobLogs(ctx context.Context, id string, opts LogOptions, w io.Writer) error {
	opts.Follow = true
	var (
		attemptID string
		written   int64
		// ended: the attempt was seen ended before the current stream was
		// opened, so a stream that ends cleanly has brought all of the log.
		ended bool
		idle  int // streams in a row that brought nothing
	)
	for {
		o := opts
		o.Offset += written
		sctx, cancel := context.WithCancel(ctx)
		resp, err := c.openLogs(sctx, id, o)
		if err != nil {
			cancel()
			return err
		}
		if attemptID == "" {
			attemptID = resp.Header.Get(attemptHeader)
		}
		n, readErr, writeErr := c.copyStream(sctx, cancel, resp, w, id, attemptID)
		cancel()
		written += n
		if writeErr != nil {
			return fmt.Errorf("logs of job %q: write: %w", id, writeErr)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("logs of job %q: %w", id, context.Cause(ctx))
		}
		if readErr == nil && ended {
			return nil
		}
		job, err := c.GetJob(ctx, id)
		if err != nil {
			return err
		}
		at := findAttempt(job, attemptID, opts.Attempt)
		if at == nil {
			return tandem.Errorf(tandem.EINTERNAL, "logs of job %q: the job has no attempt %s", id, attemptRef(attemptID, opts.Attempt))
		}
		opts.Attempt = at.Number // reconnect to this attempt, even if a retry has started another
		if !at.State.Live() {
			ended = true
		}
		if n > 0 {
			idle = 0
			continue
		}
		idle++
		if d := c.tr.Backoff().Jittered(idle, c.randN); d > 0 {
			if err := c.sleep(ctx, d); err != nil {
				return fmt.Errorf("logs of job %q: %w", id, context.Cause(ctx))
			}
		}
	}
}

// copyStream copies resp's body to w until it ends, returning the bytes
// written, the read error (nil for a clean end) and the write error. While
// the stream brings nothing for c.followCheck, a watchdog asks the cluster
// for the job and cancels the stream (through cancel) when its attempt has
// ended or the active is no longer the server the stream comes from: a hung
// active would otherwise hold the stream open for ever.
func (c *Client) copyStream(ctx context.Context, cancel context.CancelFunc, resp *http.Response, w io.Writer, id, attemptID string) (n int64, readErr, writeErr error) {
	defer resp.Body.Close()
	from := c.tr.ServerIndex(resp.Request.URL)
	var (
		mu       sync.Mutex
		progress = time.Now()
		done     = make(chan struct{})
		wg       sync.WaitGroup
	)
	if c.followCheck > 0 {
		wg.Go(func() {
			t := time.NewTicker(c.followCheck / 2)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-ctx.Done():
					return
				case <-t.C:
				}
				mu.Lock()
				quiet := time.Since(progress) >= c.followCheck
				mu.Unlock()
				if !quiet {
					continue
				}
				job, err := c.GetJob(ctx, id)
				if err != nil {
					continue
				}
				at := findAttempt(job, attemptID, 0)
				moved := from >= 0 && c.tr.CurrentIndex() != from
				if moved || (at != nil && !at.State.Live()) {
					cancel()
					return
				}
				mu.Lock()
				progress = time.Now()
				mu.Unlock()
			}
		})
	}
	defer func() {
		// Stop the watchdog, cutting short a GetJob it may be waiting on.
		close(done)
		cancel()
		wg.Wait()
	}()
	buf := make([]byte, 32<<10)
	for {
		k, err := resp.Body.Read(buf)
		if k > 0 {
			mu.Lock()
			progress = time.Now()
			mu.Unlock()
			m, werr := w.Write(buf[:k])
			n += int64(m)
			if werr == nil && m < k {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return n, nil, werr
			}
		}
		if errors.Is(err, io.EOF) {
			return n, nil, nil
		}
		if err != nil {
			return n, err, nil
		}
	}
}

// findAttempt returns the attempt of job with the given ID, else the one with
// the given number, else (both unknown) the latest; nil if there is none.
func findAttempt(job *tandem.Job, id string, number int) *tandem.Attempt {
	for i := range job.Attempts {
		a := &job.Attempts[i]
		if (id != "" && a.ID == id) || (id == "" && number > 0 && a.Number == number) {
			return a
		}
	}
	if id == "" && number == 0 {
		return job.LastAttempt()
	}
	return nil
}

func attemptRef(id string, number int) string {
	if id != "" {
		return id
	}
	return strconv.Itoa(number)
}
