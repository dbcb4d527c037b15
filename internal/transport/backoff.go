package transport

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/tandemhq/tandem"
)

// Backoff paces retries across servers. Retry number n (counting from 1)
// sleeps nothing for n == 1 and otherwise Base*2^(n-2), capped at Max,
// scaled by a jitter uniform in [1/2, 1].
type Backoff struct {
	Base     time.Duration // the first sleep (before the second retry); > 0
	Max      time.Duration // the longest sleep; >= Base
	Attempts int           // attempts in total per call, the first included; >= 1
}

// DefaultBackoff returns the backoff a Transport uses when Config.Backoff is
// the zero value: Base 20ms, Max 250ms, 40 attempts. That is about 9 seconds
// of retrying, enough to ride out an election, while a server that becomes
// active is found at most about 250ms (one sleep) later.
func DefaultBackoff() Backoff {
	return Backoff{Base: 20 * time.Millisecond, Max: 250 * time.Millisecond, Attempts: 40}
}

// Validate reports the first problem with b as an invalid_argument
// *tandem.Error, or nil.
func (b Backoff) Validate() error {
	switch {
	case b.Base <= 0:
		return tandem.Errorf(tandem.EINVALID, "backoff base is %v: it must be greater than zero", b.Base)
	case b.Max < b.Base:
		return tandem.Errorf(tandem.EINVALID, "backoff max %v is less than its base %v", b.Max, b.Base)
	case b.Attempts < 1:
		return tandem.Errorf(tandem.EINVALID, "backoff attempts is %d: it must be at least 1", b.Attempts)
	}
	return nil
}

// Delay returns the nominal sleep before retry number retry (counting from
// 1), before jitter: 0 for the first retry, which goes to the next server at
// once, then Base doubling up to Max. It uses only Base and Max, so a caller
// that retries for ever (an agent) can use it with Attempts left zero.
func (b Backoff) Delay(retry int) time.Duration {
	if retry <= 1 {
		return 0
	}
	d := b.Base
	for i := 2; i < retry && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Jittered returns the sleep before retry number retry: Delay(retry) scaled
// by Jitter, with randN as its random source (nil means math/rand/v2). Like
// Delay it uses only Base and Max.
func (b Backoff) Jittered(retry int, randN func(n int64) int64) time.Duration {
	return Jitter(b.Delay(retry), randN)
}

// Jitter scales d by a factor uniform in [1/2, 1], so clients that failed
// together do not retry in lockstep. randN returns a uniform integer in
// [0, n); nil means math/rand/v2's Int64N. A d of zero or less is returned
// unchanged, without drawing.
func Jitter(d time.Duration, randN func(n int64) int64) time.Duration {
	if d <= 0 {
		return d
	}
	if randN == nil {
		randN = rand.Int64N
	}
	half := int64(d / 2)
	return time.Duration(half + randN(int64(d)-half+1))
}

// Sleep waits d or until ctx is done, whichever comes first, and returns
// ctx.Err() in the second case, else nil. It is the sleep a Transport takes
// between retries unless Config.Sleep replaces it.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
