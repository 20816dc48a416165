package docsite

import (
	"fmt"
	"html"
	"regexp"
	"strings"

	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/parser"
	"github.com/yuin/goldmark/renderer"
	"github.com/yuin/goldmark/text"
	"github.com/yuin/goldmark/util"
)

// KindDirective is the ast.NodeKind of a container directive.
var KindDirective = ast.NewNodeKind("Directive")

// Directive is a container directive: a line `:::NAME{attrs}` opens it, a
// line `:::` closes it, and the lines between are Markdown, parsed as its
// children (code fences, lists and other directives included). Two names
// are known: "tabs", whose children are "tab" directives, and "tab", which
// carries a label and a value:
//
//	:::tabs
//	:::tab{label="Inline handler" value="inline"}
//	...
//	:::
//	:::tab{label="Isolated handler"}
//	...
//	:::
//	:::
type Directive struct {
	ast.BaseBlock
	// Name is "tabs" or "tab" (or an unknown name, reported as an error).
	Name string
	// Attrs are the attributes written in braces.
	Attrs attrs
	// Label is a tab's label (required), or a tab group's accessible name
	// (optional).
	Label string
	// Value identifies a tab within its group: its value attribute, else
	// a slug of its label.
	Value string
	// ID is the HTML id: "tabs-N" for the N-th tab group of a page, and
	// "tabs-N-VALUE" for its tabs.
	ID string
	// Offset is where the opening line starts in the source.
	Offset int
	// Closed is set when a `:::` line closed the directive (rather than
	// the end of the document or of an enclosing block).
	Closed bool
	// stray is a `:::` line that closed nothing (an error).
	stray bool
}

// Kind implements ast.Node.
func (n *Directive) Kind() ast.NodeKind { return KindDirective }

// Dump implements ast.Node.
func (n *Directive) Dump(source []byte, level int) {
	ast.DumpHelper(n, source, level, map[string]string{"Name": n.Name, "Label": n.Label, "Value": n.Value}, nil)
}

// directiveErrorsKey holds the *[]posError of a parse.
var directiveErrorsKey = parser.NewContextKey()

// tabGroupsKey holds the number of tab groups opened so far in a parse.
var tabGroupsKey = parser.NewContextKey()

// posError is a problem found at a byte offset of the source.
type posError struct {
	Offset int
	Msg    string
}

func addError(pc parser.Context, offset int, format string, args ...any) {
	errs, _ := pc.Get(directiveErrorsKey).(*[]posError)
	if errs == nil {
		errs = &[]posError{}
		pc.Set(directiveErrorsKey, errs)
	}
	*errs = append(*errs, posError{offset, fmt.Sprintf(format, args...)})
}

// parseErrors returns the errors recorded in pc.
func parseErrors(pc parser.Context) []posError {
	if errs, _ := pc.Get(directiveErrorsKey).(*[]posError); errs != nil {
		return *errs
	}
	return nil
}

// directiveLine matches a directive's opening or closing line (without
// its indentation): `:::`, `:::name` or `:::name{attrs}`, then spaces.
var directiveLine = regexp.MustCompile(`^:::([A-Za-z][A-Za-z0-9-]*)?(\{.*\})?[ \t]*\r?\n?$`)

// isCloser reports whether line (with indentation) is a directive's
// closing line, `:::`, indented less than four columns.
func isCloser(line []byte, offset int) bool {
	w, pos := util.IndentWidth(line, offset)
	if w > 3 {
		return false
	}
	return strings.TrimRight(string(line[pos:]), " \t\r\n") == ":::"
}

type directiveParser struct{}

func (directiveParser) Trigger() []byte { return []byte{':'} }

