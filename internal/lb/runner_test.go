package lb

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
)

// recorder is a Driver that records what it is asked to apply; the real
// proxies are tested in their own packages and end to end.
type recorder struct {
	mu      sync.Mutex
	applies []Desired
	fail    bool
	actual  *Desired
	applied chan struct{}
}

func (r *recorder) Start(context.Context, Desired) error { return nil }
func (r *recorder) Close() error                         { return nil }
func (r *recorder) Apply(_ context.Context, d Desired) (Applied, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer func() {
		select {
		case r.applied <- struct{}{}:
		default:
		}
	}()
	if r.fail {
		return Applied{}, errors.New("proxy says no")
	}
	r.applies = append(r.applies, d)
	r.actual = &d
	return Applied{Reloaded: true}, nil
}
func (r *recorder) Actual(context.Context) (Desired, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.actual == nil {
		return Desired{}, nil
	}
	return *r.actual, nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applies)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: never", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRunner(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	l := keys.New("c1")
	src, err := NewSource(cli, "c1", API{Listen: ":18080"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	drv := &recorder{applied: make(chan struct{}, 1)}
	r := NewRunner(src, drv, "test", RunnerConfig{Debounce: 50 * time.Millisecond, MaxDebounce: 200 * time.Millisecond, DriftEvery: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go src.Run(ctx)
	go r.Run(ctx)

	put(t, cli, l.Server("rm1"), tandem.ServerInfo{ID: "rm1", URL: "http://127.0.0.1:7070"})
	put(t, cli, l.Server("rm2"), tandem.ServerInfo{ID: "rm2", URL: "http://127.0.0.1:7071"})
	put(t, cli, l.Leader(), election.Owner{ID: "rm1"})
	waitFor(t, "rm1 applied up", func() bool {
		st := r.Status()
		return st.Applied != nil && len(up(*st.Applied, "tandem")) == 1 && up(*st.Applied, "tandem")[0] == "rm1"
	})

	// A change of active only: applied without waiting for a debounce.
	n := drv.count()
	del(t, cli, l.Leader())
	put(t, cli, l.Leader(), election.Owner{ID: "rm2"})
	waitFor(t, "rm2 applied up", func() bool {
		st := r.Status()
		return st.Applied != nil && len(up(*st.Applied, "tandem")) == 1 && up(*st.Applied, "tandem")[0] == "rm2"
	})
	if got := drv.count() - n; got > 2 {
		t.Errorf("%d applies for two changes", got)
	}

	// Ten servers added in a burst: a change of shape, debounced into few applies.
	n = drv.count()
	for i := 0; i < 10; i++ {
		put(t, cli, l.Server("x"+string(rune('a'+i))), tandem.ServerInfo{ID: "x" + string(rune('a'+i)), URL: "http://127.0.0.1:9" + string(rune('0'+i))})
	}
	waitFor(t, "12 servers applied", func() bool {
		st := r.Status()
		return st.Applied != nil && len(st.Applied.Backends[0].Servers) == 12
	})
	if got := drv.count() - n; got > 4 {
		t.Errorf("%d applies for a burst of 10 shape changes; want them debounced", got)
	}

	// A failing proxy: the failure is counted, the last good state stays, and it is retried.
	drv.mu.Lock()
	drv.fail = true
	drv.mu.Unlock()
	put(t, cli, l.Server("rm3"), tandem.ServerInfo{ID: "rm3", URL: "http://127.0.0.1:7072"})
	waitFor(t, "a failure recorded", func() bool { return r.Status().Failures > 0 })
	if st := r.Status(); len(st.Applied.Backends[0].Servers) != 12 || st.LastError == "" {
		t.Fatalf("after a failure: applied %d servers, error %q; want the last good state and the error", len(st.Applied.Backends[0].Servers), st.LastError)
	}
	drv.mu.Lock()
	drv.fail = false
	drv.mu.Unlock()
	waitFor(t, "retried", func() bool { st := r.Status(); return len(st.Applied.Backends[0].Servers) == 13 })

	// Drift: the proxy reports something else; it is applied again.
	drv.mu.Lock()
	drv.actual = &Desired{}
	drv.mu.Unlock()
	waitFor(t, "drift repaired", func() bool { return r.Status().Drifts > 0 && r.Status().Applied != nil })

	// The watch's lag is measured with the drift checks.
	waitFor(t, "watch lag measured", func() bool { return r.Status().WatchLagMS >= 0 })
}

// TestRunnerUpBeforeShape: a new active whose change comes with a change
// of shape (the old active's registration goes) is up at once; the shape
// waits for its debounce (here, for ever).
func TestRunnerUpBeforeShape(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	l := keys.New("c1")
	src, err := NewSource(cli, "c1", API{Listen: ":18080"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	drv := &recorder{applied: make(chan struct{}, 1)}
	r := NewRunner(src, drv, "test", RunnerConfig{Debounce: time.Hour, MaxDebounce: time.Hour, DriftEvery: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	put(t, cli, l.Server("rm1"), tandem.ServerInfo{ID: "rm1", URL: "http://127.0.0.1:7070"})
	put(t, cli, l.Server("rm2"), tandem.ServerInfo{ID: "rm2", URL: "http://127.0.0.1:7071"})
	put(t, cli, l.Leader(), election.Owner{ID: "rm1"})
	go src.Run(ctx)
	go r.Run(ctx)
	waitFor(t, "rm1 applied up", func() bool {
		st := r.Status()
		return st.Applied != nil && len(up(*st.Applied, "tandem")) == 1 && up(*st.Applied, "tandem")[0] == "rm1"
	})

	// rm1 dies: its registration and the leader key go, rm2 wins.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	b, _ := json.Marshal(election.Owner{ID: "rm2"})
	if _, err := cli.Txn(ctx2).Then(clientv3.OpDelete(l.Server("rm1")), clientv3.OpPut(l.Leader(), string(b))).Commit(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rm2 up before the shape change", func() bool {
		st := r.Status()
		return st.Applied != nil && len(up(*st.Applied, "tandem")) == 1 && up(*st.Applied, "tandem")[0] == "rm2"
	})
	if st := r.Status(); len(st.Applied.Backends[0].Servers) != 2 {
		t.Errorf("applied %+v: want rm1 still there (down) until the debounced shape change", st.Applied.Backends[0].Servers)
	}
}

// TestRunnerInterregnum: with Interregnum, the moment between the old
// active's resignation and the new one's win is not applied: the proxy goes
// straight from one active to the next. A gap longer than Interregnum is
// applied.
func TestRunnerInterregnum(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	l := keys.New("c1")
	src, err := NewSource(cli, "c1", API{Listen: ":18080"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	drv := &recorder{applied: make(chan struct{}, 1)}
	r := NewRunner(src, drv, "test", RunnerConfig{Interregnum: time.Hour, DriftEvery: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	put(t, cli, l.Server("rm1"), tandem.ServerInfo{ID: "rm1", URL: "http://127.0.0.1:7070"})
	put(t, cli, l.Server("rm2"), tandem.ServerInfo{ID: "rm2", URL: "http://127.0.0.1:7071"})
	put(t, cli, l.Leader(), election.Owner{ID: "rm1"})
	go src.Run(ctx)
	go r.Run(ctx)
	upIs := func(id string) func() bool {
		return func() bool {
			st := r.Status()
			return st.Applied != nil && len(up(*st.Applied, "tandem")) == 1 && up(*st.Applied, "tandem")[0] == id
		}
	}
	waitFor(t, "rm1 applied up", upIs("rm1"))
	n := drv.count()
	del(t, cli, l.Leader())
	waitFor(t, "the resignation seen", func() bool { return len(up(src.Desired(), "tandem")) == 0 })
	put(t, cli, l.Leader(), election.Owner{ID: "rm2"})
	waitFor(t, "rm2 applied up", upIs("rm2"))
	drv.mu.Lock()
	applies := append([]Desired(nil), drv.applies[n:]...)
	drv.mu.Unlock()
	for _, d := range applies {
		if len(up(d, "tandem")) == 0 {
			t.Errorf("applied a state with nobody up during the interregnum: %+v", d)
		}
	}

	// A gap longer than the interregnum is applied.
	r2 := NewRunner(src, drv, "test", RunnerConfig{Interregnum: 50 * time.Millisecond, DriftEvery: time.Hour})
	go r2.Run(ctx)
	waitFor(t, "rm2 applied up by the second runner", func() bool {
		st := r2.Status()
		return st.Applied != nil && len(up(*st.Applied, "tandem")) == 1
	})
	del(t, cli, l.Leader())
	waitFor(t, "nobody up, after the interregnum", func() bool {
		st := r2.Status()
		return st.Applied != nil && len(up(*st.Applied, "tandem")) == 0
	})
}
