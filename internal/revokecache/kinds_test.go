package revokecache

import (
	"testing"
	"time"

	"github.com/stem-go/stem/stemtype"
)

func nameRec(name string, version int64) stemtype.RevokeRecord {
	r := rec(stemtype.NameRevokeKey(name), version)
	r.Kind, r.Name = stemtype.RevokeKindName, name
	return r
}

// A revoke by name and a revoke of a task whose id is that name are two
// records: neither hides, replaces or removes the other.
func TestNameRevokesApartFromIDs(t *testing.T) {
	c := New()
	now := t0
	c.Apply(now, rec("email.send", 5), nameRec("email.send", 3))
	if r, ok := c.Lookup("email.send", now); !ok || r.Version != 5 || r.Kind != "" {
		t.Fatalf("id lookup = %+v, %v; want the id record at version 5", r, ok)
	}
	if r, ok := c.LookupName("email.send", now); !ok || r.Version != 3 || r.Name != "email.send" {
		t.Fatalf("name lookup = %+v, %v; want the name record at version 3", r, ok)
	}
	if _, ok := c.LookupName("other", now); ok {
		t.Fatal("name lookup of an unrevoked name found a record")
	}
	if _, ok := c.Lookup(stemtype.NameRevokeKey("email.send"), now); ok {
		t.Fatal("the id set holds the name record's key")
	}
	if got := c.Len(); got != 2 {
		t.Fatalf("Len = %d, want 2", got)
	}
	if got := len(c.Snapshot()); got != 2 {
		t.Fatalf("Snapshot has %d records, want 2", got)
	}
	newest := c.Newest(0)
	if len(newest) != 2 || newest[0].Kind != stemtype.RevokeKindName {
		t.Fatalf("Newest(0) = %+v; want the name record first, then the id record", newest)
	}
	if got := c.Newest(1); len(got) != 1 || got[0].Kind != stemtype.RevokeKindName {
		t.Fatalf("Newest(1) = %+v; want the name record", got)
	}
}

// Name records follow the rules of id records: only a higher version
// replaces, a newer expired record removes, Prune deletes expired ones.
func TestNameRevokesMonotonicAndExpire(t *testing.T) {
	c := New()
	now := t0
	_, ignored, _ := c.Apply(now, nameRec("a", 10), nameRec("a", 9))
	if len(ignored) != 1 {
		t.Fatalf("an older name record was not ignored: %+v", ignored)
	}
	if r, _ := c.LookupName("a", now); r.Version != 10 {
		t.Fatalf("held version %d, want 10", r.Version)
	}
	gone := nameRec("a", 11)
	gone.ExpiresAt = now
	if _, _, expired := c.Apply(now, gone); len(expired) != 1 {
		t.Fatalf("an expired newer record was not reported expired: %+v", expired)
	}
	if _, ok := c.LookupName("a", now); ok {
		t.Fatal("a newer expired record left the name revoked")
	}
	soon := nameRec("b", 1)
	soon.ExpiresAt = now.Add(time.Minute)
	c.Load(now, soon)
	if _, ok := c.LookupName("b", now); !ok {
		t.Fatal("an unexpired name record was not held")
	}
	if _, ok := c.LookupName("b", now.Add(time.Minute)); ok {
		t.Fatal("an expired name record still applies")
	}
	if n := c.Prune(now.Add(time.Minute)); n != 1 || c.Len() != 0 {
		t.Fatalf("Prune removed %d, Len %d; want 1 and 0", n, c.Len())
	}
}

func pauseRec(queue string, version int64, resumed bool) stemtype.RevokeRecord {
	r := rec(stemtype.QueuePauseKey(queue), version)
	r.Kind, r.Queue, r.Resumed = stemtype.RevokeKindQueuePause, queue, resumed
	return r
}

// A queue is paused while its newest record is a pause; a newer resume
// lifts it, an older one does not, and neither touches other queues or
// revokes by id or name.
func TestQueuePause(t *testing.T) {
	c := New()
	now := t0
	c.Apply(now, pauseRec("mail", 10, false), pauseRec("bulk", 3, false), rec("mail", 1))
	if !c.QueuePaused("mail", now) || !c.QueuePaused("bulk", now) || c.QueuePaused("default", now) {
		t.Fatal("pauses not held as applied")
	}
	if got := c.PausedQueues(now); len(got) != 2 || got[0] != "bulk" || got[1] != "mail" {
		t.Fatalf("PausedQueues = %v, want [bulk mail]", got)
	}
	c.Apply(now, pauseRec("mail", 9, true))
	if !c.QueuePaused("mail", now) {
		t.Fatal("an older resume lifted the pause")
	}
	c.Apply(now, pauseRec("mail", 11, true))
	if c.QueuePaused("mail", now) || !c.QueuePaused("bulk", now) {
		t.Fatal("a newer resume did not lift the pause of mail alone")
	}
	if _, ok := c.Lookup("mail", now); !ok {
		t.Fatal("the revoke of task id mail was lost")
	}
	c.Apply(now, pauseRec("mail", 12, false))
	if !c.QueuePaused("mail", now) {
		t.Fatal("a pause after the resume did not hold")
	}
}
