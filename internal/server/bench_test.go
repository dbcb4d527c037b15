package server_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
)

// BenchmarkSubmitToRunning measures, on an idle cluster (one active, two
// standbys, one agent, all on loopback with a real etcd), the time from
// submitting a job through the failover client to the active's view showing
// its attempt started on the agent. It reports p50 and p99 in milliseconds.
//
//	go test -run '^$' -bench SubmitToRunning -benchtime 200x ./internal/server/
func BenchmarkSubmitToRunning(b *testing.B) {
	c := newCluster(b, 3, nil)
	c.addAgent("a1", tandem.Resources{CPU: 64, MemoryMB: 64 << 10}, nil)
	srv := c.nodes[c.waitActive()].srv
	cl := c.client()
	ctx := context.Background()
	spec := tandem.JobSpec{Command: []string{"sleep", "0.05"}}
	// Warm up: the agent is connected once a first job has run.
	warm, err := cl.SubmitJob(ctx, spec, client.SubmitOptions{})
	if err != nil {
		b.Fatal(err)
	}
	waitStarted(b, srv.Store(), warm.ID)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		j, err := cl.SubmitJob(ctx, spec, client.SubmitOptions{})
		if err != nil {
			b.Fatal(err)
		}
		waitStarted(b, srv.Store(), j.ID)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[(len(lat)*99)/100]), "p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "max-ms")
}

type view interface {
	Changed() <-chan struct{}
	Job(id string) (*tandem.Job, error)
}

// waitStarted blocks until the view shows the job's attempt started.
func waitStarted(b *testing.B, v view, id string) {
	deadline := time.After(30 * time.Second)
	for {
		ch := v.Changed()
		if j, err := v.Job(id); err == nil {
			if a := j.LastAttempt(); a != nil && a.StartedAt != nil {
				return
			}
		}
		select {
		case <-ch:
		case <-deadline:
			b.Fatalf("job %s did not start within 30s", id)
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
