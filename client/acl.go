package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/tandemhq/tandem/internal/acl"
	"github.com/tandemhq/tandem/internal/transport"
)

// Token is an API token as the servers show it: accessor, name, policy,
// creation and expiry times, never its secret.
type Token = acl.Token

// NewToken is a token just made and its secret, shown this once.
type NewToken = acl.NewToken

// Policy names what a token may do: PolicyRead, PolicySubmit,
// PolicyOperator or PolicyManagement, each allowing what the ones before it
// allow.
type Policy = acl.Policy

// The policies, weakest first.
const (
	PolicyRead       = acl.PolicyRead
	PolicySubmit     = acl.PolicySubmit
	PolicyOperator   = acl.PolicyOperator
	PolicyManagement = acl.PolicyManagement
)

// TokenRequest asks for a token: a name, a policy and, optionally, a TTL
// (a Go duration such as "24h"; empty: it never expires).
type TokenRequest = acl.CreateRequest

// Bootstrap makes the cluster's first management token (POST
// /v1/acl/bootstrap). It works once per cluster: after that it is a conflict
// *tandem.Error. It needs no token. Like SubmitJob it follows a standby's
// redirect to the server that writes tokens; if the answer is lost after
// the bootstrap was done, the secret is lost with it (docs/SECURITY.md says
// how to reset).
func (c *Client) Bootstrap(ctx context.Context) (*NewToken, error) {
	var nt NewToken
	if err := c.tr.Do(ctx, &transport.Call{Op: "acl bootstrap", Method: http.MethodPost, Path: "/v1/acl/bootstrap", Body: []byte("{}"), Active: true}, &nt); err != nil {
		return nil, err
	}
	return &nt, nil
}

// CreateToken makes a token (POST /v1/acl/tokens); the caller's token needs
// the management policy. The answer holds the secret, shown this once.
func (c *Client) CreateToken(ctx context.Context, req TokenRequest) (*NewToken, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("create token: encode request: %w", err)
	}
	var nt NewToken
	if err := c.tr.Do(ctx, &transport.Call{Op: "create token", Method: http.MethodPost, Path: "/v1/acl/tokens", Body: body, Active: true}, &nt); err != nil {
		return nil, err
	}
	return &nt, nil
}

// ListTokens lists every token, expired ones included (GET
// /v1/acl/tokens); the caller's token needs the management policy.
func (c *Client) ListTokens(ctx context.Context) ([]Token, error) {
	var resp struct {
		Tokens []Token `json:"tokens"`
	}
	if err := c.tr.Do(ctx, &transport.Call{Op: "list tokens", Method: http.MethodGet, Path: "/v1/acl/tokens"}, &resp); err != nil {
		return nil, err
	}
	if resp.Tokens == nil {
		resp.Tokens = []Token{}
	}
	return resp.Tokens, nil
}

// DeleteToken deletes (revokes) the token with the given accessor (DELETE
// /v1/acl/tokens/{accessor}) and returns it; every server refuses it from
// then on. An unknown accessor matches tandem.ErrNotFound.
func (c *Client) DeleteToken(ctx context.Context, accessor string) (*Token, error) {
	if err := acl.ValidAccessor(accessor); err != nil {
		return nil, err
	}
	var t Token
	if err := c.tr.Do(ctx, &transport.Call{Op: "delete token " + accessor, Method: http.MethodDelete, Path: "/v1/acl/tokens/" + url.PathEscape(accessor), Active: true}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// TokenSelf returns the token the client sends (GET /v1/acl/token/self).
func (c *Client) TokenSelf(ctx context.Context) (*Token, error) {
	var t Token
	if err := c.tr.Do(ctx, &transport.Call{Op: "token self", Method: http.MethodGet, Path: "/v1/acl/token/self"}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}
