// Package docsite builds stem's documentation site: the Markdown pages of
// .site/docs (mirrored from docs/, see Mirror) rendered as static HTML
// with a sidebar, highlighted code and accessible tabs.
//
// Pages are CommonMark with tables, plus container directives (an
// extension of goldmark of our own, see Directive) that show variants of
// an example side by side:
//
//	:::tabs
//	:::tab{label="Inline handler" value="inline"}
//	```go title="examples/workercontrol/tasks/report.go"
//	...
//	```
//	:::
//	:::tab{label="Isolated handler"}
//	...
//	:::
//	:::
//
// A fenced code block's info string is a language, then attributes:
// title="path" shows the path above the block as its file name, and the
// flag fragment marks a Go block that is not compiled anywhere.
//
// Everything that can be wrong in a page fails the build with the file and
// line: a malformed, unknown or unclosed directive, a :::tab outside
// :::tabs or without a label, an unknown code block attribute, and a
// relative link to a page, file or heading that does not exist.
//
// The package is a build tool (cmd/stem-docs); nothing in stem's runtime
// imports it.
package docsite
