package store

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// A busy or electing etcd is waited out at start-up; a refusal is not.
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrTimeout, true},
		{rpctypes.ErrNoLeader, true},
		{rpctypes.ErrLeaderChanged, true},
		{fmt.Errorf("wrapped: %w", rpctypes.ErrTimeoutDueToLeaderFail), true},
		{rpctypes.ErrPermissionDenied, false},
		{fmt.Errorf("wrapped: %w", rpctypes.ErrPermissionDenied), false},
		{rpctypes.ErrAuthFailed, false},
		{context.Canceled, false},
	} {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
