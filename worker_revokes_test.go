package stem

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stem-go/stem/stemdriver"
	"github.com/stem-go/stem/stemmem"
	"github.com/stem-go/stem/stemtype"
)

// countingRevokes is a real revoke store whose calls are counted and whose
// ListChanges cursors are recorded.
type countingRevokes struct {
	stemdriver.RevokeStore
	mu      sync.Mutex
	lists   int
	cursors []string
}

func (c *countingRevokes) List(ctx context.Context, ns string) ([]stemtype.RevokeRecord, error) {
	c.mu.Lock()
	c.lists++
	c.mu.Unlock()
	return c.RevokeStore.List(ctx, ns)
}

func (c *countingRevokes) ListChanges(ctx context.Context, ns, cursor string) ([]stemtype.RevokeRecord, string, error) {
	c.mu.Lock()
	c.cursors = append(c.cursors, cursor)
	c.mu.Unlock()
	return c.RevokeStore.(stemdriver.RevokeChangeLister).ListChanges(ctx, ns, cursor)
}

// listOnly hides a store's ListChanges.
type listOnly struct{ stemdriver.RevokeStore }

func newSyncWorker(t *testing.T, store stemdriver.RevokeStore) *Worker {
	t.Helper()
	hub := stemmem.New()
	w, err := NewWorker(WorkerConfig{
		Registry:  NewRegistry(),
		Broker:    hub.Broker(stemdriver.Options{Namespace: "ns"}),
		Revokes:   store,
		Namespace: "ns",
	})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func revokeOf(ns, id string, version int64) stemtype.RevokeRecord {
	return stemtype.RevokeRecord{Namespace: ns, TaskID: id, Version: version, IssuedAt: time.Now().UTC(), Reason: "test"}
}

// TestRevokeSyncReadsChangesOnly: with a store that lists changes, the
// first sync reads everything (cursor ""), each later one passes the cursor
// the previous returned, never reads the whole set again, and still brings
// every record upserted since (as a revoke whose control message the
// worker missed).
func TestRevokeSyncReadsChangesOnly(t *testing.T) {
	ctx := t.Context()
	store := &countingRevokes{RevokeStore: stemmem.New().Revokes()}
	if _, err := store.Upsert(ctx, revokeOf("ns", "a", 1), revokeOf("other", "x", 1)); err != nil {
		t.Fatal(err)
	}
	w := newSyncWorker(t, store)
	if err := w.syncRevokeSet(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.revokes.Lookup("a", time.Now()); !ok {
		t.Fatal("the first sync did not load task a")
	}
	if _, err := store.Upsert(ctx, revokeOf("ns", "b", 1)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := w.syncRevokeSet(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := w.revokes.Lookup("b", time.Now()); !ok {
		t.Error("a re-sync did not bring task b, upserted after the first sync")
	}
	if _, ok := w.revokes.Lookup("x", time.Now()); ok {
		t.Error("another namespace's revoke was loaded")
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.lists != 0 {
		t.Errorf("List called %d times, want none: the store lists changes", store.lists)
	}
	if len(store.cursors) != 3 || store.cursors[0] != "" || store.cursors[1] == "" || store.cursors[2] == "" || store.cursors[1] == store.cursors[2] {
		t.Errorf("ListChanges cursors = %q, want \"\" and then the cursor of each previous call", store.cursors)
	}
}

// TestRevokeSyncListsStoresWithoutChanges: a store without ListChanges is
// read whole on every sync.
func TestRevokeSyncListsStoresWithoutChanges(t *testing.T) {
	ctx := t.Context()
	counted := &countingRevokes{RevokeStore: stemmem.New().Revokes()}
	w := newSyncWorker(t, listOnly{counted})
	for range 2 {
		if err := w.syncRevokeSet(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := counted.Upsert(ctx, revokeOf("ns", "a", 1)); err != nil {
		t.Fatal(err)
	}
	if err := w.syncRevokeSet(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.revokes.Lookup("a", time.Now()); !ok {
		t.Error("the re-sync did not bring task a")
	}
	if counted.lists != 3 || len(counted.cursors) != 0 {
		t.Errorf("List called %d times and ListChanges %d, want 3 and 0", counted.lists, len(counted.cursors))
	}
}