func (directiveParser) Open(parent ast.Node, reader text.Reader, pc parser.Context) (ast.Node, parser.State) {
	line, seg := reader.PeekLine()
	pos := pc.BlockOffset()
	if pos < 0 || !strings.HasPrefix(string(line[pos:]), ":::") {
		return nil, parser.NoChildren
	}
	offset := seg.Start + pos - seg.Padding
	rest := string(line[pos:])
	if isCloser(line, reader.LineOffset()) {
		addError(pc, offset, "::: closes no directive (no :::tabs or :::tab is open here)")
		reader.AdvanceToEOL()
		// Swallowed as a directive that renders nothing.
		return &Directive{Offset: offset, Closed: true, stray: true}, parser.NoChildren
	}
	n := &Directive{Offset: offset}
	m := directiveLine.FindStringSubmatch(rest)
	if m == nil {
		addError(pc, offset, "malformed directive %q: want :::NAME or :::NAME{key=\"value\" ...}", strings.TrimSpace(rest))
		n.Name = "?"
		reader.AdvanceToEOL()
		return n, parser.HasChildren
	}
	n.Name = m[1]
	if a := m[2]; a != "" {
		as, err := parseAttrs(a[1 : len(a)-1])
		if err != nil {
			addError(pc, offset, ":::%s: %v", n.Name, err)
		}
		n.Attrs = as
	}
	switch n.Name {
	case "tabs":
		checkKeys(pc, n, "label")
		n.Label, _ = n.Attrs.get("label")
		count, _ := pc.Get(tabGroupsKey).(int)
		count++
		pc.Set(tabGroupsKey, count)
		n.ID = fmt.Sprintf("tabs-%d", count)
	case "tab":
		checkKeys(pc, n, "label", "value")
		p, ok := parent.(*Directive)
		if !ok || p.Name != "tabs" {
			where := "outside :::tabs"
			if ok && p.Name == "tab" {
				where = "inside another :::tab (close that one with ::: first)"
			}
			addError(pc, offset, ":::tab %s: a :::tab must be directly inside :::tabs", where)
		}
		label, ok := n.Attrs.get("label")
		if !ok || strings.TrimSpace(label) == "" {
			addError(pc, offset, `:::tab without a label: write :::tab{label="..."}`)
		}
		n.Label = label
		n.Value, ok = n.Attrs.get("value")
		if !ok {
			n.Value = slug(label)
		} else if slug(n.Value) != n.Value || n.Value == "" {
			addError(pc, offset, `:::tab value %q: use lower-case letters, digits and '-'`, n.Value)
		}
	case "":
		addError(pc, offset, "malformed directive %q: the name is missing (want :::tabs or :::tab{label=\"...\"})", strings.TrimSpace(rest))
	default:
		addError(pc, offset, "unknown directive :::%s (known: :::tabs, :::tab)", n.Name)
	}
	reader.AdvanceToEOL()
	return n, parser.HasChildren
}

// checkKeys reports every attribute of n not named in keys.
func checkKeys(pc parser.Context, n *Directive, keys ...string) {
	for _, a := range n.Attrs {
		known := false
		for _, k := range keys {
			known = known || a.Key == k
		}
		if !known {
			addError(pc, n.Offset, ":::%s: unknown attribute %q (known: %s)", n.Name, a.Key, strings.Join(keys, ", "))
		} else if a.Flag {
			addError(pc, n.Offset, ":::%s: attribute %q needs a value", n.Name, a.Key)
		}
	}
}

func (directiveParser) Continue(node ast.Node, reader text.Reader, pc parser.Context) parser.State {
	if node.(*Directive).stray {
		return parser.Close
	}
	line, _ := reader.PeekLine()
	if !isCloser(line, reader.LineOffset()) {
		return parser.Continue | parser.HasChildren
	}
	// A `:::` line closes the innermost open directive, unless it is the
	// content of an open code block (or raw HTML) inside it.
	opened := pc.OpenedBlocks()
	deeper := false
	for _, b := range opened {
		if b.Node == node {
			deeper = true
			continue
		}
		if !deeper {
			continue
		}
		switch b.Node.Kind() {
		case KindDirective, ast.KindFencedCodeBlock, ast.KindCodeBlock, ast.KindHTMLBlock:
			return parser.Continue | parser.HasChildren
		}
	}
	node.(*Directive).Closed = true
	reader.AdvanceToEOL()
	return parser.Close
}

func (directiveParser) Close(ast.Node, text.Reader, parser.Context) {}

func (directiveParser) CanInterruptParagraph() bool { return true }

func (directiveParser) CanAcceptIndentedLine() bool { return false }

// slug turns a label into an id fragment: lower-case letters and digits,
// runs of anything else as one '-'.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteRune(r)
		} else {
			dash = true
		}
	}
	return b.String()
}

