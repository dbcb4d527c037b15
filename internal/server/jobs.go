package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/shard"
	"github.com/tandemhq/tandem/internal/store"
)

// MaxIdempotencyKeyLen bounds the Idempotency-Key header.
const MaxIdempotencyKeyLen = 255

// writeTimeout bounds one write to etcd on behalf of a request.
const writeTimeout = 5 * time.Second

// Submit accepts a job. Any server that owns a shard accepts jobs
// (ErrNotActive otherwise): it gives the job an ID in one of the shards it
// owns, so the job is created under that shard's fence and needs no other
// server. The job is committed to the etcd quorum before Submit returns (I1,
// I2); concurrent submissions share etcd transactions (the store's group
// commit), so a bad submission is refused here, before it can join one.
// With an idempotency key, a retry of the same spec returns the first job
// and created == false (I3), across servers and failovers, since the key
// lives in etcd with the job.
func (s *Server) Submit(ctx context.Context, spec tandem.JobSpec, idemKey string) (*tandem.Job, bool, error) {
	if len(idemKey) > MaxIdempotencyKeyLen {
		return nil, false, tandem.Errorf(tandem.EINVALID, "Idempotency-Key is %d bytes, more than %d", len(idemKey), MaxIdempotencyKeyLen)
	}
	if err := spec.Validate(); err != nil {
		return nil, false, err
	}
	spec = spec.WithDefaults()
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	for try := 0; ; try++ {
		terms := s.core.Held()
		if len(terms) == 0 {
			return nil, false, tandem.ErrNotActive
		}
		byShard := make(map[int]*ha.Term, len(terms))
		for _, t := range terms {
			byShard[t.Shard] = t
		}
		now := time.Now().UTC()
		id, ok := s.ids.next(now, func(id string) bool { return byShard[shard.Of(id, s.Shards())] != nil })
		if !ok {
			return nil, false, tandem.Errorf(tandem.EUNAVAILABLE, "could not make a job ID in the shards this server owns; retry")
		}
		t := byShard[shard.Of(id, s.Shards())]
		job := &tandem.Job{
			ID: id, Shard: t.Shard, JobSpec: spec, State: tandem.JobPending,
			CreatedAt: now, UpdatedAt: now, Epoch: t.Epoch(), AcceptedBy: s.cfg.ID, IdempotencyKey: idemKey,
			UpdatedEpoch: t.Epoch(), UpdatedBy: s.cfg.ID,
		}
		got, created, err := s.store.CreateJob(wctx, t.Fence, job, idemKey, spec.Hash())
		switch {
		case errors.Is(err, tandem.ErrFenced):
			s.fenced(t)
			if try < 3 && s.core.Count() > 0 {
				continue // another shard of this server's may take it
			}
			s.metrics.submissions.WithLabelValues("fenced").Inc()
			return nil, false, err
		case errors.Is(err, store.ErrIDTaken) && try < 3:
			// A job of an earlier owner of the shard has this ID (its clock
			// was ahead): the next ID is past it.
			s.ids.seed(s.store.LastJobID())
			continue
		case err != nil:
			s.metrics.submissions.WithLabelValues("error").Inc()
			var te *tandem.Error
			if !errors.As(err, &te) {
				// etcd did not answer in time: the job may or may not be committed.
				// The client retries with the same idempotency key, which settles it.
				return nil, false, tandem.Errorf(tandem.EUNAVAILABLE, "could not commit the job to etcd (retry with the same Idempotency-Key): %v", err)
			}
			return nil, false, err
		case !created:
			s.metrics.submissions.WithLabelValues("replayed").Inc()
		default:
			s.metrics.submissions.WithLabelValues("created").Inc()
			s.log.Debug("job accepted", "job", job.ID, "shard", t.Shard, "epoch", t.Epoch())
		}
		return got, created, nil
	}
}

// idGen makes job IDs that are unique and sort in creation order across
// failovers: 10 characters of milliseconds and 4 of sequence, in a
// lower-case Crockford base32 that sorts like the numbers it encodes. A
// server only makes IDs in shards it owns (next skips the others), so two
// servers never make the same ID: the same ID is the same shard, which has
// one owner. A new owner seeds its generator with the greatest ID in its
// (caught-up) view, so IDs never go backwards even if its clock is behind
// the previous owner's.
type idGen struct {
	mu     sync.Mutex
	lastMs int64
	seq    int64
}

const (
	idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	idMsChars  = 10
	idSeqChars = 4
	idSeqMax   = 1<<(5*idSeqChars) - 1
)

// maxIDTries bounds how many IDs next looks at for one accepted by the
// caller; with N shards and k owned, it looks at N/k on average.
const maxIDTries = 1 << 16

// next returns the next ID that accept takes, or false if none of the next
// maxIDTries is taken.
func (g *idGen) next(now time.Time, accept func(string) bool) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms := now.UnixMilli()
	for try := 0; try < maxIDTries; try++ {
		if ms > g.lastMs {
			g.lastMs, g.seq = ms, 0
		} else if g.seq++; g.seq > idSeqMax {
			g.lastMs, g.seq = g.lastMs+1, 0
		}
		var b [idMsChars + idSeqChars]byte
		encode(b[:idMsChars], g.lastMs)
		encode(b[idMsChars:], g.seq)
		if id := string(b[:]); accept(id) {
			return id, true
		}
	}
	return "", false
}

// seed makes every later ID greater than last, an ID from the view.
func (g *idGen) seed(last string) {
	if len(last) != idMsChars+idSeqChars {
		return
	}
	ms, ok1 := decode(last[:idMsChars])
	seq, ok2 := decode(last[idMsChars:])
	if !ok1 || !ok2 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if ms > g.lastMs || ms == g.lastMs && seq > g.seq {
		g.lastMs, g.seq = ms, seq
	}
}

func encode(dst []byte, v int64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = idAlphabet[v&31]
		v >>= 5
	}
}

func decode(s string) (int64, bool) {
	var v int64
	for i := 0; i < len(s); i++ {
		d := -1
		for k := 0; k < len(idAlphabet); k++ {
			if idAlphabet[k] == s[i] {
				d = k
				break
			}
		}
		if d < 0 {
			return 0, false
		}
		v = v<<5 | int64(d)
	}
	return v, true
}
