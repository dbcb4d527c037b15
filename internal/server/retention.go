package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/archive"
	"github.com/tandemhq/tandem/internal/store"
)

// RetentionConfig bounds the history a cluster keeps (docs/RETENTION.md):
// which finished records the owners of their shards remove, how long their
// tombstones last, where removed records are archived, and how etcd's own
// history is compacted and its files defragmented.
type RetentionConfig struct {
	// Age: a finished job or workflow run is removed once it has been
	// finished this long (0 turns retention off)...
	Age time.Duration
	// Keep: ...and is not among the Keep most recently finished of its kind
	// in the cluster.
	Keep int
	// Interval is how often an owner looks for records to remove.
	Interval time.Duration
	// TombstoneTTL is how long a removed record's tombstone answers
	// "removed" (after which reading it answers "not found").
	TombstoneTTL time.Duration
	// ArchiveDir, if set, is where removed records are appended (gzip JSON
	// lines) and synced before they are deleted.
	ArchiveDir string
	// CompactInterval is how often the owner of shard 0 compacts etcd's
	// history, to the revision it saw one interval earlier (0: never).
	CompactInterval time.Duration
	// DefragInterval is how often the owner of shard 0 looks at every etcd
	// member's database and defragments, one member at a time, those with
	// at least DefragMinFree bytes and half their file free (0: never).
	DefragInterval time.Duration
	DefragMinFree  int64
	// IdempotencyTTL is how long an idempotency key is remembered at
	// least (I3's window: a retry with the key within it returns the first
	// job); 0 means store.IdempotencyTTL (24h). Keys are not removed with
	// their jobs, so a busy cluster that shortens retention should shorten
	// this too (docs/RETENTION.md).
	IdempotencyTTL time.Duration
}

// Retention defaults. A week of finished history answers "what happened to
// last weekend's runs" and, at a thousand jobs an hour of about 2 KiB
// each, costs about 350 MiB of etcd's 2 GiB quota; the count keeps the
// most recent 100000 whatever their age, for quiet clusters.
const (
	DefaultRetentionAge      = 7 * 24 * time.Hour
	DefaultRetentionKeep     = 100000
	DefaultRetentionInterval = time.Minute
	DefaultTombstoneTTL      = 7 * 24 * time.Hour
	DefaultCompactInterval   = 5 * time.Minute
	DefaultDefragInterval    = 24 * time.Hour
	DefaultDefragMinFree     = 64 << 20
)

// DefaultRetention returns tandem's default retention.
func DefaultRetention() RetentionConfig {
	return RetentionConfig{
		Age: DefaultRetentionAge, Keep: DefaultRetentionKeep, Interval: DefaultRetentionInterval,
		TombstoneTTL: DefaultTombstoneTTL, CompactInterval: DefaultCompactInterval,
		DefragInterval: DefaultDefragInterval, DefragMinFree: DefaultDefragMinFree,
	}
}

// maxTombstoneTTL bounds the tombstone TTL, far below etcd's longest lease
// (about 285 years; a tombstone lease is up to a day longer than the TTL).
const maxTombstoneTTL = 10 * 365 * 24 * time.Hour

