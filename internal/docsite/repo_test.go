package docsite

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The repository's own docs: docs/ (the source), .site/docs (the site's
// copies), relative to this package.
var (
	repoRoot = filepath.Join("..", "..")
	repoDocs = filepath.Join(repoRoot, "docs")
	repoSite = filepath.Join(repoRoot, ".site", "docs")
)

// TestRepoMirror fails when a page of .site/docs drifted from its source
// in docs/ (the site's copy may add front matter; the body must match).
func TestRepoMirror(t *testing.T) {
	if err := CheckMirror(repoDocs, repoSite); err != nil {
		t.Fatalf("the site's pages drifted from docs/:\n%v", err)
	}
}

// TestRepoSiteBuilds builds the repository's site, with every link
// checked, and looks at the worker-control page's tabs.
func TestRepoSiteBuilds(t *testing.T) {
	out := t.TempDir()
	s, err := Build(Config{SiteDir: repoSite, MirrorOf: repoDocs, OutDir: out})
	if err != nil {
		t.Fatalf("the docs do not build:\n%v", err)
	}
	if s.Names[0] != "getting-started.md" {
		t.Errorf("first page %s, want getting-started.md", s.Names[0])
	}
	html, err := os.ReadFile(filepath.Join(out, "worker-control.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`role="tablist" aria-label="Handler kinds" hidden>`,
		`aria-controls="tabs-1-inline" aria-selected="true" tabindex="0">Inline handler</button>`,
		`aria-controls="tabs-1-isolated" aria-selected="false" tabindex="-1">Isolated handler</button>`,
		`<span class="file-name">examples/workercontrol/tasks/report.go</span>`,
		`<span class="file-name">examples/workercontrol/tasks/render.go</span>`,
		`href="brokers-and-urls.html"`,
	} {
		if !strings.Contains(string(html), want) {
			t.Errorf("worker-control.html lacks %s", want)
		}
	}
}

// TestRepoGoBlocks: every Go block of docs/ is either marked fragment, or
// has a title naming a Go file of the module that CI compiles (go vet
// ./... and go test ./... build every package outside testdata) and
// that holds the block, line for line (indentation aside): an Example
// function, a file under examples/, or another file of the module.
func TestRepoGoBlocks(t *testing.T) {
	entries, err := os.ReadDir(repoDocs)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".md") {
			continue
		}
		file := filepath.Join(repoDocs, e.Name())
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Parse(file, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range p.Blocks {
			if b.Lang != "go" || b.Fragment {
				continue
			}
			where := file + ":" + strconv.Itoa(b.Line)
			if b.Title == "" {
				t.Errorf("%s: a Go block with neither title=\"FILE\" (the compiled file it is taken from) nor fragment", where)
				continue
			}
			if err := compiledFile(b.Title); err != nil {
				t.Errorf("%s: title %q: %v", where, b.Title, err)
				continue
			}
			code, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(b.Title)))
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if !containsLines(string(code), b.Code) {
				t.Errorf("%s: the block is not in %s as written (copy it from there again)", where, b.Title)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no Go block checked: is the docs directory right?")
	}
}

// compiledFile reports why path is not a Go file that CI compiles.
func compiledFile(path string) error {
	if !strings.HasSuffix(path, ".go") {
		return errors.New("not a .go file")
	}
	for _, part := range strings.Split(filepath.ToSlash(filepath.Dir(path)), "/") {
		if part == "testdata" || strings.HasPrefix(part, "_") || strings.HasPrefix(part, ".") && part != "." {
			return errors.New("in a directory the go command skips")
		}
	}
	if strings.HasPrefix(filepath.Base(path), "_") || strings.HasPrefix(filepath.Base(path), ".") {
		return errors.New("a file the go command skips")
	}
	if _, err := os.Stat(filepath.Join(repoRoot, filepath.FromSlash(path))); err != nil {
		return err
	}
	if strings.HasPrefix(path, "bench/peers/") {
		return errors.New("bench/peers is a module of its own")
	}
	return nil
}

// containsLines reports whether block's lines appear in file as
// consecutive lines, each with the same indentation added (a block may
// show an excerpt of an indented function body dedented).
func containsLines(file, block string) bool {
	fl := strings.Split(file, "\n")
	bl := strings.Split(strings.TrimRight(block, "\n"), "\n")
	for i := 0; i+len(bl) <= len(fl); i++ {
		if matchAt(fl[i:i+len(bl)], bl) {
			return true
		}
	}
	return false
}

func matchAt(fl, bl []string) bool {
	prefix, set := "", false
	for j, b := range bl {
		f := fl[j]
		if strings.TrimSpace(b) == "" {
			if strings.TrimSpace(f) != "" {
				return false
			}
			continue
		}
		if !strings.HasSuffix(f, b) {
			return false
		}
		p := f[:len(f)-len(b)]
		if strings.Trim(p, "\t ") != "" {
			return false
		}
		if !set {
			prefix, set = p, true
		} else if p != prefix {
			return false
		}
	}
	return true
}
