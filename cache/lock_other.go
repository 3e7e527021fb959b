//go:build !unix

package cache

import (
	"context"
	"errors"
	"os"
	"time"
)

// lock creates path exclusively, as filelock's SoftFileLock does where flock is missing,
// and waits while another process holds it.
func lock(ctx context.Context, path string) (unlock func(), err error) {
	for {
		f, err := os.OpenFile(path+".soft", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o664)
		if err == nil {
			f.Close()
			return func() { os.Remove(path + ".soft") }, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tryLock cannot tell a live process's log from a dead one's without flock: recovery
// is left to platforms that have it.
func tryLock(string) (func(), error) { return nil, errLocked }