// Validate reports the first problem with the retention settings.
func (c *RetentionConfig) Validate() error {
	switch {
	case c.Age < 0:
		return fmt.Errorf("retention age %s is negative: use 0 to keep every finished record", c.Age)
	case c.Keep < 0:
		return fmt.Errorf("retention keep %d is negative: use 0 to keep none beyond the age", c.Keep)
	case c.Age > 0 && c.Interval <= 0:
		return fmt.Errorf("retention interval %s must be positive when retention is on (age %s)", c.Interval, c.Age)
	case c.Age > 0 && c.TombstoneTTL < time.Second:
		return fmt.Errorf("tombstone TTL %s is too short: a removed record must read as removed for at least 1s (etcd leases count seconds)", c.TombstoneTTL)
	case c.TombstoneTTL > maxTombstoneTTL:
		return fmt.Errorf("tombstone TTL %s is too long (at most %s)", c.TombstoneTTL, maxTombstoneTTL)
	case c.ArchiveDir != "" && c.Age == 0:
		return errors.New("an archive directory is set but retention is off (age 0): nothing would be archived")
	case c.CompactInterval < 0:
		return fmt.Errorf("etcd compaction interval %s is negative: use 0 to leave compaction to etcd", c.CompactInterval)
	case c.CompactInterval > 0 && c.CompactInterval < time.Second:
		return fmt.Errorf("etcd compaction interval %s is too short (at least 1s): watchers must have time to catch up", c.CompactInterval)
	case c.DefragInterval < 0:
		return fmt.Errorf("etcd defragmentation interval %s is negative: use 0 to never defragment", c.DefragInterval)
	case c.DefragMinFree < 0:
		return fmt.Errorf("defragmentation threshold %d bytes is negative", c.DefragMinFree)
	case c.IdempotencyTTL != 0 && (c.IdempotencyTTL < store.MinIdempotencyTTL || c.IdempotencyTTL > store.MaxIdempotencyTTL):
		return fmt.Errorf("idempotency TTL %s must be from %s (longer than any client's retries) to %s", c.IdempotencyTTL, store.MinIdempotencyTTL, store.MaxIdempotencyTTL)
	}
	return nil
}

// retention is the state of the retention and etcd-maintenance work.
type retention struct {
	removed     *prometheus.CounterVec
	skipped     prometheus.Counter
	compactions prometheus.Counter
	defrags     prometheus.Counter

	mu        sync.Mutex // the tombstone lease, shared by the passes
	lease     clientv3.LeaseID
	leaseTill time.Time
}

// removePerPass bounds the records one pass selects (and copies for the
// archive); a pass that selects that many is followed by another at once.
const removePerPass = 8192

// removeTimeout bounds one pass's removals in one shard.
const removeTimeout = time.Minute

// initRetention registers the retention work with the core and its metrics
// with the registry.
func (s *Server) initRetention() {
	r := &s.retention
	r.removed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tandem_retention_removed_total", Help: "Finished records this server removed by retention, by kind (jobs, workflows).",
	}, []string{"kind"})
	r.skipped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tandem_retention_skipped_total", Help: "Records retention left because they changed between reading and removing them.",
	})
	r.compactions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tandem_etcd_compactions_total", Help: "Compactions of etcd's history this server made.",
	})
	r.defrags = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tandem_etcd_defrags_total", Help: "Defragmentations of etcd members this server made.",
	})
	s.metrics.reg.MustRegister(r.removed, r.skipped, r.compactions, r.defrags, etcdDBCollector{s})
	s.core.WhileOwning("retention", s.runRetention)
	s.core.WhileOwning("etcd-maintenance", s.maintainEtcd)
}

// runRetention removes the finished records of the shards this server owns
// (WhileOwning work), every Interval.
func (s *Server) runRetention(ctx context.Context) {
	rc := s.cfg.Retention
	if rc.Age <= 0 {
		return
	}
	var arch *archive.Writer
	if rc.ArchiveDir != "" {
		var err error
		if arch, err = archive.Open(rc.ArchiveDir, s.cfg.ID); err != nil {
			s.log.Error("retention is off: its archive cannot be opened", "dir", rc.ArchiveDir, "err", err)
			return
		}
		defer arch.Close()
	}
	timer := time.NewTimer(rc.Interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		full := s.retentionPass(ctx, arch)
		if full {
			timer.Reset(0) // a backlog: go on at once
		} else {
			timer.Reset(rc.Interval)
		}
	}
}

// RetentionPass removes, now, what retention removes from the shards this
// server owns, and reports whether it stopped at its limit (more remains).
// The retention loop calls it every interval; tests call it to run a pass
// at a chosen time.
func (s *Server) RetentionPass(ctx context.Context) bool { return s.retentionPass(ctx, nil) }

