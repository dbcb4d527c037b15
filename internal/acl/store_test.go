package acl_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/etcdtest"
	"github.com/tandemhq/tandem/internal/keys"
)

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// owner makes the layout's leader key and returns its fence, as winning the
// election would.
func owner(t *testing.T, cli *clientv3.Client, l keys.Layout) election.Fence {
	t.Helper()
	resp, err := cli.Put(ctx(t), l.Leader(), `{"id":"rm1"}`)
	if err != nil {
		t.Fatal(err)
	}
	return election.Fence{Key: l.Leader(), Rev: resp.Header.Revision}
}

func newStore(t *testing.T) (*acl.Store, *clientv3.Client, keys.Layout, election.Fence) {
	t.Helper()
	e := etcdtest.Start(t)
	cli := e.Client(t)
	l := keys.New("test")
	return acl.NewStore(cli, l), cli, l, owner(t, cli, l)
}

func TestPolicies(t *testing.T) {
	caps := []acl.Capability{acl.CapRead, acl.CapSubmit, acl.CapOperator, acl.CapManagement}
	for i, p := range acl.Policies {
		for j, c := range caps {
			if got, want := p.Allows(c), j <= i; got != want {
				t.Errorf("%s allows %s: got %v, want %v", p, c, got, want)
			}
		}
		if !p.Allows(acl.CapOpen) || !p.Allows(acl.CapAgent) {
			t.Errorf("%s: open and agent routes need no token, so every policy allows them", p)
		}
	}
	if acl.Policy("root").Allows(acl.CapRead) {
		t.Error("an unknown policy allows read")
	}
	if _, err := acl.ParsePolicy("admin"); tandem.ErrorCode(err) != tandem.EINVALID || !strings.Contains(err.Error(), "management") {
		t.Errorf("ParsePolicy(admin): got %v, want invalid_argument listing the policies", err)
	}
}

func TestCreateRequestValidate(t *testing.T) {
	for _, tt := range []struct {
		req  acl.CreateRequest
		ok   bool
		want string
	}{
		{acl.CreateRequest{Name: "ci", Policy: "submit"}, true, ""},
		{acl.CreateRequest{Name: "alice@example.com", Policy: "read", TTL: "24h"}, true, ""},
		{acl.CreateRequest{Name: "", Policy: "read"}, false, "invalid token name"},
		{acl.CreateRequest{Name: "a/b", Policy: "read"}, false, "invalid token name"},
		{acl.CreateRequest{Name: "ci", Policy: "root"}, false, "unknown policy"},
		{acl.CreateRequest{Name: "ci", Policy: "read", TTL: "soon"}, false, "not a duration"},
		{acl.CreateRequest{Name: "ci", Policy: "read", TTL: "10ms"}, false, "must be from"},
	} {
		_, err := tt.req.Validate()
		if (err == nil) != tt.ok || (err != nil && (!strings.Contains(err.Error(), tt.want) || tandem.ErrorCode(err) != tandem.EINVALID)) {
			t.Errorf("%+v: got %v, want ok=%v or invalid_argument %q", tt.req, err, tt.ok, tt.want)
		}
	}
}

// A token is stored hashed: etcd holds the SHA-256 of the secret, never the
// secret, and the record's key is that hash.
func TestTokenStoredHashed(t *testing.T) {
	s, cli, l, fence := newStore(t)
	nt, err := s.Create(ctx(t), fence, acl.CreateRequest{Name: "alice", Policy: acl.PolicyRead}, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(nt.Secret) < 40 || !strings.HasPrefix(nt.Secret, "tdm_") {
		t.Fatalf("secret %q: want tdm_ and 43 base64 characters", nt.Secret)
	}
	resp, err := cli.Get(ctx(t), l.ACLPrefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 2 {
		t.Fatalf("got %d ACL keys, want 2 (the token and its accessor)", len(resp.Kvs))
	}
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Key), nt.Secret) || strings.Contains(string(kv.Value), nt.Secret) {
			t.Fatalf("etcd holds the secret in %s = %s", kv.Key, kv.Value)
		}
	}
	tk, err := cli.Get(ctx(t), l.ACLToken(acl.Hash(nt.Secret)))
	if err != nil || len(tk.Kvs) != 1 {
		t.Fatalf("no record under the secret's hash: %v", err)
	}
	if !strings.Contains(string(tk.Kvs[0].Value), `"hash":"`+acl.Hash(nt.Secret)+`"`) {
		t.Fatalf("record %s: want the hash in it", tk.Kvs[0].Value)
	}
	got, err := s.Authenticate(ctx(t), nt.Secret, time.Now())
	if err != nil || got.Name != "alice" || got.Policy != acl.PolicyRead || got.Accessor != nt.Accessor {
		t.Fatalf("Authenticate: got %+v, %v; want alice (read) %s", got, err, nt.Accessor)
	}
}

