// Package etcdauth locks an etcd down to tandem's clusters: etcd's own
// authentication, with one role per cluster that reaches the cluster's keys
// (/tandem/<cluster>/) and nothing else, and one user per cluster that
// etcd recognises by the common name of the cluster's server certificates.
//
// # The scheme
//
// For cluster C, [Setup] makes sure etcd holds:
//
//   - role tandem-C, with read and write permission on the range
//     [/tandem/C/, /tandem/C0) (the prefix /tandem/C/ and nothing else);
//   - user tandem-C, without a password, granted tandem-C and no other
//     role. With --client-cert-auth etcd takes a client certificate's
//     common name as its user, and every server certificate that
//     internal/pki issues for C has the common name tandem-C
//     ([pki.ServerCommonName]): tandem servers, supervisors and tandem lb
//     present server certificates. Agent and cli certificates name no etcd
//     user and can do nothing in etcd;
//   - user root with role root (etcd requires it to turn authentication
//     on), then authentication on.
//
// The user has no password, so it can only be reached through a
// certificate. The trailing slash of the prefix keeps cluster "dev" from
// reaching "dev2". Setup is idempotent: when everything is as it should be,
// it writes nothing (etcd's auth revision does not move). It also puts
// right a role or user of cluster C that someone changed (extra
// permissions or roles are revoked): they belong to tandem.
//
// A lease is not a key: etcd lets any user grant one, but a put that
// attaches a key to it is a put like any other, so a cluster's lease can
// only ever carry keys inside the cluster's prefix.
package etcdauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/pki"
)

// RootUser and RootRole are etcd's administrator: etcd refuses to turn
// authentication on without a user root holding role root.
const (
	RootUser = "root"
	RootRole = "root"
)

// ErrNotSetUp: etcd's authentication is on but the cluster's role or user
// is missing or not as Setup makes it, and the caller, not being root,
// cannot put it right.
var ErrNotSetUp = errors.New("etcdauth: etcd is not set up for this cluster")

// Role returns the etcd role of cluster: "tandem-<cluster>".
func Role(cluster string) string { return "tandem-" + cluster }

// User returns the etcd user of cluster, the common name of its server
// certificates: "tandem-<cluster>".
func User(cluster string) string { return pki.ServerCommonName(cluster) }

// Range returns the key range cluster's role may read and write: its
// prefix and the end of that prefix.
func Range(cluster string) (key, end string) {
	p := keys.New(cluster).Prefix()
	return p, clientv3.GetPrefixRangeEnd(p)
}

// Options tunes Setup.
type Options struct {
	// RootPassword is the password given to user root if Setup creates it
	// (when authentication is off and there is no root yet). Empty creates
	// root without a password: only a client certificate with common name
	// root can then act as root.
	RootPassword string
}

// Setup makes etcd's authentication what the package documentation says
// for cluster, through cli, and returns what it changed (nothing when all
// was in place already). It is idempotent and safe to run concurrently
// (several embedded members starting at once): whatever the others did
// first counts as done.
//
// While authentication is off, any client may do it. Once it is on, cli
// must be root to change anything; a client that is not (a server with its
// own certificate, say) can still run Setup to check that all is in place,
// and gets an error wrapping ErrNotSetUp if it is not.
func Setup(ctx context.Context, cli *clientv3.Client, cluster string, o Options) ([]string, error) {
	if err := keys.ValidateName("cluster", cluster); err != nil {
		return nil, err
	}
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd auth status: %w", err)
	}
	// Once authentication is on, a check that writes nothing is enough
	// when all is in place (and is all a non-root caller may do).
	if st.Enabled && Verify(ctx, cli, cluster) == nil {
		return nil, nil
	}
	s := setup{cli: cli, cluster: cluster, o: o}
	err = s.run(ctx, !st.Enabled)
	if err == nil || !denied(err) {
		return s.changes, err
	}
	// Denied: cli is not root, and either authentication was on already or
	// another process turned it on meanwhile, in which case it finished
	// everything first.
	if Verify(ctx, cli, cluster) == nil {
		return s.changes, nil
	}
	return s.changes, fmt.Errorf("%w: etcd authentication is on and only root may set up cluster %s (%v)", ErrNotSetUp, cluster, err)
}

// denied reports whether err is etcd refusing the caller: not permitted,
// or not a user at all (a certificate whose common name names no user, or
// none).
func denied(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) ||
		errors.Is(err, rpctypes.ErrUserNotFound) || errors.Is(err, rpctypes.ErrAuthFailed)
}

type setup struct {
	cli     *clientv3.Client
	cluster string
	o       Options
	changes []string
}

func (s *setup) did(format string, args ...any) {
	s.changes = append(s.changes, fmt.Sprintf(format, args...))
}

