package server

import (
	"context"
	"time"

	"github.com/tandemhq/tandem"
)

// ApplyChanges applies fn to the records of ids as the reports of one
// agent sync are applied (mutateMany: in one transaction, or change by
// change when that one cannot commit) and returns each change's outcome.
func (s *Server) ApplyChanges(ctx context.Context, ids []string, fn func(j *tandem.Job, now time.Time) (bool, error)) []error {
	changes := make([]*change, len(ids))
	errs := make([]error, len(ids))
	var some []*change
	for i, id := range ids {
		t := s.termOf(id)
		if t == nil {
			errs[i] = errNotOwner
			continue
		}
		changes[i] = &change{t: t, id: id, fn: fn}
		some = append(some, changes[i])
	}
	s.mutateMany(ctx, some)
	for i, c := range changes {
		if c != nil {
			errs[i] = c.err
		}
	}
	return errs
}
