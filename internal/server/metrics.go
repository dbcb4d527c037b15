package server

import (
	"regexp"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tandemhq/tandem"
)

// metrics are the server's Prometheus metrics, in a registry of its own so
// several servers can live in one test process.
type metrics struct {
	reg          *prometheus.Registry
	failovers    *prometheus.CounterVec
	phases       *prometheus.HistogramVec
	stepDowns    *prometheus.CounterVec
	fencedWrites prometheus.Counter
	submissions  *prometheus.CounterVec
	agentsLost   prometheus.Counter
	// placements counts the attempts this server recorded on agents, by
	// how: "batch" (several in one transaction) or "single".
	placements *prometheus.CounterVec
	// placementTxns counts the transactions that recorded them, the same way.
	placementTxns *prometheus.CounterVec
	// reports and reportTxns count the same for agents' reports that
	// changed a job record.
	reports    *prometheus.CounterVec
	reportTxns *prometheus.CounterVec
	// scheduleFires counts nominal times by outcome and reason (a merged
	// skip counts every time it covers); fireLateness is commit minus
	// nominal time of the fires of schedules' own times.
	scheduleFires *prometheus.CounterVec
	fireLateness  prometheus.Histogram
	// workflowRuns counts the workflow runs this server ended, by state.
	workflowRuns *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_failovers_total", Help: "Times this server became active, or took a shard (active-active), by cause.",
		}, []string{"cause"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tandem_failover_phase_seconds",
			Help:    "Duration of each failover phase (detection, election, transition) as seen by the new active.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 5, 10, 30},
		}, []string{"phase"}),
		stepDowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_stepdowns_total", Help: "Terms of this server that ended (it stopped being active, or gave a shard up), by reason.",
		}, []string{"reason"}),
		fencedWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tandem_fenced_writes_total", Help: "Writes etcd rejected because this server's term of the shard was superseded.",
		}),
		submissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tandem_job_submissions_total", Help: "Job submissions handled by this server, by result.",
		}, []string{"result"}),
	}
	m.scheduleFires = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_schedule_fires_total", Help: "Nominal times of schedules decided by this server, by outcome (fired, skipped) and reason.",
	}, []string{"outcome", "reason"})
	m.fireLateness = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tandem_schedule_fire_lateness_seconds",
		Help:    "Commit time minus nominal time of each fire of a schedule's own nominal time (jitter included), by this server's clock.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900, 3600},
	})
	m.workflowRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_workflow_runs_ended_total", Help: "Workflow runs this server's controller ended, by final state.",
	}, []string{"state"})
	m.placements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_placements_total", Help: "Attempts this server recorded on agents, by how: batch (several in one etcd transaction) or single.",
	}, []string{"how"})
	m.placementTxns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_placement_transactions_total", Help: "etcd transactions that recorded this server's placements, by how: batch or single.",
	}, []string{"how"})
	m.reports = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_agent_reports_recorded_total", Help: "Agents' reports (attempt running, attempt ended) that changed a job record, by how: batch (several in one etcd transaction) or single.",
	}, []string{"how"})
	m.reportTxns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_agent_report_transactions_total", Help: "etcd transactions that recorded agents' reports, by how: batch or single.",
	}, []string{"how"})
	m.agentsLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tandem_agents_lost_total", Help: "Agents this server declared lost while active.",
	})
	epoch := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_epoch", Help: "Epoch of the active server as this server knows it (0: none known, or several shards).",
	}, func() float64 { return float64(s.Status().Epoch) })
	rev := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_view_revision", Help: "etcd revision this server's view of the cluster has reached.",
	}, func() float64 { return float64(s.store.Rev()) })
	owned := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_shards_owned", Help: "Shards this server owns now.",
	}, func() float64 { return float64(s.core.Count()) })
	shards := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_shards", Help: "The cluster's number of shards (1: active/standby).",
	}, func() float64 { return float64(s.Shards()) })
	clockCorrection := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tandem_schedule_clock_correction_seconds",
		Help: "How far the schedule controller holds this server's clock back because it runs ahead of the other servers' clocks.",
	}, func() float64 { return s.clocks.correction(s.cfg.ScheduleGrace).Seconds() })
	m.reg.MustRegister(clockCorrection, m.agentsLost, m.placements, m.placementTxns, m.reports, m.reportTxns, m.scheduleFires, m.workflowRuns, workflowsCollector{s}, m.fireLateness, m.failovers, m.phases, m.stepDowns, m.fencedWrites, m.submissions,
		epoch, rev, owned, shards, stateCollector{s}, jobsCollector{s}, agentsCollector{s},
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(liveHeap)), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// liveHeap adds go_gc_heap_live_bytes to the Go collector's default
// metrics: the heap the last garbage collection found live. The memstats
// figures also count garbage not yet collected, so they swing by up to
// GOGC percent between collections; this one is what a leak moves.
var liveHeap = collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)}

