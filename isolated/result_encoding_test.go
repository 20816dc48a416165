package isolated_test

import (
	"testing"

	"github.com/stem-go/stem/isolated"
)

// An isolated task returning an empty json.RawMessage has no result, as an
// inline task's has (internal/jsonvalue); the child used to fail it as
// "not valid JSON".
func TestEmptyRawResultIsNoResult(t *testing.T) {
	t.Parallel()
	p := newPool(t, isolated.PoolConfig{Size: 1})
	noop, err := execute(t, p, "test.noop", "")
	if err != nil {
		t.Fatalf("test.noop: %v", err)
	}
	res, err := execute(t, p, "test.empty-raw", "")
	if err != nil || string(res) != string(noop) {
		t.Fatalf("test.empty-raw = %s, %v; want %s, nil as test.noop", res, err, noop)
	}
}
