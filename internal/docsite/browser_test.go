package docsite

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/stem-go/stem/internal/testutil"
)

// envArtifacts names the directory the browser test writes its
// screenshot to; default: stem-docs-browser in the system's temporary
// directory. The test logs the file's path.
const envArtifacts = "STEM_TEST_ARTIFACTS"

// chromium returns the path of Debian's Chromium, or skips the test
// (fails it when services are required, as in CI).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testutil.SkipOrFail(t, "the browser test needs Chromium: install Debian's chromium package (apt-get install -y chromium); .ci/run does")
	return ""
}

// browser starts a headless Chromium for the test and returns a context
// of a tab in it, with JavaScript disabled when noScript is set.
func browser(t *testing.T, bin string, noScript bool) context.Context {
	t.Helper()
	// A failure bound: a browser that hangs fails the test, it does not
	// time it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin), chromedp.Headless, chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 1400),
	}
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	tctx, tcancel := chromedp.NewContext(actx)
	t.Cleanup(tcancel)
	if err := chromedp.Do(tctx); err != nil { // starts the browser
		t.Fatalf("start %s: %v", bin, err)
	}
	if noScript {
		if _, err := chromedp.Call(tctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true}); err != nil {
			t.Fatal(err)
		}
	}
	return tctx
}

// builtSite builds the repository's site and serves it for the test.
func builtSite(t *testing.T) string {
	t.Helper()
	out := t.TempDir()
	if _, err := Build(Config{SiteDir: repoSite, MirrorOf: repoDocs, OutDir: out}); err != nil {
		t.Fatalf("the docs do not build:\n%v", err)
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(out)))
	t.Cleanup(srv.Close)
	return srv.URL
}

// tabState is what the page shows of the worker-control page's first tab
// group.
type tabState struct {
	ListHidden     bool   `json:"listHidden"`
	InlineShown    bool   `json:"inlineShown"`
	IsolatedShown  bool   `json:"isolatedShown"`
	InlineSelected string `json:"inlineSelected"`
	IsolatedSel    string `json:"isolatedSelected"`
	Focused        string `json:"focused"`
}

// readTabs reads the tab group's state: a panel is shown when it has a
// layout box (display is not none, for it and its ancestors).
const readTabs = `(() => {
	const shown = id => document.getElementById(id).getClientRects().length > 0;
	return {
		listHidden: document.querySelector('#tabs-1 > [role=tablist]').getClientRects().length === 0,
		inlineShown: shown('tabs-1-inline'),
		isolatedShown: shown('tabs-1-isolated'),
		inlineSelected: document.getElementById('tabs-1-inline-tab').getAttribute('aria-selected'),
		isolatedSelected: document.getElementById('tabs-1-isolated-tab').getAttribute('aria-selected'),
		focused: document.activeElement ? document.activeElement.id : '',
	};
})()`

// TestBrowserTabs opens the built worker-control page in Chromium,
// clicks the second tab, and checks that its panel shows and the first is
// hidden; then moves between the tabs with the keyboard. A screenshot of
// the page with the second tab selected is kept (see envArtifacts).
func TestBrowserTabs(t *testing.T) {
	bin := chromium(t)
	url := builtSite(t) + "/worker-control.html"
	ctx := browser(t, bin, false)
	read := func(what string) tabState {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[tabState](readTabs))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return s
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("tabs-1-isolated-tab"))); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	if s := read("loaded"); s.ListHidden || !s.InlineShown || s.IsolatedShown || s.InlineSelected != "true" || s.IsolatedSel != "false" {
		t.Fatalf("on load: %+v; want the tablist shown, the first panel shown and selected, the second hidden", s)
	}

	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("tabs-1-isolated-tab"))); err != nil {
		t.Fatal(err)
	}
	if s := read("after a click on the second tab"); s.InlineShown || !s.IsolatedShown || s.InlineSelected != "false" || s.IsolatedSel != "true" {
		t.Fatalf("after a click on the second tab: %+v; want its panel shown and selected, the first hidden", s)
	}
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.getElementById('inline-vs-isolated-handlers').scrollIntoView()`)); err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	saveArtifact(t, "worker-control-tabs.png", shot)

	// The keyboard: the arrow keys move the selection and the focus, with
	// wrap-around; Home and End go to the ends.
	if err := chromedp.Do(ctx, chromedp.Focus(chromedp.ID("tabs-1-isolated-tab")), chromedp.KeyEvent(kb.ArrowRight)); err != nil {
		t.Fatal(err)
	}
	if s := read("ArrowRight on the last tab"); !s.InlineShown || s.IsolatedShown || s.Focused != "tabs-1-inline-tab" {
		t.Fatalf("ArrowRight on the last tab: %+v; want the first tab selected and focused", s)
	}
	if err := chromedp.Do(ctx, chromedp.KeyEvent(kb.ArrowLeft)); err != nil {
		t.Fatal(err)
	}
	if s := read("ArrowLeft on the first tab"); s.InlineShown || !s.IsolatedShown || s.Focused != "tabs-1-isolated-tab" {
		t.Fatalf("ArrowLeft on the first tab: %+v; want the last tab selected and focused", s)
	}
	if err := chromedp.Do(ctx, chromedp.KeyEvent(kb.Home)); err != nil {
		t.Fatal(err)
	}
	if s := read("Home"); !s.InlineShown || s.IsolatedShown || s.Focused != "tabs-1-inline-tab" {
		t.Fatalf("Home: %+v; want the first tab selected and focused", s)
	}
}

// TestBrowserTabsWithoutScript: with JavaScript disabled, the tablist
// stays hidden and every panel shows.
func TestBrowserTabsWithoutScript(t *testing.T) {
	bin := chromium(t)
	url := builtSite(t) + "/worker-control.html"
	ctx := browser(t, bin, true)
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitReady(chromedp.ID("tabs-1-isolated"))); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	s, err := chromedp.Run(ctx, chromedp.Evaluate[tabState](readTabs))
	if err != nil {
		t.Fatal(err)
	}
	if !s.ListHidden || !s.InlineShown || !s.IsolatedShown {
		t.Fatalf("without JavaScript: %+v; want the tablist hidden and both panels shown", s)
	}
}

// saveArtifact writes data to the artifacts directory and logs where.
func saveArtifact(t *testing.T, name string, data []byte) {
	t.Helper()
	dir := os.Getenv(envArtifacts)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "stem-docs-browser")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", p)
}
