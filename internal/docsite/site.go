package docsite

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/yuin/goldmark/ast"
)

//go:embed assets
var assets embed.FS

var pageTemplate = template.Must(template.ParseFS(assets, "assets/page.html"))

// Config says where a site's pages are and where it is built.
type Config struct {
	// SiteDir holds the site's pages, *.md (.site/docs in the repository).
	SiteDir string
	// MirrorOf, when set, is the directory the pages are mirrored from
	// (docs): the build fails when a page's body differs from its
	// source's (see CheckMirror).
	MirrorOf string
	// OutDir receives the HTML. It is created; files the build writes are
	// replaced, others are left alone.
	OutDir string
}

// NavItem is one entry of the sidebar.
type NavItem struct {
	Title, Href string
	Current     bool
}

// Site is a parsed site: its pages in sidebar order.
type Site struct {
	Pages []*Page
	// Names are the pages' file names (x.md), as Pages are ordered.
	Names []string
}

// Load parses every page of dir (its *.md files) and checks the links
// between them: a relative link must name a page of the site (x.md, with
// an optional #fragment naming a heading or tab of it) or a file in dir;
// a link to a heading of its own page (#fragment) must name one. Links
// with a scheme (https:, mailto:) are not checked. The error is an Errors
// with every problem of every page, each at its file and line.
func Load(dir string) (*Site, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("docs site: %w", err)
	}
	s := &Site{}
	var errs Errors
	byName := map[string]*Page{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".md") {
			continue
		}
		file := filepath.Join(dir, e.Name())
		src, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("docs site: %w", err)
		}
		p, err := Parse(file, src)
		var es Errors
		if errors.As(err, &es) {
			errs = append(errs, es...)
		} else if err != nil {
			return nil, err
		}
		byName[e.Name()] = p
		s.Pages = append(s.Pages, p)
		s.Names = append(s.Names, e.Name())
	}
	if len(s.Pages) == 0 {
		return nil, fmt.Errorf("docs site: no pages (*.md) in %s", dir)
	}
	idx := make([]int, len(s.Pages))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		pa, pb := s.Pages[idx[a]].Meta, s.Pages[idx[b]].Meta
		if pa.HasOrder != pb.HasOrder {
			return pa.HasOrder
		}
		if pa.Order != pb.Order {
			return pa.Order < pb.Order
		}
		return s.Names[idx[a]] < s.Names[idx[b]]
	})
	pages, names := make([]*Page, len(idx)), make([]string, len(idx))
	for i, j := range idx {
		pages[i], names[i] = s.Pages[j], s.Names[j]
	}
	s.Pages, s.Names = pages, names
	for i, p := range s.Pages {
		errs = append(errs, checkLinks(dir, s.Names[i], p, byName)...)
	}
	if len(errs) > 0 {
		return s, errs
	}
	return s, nil
}

// checkLinks checks p's links (see Load) and rewrites those to pages to
// their HTML files.
func checkLinks(dir, name string, p *Page, pages map[string]*Page) Errors {
	var errs Errors
	for _, l := range p.Links {
		bad := func(format string, args ...any) {
			errs = append(errs, &Error{p.File, l.Line, fmt.Sprintf("broken link %q: ", l.Dest) + fmt.Sprintf(format, args...)})
		}
		u, err := url.Parse(l.Dest)
		switch {
		case err != nil:
			bad("%v", err)
			continue
		case u.Scheme != "" || u.Host != "":
			continue // external: not checked
		case l.Dest == "":
			bad("empty destination")
			continue
		case strings.HasPrefix(u.Path, "/"):
			bad("an absolute path; link relative to the page")
			continue
		}
		target, targetName := p, name
		if u.Path != "" {
			rel := path.Clean(path.Join(path.Dir(name), u.Path))
			if strings.HasPrefix(rel, "../") || rel == ".." {
				bad("it leaves the site's directory %s", dir)
				continue
			}
			if t, ok := pages[rel]; ok {
				target, targetName = t, rel
			} else if st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(rel))); err != nil || st.IsDir() {
				bad("no page or file %s in %s", rel, dir)
				continue
			} else {
				target = nil // a file: copied as it is
			}
		}
		if u.Fragment != "" && target != nil && !target.IDs[u.Fragment] {
			bad("no heading or tab #%s in %s", u.Fragment, targetName)
			continue
		}
		if target != nil && u.Path != "" {
			u.Path = strings.TrimSuffix(u.Path, ".md") + ".html"
			setDest(l.node, u.String())
		}
	}
	return errs
}

