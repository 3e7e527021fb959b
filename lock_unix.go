//go:build unix

package hfmerge

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// freeSpace is the space available to this user in the filesystem holding dir.
func freeSpace(dir string) (int64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// ErrLocked marks a directory another process is using.
var ErrLocked = errors.New("in use by another hfmerge process")

// tryLockDir takes the lock of a work or staging directory without waiting: a flock on
// its .lock file, which the kernel releases when the process dies, so a directory whose
// lock can be taken belongs to no running process.
func tryLockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, ErrLocked
		}
		return nil, err
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// lockDir takes a directory's lock; it is new and ours, so it must succeed.
func lockDir(dir string) (func(), error) { return tryLockDir(dir) }

// waitLockDir waits for a directory's lock until ctx is done, polling.
func waitLockDir(ctx context.Context, dir string) (func(), error) {
	for {
		unlock, err := tryLockDir(dir)
		if !errors.Is(err, ErrLocked) {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
