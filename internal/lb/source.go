package lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdview"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise"
)

// API is the backend of tandem's own servers.
type API struct {
	Listen string // where the proxy takes API traffic, e.g. :8080 ("" for none)
	// TLS makes the proxy call every server over TLS, even one that
	// advertises an http:// URL; otherwise a server is called over TLS
	// when its URL is https://.
	TLS bool
	// ListenTLS makes the proxy serve TLS on Listen.
	ListenTLS bool
}

// Service is a supervised service put behind the proxy: its owner's node
// gets the traffic, on Port.
type Service struct {
	Name   string `json:"name"`   // the supervised service's name
	Listen string `json:"listen"` // where the proxy takes its traffic
	Port   int    `json:"port"`   // the port the service listens on, on its node
	Health string `json:"health"` // HTTP path the proxy checks ("" for a TCP check)
	Sticky bool   `json:"sticky"`
}

// ParseService parses the flag form NAME=LISTEN,port=P[,health=/path][,sticky].
func ParseService(s string) (Service, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return Service{}, fmt.Errorf("--service %q: want NAME=LISTEN,port=PORT[,health=/PATH][,sticky]", s)
	}
	if err := keys.ValidateName("service", name); err != nil {
		return Service{}, fmt.Errorf("--service %q: %w", s, err)
	}
	parts := strings.Split(rest, ",")
	svc := Service{Name: name, Listen: parts[0]}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "port":
			if _, err := fmt.Sscanf(v, "%d", &svc.Port); err != nil || svc.Port < 1 || svc.Port > 65535 {
				return Service{}, fmt.Errorf("--service %q: port %q: want 1 to 65535", s, v)
			}
		case "health":
			if !strings.HasPrefix(v, "/") {
				return Service{}, fmt.Errorf("--service %q: health %q: want a path like /health", s, v)
			}
			svc.Health = v
		case "sticky":
			svc.Sticky = true
		default:
			return Service{}, fmt.Errorf("--service %q: unknown setting %q: want port=, health= or sticky", s, k)
		}
	}
	if err := validListen(svc.Listen); err != nil {
		return Service{}, fmt.Errorf("--service %q: %w", s, err)
	}
	if svc.Port == 0 {
		return Service{}, fmt.Errorf("--service %q: no port=: the port the service listens on, on its node", s)
	}
	return svc, nil
}

func validListen(l string) error {
	host, port, ok := strings.Cut(l, ":")
	if !ok || port == "" || strings.Contains(host, " ") {
		return fmt.Errorf("listen %q: want HOST:PORT or :PORT", l)
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("listen %q: port must be 1 to 65535", l)
	}
	return nil
}

// Source watches a cluster's membership in etcd (etcdview: read, then
// watched, read again after a lost watch; jobs are not kept) and computes
// what the proxy should do.
type Source struct {
	cache    *etcdview.Cache
	keys     keys.Layout
	api      API
	services []Service
}

// NewSource returns a Source of cluster's membership for api and services.
func NewSource(cli *clientv3.Client, cluster string, api API, services []Service, log *slog.Logger) (*Source, error) {
	if err := keys.ValidateName("cluster", cluster); err != nil {
		return nil, err
	}
	if api.Listen == "" && len(services) == 0 {
		return nil, errors.New("nothing to balance: give --listen for tandem's API, or --service")
	}
	if api.Listen != "" {
		if err := validListen(api.Listen); err != nil {
			return nil, fmt.Errorf("--listen: %w", err)
		}
	}
	seen := map[string]bool{api.Listen: api.Listen != ""}
	for _, s := range services {
		if seen[s.Listen] {
			return nil, fmt.Errorf("listen address %s given twice", s.Listen)
		}
		seen[s.Listen] = true
	}
	l := keys.New(cluster)
	s := &Source{keys: l, api: api, services: services}
	s.cache = etcdview.New(cli, etcdview.Config{
		Watch: l.Prefix(),
		Load: []etcdview.Range{{Key: l.ServersPrefix(), Prefix: true}, {Key: l.Leader()}, {Key: l.ShardsPrefix(), Prefix: true},
			{Key: l.SupervisePrefix(), Prefix: true}},
		Keep: s.relevant,
		// Through a frozen etcd member (a tandem server with embedded etcd
		// under SIGSTOP) the watch would see nothing for 10 s or more.
		StallCheck: 500 * time.Millisecond,
		Log:        log,
	})
	return s, nil
}

// Run keeps the source up to date until ctx ends.
func (s *Source) Run(ctx context.Context) { s.cache.Run(ctx) }

// Changed returns a channel closed at the next change of membership.
func (s *Source) Changed() <-chan struct{} { return s.cache.Changed() }

// Synced reports whether the source has read etcd at least once.
func (s *Source) Synced() bool { return s.cache.Synced() }

// Rev is the etcd revision the source has reached.
func (s *Source) Rev() int64 { return s.cache.Rev() }

