//go:build linux

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// writeback starts the kernel writing a file's dirty pages to disk every few tens of
// megabytes as the merge writes it, so that the fsync before the file is renamed into
// place finds little left to do: disk writes overlap computing instead of following it.
type writeback struct {
	f         *os.File
	start, at int64
}

const writebackEvery = 32 << 20

func (w *writeback) add(n int64) {
	w.at += n
	if w.at-w.start >= writebackEvery {
		// Only a hint: SYNC_FILE_RANGE_WRITE starts writeback and does not wait.
		_ = unix.SyncFileRange(int(w.f.Fd()), w.start, w.at-w.start, unix.SYNC_FILE_RANGE_WRITE)
		w.start = w.at
	}
}
