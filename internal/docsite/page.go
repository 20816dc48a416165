package docsite

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/extension"
	"github.com/yuin/goldmark/parser"
	"github.com/yuin/goldmark/text"
)

// Error is a problem in a page, at a line of its file.
type Error struct {
	File string
	Line int
	Msg  string
}

// Error returns "file:line: message".
func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Errors are the problems of one build, one per line when printed.
type Errors []*Error

// Error returns each problem on a line of its own.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Meta is a page's front matter: lines `key: value` between two `---`
// lines at the top of the file.
type Meta struct {
	// Title is the page's title in the sidebar and the window; default:
	// the text of its first level-1 heading.
	Title string
	// Order places the page in the sidebar, lowest first; pages without
	// one come last, by file name.
	Order int
	// HasOrder is set when the front matter gives an order.
	HasOrder bool
}

// CodeBlock is a fenced code block of a page.
type CodeBlock struct {
	// Line is the line of the opening fence.
	Line int
	// Lang is the info string's first word ("go", "console", ...).
	Lang string
	// Title is the title attribute: the path shown as the block's file name.
	Title string
	// Fragment is the fragment flag.
	Fragment bool
	// Code is the block's content.
	Code string
	// InTab reports whether the block is inside a :::tab.
	InTab bool
}

// Link is a link or image of a page.
type Link struct {
	Line int
	Dest string
	node ast.Node
}

// Page is one parsed Markdown file.
type Page struct {
	// File names the page in errors (its path as given to Parse).
	File string
	Meta Meta
	// Body is the file without its front matter.
	Body []byte
	// Blocks are the page's fenced code blocks, in order.
	Blocks []CodeBlock
	// Links are the page's links and images, in order.
	Links []Link
	// IDs are the ids of the page's headings and tabs (link targets).
	IDs map[string]bool
	// TabGroups counts the page's :::tabs.
	TabGroups int

	doc        ast.Node
	bodyLine   int // the line of Body's first line in the file
	lineStarts []int
}

// newMarkdown returns the goldmark instance of the site: CommonMark,
// tables, strikethrough, heading ids and the directives.
func newMarkdown() goldmark.Markdown {
	return goldmark.New(
		goldmark.WithExtensions(extension.Table, extension.Strikethrough, Directives, codeBlocks),
		goldmark.WithParserOptions(parser.WithAutoHeadingID()),
	)
}

// SplitFrontMatter returns src's front matter lines (without the `---`
// lines; nil when there is none) and its body.
func SplitFrontMatter(src []byte) (front []string, body []byte, ok bool) {
	s := string(src)
	if !strings.HasPrefix(s, "---\n") {
		return nil, src, false
	}
	rest := s[len("---\n"):]
	if strings.HasPrefix(rest, "---\n") {
		return []string{}, []byte(rest[len("---\n"):]), true
	}
	end := strings.Index(rest, "\n---\n")
	if end < 0 {
		if strings.HasSuffix(rest, "\n---") {
			end = len(rest) - len("\n---")
		} else {
			return nil, src, false
		}
	}
	block := rest[:end]
	after := rest[min(len(rest), end+len("\n---\n")):]
	if block != "" {
		front = strings.Split(block, "\n")
	} else {
		front = []string{}
	}
	return front, []byte(after), true
}

// Parse parses a page. Its error is an Errors with every problem found,
// each at its line: malformed front matter, malformed or unclosed
// directives, a :::tab outside :::tabs or without a label, and code
// blocks with malformed attributes.
func Parse(file string, src []byte) (*Page, error) {
	p := &Page{File: file, IDs: map[string]bool{}}
	var errs Errors
	front, body, ok := SplitFrontMatter(src)
	p.Body = body
	if ok {
		p.bodyLine = len(front) + 2
		for i, l := range front {
			if strings.TrimSpace(l) == "" {
				continue
			}
			k, v, found := strings.Cut(l, ":")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if !found || k == "" {
				errs = append(errs, &Error{file, i + 2, fmt.Sprintf("front matter: want key: value, got %q", l)})
				continue
			}
			switch k {
			case "title":
				p.Meta.Title = strings.Trim(v, `"`)
			case "order":
				n, err := strconv.Atoi(v)
				if err != nil {
					errs = append(errs, &Error{file, i + 2, fmt.Sprintf("front matter: order %q is not a whole number", v)})
				}
				p.Meta.Order, p.Meta.HasOrder = n, true
			default:
				errs = append(errs, &Error{file, i + 2, fmt.Sprintf("front matter: unknown key %q (known: title, order)", k)})
			}
		}
	}
	p.lineStarts = []int{0}
	for i, c := range body {
		if c == '\n' {
			p.lineStarts = append(p.lineStarts, i+1)
		}
	}
	pc := parser.NewContext()
	p.doc = newMarkdown().Parser().Parse(text.NewReader(body), parser.WithContext(pc))
	checkDirectives(p.doc, pc)
	for _, e := range parseErrors(pc) {
		errs = append(errs, &Error{file, p.line(e.Offset), e.Msg})
	}
	p.TabGroups, _ = pc.Get(tabGroupsKey).(int)
	errs = append(errs, p.collect()...)
	if p.Meta.Title == "" {
		p.Meta.Title = p.firstHeading()
	}
	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
		return p, errs
	}
	return p, nil
}

