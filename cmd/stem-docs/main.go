// Command stem-docs builds stem's documentation site from .site/docs, the
// site's copies of the pages in docs/, into static HTML (package
// internal/docsite), and serves it for a local preview. Run it from the
// repository's root:
//
//	go run ./cmd/stem-docs sync    # rewrite .site/docs from docs/, keeping front matter
//	go run ./cmd/stem-docs build   # check and build into _site/
//	go run ./cmd/stem-docs serve   # build, serve on http://127.0.0.1:8000, rebuild on change
//
// A build fails, writing nothing, when a page is malformed (a directive,
// a code block's attributes, front matter), when a relative link points
// nowhere, or when a site page's body differs from its source in docs/;
// each problem is printed as file:line: message. Exit codes: 0 success,
// 1 a failed build, 64 a usage error.
//
// It is a command of its own, not a `stem docs` subcommand, so that the
// stem binary, and every program that embeds its CLI (package stemcli),
// carries neither the docs nor goldmark and chroma.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/stem-go/stem/internal/docsite"
)

const usage = `usage: stem-docs COMMAND [flags]

Commands:
  build   check the pages and build the site (-out, default _site)
  serve   build into a temporary directory and serve it (-addr, default 127.0.0.1:8000),
          rebuilding when a page changes
  sync    rewrite the site's copies (.site/docs) from docs/, keeping their front matter

Flags of every command:
  -docs DIR   the pages' sources (default docs)
  -site DIR   the site's pages (default .site/docs)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 64
		}
		return 0
	}
	cmd := args[0]
	fl := flag.NewFlagSet("stem-docs "+cmd, flag.ContinueOnError)
	fl.SetOutput(stderr)
	docs := fl.String("docs", "docs", "the pages' sources")
	site := fl.String("site", filepath.Join(".site", "docs"), "the site's pages")
	out := fl.String("out", "_site", "build: the output directory")
	addr := fl.String("addr", "127.0.0.1:8000", "serve: the address to listen on")
	if err := fl.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 64
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "stem-docs %s: unexpected argument %q\n%s", cmd, fl.Arg(0), usage)
		return 64
	}
	cfg := docsite.Config{SiteDir: *site, MirrorOf: *docs, OutDir: *out}
	switch cmd {
	case "build":
		s, err := docsite.Build(cfg)
		if err != nil {
			fmt.Fprintf(stderr, "stem-docs: build failed:\n%v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "built %d pages into %s; open %s\n", len(s.Pages), *out, filepath.Join(*out, "index.html"))
		return 0
	case "sync":
		changed, err := docsite.SyncMirror(*docs, *site)
		if err != nil {
			fmt.Fprintf(stderr, "stem-docs: %v\n", err)
			return 1
		}
		for _, f := range changed {
			fmt.Fprintf(stdout, "wrote %s\n", f)
		}
		if len(changed) == 0 {
			fmt.Fprintf(stdout, "%s is up to date with %s\n", *site, *docs)
		}
		return 0
	case "serve":
		return serve(cfg, *addr, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "stem-docs: unknown command %q\n%s", cmd, usage)
		return 64
	}
}

// serve builds the site into a temporary directory and serves it,
// rebuilding first whenever a page of cfg.SiteDir or cfg.MirrorOf changed
// since the last build; a failed build is served as its error.
func serve(cfg docsite.Config, addr string, stdout, stderr io.Writer) int {
	tmp, err := os.MkdirTemp("", "stem-docs-")
	if err != nil {
		fmt.Fprintf(stderr, "stem-docs: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	cfg.OutDir = tmp
	var (
		mu      sync.Mutex
		stamp   time.Time
		lastErr error
	)
	rebuild := func() error {
		mu.Lock()
		defer mu.Unlock()
		latest := newest(cfg.SiteDir, cfg.MirrorOf)
		if !latest.After(stamp) && !stamp.IsZero() {
			return lastErr
		}
		stamp = latest
		_, lastErr = docsite.Build(cfg)
		if lastErr != nil {
			fmt.Fprintf(stderr, "stem-docs: build failed:\n%v\n", lastErr)
		} else {
			fmt.Fprintf(stderr, "stem-docs: built %s\n", cfg.SiteDir)
		}
		return lastErr
	}
	_ = rebuild()
	files := http.FileServer(http.Dir(tmp))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := rebuild(); err != nil {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "The docs do not build:\n\n%v\n", err)
			return
		}
		files.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(stderr, "stem-docs: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "serving the docs on http://%s/ (Ctrl-C stops)\n", ln.Addr())
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "stem-docs: %v\n", err)
		return 1
	}
	return 0
}

// newest returns the latest modification time of the files of dirs.
func newest(dirs ...string) time.Time {
	var t time.Time
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if info, err := d.Info(); err == nil && info.ModTime().After(t) {
				t = info.ModTime()
			}
			return nil
		})
	}
	return t
}
