package docsite

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFiles writes files (name to content) under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLinksChecked(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.md": "---\norder: 1\n---\n# A\n\n## Part two\n\n" +
			"[b](b.md) [b's part](b.md#details) [here](#part-two) [img](pic.png) [web](https://example.com/x.md)\n" +
			"[gone](missing.md)\n" +
			"[no anchor](b.md#nowhere)\n" +
			"[up](../outside.md)\n" +
			"[abs](/b.md)\n" +
			"[self](#nope)\n",
		"b.md":    "# B\n\n## Details\n",
		"pic.png": "png",
	})
	_, err := Load(dir)
	a := filepath.Join(dir, "a.md")
	assertErrors(t, err, []wantErr{
		{9, `broken link "missing.md": no page or file missing.md`},
		{10, `broken link "b.md#nowhere": no heading or tab #nowhere in b.md`},
		{11, `broken link "../outside.md": it leaves the site's directory`},
		{12, `broken link "/b.md": an absolute path`},
		{13, `broken link "#nope": no heading or tab #nope in a.md`},
	})
	var es Errors
	errors.As(err, &es)
	for _, e := range es {
		if e.File != a {
			t.Errorf("error in %s, want %s", e.File, a)
		}
	}

	// Without the broken links the site builds, with links to pages
	// rewritten to their HTML and linked files copied.
	writeFiles(t, dir, map[string]string{"a.md": "# A\n\n## Part two\n\n[b](b.md) [b's part](b.md#details) [here](#part-two) [img](pic.png)\n"})
	out := t.TempDir()
	s, err := Build(Config{SiteDir: dir, OutDir: out})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Pages) != 2 || s.Names[0] != "a.md" {
		t.Fatalf("pages %v", s.Names)
	}
	html, err := os.ReadFile(filepath.Join(out, "a.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`href="b.html"`, `href="b.html#details"`, `href="#part-two"`, `href="pic.png"`,
		`<a href="a.html" aria-current="page">A</a>`, `<a href="b.html">B</a>`, `<nav class="sidebar"`} {
		if !strings.Contains(string(html), want) {
			t.Errorf("a.html lacks %s:\n%s", want, html)
		}
	}
	for _, f := range []string{"index.html", "b.html", "pic.png", "assets/site.css", "assets/tabs.js"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("%s not built: %v", f, err)
		}
	}
	css, _ := os.ReadFile(filepath.Join(out, "assets/site.css"))
	if !strings.Contains(string(css), ".hl-kn") {
		t.Errorf("site.css lacks chroma's classes")
	}
}

func TestBuildFailsWritingNothing(t *testing.T) {
	dir, out := t.TempDir(), filepath.Join(t.TempDir(), "out")
	writeFiles(t, dir, map[string]string{
		"good.md": "# Good\n",
		"bad.md":  "# Bad\n\n:::tabs\n:::tab\ntext\n:::\n",
	})
	_, err := Build(Config{SiteDir: dir, OutDir: out})
	assertErrors(t, err, []wantErr{{3, ":::tabs is never closed"}, {4, ":::tab without a label"}})
	if !strings.Contains(err.Error(), filepath.Join(dir, "bad.md")+":4: ") {
		t.Errorf("error does not name file and line: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed build wrote %s (%v)", out, err)
	}
}

func TestMirror(t *testing.T) {
	src, site := t.TempDir(), t.TempDir()
	writeFiles(t, src, map[string]string{"a.md": "# A\n\none\ntwo\n", "b.md": "# B\n"})
	writeFiles(t, site, map[string]string{
		"a.md": "---\ntitle: The A\norder: 2\n---\n# A\n\none\nTWO\n",
		"c.md": "# C\n",
	})
	err := CheckMirror(src, site)
	assertErrors(t, err, []wantErr{
		{8, "differs from " + src + "/a.md at its line 4"}, // a.md, after 4 lines of front matter
		{1, "has no copy"},   // b.md
		{1, "has no source"}, // c.md
	})
	changed, err := SyncMirror(src, site)
	if err != nil || len(changed) != 2 {
		t.Fatalf("SyncMirror = %v, %v; want a.md and b.md written", changed, err)
	}
	got, _ := os.ReadFile(filepath.Join(site, "a.md"))
	if string(got) != "---\ntitle: The A\norder: 2\n---\n# A\n\none\ntwo\n" {
		t.Errorf("a.md after sync:\n%s", got)
	}
	got, _ = os.ReadFile(filepath.Join(site, "b.md"))
	if string(got) != "---\ntitle: B\n---\n# B\n" {
		t.Errorf("b.md after sync:\n%s", got)
	}
	assertErrors(t, CheckMirror(src, site), []wantErr{{1, "has no source"}})
	// The build checks the mirror too.
	_, err = Build(Config{SiteDir: site, MirrorOf: src, OutDir: t.TempDir()})
	assertErrors(t, err, []wantErr{{1, "has no source"}})
}
