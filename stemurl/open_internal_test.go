package stemurl

import (
	"errors"
	"strings"
	"testing"
)

// TestCloseReportsEveryError: Close closes every role even when some fail,
// in reverse order, and returns every error, each naming its role.
func TestCloseReportsEveryError(t *testing.T) {
	var order []Role
	closer := func(r Role, err error) roleCloser {
		return roleCloser{r, func() error { order = append(order, r); return err }}
	}
	e1, e2 := errors.New("first failed"), errors.New("second failed")
	o := &Opened{closers: []roleCloser{closer(RoleBroker, e1), closer(RoleResults, nil), closer(RoleControl, e2)}}
	err := o.Close()
	if !errors.Is(err, e1) || !errors.Is(err, e2) {
		t.Fatalf("Close = %v, want both errors", err)
	}
	if !strings.Contains(err.Error(), "close broker: first failed") || !strings.Contains(err.Error(), "close control transport: second failed") {
		t.Fatalf("Close = %q, want each error to name its role", err)
	}
	if want := []Role{RoleControl, RoleResults, RoleBroker}; len(order) != 3 || order[0] != want[0] || order[1] != want[1] || order[2] != want[2] {
		t.Fatalf("closed in order %v, want %v", order, want)
	}
	if err := o.Close(); err != nil || len(order) != 3 {
		t.Fatalf("second Close = %v, closed %d times", err, len(order))
	}
}

// TestRoleString: roles read as what they open, in Open's order.
func TestRoleString(t *testing.T) {
	for r, want := range map[Role]string{
		0:                         "no role",
		RoleRevokes:               "revoke store",
		RoleControl | RoleBroker:  "broker+control transport",
		AllRoles:                  "broker+result backend+revoke store+control transport",
		RoleResults | RoleRevokes: "result backend+revoke store",
		RoleBroker | Role(1<<7):   "broker",
	} {
		if got := r.String(); got != want {
			t.Errorf("Role(%d).String() = %q, want %q", r, got, want)
		}
	}
}

// TestFailedAddReportsCloseErrors: when a role fails to open, what Add
// opened before it is closed, and an error of that close is returned with
// the open error, not dropped.
func TestFailedAddReportsCloseErrors(t *testing.T) {
	closeErr := errors.New("close failed")
	openErr := &OpenError{Role: RoleRevokes, URL: "x", From: FromDefault, Err: errors.New("down")}
	err := withClose(openErr, closeErr)
	var oe *OpenError
	if !errors.As(err, &oe) || !errors.Is(err, closeErr) {
		t.Fatalf("withClose = %v, want both errors", err)
	}
	if got := withClose(openErr, nil); got != error(openErr) {
		t.Fatalf("withClose(err, nil) = %v, want err itself", got)
	}
}
