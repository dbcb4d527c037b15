package lb

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	// Debounce is how long a change of shape (which costs a reload) waits
	// for more changes before it is applied, at most MaxDebounce after the
	// first (defaults 200ms and 1s). A change of who is up is applied at
	// once.
	Debounce, MaxDebounce time.Duration
	// Interregnum, if positive, is how long a state in which an active-mode
	// backend that had a server up has none waits for the next one before
	// it is applied: in a switchover the old active resigns a few ms before
	// the new one wins, and for a proxy whose every change is a reload
	// (NGINX) applying "none" first makes the new active wait for two
	// reloads. The old active, a standby by then, answers 307 meanwhile.
	Interregnum time.Duration
	// DriftEvery is how often what the proxy reports is compared with the
	// desired state (default 10s); a difference is applied again.
	DriftEvery time.Duration
	Log        *slog.Logger
}

// Runner applies a Source's desired state to a Driver as it changes.
type Runner struct {
	src *Source
	drv Driver
	cfg RunnerConfig
	log *slog.Logger
	met *runnerMetrics

	measuring atomic.Bool // a lag measure runs

	mu      sync.Mutex
	applied *Desired // the last state applied successfully
	status  Status
}

// Status is what `tandem lb status` shows (GET /v1/lb/status).
type Status struct {
	Proxy       string    `json:"proxy"`
	Desired     Desired   `json:"desired"`
	Applied     *Desired  `json:"applied,omitempty"`
	Actual      *Desired  `json:"actual,omitempty"`
	LastApply   time.Time `json:"last_apply,omitzero"`
	LastApplyMS float64   `json:"last_apply_ms"` // from the watch's delivery of the change to the driver's return
	LastError   string    `json:"last_error,omitempty"`
	Applies     int       `json:"applies"`
	Reloads     int       `json:"reloads"`
	Failures    int       `json:"failures"`
	Drifts      int       `json:"drifts"`
	WatchRev    int64     `json:"watch_rev"`
	// ProxyExits counts the times a proxy tandem lb runs exited and was
	// started again; LastProxyExit says why the last one did.
	ProxyExits    int    `json:"proxy_exits"`
	LastProxyExit string `json:"last_proxy_exit,omitempty"`
	// WatchLagMS is the last measure of how far the membership watch is
	// behind etcd (every DriftEvery): reading etcd's revision until the
	// watch reached it; -1 before the first.
	WatchLagMS float64 `json:"watch_lag_ms"`
}

