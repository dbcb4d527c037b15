package pki

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// WatchSIGHUP reloads every store each time the process receives SIGHUP,
// logging one line per store to the store's logger: the new certificate's
// identity and expiry on success, the error on failure (the store then
// keeps its current certificates). SIGHUP is caught from before
// WatchSIGHUP returns until ctx is cancelled or stop is called; stop
// returns once the watcher has ended.
func WatchSIGHUP(ctx context.Context, stores ...*Store) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				for _, s := range stores {
					s.reloadAndLog()
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// reloadAndLog is Reload with the log line WatchSIGHUP promises.
func (s *Store) reloadAndLog() {
	attrs := []any{"cert", s.certFile, "ca", s.caFile}
	if err := s.Reload(); err != nil {
		s.log.Error("TLS reload failed, keeping the current certificates", append(attrs, "err", err)...)
		return
	}
	if leaf := s.Leaf(); leaf != nil {
		attrs = append(attrs, "identity", s.Identity().String(), "not_after", leaf.NotAfter)
	}
	s.log.Info("TLS certificates reloaded", attrs...)
}
