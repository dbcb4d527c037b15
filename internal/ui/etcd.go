package ui

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdInfo is what the cluster page reads of the etcd cluster under the
// servers: its members and its leader, from the etcd client's MemberList
// and Status. *server.Server implements it; a Service that does not shows
// no etcd column.
type EtcdInfo interface {
	EtcdMembers(ctx context.Context) (*clientv3.MemberListResponse, *clientv3.StatusResponse, error)
}

// etcdCacheFor is how long the cluster page reuses what etcd said: the page
// is rebuilt at every revision and every 2 s for each open tab, and asking
// etcd costs two requests (one a new connection).
const etcdCacheFor = 2 * time.Second

// etcdAsk bounds how long a page waits for etcd's answer.
const etcdAsk = 2 * time.Second

type etcdMember struct {
	Name, ID   string
	PeerURLs   string
	ClientURLs string
	Leader     bool
	Learner    bool
	// Answered marks the member that answered this server's etcd client.
	Answered bool
}

type etcdView struct {
	Members []etcdMember
	// Leader is the leader's name ("" when unknown or none), Answered the
	// member this server's client reached.
	Leader, Answered string
	Version          string
	Err              string
}

// Member returns the member named name (an embedded member is named after
// its server), if any.
func (e etcdView) Member(name string) *etcdMember {
	i := slices.IndexFunc(e.Members, func(m etcdMember) bool { return m.Name == name })
	if i < 0 {
		return nil
	}
	return &e.Members[i]
}

type etcdCache struct {
	mu   sync.Mutex
	at   time.Time
	view *etcdView
}

// etcd returns what etcd says of its members, at most etcdCacheFor old; nil
// when the Service cannot say.
func (u *UI) etcd(ctx context.Context) *etcdView {
	ei, ok := u.svc.(EtcdInfo)
	if !ok {
		return nil
	}
	u.etcdCache.mu.Lock()
	defer u.etcdCache.mu.Unlock()
	if now := u.cfg.Now(); u.etcdCache.view != nil && now.Sub(u.etcdCache.at) < etcdCacheFor && !now.Before(u.etcdCache.at) {
		return u.etcdCache.view
	}
	ctx, cancel := context.WithTimeout(ctx, etcdAsk)
	defer cancel()
	ml, st, err := ei.EtcdMembers(ctx)
	v := &etcdView{}
	if err != nil {
		v.Err = err.Error()
	}
	if ml != nil {
		for _, m := range ml.Members {
			em := etcdMember{Name: m.Name, ID: fmt.Sprintf("%x", m.ID), PeerURLs: strings.Join(m.PeerURLs, ", "),
				ClientURLs: strings.Join(m.ClientURLs, ", "), Learner: m.IsLearner}
			if em.Name == "" {
				em.Name = "(not started) " + em.ID
			}
			if st != nil {
				em.Leader = st.Leader != 0 && m.ID == st.Leader
				em.Answered = st.Header != nil && m.ID == st.Header.MemberId
			}
			if em.Leader {
				v.Leader = em.Name
			}
			if em.Answered {
				v.Answered = em.Name
			}
			v.Members = append(v.Members, em)
		}
		slices.SortFunc(v.Members, func(a, b etcdMember) int { return strings.Compare(a.Name, b.Name) })
	}
	if st != nil {
		v.Version = st.Version
	}
	u.etcdCache.view, u.etcdCache.at = v, u.cfg.Now()
	return v
}
