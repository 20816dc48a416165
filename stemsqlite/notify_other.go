//go:build !linux

package stemsqlite

import "errors"

// walNotifier is only available on Linux; elsewhere the watcher polls.
type walNotifier struct{}

func newWALNotifier(string) (*walNotifier, error) {
	return nil, errors.New("no WAL notifier on this platform")
}

func (*walNotifier) C() <-chan struct{} { return nil }
func (*walNotifier) Close() error       { return nil }