// checkDirectives reports what the parser cannot see line by line: a
// directive that no `:::` closed, a tab group with something other than
// tabs in it or no tab, and two tabs of a group with one value.
func checkDirectives(doc ast.Node, pc parser.Context) {
	_ = ast.Walk(doc, func(n ast.Node, entering bool) (ast.WalkStatus, error) {
		d, ok := n.(*Directive)
		if !ok || !entering {
			return ast.WalkContinue, nil
		}
		if !d.Closed {
			addError(pc, d.Offset, ":::%s is never closed: end it with a line :::", d.Name)
		}
		if d.Name != "tabs" {
			return ast.WalkContinue, nil
		}
		values := map[string]bool{}
		tabs := 0
		for c := d.FirstChild(); c != nil; c = c.NextSibling() {
			t, ok := c.(*Directive)
			if !ok {
				// Only tabs belong here; the line of the stray block
				// is its first line's.
				off := d.Offset
				if c.Lines().Len() > 0 {
					off = c.Lines().At(0).Start
				}
				addError(pc, off, "only :::tab directives may appear directly inside :::tabs, not a %s", strings.ToLower(c.Kind().String()))
				continue
			}
			tabs++
			if t.Name != "tab" {
				continue // reported at Open
			}
			t.ID = d.ID + "-" + t.Value
			if values[t.Value] && t.Value != "" {
				addError(pc, t.Offset, ":::tab value %q is used twice in this :::tabs", t.Value)
			}
			values[t.Value] = true
		}
		if tabs == 0 {
			addError(pc, d.Offset, ":::tabs has no :::tab")
		}
		return ast.WalkContinue, nil
	})
}

// directiveRenderer renders directives as accessible tabs: a tablist of
// buttons (role=tab, aria-selected, aria-controls) and one panel per tab
// (role=tabpanel). The tablist is hidden until the page's script takes
// over, so that without JavaScript every panel shows, each under its
// label.
type directiveRenderer struct{}

func (directiveRenderer) RegisterFuncs(reg renderer.NodeRendererFuncRegisterer) {
	reg.Register(KindDirective, renderDirective)
}

func renderDirective(w util.BufWriter, source []byte, node ast.Node, entering bool) (ast.WalkStatus, error) {
	d := node.(*Directive)
	esc := html.EscapeString
	switch d.Name {
	case "tabs":
		if !entering {
			_, _ = w.WriteString("</div>\n")
			return ast.WalkContinue, nil
		}
		fmt.Fprintf(w, "<div class=\"tabs\" id=\"%s\" data-tabs>\n", esc(d.ID))
		label := ""
		if d.Label != "" {
			label = fmt.Sprintf(" aria-label=\"%s\"", esc(d.Label))
		}
		fmt.Fprintf(w, "<div class=\"tablist\" role=\"tablist\"%s hidden>\n", label)
		first := true
		for c := d.FirstChild(); c != nil; c = c.NextSibling() {
			t, ok := c.(*Directive)
			if !ok || t.Name != "tab" {
				continue
			}
			sel, idx := "false", "-1"
			if first {
				sel, idx = "true", "0"
			}
			first = false
			fmt.Fprintf(w, "<button type=\"button\" role=\"tab\" id=\"%s-tab\" aria-controls=\"%s\" aria-selected=\"%s\" tabindex=\"%s\">%s</button>\n",
				esc(t.ID), esc(t.ID), sel, idx, esc(t.Label))
		}
		_, _ = w.WriteString("</div>\n")
	case "tab":
		if !entering {
			_, _ = w.WriteString("</section>\n")
			return ast.WalkContinue, nil
		}
		fmt.Fprintf(w, "<section class=\"tabpanel\" role=\"tabpanel\" id=\"%s\" aria-labelledby=\"%s-tab\" tabindex=\"0\" data-value=\"%s\">\n",
			esc(d.ID), esc(d.ID), esc(d.Value))
		fmt.Fprintf(w, "<p class=\"tab-label\">%s</p>\n", esc(d.Label))
	default:
		// Unknown directives fail the build before rendering.
	}
	return ast.WalkContinue, nil
}

// Directives is the goldmark extension for `:::tabs` and `:::tab`.
type directivesExt struct{}

func (directivesExt) Extend(m goldmark.Markdown) {
	m.Parser().AddOptions(parser.WithBlockParsers(util.Prioritized(directiveParser{}, 50)))
	m.Renderer().AddOptions(renderer.WithNodeRenderers(util.Prioritized(directiveRenderer{}, 50)))
}

// Directives is the goldmark extension that parses and renders container
// directives (see Directive). Errors are recorded in the parser context;
// Parse reports them with their lines.
var Directives goldmark.Extender = directivesExt{}
