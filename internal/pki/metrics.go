package pki

import (
	"github.com/prometheus/client_golang/prometheus"
)

var expiryDesc = prometheus.NewDesc("tandem_tls_cert_expiry_seconds",
	"When each loaded TLS certificate expires, in Unix seconds (role ca: a CA certificate, id its serial number in hex).",
	[]string{"file", "role", "id"}, nil)

// NewExpiryCollector returns a Prometheus collector of
// tandem_tls_cert_expiry_seconds{file,role,id} for the current
// certificates of the stores, read at each scrape so reloads show. A
// certificate loaded by several stores is reported once, with the earliest
// expiry if they differ. Register it in the component's own registry, as
// the server's and supervisor's metrics are.
func NewExpiryCollector(stores ...*Store) prometheus.Collector {
	return expiryCollector(stores)
}

type expiryCollector []*Store

func (c expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (c expiryCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ file, role, id string }
	var order []key
	earliest := map[key]Expiry{}
	for _, s := range c {
		for _, e := range s.Expiries() {
			k := key{e.File, e.Role, e.ID}
			if prev, ok := earliest[k]; !ok {
				order = append(order, k)
			} else if !e.NotAfter.Before(prev.NotAfter) {
				continue
			}
			earliest[k] = e
		}
	}
	for _, k := range order {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(earliest[k].NotAfter.Unix()), k.file, k.role, k.id)
	}
}
