package history

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/shard"
)

// Tenure is one owner's hold on one shard, as etcd's history shows it: from
// the creation of the owner key (its epoch) to its deletion.
type Tenure struct {
	Shard int    `json:"shard"`
	Owner string `json:"owner"`
	Epoch int64  `json:"epoch"`
	// Ended is the revision at which the owner key went (0: it still exists).
	Ended int64 `json:"ended,omitempty"`
}

// AttemptWrite is an attempt as first written to its job's record.
type AttemptWrite struct {
	Attempt  string `json:"attempt"`
	Shard    int    `json:"shard"`
	Epoch    int64  `json:"epoch"`    // as recorded in the attempt
	Revision int64  `json:"revision"` // of the write that added it
}

// Audit is what etcd's history says about a cluster's ownership and job
// writes, and what in it breaks fencing per shard (I1).
type Audit struct {
	Shards int
	// Tenures lists every owner of every shard, in order of epoch.
	Tenures []Tenure
	// CompactedAt is the revision before which etcd had compacted its
	// history (0: none); tenures in force then are known from the keys as
	// they were, earlier ones are not.
	CompactedAt int64
	// JobWrites counts the job record writes checked; Attempts lists each
	// attempt as first written.
	JobWrites int
	Attempts  []AttemptWrite
	// Problems describes every write that did not carry the epoch of its
	// shard's owner at its revision.
	Problems []string
	// Jobs holds every job record's versions, by job ID, for checking what
	// a read showed against what etcd held (Showed).
	Jobs map[string]*JobVersions
}

// JobVersions is one job record's history as etcd kept it.
type JobVersions struct {
	// Created is the record's create revision.
	Created int64 `json:"created"`
	// Versions lists the record's versions in order of revision, each in
	// force from its revision until the next one's.
	Versions []Version `json:"versions"`
	// Seeded says the first version is the one in force when etcd
	// compacted its history: what the record held before it is unknown.
	Seeded bool `json:"seeded,omitempty"`
}

// Version is one version of a job record: the revision that wrote it and
// the progress it shows.
type Version struct {
	Revision int64    `json:"revision"`
	Progress Progress `json:"progress"`
}

// AuditEtcd reads the history of layout's keys from the first revision etcd
// still has up to upTo and checks, for a cluster of shards shards, that
// every job record write (creation included) was made under the epoch of
// its shard's owner at that revision: the job's UpdatedEpoch, its Epoch when
// it is created, and the Epoch of each attempt a write adds. That is I1 per
// shard, read from etcd itself: a write by a deposed owner would carry an
// epoch no longer in force.
func AuditEtcd(ctx context.Context, cli *clientv3.Client, layout keys.Layout, shards int, upTo int64) (*Audit, error) {
	a := &Audit{Shards: shards, Jobs: map[string]*JobVersions{}}
	st := auditState{a: a, layout: layout, owners: map[int]int{}, attempts: map[string]int{}}
	from := int64(1)
	for {
		compacted, err := WatchFrom(ctx, cli, layout.Prefix(), from, upTo, st.event)
		if err != nil {
			return nil, err
		}
		if compacted == 0 {
			break
		}
		// History before compacted is gone: start from the keys as they
		// were at compacted, and follow what came after.
		a.CompactedAt, from = compacted, compacted+1
		a.Tenures, a.Attempts, a.Problems, a.JobWrites = nil, nil, nil, 0
		a.Jobs = map[string]*JobVersions{}
		st.owners, st.attempts = map[int]int{}, map[string]int{}
		resp, err := cli.Get(ctx, layout.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(compacted))
		if err != nil {
			return nil, fmt.Errorf("read the keys at the compaction (%d): %w", compacted, err)
		}
		for _, kv := range resp.Kvs {
			st.seed(kv)
		}
	}
	sort.SliceStable(a.Tenures, func(i, j int) bool { return a.Tenures[i].Epoch < a.Tenures[j].Epoch })
	return a, nil
}

// auditState follows the history event by event.
type auditState struct {
	a        *Audit
	layout   keys.Layout
	owners   map[int]int    // shard -> index in a.Tenures of its current tenure
	attempts map[string]int // job key -> attempts in its latest version seen
}

// ownerShard recognises an owner key: the leader key of one shard, or a
// shard's owner key.
func (s *auditState) ownerShard(key string) (int, bool) {
	if key == s.layout.Leader() {
		return 0, true
	}
	k, part, ok := s.layout.ParseShardKey(key)
	return k, ok && part == "owner"
}