// NewRunner returns a Runner of src onto drv; proxy names the proxy kind
// for status.
func NewRunner(src *Source, drv Driver, proxy string, cfg RunnerConfig) *Runner {
	if cfg.Debounce == 0 {
		cfg.Debounce = 200 * time.Millisecond
	}
	if cfg.MaxDebounce == 0 {
		cfg.MaxDebounce = time.Second
	}
	if cfg.DriftEvery == 0 {
		cfg.DriftEvery = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	r := &Runner{src: src, drv: drv, cfg: cfg, log: cfg.Log}
	r.status.Proxy = proxy
	r.status.WatchLagMS = -1
	r.met = newRunnerMetrics(r)
	return r
}

// Run applies changes until ctx ends. The Driver must have been started.
// A change of who is up goes to the proxy at once; a change of shape (a
// reload) waits until no change came for Debounce, at most MaxDebounce.
func (r *Runner) Run(ctx context.Context) {
	drift := time.NewTicker(r.cfg.DriftEvery)
	defer drift.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var pendingSince, lastChange, headlessSince time.Time
	for {
		changed := r.src.Changed()
		if r.src.Synced() {
			want := r.src.Desired()
			r.mu.Lock()
			applied := r.applied
			r.mu.Unlock()
			now := time.Now()
			hold := false
			if r.cfg.Interregnum > 0 && applied != nil && headless(*applied, want) {
				if headlessSince.IsZero() {
					headlessSince = now
				}
				if until := headlessSince.Add(r.cfg.Interregnum); now.Before(until) {
					hold = true
					resetTimer(timer, until.Sub(now))
				}
			} else {
				headlessSince = time.Time{}
			}
			switch {
			case hold:
			case applied != nil && sameState(*applied, want):
				pendingSince = time.Time{}
			case applied != nil && !sameState(applied.Shape(), want.Shape()):
				if pendingSince.IsZero() {
					pendingSince = now
				}
				deadline := lastChange.Add(r.cfg.Debounce)
				if limit := pendingSince.Add(r.cfg.MaxDebounce); limit.Before(deadline) {
					deadline = limit
				}
				if now.Before(deadline) {
					// Who is up among the servers the proxy has goes at once
					// (a new active while the old one's removal waits); the
					// rest of the change after the debounce.
					if interim := applied.UpFrom(want); !sameState(interim, *applied) && !r.apply(ctx, interim) {
						deadline = now.Add(retryFailed)
					}
					resetTimer(timer, deadline.Sub(now))
					break
				}
				pendingSince = time.Time{}
				if !r.apply(ctx, want) {
					resetTimer(timer, retryFailed)
				}
			default:
				pendingSince = time.Time{}
				if !r.apply(ctx, want) {
					resetTimer(timer, retryFailed)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			lastChange = time.Now()
		case <-timer.C:
		case <-drift.C:
			r.checkDrift(ctx)
			// Apart from the loop: through a frozen etcd member the measure
			// takes its whole timeout, and changes must not wait for it.
			if r.measuring.CompareAndSwap(false, true) {
				go func() { defer r.measuring.Store(false); r.measureLag(ctx) }()
			}
		}
	}
}

// headless reports whether an active-mode backend that has a server up in
// applied has none up in want.
func headless(applied, want Desired) bool {
	had := map[string]bool{}
	for _, b := range applied.Backends {
		if b.Mode != ModeActive {
			continue
		}
		for _, s := range b.Servers {
			had[b.Name] = had[b.Name] || s.Up
		}
	}
	for _, b := range want.Backends {
		if b.Mode != ModeActive || !had[b.Name] {
			continue
		}
		up := false
		for _, s := range b.Servers {
			up = up || s.Up
		}
		if !up {
			return true
		}
	}
	return false
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(max(d, 0))
}

// sameState compares what matters to the proxy (not the revision).
func sameState(a, b Desired) bool {
	a.Rev, b.Rev = 0, 0
	return reflect.DeepEqual(a, b)
}

// retryFailed is how long a change the proxy could not apply waits before
// it is tried again (if nothing else changes first).
const retryFailed = 2 * time.Second

// apply hands want to the driver and records the outcome; it reports
// whether the proxy applied it.
func (r *Runner) apply(ctx context.Context, want Desired) bool {
	seen := r.src.SeenAt()
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	res, err := r.drv.Apply(actx, want)
	cancel()
	took := time.Since(seen)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.Desired = want
	r.status.Applies++
	if err != nil {
		r.status.Failures++
		r.status.LastError = err.Error()
		r.met.failures.Inc()
		r.log.Error("could not apply the change; the proxy keeps its last good configuration", "rev", want.Rev, "err", err)
		return false
	}
	r.applied = &want
	r.status.Applied = &want
	r.status.LastApply, r.status.LastApplyMS, r.status.LastError = time.Now(), float64(took.Microseconds())/1000, ""
	kind := "runtime"
	if res.Reloaded {
		kind = "reload"
		r.status.Reloads++
		r.met.reloads.Inc()
	}
	r.met.apply.WithLabelValues(kind).Observe(took.Seconds())
	r.log.Info("applied", "rev", want.Rev, "how", kind, "runtime_commands", res.Runtime, "driver_ms", res.Took.Milliseconds(),
		"since_change_ms", took.Milliseconds(), "up", upNames(want))
	return true
}

func upNames(d Desired) map[string][]string {
	out := map[string][]string{}
	for _, b := range d.Backends {
		out[b.Name] = []string{}
		for _, s := range b.Servers {
			if s.Up {
				out[b.Name] = append(out[b.Name], s.Name)
			}
		}
	}
	return out
}

// checkDrift compares what the proxy reports with what was applied, and
// applies again on a difference (someone changed the proxy by hand, or it
// restarted).
func (r *Runner) checkDrift(ctx context.Context) {
	r.mu.Lock()
	applied := r.applied
	r.mu.Unlock()
	if applied == nil {
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	actual, err := r.drv.Actual(actx)
	cancel()
	if err != nil {
		r.log.Warn("could not read the proxy's state", "err", err)
		return
	}
	actual.Normalize()
	r.mu.Lock()
	r.status.Actual = &actual
	r.mu.Unlock()
	if sameServers(*applied, actual) {
		return
	}
	r.log.Warn("the proxy's state drifted from the desired one; applying again")
	r.met.drifts.Inc()
	r.mu.Lock()
	r.status.Drifts++
	r.applied = nil
	r.mu.Unlock()
	r.apply(ctx, r.src.Desired())
}

// ProxyExited records that the proxy exited (err says why) and is being
// started again; until it runs, Applied is what it ran.
func (r *Runner) ProxyExited(err error) {
	r.met.exits.Inc()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.ProxyExits++
	r.status.LastProxyExit = fmt.Sprint(err)
}

// measureLag measures the watch's lag, bounded by 5 s (a watch stuck
// longer shows as at least that).
func (r *Runner) measureLag(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	lag, err := r.src.Lag(lctx)
	cancel()
	if err != nil && lag == 0 {
		r.log.Warn("could not measure the membership watch's lag", "err", err)
		return
	}
	if err != nil {
		r.log.Warn("the membership watch is behind etcd", "lag", lag.String(), "err", err)
	}
	r.met.lag.Set(lag.Seconds())
	r.mu.Lock()
	r.status.WatchLagMS = float64(lag.Microseconds()) / 1000
	r.mu.Unlock()
}

// sameServers compares the servers and who is up, backend by backend.
func sameServers(a, b Desired) bool {
	if len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		x, y := a.Backends[i], b.Backends[i]
		if x.Name != y.Name || len(x.Servers) != len(y.Servers) {
			return false
		}
		for j := range x.Servers {
			if x.Servers[j].Name != y.Servers[j].Name || x.Servers[j].Up != y.Servers[j].Up {
				return false
			}
		}
	}
	return true
}

// Status returns the runner's status.
func (r *Runner) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	st.Desired = r.src.Desired()
	st.WatchRev = r.src.Rev()
	return st
}

// Handler serves GET /v1/lb/status and /metrics.
func (r *Runner) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/lb/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.Status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.met.reg, promhttp.HandlerOpts{}))
	return mux
}

