// Package tandem holds the domain types shared by tandem's servers, its Go
// client and its CLI: jobs, HA states, failover events and the error codes the
// HTTP API speaks.
//
// The packages that do the work live under internal/ (election and fencing,
// the etcd-backed store, the HA server, the HTTP API); the public Go client is
// in tandem/client.
package tandem

// Version is tandem's release version; the build may override it with
// -ldflags "-X github.com/tandemhq/tandem.Version=...".
var Version = "0.1.0-dev"