func (s *Server) retentionPass(ctx context.Context, arch *archive.Writer) bool {
	rc := s.cfg.Retention
	now := s.localNow()
	held := s.core.Held()
	terms := make(map[int]bool, len(held))
	for _, t := range held {
		terms[t.Shard] = true
	}
	xs := s.store.Expired(now, store.Retention{Age: rc.Age, Keep: rc.Keep}, func(k int) bool { return terms[k] }, removePerPass)
	if len(xs) == 0 {
		return false
	}
	byShard := make(map[int][]store.Expired)
	for _, x := range xs {
		byShard[x.Shard] = append(byShard[x.Shard], x)
	}
	var before func([]store.Expired) error
	if arch != nil {
		before = func(batch []store.Expired) error { return arch.Append(archiveLines(batch, now)) }
	}
	for _, t := range held {
		batch := byShard[t.Shard]
		if len(batch) == 0 || t.Ended() != nil || ctx.Err() != nil {
			continue
		}
		lease, err := s.tombstoneLease(ctx, now)
		if err != nil {
			s.log.Warn("retention: no lease for tombstones; trying again next pass", "err", err)
			return false
		}
		rctx, cancel := context.WithTimeout(t.Context(), removeTimeout)
		res, err := s.store.Remove(rctx, t.Fence, batch, now, lease, before)
		cancel()
		for _, x := range res.Removed {
			s.retention.removed.WithLabelValues(x.Kind).Inc()
			if len(x.Steps) > 0 {
				s.retention.removed.WithLabelValues(store.KindJob).Add(float64(len(x.Steps)))
			}
		}
		s.retention.skipped.Add(float64(res.Skipped))
		if len(res.Removed) > 0 {
			s.log.Info("retention removed finished records", "shard", t.Shard, "epoch", t.Epoch(),
				"records", len(res.Removed), "skipped", res.Skipped, "archived", arch != nil)
		}
		switch {
		case errors.Is(err, tandem.ErrFenced):
			s.log.Warn("retention fenced: this server no longer owns the shard", "shard", t.Shard, "epoch", t.Epoch())
			s.fenced(t)
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			s.dropTombstoneLease(lease)
			s.log.Warn("retention: the tombstone lease expired; a new one is granted next pass", "shard", t.Shard)
			return false
		case err != nil && t.Ended() == nil && ctx.Err() == nil:
			s.log.Warn("retention: removing finished records failed; trying again next pass", "shard", t.Shard, "epoch", t.Epoch(), "err", err)
			return false
		}
	}
	return len(xs) == removePerPass
}

// archiveLines makes the archive lines of a batch about to be removed.
func archiveLines(batch []store.Expired, now time.Time) []archive.Line {
	var out []archive.Line
	add := func(x *store.Expired) {
		var rec any = x.Job
		if x.Kind == store.KindWorkflow {
			rec = x.Workflow
		}
		raw, err := json.Marshal(rec)
		if err != nil {
			raw, _ = json.Marshal(map[string]string{"id": x.ID, "error": err.Error()})
		}
		out = append(out, archive.Line{Kind: x.Kind, ID: x.ID, RemovedAt: now.UTC(), Reason: store.ReasonRetention, Record: raw})
	}
	for i := range batch {
		add(&batch[i])
		for k := range batch[i].Steps {
			add(&batch[i].Steps[k])
		}
	}
	return out
}

// tombstoneLease returns the lease new tombstones are bound to. One lease
// serves the removals of a span, a quarter of the tombstone TTL (at most a
// day, at least a second), and lasts the TTL plus that span: every
// tombstone lives at least TombstoneTTL and at most a span longer, so
// tombstones are bounded by the TTL's worth of removals, not by the span,
// and cost one lease per span.
func (s *Server) tombstoneLease(ctx context.Context, now time.Time) (clientv3.LeaseID, error) {
	r := &s.retention
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease != 0 && now.Before(r.leaseTill) {
		return r.lease, nil
	}
	span := tombstoneSpan(s.cfg.Retention.TombstoneTTL)
	gctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	id, err := s.store.GrantTombstoneLease(gctx, s.cfg.Retention.TombstoneTTL+span)
	if err != nil {
		return 0, err
	}
	r.lease, r.leaseTill = id, now.Add(span)
	return id, nil
}