func TestDeleteAndExpiry(t *testing.T) {
	s, _, _, fence := newStore(t)
	now := time.Now()
	a, err := s.Create(ctx(t), fence, acl.CreateRequest{Name: "a", Policy: acl.PolicySubmit}, "", now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Create(ctx(t), fence, acl.CreateRequest{Name: "b", Policy: acl.PolicyRead, TTL: "1h"}, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx(t), b.Secret, now.Add(59*time.Minute)); err != nil {
		t.Fatalf("b before expiry: %v", err)
	}
	if got, err := s.Authenticate(ctx(t), b.Secret, now.Add(time.Hour)); !errors.Is(err, acl.ErrExpired) || got.Name != "b" {
		t.Fatalf("b at expiry: got %+v, %v; want ErrExpired naming b", got, err)
	}
	del, err := s.Delete(ctx(t), fence, a.Accessor)
	if err != nil || del.Name != "a" {
		t.Fatalf("Delete: got %+v, %v", del, err)
	}
	if _, err := s.Authenticate(ctx(t), a.Secret, now); !errors.Is(err, acl.ErrNoToken) {
		t.Fatalf("deleted token: got %v, want ErrNoToken", err)
	}
	if _, err := s.Delete(ctx(t), fence, a.Accessor); tandem.ErrorCode(err) != tandem.ENOTFOUND {
		t.Fatalf("second delete: got %v, want not_found", err)
	}
	if _, err := s.Delete(ctx(t), fence, "../x"); tandem.ErrorCode(err) != tandem.EINVALID {
		t.Fatalf("bad accessor: got %v, want invalid_argument", err)
	}
	list, err := s.List(ctx(t))
	if err != nil || len(list) != 1 || list[0].Name != "b" {
		t.Fatalf("List: got %+v, %v; want b only", list, err)
	}
}

// A deposed owner's token writes fail (I1): the fence is in every
// transaction.
func TestTokenWritesAreFenced(t *testing.T) {
	s, cli, l, old := newStore(t)
	nt, err := s.Create(ctx(t), old, acl.CreateRequest{Name: "a", Policy: acl.PolicyRead}, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx(t), l.Leader()); err != nil {
		t.Fatal(err)
	}
	owner(t, cli, l) // a new owner, at a newer epoch
	if _, err := s.Create(ctx(t), old, acl.CreateRequest{Name: "b", Policy: acl.PolicyRead}, "", time.Now()); !errors.Is(err, tandem.ErrFenced) {
		t.Errorf("Create with a stale fence: got %v, want ErrFenced", err)
	}
	if _, err := s.Delete(ctx(t), old, nt.Accessor); !errors.Is(err, tandem.ErrFenced) {
		t.Errorf("Delete with a stale fence: got %v, want ErrFenced", err)
	}
	if _, err := s.Bootstrap(ctx(t), old, "rm1", time.Now()); !errors.Is(err, tandem.ErrFenced) {
		t.Errorf("Bootstrap with a stale fence: got %v, want ErrFenced", err)
	}
	if list, _ := s.List(ctx(t)); len(list) != 1 {
		t.Errorf("got %d tokens after fenced writes, want 1", len(list))
	}
}

// The bootstrap works once; of many at the same time exactly one makes a
// token.
func TestBootstrapOnce(t *testing.T) {
	s, _, _, fence := newStore(t)
	const n = 8
	var wg sync.WaitGroup
	results := make([]error, n)
	secrets := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nt, err := s.Bootstrap(context.Background(), fence, "rm1", time.Now())
			results[i], secrets[i] = err, nt.Secret
		}()
	}
	wg.Wait()
	won := 0
	for i, err := range results {
		switch {
		case err == nil:
			won++
			tok, aerr := s.Authenticate(ctx(t), secrets[i], time.Now())
			if aerr != nil || tok.Policy != acl.PolicyManagement {
				t.Errorf("the bootstrap token: got %+v, %v; want a management token", tok, aerr)
			}
		case !errors.Is(err, acl.ErrBootstrapped):
			t.Errorf("bootstrap %d: got %v, want ErrBootstrapped", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent bootstraps succeeded, want exactly 1", won, n)
	}
	if list, _ := s.List(ctx(t)); len(list) != 1 {
		t.Fatalf("got %d tokens, want 1", len(list))
	}
	if _, err := s.Bootstrap(ctx(t), fence, "rm1", time.Now()); !errors.Is(err, acl.ErrBootstrapped) {
		t.Fatalf("bootstrap again: got %v, want ErrBootstrapped", err)
	}
}
