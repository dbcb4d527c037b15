package bench

import (
	"context"
	"errors"
	"io"
	"time"
)

// FailoverConfig configures RunFailover.
type FailoverConfig struct {
	Binary   string        // the tandem binary to run servers and agents with
	Fault    string        // kill, stop, partition or switchover
	Trials   int           // faults to inject, one at a time
	LeaseTTL time.Duration // the servers' lease TTL
	Etcd     string        // "embedded" (a member in every server) or "external" (a separate etcd process)
	Clients  int           // concurrent submitting clients
	Quiet    time.Duration // quiet time between faults
	DataDir  string        // where the cluster keeps data and logs ("" for a temporary directory)
	BasePort int           // first port of the cluster's port range
	Out      io.Writer     // progress and the result table
}

// FailoverResult is what RunFailover measured; it is also the JSON output.
type FailoverResult struct{}

// RunFailover is being written; it reports that it is not available yet.
func RunFailover(ctx context.Context, cfg FailoverConfig) (*FailoverResult, error) {
	return nil, errors.New("bench failover: not implemented yet")
}