// line returns the file's line (from 1) of a byte offset of Body.
func (p *Page) line(offset int) int {
	i := sort.Search(len(p.lineStarts), func(i int) bool { return p.lineStarts[i] > offset })
	return i + p.bodyLine
}

// collect gathers the page's code blocks, links and ids, and checks the
// code blocks' info strings.
func (p *Page) collect() Errors {
	var errs Errors
	_ = ast.Walk(p.doc, func(n ast.Node, entering bool) (ast.WalkStatus, error) {
		if !entering {
			return ast.WalkContinue, nil
		}
		switch n := n.(type) {
		case *ast.FencedCodeBlock:
			line := p.blockLine(n)
			info := ""
			if n.Info != nil {
				info = string(n.Info.Segment.Value(p.Body))
			}
			ci, err := parseCodeInfo(info)
			if err != nil {
				errs = append(errs, &Error{p.File, line, err.Error()})
			}
			var code bytes.Buffer
			for i := 0; i < n.Lines().Len(); i++ {
				seg := n.Lines().At(i)
				code.Write(seg.Value(p.Body))
			}
			inTab := false
			for a := n.Parent(); a != nil; a = a.Parent() {
				if d, ok := a.(*Directive); ok && d.Name == "tab" {
					inTab = true
				}
			}
			p.Blocks = append(p.Blocks, CodeBlock{Line: line, Lang: ci.Lang, Title: ci.Title, Fragment: ci.Fragment, Code: code.String(), InTab: inTab})
		case *ast.Heading:
			if id, ok := n.AttributeString("id"); ok {
				if b, ok := id.([]byte); ok {
					p.IDs[string(b)] = true
				}
			}
		case *Directive:
			if n.ID != "" {
				p.IDs[n.ID] = true
			}
		case *ast.Link:
			p.Links = append(p.Links, Link{Line: p.inlineLine(n), Dest: string(n.Destination), node: n})
		case *ast.Image:
			p.Links = append(p.Links, Link{Line: p.inlineLine(n), Dest: string(n.Destination), node: n})
		}
		return ast.WalkContinue, nil
	})
	return errs
}

// blockLine returns the line of a fenced code block's opening fence.
func (p *Page) blockLine(n *ast.FencedCodeBlock) int {
	if n.Info != nil {
		return p.line(n.Info.Segment.Start)
	}
	if n.Lines().Len() > 0 {
		return p.line(n.Lines().At(0).Start) - 1
	}
	for a := ast.Node(n); a != nil; a = a.PreviousSibling() {
		if a.Lines().Len() > 0 {
			return p.line(a.Lines().At(a.Lines().Len() - 1).Start)
		}
	}
	return p.bodyLine
}

// inlineLine returns the line of an inline node: that of its first text,
// else of its block.
func (p *Page) inlineLine(n ast.Node) int {
	found := -1
	_ = ast.Walk(n, func(c ast.Node, entering bool) (ast.WalkStatus, error) {
		if t, ok := c.(*ast.Text); ok && entering {
			found = t.Segment.Start
			return ast.WalkStop, nil
		}
		return ast.WalkContinue, nil
	})
	if found >= 0 {
		return p.line(found)
	}
	for a := n.Parent(); a != nil; a = a.Parent() {
		if a.Type() == ast.TypeBlock && a.Lines().Len() > 0 {
			return p.line(a.Lines().At(0).Start)
		}
	}
	return p.bodyLine
}

// firstHeading returns the text of the page's first level-1 heading.
func (p *Page) firstHeading() string {
	title := ""
	_ = ast.Walk(p.doc, func(n ast.Node, entering bool) (ast.WalkStatus, error) {
		if h, ok := n.(*ast.Heading); ok && entering && h.Level == 1 {
			title = plainText(h, p.Body)
			return ast.WalkStop, nil
		}
		return ast.WalkContinue, nil
	})
	return title
}

// plainText returns the text of n's inline children.
func plainText(n ast.Node, src []byte) string {
	var b strings.Builder
	_ = ast.Walk(n, func(c ast.Node, entering bool) (ast.WalkStatus, error) {
		if !entering {
			return ast.WalkContinue, nil
		}
		switch t := c.(type) {
		case *ast.Text:
			b.Write(t.Segment.Value(src))
		case *ast.String:
			b.Write(t.Value)
		case *ast.CodeSpan:
			for x := t.FirstChild(); x != nil; x = x.NextSibling() {
				if tx, ok := x.(*ast.Text); ok {
					b.Write(tx.Segment.Value(src))
				}
			}
			return ast.WalkSkipChildren, nil
		}
		return ast.WalkContinue, nil
	})
	return b.String()
}

// HTML renders the page's body.
func (p *Page) HTML() ([]byte, error) {
	var b bytes.Buffer
	if err := newMarkdown().Renderer().Render(&b, p.Body, p.doc); err != nil {
		return nil, fmt.Errorf("%s: render: %w", p.File, err)
	}
	return b.Bytes(), nil
}

// directives returns the page's directives in document order.
func directives(p *Page) []*Directive {
	var out []*Directive
	_ = ast.Walk(p.doc, func(n ast.Node, entering bool) (ast.WalkStatus, error) {
		if d, ok := n.(*Directive); ok && entering {
			out = append(out, d)
		}
		return ast.WalkContinue, nil
	})
	return out
}
