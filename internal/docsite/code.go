package docsite

import (
	"bytes"
	"fmt"
	"html"
	"io"

	"github.com/alecthomas/chroma/v2"
	chromahtml "github.com/alecthomas/chroma/v2/formatters/html"
	"github.com/alecthomas/chroma/v2/lexers"
	"github.com/alecthomas/chroma/v2/styles"
	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/renderer"
	"github.com/yuin/goldmark/util"
)

// codeStyle is the chroma style of the site's code blocks.
const codeStyle = "github"

// codeFormatter writes highlighted code as <pre> with CSS classes (the
// stylesheet comes from WriteCodeCSS), so that the HTML carries no
// inline colours.
var codeFormatter = chromahtml.New(chromahtml.WithClasses(true), chromahtml.ClassPrefix("hl-"))

// WriteCodeCSS writes the stylesheet of highlighted code.
func WriteCodeCSS(w io.Writer) error {
	return codeFormatter.WriteCSS(w, styles.Get(codeStyle))
}

// codeRenderer renders fenced code blocks highlighted by chroma, in a
// figure whose caption is the block's title="..." (a file name), if any.
type codeRenderer struct{}

func (codeRenderer) RegisterFuncs(reg renderer.NodeRendererFuncRegisterer) {
	reg.Register(ast.KindFencedCodeBlock, renderCode)
}

func renderCode(w util.BufWriter, source []byte, node ast.Node, entering bool) (ast.WalkStatus, error) {
	if !entering {
		return ast.WalkSkipChildren, nil
	}
	n := node.(*ast.FencedCodeBlock)
	info := ""
	if n.Info != nil {
		info = string(n.Info.Segment.Value(source))
	}
	ci, err := parseCodeInfo(info)
	if err != nil {
		return ast.WalkStop, err // Parse reported it with its line already
	}
	var code bytes.Buffer
	for i := 0; i < n.Lines().Len(); i++ {
		seg := n.Lines().At(i)
		code.Write(seg.Value(source))
	}
	class := "code-block"
	if ci.Lang != "" {
		class += " lang-" + slug(ci.Lang)
	}
	fmt.Fprintf(w, "<figure class=\"%s\">\n", class)
	if ci.Title != "" {
		fmt.Fprintf(w, "<figcaption class=\"code-title\"><span class=\"file-name\">%s</span></figcaption>\n", html.EscapeString(ci.Title))
	}
	if err := highlight(w, ci.Lang, code.String()); err != nil {
		return ast.WalkStop, err
	}
	_, _ = w.WriteString("</figure>\n")
	return ast.WalkSkipChildren, nil
}

// highlight writes code highlighted as lang (plain text for a language
// chroma does not know).
func highlight(w io.Writer, lang, code string) error {
	var lexer chroma.Lexer
	if lang != "" {
		lexer = lexers.Get(lang)
	}
	if lexer == nil {
		lexer = lexers.Fallback
	}
	lexer = chroma.Coalesce(lexer)
	it, err := lexer.Tokenise(nil, code)
	if err != nil {
		return fmt.Errorf("highlight %s: %w", lang, err)
	}
	return codeFormatter.Format(w, styles.Get(codeStyle), it)
}

type codeBlocksExt struct{}

func (codeBlocksExt) Extend(m goldmark.Markdown) {
	m.Renderer().AddOptions(renderer.WithNodeRenderers(util.Prioritized(codeRenderer{}, 50)))
}

// codeBlocks is the goldmark extension that renders fenced code blocks.
var codeBlocks goldmark.Extender = codeBlocksExt{}
