package hub

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Repo is a repository on the Hub.
type Repo struct {
	Type string // "model", "dataset" or "space"
	ID   string // owner/name
}

var idPart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ParseRepo reads "owner/name", "owner/name@revision", or with a "datasets/" or
// "spaces/" prefix. The revision is "" when none is given.
func ParseRepo(s string) (Repo, string, error) {
	r := Repo{Type: "model"}
	id, rev, _ := strings.Cut(s, "@")
	for _, t := range []string{"model", "dataset", "space"} {
		if rest, ok := strings.CutPrefix(id, t+"s/"); ok && strings.Count(rest, "/") == 1 {
			r.Type, id = t, rest
		}
	}
	owner, name, ok := strings.Cut(id, "/")
	if !ok || !idPart.MatchString(owner) || !idPart.MatchString(name) || strings.Contains(id, "--") || strings.Contains(id, "..") {
		return Repo{}, "", fmt.Errorf("%q is not a repo id of the form owner/name", s)
	}
	r.ID = id
	if strings.Contains(s, "@") && (rev == "" || strings.ContainsAny(rev, " \\") || strings.Contains(rev, "..")) {
		return Repo{}, "", fmt.Errorf("%q has an invalid revision", s)
	}
	return r, rev, nil
}

func (r Repo) String() string {
	if r.Type == "model" || r.Type == "" {
		return r.ID
	}
	return r.Type + "s/" + r.ID
}

// CacheName is the repo's folder in the HF cache: models--owner--name.
func (r Repo) CacheName() string {
	t := r.Type
	if t == "" {
		t = "model"
	}
	return t + "s--" + strings.ReplaceAll(r.ID, "/", "--")
}

// apiPath is /api/{type}s/{id}.
func (r Repo) apiPath() string {
	t := r.Type
	if t == "" {
		t = "model"
	}
	return "/api/" + t + "s/" + r.ID
}

// filePrefix is the path prefix of resolve URLs: "" for models, "datasets/" and so on.
func (r Repo) filePrefix() string {
	if r.Type == "model" || r.Type == "" {
		return ""
	}
	return r.Type + "s/"
}

// escapeRev percent-encodes a revision with no safe characters: refs/pr/1 becomes
// refs%2Fpr%2F1.
func escapeRev(rev string) string {
	if rev == "" {
		rev = "main"
	}
	return url.PathEscape(rev)
}

// escapePath percent-encodes a file path, keeping its slashes.
func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// ValidPath refuses repo paths that are not plain relative paths: empty, absolute
// (POSIX, drive or UNC), with "..", "." or empty segments, backslashes or NUL, or under
// .git/ or .cache/ — the checks huggingface_hub makes before a path touches the disk.
func ValidPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("%w: %q %s", ErrBadPath, p, why) }
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
