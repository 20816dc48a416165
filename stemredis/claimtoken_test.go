package stemredis

import "testing"

// TestClaimTokensDeleteEachRecordOnce: the records of answered claims are
// handed to the next claim once; a claim that ran does not hand them on
// again (each claim would otherwise delete up to maxDoneClaims keys that
// are long gone).
func TestClaimTokensDeleteEachRecordOnce(t *testing.T) {
	var c claimTokens
	for i := range 10 {
		token, done := c.take("c1", "q")
		if len(done) > 1 {
			t.Fatalf("claim %d deletes %d records, want at most the previous claim's", i, len(done))
		}
		c.settle("c1", "q", token, done, true, true)
	}
	// A failed claim keeps its token and hands its deletions on.
	token, done := c.take("c1", "q")
	c.settle("c1", "q", token, done, false, false)
	again, done2 := c.take("c1", "q")
	if again != token {
		t.Errorf("the claim after a failure got token %q, want the failed claim's %q", again, token)
	}
	if len(done2) != len(done) {
		t.Errorf("the claim after a failure deletes %d records, want the failed claim's %d", len(done2), len(done))
	}
	// A claim that leased nothing leaves no record to delete.
	c.settle("c1", "q", again, done2, true, false)
	if _, d := c.take("c1", "q"); len(d) != 0 {
		t.Errorf("after a claim that leased nothing, %d records to delete, want 0", len(d))
	}
}
