package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/tandemhq/tandem/client"
)

const prodDevConfig = `
current-cluster: prod
clusters:
  prod:
    servers: [http://rm1.example:7070, http://rm2.example:7070]
    retry: {base: 5ms, max: 80ms, attempts: 7}
  dev:
    servers:
      - http://127.0.0.1:7070
`

// configEnv is a test's environment: variables, the default config file
// (under a fake user config dir) and other files, by name.
type configEnv struct {
	env         map[string]string
	defaultFile string // "" means none
	files       map[string]string
}

// newTestGlobals parses args as the root's flags would be parsed, with env
// as the environment. File names in args and env that start with "@" are
// replaced with the path of that file from e.files.
func newTestGlobals(t *testing.T, e configEnv, args ...string) *globals {
	t.Helper()
	dir := t.TempDir()
	paths := map[string]string{}
	for name, content := range e.files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		paths["@"+name] = p
	}
	paths["@missing"] = filepath.Join(dir, "missing.yaml")
	expand := func(s string) string {
		for k, v := range paths {
			s = strings.ReplaceAll(s, k, v)
		}
		return s
	}
	confDir := filepath.Join(dir, "xdg")
	if e.defaultFile != "" {
		if err := os.MkdirAll(filepath.Join(confDir, "tandem"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(confDir, "tandem", "config.yaml"), []byte(e.defaultFile), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	g := &globals{
		getenv:        func(k string) string { return expand(e.env[k]) },
		userConfigDir: func() (string, error) { return confDir, nil },
	}
	root := &cobra.Command{Use: "tandem"}
	g.register(root)
	for i := range args {
		args[i] = expand(args[i])
	}
	if err := root.PersistentFlags().Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return g
}

func TestServerListPrecedence(t *testing.T) {
	def := client.DefaultBackoff()
	prodRetry := client.Backoff{Base: 5 * time.Millisecond, Max: 80 * time.Millisecond, Attempts: 7}
	prod := []string{"http://rm1.example:7070", "http://rm2.example:7070"}
	dev := []string{"http://127.0.0.1:7070"}
	tests := []struct {
		name        string
		e           configEnv
		args        []string
		wantServers []string
		wantBackoff client.Backoff
	}{
		{"nothing: the dev cluster's default", configEnv{}, nil, defaultServers, def},
		{"env", configEnv{env: map[string]string{envServers: "http://a:1, http://b:2"}}, nil, []string{"http://a:1", "http://b:2"}, def},
		{"flag beats env", configEnv{env: map[string]string{envServers: "http://a:1"}}, []string{"--servers", "http://f:1,http://g:2,"}, []string{"http://f:1", "http://g:2"}, def},
		{"flag beats config file", configEnv{defaultFile: prodDevConfig}, []string{"--servers=http://f:1"}, []string{"http://f:1"}, def},
		{"env beats config file", configEnv{defaultFile: prodDevConfig, env: map[string]string{envServers: "http://a:1"}}, nil, []string{"http://a:1"}, def},
		{"current-cluster of the default file", configEnv{defaultFile: prodDevConfig}, nil, prod, prodRetry},
		{"$TANDEM_CLUSTER beats current-cluster", configEnv{defaultFile: prodDevConfig, env: map[string]string{envCluster: "dev"}}, nil, dev, def},
		{"--cluster beats $TANDEM_CLUSTER", configEnv{defaultFile: prodDevConfig, env: map[string]string{envCluster: "dev"}}, []string{"--cluster", "prod"}, prod, prodRetry},
		{"file without current-cluster: default", configEnv{defaultFile: "clusters:\n  x:\n    servers: [http://x:1]\n"}, nil, defaultServers, def},
		{"--config", configEnv{files: map[string]string{"c.yaml": prodDevConfig}}, []string{"--config", "@c.yaml", "--cluster", "dev"}, dev, def},
		{"$TANDEM_CONFIG", configEnv{files: map[string]string{"c.yaml": prodDevConfig}, env: map[string]string{envConfig: "@c.yaml"}}, nil, prod, prodRetry},
		{"--config beats $TANDEM_CONFIG and the default file", configEnv{
			defaultFile: "current-cluster: d\nclusters: {d: {servers: [http://d:1]}}\n",
			files:       map[string]string{"c.yaml": prodDevConfig, "e.yaml": "current-cluster: e\nclusters: {e: {servers: [http://e:1]}}\n"},
			env:         map[string]string{envConfig: "@e.yaml"},
		}, []string{"--config=@c.yaml"}, prod, prodRetry},
		{"retry flags beat the file", configEnv{defaultFile: prodDevConfig}, []string{"--retry-attempts", "3", "--retry-max", "1s"},
			prod, client.Backoff{Base: 5 * time.Millisecond, Max: time.Second, Attempts: 3}},
		{"partial retry in the file", configEnv{defaultFile: "current-cluster: p\nclusters:\n  p:\n    servers: [http://p:1]\n    retry: {attempts: 2}\n"}, nil,
			[]string{"http://p:1"}, client.Backoff{Base: def.Base, Max: def.Max, Attempts: 2}},
		{"retry flags alone", configEnv{}, []string{"--retry-base=1ms", "--retry-max=2ms", "--retry-attempts=9"}, defaultServers,
			client.Backoff{Base: time.Millisecond, Max: 2 * time.Millisecond, Attempts: 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGlobals(t, tt.e, tt.args...)
			got, err := g.resolve()
			if err != nil {
				t.Fatalf("resolve: got error %v, want none", err)
			}
			if !slices.Equal(got.servers, tt.wantServers) {
				t.Errorf("got servers %q, want %q", got.servers, tt.wantServers)
			}
			if got.backoff != tt.wantBackoff {
				t.Errorf("got backoff %+v, want %+v", got.backoff, tt.wantBackoff)
			}
			list, err := g.serverList()
			if err != nil || !slices.Equal(list, tt.wantServers) {
				t.Errorf("serverList: got %q, %v, want %q", list, err, tt.wantServers)
			}
			if _, err := g.client(); err != nil {
				t.Errorf("client: got error %v, want none", err)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		e    configEnv
		args []string
		want []string // substrings of the error
	}{
		{"unknown --cluster", configEnv{defaultFile: prodDevConfig}, []string{"--cluster", "staging"},
			[]string{`cluster "staging" (from --cluster) is not in`, "config.yaml", "it defines dev, prod"}},
		{"unknown $TANDEM_CLUSTER", configEnv{defaultFile: prodDevConfig, env: map[string]string{envCluster: "qa"}}, nil,
			[]string{`cluster "qa" (from $TANDEM_CLUSTER)`, "it defines dev, prod"}},
		{"unknown current-cluster", configEnv{defaultFile: "current-cluster: gone\nclusters: {a: {servers: [http://a:1]}}\n"}, nil,
			[]string{`cluster "gone" (from current-cluster) is not in`, "it defines a"}},
		{"no clusters at all", configEnv{defaultFile: "current-cluster: x\n"}, nil, []string{"it defines no clusters"}},
		{"--cluster with no file", configEnv{}, []string{"--cluster", "prod"}, []string{`cluster "prod" (from --cluster): there is no config file at`}},
		{"missing --config", configEnv{}, []string{"--config", "@missing"}, []string{"config file:", "missing.yaml", "no such file"}},
		{"missing $TANDEM_CONFIG", configEnv{env: map[string]string{envConfig: "@missing"}}, nil, []string{"missing.yaml", "no such file"}},
		{"empty --servers", configEnv{}, []string{"--servers", ""}, []string{"--servers: the server list is empty"}},
		{"blank --servers", configEnv{}, []string{"--servers", " , "}, []string{"--servers: the server list is empty"}},
		{"empty cluster", configEnv{defaultFile: "current-cluster: e\nclusters: {e: {servers: []}}\n"}, nil, []string{`cluster "e" in`, "the server list is empty"}},
		{"cluster without servers", configEnv{defaultFile: "current-cluster: e\nclusters: {e: {}}\n"}, nil, []string{"the server list is empty"}},
		{"malformed URL in flag", configEnv{}, []string{"--servers", "http://ok:1,rm2.example:7070"}, []string{`--servers: server URL "rm2.example:7070"`}},
		{"bad scheme in env", configEnv{env: map[string]string{envServers: "ftp://x:1"}}, nil, []string{`$TANDEM_SERVERS: server URL "ftp://x:1": the scheme must be http or https`}},
		{"bad port in file", configEnv{defaultFile: "current-cluster: p\nclusters: {p: {servers: ['http://h:port']}}\n"}, nil, []string{`cluster "p" in`, `server URL "http://h:port" is malformed`}},
		{"no host", configEnv{}, []string{"--servers", "http:///x"}, []string{`server URL "http:///x" has no host`}},
		{"bad YAML", configEnv{defaultFile: "current-cluster: prod\nclusters:\n  prod:\n    servers: [http://a:1\n"}, nil, []string{"config file", "config.yaml", "line"}},
		{"tab-indented YAML", configEnv{defaultFile: "clusters:\n\tprod: {}\n"}, nil, []string{"config.yaml", "line 2"}},
		{"duplicate key", configEnv{defaultFile: "clusters:\n  a: {servers: [http://a:1]}\n  a: {servers: [http://b:1]}\n"}, nil, []string{"config.yaml", `"a" already set`}},
		{"unknown top-level key", configEnv{defaultFile: "current_cluster: prod\n"}, nil, []string{`unknown key "current_cluster" at the top level (known keys: current-cluster, clusters)`}},
		{"unknown cluster key", configEnv{defaultFile: "clusters:\n  prod:\n    server: [http://a:1]\n"}, nil, []string{`unknown key "server" in clusters.prod (known keys: servers, retry, token, cacert, client-cert, client-key)`}},
		{"unknown retry key", configEnv{defaultFile: "clusters:\n  prod:\n    servers: [http://a:1]\n    retry: {min: 1ms}\n"}, nil, []string{`unknown key "min" in clusters.prod.retry`}},
		{"number for a duration", configEnv{defaultFile: "current-cluster: p\nclusters:\n  p:\n    servers: [http://a:1]\n    retry: {base: 20}\n"}, nil, []string{`clusters.p.retry.base: want a duration such as "250ms", got 20`}},
		{"bad duration", configEnv{defaultFile: "clusters:\n  p:\n    servers: [http://a:1]\n    retry: {max: soon}\n"}, nil, []string{`clusters.p.retry.max: want a duration such as "250ms", got "soon"`}},
		{"string for a list", configEnv{defaultFile: "clusters:\n  p:\n    servers: http://a:1\n"}, nil, []string{"clusters.p.servers: want a list of URLs, got \"http://a:1\""}},
		{"number in the server list", configEnv{defaultFile: "clusters:\n  p:\n    servers: [http://a:1, 7]\n"}, nil, []string{"clusters.p.servers[1]: want a URL, got 7"}},
		{"fractional attempts", configEnv{defaultFile: "clusters:\n  p:\n    retry: {attempts: 1.5}\n"}, nil, []string{"clusters.p.retry.attempts: want a whole number, got 1.5"}},
		{"list for clusters", configEnv{defaultFile: "clusters: [a, b]\n"}, nil, []string{`clusters: want a mapping of cluster names to clusters, got ["a","b"]`}},
		{"list for current-cluster", configEnv{defaultFile: "current-cluster: [a]\n"}, nil, []string{`current-cluster: want a cluster name, got ["a"]`}},
		{"not a mapping", configEnv{defaultFile: "- a\n- b\n"}, nil, []string{"must be a mapping"}},
		{"bad retry in file", configEnv{defaultFile: "current-cluster: p\nclusters:\n  p:\n    servers: [http://a:1]\n    retry: {base: 1s, max: 1ms}\n"}, nil, []string{`cluster "p" in`, "retry: backoff max 1ms is less than its base 1s"}},
		{"bad retry flag", configEnv{}, []string{"--retry-attempts", "0"}, []string{"retry settings: backoff attempts is 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newTestGlobals(t, tt.e, tt.args...)
			_, err := g.resolve()
			if err == nil {
				t.Fatalf("resolve: got no error, want one containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("got error %q, want it to contain %q", err, w)
				}
			}
			if _, err := g.client(); err == nil {
				t.Errorf("client: got no error, want one")
			}
		})
	}
}

func TestMissingDefaultConfigIsFine(t *testing.T) {
	g := newTestGlobals(t, configEnv{})
	g.userConfigDir = func() (string, error) { return "", errors.New("no home") }
	got, err := g.serverList()
	if err != nil || !slices.Equal(got, defaultServers) {
		t.Errorf("got %q, %v, want the default servers", got, err)
	}
}

func TestEmptyConfigFile(t *testing.T) {
	g := newTestGlobals(t, configEnv{files: map[string]string{"empty.yaml": ""}}, "--config", "@empty.yaml")
	got, err := g.serverList()
	if err != nil || !slices.Equal(got, defaultServers) {
		t.Errorf("got %q, %v, want the default servers", got, err)
	}
}
