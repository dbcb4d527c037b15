package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/client"
	"sigs.k8s.io/yaml"
)

// Environment variables the CLI reads.
const (
	envServers = "TANDEM_SERVERS" // comma-separated server URLs
	envCluster = "TANDEM_CLUSTER" // a cluster name in the config file
	envConfig  = "TANDEM_CONFIG"  // the config file's path
	envToken   = "TANDEM_TOKEN"   // the API token (bearer secret)
)

// defaultServers is what `tandem dev` starts, so the CLI works against a
// local dev cluster with no configuration at all.
var defaultServers = []string{"http://127.0.0.1:7070", "http://127.0.0.1:7071", "http://127.0.0.1:7072"}

// globals holds the flags every client command shares, and turns them, the
// environment and the config file into a failover client.
type globals struct {
	servers       string
	cluster       string
	configPath    string
	timeout       time.Duration
	retryBase     time.Duration
	retryMax      time.Duration
	retryAttempts int
	token         string
	tlsFiles      client.TLSFiles // --cacert, --client-cert, --client-key

	// flags are the root's persistent flags, to tell a flag given on the
	// command line from its default.
	flags *pflag.FlagSet
	// getenv and userConfigDir are os.Getenv and os.UserConfigDir; tests
	// replace them.
	getenv        func(string) string
	userConfigDir func() (string, error)
}

// register adds the client flags to root as persistent flags.
func (g *globals) register(root *cobra.Command) {
	def := client.DefaultBackoff()
	f := root.PersistentFlags()
	f.StringVar(&g.servers, "servers", "", "comma-separated server URLs, e.g. http://rm1:7070,http://rm2:7070 (overrides $"+envServers+" and the config file)")
	f.StringVar(&g.cluster, "cluster", "", "cluster name in the config file (default $"+envCluster+", else the file's current-cluster)")
	f.StringVar(&g.configPath, "config", "", "client config file (default $"+envConfig+", else "+defaultConfigHint()+")")
	f.DurationVar(&g.timeout, "timeout", 30*time.Second, "give up on the command after this long, failover retries included (0: no limit)")
	f.DurationVar(&g.retryBase, "retry-base", def.Base, "first backoff sleep between retries across servers")
	f.DurationVar(&g.retryMax, "retry-max", def.Max, "longest backoff sleep between retries")
	f.IntVar(&g.retryAttempts, "retry-attempts", def.Attempts, "attempts per request across all servers before giving up")
	f.StringVar(&g.token, "token", "", "API token, sent only to the configured servers (default $"+envToken+", else the config file cluster's token)")
	f.StringVar(&g.tlsFiles.CACert, "cacert", "", "CA certificate that https servers' certificates must chain to (default $"+client.EnvCACert+", else the config file cluster's cacert)")
	f.StringVar(&g.tlsFiles.ClientCert, "client-cert", "", "client certificate presented to https servers (default $"+client.EnvClientCert+", else the config file cluster's client-cert)")
	f.StringVar(&g.tlsFiles.ClientKey, "client-key", "", "the key of --client-cert (default $"+client.EnvClientKey+", else the config file cluster's client-key)")
	g.flags = f
}

func defaultConfigHint() string {
	if runtime.GOOS == "darwin" {
		return "~/Library/Application Support/tandem/config.yaml"
	}
	return "$XDG_CONFIG_HOME/tandem/config.yaml"
}

func (g *globals) env(key string) string {
	if g.getenv != nil {
		return g.getenv(key)
	}
	return os.Getenv(key)
}

func (g *globals) changed(flag string) bool {
	return g.flags != nil && g.flags.Changed(flag)
}

// target is where the client commands go: the servers, the retry policy,
// the token, and where the servers came from (for error messages).
type target struct {
	servers []string
	backoff client.Backoff
	source  string
	token   string
	tls     client.TLSFiles
}

