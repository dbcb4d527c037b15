package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdStatusTimeout bounds the status request to each etcd endpoint, so one
// that is down costs EtcdMembers a second, not the caller's whole deadline.
const etcdStatusTimeout = time.Second

// EtcdMembers returns the members of the etcd cluster that keeps the
// cluster's state, and the status of the first of this server's etcd
// endpoints that answers: the member that answered (Header.MemberId), the
// raft leader it knows (Leader, 0 when it knows none), its etcd version.
// The member list is a serializable read, so it is answered even without
// a quorum (from the answering member's own knowledge). It is for display
// (the web UI's cluster page): each call asks etcd, nothing is cached. An
// error from the member list is returned alone; when only the status fails,
// the members come with a nil status and the error.
func (s *Server) EtcdMembers(ctx context.Context) (*clientv3.MemberListResponse, *clientv3.StatusResponse, error) {
	ml, err := s.cfg.Etcd.MemberList(ctx, clientv3.WithSerializable())
	if err != nil {
		return nil, nil, fmt.Errorf("etcd member list: %w", err)
	}
	var errs []error
	for _, ep := range s.cfg.Etcd.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, etcdStatusTimeout)
		st, err := s.cfg.Etcd.Status(sctx, ep)
		cancel()
		if err == nil {
			return ml, st, nil
		}
		errs = append(errs, fmt.Errorf("etcd status of %s: %w", ep, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("etcd status: the client has no endpoint"))
	}
	return ml, nil, errors.Join(errs...)
}
