package docsite

import (
	"errors"
	"strings"
	"testing"
)

// lines joins its arguments as the lines of a Markdown file.
func lines(ls ...string) []byte { return []byte(strings.Join(ls, "\n") + "\n") }

func mustParse(t *testing.T, src []byte) *Page {
	t.Helper()
	p, err := Parse("page.md", src)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func mustHTML(t *testing.T, p *Page) string {
	t.Helper()
	h, err := p.HTML()
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// tabs returns every tab directive of p, in order.
func tabsOf(p *Page) []*Directive {
	var out []*Directive
	for _, d := range directives(p) {
		if d.Name == "tab" {
			out = append(out, d)
		}
	}
	return out
}

func TestNestedFencesInsideTabs(t *testing.T) {
	src := lines(
		"# Page",
		":::tabs",
		`:::tab{label="Inline handler" value="inline"}`,
		"Text before.",
		"````markdown title=\"docs/example.md\"",
		"```go",
		"inner fence",
		"```",
		":::",
		"````",
		":::",
		`:::tab{label="Isolated handler"}`,
		"~~~go title=\"tasks/render.go\"",
		"func render() {}",
		":::",
		"~~~",
		"- a list item",
		"  ```sh",
		"  :::",
		"  ```",
		":::",
		":::",
		"After.",
	)
	p := mustParse(t, src)
	tabs := tabsOf(p)
	if len(tabs) != 2 || tabs[0].Value != "inline" || tabs[1].Value != "isolated-handler" {
		t.Fatalf("tabs = %+v", tabs)
	}
	want := []CodeBlock{
		{Line: 5, Lang: "markdown", Title: "docs/example.md", Code: "```go\ninner fence\n```\n:::\n", InTab: true},
		{Line: 13, Lang: "go", Title: "tasks/render.go", Code: "func render() {}\n:::\n", InTab: true},
		{Line: 18, Lang: "sh", Code: ":::\n", InTab: true},
	}
	if len(p.Blocks) != len(want) {
		t.Fatalf("blocks = %+v, want %+v", p.Blocks, want)
	}
	for i, b := range p.Blocks {
		if b != want[i] {
			t.Errorf("block %d = %+v, want %+v", i, b, want[i])
		}
	}
	h := mustHTML(t, p)
	// The paragraph after the group is outside it.
	if i, j := strings.LastIndex(h, "</div>"), strings.Index(h, "<p>After.</p>"); i < 0 || j < i {
		t.Errorf("After. is not after the tab group:\n%s", h)
	}
	if strings.Count(h, `role="tabpanel"`) != 2 || strings.Count(h, `role="tab"`) != 2 {
		t.Errorf("want 2 tabs and 2 panels:\n%s", h)
	}
}

func TestSeveralTabGroups(t *testing.T) {
	src := lines(
		":::tabs",
		`:::tab{label="One"}`,
		"first group, one",
		":::",
		`:::tab{label="Two"}`,
		"first group, two",
		":::",
		":::",
		"",
		"Between.",
		"",
		`:::tabs{label="Second group"}`,
		`:::tab{label="One"}`,
		"second group, one",
		":::",
		`:::tab{label="Three" value="three"}`,
		"second group, three",
		":::",
		`:::tab{label="Four"}`,
		"second group, four",
		":::",
		":::",
	)
	p := mustParse(t, src)
	if p.TabGroups != 2 {
		t.Errorf("TabGroups = %d, want 2", p.TabGroups)
	}
	var ids []string
	for _, d := range tabsOf(p) {
		ids = append(ids, d.ID)
	}
	if got, want := strings.Join(ids, " "), "tabs-1-one tabs-1-two tabs-2-one tabs-2-three tabs-2-four"; got != want {
		t.Errorf("tab ids = %s, want %s", got, want)
	}
	h := mustHTML(t, p)
	for _, s := range []string{
		`<div class="tabs" id="tabs-1" data-tabs>`,
		`<div class="tabs" id="tabs-2" data-tabs>`,
		`role="tablist" aria-label="Second group" hidden>`,
		`id="tabs-2-three-tab" aria-controls="tabs-2-three" aria-selected="false" tabindex="-1">Three</button>`,
		`id="tabs-2-one-tab" aria-controls="tabs-2-one" aria-selected="true" tabindex="0">One</button>`,
		`<section class="tabpanel" role="tabpanel" id="tabs-2-four" aria-labelledby="tabs-2-four-tab"`,
		`<p class="tab-label">Four</p>`,
	} {
		if !strings.Contains(h, s) {
			t.Errorf("HTML lacks %s:\n%s", s, h)
		}
	}
	if i, j := strings.Index(h, "<p>Between.</p>"), strings.Index(h, `id="tabs-2"`); i < 0 || j < i {
		t.Errorf("Between. is not between the groups:\n%s", h)
	}
}

func TestCodeTitles(t *testing.T) {
	src := lines(
		"```go title=\"examples/main.go\"",
		"package main",
		"```",
		"",
		"```go fragment",
		"x := 1",
		"```",
		"",
		"```",
		"no info",
		"```",
		"",
		":::tabs",
		`:::tab{label="A"}`,
		"```console title='shell session'",
		"$ stem worker ping",
		"```",
		":::",
		":::",
	)
	p := mustParse(t, src)
	want := []CodeBlock{
		{Line: 1, Lang: "go", Title: "examples/main.go", Code: "package main\n"},
		{Line: 5, Lang: "go", Fragment: true, Code: "x := 1\n"},
		{Line: 9, Code: "no info\n"},
		{Line: 15, Lang: "console", Title: "shell session", Code: "$ stem worker ping\n", InTab: true},
	}
	if len(p.Blocks) != len(want) {
		t.Fatalf("blocks = %+v", p.Blocks)
	}
	for i := range want {
		if p.Blocks[i] != want[i] {
			t.Errorf("block %d = %+v, want %+v", i, p.Blocks[i], want[i])
		}
	}
	h := mustHTML(t, p)
	for _, s := range []string{
		`<figcaption class="code-title"><span class="file-name">examples/main.go</span></figcaption>`,
		`<figcaption class="code-title"><span class="file-name">shell session</span></figcaption>`,
		`<span class="hl-kn">package</span>`, // highlighted by chroma
	} {
		if !strings.Contains(h, s) {
			t.Errorf("HTML lacks %s:\n%s", s, h)
		}
	}
	if n := strings.Count(h, "<figcaption"); n != 2 {
		t.Errorf("%d captions, want 2 (blocks without title have none)", n)
	}
}

func TestFrontMatter(t *testing.T) {
	src := lines("---", "title: Worker control", "order: 3", "---", "# Heading", "", ":::tab{}", ":::")
	p, err := Parse("site.md", src)
	if p.Meta.Title != "Worker control" || p.Meta.Order != 3 || !p.Meta.HasOrder {
		t.Errorf("meta = %+v", p.Meta)
	}
	// Lines count from the top of the file, front matter included.
	assertErrors(t, err, []wantErr{{7, ":::tab outside :::tabs"}, {7, ":::tab without a label"}})
	p = mustParse(t, lines("# The *title*", "text"))
	if p.Meta.Title != "The title" {
		t.Errorf("title from heading = %q", p.Meta.Title)
	}
}

type wantErr struct {
	line int
	msg  string
}

func assertErrors(t *testing.T, err error, want []wantErr) {
	t.Helper()
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v (%T), want Errors", err, err)
	}
	if len(es) != len(want) {
		t.Fatalf("errors:\n%v\nwant %d: %+v", err, len(want), want)
	}
	for i, w := range want {
		e := es[i]
		if e.Line != w.line || !strings.Contains(e.Msg, w.msg) || e.File == "" {
			t.Errorf("error %d = %s, want line %d containing %q", i, e, w.line, w.msg)
		}
		if !strings.HasPrefix(e.Error(), e.File+":") {
			t.Errorf("error %q does not start with the file", e.Error())
		}
	}
}

func TestMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  []byte
		want []wantErr
	}{
		{"unclosed tabs", lines("# T", ":::tabs", `:::tab{label="A"}`, "a", ":::"),
			[]wantErr{{2, ":::tabs is never closed"}}},
		{"unclosed tab at end", lines(":::tabs", `:::tab{label="A"}`, "a"),
			[]wantErr{{1, ":::tabs is never closed"}, {2, ":::tab is never closed"}}},
		{"unclosed tabs with a code block open", lines(":::tabs", `:::tab{label="A"}`, "```go", ":::", ":::"),
			[]wantErr{{1, ":::tabs is never closed"}, {2, ":::tab is never closed"}}},
		{"tab outside tabs", lines("text", "", `:::tab{label="A"}`, "a", ":::"),
			[]wantErr{{3, ":::tab outside :::tabs"}}},
		{"tab inside a tab", lines(":::tabs", `:::tab{label="A"}`, "a", `:::tab{label="B"}`, "b", ":::", ":::", ":::"),
			[]wantErr{{4, "inside another :::tab"}}},
		{"missing label", lines(":::tabs", ":::tab", "a", ":::", ":::"),
			[]wantErr{{2, ":::tab without a label"}}},
		{"empty label", lines(":::tabs", `:::tab{label="  " value="x"}`, "a", ":::", ":::"),
			[]wantErr{{2, ":::tab without a label"}}},
		{"label without value", lines(":::tabs", `:::tab{label}`, "a", ":::", ":::"),
			[]wantErr{{2, `attribute "label" needs a value`}, {2, ":::tab without a label"}}},
		{"unknown attribute", lines(":::tabs", `:::tab{label="A" colour="red"}`, "a", ":::", ":::"),
			[]wantErr{{2, `unknown attribute "colour"`}}},
		{"unterminated quote", lines(":::tabs", `:::tab{label="A}`, "a", ":::", ":::"),
			[]wantErr{{2, "unterminated"}, {2, ":::tab without a label"}}},
		{"malformed line", lines(":::tabs", `:::tab label="A"`, "a", ":::", ":::"),
			[]wantErr{{2, "malformed directive"}}},
		{"unknown directive", lines(":::note", "a", ":::"),
			[]wantErr{{1, "unknown directive :::note"}}},
		{"stray closer", lines("a", "", ":::", "b"),
			[]wantErr{{3, "::: closes no directive"}}},
		{"text directly in tabs", lines(":::tabs", "stray text", `:::tab{label="A"}`, "a", ":::", ":::"),
			[]wantErr{{2, "only :::tab directives may appear directly inside :::tabs"}}},
		{"tabs without tab", lines(":::tabs", ":::"),
			[]wantErr{{1, ":::tabs has no :::tab"}}},
		{"duplicate value", lines(":::tabs", `:::tab{label="A" value="x"}`, ":::", `:::tab{label="B" value="x"}`, ":::", ":::"),
			[]wantErr{{4, `value "x" is used twice`}}},
		{"bad value", lines(":::tabs", `:::tab{label="A" value="Not OK"}`, ":::", ":::"),
			[]wantErr{{2, `value "Not OK"`}}},
		{"unknown code attribute", lines("para", "", "```go titel=\"x.go\"", "x", "```"),
			[]wantErr{{3, `unknown attribute "titel"`}}},
		{"empty code title", lines("```go title=\"\"", "x", "```"),
			[]wantErr{{1, "title needs a value"}}},
		{"bad front matter", lines("---", "colour: red", "---", "# T"),
			[]wantErr{{2, `unknown key "colour"`}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("docs/page.md", tc.src)
			assertErrors(t, err, tc.want)
		})
	}
}

func TestParseAttrs(t *testing.T) {
	as, err := parseAttrs(`label="Say \"hi\"" value='v\'1' flag key=bare`)
	if err != nil {
		t.Fatal(err)
	}
	want := attrs{{Key: "label", Value: `Say "hi"`}, {Key: "value", Value: "v'1"}, {Key: "flag", Flag: true}, {Key: "key", Value: "bare"}}
	if len(as) != len(want) {
		t.Fatalf("attrs = %+v", as)
	}
	for i := range want {
		if as[i] != want[i] {
			t.Errorf("attr %d = %+v, want %+v", i, as[i], want[i])
		}
	}
	for _, bad := range []string{`a="x`, `a=`, `=x`, `a="x"b`, `a a`, `a=x"y`} {
		if _, err := parseAttrs(bad); err == nil {
			t.Errorf("parseAttrs(%q) succeeded", bad)
		}
	}
}