// resolve works out the target. Servers come from, in order of precedence:
// --servers, $TANDEM_SERVERS, the config file's cluster (chosen by --cluster,
// $TANDEM_CLUSTER or the file's current-cluster), and defaultServers. Retry
// settings come from the --retry-* flags given explicitly, else the chosen
// cluster's retry section, else the client's defaults.
func (g *globals) resolve() (*target, error) {
	t := &target{backoff: client.Backoff{Base: g.retryBase, Max: g.retryMax, Attempts: g.retryAttempts}}
	switch {
	case g.changed("servers"):
		t.servers, t.source = splitList(g.servers), "--servers"
	case g.env(envServers) != "":
		t.servers, t.source = splitList(g.env(envServers)), "$"+envServers
	default:
		if err := g.fromConfigFile(t); err != nil {
			return nil, err
		}
		if t.source == "" {
			t.servers, t.source = defaultServers, "the default servers"
		}
	}
	if len(t.servers) == 0 {
		return nil, fmt.Errorf("%s: the server list is empty: give at least one server URL, such as http://127.0.0.1:7070", t.source)
	}
	for _, s := range t.servers {
		if err := checkServerURL(s); err != nil {
			return nil, fmt.Errorf("%s: %w", t.source, err)
		}
	}
	if err := t.backoff.Validate(); err != nil {
		return nil, fmt.Errorf("retry settings: %w", err)
	}
	// The token: --token, else $TANDEM_TOKEN, else the token of the config
	// file's cluster (set by fromConfigFile only when the servers came from
	// that cluster, so a cluster's token never goes to other servers).
	switch {
	case g.changed("token"):
		t.token = g.token
	case g.env(envToken) != "":
		t.token = g.env(envToken)
	}
	// The TLS files, each on its own: the flag, else the variable, else
	// the config file's cluster (when the servers came from it).
	for _, f := range []struct {
		flag, env string
		flagVal   string
		dst       *string
	}{
		{"cacert", client.EnvCACert, g.tlsFiles.CACert, &t.tls.CACert},
		{"client-cert", client.EnvClientCert, g.tlsFiles.ClientCert, &t.tls.ClientCert},
		{"client-key", client.EnvClientKey, g.tlsFiles.ClientKey, &t.tls.ClientKey},
	} {
		switch {
		case g.changed(f.flag):
			*f.dst = f.flagVal
		case g.env(f.env) != "":
			*f.dst = g.env(f.env)
		}
	}
	if g.changed("token") && t.token == "" {
		return nil, usagef("--token is empty: give the token's secret, or leave the flag out")
	}
	return t, nil
}

// fromConfigFile fills t from the config file's chosen cluster, if a cluster
// is chosen. It leaves t.source empty when none is.
func (g *globals) fromConfigFile(t *target) error {
	path, explicit, err := g.configFile()
	if err != nil {
		return err
	}
	cfg, err := loadConfig(path, explicit)
	if err != nil {
		return err
	}
	name, how := g.cluster, "--cluster"
	if name == "" {
		name, how = g.env(envCluster), "$"+envCluster
	}
	if name == "" && cfg != nil {
		name, how = cfg.CurrentCluster, "current-cluster"
	}
	if name == "" {
		return nil
	}
	if cfg == nil {
		return fmt.Errorf("cluster %q (from %s): there is no config file at %s to define it", name, how, path)
	}
	cl, ok := cfg.Clusters[name]
	if !ok {
		names := slices.Sorted(maps.Keys(cfg.Clusters))
		has := "it defines no clusters"
		if len(names) > 0 {
			has = "it defines " + strings.Join(names, ", ")
		}
		return fmt.Errorf("cluster %q (from %s) is not in %s: %s", name, how, path, has)
	}
	t.servers = cl.Servers
	t.token = cl.Token
	t.tls = client.TLSFiles{CACert: cl.CACert, ClientCert: cl.ClientCert, ClientKey: cl.ClientKey}
	t.source = fmt.Sprintf("cluster %q in %s", name, path)
	if t.servers == nil {
		t.servers = []string{}
	}
	if r := cl.Retry; r != nil {
		if r.Base != 0 && !g.changed("retry-base") {
			t.backoff.Base = time.Duration(r.Base)
		}
		if r.Max != 0 && !g.changed("retry-max") {
			t.backoff.Max = time.Duration(r.Max)
		}
		if r.Attempts != 0 && !g.changed("retry-attempts") {
			t.backoff.Attempts = r.Attempts
		}
		if err := t.backoff.Validate(); err != nil {
			return fmt.Errorf("%s: retry: %w", t.source, err)
		}
	}
	return nil
}

