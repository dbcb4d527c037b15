package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemhq/tandem/client"
	"github.com/tandemhq/tandem/internal/pki"
)

// The TLS files come, each on its own, from the flag, else the environment,
// else the config file's cluster (when the servers came from it).
func TestTLSFilesPrecedence(t *testing.T) {
	file := "current-cluster: prod\nclusters:\n  prod:\n    servers: [https://rm1:7070]\n" +
		"    cacert: /conf/ca.pem\n    client-cert: /conf/cli.pem\n    client-key: /conf/cli-key.pem\n"
	tests := []struct {
		name string
		e    configEnv
		args []string
		want client.TLSFiles
	}{
		{"config file", configEnv{defaultFile: file}, nil,
			client.TLSFiles{CACert: "/conf/ca.pem", ClientCert: "/conf/cli.pem", ClientKey: "/conf/cli-key.pem"}},
		{"environment over the file", configEnv{defaultFile: file, env: map[string]string{
			client.EnvCACert: "/env/ca.pem", client.EnvClientCert: "/env/cli.pem", client.EnvClientKey: "/env/key.pem"}}, nil,
			client.TLSFiles{CACert: "/env/ca.pem", ClientCert: "/env/cli.pem", ClientKey: "/env/key.pem"}},
		{"flags over both", configEnv{defaultFile: file, env: map[string]string{client.EnvCACert: "/env/ca.pem"}},
			[]string{"--cacert", "/flag/ca.pem", "--client-cert", "/flag/cli.pem"},
			client.TLSFiles{CACert: "/flag/ca.pem", ClientCert: "/flag/cli.pem", ClientKey: "/conf/cli-key.pem"}},
		{"servers from the environment leave the file's certificates out",
			configEnv{defaultFile: file, env: map[string]string{envServers: "https://other:7070", client.EnvCACert: "/env/ca.pem"}}, nil,
			client.TLSFiles{CACert: "/env/ca.pem"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newTestGlobals(t, tc.e, tc.args...)
			tg, err := g.resolve()
			if err != nil {
				t.Fatal(err)
			}
			if tg.tls != tc.want {
				t.Fatalf("got %+v, want %+v", tg.tls, tc.want)
			}
		})
	}
}

// A client certificate without its key, or without the CA, is a usage error
// naming what is missing.
func TestTLSFilesIncomplete(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{client.EnvCACert: "/x/ca.pem", client.EnvClientCert: "/x/cli.pem"}, "go together"},
		{map[string]string{client.EnvClientCert: "/x/cli.pem", client.EnvClientKey: "/x/key.pem"}, "needs the cluster's CA"},
		{map[string]string{client.EnvCACert: "/does/not/exist.pem"}, "exist.pem"},
	} {
		g := newTestGlobals(t, configEnv{env: tc.env})
		_, err := g.client()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("env %v: got %v, want an error containing %q", tc.env, err, tc.want)
		}
	}
}

// --tls-cert, --tls-key and --tls-ca go together, and the certificate must
// be of the process's role, cluster and ID.
func TestProcTLSLoad(t *testing.T) {
	ca, err := pki.CreateCA(filepath.Join(t.TempDir(), "ca"), "prod", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(ca.Dir, pki.CACertFile)
	w1, err := pki.Issue(ca, pki.RoleAgent, "w1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rm1, err := pki.Issue(ca, pki.RoleServer, "rm1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		f       procTLS
		role    pki.Role
		cluster string
		id      string
		want    string // "" for success
	}{
		{"none", procTLS{}, pki.RoleServer, "prod", "rm1", ""},
		{"server", procTLS{rm1.CertFile, rm1.KeyFile, caFile}, pki.RoleServer, "prod", "rm1", ""},
		{"agent", procTLS{w1.CertFile, w1.KeyFile, caFile}, pki.RoleAgent, "", "w1", ""},
		{"missing key", procTLS{cert: rm1.CertFile, ca: caFile}, pki.RoleServer, "prod", "rm1", "--tls-key missing"},
		{"agent as w2", procTLS{w1.CertFile, w1.KeyFile, caFile}, pki.RoleAgent, "", "w2", "w1's certificate, not w2's"},
		{"agent certificate for a server", procTLS{w1.CertFile, w1.KeyFile, caFile}, pki.RoleServer, "prod", "w1", "of role agent"},
		{"another cluster", procTLS{rm1.CertFile, rm1.KeyFile, caFile}, pki.RoleServer, "dev", "rm1", `not of --cluster "dev"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.f.load(tc.role, tc.cluster, tc.id, nil)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want success", err)
			case tc.want == "" && tc.f.on() && s == nil:
				t.Fatal("got no store")
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