func setDest(n ast.Node, dest string) {
	switch n := n.(type) {
	case *ast.Link:
		n.Destination = []byte(dest)
	case *ast.Image:
		n.Destination = []byte(dest)
	}
}

// Build loads cfg.SiteDir (see Load), checks it against cfg.MirrorOf
// when set, and writes the site to cfg.OutDir: one HTML page per
// Markdown page, index.html (the first page of the sidebar), the files
// the pages link to, and assets/ (the stylesheet and the tabs' script).
// It writes nothing when a check fails.
func Build(cfg Config) (*Site, error) {
	var errs Errors
	if cfg.MirrorOf != "" {
		if err := CheckMirror(cfg.MirrorOf, cfg.SiteDir); err != nil {
			var es Errors
			if !errors.As(err, &es) {
				return nil, err
			}
			errs = append(errs, es...)
		}
	}
	s, err := Load(cfg.SiteDir)
	var es Errors
	if errors.As(err, &es) {
		errs = append(errs, es...)
	} else if err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return s, errs
	}
	if err := os.MkdirAll(filepath.Join(cfg.OutDir, "assets"), 0o755); err != nil {
		return nil, fmt.Errorf("docs site: %w", err)
	}
	for i, p := range s.Pages {
		body, err := p.HTML()
		if err != nil {
			return nil, err
		}
		var nav []NavItem
		for j, q := range s.Pages {
			nav = append(nav, NavItem{Title: q.Meta.Title, Href: htmlName(s.Names[j]), Current: i == j})
		}
		var out bytes.Buffer
		err = pageTemplate.Execute(&out, map[string]any{
			"Title": p.Meta.Title, "Root": "", "Nav": nav,
			"Body": template.HTML(body), // rendered by goldmark, which escapes raw HTML
		})
		if err != nil {
			return nil, fmt.Errorf("docs site: %s: %w", p.File, err)
		}
		if err := os.WriteFile(filepath.Join(cfg.OutDir, htmlName(s.Names[i])), out.Bytes(), 0o644); err != nil {
			return nil, fmt.Errorf("docs site: %w", err)
		}
		for _, l := range p.Links {
			if err := copyLinkedFile(cfg.SiteDir, cfg.OutDir, s.Names[i], l.Dest); err != nil {
				return nil, err
			}
		}
	}
	index := fmt.Sprintf("<!doctype html>\n<meta charset=\"utf-8\">\n<title>stem</title>\n<meta http-equiv=\"refresh\" content=\"0; url=%[1]s\">\n<a href=\"%[1]s\">%[2]s</a>\n",
		htmlName(s.Names[0]), template.HTMLEscapeString(s.Pages[0].Meta.Title))
	if err := os.WriteFile(filepath.Join(cfg.OutDir, "index.html"), []byte(index), 0o644); err != nil {
		return nil, fmt.Errorf("docs site: %w", err)
	}
	css, err := fs.ReadFile(assets, "assets/site.css")
	if err != nil {
		return nil, err
	}
	var all bytes.Buffer
	all.Write(css)
	all.WriteString("\n/* Highlighted code (chroma, style " + codeStyle + "). */\n")
	if err := WriteCodeCSS(&all); err != nil {
		return nil, err
	}
	js, err := fs.ReadFile(assets, "assets/tabs.js")
	if err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{"site.css": all.Bytes(), "tabs.js": js} {
		if err := os.WriteFile(filepath.Join(cfg.OutDir, "assets", name), data, 0o644); err != nil {
			return nil, fmt.Errorf("docs site: %w", err)
		}
	}
	return s, nil
}

// copyLinkedFile copies the file a page links to (not a page: those were
// rewritten to .html) into out, at the same relative path.
func copyLinkedFile(siteDir, outDir, page, dest string) error {
	u, err := url.Parse(dest)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Path == "" || strings.HasSuffix(u.Path, ".html") {
		return nil
	}
	rel := path.Clean(path.Join(path.Dir(page), u.Path))
	data, err := os.ReadFile(filepath.Join(siteDir, filepath.FromSlash(rel)))
	if err != nil {
		return fmt.Errorf("docs site: %w", err)
	}
	to := filepath.Join(outDir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("docs site: %w", err)
	}
	return os.WriteFile(to, data, 0o644)
}

// htmlName is the HTML file of page x.md.
func htmlName(name string) string { return strings.TrimSuffix(name, ".md") + ".html" }
