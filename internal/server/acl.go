package server

import (
	"context"
	"errors"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/ha"
)

// This file is what the HTTP API needs of a server for tokens (api.ACL).
// Tokens are cluster-wide, so the owner of shard 0 writes them (the active,
// with one shard), under that term's fence like every other write (I1).

// tokens returns the cluster's token store (it keeps no state).
func (s *Server) tokens() *acl.Store { return acl.NewStore(s.cfg.Etcd, s.keys) }

// Authenticate returns the token whose secret is secret (see
// acl.Store.Authenticate); any server answers, from etcd.
func (s *Server) Authenticate(ctx context.Context, secret string) (acl.Token, error) {
	rctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return s.tokens().Authenticate(rctx, secret, time.Now())
}

// Tokens lists the cluster's tokens; any server answers, from etcd.
func (s *Server) Tokens(ctx context.Context) ([]acl.Token, error) {
	rctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return s.tokens().List(rctx)
}

// ACLOwner returns the server that writes tokens: the owner of shard 0.
func (s *Server) ACLOwner() (tandem.ServerRef, bool) {
	if s.core.Term(0) != nil {
		return tandem.ServerRef{ID: s.cfg.ID, URL: s.cfg.URL}, true
	}
	if o := s.store.Owner(0); o != nil && o.ID != s.cfg.ID {
		return tandem.ServerRef{ID: o.ID, URL: o.URL}, true
	}
	return tandem.ServerRef{}, false
}

// aclWrite runs one token write under the fence of shard 0's term:
// ErrNotActive without the term; a fenced write ends the term at once (I1)
// and is never retried as owner.
func (s *Server) aclWrite(ctx context.Context, write func(ctx context.Context, t *ha.Term) error) error {
	t := s.core.Term(0)
	if t == nil {
		return tandem.ErrNotActive
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	err := write(wctx, t)
	var te *tandem.Error
	switch {
	case errors.Is(err, tandem.ErrFenced):
		s.fenced(t)
		return err
	case err != nil && !errors.As(err, &te):
		return tandem.Errorf(tandem.EUNAVAILABLE, "could not write to etcd: %v", err)
	}
	return err
}

// CreateToken makes a token as req asks; by is the accessor of the caller's
// token. The answer holds the secret, which is stored nowhere.
func (s *Server) CreateToken(ctx context.Context, req acl.CreateRequest, by string) (acl.NewToken, error) {
	if _, err := req.Validate(); err != nil {
		return acl.NewToken{}, err
	}
	var nt acl.NewToken
	err := s.aclWrite(ctx, func(ctx context.Context, t *ha.Term) error {
		var err error
		nt, err = s.tokens().Create(ctx, t.Fence, req, by, time.Now())
		return err
	})
	if err == nil {
		s.log.Info("token created", "token", nt.Name, "policy", nt.Policy, "accessor", nt.Accessor)
	}
	return nt, err
}

// DeleteToken deletes (revokes) the token with accessor.
func (s *Server) DeleteToken(ctx context.Context, accessor string) (acl.Token, error) {
	if err := acl.ValidAccessor(accessor); err != nil {
		return acl.Token{}, err
	}
	var tok acl.Token
	err := s.aclWrite(ctx, func(ctx context.Context, t *ha.Term) error {
		var err error
		tok, err = s.tokens().Delete(ctx, t.Fence, accessor)
		return err
	})
	if err == nil {
		s.log.Info("token deleted", "token", tok.Name, "accessor", accessor)
	}
	return tok, err
}

// Bootstrap makes the cluster's first management token, once
// (acl.ErrBootstrapped after that).
func (s *Server) Bootstrap(ctx context.Context) (acl.NewToken, error) {
	var nt acl.NewToken
	err := s.aclWrite(ctx, func(ctx context.Context, t *ha.Term) error {
		var err error
		nt, err = s.tokens().Bootstrap(ctx, t.Fence, s.cfg.ID, time.Now())
		return err
	})
	if err == nil {
		s.log.Info("acl bootstrapped", "token", nt.Name, "accessor", nt.Accessor)
	}
	return nt, err
}
