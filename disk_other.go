//go:build !linux

package hfmerge

import "os"

// fallocate does nothing where there is none; the filesystem allocates as it writes.
func fallocate(*os.File, int64) error { return nil }

// writeback is a no-op where the kernel offers no way to start writeback early.
type writeback struct{}

func startWriteback(*os.File) *writeback { return &writeback{} }

func (w *writeback) add(int64) {}

func (w *writeback) stop() {}
