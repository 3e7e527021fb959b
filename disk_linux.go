//go:build linux

package hfmerge

import (
	"os"

	"golang.org/x/sys/unix"
)

// fallocate reserves n bytes for f. Filesystems that cannot are left to allocate as
// they write: only a full disk or quota is an error.
func fallocate(f *os.File, n int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, n)
	if err == unix.ENOSPC || err == unix.EDQUOT {
		return err
	}
	return nil // EOPNOTSUPP, ENOSYS, EINVAL: the filesystem allocates as it writes
}

// writeback starts the kernel writing a file's dirty pages to disk every few tens of
// megabytes as the merge writes it, so that the fsync before the file is renamed into
// place finds little left to do: disk writes overlap computing instead of following it.
// Starting writeback can block while the disk's queue is full, so a goroutine of its
// own does it, and the merge never waits for it.
type writeback struct {
	pending int64
	kick    chan struct{}
	done    chan struct{}
}

const writebackEvery = 32 << 20

func startWriteback(f *os.File) *writeback {
	w := &writeback{kick: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for range w.kick {
			// Only a hint: SYNC_FILE_RANGE_WRITE starts writeback of the whole file's
			// dirty pages and does not wait for it.
			_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
		}
	}()
	return w
}

// add counts n more bytes written.
func (w *writeback) add(n int64) {
	w.pending += n
	if w.pending >= writebackEvery {
		w.pending = 0
		select {
		case w.kick <- struct{}{}:
		default: // a start is pending already
		}
	}
}

// stop waits for the goroutine to finish; call it before the file is closed.
func (w *writeback) stop() {
	close(w.kick)
	<-w.done
}
