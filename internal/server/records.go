package server

import (
	"context"
	"errors"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/ha"
	"github.com/tandemhq/tandem/internal/shard"
	"github.com/tandemhq/tandem/internal/store"
)

// createOwned creates a new record (a schedule, a workflow run) in one of
// the shards this server owns: it makes an ID of prefix that falls in one of
// them and calls create with that shard's term and the ID, which writes the
// record fenced by the term (I1). A fenced or taken ID is tried again, a few
// times; an error that is not a *tandem.Error (etcd did not answer in time:
// the record may or may not be committed) becomes EUNAVAILABLE, saying a
// retry with the same Idempotency-Key settles it. ErrNotActive if this
// server owns no shard.
func (s *Server) createOwned(ctx context.Context, noun, prefix string, create func(ctx context.Context, t *ha.Term, id string) error) error {
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	for try := 0; ; try++ {
		held := s.core.Held()
		if len(held) == 0 {
			return tandem.ErrNotActive
		}
		byShard := make(map[int]*ha.Term, len(held))
		for _, t := range held {
			byShard[t.Shard] = t
		}
		raw, ok := s.ids.next(time.Now().UTC(), func(id string) bool {
			return byShard[shard.Of(prefix+id, s.Shards())] != nil
		})
		if !ok {
			return tandem.Errorf(tandem.EUNAVAILABLE, "could not make a %s ID in the shards this server owns; retry", noun)
		}
		id := prefix + raw
		t := byShard[shard.Of(id, s.Shards())]
		err := create(wctx, t, id)
		switch {
		case errors.Is(err, tandem.ErrFenced):
			s.fenced(t)
			if try < 3 && s.core.Count() > 0 {
				continue
			}
			return err
		case errors.Is(err, store.ErrIDTaken) && try < 3:
			continue // the generator has moved on
		case err != nil:
			var te *tandem.Error
			if !errors.As(err, &te) {
				return tandem.Errorf(tandem.EUNAVAILABLE, "could not commit the %s to etcd (retry with the same Idempotency-Key): %v", noun, err)
			}
			return err
		}
		return nil
	}
}