// stateCollector reports 1 for this server's current HA state, 0 for the others.
type stateCollector struct{ s *Server }

var stateDesc = prometheus.NewDesc("tandem_ha_state", "1 for this server's current HA state, 0 for the others.", []string{"state"}, nil)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- stateDesc }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	cur := c.s.State()
	for _, st := range tandem.HAStates {
		v := 0.0
		if st == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, v, string(st))
	}
}

func (m *metrics) observeFailover(ev tandem.FailoverEvent) {
	m.failovers.WithLabelValues(ev.Cause).Inc()
	for phase, v := range map[string]*float64{"detection": ev.DetectionS, "election": ev.ElectionS, "transition": ev.TransitionS} {
		if v != nil {
			m.phases.WithLabelValues(phase).Observe(*v)
		}
	}
}

// jobsCollector reports jobs by state from the server's view.
type jobsCollector struct{ s *Server }

var jobsDesc = prometheus.NewDesc("tandem_jobs", "Jobs in the cluster by state, from this server's view.", []string{"state"}, nil)

func (c jobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- jobsDesc }

func (c jobsCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.s.store.JobCounts()
	for _, st := range tandem.JobStates {
		if _, ok := counts[st]; !ok {
			counts[st] = 0
		}
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(n), string(st))
	}
}

// agentsCollector reports, on an owner, agents by state and their use.
type agentsCollector struct{ s *Server }

var (
	agentsDesc    = prometheus.NewDesc("tandem_agents", "Agents this server knows, by state (reported by owners only).", []string{"state"}, nil)
	agentCPUDesc  = prometheus.NewDesc("tandem_agent_cpu", "CPU cores of an agent: capacity and used by live attempts (owners only).", []string{"agent", "kind"}, nil)
	agentLiveDesc = prometheus.NewDesc("tandem_agent_live_attempts", "Live attempts on an agent (owners only).", []string{"agent"}, nil)
)

func (c agentsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- agentsDesc
	ch <- agentCPUDesc
	ch <- agentLiveDesc
}

func (c agentsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.s.core.Count() == 0 {
		return // one series per cluster: only owners report agents
	}
	counts := map[string]int{tandem.AgentReady: 0, tandem.AgentLost: 0}
	for _, a := range c.s.Agents() {
		counts[a.State]++
		ch <- prometheus.MustNewConstMetric(agentCPUDesc, prometheus.GaugeValue, a.Capacity.CPU, a.ID, "capacity")
		ch <- prometheus.MustNewConstMetric(agentCPUDesc, prometheus.GaugeValue, a.Used.CPU, a.ID, "used")
		ch <- prometheus.MustNewConstMetric(agentLiveDesc, prometheus.GaugeValue, float64(len(a.Running)), a.ID)
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(n), st)
	}
}

// Registry returns the server's Prometheus registry, for /metrics.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.reg }

// History returns the HA history, oldest first.
func (s *Server) History() []tandem.FailoverEvent { return s.store.Events() }

// Servers returns the live servers, each with how many shards it owns.
func (s *Server) Servers() []tandem.ServerInfo {
	count := map[string]int{}
	for _, o := range s.store.Owners() {
		count[o.ID]++
	}
	servers := s.store.Servers()
	for i := range servers {
		servers[i].Shards = count[servers[i].ID]
	}
	return servers
}

// ShardInfos returns every shard's owner, epoch and since when, with its
// target and any hand-off under way.
func (s *Server) ShardInfos() []tandem.ShardInfo {
	owners, handoffs := s.store.Owners(), s.store.Handoffs()
	var targets []string
	if s.Shards() > 1 {
		targets = s.targetMap(s.store.Servers())
	}
	out := make([]tandem.ShardInfo, s.Shards())
	for k := range out {
		out[k].Shard = k
		if o, ok := owners[k]; ok {
			out[k].Owner, out[k].OwnerURL, out[k].Epoch, out[k].Since = o.ID, o.URL, o.Epoch, o.At
		}
		if h, ok := handoffs[k]; ok {
			out[k].HandoffTo = h.To
		}
		if targets != nil {
			out[k].Target = targets[k]
		}
	}
	return out
}

// OwnerOf returns the owner of the shard of job id, as the view knows it.
func (s *Server) OwnerOf(id string) (tandem.ServerRef, bool) {
	o := s.store.Owner(s.shardOf(id))
	if o == nil {
		return tandem.ServerRef{}, false
	}
	return tandem.ServerRef{ID: o.ID, URL: o.URL}, true
}

// workflowsCollector reports workflow runs by state from the server's view.
type workflowsCollector struct{ s *Server }

var workflowsDesc = prometheus.NewDesc("tandem_workflow_runs", "Workflow runs in the cluster by state, from this server's view.", []string{"state"}, nil)

func (c workflowsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- workflowsDesc }

func (c workflowsCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.s.store.WorkflowCounts()
	for _, st := range tandem.WorkflowStates {
		ch <- prometheus.MustNewConstMetric(workflowsDesc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
}
