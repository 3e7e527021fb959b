package hubtest

import (
	"fmt"
	"slices"
	"time"
)

// SeedOption configures CreateRepo and Seed.
type SeedOption func(*seedOpts)

type seedOpts struct {
	private, gated bool
	branch         string
	message        string
	lfs, regular   []string
	tag            string
}

// Private makes a repo created by CreateRepo or Seed private.
func Private() SeedOption { return func(o *seedOpts) { o.private = true } }

// Gated makes a repo created by CreateRepo or Seed gated: listings stay public, file
// contents need the owner, a member or a user granted access (GrantAccess).
func Gated() SeedOption { return func(o *seedOpts) { o.gated = true } }

// OnBranch commits to branch (created from main's head if it does not exist).
func OnBranch(branch string) SeedOption { return func(o *seedOpts) { o.branch = branch } }

// Message sets the commit title.
func Message(title string) SeedOption { return func(o *seedOpts) { o.message = title } }

// AsLFS stores these paths as LFS files whatever their size.
func AsLFS(paths ...string) SeedOption { return func(o *seedOpts) { o.lfs = append(o.lfs, paths...) } }

// AsRegular stores these paths as regular git files whatever their size or name.
func AsRegular(paths ...string) SeedOption {
	return func(o *seedOpts) { o.regular = append(o.regular, paths...) }
}

// WithTag tags the new commit.
func WithTag(tag string) SeedOption { return func(o *seedOpts) { o.tag = tag } }

