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

// copyAt copies n bytes of t's source, from off within the tensor, to dst at at with
// copy_file_range, which lets the kernel share or copy the blocks without passing them
// through this process; where it refuses (another filesystem type, an old kernel, an
// input that is not a file), through memory.
func copyAt(dst *os.File, at int64, t *tensor, off, n int64) error {
	src, ok := t.in[t.t.Source.File].(fdFile)
	if !ok {
		return copyBuffered(dst, at, t, off, n)
	}
	pos, out := t.t.Source.Offset+off, at
	for done := int64(0); done < n; {
		k, err := unix.CopyFileRange(int(src.Fd()), &pos, int(dst.Fd()), &out, int(min(n-done, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
				errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF) {
				return copyBuffered(dst, at+done, t, off+done, n-done)
			}
			return err
		}
		if k == 0 {
			return io.ErrUnexpectedEOF
		}
		done += int64(k)
	}
	return nil
}
