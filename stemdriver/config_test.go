package stemdriver_test

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"github.com/stem-go/stem/stemdriver"
)

func TestBadConfigMarksWithoutChangingTheText(t *testing.T) {
	if stemdriver.BadConfig(nil) != nil {
		t.Fatal("BadConfig(nil) is not nil")
	}
	inner := &fs.PathError{Op: "open", Path: "/x.pem", Err: fs.ErrNotExist}
	err := fmt.Errorf("stem: redis: option tls_ca: %w", stemdriver.BadConfig(inner))
	if !errors.Is(err, stemdriver.ErrBadConfig) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%v: does not match both ErrBadConfig and the wrapped error", err)
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe != inner {
		t.Errorf("errors.As does not reach the wrapped error")
	}
	if got, want := err.Error(), "stem: redis: option tls_ca: "+inner.Error(); got != want {
		t.Errorf("text = %q, want %q", got, want)
	}
	if errors.Is(errors.New("stem: other"), stemdriver.ErrBadConfig) {
		t.Error("an unmarked error matches ErrBadConfig")
	}
}
