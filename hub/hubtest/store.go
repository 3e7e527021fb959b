package hubtest

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Repo kinds, as they appear in API paths (/api/{kind}s/...).
const (
	KindModel   = "model"
	KindDataset = "dataset"
	KindSpace   = "space"
)

// repoKey names a repo: its kind and its "owner/name" id.
type repoKey struct{ kind, id string }

func (k repoKey) String() string {
	if k.kind == KindModel {
		return k.id
	}
	return k.kind + "s/" + k.id
}

// parseRepo reads a repo designation as tests write it: "owner/name" for a model,
// "datasets/owner/name" or "spaces/owner/name" for the other kinds, like the URL
// prefixes the Hub uses.
func parseRepo(s string) (repoKey, error) {
	kind := KindModel
	switch {
	case strings.HasPrefix(s, "datasets/"):
		kind, s = KindDataset, strings.TrimPrefix(s, "datasets/")
	case strings.HasPrefix(s, "spaces/"):
		kind, s = KindSpace, strings.TrimPrefix(s, "spaces/")
	case strings.HasPrefix(s, "models/"):
		s = strings.TrimPrefix(s, "models/")
	}
	owner, name, ok := strings.Cut(s, "/")
	if !ok || !validName(owner) || !validName(name) {
		return repoKey{}, fmt.Errorf("hubtest: invalid repo id %q (want owner/name)", s)
	}
	return repoKey{kind, s}, nil
}

// validName accepts what the Hub accepts in a namespace or repo name, roughly:
// letters, digits, '-', '_', '.', no leading '.', no "--" (reserved by the cache layout).
func validName(s string) bool {
	if s == "" || len(s) > 96 || s[0] == '.' || strings.Contains(s, "--") || strings.Contains(s, "..") {
		return false
	}
	for _, c := range s {
		ok := c == '-' || c == '_' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !ok {
			return false
		}
	}
	return true
}

// fileEntry is one file of a commit. Entries are immutable once stored, so commits
// share them.
type fileEntry struct {
	Size    int64  `json:"size"`
	BlobOID string `json:"blobOid"`          // git sha1 of what git stores: the content, or the LFS pointer
	LFSOID  string `json:"lfsOid,omitempty"` // sha256 of the content; "" for a regular file
	data    []byte // content of a regular file (LFS content lives in Hub.objects)
}

func (e *fileEntry) isLFS() bool { return e.LFSOID != "" }

// lfsPointer is the git blob that stands for an LFS file (git-lfs spec v1).
func lfsPointer(oid string, size int64) []byte {
	return []byte("version https://git-lfs.github.com/spec/v1\noid sha256:" + oid + "\nsize " + strconv.FormatInt(size, 10) + "\n")
}

func (e *fileEntry) pointer() []byte { return lfsPointer(e.LFSOID, e.Size) }

func regularEntry(data []byte) *fileEntry {
	return &fileEntry{Size: int64(len(data)), BlobOID: gitBlobSHA1(data), data: data}
}

func lfsEntry(oid string, size int64) *fileEntry {
	return &fileEntry{Size: size, BlobOID: gitBlobSHA1(lfsPointer(oid, size)), LFSOID: oid}
}

// gitBlobSHA1 is `git hash-object`: sha1 of "blob <len>\0" + content.
func gitBlobSHA1(data []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(data))
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

