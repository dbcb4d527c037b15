// Package store keeps a cluster's state in etcd: jobs, idempotency keys,
// membership and HA history.
//
// Every server, active or standby, holds the same in-memory view of the
// cluster's keys, fed by one etcd watch on the cluster prefix (DESIGN.md
// section 5, hot standby). Reads come from that view; writes of the active go
// to etcd in transactions fenced by its epoch (I1), and return once the view
// has caught up with them, so a client reads its own writes.
package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/keys"
)

// IdempotencyTTL is how long an idempotency key is remembered at least,
// unless SetIdempotencyTTL says otherwise.
const IdempotencyTTL = 24 * time.Hour

// Bounds of SetIdempotencyTTL: a key must outlive any client's retries of
// one submission (minutes), and leases of more than a month are not kept.
const (
	MinIdempotencyTTL = time.Minute
	MaxIdempotencyTTL = 30 * 24 * time.Hour
)

// maxEvents bounds the HA history kept in memory (etcd keeps all of it).
const maxEvents = 1000

// loadPage is how many keys one range request of the initial load reads.
const loadPage = 5000

// Gone records the last time the view saw a shard's owner key disappear.
type Gone struct {
	Prev election.Owner
	At   time.Time // local time the deletion was observed
	Rev  int64
}

// Config is the cluster-wide settings, written once by the first server.
type Config struct {
	Shards int `json:"shards"`
}

