package bench

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/tandemhq/tandem/internal/etcdauth"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/pki"
)

// The raw etcd baselines of bench submit and bench failover run on a
// secured cluster's etcd as its own etcd user, which may touch nothing
// outside /tandem/<cluster>/: under benchPrefix they work, where they used
// to write (/tandem-bench/) they are refused.
func TestBaselinesUnderEtcdAuth(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.CreateCA(filepath.Join(dir, "ca"), benchCluster, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	server, err := pki.Issue(ca, pki.RoleServer, "rm1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := etcdauth.Files{CACert: filepath.Join(ca.Dir, pki.CACertFile), Cert: server.CertFile, Key: server.KeyFile}
	e := etcdtest.StartTLS(t, etcdtest.TLS{CACert: files.CACert, Cert: files.Cert, Key: files.Key,
		ClientCommonNames: []string{etcdauth.RootUser, etcdauth.User(benchCluster)}})
	cli, err := etcdauth.NewClient([]string{e.Endpoint}, files)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// As a secured cluster's first server does: authentication on, the
	// cluster's role confined to its prefix.
	if _, err := etcdauth.Setup(ctx, cli, benchCluster, etcdauth.Options{RootPassword: "root-secret"}); err != nil {
		t.Fatal(err)
	}

	if _, err := FencedTxnLatency(ctx, cli, benchPrefix("seq"), 5, 100); err != nil {
		t.Errorf("FencedTxnLatency under %s: got %v, want no error", benchPrefix("seq"), err)
	}
	if ops, _, err := FencedTxnRate(ctx, cli, benchPrefix("rate"), 2, 200*time.Millisecond, 100, nil); err != nil || ops == 0 {
		t.Errorf("FencedTxnRate under %s: got %d ops, %v; want some, no error", benchPrefix("rate"), ops, err)
	}
	if n := countUnder(t, cli, benchPrefix("")); n != 0 {
		t.Errorf("got %d keys left under %s, want 0", n, benchPrefix(""))
	}
	if _, err := FencedTxnLatency(ctx, cli, "/tandem-bench/seq/", 5, 100); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("FencedTxnLatency outside the cluster's prefix: got %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
}

func TestBenchPrefixInClusterRange(t *testing.T) {
	start, end := etcdauth.Range(benchCluster)
	for _, name := range []string{"failover", "submit-123"} {
		p := benchPrefix(name)
		if p < start || p >= end || !strings.HasSuffix(p, "/") {
			t.Errorf("benchPrefix(%q) = %q: want a prefix within [%q, %q)", name, p, start, end)
		}
	}
}

func TestSubmitSecurityPrint(t *testing.T) {
	in := &SubmitResult{Topology: "3 servers, 1 shard, embedded etcd", Etcd: "embedded", Agents: 2, Clients: 8, DurationS: 10,
		SubmitsPerS: 2000, SubmitLatencyS: Summary{N: 1, P50: 0.004, P99: 0.010}, SubmitToRunningS: Summary{N: 200, P50: 0.007, P99: 0.012}}
	se := *in
	se.Secure, se.SubmitsPerS = true, 1500
	var buf bytes.Buffer
	(&SubmitSecurity{Insecure: in, Secure: &se}).Print(&buf)
	out := buf.String()
	for _, want := range []string{"INSECURE", "SECURE/INSECURE", "submit throughput (jobs/s)", "2000", "1500", "0.75",
		"submit-to-running p50 (ms)", "7.0", "submit-to-running p99 (ms)", "12.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestFailoverSecurityFailed(t *testing.T) {
	ok := &FailoverResult{}
	lost := &FailoverResult{Secure: true, Lost: 1}
	if err := (&FailoverSecurity{Insecure: ok, Secure: ok}).Failed(); err != nil {
		t.Errorf("both runs kept every promise: got %v, want nil", err)
	}
	err := (&FailoverSecurity{Insecure: ok, Secure: lost}).Failed()
	if err == nil || !strings.Contains(err.Error(), "secure: 1 acknowledged jobs lost") {
		t.Errorf("the secure run lost a job: got %v, want an error naming the secure run", err)
	}
	var buf bytes.Buffer
	(&FailoverSecurity{Insecure: &FailoverResult{Fault: FaultKill, UnavailabilityS: Summary{N: 1, P50: 0.25, P90: 0.25, P99: 0.25, Max: 0.25}},
		Secure: &FailoverResult{Fault: FaultKill, Secure: true, UnavailabilityS: Summary{N: 1, P50: 0.3, P90: 0.3, P99: 0.3, Max: 0.3}}}).Print(&buf)
	for _, want := range []string{"unavailability (client)", "250.0", "300.0", "insecure: acknowledged", "secure: acknowledged"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
}