// CreateRepo creates an empty repo ("owner/name", "datasets/owner/name" or
// "spaces/owner/name") with the Hub's initial commit (a .gitattributes). It fails if
// the repo exists.
func (h *Hub) CreateRepo(id string, opts ...SeedOption) error {
	k, err := parseRepo(id)
	if err != nil {
		return err
	}
	var o seedOpts
	for _, f := range opts {
		f(&o)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, err := h.createRepoLocked(k, o.private, "", nil)
	if err != nil {
		return fmt.Errorf("hubtest: create %s: %w", id, err)
	}
	rp.Gated = o.gated
	return h.persistLocked()
}

// Seed commits files to a repo, creating the repo first if needed (with Private and
// Gated applied), and returns the new commit id. A file is stored in LFS when AsLFS
// names it, or (unless AsRegular names it) when its size reaches the LFS threshold or
// the repo's .gitattributes marks it (*.safetensors, *.bin, ...).
func (h *Hub) Seed(id string, files map[string][]byte, opts ...SeedOption) (string, error) {
	k, err := parseRepo(id)
	if err != nil {
		return "", err
	}
	o := seedOpts{branch: "main", message: "seed"}
	for _, f := range opts {
		f(&o)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	rp := h.repos[k]
	if rp == nil {
		if rp, err = h.createRepoLocked(k, o.private, "", nil); err != nil {
			return "", fmt.Errorf("hubtest: seed %s: %w", id, err)
		}
		rp.Gated = o.gated
	}
	if _, ok := rp.Branches[o.branch]; !ok {
		rp.Branches[o.branch] = rp.Branches["main"]
	}
	head := rp.Commits[rp.Branches[o.branch]]
	attrs := fileText(head, ".gitattributes", nil)
	if d, ok := files[".gitattributes"]; ok {
		attrs = string(d)
	}
	var ops []op
	for _, p := range sortedKeys(files) {
		data := files[p]
		lfs := slices.Contains(o.lfs, p) ||
			(!slices.Contains(o.regular, p) && (int64(len(data)) >= h.cfg.lfsThreshold || matchAny(attrPatterns(attrs), p)))
		if !lfs {
			ops = append(ops, op{kind: "file", path: p, data: data})
			continue
		}
		oid := sha256Hex(data)
		if _, ok := h.objects[oid]; !ok {
			if err := h.persistObjectLocked(oid, data); err != nil {
				return "", err
			}
			h.objects[oid] = data
		}
		ops = append(ops, op{kind: "lfsFile", path: p, oid: oid, size: int64(len(data))})
	}
	// Seeding bypasses the inline size rule: tests may want big regular files.
	cm, _, err := h.commitLocked(rp, commitReq{ref: o.branch, title: o.message, ops: ops, anySize: true})
	if err != nil {
		return "", fmt.Errorf("hubtest: seed %s: %w", id, err)
	}
	if o.tag != "" {
		rp.Tags[o.tag] = cm.ID
	}
	return cm.ID, h.persistLocked()
}

// GrantAccess lets user download the files of a gated repo.
func (h *Hub) GrantAccess(id, user string) error {
	return h.withRepo(id, func(rp *repo) error {
		rp.Granted[user] = true
		return h.persistLocked()
	})
}

func (h *Hub) withRepo(id string, f func(rp *repo) error) error {
	k, err := parseRepo(id)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	rp := h.repos[k]
	if rp == nil {
		return fmt.Errorf("hubtest: no repo %s", id)
	}
	return f(rp)
}

// FileInfo describes a file at a revision.
type FileInfo struct {
	Path   string
	Size   int64
	OID    string // git blob sha1 (of the pointer for LFS files)
	LFS    bool
	SHA256 string // content sha256 when LFS
}

// CommitInfo describes a commit.
type CommitInfo struct {
	ID, Parent, Title, Description, Author string
	Date                                   time.Time
}

// Head returns the commit a ref (branch, tag, refs/pr/N) points to.
func (h *Hub) Head(id, ref string) (string, bool) {
	var out string
	err := h.withRepo(id, func(rp *repo) error {
		t, ok := rp.refTarget(ref)
		if !ok {
			return fmt.Errorf("no ref")
		}
		out = t
		return nil
	})
	return out, err == nil
}

// atRev runs f on the commit rev resolves to.
func (h *Hub) atRev(id, rev string, f func(rp *repo, cm *commit) error) error {
	return h.withRepo(id, func(rp *repo) error {
		cm, ok := rp.resolve(rev)
		if !ok {
			return fmt.Errorf("hubtest: %s: no revision %s", id, rev)
		}
		return f(rp, cm)
	})
}

// File returns a file's content at a revision (LFS files resolved to their content).
func (h *Hub) File(id, rev, path string) ([]byte, error) {
	var out []byte
	err := h.atRev(id, rev, func(_ *repo, cm *commit) error {
		e := cm.Files[path]
		if e == nil {
			return fmt.Errorf("hubtest: %s@%s: no file %s", id, rev, path)
		}
		out = e.data
		if e.isLFS() {
			out = h.objects[e.LFSOID]
		}
		out = slices.Clone(out)
		return nil
	})
	return out, err
}

// Files lists the files at a revision, sorted by path.
func (h *Hub) Files(id, rev string) ([]FileInfo, error) {
	var out []FileInfo
	err := h.atRev(id, rev, func(_ *repo, cm *commit) error {
		for _, p := range sortedKeys(cm.Files) {
			e := cm.Files[p]
			out = append(out, FileInfo{Path: p, Size: e.Size, OID: e.BlobOID, LFS: e.isLFS(), SHA256: e.LFSOID})
		}
		return nil
	})
	return out, err
}

// History lists the commits reachable from rev, newest first.
func (h *Hub) History(id, rev string) ([]CommitInfo, error) {
	var out []CommitInfo
	err := h.atRev(id, rev, func(rp *repo, cm *commit) error {
		for _, c := range rp.history(cm) {
			out = append(out, CommitInfo{ID: c.ID, Parent: c.Parent, Title: c.Title, Description: c.Description, Author: c.Author, Date: c.Date})
		}
		return nil
	})
	return out, err
}

// PullRequests maps each PR number of a repo to the head commit of refs/pr/N.
func (h *Hub) PullRequests(id string) map[int]string {
	out := map[int]string{}
	h.withRepo(id, func(rp *repo) error {
		for n, c := range rp.PRs {
			out[n] = c
		}
		return nil
	})
	return out
}

// Object returns a stored LFS object by sha256.
func (h *Hub) Object(oid string) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	data, ok := h.objects[oid]
	return slices.Clone(data), ok
}

// CorruptObject replaces the bytes stored under an LFS oid with data of the same size,
// as storage corruption would, so that a test can check that a client verifies what it
// downloads. It reports whether the object existed and the sizes matched.
func (h *Hub) CorruptObject(oid string, data []byte) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.objects[oid]
	if !ok || len(old) != len(data) {
		return false
	}
	h.objects[oid] = slices.Clone(data)
	return true
}

// Objects lists the sha256 of every stored LFS object, sorted.
func (h *Hub) Objects() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return sortedKeys(h.objects)
}

// PendingUploads counts LFS uploads handed out by the batch endpoint and not yet
// completed.
func (h *Hub) PendingUploads() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.uploads)
}