// Store is the etcd-backed state of one cluster and this process's view of it.
type Store struct {
	cli  *clientv3.Client
	keys keys.Layout
	log  *slog.Logger

	mu        sync.RWMutex
	rev       int64 // the view holds every change up to this revision
	jobs      map[string]jobEntry
	order     []string // job IDs, sorted
	byState   map[tandem.JobState]int
	pending   map[string]struct{}            // IDs of pending jobs
	fresh     map[string]struct{}            // IDs that became (or stayed) pending since TakeFreshPending
	live      map[string]map[string]struct{} // agent ID -> IDs of jobs with a live attempt on it
	agentCh   map[string]chan struct{}       // agent ID -> closed when its live jobs change (AgentChanged)
	dedup     interner                       // values many jobs hold alike, held once (intern.go)
	agents    map[string]tandem.AgentInfo
	servers   map[string]tandem.ServerInfo
	serverRev map[string]int64              // server ID -> mod revision of its membership record
	owners    map[int]*election.Owner       // shard -> owner
	handoffs  map[int]*election.Handoff     // shard -> hand-off under way
	resigns   map[int]*election.Resignation // shard -> last resignation
	gone      map[int]*Gone                 // shard -> last owner seen to go
	placed    map[string]int64              // agent -> mod revision of its placement record
	config    *Config
	events    []tandem.FailoverEvent
	sched     schedView     // schedules, their run records and live runs (schedules.go)
	wf        wfView        // workflow runs (workflows.go)
	changed   chan struct{} // closed and replaced whenever the view changes
	watchErr  error

	barrier readBarrier // linearizable reads of etcd's revision (see Fresh)
	batch   batcher     // job creations waiting for the next group commit (batch.go)
	// batchResends counts batch transactions sent again for want of an
	// answer (sendBatch).
	batchResends atomic.Int64

	idemMu         sync.Mutex
	idemTTL        time.Duration // how long a key lives at least (IdempotencyTTL by default)
	idemLease      clientv3.LeaseID
	idemLeaseUntil time.Time
	idemLeaseKeys  int              // keys given idemLease so far
	idemNext       clientv3.LeaseID // granted ahead, for when idemLease is used up
	idemNextAt     time.Time        // when idemNext was asked for
	idemGranting   bool             // a grant ahead is under way

	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Store for the cluster laid out by layout. Call Start before use.
func New(cli *clientv3.Client, layout keys.Layout, log *slog.Logger) *Store {
	s := &Store{
		cli:       cli,
		keys:      layout,
		log:       log,
		jobs:      make(map[string]jobEntry),
		byState:   make(map[tandem.JobState]int),
		pending:   make(map[string]struct{}),
		fresh:     make(map[string]struct{}),
		live:      make(map[string]map[string]struct{}),
		agentCh:   make(map[string]chan struct{}),
		agents:    make(map[string]tandem.AgentInfo),
		servers:   make(map[string]tandem.ServerInfo),
		serverRev: make(map[string]int64),
		owners:    make(map[int]*election.Owner),
		handoffs:  make(map[int]*election.Handoff),
		resigns:   make(map[int]*election.Resignation),
		gone:      make(map[int]*Gone),
		placed:    make(map[string]int64),
		idemTTL:   IdempotencyTTL,
		changed:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	s.sched.reset()
	s.wf.reset()
	return s
}

// Start loads the cluster's keys and starts following changes. It returns
// once the initial load is done; the watch runs until Close.
func (s *Store) Start(ctx context.Context) error {
	// A busy or electing etcd (a cluster starting on a loaded machine) is
	// waited out until ctx ends; load can be repeated.
	for {
		err := s.load(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !Retryable(err) {
			return err
		}
		s.log.Warn("loading the cluster's keys failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.follow(wctx)
	return nil
}

// Close stops following changes and waits for the watch goroutine to end.
// Job creations under way fail; later ones fail at once.
func (s *Store) Close() {
	s.batch.close()
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
}

// load replaces the view with the cluster's keys at one revision, reading
// them in pages so a large cluster never needs one huge response.
func (s *Store) load(ctx context.Context) error {
	prefix := s.keys.Prefix()
	end := clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	var kvs []*mvccpb.KeyValue
	key := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(loadPage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, key, opts...)
		if err != nil {
			return fmt.Errorf("load %s: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		kvs = append(kvs, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Sized for the jobs alone: the other keys (idempotency keys, one per
	// submission, above all) would double a map sized for every key.
	njobs := 0
	for _, kv := range kvs {
		if bytes.HasPrefix(kv.Key, []byte(s.keys.JobsPrefix())) {
			njobs++
		}
	}
	s.jobs = make(map[string]jobEntry, njobs)
	s.order = make([]string, 0, njobs)
	s.byState = make(map[tandem.JobState]int)
	s.pending = make(map[string]struct{})
	s.fresh = make(map[string]struct{})
	s.live = make(map[string]map[string]struct{})
	for _, ch := range s.agentCh { // every agent's live jobs may have changed
		close(ch)
	}
	s.agentCh = make(map[string]chan struct{})
	s.dedup.reset()
	s.agents = make(map[string]tandem.AgentInfo)
	s.servers = make(map[string]tandem.ServerInfo)
	s.serverRev = make(map[string]int64)
	s.owners = make(map[int]*election.Owner)
	s.handoffs = make(map[int]*election.Handoff)
	s.resigns = make(map[int]*election.Resignation)
	s.placed = make(map[string]int64)
	s.config = nil
	s.events = nil
	s.sched.reset()
	s.wf.reset()
	for _, kv := range kvs {
		s.applyPut(kv, true)
	}
	sort.Strings(s.order)
	sort.Strings(s.wf.order)
	s.rev = rev
	s.notifyLocked()
	return nil
}

// follow applies watch events until ctx ends, reloading after a compaction.
func (s *Store) follow(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		s.mu.RLock()
		from := s.rev + 1
		s.mu.RUnlock()
		wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.keys.Prefix(),
			clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
		for resp := range wch {
			if err := resp.Err(); err != nil {
				s.setWatchErr(err)
				if errors.Is(err, rpctypes.ErrCompacted) {
					s.log.Warn("watch compacted; reloading the cluster view", "rev", from, "err", err)
					if lerr := s.load(ctx); lerr != nil {
						s.log.Error("reload after compaction failed", "err", lerr)
					}
				}
				break
			}
			s.apply(resp)
		}
		if ctx.Err() == nil {
			select { // the watch ended (etcd unreachable or leaderless): back off a little
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func (s *Store) setWatchErr(err error) {
	s.mu.Lock()
	s.watchErr = err
	s.mu.Unlock()
}

// WatchErr returns the last error that ended the watch, or nil once events flow again.
func (s *Store) WatchErr() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.watchErr
}

func (s *Store) apply(resp clientv3.WatchResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchErr = nil
	// Events of one transaction share a revision, so compare with the
	// revision the view had before this response, not the running one.
	base := s.rev
	for _, ev := range resp.Events {
		if ev.Kv.ModRevision <= base {
			continue // already in the view (a reload raced the watch)
		}
		switch ev.Type {
		case clientv3.EventTypePut:
			s.applyPut(ev.Kv, false)
		case clientv3.EventTypeDelete:
			s.applyDelete(ev.Kv)
		}
		s.rev = ev.Kv.ModRevision
	}
	if resp.IsProgressNotify() && resp.Header.Revision > s.rev {
		// Every event up to the header revision has been delivered.
		s.rev = resp.Header.Revision
	}
	s.notifyLocked()
}

func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// applyPut folds one key into the view. During a load, order is sorted afterwards.
func (s *Store) applyPut(kv *mvccpb.KeyValue, loading bool) {
	key := string(kv.Key)
	if shard, part, ok := s.ownershipKey(key); ok {
		switch part {
		case "owner":
			var o election.Owner
			if s.decode(kv, &o) {
				o.Epoch, o.Lease, o.Key = kv.CreateRevision, kv.Lease, key
				s.owners[shard] = &o
			}
		case "handoff":
			var h election.Handoff
			if s.decode(kv, &h) {
				h.ModRev = kv.ModRevision
				s.handoffs[shard] = &h
			}
		case "resign":
			var r election.Resignation
			if s.decode(kv, &r) {
				s.resigns[shard] = &r
			}
		}
		return
	}
	if s.applySchedulePut(kv) || s.applyWorkflowPut(kv, loading) {
		return
	}
	switch {
	case key == s.keys.Config():
		var c Config
		if s.decode(kv, &c) {
			s.config = &c
		}
	case strings.HasPrefix(key, s.keys.PlacementsPrefix()):
		s.placed[strings.TrimPrefix(key, s.keys.PlacementsPrefix())] = kv.ModRevision
	case strings.HasPrefix(key, s.keys.ServersPrefix()):
		var si tandem.ServerInfo
		if s.decode(kv, &si) {
			si.Lease = kv.Lease
			s.servers[si.ID] = si
			s.serverRev[si.ID] = kv.ModRevision
		}
	case strings.HasPrefix(key, s.keys.JobsPrefix()):
		if e, ok := s.jobs[key[len(s.keys.JobsPrefix()):]]; ok && e.rev >= kv.ModRevision {
			// This process created the job and put it into the view when
			// its transaction committed (applyCreated): the watch brings
			// the same write back, with nothing new to decode.
			return
		}
		j := new(tandem.Job)
		if !s.decode(kv, j) {
			return
		}
		s.dedup.job(j, true)
		old, ok := s.jobs[j.ID]
		if ok {
			s.unindex(old.job)
		} else if !loading {
			s.insertOrder(j.ID)
		} else {
			s.order = append(s.order, j.ID)
		}
		s.jobs[j.ID] = jobEntry{job: j, rev: kv.ModRevision}
		s.index(j)
	case strings.HasPrefix(key, s.keys.AgentsPrefix()):
		var a tandem.AgentInfo
		if s.decode(kv, &a) {
			s.agents[a.ID] = a
		}
	case strings.HasPrefix(key, s.keys.EventsPrefix()):
		var e tandem.FailoverEvent
		if s.decode(kv, &e) {
			// Kept in epoch order. Their keys sort by epoch, so an event
			// almost always goes last: found by a search, not a sort of
			// the whole history per event.
			i := sort.Search(len(s.events), func(k int) bool { return s.events[k].Epoch > e.Epoch })
			s.events = slices.Insert(s.events, i, e)
			if len(s.events) > maxEvents {
				s.events = s.events[len(s.events)-maxEvents:]
			}
		}
	}
}

func (s *Store) applyDelete(kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	if shard, part, ok := s.ownershipKey(key); ok {
		switch part {
		case "owner":
			if o := s.owners[shard]; o != nil {
				s.gone[shard] = &Gone{Prev: *o, At: time.Now(), Rev: kv.ModRevision}
			}
			delete(s.owners, shard)
		case "handoff":
			delete(s.handoffs, shard)
		case "resign":
			delete(s.resigns, shard)
		}
		return
	}
	if s.applyScheduleDelete(kv) || s.applyWorkflowDelete(kv) {
		return
	}
	switch {
	case strings.HasPrefix(key, s.keys.PlacementsPrefix()):
		delete(s.placed, strings.TrimPrefix(key, s.keys.PlacementsPrefix()))
	case strings.HasPrefix(key, s.keys.ServersPrefix()):
		id := strings.TrimPrefix(key, s.keys.ServersPrefix())
		delete(s.servers, id)
		delete(s.serverRev, id)
	case strings.HasPrefix(key, s.keys.JobsPrefix()):
		id := strings.TrimPrefix(key, s.keys.JobsPrefix())
		if old, ok := s.jobs[id]; ok {
			s.unindex(old.job)
			delete(s.jobs, id)
			i := sort.SearchStrings(s.order, id)
			if i < len(s.order) && s.order[i] == id {
				s.order = append(s.order[:i], s.order[i+1:]...)
			}
		}
	}
}

// ownershipKey recognises the keys of a shard's ownership: leader, handoff
// and resign for the one shard of an active/standby cluster, shards/<k>/...
// for an active-active one.
func (s *Store) ownershipKey(key string) (int, string, bool) {
	switch key {
	case s.keys.Leader():
		return 0, "owner", true
	case s.keys.Prefix() + "handoff":
		return 0, "handoff", true
	case s.keys.Prefix() + "resign":
		return 0, "resign", true
	}
	return s.keys.ParseShardKey(key)
}

// index adds j to the per-state, pending and per-agent indexes.
func (s *Store) index(j *tandem.Job) {
	s.byState[j.State]++
	if j.State == tandem.JobPending {
		s.pending[j.ID] = struct{}{}
		s.fresh[j.ID] = struct{}{}
	}
	if a := j.LastAttempt(); a != nil && a.State.Live() {
		m := s.live[a.Agent]
		if m == nil {
			m = make(map[string]struct{})
			s.live[a.Agent] = m
		}
		m[j.ID] = struct{}{}
		s.agentChanged(a.Agent)
	}
	s.indexScheduleJob(j)
	s.noteWorkflowJob(j)
}

// unindex removes j from the indexes.
func (s *Store) unindex(j *tandem.Job) {
	s.byState[j.State]--
	delete(s.pending, j.ID)
	delete(s.fresh, j.ID)
	if a := j.LastAttempt(); a != nil {
		if m := s.live[a.Agent]; m != nil {
			if _, ok := m[j.ID]; ok {
				delete(m, j.ID)
				s.agentChanged(a.Agent)
			}
		}
	}
	s.unindexScheduleJob(j)
}

func (s *Store) insertOrder(id string) {
	n := len(s.order)
	if n == 0 || s.order[n-1] < id { // IDs are monotonic: almost always an append
		s.order = append(s.order, id)
		return
	}
	i := sort.SearchStrings(s.order, id)
	s.order = append(s.order, "")
	copy(s.order[i+1:], s.order[i:])
	s.order[i] = id
}

func (s *Store) decode(kv *mvccpb.KeyValue, v any) bool {
	if err := json.Unmarshal(kv.Value, v); err != nil {
		s.log.Error("undecodable value in etcd; ignoring it", "key", string(kv.Key), "err", err)
		return false
	}
	return true
}

// Rev returns the revision the view has reached.
func (s *Store) Rev() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// Changed returns a channel that is closed the next time the view changes.
func (s *Store) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// WaitRev blocks until the view has reached rev or ctx ends.
func (s *Store) WaitRev(ctx context.Context, rev int64) error {
	for {
		s.mu.RLock()
		cur, ch := s.rev, s.changed
		s.mu.RUnlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (view at %d): %w", rev, cur, ctx.Err())
		}
	}
}

// Owner returns shard's owner as the view knows it, or nil while it is free.
func (s *Store) Owner(shard int) *election.Owner { return lookup(s, &s.owners, shard) }

// Owners returns every shard's owner as the view knows it; free shards are
// absent.
func (s *Store) Owners() map[int]election.Owner { return copyAll(s, &s.owners) }

// Handoff returns the hand-off of shard under way, or nil.
func (s *Store) Handoff(shard int) *election.Handoff { return lookup(s, &s.handoffs, shard) }

// Handoffs returns every hand-off under way, by shard.
func (s *Store) Handoffs() map[int]election.Handoff { return copyAll(s, &s.handoffs) }

// Resignation returns the last recorded resignation of shard, or nil.
func (s *Store) Resignation(shard int) *election.Resignation { return lookup(s, &s.resigns, shard) }

// LastGone returns when the view last saw shard's owner key disappear, or nil.
func (s *Store) LastGone(shard int) *Gone { return lookup(s, &s.gone, shard) }

// lookup returns a copy of (*m)[shard], read under the view's lock, or
// nil. m points at a field of the view, which a reload replaces.
func lookup[T any](s *Store, m *map[int]*T, shard int) *T {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if v := (*m)[shard]; v != nil {
		c := *v
		return &c
	}
	return nil
}

// copyAll returns a copy of every value of *m, read under the view's lock.
func copyAll[T any](s *Store, m *map[int]*T) map[int]T {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[int]T, len(*m))
	for k, v := range *m {
		out[k] = *v
	}
	return out
}

// ClusterConfig returns the cluster's settings, or nil if none are stored yet.
func (s *Store) ClusterConfig() *Config {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.config == nil {
		return nil
	}
	c := *s.config
	return &c
}

// Servers returns the live servers, sorted by ID.
func (s *Store) Servers() []tandem.ServerInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]tandem.ServerInfo, 0, len(s.servers))
	for _, si := range s.servers {
		out = append(out, si)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// Server returns one live server's record.
func (s *Store) Server(id string) (tandem.ServerInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	si, ok := s.servers[id]
	return si, ok
}

// Events returns the HA history, oldest first.
func (s *Store) Events() []tandem.FailoverEvent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]tandem.FailoverEvent(nil), s.events...)
}

// Job returns a copy of the job (see cloneJob for what the caller may
// change), or an ENOTFOUND error.
func (s *Store) Job(id string) (*tandem.Job, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.jobs[id]
	if !ok {
		return nil, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", id)
	}
	return cloneJob(e.job), nil
}

// Jobs returns up to limit jobs with IDs after after (all when after is
// empty), oldest first, optionally only those in state, and the ID to pass as
// after for the next page ("" at the end).
func (s *Store) Jobs(after string, limit int, state tandem.JobState) ([]*tandem.Job, string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := 0
	if after != "" {
		i = sort.Search(len(s.order), func(k int) bool { return s.order[k] > after })
	}
	out := make([]*tandem.Job, 0, min(limit, len(s.order)-i))
	for ; i < len(s.order); i++ {
		j := s.jobs[s.order[i]].job
		if state != "" && j.State != state {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID
		}
		out = append(out, cloneJob(j))
	}
	return out, ""
}

// JobWithRev returns a copy of the job and its record's mod revision, the
// base for a conditional update.
func (s *Store) JobWithRev(id string) (*tandem.Job, int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.jobs[id]
	if !ok {
		return nil, 0, tandem.Errorf(tandem.ENOTFOUND, "job %q not found", id)
	}
	return cloneJob(e.job), e.rev, nil
}

// jobEntry is a job in the view and its record's mod revision. The job
// is never changed once in the view: a new version of the record is a new
// *tandem.Job, so the view's own reads need no copy, and every copy handed
// out is consistent.
type jobEntry struct {
	job *tandem.Job
	rev int64
}

// cloneJob copies j deeply enough that the copy's fields and attempts can
// be changed: the copy is the caller's. What it still shares with the view
// (and, through the view's interning, with other jobs) is what no caller
// changes in place: the spec's Command slice and Env, Labels and
// Constraints maps, each attempt's Outputs map, and the values behind its
// pointers (NotBefore, StartedAt, EndedAt, ExitCode). Replace those,
// never write into them.
func cloneJob(j *tandem.Job) *tandem.Job {
	c := *j
	c.Attempts = append([]tandem.Attempt(nil), j.Attempts...) // nil when there are none: no allocation
	return &c
}

// PendingJobs returns the pending jobs, oldest first.
func (s *Store) PendingJobs() []*tandem.Job {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*tandem.Job, 0, len(s.pending))
	for id := range s.pending {
		out = append(out, cloneJob(s.jobs[id].job))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// TakeFreshPending returns the pending jobs written since the last call,
// oldest first, and forgets them: the scheduler's way to look only at what
// is new instead of the whole backlog.
func (s *Store) TakeFreshPending() []*tandem.Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*tandem.Job, 0, len(s.fresh))
	for id := range s.fresh {
		out = append(out, cloneJob(s.jobs[id].job))
	}
	clear(s.fresh)
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// LiveOn returns copies of the jobs whose latest attempt is live
// (scheduled or running) on agent, oldest first. LiveJobs says what most
// callers need for much less.
func (s *Store) LiveOn(agent string) []*tandem.Job {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*tandem.Job, 0, len(s.live[agent]))
	for id := range s.live[agent] {
		out = append(out, cloneJob(s.jobs[id].job))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// LiveJob is a job whose latest attempt is live on an agent, as the view
// holds it: what an agent's sync and the scheduler's count of an agent's
// load read, without a copy of the job. It holds values only; nothing in
// it is shared with the view.
type LiveJob struct {
	ID            string // the job's
	Shard         int
	Attempt       string              // the latest attempt's ID
	State         tandem.AttemptState // the latest attempt's (scheduled or running)
	KillRequested bool
	// Resources is what the attempt holds on the agent: the spec's, with
	// the defaults filled in.
	Resources tandem.Resources
}

// LiveJobs returns the jobs whose latest attempt is live on agent, oldest
// first: LiveOn's jobs, without copying them.
func (s *Store) LiveJobs(agent string) []LiveJob {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.liveJobsLocked(agent)
}

func (s *Store) liveJobsLocked(agent string) []LiveJob {
	out := make([]LiveJob, 0, len(s.live[agent]))
	for id := range s.live[agent] {
		j := s.jobs[id].job
		a := j.LastAttempt()
		out = append(out, LiveJob{ID: j.ID, Shard: j.Shard, Attempt: a.ID, State: a.State, KillRequested: j.KillRequested,
			Resources: j.JobSpec.WithDefaults().Resources})
	}
	slices.SortFunc(out, func(a, b LiveJob) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// AgentChanged returns a channel that is closed the next time the jobs
// live on agent change: one starts or stops being live there, or the
// record of one that is changes in any way (a kill request, its attempt
// starting), or the view is reloaded. Changed fires for every change of
// the view; a long poll that only answers for one agent waits on this
// instead, so that the view's other changes (every other job's
// submission, above all) do not wake every agent's poll.
func (s *Store) AgentChanged(agent string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.agentCh[agent]
	if ch == nil {
		ch = make(chan struct{})
		s.agentCh[agent] = ch
	}
	return ch
}

// agentChanged wakes whoever waits on AgentChanged(agent). The view's
// lock is held for writing.
func (s *Store) agentChanged(agent string) {
	if ch := s.agentCh[agent]; ch != nil {
		close(ch)
		delete(s.agentCh, agent)
	}
}

// AgentsWithLive returns the IDs of agents that have live attempts.
func (s *Store) AgentsWithLive() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for a, m := range s.live {
		if len(m) > 0 {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// Agents returns the registered agents, sorted by ID.
func (s *Store) Agents() []tandem.AgentInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]tandem.AgentInfo, 0, len(s.agents))
	for _, a := range s.agents {
		out = append(out, a)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

// Agent returns one registered agent.
func (s *Store) Agent(id string) (tandem.AgentInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.agents[id]
	return a, ok
}

// Placement makes a job update also a placement on Agent: the update
// commits only if the agent's placement record is still at Rev (its mod
// revision as the caller's view had it), and rewrites that record. Owners of
// different shards placing on one agent are so serialised: whichever commits
// second finds the record changed and must look at the agent's load again.
type Placement struct {
	Agent   string
	Rev     int64
	Attempt string
}

// UpdateJob writes job, fenced by f (I1 per shard) and conditional on the
// record still being at rev (no lost update). ErrFenced means f no longer
// holds; ErrConflict means the record changed since rev: re-read and retry;
// with place, ErrPlacementConflict means another placement on the agent came
// first. On success the view shows the write, and the commit's revision is
// returned.
func (s *Store) UpdateJob(ctx context.Context, f election.Fence, job *tandem.Job, rev int64, place *Placement) (int64, error) {
	val, err := json.Marshal(job)
	if err != nil {
		return 0, fmt.Errorf("encode job %s: %w", job.ID, err)
	}
	key := s.keys.Job(job.ID)
	cmps := []clientv3.Cmp{f.IsOwner(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
	ops := []clientv3.Op{clientv3.OpPut(key, string(val))}
	if place != nil {
		pk := s.keys.Placement(place.Agent)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(pk), "=", place.Rev))
		ops = append(ops, clientv3.OpPut(pk, place.Attempt))
	}
	elses := []clientv3.Op{clientv3.OpGet(f.Key, clientv3.WithKeysOnly()), clientv3.OpGet(key, clientv3.WithKeysOnly())}
	if place != nil {
		elses = append(elses, clientv3.OpGet(s.keys.Placement(place.Agent), clientv3.WithKeysOnly()))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(elses...).Commit()
	if err != nil {
		return 0, fmt.Errorf("update job %s: %w", job.ID, err)
	}
	if !resp.Succeeded {
		if !f.Held(resp.Responses[0].GetResponseRange().Kvs) {
			return 0, fmt.Errorf("update job %s: %w", job.ID, tandem.ErrFenced)
		}
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].ModRevision != rev {
			cur := resp.Header.Revision
			if len(kvs) > 0 {
				cur = kvs[0].ModRevision
			}
			return 0, fmt.Errorf("update job %s: %w", job.ID, &ConflictError{Key: key, Rev: cur})
		}
		cur := resp.Header.Revision
		if kvs := resp.Responses[2].GetResponseRange().Kvs; len(kvs) > 0 {
			cur = kvs[0].ModRevision
		}
		return 0, fmt.Errorf("place job %s: %w", job.ID, &PlacementConflictError{Agent: place.Agent, Rev: cur})
	}
	return resp.Header.Revision, s.WaitRev(ctx, resp.Header.Revision)
}

// ErrConflict means a conditional update found the record changed.
var ErrConflict = errors.New("store: the record changed since it was read")

// ConflictError is an ErrConflict that says which revision the record is at
// now: a view that reaches Rev has the record as it is.
type ConflictError struct {
	Key string
	Rev int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%v: %s is at revision %d", ErrConflict, e.Key, e.Rev)
}

// Is makes errors.Is(err, ErrConflict) hold.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// ErrPlacementConflict means another owner placed work on the agent since
// the caller looked at its load.
var ErrPlacementConflict = errors.New("store: the agent's placements changed since its load was read")

// PlacementConflictError is an ErrPlacementConflict that says which
// revision the agent's placement record is at now: a view that reaches Rev
// has every placement on the agent.
type PlacementConflictError struct {
	Agent string
	Rev   int64
}

func (e *PlacementConflictError) Error() string {
	return fmt.Sprintf("%v: agent %s's placement record is at revision %d", ErrPlacementConflict, e.Agent, e.Rev)
}

// Is makes errors.Is(err, ErrPlacementConflict) hold.
func (e *PlacementConflictError) Is(target error) bool { return target == ErrPlacementConflict }

// AgentLoad returns, from one consistent state of the view, the jobs with a
// live attempt on agent (as LiveJobs) and the mod revision of its placement
// record: the base of a Placement.
func (s *Store) AgentLoad(agent string) ([]LiveJob, int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.liveJobsLocked(agent), s.placed[agent]
}

// AgentLoads is AgentLoad for every agent of ids, from one consistent state
// of the view and under one lock: a scheduler pass reads a whole fleet's.
// fn gets each agent in turn, with the same figures AgentLoad gives, and
// must not call the Store.
func (s *Store) AgentLoads(ids iter.Seq[string], fn func(agent string, live []LiveJob, placedRev int64)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for id := range ids {
		fn(id, s.liveJobsLocked(id), s.placed[id])
	}
}

// PutAgent records an agent's registration, fenced by f.
func (s *Store) PutAgent(ctx context.Context, f election.Fence, info tandem.AgentInfo) error {
	val, _ := json.Marshal(info)
	resp, err := s.cli.Txn(ctx).If(f.IsOwner()).
		Then(clientv3.OpPut(s.keys.Agent(info.ID), string(val))).Commit()
	if err != nil {
		return fmt.Errorf("register agent %s: %w", info.ID, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("register agent %s: %w", info.ID, tandem.ErrFenced)
	}
	return s.WaitRev(ctx, resp.Header.Revision)
}

// ErrShardsMismatch means the cluster was created with another number of
// shards than the caller asked for.
var ErrShardsMismatch = errors.New("store: the cluster has another number of shards")

// EnsureConfig returns the cluster's number of shards, writing shards as the
// cluster's setting if none is stored yet (the first server of a cluster
// decides; shards 0 means "whatever the cluster has, or 1 for a new
// cluster"). A stored setting that differs from a non-zero shards is an
// ErrShardsMismatch naming both: the number of shards is fixed once.
func (s *Store) EnsureConfig(ctx context.Context, shards int) (int, error) {
	want := max(shards, 1)
	val, _ := json.Marshal(Config{Shards: want})
	key := s.keys.Config()
	var resp *clientv3.TxnResponse
	var err error
	for {
		// The transaction can be repeated: it creates the key only if absent.
		resp, err = s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(val))).Else(clientv3.OpGet(key)).Commit()
		if err == nil || ctx.Err() != nil || !Retryable(err) {
			break
		}
		// A busy or electing etcd (request timed out, no leader): a server
		// starting under load waits it out rather than exiting.
		s.log.Warn("reading the cluster's settings failed; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err != nil {
		return 0, fmt.Errorf("read the cluster's settings: %w", err)
	}
	if resp.Succeeded {
		return want, s.WaitRev(ctx, resp.Header.Revision)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	var c Config
	if len(kvs) == 0 || json.Unmarshal(kvs[0].Value, &c) != nil || c.Shards < 1 {
		return 0, fmt.Errorf("the cluster's settings at %s are unreadable: %q", key, kvs)
	}
	if shards != 0 && c.Shards != shards {
		return c.Shards, fmt.Errorf("%w: it was created with %d shards and the number is fixed for its life; start with --shards %d (or leave --shards out)",
			ErrShardsMismatch, c.Shards, c.Shards)
	}
	return c.Shards, nil
}

// Retryable reports whether an etcd request's error may go away by itself:
// a timeout, a missing or changing leader, an unreachable member. A refusal
// (permission denied, authentication failed, a bad request) does not.
func Retryable(err error) bool {
	for _, e := range []error{rpctypes.ErrPermissionDenied, rpctypes.ErrAuthFailed, rpctypes.ErrInvalidAuthToken,
		rpctypes.ErrUserEmpty, rpctypes.ErrAuthNotEnabled, rpctypes.ErrGRPCPermissionDenied} {
		if errors.Is(err, e) {
			return false
		}
	}
	return !errors.Is(err, context.Canceled)
}

// JobCounts returns how many jobs are in each state.
func (s *Store) JobCounts() map[tandem.JobState]int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[tandem.JobState]int, len(s.byState))
	for k, v := range s.byState {
		out[k] = v
	}
	return out
}

// NumPending returns how many pending jobs the view holds.
func (s *Store) NumPending() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.pending)
}

// NumJobs returns how many jobs the view holds.
func (s *Store) NumJobs() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.jobs)
}

// LastJobID returns the greatest job ID in the view, or "".
func (s *Store) LastJobID() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.order) == 0 {
		return ""
	}
	return s.order[len(s.order)-1]
}

