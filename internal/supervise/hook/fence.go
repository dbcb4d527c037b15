package hook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Sentinel errors of Fence.
var (
	// ErrNoLevels means Fence was given no levels at all.
	ErrNoLevels = errors.New("hook: no fence levels")
	// ErrFenceFailed means no fence level succeeded.
	ErrFenceFailed = errors.New("hook: fencing failed")
)

// Level is the fence hooks of one level. A level succeeds when every hook in
// it exits 0; they run concurrently. An empty level fails: fencing nothing
// must not count as fenced.
type Level []Hook

// Fence runs levels in order until one succeeds and returns that level's
// index. If none does, it returns -1 and an error wrapping ErrFenceFailed that
// joins each level's failures, naming the level; if there are no levels at
// all, -1 and ErrNoLevels. When ctx ends, the running level's hooks are killed
// (see Run), no further level is tried, and the error also wraps ctx's error.
// Output of concurrent hooks is copied to log (which may be nil) one write at
// a time, interleaved.
func Fence(ctx context.Context, levels []Level, env Env, log io.Writer) (int, error) {
	if len(levels) == 0 {
		return -1, ErrNoLevels
	}
	if log != nil {
		log = &lockedWriter{w: log}
	}
	var failures []error
	for i, level := range levels {
		if err := ctx.Err(); err != nil {
			failures = append(failures, fmt.Errorf("level %d not tried: %w", i, err))
			break
		}
		err := runLevel(ctx, level, env, log)
		if err == nil {
			return i, nil
		}
		failures = append(failures, fmt.Errorf("level %d: %w", i, err))
	}
	return -1, fmt.Errorf("%w: %w", ErrFenceFailed, errors.Join(failures...))
}

// runLevel runs the hooks of one level concurrently and waits for all of them.
func runLevel(ctx context.Context, level Level, env Env, log io.Writer) error {
	if len(level) == 0 {
		return errors.New("hook: empty fence level")
	}
	errs := make([]error, len(level))
	var wg sync.WaitGroup
	for i, h := range level {
		wg.Go(func() { errs[i] = Run(ctx, h, env, log) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// lockedWriter serializes writes of concurrent hooks to one log.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
