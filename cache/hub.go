package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Cache is the hub cache at a root directory.
type Cache struct {
	root string
	made created
}

// New opens the hub cache at root (see Dir). It touches nothing until a file is fetched.
func New(root string) *Cache { return &Cache{root: root, made: newCreated()} }

// Root is the cache directory.
func (c *Cache) Root() string { return c.root }

type hubPaths struct{ repo, blob, link, snapshot string }

func (c *Cache) paths(f File) (hubPaths, error) {
	if err := f.check(); err != nil {
		return hubPaths{}, err
	}
	repo, err := within(c.root, f.Repo)
	if err != nil {
		return hubPaths{}, err
	}
	snap := filepath.Join(repo, "snapshots", f.Commit)
	link, err := within(snap, f.Path)
	if err != nil {
		return hubPaths{}, err
	}
	return hubPaths{repo: repo, blob: filepath.Join(repo, "blobs", f.ETag), link: link, snapshot: snap}, nil
}

// Commit resolves a revision with the cache alone: a commit that has a snapshot, or the
// commit refs/<rev> names.
func (c *Cache) Commit(repo, rev string) (string, bool) {
	if rev == "" {
		rev = "main"
	}
	dir, err := within(c.root, repo)
	if err != nil || checkPath(rev) != nil {
		return "", false
	}
	if checkHex("commit", rev, 40) == nil {
		if st, err := os.Stat(filepath.Join(dir, "snapshots", rev)); err == nil && st.IsDir() {
			return rev, true
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "refs", filepath.FromSlash(rev)))
	if err != nil {
		return "", false
	}
	commit := strings.TrimSpace(string(b))
	return commit, checkHex("commit", commit, 40) == nil
}

// Lookup returns the snapshot path of a file that is in the cache with its blob.
func (c *Cache) Lookup(f File) (string, bool) {
	p, err := c.paths(f)
	if err != nil {
		return "", false
	}
	st, err := os.Stat(p.link) // follows the link: the blob must be there
	if err != nil || !st.Mode().IsRegular() || (f.Size >= 0 && st.Size() != f.Size) {
		return "", false
	}
	return p.link, true
}

// Find returns the snapshot path of a file by commit and path alone, for offline runs
// that do not know its etag.
func (c *Cache) Find(repo, commit, path string) (string, bool) {
	if checkPath(path) != nil || checkHex("commit", commit, 40) != nil {
		return "", false
	}
	dir, err := within(c.root, repo)
	if err != nil {
		return "", false
	}
	p, err := within(filepath.Join(dir, "snapshots", commit), path)
	if err != nil {
		return "", false
	}
	if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
		return p, true
	}
	return "", false
}

// Snapshot returns the snapshot folder of a commit, if the cache has one.
func (c *Cache) Snapshot(repo, commit string) (string, bool) {
	if checkHex("commit", commit, 40) != nil {
		return "", false
	}
	dir, err := within(c.root, repo)
	if err != nil {
		return "", false
	}
	p := filepath.Join(dir, "snapshots", commit)
	if st, err := os.Stat(p); err != nil || !st.IsDir() {
		return "", false
	}
	return p, true
}

