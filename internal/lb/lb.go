// Package lb keeps a load balancer (HAProxy, NGINX) in step with live
// membership: tandem's own servers (in active/standby only the active gets
// API traffic, in active-active every serving server does) and services
// run by tandem supervise. It computes the desired state from etcd and
// hands it to a Driver, which applies it through the proxy's runtime API
// where it can and by a validated, graceful reload where it must.
package lb

import (
	"context"
	"sort"
	"time"
)

// Modes of a backend.
const (
	// ModeActive: one server gets traffic at a time (tandem in
	// active/standby, a supervised service's owner); the others stay
	// configured, checked and down, so the proxy's own health checks route
	// correctly if tandem lb dies.
	ModeActive = "active"
	// ModeAll: every live server gets traffic (tandem in active-active,
	// several instances of a service).
	ModeAll = "all"
)

// Server is one backend server as the proxy should see it.
type Server struct {
	Name string `json:"name"` // stable and unique in its backend: rm1, n2
	Addr string `json:"addr"` // host:port
	Up   bool   `json:"up"`   // should receive new requests now
	// TLS: the server serves TLS (it advertises an https:// URL, or tandem
	// lb was told all do): the proxy connects with TLS and verifies it
	// (TLS.BackendCA), never in plain text.
	TLS bool `json:"tls,omitempty"`
}

// Backend is one listening address of the proxy and the servers behind it.
type Backend struct {
	Name   string `json:"name"`   // tandem, or the service's name
	Listen string `json:"listen"` // what the proxy binds, e.g. 127.0.0.1:8080 or :8080
	// Health is the HTTP path the proxy's own checks GET (2xx = up), the
	// safety net when tandem lb is gone: /isActive for tandem's servers.
	// "" means a TCP connect check.
	Health string `json:"health,omitempty"`
	Mode   string `json:"mode"` // ModeActive or ModeAll
	// ListenTLS makes the proxy serve TLS on Listen with TLS.Cert.
	ListenTLS bool     `json:"listen_tls,omitempty"`
	Sticky    bool     `json:"sticky,omitempty"` // keep a client on one server while it lives (cookie)
	Servers   []Server `json:"servers"`
}

// Desired is everything the proxy should do.
type Desired struct {
	Backends []Backend `json:"backends"`
	// Rev is the etcd revision the desired state was computed at.
	Rev int64 `json:"rev"`
}

// Normalize sorts backends and servers by name, so equal states compare
// equal.
func (d *Desired) Normalize() {
	sort.Slice(d.Backends, func(i, j int) bool { return d.Backends[i].Name < d.Backends[j].Name })
	for i := range d.Backends {
		s := d.Backends[i].Servers
		sort.Slice(s, func(a, b int) bool { return s[a].Name < s[b].Name })
	}
}

// Shape is what cannot change without a reload in the general case: the
// backends, where they listen, how they check, and which servers exist at
// which address. Drivers that can add and remove servers at run time need
// less.
func (d Desired) Shape() Desired {
	out := Desired{Backends: make([]Backend, len(d.Backends))}
	for i, b := range d.Backends {
		b.Servers = append([]Server(nil), b.Servers...)
		for j := range b.Servers {
			b.Servers[j].Up = false
		}
		out.Backends[i] = b
	}
	return out
}

// UpFrom returns d's shape with who is up taken from want: a server of d
// that want has is up as want says, one that want lacks is down. It is
// what can be applied at once, without the shape change want also needs.
func (d Desired) UpFrom(want Desired) Desired {
	up := map[string]bool{}
	for _, b := range want.Backends {
		for _, s := range b.Servers {
			up[b.Name+"/"+s.Name] = s.Up
		}
	}
	out := d.Shape()
	out.Rev = want.Rev
	for i, b := range out.Backends {
		for j, s := range b.Servers {
			out.Backends[i].Servers[j].Up = up[b.Name+"/"+s.Name]
		}
	}
	return out
}

// Checks are the proxy's own health-check settings, the safety net.
type Checks struct {
	Inter time.Duration `json:"inter"` // between checks (default 2s)
	Fall  int           `json:"fall"`  // failures to mark a server down (default 3)
	Rise  int           `json:"rise"`  // successes to mark it up (default 2)
}

// TLS holds the files a proxy's TLS uses, read by the proxy itself
// (absolute paths). A Driver refuses a desired state with a server that
// has TLS set when BackendCA is empty, and one with a backend that has
// ListenTLS set when Cert is.
type TLS struct {
	// BackendCA verifies the certificates of servers with TLS set: the
	// cluster's CA file (ca.pem, several CAs allowed while one replaces
	// another).
	BackendCA string
	// BackendCert and BackendKey, if set, are the client certificate the
	// proxy presents to those servers (a server or cli certificate of the
	// cluster; tandem servers verify it if given and need none).
	BackendCert, BackendKey string
	// ServerName is the name every server's certificate must carry. Each
	// driver documents what it checks and its default.
	ServerName string
	// Cert and Key are the certificate and key the proxy serves on a
	// backend's Listen when the backend has ListenTLS.
	Cert, Key string
}

// MinTLSVersion is the one TLS version the proxy speaks, on both sides:
// TLS 1.3, as tandem's own processes.
const MinTLSVersion = "TLSv1.3"

// Applied says how a Driver applied a desired state.
type Applied struct {
	Runtime  int           `json:"runtime"`  // runtime commands sent (HAProxy's admin socket)
	Reloaded bool          `json:"reloaded"` // the proxy's configuration was reloaded
	Took     time.Duration `json:"took"`
}

// Driver is a proxy that tandem lb drives. Apply must never leave the
// proxy with a configuration its own check rejects: a bad change is
// refused and the last good one stays.
type Driver interface {
	// Start starts the proxy (or attaches to one already running) with d.
	Start(ctx context.Context, d Desired) error
	// Apply makes the proxy route as d says: at run time where the change
	// allows, by a validated graceful reload where it does not.
	Apply(ctx context.Context, d Desired) (Applied, error)
	// Actual returns what the proxy reports it routes to now, for drift
	// checks: each backend's servers with Up set when the proxy would send
	// them new requests.
	Actual(ctx context.Context) (Desired, error)
	// Close stops a proxy Start started (a proxy attached to is left
	// running) and releases the driver's connections.
	Close() error
}
