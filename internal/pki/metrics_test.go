package pki

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// expirySeries gathers tandem_tls_cert_expiry_seconds from reg, by
// file|role|id.
func expirySeries(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "tandem_tls_cert_expiry_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			got[l["file"]+"|"+l["role"]+"|"+l["id"]] = m.GetGauge().GetValue()
		}
	}
	return got
}

func TestExpiryCollector(t *testing.T) {
	ca := newCA(t, "dev")
	first := issue(t, ca, RoleServer, "rm1")
	srv := newStore(t, first, ca)
	cli := newStore(t, issue(t, ca, RoleCLI, "alice"), ca)
	reg := prometheus.NewRegistry()
	// srv twice: a certificate loaded by two stores is reported once.
	reg.MustRegister(NewExpiryCollector(srv, cli, srv))

	caKey := caFile(ca) + "|ca|" + ca.Cert.SerialNumber.Text(16)
	want := map[string]float64{
		first.CertFile + "|server|rm1": float64(first.Cert.NotAfter.Unix()),
		cli.certFile + "|cli|alice":    float64(cli.Leaf().NotAfter.Unix()),
		caKey:                          float64(ca.Cert.NotAfter.Unix()),
	}
	got := expirySeries(t, reg)
	if len(got) != len(want) {
		t.Errorf("got %d series %v, want %d", len(got), got, len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}

	// A reload shows at the next scrape.
	second, err := Issue(ca, RoleServer, "rm1", nil, nil, 2*time.Hour, WithOutput(t.TempDir(), "next"))
	if err != nil {
		t.Fatal(err)
	}
	install(t, second, first)
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, want := expirySeries(t, reg)[first.CertFile+"|server|rm1"], float64(second.Cert.NotAfter.Unix()); got != want {
		t.Errorf("after Reload: got %v, want %v", got, want)
	}
}
