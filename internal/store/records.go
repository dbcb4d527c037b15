package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
)

// newRecord is a record (a schedule, a workflow run) to create under an
// owner's fence, optionally with an idempotency key in the same
// transaction.
type newRecord struct {
	noun string // "schedule", "workflow", for messages
	id   string
	key  string // etcd key; it must not exist
	val  []byte
	// idemKey, when not empty, is the client's key, stored (hashed, under
	// idemPrefix) in the same transaction with specHash.
	idemKey, idemPrefix, specHash string
}

// createIdem creates r fenced by f. It returns the transaction's revision
// when r was written; or, when r's idempotency key was already used for the
// same spec, the ID of the record that use made (prevID), at a revision
// the view has reached. ErrFenced, ErrIDTaken (a record with r's ID
// exists), EIDEMPOTENCY (the key was used for another spec). Nothing is
// written on error.
func (s *Store) createIdem(ctx context.Context, f election.Fence, r newRecord) (rev int64, prevID string, err error) {
	cmps := []clientv3.Cmp{f.IsOwner(), clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)}
	ops := []clientv3.Op{clientv3.OpPut(r.key, string(r.val))}
	elses := []clientv3.Op{clientv3.OpGet(f.Key, clientv3.WithKeysOnly())}
	ikey := ""
	if r.idemKey != "" {
		lease, err := s.idempotencyLease(ctx)
		if err != nil {
			return 0, "", err
		}
		ikey = s.IdemKey(r.idemPrefix + r.idemKey)
		v, _ := json.Marshal(idemRecord{JobID: r.id, SpecHash: r.specHash})
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(ikey), "=", 0))
		ops = append(ops, clientv3.OpPut(ikey, string(v), clientv3.WithLease(lease)))
		elses = append(elses, clientv3.OpGet(ikey))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(elses...).Commit()
	if err != nil {
		return 0, "", fmt.Errorf("create %s %s: %w", r.noun, r.id, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, "", s.WaitRev(ctx, resp.Header.Revision)
	}
	if !f.Held(resp.Responses[0].GetResponseRange().Kvs) {
		return 0, "", fmt.Errorf("create %s %s: %w", r.noun, r.id, tandem.ErrFenced)
	}
	if ikey != "" {
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			var rec idemRecord
			if err := json.Unmarshal(kvs[0].Value, &rec); err != nil {
				return 0, "", fmt.Errorf("decode idempotency record: %w", err)
			}
			if rec.SpecHash != r.specHash {
				return 0, "", tandem.Errorf(tandem.EIDEMPOTENCY,
					"idempotency key %q was already used for %s %s with a different spec; use a new key for a new %s", r.idemKey, r.noun, rec.JobID, r.noun)
			}
			return 0, rec.JobID, s.WaitRev(ctx, kvs[0].ModRevision)
		}
	}
	return 0, "", fmt.Errorf("create %s %s: %w", r.noun, r.id, ErrIDTaken)
}

// guardedWrite is one owner's transaction on a record it alone writes (a
// schedule, a workflow run): the record, put only if it is still at the mod
// revision read, plus new keys that must not exist yet and keys to delete,
// all fenced by the owner's term.
type guardedWrite struct {
	what string // "fire schedule s1", for messages
	key  string // the record's key
	rev  int64  // its mod revision as read
	cmps []clientv3.Cmp
	ops  []clientv3.Op
}

func newGuardedWrite(what, key string, rev int64, f election.Fence, rec any) (*guardedWrite, error) {
	val, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("%s: encode: %w", what, err)
	}
	return &guardedWrite{what: what, key: key, rev: rev,
		cmps: []clientv3.Cmp{f.IsOwner(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)},
		ops:  []clientv3.Op{clientv3.OpPut(key, string(val))}}, nil
}

// create adds v at key, which must not exist yet.
func (g *guardedWrite) create(key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%s: encode %s: %w", g.what, key, err)
	}
	g.cmps = append(g.cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	g.ops = append(g.ops, clientv3.OpPut(key, string(b)))
	return nil
}

// commit sends the transaction. ErrFenced if f no longer holds; a
// *ConflictError if the record changed since it was read, or, with the
// record as read, one of the new keys was taken (taken names them, and the
// conflict's revision is the transaction's, which a view must reach to see
// what took it). On success the view shows the write.
func (s *Store) commitGuarded(ctx context.Context, f election.Fence, g *guardedWrite, taken string) (int64, error) {
	resp, err := s.cli.Txn(ctx).If(g.cmps...).Then(g.ops...).
		Else(clientv3.OpGet(f.Key, clientv3.WithKeysOnly()), clientv3.OpGet(g.key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", g.what, err)
	}
	if !resp.Succeeded {
		err := s.scheduleTxnFailed(g.what, f, g.key, resp)
		var c *ConflictError
		if errors.As(err, &c) && c.Rev == g.rev {
			c.Key, c.Rev = taken, resp.Header.Revision
		}
		return 0, err
	}
	return resp.Header.Revision, s.WaitRev(ctx, resp.Header.Revision)
}
