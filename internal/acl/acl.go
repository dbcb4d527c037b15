// Package acl is tandem's API tokens and policies (issue 10, point 3;
// docs/SECURITY.md, "Tokens and policies").
//
// A token is a random 256-bit secret, shown once when it is made. etcd
// keeps only its SHA-256, with the token's name, policy, creation time,
// optional expiry and accessor (a public ID for listing and deleting it).
// Every token has one policy; the policies are ordered, and each allows
// what the ones below it allow:
//
//	read        read jobs, agents, servers, shards, HA state and history (and, with --acl-metrics, /metrics)
//	submit      read, plus submit and kill jobs
//	operator    submit, plus HA transitions, graceful failover, drain (and, later, moves of supervised services)
//	management  operator, plus making, listing and deleting tokens
//
// Token writes (bootstrap, create, delete) are made by the owner of shard 0
// (the active, with one shard) in one etcd transaction guarded by its fence,
// like every other write of an owner (I1): a deposed owner's token writes
// fail. Reads (authentication, list) go to etcd directly and are
// linearizable, so a deleted token is refused by every server as soon as the
// delete is acknowledged.
package acl

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"regexp"
	"time"

	"github.com/tandemhq/tandem"
)

// Policy names what a token may do. The policies are ordered: each allows
// everything the ones before it allow.
type Policy string

// The policies, weakest first.
const (
	PolicyRead       Policy = "read"
	PolicySubmit     Policy = "submit"
	PolicyOperator   Policy = "operator"
	PolicyManagement Policy = "management"
)

// Policies lists the policies, weakest first.
var Policies = []Policy{PolicyRead, PolicySubmit, PolicyOperator, PolicyManagement}

// Capability is what a route needs. The four token capabilities are named
// after the weakest policy that has them; Open and Agent need no token.
type Capability string

// The capabilities of the API's routes.
const (
	// CapOpen routes need no token: load-balancer probes (/isActive,
	// /healthz), the bootstrap (which works once), /metrics unless protected.
	CapOpen Capability = "open"
	// CapAgent routes are the agents' (/v1/agent/sync): with TLS on they
	// need the agent's own certificate (internal/api/tls.go), never a
	// token; with TLS off they are open.
	CapAgent      Capability = "agent"
	CapRead       Capability = "read"
	CapSubmit     Capability = "submit"
	CapOperator   Capability = "operator"
	CapManagement Capability = "management"
)

// rank orders the policies and the token capabilities alike.
func rank(s string) int {
	for i, p := range Policies {
		if string(p) == s {
			return i
		}
	}
	return -1
}

// Valid reports whether p is a known policy.
func (p Policy) Valid() bool { return rank(string(p)) >= 0 }

// Allows reports whether a token of policy p has capability c. Every policy
// allows CapOpen and CapAgent (which need no token at all).
func (p Policy) Allows(c Capability) bool {
	switch c {
	case CapOpen, CapAgent:
		return true
	}
	need := rank(string(c))
	return need >= 0 && rank(string(p)) >= need
}

// ParsePolicy returns the policy named s, or an invalid_argument error
// listing the known ones.
func ParsePolicy(s string) (Policy, error) {
	p := Policy(s)
	if !p.Valid() {
		return "", tandem.Errorf(tandem.EINVALID, "unknown policy %q: use one of %v (each allows what the ones before it allow)", s, Policies)
	}
	return p, nil
}

// Token is a token as the API shows it: never its secret nor its hash.
type Token struct {
	Accessor  string     `json:"accessor"`
	Name      string     `json:"name"`
	Policy    Policy     `json:"policy"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// CreatedBy is the accessor of the token that made this one, or
	// "bootstrap".
	CreatedBy string `json:"created_by,omitempty"`
}

// Expired reports whether t has expired at now.
func (t Token) Expired(now time.Time) bool {
	return t.ExpiresAt != nil && !now.Before(*t.ExpiresAt)
}

// NewToken is the answer to a bootstrap or a token creation: the token and
// its secret, which is shown this once and stored nowhere.
type NewToken struct {
	Token
	Secret string `json:"secret"`
}

// CreateRequest is the body of POST /v1/acl/tokens.
type CreateRequest struct {
	Name   string `json:"name"`
	Policy Policy `json:"policy"`
	// TTL, when set, is how long the token lives, as a Go duration ("24h",
	// "90m"); empty means it never expires.
	TTL string `json:"ttl,omitempty"`
}

// Limits on what a token creation may ask for.
const (
	MinTTL = time.Second
	MaxTTL = 10 * 365 * 24 * time.Hour
)

var tokenName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._@-]{0,62}$`)

// Validate checks r and returns its TTL (0: none), or an invalid_argument
// error saying what is wrong.
func (r CreateRequest) Validate() (time.Duration, error) {
	if !tokenName.MatchString(r.Name) {
		return 0, tandem.Errorf(tandem.EINVALID, "invalid token name %q: use 1 to 63 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", r.Name)
	}
	if _, err := ParsePolicy(string(r.Policy)); err != nil {
		return 0, err
	}
	if r.TTL == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(r.TTL)
	if err != nil {
		return 0, tandem.Errorf(tandem.EINVALID, "ttl %q is not a duration such as 24h or 90m", r.TTL)
	}
	if d < MinTTL || d > MaxTTL {
		return 0, tandem.Errorf(tandem.EINVALID, "ttl %s must be from %s to %s", d, MinTTL, MaxTTL)
	}
	return d, nil
}

// secretPrefix marks tandem's secrets, so a leaked one is easy to grep for.
const secretPrefix = "tdm_"

// newSecret returns a random 256-bit secret.
func newSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes the program instead)
	return secretPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// newAccessor returns a random public token ID.
func newAccessor() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var accessorRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ValidAccessor checks an accessor given by a caller.
func ValidAccessor(a string) error {
	if !accessorRE.MatchString(a) {
		return tandem.Errorf(tandem.EINVALID, "accessor %q is not a token accessor (32 hexadecimal digits, as `tandem acl token list` shows)", a)
	}
	return nil
}

// Hash returns the hex SHA-256 of a secret: what etcd keeps instead of it.
// The secret has 256 random bits, so a fast hash is enough: there is
// nothing to guess.
func Hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// Describe names a token in messages: "token alice (read)".
func (t Token) Describe() string { return fmt.Sprintf("token %s (%s)", t.Name, t.Policy) }
