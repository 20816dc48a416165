package docsite

import (
	"fmt"
	"strings"
)

// attr is one attribute of a directive (`{label="Inline" value="inline"}`)
// or of a fenced code block's info string (`go title="main.go" fragment`).
// A flag (an attribute without `=`) has an empty Value and Flag set.
type attr struct {
	Key, Value string
	Flag       bool
}

// attrs are attributes in the order written.
type attrs []attr

// get returns the value of key and whether it was given.
func (as attrs) get(key string) (string, bool) {
	for _, a := range as {
		if a.Key == key {
			return a.Value, true
		}
	}
	return "", false
}

// parseAttrs parses space-separated attributes: key="value", key='value'
// (a backslash escapes the quote and itself), key=value (no spaces) or a
// bare key (a flag). Keys are letters, digits, '-' and '_'. A repeated key,
// an empty key or value-less `key=`, and an unterminated quote are errors.
func parseAttrs(s string) (attrs, error) {
	var out attrs
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			return out, nil
		}
		start := i
		for i < len(s) && isKeyByte(s[i]) {
			i++
		}
		key := s[start:i]
		if key == "" {
			return nil, fmt.Errorf("unexpected %q at column %d: want an attribute name", s[i], i+1)
		}
		if _, dup := out.get(key); dup {
			return nil, fmt.Errorf("attribute %q given twice", key)
		}
		if i == len(s) || isSpace(s[i]) {
			out = append(out, attr{Key: key, Flag: true})
			continue
		}
		if s[i] != '=' {
			return nil, fmt.Errorf("unexpected %q after attribute name %q: want = or a space", s[i], key)
		}
		i++
		if i == len(s) || isSpace(s[i]) {
			return nil, fmt.Errorf("attribute %q has no value after =", key)
		}
		var val strings.Builder
		switch q := s[i]; q {
		case '"', '\'':
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) && (s[i+1] == q || s[i+1] == '\\') {
					val.WriteByte(s[i+1])
					i += 2
					continue
				}
				if c == q {
					closed = true
					i++
					break
				}
				val.WriteByte(c)
				i++
			}
			if !closed {
				return nil, fmt.Errorf("attribute %q: unterminated %c quote", key, q)
			}
			if i < len(s) && !isSpace(s[i]) {
				return nil, fmt.Errorf("attribute %q: want a space after its closing quote, got %q", key, s[i])
			}
		default:
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '"' || s[i] == '\'' {
					return nil, fmt.Errorf("attribute %q: a quote inside an unquoted value", key)
				}
				val.WriteByte(s[i])
				i++
			}
		}
		out = append(out, attr{Key: key, Value: val.String()})
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

func isKeyByte(c byte) bool {
	return c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// codeInfo is a fenced code block's info string, parsed: the language,
// then attributes.
type codeInfo struct {
	Lang string
	// Title is shown above the block as its file name (title="path").
	Title string
	// Fragment marks a Go block that is not compiled anywhere: a piece of
	// a program, shown for its shape (the flag `fragment`).
	Fragment bool
}

// codeAttrs are the attributes a fenced code block may carry.
var codeAttrs = map[string]bool{"title": true, "fragment": true}

// parseCodeInfo parses info, such as `go title="main.go"`. Unknown
// attributes and malformed ones are errors.
func parseCodeInfo(info string) (codeInfo, error) {
	info = strings.TrimSpace(info)
	lang, rest, _ := strings.Cut(info, " ")
	if strings.ContainsAny(lang, "=\"'{") {
		return codeInfo{}, fmt.Errorf("code block info %q: the language comes first, then attributes", info)
	}
	as, err := parseAttrs(rest)
	if err != nil {
		return codeInfo{}, fmt.Errorf("code block info %q: %w", info, err)
	}
	ci := codeInfo{Lang: lang}
	for _, a := range as {
		if !codeAttrs[a.Key] {
			return codeInfo{}, fmt.Errorf("code block info %q: unknown attribute %q (want title=\"path\" or fragment)", info, a.Key)
		}
		switch a.Key {
		case "title":
			if a.Flag || strings.TrimSpace(a.Value) == "" {
				return codeInfo{}, fmt.Errorf("code block info %q: title needs a value, such as title=\"path/file.go\"", info)
			}
			ci.Title = a.Value
		case "fragment":
			if !a.Flag {
				return codeInfo{}, fmt.Errorf("code block info %q: fragment is a flag and takes no value", info)
			}
			ci.Fragment = true
		}
	}
	return ci, nil
}
