package supervise

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are a supervisor's Prometheus metrics, in a registry of its own.
type metrics struct {
	reg           *prometheus.Registry
	failovers     *prometheus.CounterVec
	phases        *prometheus.HistogramVec
	failures      *prometheus.CounterVec
	restarts      *prometheus.CounterVec
	fenceFailures *prometheus.CounterVec
	state         *prometheus.GaugeVec

	mu     sync.Mutex
	states map[string]string
}

// states a service can be in on this node, as the tandem_supervise_state
// gauge's label.
var allStates = []string{StateFencing, StateStarting, StateHealthy, StateFailing, StateStopping}

func newMetrics(s *Supervisor) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_supervise_failovers_total", Help: "Takeovers of a supervised service by this node that became healthy, by service and cause.",
		}, []string{"service", "cause"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tandem_supervise_phase_seconds",
			Help:    "Duration of each phase of a supervised service's takeover on this node (detection, election, fencing, start, healthy, vip, total).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 5, 10, 30, 60},
		}, []string{"service", "phase"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_supervise_failures_total", Help: "Times a service's command exited or failed its health checks on this node.",
		}, []string{"service"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_supervise_restarts_total", Help: "Restarts in place of a service's command on this node.",
		}, []string{"service"}),
		fenceFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_supervise_fence_failures_total", Help: "Takeovers abandoned because no fence level succeeded (an alarm: the service is down until one does).",
		}, []string{"service"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tandem_supervise_state", Help: "1 for the state each service is in on this node (none: not running here).",
		}, []string{"service", "state"}),
		states: map[string]string{},
	}
	owned := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_supervise_services_owned", Help: "Services this node runs now.",
	}, func() float64 { return float64(s.core.Count()) })
	lead := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_supervise_lease_lead_seconds", Help: "How long this node's lease can live at the earliest without another renewal (0: no lease).",
	}, func() float64 { return max(s.leaseLead(), 0) })
	m.reg.MustRegister(m.failovers, m.phases, m.failures, m.restarts, m.fenceFailures, m.state, owned, lead,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) setState(svc, state string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.states[svc] = state
	for _, st := range allStates {
		v := 0.0
		if st == state {
			v = 1
		}
		m.state.WithLabelValues(svc, st).Set(v)
	}
}

func (m *metrics) observe(ev Event) {
	m.failovers.WithLabelValues(ev.Service, ev.Cause).Inc()
	for phase, v := range map[string]*float64{"detection": ev.DetectionS, "election": ev.ElectionS, "fencing": ev.FencingS,
		"start": ev.StartS, "healthy": ev.HealthyS, "vip": ev.VIPS, "total": ev.TotalS} {
		if v != nil {
			m.phases.WithLabelValues(ev.Service, phase).Observe(*v)
		}
	}
}
