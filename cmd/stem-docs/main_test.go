package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runDocs(args ...string) (int, string, string) {
	var out, errw bytes.Buffer
	code := run(args, &out, &errw)
	return code, out.String(), errw.String()
}

func TestBuildRepoSite(t *testing.T) {
	root := filepath.Join("..", "..")
	out := t.TempDir()
	code, stdout, stderr := runDocs("build", "-docs", filepath.Join(root, "docs"), "-site", filepath.Join(root, ".site", "docs"), "-out", out)
	if code != 0 || !strings.HasPrefix(stdout, "built ") {
		t.Fatalf("build: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "worker-control.html")); err != nil {
		t.Fatal(err)
	}
}

func TestBuildFails(t *testing.T) {
	docs, site := t.TempDir(), t.TempDir()
	page := "# P\n\n:::tab{label=\"x\"}\n:::\n"
	for _, dir := range []string{docs, site} {
		if err := os.WriteFile(filepath.Join(dir, "p.md"), []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	code, _, stderr := runDocs("build", "-docs", docs, "-site", site, "-out", filepath.Join(t.TempDir(), "out"))
	if want := filepath.Join(site, "p.md") + ":3: :::tab outside :::tabs"; code != 1 || !strings.Contains(stderr, want) {
		t.Fatalf("exit %d, stderr %q; want 1 and %q", code, stderr, want)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"publish"}, {"build", "extra"}, {"build", "-nope"}} {
		if code, _, stderr := runDocs(args...); code != 64 || stderr == "" {
			t.Errorf("stem-docs %q: exit %d, stderr %q; want 64 and a message", args, code, stderr)
		}
	}
}