// seed takes a key as it was at the compaction.
func (s *auditState) seed(kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	if k, ok := s.ownerShard(key); ok {
		s.a.Tenures = append(s.a.Tenures, Tenure{Shard: k, Owner: ownerID(kv.Value), Epoch: kv.CreateRevision})
		s.owners[k] = len(s.a.Tenures) - 1
		return
	}
	if strings.HasPrefix(key, s.layout.JobsPrefix()) {
		var j tandem.Job
		if json.Unmarshal(kv.Value, &j) == nil {
			s.attempts[key] = len(j.Attempts)
			s.a.Jobs[j.ID] = &JobVersions{Created: kv.CreateRevision, Seeded: true,
				Versions: []Version{{Revision: kv.ModRevision, Progress: ProgressOf(&j)}}}
		}
	}
}

func (s *auditState) event(ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	rev := ev.Kv.ModRevision
	if k, ok := s.ownerShard(key); ok {
		switch {
		case ev.Type == clientv3.EventTypeDelete:
			if i, held := s.owners[k]; held {
				s.a.Tenures[i].Ended = rev
				delete(s.owners, k)
			}
		case ev.Kv.CreateRevision == ev.Kv.ModRevision:
			s.a.Tenures = append(s.a.Tenures, Tenure{Shard: k, Owner: ownerID(ev.Kv.Value), Epoch: ev.Kv.CreateRevision})
			s.owners[k] = len(s.a.Tenures) - 1
		}
		return
	}
	if ev.Type != clientv3.EventTypePut || !strings.HasPrefix(key, s.layout.JobsPrefix()) {
		return
	}
	var j tandem.Job
	if err := json.Unmarshal(ev.Kv.Value, &j); err != nil {
		s.a.Problems = append(s.a.Problems, fmt.Sprintf("job record %s at revision %d is undecodable: %v", key, rev, err))
		return
	}
	s.a.JobWrites++
	s.version(&j, ev.Kv.CreateRevision, rev)
	k := shard.Of(j.ID, s.a.Shards)
	if j.Shard != k {
		s.a.Problems = append(s.a.Problems, fmt.Sprintf("job %s records shard %d, but its ID hashes to shard %d of %d", j.ID, j.Shard, k, s.a.Shards))
	}
	owner, known := s.current(k)
	check := func(what string, epoch int64) {
		switch {
		case !known && s.a.CompactedAt == 0:
			s.a.Problems = append(s.a.Problems, fmt.Sprintf("I1: %s at revision %d with epoch %d, while shard %d had no owner", what, rev, epoch, k))
		case known && epoch != owner.Epoch:
			s.a.Problems = append(s.a.Problems, fmt.Sprintf("I1: %s at revision %d with epoch %d, but shard %d's owner then was %s at epoch %d",
				what, rev, epoch, k, owner.Owner, owner.Epoch))
		}
	}
	if ev.Kv.CreateRevision == rev {
		check(fmt.Sprintf("job %s was created", j.ID), j.Epoch)
	}
	if j.UpdatedEpoch != 0 || ev.Kv.CreateRevision != rev {
		check(fmt.Sprintf("job %s was written", j.ID), j.UpdatedEpoch)
	}
	for _, at := range j.Attempts[min(s.attempts[key], len(j.Attempts)):] {
		s.a.Attempts = append(s.a.Attempts, AttemptWrite{Attempt: at.ID, Shard: k, Epoch: at.Epoch, Revision: rev})
		check(fmt.Sprintf("attempt %s was recorded", at.ID), at.Epoch)
	}
	s.attempts[key] = len(j.Attempts)
}

// version adds j, written at rev, to its record's versions.
func (s *auditState) version(j *tandem.Job, created, rev int64) {
	h := s.a.Jobs[j.ID]
	if h == nil || created == rev {
		h = &JobVersions{Created: created}
		s.a.Jobs[j.ID] = h
	}
	h.Versions = append(h.Versions, Version{Revision: rev, Progress: ProgressOf(j)})
}

// current returns the tenure in force for shard now (in the replay).
func (s *auditState) current(k int) (Tenure, bool) {
	i, ok := s.owners[k]
	if !ok {
		return Tenure{}, false
	}
	return s.a.Tenures[i], true
}

func ownerID(v []byte) string {
	var o struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(v, &o)
	return o.ID
}

// OwnerAt returns the tenure of shard in force at revision rev.
func (a *Audit) OwnerAt(k int, rev int64) (Tenure, bool) {
	for i := len(a.Tenures) - 1; i >= 0; i-- {
		t := a.Tenures[i]
		if t.Shard == k && t.Epoch <= rev && (t.Ended == 0 || t.Ended > rev) {
			return t, true
		}
	}
	return Tenure{}, false
}