// Missing reports a .no_exist marker: the file is known not to exist at that commit.
func (c *Cache) Missing(repo, commit, path string) bool {
	if checkPath(path) != nil || checkHex("commit", commit, 40) != nil {
		return false
	}
	dir, err := within(c.root, repo)
	if err != nil {
		return false
	}
	p, err := within(filepath.Join(dir, ".no_exist", commit), path)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// Fetch makes the file present in the cache: it links an existing blob, or downloads
// the blob under the repo's lock (so that two processes download it once), checks it,
// and links it from the snapshot.
func (c *Cache) Fetch(ctx context.Context, f File, get Getter, prog Progress) (string, bool, error) {
	p, err := c.paths(f)
	if err != nil {
		return "", false, err
	}
	if path, ok := c.Lookup(f); ok {
		c.ref(p, f)
		return path, false, nil
	}
	if err := c.made.mkdirAll(filepath.Join(p.repo, "blobs")); err != nil {
		return "", false, err
	}
	// The snapshot folder comes before the ref that names it, so readers never see a
	// ref to nothing.
	if err := c.made.mkdirAll(filepath.Dir(p.link)); err != nil {
		return "", false, err
	}
	writeTag(c.root)
	c.ref(p, f)
	lockDir := filepath.Join(c.root, ".locks", f.Repo)
	if err := c.made.mkdirAll(lockDir); err != nil {
		return "", false, err
	}
	unlock, err := lock(ctx, filepath.Join(lockDir, f.ETag+".lock"))
	if err != nil {
		return "", false, err
	}
	defer unlock()
	fetched := false
	if st, err := os.Stat(p.blob); err != nil || st.Size() != f.Size {
		if err == nil {
			return "", false, fmt.Errorf("cache: %s exists with %d bytes, expected %d; remove it and retry", p.blob, st.Size(), f.Size)
		}
		// A partial download stays for a later run to resume, unless this process made
		// it and then removes f (Remove): a file that is not kept leaves nothing.
		partial := p.blob + ".incomplete"
		if _, err := os.Lstat(partial); errors.Is(err, os.ErrNotExist) {
			if err := c.made.log.record("partial", partial, ""); err != nil {
				return "", false, err
			}
			c.made.file(partial)
		}
		if err := c.made.log.record("blob", p.blob, ""); err != nil {
			return "", false, err
		}
		if err := download(ctx, partial, p.blob, f, get, prog); err != nil {
			return "", false, err
		}
		c.made.file(p.blob)
		fetched = true
	}
	if err := c.link(p); err != nil {
		return "", false, err
	}
	return p.link, fetched, nil
}

// link points the snapshot path at the blob with a relative symlink.
func (c *Cache) link(p hubPaths) error {
	rel, err := filepath.Rel(filepath.Dir(p.link), p.blob)
	if err != nil {
		return err
	}
	if cur, err := os.Readlink(p.link); err == nil && cur == rel {
		return nil
	}
	tmp := p.link + ".hfmerge-link"
	os.Remove(tmp)
	if err := c.made.log.record("partial", tmp, ""); err != nil {
		return err
	}
	if err := c.made.log.record("link", p.link, rel); err != nil {
		return err
	}
	if err := os.Symlink(rel, tmp); err != nil {
		return err
	}
	if _, err := os.Lstat(p.link); err == nil {
		os.Remove(tmp)
		return fmt.Errorf("cache: %s exists and is not a link to %s; leaving it alone", p.link, p.blob)
	}
	if err := os.Rename(tmp, p.link); err != nil {
		os.Remove(tmp)
		return err
	}
	c.made.file(p.link)
	return nil
}

// ref records which commit a branch or tag named, without a trailing newline (readers
// do not strip it), when it changes.
func (c *Cache) ref(p hubPaths, f File) {
	if f.Ref == "" || f.Ref == f.Commit {
		return
	}
	path, err := within(filepath.Join(p.repo, "refs"), f.Ref)
	if err != nil {
		return
	}
	if b, err := os.ReadFile(path); err == nil && string(b) == f.Commit {
		return
	}
	_, existed := os.Stat(path)
	if errors.Is(existed, os.ErrNotExist) && c.made.log.record("ref", path, p.snapshot) != nil {
		return
	}
	if c.made.mkdirAll(filepath.Dir(path)) != nil || writeAtomic(path, []byte(f.Commit)) != nil {
		return // best effort, as huggingface_hub
	}
	if errors.Is(existed, os.ErrNotExist) {
		c.made.mu.Lock()
		c.made.refs[path] = p.snapshot
		c.made.mu.Unlock()
	}
}

// Remove deletes the snapshot link and the blob of f, and a partial download of it, if
// this process created them.
func (c *Cache) Remove(f File) error {
	p, err := c.paths(f)
	if err != nil {
		return err
	}
	if err := c.made.remove(p.link); err != nil {
		return err
	}
	if err := c.made.remove(p.blob + ".incomplete"); err != nil {
		return err
	}
	return c.made.remove(p.blob)
}

// Tidy removes what this process created and left empty: snapshot and blob folders,
// refs to snapshots that are gone, the repo folder itself.
func (c *Cache) Tidy() error { return c.made.tidy() }