// configFile returns the config file's path and whether the user named it
// (a file the user named must exist; the default one need not).
func (g *globals) configFile() (path string, explicit bool, err error) {
	if g.configPath != "" {
		return g.configPath, true, nil
	}
	if p := g.env(envConfig); p != "" {
		return p, true, nil
	}
	dirFn := g.userConfigDir
	if dirFn == nil {
		dirFn = os.UserConfigDir
	}
	dir, err := dirFn()
	if err != nil {
		return "", false, nil // no home or XDG dir: there is no default file
	}
	return filepath.Join(dir, "tandem", "config.yaml"), false, nil
}

// serverList returns the servers the client commands talk to.
func (g *globals) serverList() ([]string, error) {
	t, err := g.resolve()
	if err != nil {
		return nil, err
	}
	return t.servers, nil
}

// client returns a failover client for the resolved servers.
func (g *globals) client() (*client.Client, error) {
	t, err := g.resolve()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := t.tls.Config()
	if err != nil {
		return nil, usagef("%s", tandem.ErrorMessage(err))
	}
	c, err := client.New(client.Config{
		Servers:   t.servers,
		Backoff:   t.backoff,
		UserAgent: "tandem-cli/" + tandem.Version,
		Token:     t.token,
		TLS:       tlsCfg,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.source, err)
	}
	return c, nil
}

// setup prepares a client command: the context bounded by --timeout and
// cancelled by an interrupt, and the client. The caller must call cancel.
func (g *globals) setup(cmd *cobra.Command) (ctx context.Context, cancel context.CancelFunc, c *client.Client, err error) {
	if g.timeout < 0 {
		return nil, nil, nil, usagef("--timeout is %v: it must not be negative", g.timeout)
	}
	if c, err = g.client(); err != nil {
		return nil, nil, nil, err
	}
	ctx = cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	cancel = stop
	if g.timeout > 0 {
		var cancelTimeout context.CancelFunc
		ctx, cancelTimeout = context.WithTimeoutCause(ctx, g.timeout,
			fmt.Errorf("gave up after --timeout %v: %w", g.timeout, context.DeadlineExceeded))
		cancel = func() { cancelTimeout(); stop() }
	}
	return ctx, cancel, c, nil
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	out := []string{}
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// checkServerURL says what is wrong with a server URL, naming it.
func checkServerURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("server URL %q is malformed: %v", s, errors.Unwrap(err))
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("server URL %q: the scheme must be http or https, as in http://127.0.0.1:7070", s)
	case u.Hostname() == "":
		return fmt.Errorf("server URL %q has no host", s)
	}
	return nil
}

// configFileData is the client config file: named clusters, Hue-style.
//
//	current-cluster: prod
//	clusters:
//	  prod:
//	    servers: [http://rm1.example:7070, http://rm2.example:7070]
//	    retry: {base: 20ms, max: 250ms, attempts: 40}
//	    token: tdm_...   # optional; sent to these servers only (keep the file 0600)
//	    cacert: /etc/tandem/ca.pem          # optional, for https servers
//	    client-cert: /home/ana/tandem/cli-ana.pem  # optional client certificate
//	    client-key: /home/ana/tandem/cli-ana-key.pem
type configFileData struct {
	CurrentCluster string                   `json:"current-cluster"`
	Clusters       map[string]clusterConfig `json:"clusters"`
}

type clusterConfig struct {
	Servers []string     `json:"servers"`
	Retry   *retryConfig `json:"retry"`
	Token   string       `json:"token"`
	// The TLS files for https servers (client.TLSFiles).
	CACert     string `json:"cacert"`
	ClientCert string `json:"client-cert"`
	ClientKey  string `json:"client-key"`
}

type retryConfig struct {
	Base     duration `json:"base"`
	Max      duration `json:"max"`
	Attempts int      `json:"attempts"`
}

// duration is a time.Duration written as a string such as "250ms".
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"250ms\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"250ms\", got %q", s)
	}
	*d = duration(v)
	return nil
}

