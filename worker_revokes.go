package stem

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemtype"
)

// syncRevokeSet brings the cached revoke set up to date with the store.
// With a store that lists changes (stemdriver.RevokeChangeLister) it reads
// only the records upserted since its previous call, the first call reading
// them all, so that a periodic re-sync with nothing changed costs almost
// nothing however many revokes the store holds; the cache applies records
// monotonically, so applying the changes leaves it as a full read would.
// Other stores are read whole (List). With prune it also deletes
// expired records from the store. It is called by Run before the worker
// starts, then only from the re-sync loop, never concurrently.
func (w *Worker) syncRevokeSet(ctx context.Context, prune bool) error {
	now := time.Now()
	if prune {
		// Pruning is housekeeping: a store this worker cannot write (a
		// read-only revoke file) must not keep it from reading revokes.
		// A store that refused once (a user that may not write it) is
		// likely to refuse at every sync: warn once, then at debug level.
		if n, err := w.cfg.Revokes.Prune(ctx, w.cfg.Namespace, now); err != nil {
			level := slog.LevelWarn
			if w.pruneRefused {
				level = slog.LevelDebug
			}
			w.pruneRefused = true
			w.log.Log(ctx, level, "prune expired revokes", "err", err)
		} else {
			w.pruneRefused = false
			if n > 0 {
				w.log.Info("pruned expired revokes", "count", n)
			}
		}
	}
	var recs []stemtype.RevokeRecord
	next := ""
	var err error
	if cl, ok := w.cfg.Revokes.(stemdriver.RevokeChangeLister); ok {
		recs, next, err = cl.ListChanges(ctx, w.cfg.Namespace, w.revokeCursor)
	} else {
		recs, err = w.cfg.Revokes.List(ctx, w.cfg.Namespace)
	}
	if err != nil {
		return fmt.Errorf("list revokes: %w", err)
	}
	ours := recs[:0]
	for _, r := range recs {
		if r.Namespace == w.cfg.Namespace {
			ours = append(ours, r)
		}
	}
	ours, _ = w.verifiedRecords(ours, "store")
	applied, _, _ := w.revokes.Load(now, ours...)
	if applied > 0 {
		w.log.Debug("revokes loaded from store", "applied", applied, "held", w.revokes.Len())
		if obs := w.cfg.Observer; obs != nil {
			obs.RevokesApplied(applied)
		}
	}
	w.revokeCursor = next
	w.revokes.Prune(now)
	w.enforceTerminates(now)
	w.wakeFetch()
	return nil
}

// resyncRevokeSet calls syncRevokeSet every RevokeSyncInterval until ctx
// ends, so that a worker that missed a control message still honours every
// revoke.
func (w *Worker) resyncRevokeSet(ctx context.Context) {
	every(ctx, w.cfg.RevokeSyncInterval, func() {
		if err := w.syncRevokeSet(ctx, true); err != nil && ctx.Err() == nil {
			w.log.Error("revoke re-sync failed; keeping the cached set", "err", err)
		}
	})
}