// run does each step, writing only where etcd differs from what it should
// hold. Authentication goes on last, so that whoever finds it on finds
// everything else in place.
func (s *setup) run(ctx context.Context, enable bool) error {
	role, user := Role(s.cluster), User(s.cluster)
	key, end := Range(s.cluster)
	if err := s.ensureRole(ctx, role, key, end); err != nil {
		return err
	}
	if err := s.ensureUser(ctx, user, "", role, true); err != nil {
		return err
	}
	if !enable {
		return nil
	}
	// Root is etcd's, not tandem's: it gets role root, and keeps any other.
	if err := s.ensureUser(ctx, RootUser, s.o.RootPassword, RootRole, false); err != nil {
		return err
	}
	if _, err := s.cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("etcd auth enable: %w", err)
	}
	s.did("turned authentication on")
	return nil
}

// ensureRole makes role exist with exactly one permission, read and write
// on [key, end).
func (s *setup) ensureRole(ctx context.Context, role, key, end string) error {
	resp, err := s.cli.RoleGet(ctx, role)
	switch {
	case errors.Is(err, rpctypes.ErrRoleNotFound):
		if _, err := s.cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return fmt.Errorf("etcd role add %s: %w", role, err)
		}
		s.did("created role %s", role)
		resp = &clientv3.AuthRoleGetResponse{}
	case err != nil:
		return fmt.Errorf("etcd role get %s: %w", role, err)
	}
	found := false
	for _, p := range resp.Perm {
		if wantPerm(p, key, end) {
			found = true
			continue
		}
		if _, err := s.cli.RoleRevokePermission(ctx, role, string(p.Key), string(p.RangeEnd)); err != nil && !errors.Is(err, rpctypes.ErrPermissionNotGranted) {
			return fmt.Errorf("etcd role revoke-permission %s %q: %w", role, p.Key, err)
		}
		s.did("revoked from role %s: %s on [%q, %q)", role, p.PermType, p.Key, p.RangeEnd)
	}
	if !found {
		if _, err := s.cli.RoleGrantPermission(ctx, role, key, end, clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
			return fmt.Errorf("etcd role grant-permission %s: %w", role, err)
		}
		s.did("granted role %s readwrite on [%q, %q)", role, key, end)
	}
	return nil
}

func wantPerm(p *authpb.Permission, key, end string) bool {
	return p.PermType == authpb.READWRITE && bytes.Equal(p.Key, []byte(key)) && bytes.Equal(p.RangeEnd, []byte(end))
}

// ensureUser makes user exist with role, and, if exclusive, no other. A
// user Setup creates has password if given, else none (certificates
// only); an existing user's password is left alone.
func (s *setup) ensureUser(ctx context.Context, user, password, role string, exclusive bool) error {
	resp, err := s.cli.UserGet(ctx, user)
	switch {
	case errors.Is(err, rpctypes.ErrUserNotFound):
		opts := &clientv3.UserAddOptions{NoPassword: password == ""}
		if _, err := s.cli.UserAddWithOptions(ctx, user, password, opts); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("etcd user add %s: %w", user, err)
		}
		s.did("created user %s", user)
		resp = &clientv3.AuthUserGetResponse{}
	case err != nil:
		return fmt.Errorf("etcd user get %s: %w", user, err)
	}
	for _, r := range resp.Roles {
		if r == role || !exclusive {
			continue
		}
		if _, err := s.cli.UserRevokeRole(ctx, user, r); err != nil && !errors.Is(err, rpctypes.ErrRoleNotGranted) {
			return fmt.Errorf("etcd user revoke-role %s %s: %w", user, r, err)
		}
		s.did("revoked role %s from user %s", r, user)
	}
	if !slices.Contains(resp.Roles, role) {
		if _, err := s.cli.UserGrantRole(ctx, user, role); err != nil {
			return fmt.Errorf("etcd user grant-role %s %s: %w", user, role, err)
		}
		s.did("granted role %s to user %s", role, user)
	}
	return nil
}

// Verify checks, writing nothing, that etcd's authentication is on and
// that cluster's role and user are exactly as Setup makes them. Root may
// call it, and so may the cluster's own user (etcd lets a user read itself
// and its roles). Anything amiss gives an error wrapping ErrNotSetUp.
func Verify(ctx context.Context, cli *clientv3.Client, cluster string) error {
	role, user := Role(cluster), User(cluster)
	key, end := Range(cluster)
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("etcd auth status: %w", err)
	}
	if !st.Enabled {
		return fmt.Errorf("%w: authentication is off", ErrNotSetUp)
	}
	ur, err := cli.UserGet(ctx, user)
	if err != nil {
		return fmt.Errorf("%w: user %s: %v", ErrNotSetUp, user, err)
	}
	if !slices.Equal(ur.Roles, []string{role}) {
		return fmt.Errorf("%w: user %s has roles %q, want [%s]", ErrNotSetUp, user, ur.Roles, role)
	}
	rr, err := cli.RoleGet(ctx, role)
	if err != nil {
		return fmt.Errorf("%w: role %s: %v", ErrNotSetUp, role, err)
	}
	if len(rr.Perm) != 1 || !wantPerm(rr.Perm[0], key, end) {
		return fmt.Errorf("%w: role %s has %d permissions, want readwrite on [%q, %q) alone", ErrNotSetUp, role, len(rr.Perm), key, end)
	}
	return nil
}