// tombstoneSpan is how long one tombstone lease takes new tombstones.
func tombstoneSpan(ttl time.Duration) time.Duration {
	return min(max(ttl/4, time.Second), 24*time.Hour)
}

func (s *Server) dropTombstoneLease(id clientv3.LeaseID) {
	r := &s.retention
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease == id {
		r.lease = 0
	}
}

// removedOr answers a read of record id of kind that the view lacks (err,
// an ENOTFOUND error): ERemoved if retention removed it and its tombstone
// is still there, err if etcd says there is none, EUNAVAILABLE if etcd
// cannot say. It reads etcd, but only for records the view does not hold.
func (s *Server) removedOr(kind, id string, err error) error {
	if tandem.ErrorCode(err) != tandem.ENOTFOUND {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), etcdStatusTimeout)
	defer cancel()
	r, rerr := s.store.Removed(ctx, kind, id)
	switch {
	case rerr != nil:
		// Not knowing is not "not found": a record removed by retention
		// would read as lost. The client tries another server.
		return tandem.Errorf(tandem.EUNAVAILABLE, "%s %s is not in server %s's view, and etcd could not be asked whether retention removed it: %v; retry, or ask another server", strings.TrimSuffix(kind, "s"), id, s.cfg.ID, rerr)
	case r == nil:
		return err
	}
	return store.RemovedError(r)
}

// ---- etcd maintenance: compaction and defragmentation ----

// maintainEtcd compacts etcd's history and defragments its members, while
// this server owns shard 0 (WhileOwning work; one server in the cluster
// does it). Neither is fenced: a deposed owner that compacts once more
// compacts to an old revision, which is harmless, and safety never depends
// on either (I5).
func (s *Server) maintainEtcd(ctx context.Context) {
	rc := s.cfg.Retention
	if rc.CompactInterval <= 0 && rc.DefragInterval <= 0 {
		return
	}
	var marks []revMark // revisions seen at each compaction tick, oldest first
	var compactC, defragC <-chan time.Time
	if rc.CompactInterval > 0 {
		tk := time.NewTicker(rc.CompactInterval)
		defer tk.Stop()
		compactC = tk.C
	}
	if rc.DefragInterval > 0 {
		tk := time.NewTicker(rc.DefragInterval)
		defer tk.Stop()
		defragC = tk.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-compactC:
			if s.core.Term(0) == nil {
				marks = nil // another server does it; start afresh if shard 0 comes back
				continue
			}
			marks = s.compact(ctx, marks, time.Now())
		case <-defragC:
			if s.core.Term(0) != nil {
				s.defragment(ctx)
			}
		}
	}
}

// revMark is the revision the view had reached at a time.
type revMark struct {
	at  time.Time
	rev int64
}

// compact notes the view's revision now and compacts etcd to the newest
// revision noted at least one interval ago: every watcher less than an
// interval behind still reads its history (one further behind reloads, as
// the view does on ErrCompacted).
func (s *Server) compact(ctx context.Context, marks []revMark, now time.Time) []revMark {
	marks = append(marks, revMark{at: now, rev: s.store.Rev()})
	horizon := now.Add(-s.cfg.Retention.CompactInterval)
	i := sort.Search(len(marks), func(k int) bool { return marks[k].at.After(horizon) })
	if i == 0 {
		return marks // nothing old enough yet
	}
	target := marks[i-1].rev
	marks = marks[i-1:]
	cctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	_, err := s.cfg.Etcd.Compact(cctx, target)
	switch {
	case err == nil:
		s.retention.compactions.Inc()
		s.log.Info("compacted etcd's history", "rev", target)
		marks = marks[1:]
	case errors.Is(err, rpctypes.ErrCompacted):
		// etcd (or its own auto-compaction) is already past it.
		marks = marks[1:]
	default:
		s.log.Warn("compacting etcd's history failed; trying again next interval", "rev", target, "err", err)
	}
	return marks
}

// defragmentTimeout bounds the defragmentation of one member: it rewrites
// the member's whole database file, blocking that member meanwhile.
const defragmentTimeout = 5 * time.Minute

