package revokecache

import (
	"fmt"
	"slices"
	"testing"
)

func TestNewestReturnsHighestVersionsFirst(t *testing.T) {
	c := New()
	for i := range 50 {
		// Versions 1..25, each shared by two tasks, applied in scrambled order.
		v := int64((i*7)%50/2 + 1)
		c.Apply(t0, rec(fmt.Sprintf("t%02d", (i*7)%50), v))
	}
	if got := c.Newest(0); len(got) != 50 {
		t.Fatalf("Newest(0) returned %d records, want all 50", len(got))
	}
	all := c.Newest(0)
	for i := 1; i < len(all); i++ {
		a, b := all[i-1], all[i]
		if a.Version < b.Version || (a.Version == b.Version && a.TaskID > b.TaskID) {
			t.Fatalf("Newest(0) out of order at %d: %s/%d before %s/%d", i, a.TaskID, a.Version, b.TaskID, b.Version)
		}
	}
	top := c.Newest(3)
	if !slices.Equal(ids(top), ids(all[:3])) {
		t.Fatalf("Newest(3) = %v, want %v", ids(top), ids(all[:3]))
	}
	if top[0].Version != 25 || top[0].Reason != "reason 25" || !top[0].IssuedAt.Equal(t0.Add(123456789)) {
		t.Fatalf("Newest(3)[0] = %+v, want the whole record of version 25", top[0])
	}
	if got := c.Newest(1000); len(got) != 50 {
		t.Fatalf("Newest(1000) returned %d records, want 50", len(got))
	}
	if got := New().Newest(5); len(got) != 0 {
		t.Fatalf("Newest of an empty cache = %v", got)
	}
}
