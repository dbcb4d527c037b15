package acl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/keys"
)

// Errors of the token store, matched with errors.Is.
var (
	// ErrNoToken: the secret matches no token (never made, or deleted).
	ErrNoToken = &tandem.Error{Code: tandem.EUNAUTHENTICATED, Message: "acl: unknown or revoked token"}
	// ErrExpired: the token has expired.
	ErrExpired = errors.New("acl: token expired")
	// ErrBootstrapped: the one-time bootstrap has already been done.
	ErrBootstrapped = &tandem.Error{Code: tandem.ECONFLICT, Message: "acl: the ACL bootstrap has already been done"}
)

// record is a token as etcd keeps it, under ACLToken(Hash).
type record struct {
	Token
	Hash string `json:"hash"`
}

// bootstrapRecord is the value of the bootstrap marker.
type bootstrapRecord struct {
	Accessor string    `json:"accessor"`
	At       time.Time `json:"at"`
	By       string    `json:"by"` // the server that made it
}

// Store reads and writes tokens in etcd. It keeps no state of its own, so
// it is cheap to make and safe for concurrent use.
type Store struct {
	cli  *clientv3.Client
	keys keys.Layout
}

// NewStore returns the token store of the cluster whose keys are layout.
func NewStore(cli *clientv3.Client, layout keys.Layout) *Store {
	return &Store{cli: cli, keys: layout}
}

// Authenticate returns the token whose secret is secret. An unknown or
// deleted token is ErrNoToken; one that expired at now wraps ErrExpired
// (and names the token). The read is linearizable: a token deleted before
// the call is never accepted. An etcd failure is returned as is.
func (s *Store) Authenticate(ctx context.Context, secret string, now time.Time) (Token, error) {
	if secret == "" {
		return Token{}, ErrNoToken
	}
	resp, err := s.cli.Get(ctx, s.keys.ACLToken(Hash(secret)))
	if err != nil {
		return Token{}, fmt.Errorf("read token: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return Token{}, ErrNoToken
	}
	var rec record
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return Token{}, fmt.Errorf("decode token %s: %w", resp.Kvs[0].Key, err)
	}
	if rec.Expired(now) {
		return rec.Token, fmt.Errorf("%s expired at %s: %w", rec.Describe(), rec.ExpiresAt.UTC().Format(time.RFC3339), ErrExpired)
	}
	return rec.Token, nil
}

// List returns every token, expired ones included, by name then accessor.
func (s *Store) List(ctx context.Context) ([]Token, error) {
	resp, err := s.cli.Get(ctx, s.keys.ACLTokensPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	out := make([]Token, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var rec record
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode token %s: %w", kv.Key, err)
		}
		out = append(out, rec.Token)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Accessor < out[j].Accessor
	})
	return out, nil
}

// newRecord makes a token and its secret.
func newRecord(name string, p Policy, now time.Time, ttl time.Duration, by string) (record, string) {
	secret := newSecret()
	t := Token{Accessor: newAccessor(), Name: name, Policy: p, CreatedAt: now.UTC(), CreatedBy: by}
	if ttl > 0 {
		exp := now.Add(ttl).UTC()
		t.ExpiresAt = &exp
	}
	return record{Token: t, Hash: Hash(secret)}, secret
}

// puts are the operations that store rec.
func (s *Store) puts(rec record) []clientv3.Op {
	val, _ := json.Marshal(rec) // a record always encodes
	return []clientv3.Op{
		clientv3.OpPut(s.keys.ACLToken(rec.Hash), string(val)),
		clientv3.OpPut(s.keys.ACLAccessor(rec.Accessor), rec.Hash),
	}
}

