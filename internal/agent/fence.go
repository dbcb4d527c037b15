package agent

import (
	"log/slog"
	"maps"
	"slices"
	"strconv"

	"github.com/tandemhq/tandem"
)

// outcome is what applying an answer did.
type outcome struct {
	acted   bool // something in the answer was news: an ack, a launch, a kill
	refused int  // items refused, vouched for by a deposed owner of their shard
}

// refusal counts the items of one shard that one answer had refused.
type refusal struct {
	epoch               int64 // the highest epoch among them
	assigns, kills, ack int
}

// apply acts on an answer from server (a base URL, for logs), item by item
// (I1: fencing at the resource, per shard):
//
//  1. Every epoch the answer vouches for (its Terms, and each item's shard
//     and epoch) that is higher than the highest seen for its shard is
//     recorded, durably, before anything in the answer is acted on, so that a
//     restarted agent still refuses the deposed owners. If it cannot be
//     recorded, apply does nothing and returns a *stateError.
//  2. Each item whose epoch is lower than the highest seen for its own shard
//     is refused: not launched, not killed, not forgotten. Items of other
//     shards are not affected. One warning per answer sums the refusals up.
//  3. Acknowledged reports are forgotten, assignments launched (I4: at most
//     once, through the ledger), kill orders carried out.
//
// It is safe for concurrent use; answers are applied one at a time.
func (a *Agent) apply(resp *tandem.SyncResponse, server string) (outcome, error) {
	// Holding launchMu throughout keeps an answer of a newer owner from
	// slipping in between this answer's epoch checks and its launches, and
	// makes the ledger check and the launch one step (I4).
	a.launchMu.Lock()
	defer a.launchMu.Unlock()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return outcome{}, nil
	}
	// a.epochs is replaced, never changed in place, and only under
	// launchMu: seen stays the current map without mu.
	seen := a.epochs
	a.mu.Unlock()

	log := a.log.With(logServerURL, server, logServerID, resp.ServerID)
	if raised := raiseEpochs(seen, resp); raised != nil {
		if err := a.st.writeEpochs(raised); err != nil {
			return outcome{}, &stateError{err}
		}
		a.mu.Lock()
		a.epochs = raised
		a.mu.Unlock()
		for _, shard := range slices.Sorted(maps.Keys(raised)) {
			if raised[shard] != seen[shard] {
				log.Info("new term seen", logShard, shard, logEpoch, raised[shard], "previous_epoch", seen[shard])
			}
		}
		seen = raised
	}

	var out outcome
	refused := map[int]*refusal{}
	stale := func(shard int, epoch int64) *refusal {
		if epoch >= seen[shard] {
			return nil
		}
		out.refused++
		r := refused[shard]
		if r == nil {
			r = &refusal{}
			refused[shard] = r
		}
		r.epoch = max(r.epoch, epoch)
		return r
	}

	a.mu.Lock()
	for _, ack := range resp.Ack {
		if r := stale(ack.Shard, ack.Epoch); r != nil {
			r.ack++ // a deposed owner's view may not hold the report at all
			continue
		}
		if _, ok := a.done[ack.AttemptID]; !ok {
			continue
		}
		if err := a.st.removeReport(ack.AttemptID); err != nil {
			log.Warn("cannot remove an acknowledged report; it will be sent again after a restart", logAttempt, ack.AttemptID, "err", err)
		}
		delete(a.done, ack.AttemptID)
		a.acked[ack.AttemptID] = true
		out.acted = true
	}
	a.mu.Unlock()

	// Assignments before kill orders: an attempt assigned and killed in one
	// answer starts, is killed, and is reported killed, rather than being
	// skipped and assigned again forever.
	for _, as := range resp.Assign {
		if r := stale(as.Shard, as.Epoch); r != nil {
			r.assigns++
			continue
		}
		if a.assign(as) {
			out.acted = true
		}
	}
	for _, k := range resp.Kill {
		if r := stale(k.Shard, k.Epoch); r != nil {
			r.kills++
			continue
		}
		if a.killOrder(k) {
			out.acted = true
		}
	}

	if len(refused) > 0 {
		groups := make([]any, 0, len(refused))
		for _, shard := range slices.Sorted(maps.Keys(refused)) {
			r := refused[shard]
			groups = append(groups, slog.Group(strconv.Itoa(shard), logEpoch, r.epoch, "highest_epoch", seen[shard],
				"assignments", r.assigns, "kills", r.kills, "acks", r.ack))
		}
		log.Warn("refused items of deposed shard owners", slog.Group("refused", groups...))
	}
	return out, nil
}

// raiseEpochs returns seen with every epoch resp vouches for that is higher
// than seen's for its shard, or nil if there is none. seen is not changed.
func raiseEpochs(seen map[int]int64, resp *tandem.SyncResponse) map[int]int64 {
	var raised map[int]int64
	vouch := func(shard int, epoch int64) {
		cur := seen[shard] // none seen counts as 0: epochs are positive
		if raised != nil {
			cur = raised[shard]
		}
		if epoch <= cur {
			return
		}
		if raised == nil {
			raised = maps.Clone(seen)
			if raised == nil {
				raised = map[int]int64{}
			}
		}
		raised[shard] = epoch
	}
	for _, t := range resp.Terms {
		vouch(t.Shard, t.Epoch)
	}
	for _, as := range resp.Assign {
		vouch(as.Shard, as.Epoch)
	}
	for _, k := range resp.Kill {
		vouch(k.Shard, k.Epoch)
	}
	for _, ack := range resp.Ack {
		vouch(ack.Shard, ack.Epoch)
	}
	return raised
}