// idemRecord is the value of an idempotency key.
type idemRecord struct {
	JobID    string `json:"job_id"`
	SpecHash string `json:"spec_hash"`
}

// IdemKey returns the etcd key for a client's idempotency key. The client's
// key is hashed, so any bytes are allowed and the etcd key stays short.
func (s *Store) IdemKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return s.keys.Idem(hex.EncodeToString(sum[:]))
}

// CreateJob is in batch.go: creations are committed in groups.

// ErrIDTaken means a job with the new job's ID exists already.
var ErrIDTaken = errors.New("store: the job ID is already taken")

// SetIdempotencyTTL sets how long idempotency keys live at least (I3's
// window), from MinIdempotencyTTL to MaxIdempotencyTTL. Call it before
// Start.
func (s *Store) SetIdempotencyTTL(d time.Duration) error {
	if d < MinIdempotencyTTL || d > MaxIdempotencyTTL {
		return fmt.Errorf("idempotency TTL %s: must be from %s to %s", d, MinIdempotencyTTL, MaxIdempotencyTTL)
	}
	s.idemMu.Lock()
	defer s.idemMu.Unlock()
	s.idemTTL = d
	return nil
}

// idemSpan is how long one idempotency lease takes new keys: a quarter of
// the TTL, at most an hour, so a key lives the TTL and at most a quarter
// longer.
func (s *Store) idemSpan() time.Duration { return min(s.idemTTL/4, time.Hour) }