// Lag measures how far the membership watch is behind etcd (see
// etcdview.Cache.Lag).
func (s *Source) Lag(ctx context.Context) (time.Duration, error) { return s.cache.Lag(ctx) }

// SeenAt is when the watch delivered the last change of membership: the
// start of the time to apply it.
func (s *Source) SeenAt() time.Time { return s.cache.SeenAt() }

func (s *Source) relevant(k string) bool {
	return strings.HasPrefix(k, s.keys.ServersPrefix()) || k == s.keys.Leader() ||
		(strings.HasPrefix(k, s.keys.ShardsPrefix()) && strings.HasSuffix(k, "/owner")) ||
		strings.HasPrefix(k, s.keys.SuperviseNodesPrefix()) || strings.HasPrefix(k, s.keys.SuperviseServicesPrefix()) ||
		(strings.HasPrefix(k, s.keys.SuperviseSvcPrefix()) && (strings.HasSuffix(k, "/owner") || strings.Contains(k, "/instances/")))
}

// Desired computes what the proxy should do now.
func (s *Source) Desired() Desired {
	d := Desired{Rev: s.cache.Rev()}
	if s.api.Listen != "" {
		d.Backends = append(d.Backends, s.apiBackend())
	}
	for _, svc := range s.services {
		d.Backends = append(d.Backends, s.serviceBackend(svc))
	}
	d.Normalize()
	return d
}

// apiBackend: every registered server; with one shard only the active is
// up (the owner of the leader key), with several every server that owns a
// shard.
func (s *Source) apiBackend() Backend {
	b := Backend{Name: "tandem", Listen: s.api.Listen, Health: "/isActive", Mode: ModeActive, ListenTLS: s.api.ListenTLS}
	owners := map[string]bool{}
	sharded := false
	for _, kv := range s.cache.List(s.keys.Prefix()) {
		k := string(kv.Key)
		switch {
		case k == s.keys.Leader():
			if o, ok := decode[election.Owner](kv); ok {
				owners[o.ID] = true
			}
		case strings.HasPrefix(k, s.keys.ShardsPrefix()) && strings.HasSuffix(k, "/owner"):
			sharded = true
			if o, ok := decode[election.Owner](kv); ok {
				owners[o.ID] = true
			}
		}
	}
	if sharded {
		b.Mode = ModeAll
	}
	for _, kv := range s.cache.List(s.keys.ServersPrefix()) {
		info, ok := decode[tandem.ServerInfo](kv)
		if !ok {
			continue
		}
		addr, err := hostPort(info.URL)
		if err != nil {
			continue
		}
		tls := s.api.TLS || strings.HasPrefix(strings.ToLower(info.URL), "https://")
		b.Servers = append(b.Servers, Server{Name: info.ID, Addr: addr, Up: owners[info.ID], TLS: tls})
	}
	sort.Slice(b.Servers, func(i, j int) bool { return b.Servers[i].Name < b.Servers[j].Name })
	return b
}

// serviceBackend: every live supervisor node offering the service. With
// one instance, the owner's node is up; with an instance on every node
// (supervise.InstancesEveryNode), each node whose instance is registered
// (healthy) is, and traffic is spread over them.
func (s *Source) serviceBackend(svc Service) Backend {
	b := Backend{Name: svc.Name, Listen: svc.Listen, Health: svc.Health, Mode: ModeActive, Sticky: svc.Sticky}
	def, _ := decode[supervise.Service](s.cache.Get(s.keys.SuperviseService(svc.Name)))
	up := map[string]bool{}
	if def.EveryNode() {
		b.Mode = ModeAll
		for _, kv := range s.cache.List(s.keys.SuperviseInstancesPrefix(svc.Name)) {
			if in, ok := decode[supervise.Instance](kv); ok {
				up[in.Node] = true
			}
		}
	} else if o, ok := decode[election.Owner](s.cache.Get(s.keys.SuperviseOwnership(svc.Name).Owner)); ok {
		up[o.ID] = true
	}
	for _, kv := range s.cache.List(s.keys.SuperviseNodesPrefix()) {
		n, ok := decode[supervise.NodeInfo](kv)
		if !ok || n.Addr == "" {
			continue
		}
		if def.EveryNode() && !contains(n.Services, svc.Name) || !def.EveryNode() && !n.Pool && !contains(n.Services, svc.Name) {
			continue
		}
		b.Servers = append(b.Servers, Server{Name: n.Node, Addr: joinHostPort(n.Addr, svc.Port), Up: up[n.Node]})
	}
	sort.Slice(b.Servers, func(i, j int) bool { return b.Servers[i].Name < b.Servers[j].Name })
	return b
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

func hostPort(u string) (string, error) {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return "", fmt.Errorf("server URL %q has no host", u)
	}
	if p.Port() == "" {
		if p.Scheme == "https" {
			return p.Host + ":443", nil
		}
		return p.Host + ":80", nil
	}
	return p.Host, nil
}

func decode[T any](kv *mvccpb.KeyValue) (T, bool) { return etcdview.Decode[T](kv) }