type runnerMetrics struct {
	reg      *prometheus.Registry
	apply    *prometheus.HistogramVec
	reloads  prometheus.Counter
	failures prometheus.Counter
	drifts   prometheus.Counter
	lag      prometheus.Gauge
	exits    prometheus.Counter
}

func newRunnerMetrics(r *Runner) *runnerMetrics {
	m := &runnerMetrics{
		reg: prometheus.NewRegistry(),
		apply: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tandem_lb_apply_seconds",
			Help:    "Time from the watch delivering a change to the proxy applying it, by how (runtime or reload).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"how"}),
		reloads:  prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_lb_reloads_total", Help: "Reloads of the proxy's configuration."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_lb_apply_failures_total", Help: "Changes the proxy refused or could not apply (its last good configuration stayed)."}),
		drifts:   prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_lb_drift_total", Help: "Times the proxy's reported state differed from the desired one and was applied again."}),
		exits: prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_lb_proxy_exits_total",
			Help: "Times the proxy tandem lb runs exited (crashed or was killed) and was started again."}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_lb_watch_lag_seconds",
			Help: "Last measure of how far the membership watch is behind etcd: from reading etcd's revision to the watch reaching it."}),
	}
	rev := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_lb_watch_revision", Help: "etcd revision the membership watch has reached.",
	}, func() float64 { return float64(r.src.Rev()) })
	m.reg.MustRegister(m.apply, m.reloads, m.failures, m.drifts, m.lag, m.exits, rev,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
