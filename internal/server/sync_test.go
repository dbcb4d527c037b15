package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/server"
)

// An idle agent's poll is held, with nothing to say, for at least three
// quarters of the wait it asked for (the rest is random: pollHold), and
// never past half the server's --agent-timeout.
func TestIdlePollIsHeld(t *testing.T) {
	c := newCluster(t, 1, func(cfg *server.Config) { cfg.AgentTimeout = 600 * time.Millisecond })
	n := c.nodes[c.waitActive()]
	a := newFakeAgent(t, n, "idler", liveAddr(t))
	for _, tc := range []struct {
		waitMS   int
		atLeast  time.Duration
		whatWait string
	}{
		{200, 150 * time.Millisecond, "the 200 ms asked"},
		{60000, 225 * time.Millisecond, "half the 600 ms --agent-timeout"},
	} {
		// Not held past the cap: a poll held the whole minute asked fails here.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		resp := a.sync(ctx, tandem.SyncRequest{WaitMS: tc.waitMS})
		held := time.Since(start)
		if ctx.Err() != nil {
			t.Fatalf("idle poll with wait_ms %d held 30 s: want at most %s", tc.waitMS, tc.whatWait)
		}
		cancel()
		if len(resp.Assign)+len(resp.Kill)+len(resp.Ack) != 0 {
			t.Fatalf("idle poll answered with %+v", resp)
		}
		if held < tc.atLeast {
			t.Fatalf("idle poll with wait_ms %d answered after %v: want at least %v (three quarters of %s)", tc.waitMS, held, tc.atLeast, tc.whatWait)
		}
	}
}
