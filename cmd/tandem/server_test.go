package main

import (
	"strings"
	"testing"
)

func TestServerIdempotencyTTLRefused(t *testing.T) {
	for _, v := range []string{"5s", "800h", "soon"} {
		out, errOut, code := runCLI(t, "server", "--id", "rm1", "--idempotency-ttl", v)
		if code != 2 || out != "" || !strings.Contains(errOut, "idempotency") {
			t.Errorf("--idempotency-ttl %s: got %q, %q, exit %d; want exit 2 naming the idempotency TTL", v, out, errOut, code)
		}
	}
}