// defragment defragments, one at a time and the raft leader last, every
// etcd member whose database has at least DefragMinFree bytes and half its
// file free. A member being defragmented answers nothing, so only one is
// ever blocked: the others keep the quorum.
func (s *Server) defragment(ctx context.Context) {
	ml, err := s.cfg.Etcd.MemberList(ctx)
	if err != nil {
		s.log.Warn("defragmentation: cannot list etcd members", "err", err)
		return
	}
	type cand struct {
		ep     string
		leader bool
		free   int64
	}
	var cands []cand
	for _, m := range ml.Members {
		if len(m.ClientURLs) == 0 {
			continue
		}
		ep := m.ClientURLs[0]
		// Longer than a scrape's budget: this runs rarely, and a busy
		// member is still worth looking at.
		sctx, cancel := context.WithTimeout(ctx, writeTimeout)
		st, err := s.cfg.Etcd.Status(sctx, ep)
		cancel()
		if err != nil {
			s.log.Warn("defragmentation: cannot read a member's status", "member", m.Name, "endpoint", ep, "err", err)
			continue
		}
		free := st.DbSize - st.DbSizeInUse
		if free >= s.cfg.Retention.DefragMinFree && free*2 >= st.DbSize && free > 0 {
			cands = append(cands, cand{ep: ep, leader: st.Leader == st.Header.MemberId, free: free})
		}
	}
	sort.SliceStable(cands, func(a, b int) bool { return !cands[a].leader && cands[b].leader })
	for _, c := range cands {
		if ctx.Err() != nil {
			return
		}
		dctx, cancel := context.WithTimeout(ctx, defragmentTimeout)
		start := time.Now()
		_, err := s.cfg.Etcd.Defragment(dctx, c.ep)
		cancel()
		if err != nil {
			s.log.Warn("defragmenting an etcd member failed", "endpoint", c.ep, "err", err)
			continue
		}
		s.retention.defrags.Inc()
		s.log.Info("defragmented an etcd member", "endpoint", c.ep, "freed_bytes", c.free, "took", time.Since(start).String())
	}
}

// etcdDBCollector reports the size of etcd's database against its quota,
// as the first of this server's etcd endpoints that answers tells them at
// each scrape.
type etcdDBCollector struct{ s *Server }

var (
	etcdDBSizeDesc  = prometheus.NewDesc("tandem_etcd_db_size_bytes", "Size of the etcd member's database file (what the quota counts).", nil, nil)
	etcdDBInUseDesc = prometheus.NewDesc("tandem_etcd_db_size_in_use_bytes", "Bytes of the etcd member's database in use (the rest is freed by a defragmentation).", nil, nil)
	etcdQuotaDesc   = prometheus.NewDesc("tandem_etcd_quota_bytes", "The etcd member's space quota: at it, etcd refuses every write until compacted and defragmented.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c etcdDBCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- etcdDBSizeDesc
	ch <- etcdDBInUseDesc
	ch <- etcdQuotaDesc
}

// Collect implements prometheus.Collector.
func (c etcdDBCollector) Collect(ch chan<- prometheus.Metric) {
	// One budget for the whole scrape: an unreachable etcd costs a scrape
	// a second, and the metrics are then absent rather than stale.
	ctx, cancel := context.WithTimeout(context.Background(), etcdStatusTimeout)
	defer cancel()
	for _, ep := range c.s.cfg.Etcd.Endpoints() {
		st, err := c.s.cfg.Etcd.Status(ctx, ep)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		ch <- prometheus.MustNewConstMetric(etcdDBSizeDesc, prometheus.GaugeValue, float64(st.DbSize))
		ch <- prometheus.MustNewConstMetric(etcdDBInUseDesc, prometheus.GaugeValue, float64(st.DbSizeInUse))
		if st.DbSizeQuota > 0 {
			ch <- prometheus.MustNewConstMetric(etcdQuotaDesc, prometheus.GaugeValue, float64(st.DbSizeQuota))
		}
		return
	}
}
