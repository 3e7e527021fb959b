//go:build !unix

package hfmerge

import (
	"context"
	"errors"
)

func freeSpace(string) (int64, bool) { return 0, false }

// ErrLocked marks a directory another process is using.
var ErrLocked = errors.New("in use by another hfmerge process")

// Without flock, directories are not locked; a run assumes it is alone.
func tryLockDir(string) (func(), error)                   { return func() {}, nil }
func lockDir(string) (func(), error)                      { return func() {}, nil }
func waitLockDir(context.Context, string) (func(), error) { return func() {}, nil }
