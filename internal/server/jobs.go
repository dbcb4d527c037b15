package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tandemhq/tandem"
)

// MaxIdempotencyKeyLen bounds the Idempotency-Key header.
const MaxIdempotencyKeyLen = 255

// writeTimeout bounds one write to etcd on behalf of a request.
const writeTimeout = 5 * time.Second

// Submit accepts a job. Only the active accepts jobs (ErrNotActive
// otherwise). The job is committed to the etcd quorum, fenced by this
// server's epoch, before Submit returns (I1, I2). With an idempotency key, a
// retry of the same spec returns the first job and created == false (I3),
// across failovers, since the key lives in etcd with the job.
func (s *Server) Submit(ctx context.Context, spec tandem.JobSpec, idemKey string) (*tandem.Job, bool, error) {
	if len(idemKey) > MaxIdempotencyKeyLen {
		return nil, false, tandem.Errorf(tandem.EINVALID, "Idempotency-Key is %d bytes, more than %d", len(idemKey), MaxIdempotencyKeyLen)
	}
	if err := spec.Validate(); err != nil {
		return nil, false, err
	}
	spec = spec.WithDefaults()
	epoch, ok := s.ActiveEpoch()
	if !ok {
		return nil, false, tandem.ErrNotActive
	}
	now := time.Now().UTC()
	job := &tandem.Job{
		ID: s.ids.next(now), JobSpec: spec, State: tandem.JobPending,
		CreatedAt: now, UpdatedAt: now, Epoch: epoch, AcceptedBy: s.cfg.ID, IdempotencyKey: idemKey,
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	got, created, err := s.store.CreateJob(wctx, epoch, job, idemKey, spec.Hash())
	switch {
	case errors.Is(err, tandem.ErrFenced):
		s.fenced(epoch)
		s.metrics.submissions.WithLabelValues("fenced").Inc()
		return nil, false, err
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
		s.log.Debug("job accepted", "job", job.ID, "epoch", epoch)
	}
	return got, created, nil
}

// idGen makes job IDs that are unique and sort in creation order across
// failovers: 10 characters of milliseconds and 4 of sequence, in a
// lower-case Crockford base32 that sorts like the numbers it encodes. Only
// the active makes IDs, and a new active seeds its generator with the
// greatest ID in its (caught-up) view, so IDs never go backwards even if its
// clock is behind the previous active's.
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

func (g *idGen) next(now time.Time) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms := now.UnixMilli()
	if ms > g.lastMs {
		g.lastMs, g.seq = ms, 0
	} else if g.seq++; g.seq > idSeqMax {
		g.lastMs, g.seq = g.lastMs+1, 0
	}
	var b [idMsChars + idSeqChars]byte
	encode(b[:idMsChars], g.lastMs)
	encode(b[idMsChars:], g.seq)
	return string(b[:])
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
