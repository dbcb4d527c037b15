package server_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime"
	"sort"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/server"
)

// BenchmarkTransition measures what becoming active costs a hot standby as
// the cluster's state grows (DESIGN.md section 5: Hadoop 1's cold NameNode
// took 30 s for 6M blocks; tandem's transition must stay flat). For 1k, 10k
// and 100k job records in etcd, with two servers on one real etcd, each
// iteration hands leadership gracefully from the active to the standby
// (POST /v1/ha/failover, as `tandem admin failover` does) and reads the
// transition the new active recorded for its epoch in the HA history: from
// winning the leader key to serving writes. It reports the median and the
// worst transition, and the median of the whole hand-off call. Timings are
// not asserted: the figures, side by side, are the result.
//
//	go test -run '^$' -bench Transition -benchtime 20x ./internal/server/
//
// The jobs are loaded as finished (succeeded, one attempt), as most of a
// long-lived cluster's jobs are, so the new active's scheduler has nothing
// to do and the figures are the transition alone.
func BenchmarkTransition(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("jobs=%d", n), func(b *testing.B) { benchTransition(b, n) })
	}
}

func benchTransition(b *testing.B, n int) {
	c := newCluster(b, 2, nil)
	active := c.waitActive()
	ctx := context.Background()

	start := time.Now()
	size := loadJobs(b, c.etcd.Client(b), "/tandem/test/jobs/", n)
	loaded := time.Since(start)
	for _, nd := range c.nodes {
		waitNumJobs(b, nd.srv, n)
	}
	b.Logf("%d jobs (%.1f MB of records) loaded into etcd in %s; both views held them %s later",
		n, float64(size)/(1<<20), loaded.Round(time.Millisecond), (time.Since(start) - loaded).Round(time.Millisecond))
	cl := c.client()
	runtime.GC() // the load's garbage is not the hand-offs' cost

	transitions := make([]time.Duration, 0, b.N)
	handoffs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		from, to := c.nodes[active], c.nodes[1-active]
		req := tandem.HandoffRequest{From: from.srv.Config().ID, To: to.srv.Config().ID}
		t0 := time.Now()
		if _, err := cl.Failover(ctx, from.url, req); err != nil {
			b.Fatalf("failover %s -> %s: %v", req.From, req.To, err)
		}
		handoffs = append(handoffs, time.Since(t0))
		ev := waitHandoffEvent(b, to.srv)
		transitions = append(transitions, time.Duration(*ev.TransitionS*float64(time.Second)))
		active = 1 - active
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(transitions, 0.5)), "transition-p50-ms")
	b.ReportMetric(ms(percentile(transitions, 1)), "transition-max-ms")
	b.ReportMetric(ms(percentile(handoffs, 0.5)), "handoff-p50-ms")
}

// percentile returns the nearest-rank p-th percentile of ds (p in (0, 1]).
func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s))*p+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// loadJobs writes n finished job records under prefix, 128 per transaction
// (etcd's default limit of operations per transaction), with IDs shaped and
// ordered like the server's. It returns the bytes written.
func loadJobs(b *testing.B, cli *clientv3.Client, prefix string, n int) int {
	b.Helper()
	const batch = 128
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	size := 0
	ops := make([]clientv3.Op, 0, batch)
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			b.Fatalf("load jobs: %v", err)
		}
		ops = ops[:0]
	}
	for i := 0; i < n; i++ {
		created := base.Add(time.Duration(i) * 250 * time.Millisecond)
		id := benchJobID(created, 0)
		started, ended, exit := created.Add(40*time.Millisecond), created.Add(3*time.Second), 0
		key := sha256.Sum256([]byte(id))
		j := tandem.Job{
			ID: id,
			JobSpec: tandem.JobSpec{
				Name:      "nightly-report-" + strconv.Itoa(i),
				Command:   []string{"sh", "-c", "./report --date=2026-11-01 --out=/data/reports"},
				Labels:    map[string]string{"team": "analytics"},
				Submitter: "scheduler",
			}.WithDefaults(),
			State: tandem.JobSucceeded, CreatedAt: created, UpdatedAt: ended, Epoch: 3, AcceptedBy: "rm1",
			IdempotencyKey: hex.EncodeToString(key[:16]),
			Attempts: []tandem.Attempt{{ID: id + "-1", Number: 1, Agent: "w1", Epoch: 3, State: tandem.AttemptSucceeded,
				ScheduledAt: created.Add(2 * time.Millisecond), StartedAt: &started, EndedAt: &ended, PID: 4000 + i%30000, ExitCode: &exit}},
		}
		val, err := json.Marshal(&j)
		if err != nil {
			b.Fatal(err)
		}
		size += len(val)
		ops = append(ops, clientv3.OpPut(prefix+id, string(val)))
		if len(ops) == batch {
			flush()
		}
	}
	flush()
	return size
}

// benchJobID makes an ID like the server's: 10 characters of milliseconds
// and 4 of sequence in lower-case Crockford base32, which sorts in time order.
func benchJobID(t time.Time, seq int64) string {
	const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	var buf [14]byte
	enc := func(dst []byte, v int64) {
		for i := len(dst) - 1; i >= 0; i-- {
			dst[i] = alphabet[v&31]
			v >>= 5
		}
	}
	enc(buf[:10], t.UnixMilli())
	enc(buf[10:], seq)
	return string(buf[:])
}

// waitNumJobs waits until srv's view holds n jobs.
func waitNumJobs(b *testing.B, srv *server.Server, n int) {
	b.Helper()
	deadline := time.After(5 * time.Minute)
	for {
		ch := srv.Store().Changed()
		if got := srv.Store().NumJobs(); got == n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			b.Fatalf("%s's view holds %d jobs after 5 minutes, want %d", srv.Config().ID, srv.Store().NumJobs(), n)
		}
	}
}

// waitHandoffEvent waits until srv is active and its HA history holds the
// event of its epoch (the new active writes it just after it starts
// serving), and returns that event.
func waitHandoffEvent(b *testing.B, srv *server.Server) tandem.FailoverEvent {
	b.Helper()
	deadline := time.After(30 * time.Second)
	for {
		ch := srv.Store().Changed()
		if epoch, ok := srv.ActiveEpoch(); ok {
			for _, ev := range srv.History() {
				if ev.Epoch != epoch {
					continue
				}
				if ev.Cause != tandem.CauseHandoff || ev.TransitionS == nil {
					b.Fatalf("%s's event for epoch %d: cause %q, transition %v; want a hand-off with its transition", srv.Config().ID, epoch, ev.Cause, ev.TransitionS)
				}
				return ev
			}
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Millisecond): // becoming active changes no key the view watches
		case <-deadline:
			b.Fatalf("%s did not record its hand-off within 30s", srv.Config().ID)
		}
	}
}