// Create makes a token as req asks, in one transaction guarded by fence
// (I1): if the fence no longer holds, nothing is written and the error is
// tandem.ErrFenced. by is the accessor of the caller's token. The secret is
// in the answer and nowhere else.
func (s *Store) Create(ctx context.Context, fence election.Fence, req CreateRequest, by string, now time.Time) (NewToken, error) {
	ttl, err := req.Validate()
	if err != nil {
		return NewToken{}, err
	}
	rec, secret := newRecord(req.Name, req.Policy, now, ttl, by)
	resp, err := s.cli.Txn(ctx).
		If(fence.IsOwner(), clientv3.Compare(clientv3.CreateRevision(s.keys.ACLToken(rec.Hash)), "=", 0)).
		Then(s.puts(rec)...).
		Else(clientv3.OpGet(fence.Key, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return NewToken{}, fmt.Errorf("create token %s: %w", req.Name, err)
	}
	if !resp.Succeeded {
		if !fence.Held(resp.Responses[0].GetResponseRange().Kvs) {
			return NewToken{}, fmt.Errorf("create token %s: %w", req.Name, tandem.ErrFenced)
		}
		// 256 random bits collided: it does not happen.
		return NewToken{}, fmt.Errorf("create token %s: a token with the same secret exists", req.Name)
	}
	return NewToken{Token: rec.Token, Secret: secret}, nil
}

// Bootstrap makes the first management token, once: the transaction
// creates the bootstrap marker only if it is absent, and is guarded by fence
// (I1). A second bootstrap, or the loser of two concurrent ones, gets
// ErrBootstrapped; a fence that no longer holds, tandem.ErrFenced.
func (s *Store) Bootstrap(ctx context.Context, fence election.Fence, server string, now time.Time) (NewToken, error) {
	rec, secret := newRecord("bootstrap", PolicyManagement, now, 0, "bootstrap")
	marker, _ := json.Marshal(bootstrapRecord{Accessor: rec.Accessor, At: now.UTC(), By: server})
	resp, err := s.cli.Txn(ctx).
		If(fence.IsOwner(), clientv3.Compare(clientv3.CreateRevision(s.keys.ACLBootstrap()), "=", 0)).
		Then(append(s.puts(rec), clientv3.OpPut(s.keys.ACLBootstrap(), string(marker)))...).
		Else(clientv3.OpGet(fence.Key, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return NewToken{}, fmt.Errorf("acl bootstrap: %w", err)
	}
	if !resp.Succeeded {
		if !fence.Held(resp.Responses[0].GetResponseRange().Kvs) {
			return NewToken{}, fmt.Errorf("acl bootstrap: %w", tandem.ErrFenced)
		}
		return NewToken{}, ErrBootstrapped
	}
	return NewToken{Token: rec.Token, Secret: secret}, nil
}

// Delete deletes (revokes) the token with accessor, in one transaction
// guarded by fence (I1), and returns it. An unknown accessor is a not_found
// *tandem.Error; a fence that no longer holds, tandem.ErrFenced.
func (s *Store) Delete(ctx context.Context, fence election.Fence, accessor string) (Token, error) {
	if err := ValidAccessor(accessor); err != nil {
		return Token{}, err
	}
	akey := s.keys.ACLAccessor(accessor)
	for try := 0; try < 3; try++ {
		resp, err := s.cli.Get(ctx, akey)
		if err != nil {
			return Token{}, fmt.Errorf("delete token %s: %w", accessor, err)
		}
		if len(resp.Kvs) == 0 {
			return Token{}, tandem.Errorf(tandem.ENOTFOUND, "no token has accessor %s", accessor)
		}
		hash := string(resp.Kvs[0].Value)
		tkey := s.keys.ACLToken(hash)
		tresp, err := s.cli.Txn(ctx).
			If(fence.IsOwner(), clientv3.Compare(clientv3.ModRevision(akey), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpDelete(tkey, clientv3.WithPrevKV()), clientv3.OpDelete(akey)).
			Else(clientv3.OpGet(fence.Key, clientv3.WithKeysOnly())).
			Commit()
		if err != nil {
			return Token{}, fmt.Errorf("delete token %s: %w", accessor, err)
		}
		if !tresp.Succeeded {
			if !fence.Held(tresp.Responses[0].GetResponseRange().Kvs) {
				return Token{}, fmt.Errorf("delete token %s: %w", accessor, tandem.ErrFenced)
			}
			continue // the accessor changed under us (deleted meanwhile): look again
		}
		var rec record
		if prev := tresp.Responses[0].GetResponseDeleteRange().PrevKvs; len(prev) > 0 {
			_ = json.Unmarshal(prev[0].Value, &rec)
		}
		rec.Accessor = accessor
		return rec.Token, nil
	}
	return Token{}, tandem.Errorf(tandem.ECONFLICT, "token %s kept changing while it was deleted; try again", accessor)
}
