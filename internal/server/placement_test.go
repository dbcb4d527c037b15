package server_test

import (
	"testing"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/server"
)

// A backlog that waits for an agent is placed in batches once one comes,
// and the agent's reports of many attempts are recorded in batches too:
// fewer transactions than records, every job run exactly once, and every
// write fenced by the owner's epoch (the audit).
func TestBacklogIsPlacedAndReportedInBatches(t *testing.T) {
	c := newCluster(t, 1, nil)
	cl := c.client()
	active := c.nodes[c.waitActive()].srv
	const n = 3 * 32
	var ids []string
	for i := 0; i < n; i++ {
		j := submit(t, cl, tandem.JobSpec{Command: []string{"true"}, Resources: tandem.Resources{CPU: 0.01, MemoryMB: 1}})
		ids = append(ids, j.ID)
	}
	if got := metricValue(t, active, "tandem_placements_total"); got != 0 {
		t.Fatalf("%v placements with no agent", got)
	}
	c.addAgent("a1", tandem.Resources{CPU: 64, MemoryMB: 1 << 16}, nil)
	for _, id := range ids {
		j := waitJob(t, cl, id, ended)
		if j.State != tandem.JobSucceeded || len(j.Attempts) != 1 {
			t.Fatalf("job %s: %s after %d attempts, want succeeded after 1", id, j.State, len(j.Attempts))
		}
	}
	placements := metricValue(t, active, "tandem_placements_total")
	txns := metricValue(t, active, "tandem_placement_transactions_total")
	batched := metricSeries(t, active, "tandem_placements_total", "how", "batch")
	// A batch whose answer was lost (5 s without one, on a loaded machine)
	// is counted nowhere: the one-by-one path finds its jobs placed.
	if placements == 0 || placements > n || batched == 0 || txns >= placements {
		t.Fatalf("%v placements (%v in batches) in %v transactions: want up to %d, some batched, in fewer transactions", placements, batched, txns, n)
	}
	reports := metricValue(t, active, "tandem_agent_reports_recorded_total")
	reportTxns := metricValue(t, active, "tandem_agent_report_transactions_total")
	if reports < n || metricSeries(t, active, "tandem_agent_reports_recorded_total", "how", "batch") == 0 || reportTxns >= reports {
		t.Fatalf("%v reports recorded in %v transactions: want at least %d (one end per job), some batched, in fewer transactions", reports, reportTxns, n)
	}
	t.Logf("%v placements in %v transactions, %v reports in %v", placements, txns, reports, reportTxns)
	c.audit(1)
}

// metricSeries returns the value of the series of counter name whose label
// is value.
func metricSeries(t *testing.T, srv *server.Server, name, label, value string) float64 {
	t.Helper()
	mfs, err := srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
