package cache

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hfmerge/hfmerge/hub"
)

// ErrPath marks a repo path, commit or etag that could make a write land outside the
// directory meant for it.
var ErrPath = errors.New("cache: unsafe path")

// checkPath refuses repo paths that are not plain relative paths, with the checks
// huggingface_hub makes (hub.ValidPath).
func checkPath(p string) error {
	if err := hub.ValidPath(p); err != nil {
		return fmt.Errorf("%w: %v", ErrPath, err)
	}
	return nil
}

// checkHex refuses a commit or etag that is not a lowercase hex string of the given
// lengths: both become file names.
func checkHex(what, s string, lengths ...int) error {
	ok := false
	for _, n := range lengths {
		ok = ok || len(s) == n
	}
	for i := 0; ok && i < len(s); i++ {
		c := s[i]
		ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')
	}
	if !ok {
		return fmt.Errorf("%w: %s %q is not a hex digest", ErrPath, what, s)
	}
	return nil
}

// within joins base and a checked relative path and proves the result is inside base.
func within(base, rel string) (string, error) {
	p := filepath.Join(base, filepath.FromSlash(rel))
	r, err := filepath.Rel(base, p)
	if err != nil || r == "." || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) || filepath.IsAbs(r) {
		return "", fmt.Errorf("%w: %q leaves %s", ErrPath, rel, base)
	}
	return p, nil
}
