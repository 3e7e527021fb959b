//go:build linux

package merge

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// fdFile is an input the kernel can copy from.
type fdFile interface{ Fd() uintptr }

func canCopyRange(t *tensor) bool {
	_, ok := t.in[t.t.Source.File].(fdFile)
	return ok
}

// copyRange copies n bytes of t's source, from off within the tensor, to dst's current
// position with copy_file_range, falling back to read and write where the kernel
// refuses (another filesystem type, an old kernel).
func copyRange(dst *os.File, t *tensor, off, n int64) (int64, error) {
	src := t.in[t.t.Source.File].(fdFile)
	pos := t.t.Source.Offset + off
	var done int64
	for done < n {
		k, err := unix.CopyFileRange(int(src.Fd()), &pos, int(dst.Fd()), nil, int(min(n-done, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF) {
				m, err := copyBuffered(dst, t, off+done, n-done)
				return done + m, err
			}
			return done, err
		}
		if k == 0 {
			return done, io.ErrUnexpectedEOF
		}
		done += int64(k)
	}
	return done, nil
}
