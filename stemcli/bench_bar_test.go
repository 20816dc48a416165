package stemcli

import (
	"bytes"
	"strings"
	"testing"
)

// TestBenchBar: the bar shows its phase and count as it moves, and is
// cleared when finished; nil (no terminal) is a no-op.
func TestBenchBar(t *testing.T) {
	var b bytes.Buffer
	bar := newBar(&b, 200, "process")
	setBar(bar, 100)
	_ = bar.RenderBlank() // draw now, whatever the throttle
	if out := b.String(); !strings.Contains(out, "process") || !strings.Contains(out, "100/200") {
		t.Errorf("bar output %q, want the phase and 100/200", out)
	}
	finishBar(bar)
	setBar(nil, 5)
	finishBar(nil)
}

// TestBenchNoBarOffTerminal: with stderr not a terminal, progress returns
// no bar.
func TestBenchNoBarOffTerminal(t *testing.T) {
	a := &app{errw: &bytes.Buffer{}}
	if bar := a.progress(10, "enqueue"); bar != nil {
		t.Error("progress drew a bar on a buffer")
	}
}