// idemGrantTTL is the TTL of an idempotency lease, in etcd's seconds.
func (s *Store) idemGrantTTL() int64 { return leaseSeconds(s.idemTTL + s.idemSpan()) }

// leaseSeconds is d in etcd's whole seconds, rounded up, so a key on the
// lease lives at least d.
func leaseSeconds(d time.Duration) int64 { return int64(math.Ceil(d.Seconds())) }

// idempotencyLease returns a lease for new idempotency keys. Keys written in
// the same span (idemSpan) share one lease, granted for the TTL plus the
// span, so each key lives at least the TTL and one lease grant serves a span.
// The next lease is granted ahead, in the background, once half of the
// current one's keys are given, so a submission seldom waits for a grant.
func (s *Store) idempotencyLease(ctx context.Context) (clientv3.LeaseID, error) {
	s.idemMu.Lock()
	defer s.idemMu.Unlock()
	now := time.Now()
	if s.idemLease == 0 || !now.Before(s.idemLeaseUntil) || s.idemLeaseKeys >= idemLeaseMaxKeys {
		if s.idemNext != 0 && now.Before(s.idemNextAt.Add(s.idemSpan())) {
			// The span counts from the grant: a key attached within it
			// still lives the TTL.
			s.idemLease, s.idemLeaseUntil, s.idemLeaseKeys = s.idemNext, s.idemNextAt.Add(s.idemSpan()), 0
		} else {
			resp, err := s.cli.Grant(ctx, s.idemGrantTTL())
			if err != nil {
				return 0, fmt.Errorf("grant idempotency lease: %w", err)
			}
			s.idemLease, s.idemLeaseUntil, s.idemLeaseKeys = resp.ID, now.Add(s.idemSpan()), 0
		}
		s.idemNext = 0
	}
	s.idemLeaseKeys++
	if s.idemLeaseKeys >= idemLeaseMaxKeys/2 && s.idemNext == 0 && !s.idemGranting {
		if s.batch.track() { // Close waits for it
			s.idemGranting = true
			go s.grantAhead()
		}
	}
	return s.idemLease, nil
}

