package cache

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrPath marks a repo path, commit or etag that could make a write land outside the
// directory meant for it.
var ErrPath = errors.New("cache: unsafe path")

// checkPath refuses repo paths that are not plain relative paths: empty, absolute (POSIX,
// drive or UNC forms), with "..", "." or empty segments, backslashes or NUL, or under
// .git/ or .cache/ — the checks huggingface_hub makes, under both POSIX and Windows rules.
func checkPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("%w: %q %s", ErrPath, p, why) }
	switch {
	case p == "":
		return bad("is empty")
	case strings.ContainsAny(p, "\\\x00"):
		return bad("contains a backslash or NUL")
	case strings.HasPrefix(p, "/"):
		return bad("is absolute")
	case len(p) >= 2 && p[1] == ':':
		return bad("has a drive letter")
	}
	segs := strings.Split(p, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return bad("has an empty, . or .. segment")
		}
	}
	if segs[0] == ".git" || segs[0] == ".cache" {
		return bad("is under " + segs[0] + "/")
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