// Showed reports whether the record of job showed progress p (nil: that
// there was no record) at some revision from from to to, both included;
// known is false when etcd's history cannot tell, because it was compacted
// before the versions that could have shown it. A job etcd never held has
// no record at any revision.
func (a *Audit) Showed(job string, p *Progress, from, to int64) (showed, known bool) {
	h := a.Jobs[job]
	switch {
	case from > to:
		return false, true
	case h == nil:
		return p == nil, true
	case p == nil:
		return from < h.Created, true
	}
	for i, v := range h.Versions {
		until := int64(math.MaxInt64)
		if i+1 < len(h.Versions) {
			until = h.Versions[i+1].Revision
		}
		if v.Revision <= to && until > from && v.Progress == *p {
			return true, true
		}
	}
	if h.Seeded && from < h.Versions[0].Revision {
		return false, false
	}
	return false, true
}

// Gap is the time a shard had no owner between two tenures, in revisions.
type Gap struct {
	Shard    int
	From, To string // the owners before and after
	Revs     int64  // the next epoch minus the revision the last owner's key went
	Ended    int64  // the revision the last owner's key went
}

// CheckDrain checks that every shard the drained server from gave up at or
// after revision since moved with no gap beyond a few transactions, and
// that it gave up moved shards. It returns those gaps and what is wrong.
//
// "A few transactions" means: each shard is free from the transaction that
// hands it off to the one that takes it, and every shard handed to one
// server in one hand-off is taken in one transaction, so every shard of that
// hand-off has the same gap. In between, etcd may order only the rest of the
// same drain when nothing else writes: the hand-off to the other server and
// its take (2), one failover record per shard moved, and the drained
// server's membership record, rewritten when it marks itself draining and
// when it owns nothing (2). A gap counts the take too, so it is at most 5 +
// moved revisions; taking the shards one transaction each, each followed by
// its record, made every shard wait for the ones taken before it (gaps up to
// 36 revisions in docs/BENCHMARKS.md).
func (a *Audit) CheckDrain(from string, since int64, moved int) (gaps []Gap, problems []string) {
	maxGap := int64(5 + moved)
	type handoff struct {
		ended int64
		to    string
	}
	took := map[handoff]int64{} // the epoch of the take of each hand-off's shards
	for _, g := range a.Gaps() {
		if g.From != from || g.Ended < since {
			continue
		}
		gaps = append(gaps, g)
		if g.Revs < 1 || g.Revs > maxGap {
			problems = append(problems, fmt.Sprintf("shard %d was free for %d revisions moving from %s to %s; want 1 to %d", g.Shard, g.Revs, from, g.To, maxGap))
		}
		h := handoff{g.Ended, g.To}
		epoch := g.Ended + g.Revs
		if e, ok := took[h]; ok && e != epoch {
			problems = append(problems, fmt.Sprintf("shards handed from %s to %s at revision %d were taken at revisions %d and %d; want one transaction", from, g.To, g.Ended, e, epoch))
		}
		took[h] = epoch
	}
	if len(gaps) != moved {
		problems = append(problems, fmt.Sprintf("gaps from %s: %d, want one per shard it owned (%d)", from, len(gaps), moved))
	}
	return gaps, problems
}

// Gaps returns every gap between consecutive tenures of each shard.
func (a *Audit) Gaps() []Gap {
	last := map[int]Tenure{}
	var out []Gap
	for _, t := range a.Tenures {
		if p, ok := last[t.Shard]; ok && p.Ended != 0 {
			out = append(out, Gap{Shard: t.Shard, From: p.Owner, To: t.Owner, Revs: t.Epoch - p.Ended, Ended: p.Ended})
		}
		last[t.Shard] = t
	}
	return out
}

// WatchFrom replays the events under prefix from revision from up to upTo
// through fn. If etcd has compacted revision from away, it returns the
// compaction revision and replays nothing.
func WatchFrom(ctx context.Context, cli *clientv3.Client, prefix string, from, upTo int64, fn func(*clientv3.Event)) (int64, error) {
	if from > upTo {
		return 0, nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	// A progress notification says every event up to its revision has been
	// sent: the way to know the end was reached if the last revision wrote
	// nothing under prefix.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-tick.C:
			_ = cli.RequestProgress(wctx)
		case resp, ok := <-wch:
			if !ok {
				return 0, errors.New("watch closed")
			}
			if resp.CompactRevision != 0 {
				return resp.CompactRevision, nil
			}
			if err := resp.Err(); err != nil {
				return 0, err
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision > upTo {
					return 0, nil
				}
				fn(ev)
				if ev.Kv.ModRevision == upTo {
					return 0, nil
				}
			}
			if resp.IsProgressNotify() && resp.Header.Revision >= upTo {
				return 0, nil
			}
		}
	}
}
