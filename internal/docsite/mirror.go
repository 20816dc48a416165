package docsite

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The site's pages (.site/docs) are mirrored from the repository's
// (docs): a page of the site is front matter, then exactly the source
// page's bytes. CheckMirror finds the pages that drifted, and SyncMirror
// rewrites the site's copies.

// mirrorPairs returns the *.md names of src and of site, sorted.
func mirrorPairs(src, site string) (srcNames, siteNames []string, err error) {
	list := func(dir string) ([]string, error) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("docs mirror: %w", err)
		}
		var out []string
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".md") {
				out = append(out, e.Name())
			}
		}
		sort.Strings(out)
		return out, nil
	}
	if srcNames, err = list(src); err != nil {
		return nil, nil, err
	}
	siteNames, err = list(site)
	return srcNames, siteNames, err
}

// CheckMirror reports, as Errors, every page of src (docs) whose copy in
// site (.site/docs) is missing or has another body, at the first line
// that differs, and every page of site with no source.
func CheckMirror(src, site string) error {
	srcNames, siteNames, err := mirrorPairs(src, site)
	if err != nil {
		return err
	}
	const fix = "; run `go run ./cmd/stem-docs sync` to rewrite the site's copies"
	var errs Errors
	inSrc := map[string]bool{}
	for _, name := range srcNames {
		inSrc[name] = true
		want, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return fmt.Errorf("docs mirror: %w", err)
		}
		copyFile := filepath.Join(site, name)
		got, err := os.ReadFile(copyFile)
		if os.IsNotExist(err) {
			errs = append(errs, &Error{filepath.Join(src, name), 1, "has no copy " + copyFile + fix})
			continue
		} else if err != nil {
			return fmt.Errorf("docs mirror: %w", err)
		}
		front, body, _ := SplitFrontMatter(got)
		if bytes.Equal(body, want) {
			continue
		}
		offset := 0
		if front != nil {
			offset = len(front) + 2
		}
		line := firstDiffLine(body, want)
		errs = append(errs, &Error{copyFile, line + offset, fmt.Sprintf("differs from %s at its line %d%s", filepath.Join(src, name), line, fix)})
	}
	for _, name := range siteNames {
		if !inSrc[name] {
			errs = append(errs, &Error{filepath.Join(site, name), 1, "has no source in " + src + " (a site page mirrors a page of " + src + ")"})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// firstDiffLine returns the first line (from 1) where a and b differ.
func firstDiffLine(a, b []byte) int {
	la, lb := strings.SplitAfter(string(a), "\n"), strings.SplitAfter(string(b), "\n")
	for i := range max(len(la), len(lb)) {
		if i >= len(la) || i >= len(lb) || la[i] != lb[i] {
			return i + 1
		}
	}
	return 1
}

// SyncMirror writes each page of src to site, after the front matter the
// site's copy already has (a new copy gets its title from the page's
// first heading), and returns the files it changed. It removes nothing:
// CheckMirror reports a site page without a source.
func SyncMirror(src, site string) ([]string, error) {
	srcNames, _, err := mirrorPairs(src, site)
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, name := range srcNames {
		body, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return nil, fmt.Errorf("docs mirror: %w", err)
		}
		copyFile := filepath.Join(site, name)
		old, err := os.ReadFile(copyFile)
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("docs mirror: %w", err)
		}
		front, _, ok := SplitFrontMatter(old)
		if !ok {
			p, _ := Parse(name, body) // only for its title; errors show at build
			front = []string{"title: " + p.Meta.Title}
		}
		var out bytes.Buffer
		out.WriteString("---\n")
		for _, l := range front {
			out.WriteString(l + "\n")
		}
		out.WriteString("---\n")
		out.Write(body)
		if bytes.Equal(out.Bytes(), old) {
			continue
		}
		if err := os.WriteFile(copyFile, out.Bytes(), 0o644); err != nil {
			return nil, fmt.Errorf("docs mirror: %w", err)
		}
		changed = append(changed, copyFile)
	}
	return changed, nil
}