func sha256Hex(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// commit is one commit. Its id looks like a git commit id (40 hex) and is derived
// from its content, but it is not a real git object: nothing here speaks git.
type commit struct {
	ID          string                `json:"id"`
	Parent      string                `json:"parent,omitempty"`
	Title       string                `json:"title"`
	Description string                `json:"description,omitempty"`
	Author      string                `json:"author,omitempty"`
	Date        time.Time             `json:"date"`
	Files       map[string]*fileEntry `json:"files"`

	dirOIDs map[string]string // lazily computed tree ids, "" is the root
}

func newCommitID(seq int, parent, title string, date time.Time, files map[string]*fileEntry) string {
	h := sha1.New()
	fmt.Fprintf(h, "seq %d\nparent %s\ndate %d\ntitle %s\n", seq, parent, date.UnixNano(), title)
	for _, p := range sortedKeys(files) {
		fmt.Fprintf(h, "%s %s\n", files[p].BlobOID, p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// treeOID returns a directory's id at this commit: sha1 over its children's names and
// ids, so it changes exactly when something under it changes. "" if dir is absent.
func (c *commit) treeOID(dir string) string {
	if c.dirOIDs == nil {
		c.dirOIDs = c.computeDirOIDs()
	}
	return c.dirOIDs[dir]
}

func (c *commit) computeDirOIDs() map[string]string {
	children := map[string][]string{} // dir -> "name oid" lines
	dirs := map[string]bool{"": true}
	for p := range c.Files {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	// Deepest directories first, so a parent sees its children's ids.
	order := sortedKeys(dirs)
	slices.SortFunc(order, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	out := map[string]string{}
	for p, e := range c.Files {
		d := parentDir(p)
		children[d] = append(children[d], "100644 "+path.Base(p)+" "+e.BlobOID)
	}
	for _, d := range order {
		lines := children[d]
		slices.Sort(lines)
		sum := sha1.Sum([]byte(strings.Join(lines, "\n")))
		out[d] = hex.EncodeToString(sum[:])
		if d != "" {
			pd := parentDir(d)
			children[pd] = append(children[pd], "40000 "+path.Base(d)+" "+out[d])
		}
	}
	if len(c.Files) == 0 {
		out[""] = hex.EncodeToString(sha1.New().Sum(nil))
	}
	return out
}

func parentDir(p string) string {
	d := path.Dir(p)
	if d == "." {
		return ""
	}
	return d
}

// oidAt returns the id of a file or directory at this commit, "" if absent.
func (c *commit) oidAt(p string) string {
	if e, ok := c.Files[p]; ok {
		return e.BlobOID
	}
	return c.treeOID(p)
}

// repo is one repository and its whole history.
type repo struct {
	Kind     string             `json:"kind"`
	ID       string             `json:"id"`
	Private  bool               `json:"private"`
	Gated    bool               `json:"gated"`
	Created  time.Time          `json:"created"`
	Branches map[string]string  `json:"branches"`
	Tags     map[string]string  `json:"tags"`
	PRs      map[int]string     `json:"prs"` // refs/pr/N -> commit
	NextPR   int                `json:"nextPr"`
	Commits  map[string]*commit `json:"commits"`
	Granted  map[string]bool    `json:"granted"`  // users allowed through the gate
	ObjectID string             `json:"objectId"` // the 24-hex "_id" the API reports
}

func (r *repo) key() repoKey    { return repoKey{r.Kind, r.ID} }
func (r *repo) owner() string   { o, _, _ := strings.Cut(r.ID, "/"); return o }
func (r *repo) urlPath() string { return r.key().String() }

// resolve maps a revision (HEAD, branch, tag, refs/heads/X, refs/tags/X, refs/pr/N or
// a full 40-hex commit id) to a commit, and says which ref it is when it is one.
func (r *repo) resolve(rev string) (*commit, bool) {
	if id, ok := r.refTarget(rev); ok {
		return r.Commits[id], true
	}
	if c, ok := r.Commits[strings.ToLower(rev)]; ok && len(rev) == 40 {
		return c, true
	}
	return nil, false
}

// refTarget returns the commit a ref points to. "HEAD" is the default branch (main):
// the JavaScript client's modelInfo asks for /revision/HEAD.
func (r *repo) refTarget(rev string) (string, bool) {
	if rev == "HEAD" {
		rev = "main"
	}
	if id, ok := r.Branches[strings.TrimPrefix(rev, "refs/heads/")]; ok {
		return id, true
	}
	if id, ok := r.Tags[strings.TrimPrefix(rev, "refs/tags/")]; ok {
		return id, true
	}
	if n, ok := prNumber(rev); ok {
		id, ok := r.PRs[n]
		return id, ok
	}
	return "", false
}

func prNumber(rev string) (int, bool) {
	s, ok := strings.CutPrefix(rev, "refs/pr/")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n > 0
}

// history returns the commits reachable from c, newest first.
func (r *repo) history(c *commit) []*commit {
	var out []*commit
	for c != nil {
		out = append(out, c)
		c = r.Commits[c.Parent]
	}
	return out
}

// lastCommit returns the newest commit, going back from c, that changed p.
func (r *repo) lastCommit(c *commit, p string) *commit {
	oid := c.oidAt(p)
	for {
		parent := r.Commits[c.Parent]
		if parent == nil || parent.oidAt(p) != oid {
			return c
		}
		c = parent
	}
}

// defaultGitattributes is the start of the file the Hub writes into every new repo;
// it is what makes *.safetensors and friends LFS files.
const defaultGitattributes = `*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
`

// attrPatterns returns the patterns of a .gitattributes text that have filter=lfs.
func attrPatterns(text string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && slices.Contains(f[1:], "filter=lfs") {
			out = append(out, f[0])
		}
	}
	return out
}

// ignorePatterns returns the patterns of a .gitignore text.
func ignorePatterns(text string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "!") {
			out = append(out, line)
		}
	}
	return out
}

// matchAny is a small subset of gitattributes/gitignore matching: a pattern without a
// slash matches the base name, one with a slash matches the whole path (path.Match
// syntax), and "dir/" matches everything under dir.
func matchAny(patterns []string, p string) bool {
	for _, pat := range patterns {
		pat = strings.TrimPrefix(pat, "/")
		if d, ok := strings.CutSuffix(pat, "/"); ok {
			if strings.HasPrefix(p, d+"/") || strings.Contains(p, "/"+d+"/") {
				return true
			}
			continue
		}
		target := p
		if !strings.Contains(pat, "/") {
			target = path.Base(p)
		}
		if ok, _ := path.Match(pat, target); ok {
			return true
		}
	}
	return false
}

// cleanRepoPath normalizes a path inside a repo as the commit endpoint does: leading
// "/" and "./" are dropped; "..", empty components and .git are refused.
func cleanRepoPath(p string) (string, error) {
	p = strings.TrimPrefix(p, "/")
	for strings.HasPrefix(p, "./") {
		p = strings.TrimPrefix(p, "./")
	}
	if p == "" {
		return "", fmt.Errorf("empty path")
	}
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." || part == ".git" {
			return "", fmt.Errorf("invalid path %q", p)
		}
	}
	return p, nil
}
