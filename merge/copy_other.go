//go:build !linux

package merge

import "os"

func copyAt(dst *os.File, at int64, t *tensor, off, n int64) error {
	return copyBuffered(dst, at, t, off, n)
}
