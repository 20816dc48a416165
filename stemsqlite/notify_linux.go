//go:build linux

package stemsqlite

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"
)

// walNotifier reports writes to a database's WAL file, by any process,
// through inotify on the file's directory (the directory, so that a WAL
// file deleted and created again is still seen). It is only a hint that
// the watcher should read data_version now: an event comes when a frame is
// written, possibly before the commit is visible.
type walNotifier struct {
	f   *os.File
	ch  chan struct{}
	end chan struct{}
}

// newWALNotifier watches the WAL file of the database at path.
func newWALNotifier(path string) (*walNotifier, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := syscall.InotifyAddWatch(fd, filepath.Dir(path), syscall.IN_MODIFY|syscall.IN_CREATE|syscall.IN_MOVED_TO); err != nil {
		_ = syscall.Close(fd)
		return nil, fmt.Errorf("inotify watch of %s: %w", filepath.Dir(path), err)
	}
	// A non-blocking descriptor joins Go's poller, so Close ends a Read.
	n := &walNotifier{f: os.NewFile(uintptr(fd), "inotify"), ch: make(chan struct{}, 1), end: make(chan struct{})}
	go n.read([]byte(filepath.Base(path) + "-wal"))
	return n, nil
}

// C receives a token after writes to the WAL file (coalesced).
func (n *walNotifier) C() <-chan struct{} { return n.ch }

func (n *walNotifier) read(wal []byte) {
	defer close(n.end)
	buf := make([]byte, 64*(syscall.SizeofInotifyEvent+syscall.NAME_MAX+1))
	for {
		k, err := n.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// An unexpected failure: say "changed" so the watcher
			// looks; it also polls on its own, slowly.
			n.signal()
			return
		}
		hit := false
		for off := 0; off+syscall.SizeofInotifyEvent <= k; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&syscall.IN_Q_OVERFLOW != 0 || bytes.Equal(bytes.TrimRight(name, "\x00"), wal) {
				hit = true
			}
		}
		if hit {
			n.signal()
		}
	}
}

func (n *walNotifier) signal() {
	select {
	case n.ch <- struct{}{}:
	default:
	}
}

// Close stops the notifier.
func (n *walNotifier) Close() error {
	err := n.f.Close()
	<-n.end
	return err
}