// loadConfig reads and strictly parses the config file: syntax errors,
// duplicate keys, unknown keys and wrongly typed values are all errors that
// name the file. A missing file is nil, nil unless the user named it.
func loadConfig(path string, explicit bool) (*configFileData, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	cfg, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

func parseConfig(data []byte) (*configFileData, error) {
	// YAMLToJSONStrict reports syntax errors and duplicate keys with their
	// line ("yaml: line 3: ...").
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
		return nil, errors.New(strings.ReplaceAll(msg, ":\n  ", ": ")) // one line per error
	}
	var doc any
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	if err := checkSchema(doc); err != nil {
		return nil, err
	}
	var cfg configFileData
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("%s: want %s, got %s", te.Field, te.Type, te.Value)
		}
		return nil, errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return &cfg, nil
}

// checkSchema reports the first key of doc the schema does not know and the
// first value of the wrong type, naming its path in the file (the JSON
// decoder would name neither the cluster nor, for a duration, the key).
func checkSchema(doc any) error {
	if doc == nil {
		return nil // an empty file
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return errors.New("the file must be a mapping with the keys current-cluster and clusters")
	}
	if err := checkKeys("", top, "current-cluster", "clusters"); err != nil {
		return err
	}
	if v, ok := top["current-cluster"]; ok {
		if _, ok := v.(string); !ok {
			return fmt.Errorf("current-cluster: want a cluster name, got %s", jsonText(v))
		}
	}
	clusters, ok := top["clusters"].(map[string]any)
	if !ok {
		if v, present := top["clusters"]; present && v != nil {
			return fmt.Errorf("clusters: want a mapping of cluster names to clusters, got %s", jsonText(v))
		}
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(clusters)) {
		p := "clusters." + name
		cl, ok := clusters[name].(map[string]any)
		if !ok {
			if clusters[name] == nil {
				continue // "prod:" with nothing under it: no servers, said later
			}
			return fmt.Errorf("%s: want a mapping with servers and retry, got %s", p, jsonText(clusters[name]))
		}
		if err := checkKeys(p, cl, "servers", "retry", "token", "cacert", "client-cert", "client-key"); err != nil {
			return err
		}
		for _, k := range []string{"cacert", "client-cert", "client-key"} {
			if v, ok := cl[k]; ok && v != nil {
				if _, ok := v.(string); !ok {
					return fmt.Errorf("%s.%s: want a file name, got %s", p, k, jsonText(v))
				}
			}
		}
		if v, ok := cl["token"]; ok && v != nil {
			if _, ok := v.(string); !ok {
				// Not jsonText(v): the value may be a mistyped secret.
				return fmt.Errorf("%s.token: want the token's secret as a string", p)
			}
		}
		if v, ok := cl["servers"]; ok && v != nil {
			list, ok := v.([]any)
			if !ok {
				return fmt.Errorf("%s.servers: want a list of URLs, got %s", p, jsonText(v))
			}
			for i, u := range list {
				if _, ok := u.(string); !ok {
					return fmt.Errorf("%s.servers[%d]: want a URL, got %s", p, i, jsonText(u))
				}
			}
		}
		v, ok := cl["retry"]
		if !ok || v == nil {
			continue
		}
		r, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s.retry: want a mapping with base, max and attempts, got %s", p, jsonText(v))
		}
		if err := checkKeys(p+".retry", r, "base", "max", "attempts"); err != nil {
			return err
		}
		for _, k := range []string{"base", "max"} {
			if v, ok := r[k]; ok {
				if s, ok := v.(string); !ok {
					return fmt.Errorf("%s.retry.%s: want a duration such as \"250ms\", got %s", p, k, jsonText(v))
				} else if _, err := time.ParseDuration(s); err != nil {
					return fmt.Errorf("%s.retry.%s: want a duration such as \"250ms\", got %q", p, k, s)
				}
			}
		}
		if v, ok := r["attempts"]; ok {
			if n, ok := v.(float64); !ok || n != float64(int(n)) {
				return fmt.Errorf("%s.retry.attempts: want a whole number, got %s", p, jsonText(v))
			}
		}
	}
	return nil
}

func checkKeys(path string, m map[string]any, known ...string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !slices.Contains(known, k) {
			where := "at the top level"
			if path != "" {
				where = "in " + path
			}
			return fmt.Errorf("unknown key %q %s (known keys: %s)", k, where, strings.Join(known, ", "))
		}
	}
	return nil
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
