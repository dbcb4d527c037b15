package main

import (
	"strings"
	"testing"
)

func TestServerIdempotencyTTLRefused(t *testing.T) {
	for v, want := range map[string]string{
		"5s":   "idempotency TTL 5s must be from 1m0s",
		"800h": "idempotency TTL 800h0m0s must be from 1m0s",
		"0":    "--idempotency-ttl 0: must be from 1m0s to 720h0m0s",
		"soon": `invalid argument "soon" for "--idempotency-ttl"`,
	} {
		out, errOut, code := runCLI(t, "server", "--id", "rm1", "--idempotency-ttl", v)
		if code != 2 || out != "" || !strings.Contains(errOut, want) {
			t.Errorf("--idempotency-ttl %s: got %q, %q, exit %d; want exit 2 and %q", v, out, errOut, code, want)
		}
	}
}