// grantAhead grants the next idempotency lease; it ends within
// batchTimeout. A failed grant is left for the submission that needs the
// lease to retry.
func (s *Store) grantAhead() {
	defer s.batch.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	at := time.Now()
	s.idemMu.Lock()
	ttl := s.idemGrantTTL()
	s.idemMu.Unlock()
	resp, err := s.cli.Grant(ctx, ttl)
	s.idemMu.Lock()
	defer s.idemMu.Unlock()
	s.idemGranting = false
	if err != nil {
		s.log.Debug("granting the next idempotency lease ahead failed", "err", err)
		return
	}
	s.idemNext, s.idemNextAt = resp.ID, at
}

// idemLeaseMaxKeys bounds the idempotency keys one lease carries. With etcd
// authentication on, etcd checks the writer's permission on every key
// already attached to a lease each time it attaches another, in its single
// apply loop: an hour's keys on one lease made each secured submission
// slower than the last (docs/BENCHMARKS.md, "Cost of security"). A new
// lease every idemLeaseMaxKeys keys keeps that check short, for one more
// lease grant per that many submissions.
const idemLeaseMaxKeys = 128

// AppendEvent records a failover event, fenced by f, the term it explains.
func (s *Store) AppendEvent(ctx context.Context, f election.Fence, ev tandem.FailoverEvent) error {
	val, _ := json.Marshal(ev)
	resp, err := s.cli.Txn(ctx).If(f.IsOwner()).
		Then(clientv3.OpPut(s.keys.Event(ev.Shard, ev.Epoch), string(val))).Commit()
	if err != nil {
		return fmt.Errorf("record failover event: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("record failover event of shard %d at epoch %d: %w", ev.Shard, ev.Epoch, tandem.ErrFenced)
	}
	return nil
}

// ErrDuplicateServer means another live process is registered with the same server ID.
var ErrDuplicateServer = errors.New("store: server ID already registered by another live process")

// Register adds or updates this server's membership record, bound to lease,
// and returns once the view shows it. It never overwrites a record bound to
// another lease: that is another live process with the same ID, reported as
// ErrDuplicateServer with its record.
func (s *Store) Register(ctx context.Context, lease clientv3.LeaseID, info tandem.ServerInfo) error {
	key := s.keys.Server(info.ID)
	info.Lease = int64(lease)
	val, _ := json.Marshal(info)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease))).
		Else(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(key, string(val), clientv3.WithLease(lease))},
			[]clientv3.Op{clientv3.OpGet(key)},
		)).Commit()
	if err != nil {
		return fmt.Errorf("register server %s: %w", info.ID, err)
	}
	if resp.Succeeded {
		return s.WaitRev(ctx, resp.Header.Revision)
	}
	inner := resp.Responses[0].GetResponseTxn()
	if inner.Succeeded {
		return s.WaitRev(ctx, resp.Header.Revision)
	}
	var other tandem.ServerInfo
	if kvs := inner.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		_ = json.Unmarshal(kvs[0].Value, &other)
	}
	return fmt.Errorf("%w: %s at %s (pid %d)", ErrDuplicateServer, info.ID, other.URL, other.PID)
}

// RegisterUnless rewrites this server's membership record, bound to lease,
// only if the records of the servers in others are still as the view has
// them (and this one is still bound to lease). A decision that counts on
// the others, such as "another server can take my shards", is so made once:
// two servers deciding at once about each other cannot both pass, since
// each one's write changes the record the other compares. ErrConflict means
// a record changed: look again.
func (s *Store) RegisterUnless(ctx context.Context, lease clientv3.LeaseID, info tandem.ServerInfo, others []string) error {
	key := s.keys.Server(info.ID)
	info.Lease = int64(lease)
	val, _ := json.Marshal(info)
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", lease)}
	s.mu.RLock()
	for _, id := range others {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.keys.Server(id)), "=", s.serverRev[id]))
	}
	s.mu.RUnlock()
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease))).Commit()
	if err != nil {
		return fmt.Errorf("register server %s: %w", info.ID, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("register server %s: %w", info.ID, ErrConflict)
	}
	return s.WaitRev(ctx, resp.Header.Revision)
}

// Deregister removes this server's record if it is still bound to lease.
func (s *Store) Deregister(ctx context.Context, lease clientv3.LeaseID, id string) error {
	key := s.keys.Server(id)
	_, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpDelete(key)).Commit()
	return err
}
