package acl

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Decisions of an audit entry.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Identity is who made a request, as far as the server knows: a token's
// name, policy and accessor (never its secret), and a client certificate's
// role and ID (empty until mutual TLS is wired to the API).
type Identity struct {
	TokenName     string `json:"token_name"`
	TokenPolicy   string `json:"token_policy"`
	TokenAccessor string `json:"token_accessor"`
	CertRole      string `json:"cert_role"`
	CertID        string `json:"cert_id"`
}

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	Time     time.Time `json:"time"`
	Server   string    `json:"server"`
	HAState  string    `json:"ha_state"`
	Epoch    int64     `json:"epoch"`
	Identity Identity  `json:"identity"`
	// Remote is the caller's address: the connection's peer, or, for a
	// request a server of the cluster forwarded for its caller (the web
	// UI's writes from any server), the address that server took it from
	// (X-Forwarded-For, trusted only from a verified server certificate of
	// the cluster; see ForwardedFor).
	Remote string `json:"remote,omitempty"`
	// Via, set when Remote came from X-Forwarded-For, names the server that
	// forwarded the request and its address: "server rm2 (10.0.0.2:41234)".
	Via      string `json:"via,omitempty"`
	Method   string `json:"method"`
	Route    string `json:"route"` // the route's pattern, e.g. /v1/jobs/{id}/kill
	Path     string `json:"path"`
	Target   string `json:"target,omitempty"` // what was acted on: a job ID, a token accessor, a server
	Need     string `json:"capability"`       // the capability the route needs
	Decision string `json:"decision"`         // allow or deny
	Status   int    `json:"status"`
	Reason   string `json:"reason,omitempty"` // why a request was denied
}

// AuditLog writes one JSON line per entry to a writer. It is safe for
// concurrent use; a nil *AuditLog writes nothing.
type AuditLog struct {
	mu  sync.Mutex
	w   io.Writer
	err error
}

// NewAuditLog returns an audit log writing to w.
func NewAuditLog(w io.Writer) *AuditLog { return &AuditLog{w: w} }

// Write appends e as one line. A failed write is remembered (Err) and the
// entries after it are still tried.
func (l *AuditLog) Write(e AuditEntry) {
	if l == nil {
		return
	}
	b, err := json.Marshal(e)
	if err != nil {
		return // an entry always encodes
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(b); err != nil {
		l.err = err
	}
}

// Err returns the last error writing the log, or nil.
func (l *AuditLog) Err() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}
