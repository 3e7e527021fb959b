package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// File is one file of a repo at a commit.
type File struct {
	Repo   string // cache folder name: models--org--name (datasets--, spaces--)
	Commit string // 40-hex commit
	Ref    string // the revision asked for, when it is a branch or tag: written to refs/
	Path   string // path in the repo
	ETag   string // sha256 of an LFS file, git blob sha1 of a regular one
	Size   int64
}

func (f File) check() error {
	if err := checkHex("commit", f.Commit, 40); err != nil {
		return err
	}
	if err := checkHex("etag", f.ETag, 40, 64); err != nil {
		return err
	}
	if err := checkPath(f.Path); err != nil {
		return err
	}
	t, name, ok := strings.Cut(f.Repo, "--")
	if !ok || (t != "models" && t != "datasets" && t != "spaces") || name == "" ||
		strings.ContainsAny(f.Repo, `/\`) || strings.Contains(f.Repo, "..") {
		return fmt.Errorf("%w: repo folder %q", ErrPath, f.Repo)
	}
	if f.Ref != "" {
		if err := checkPath(f.Ref); err != nil {
			return err
		}
	}
	return nil
}

// Getter writes the file's bytes from offset off to the end into w, and returns how
// many it wrote. *hub.Client's Download, bound to a file, is one.
type Getter func(ctx context.Context, off int64, w io.Writer) (int64, error)

// Progress counts bytes as they arrive; nil counts nothing.
type Progress interface{ Add(n int64) }

// Store is a place files are fetched into and read from: the hub cache or a local dir.
type Store interface {
	// Lookup returns the path of the file if it is already present, with no network.
	Lookup(f File) (string, bool)
	// Fetch makes the file present and returns its path, and whether this call
	// downloaded it.
	Fetch(ctx context.Context, f File, get Getter, p Progress) (path string, fetched bool, err error)
	// Remove undoes what Fetch created for f in this process; files that were there
	// before are left alone.
	Remove(f File) error
	// Tidy removes directories and refs this process created that are left empty or
	// dangling.
	Tidy() error
}

var (
	_ Store = (*Cache)(nil)
	_ Store = (*LocalDir)(nil)
)

// ErrChecksum marks downloaded bytes that do not match the file's digest.
var ErrChecksum = errors.New("cache: checksum mismatch")

// ErrNotCached marks a file that is not in the cache, in offline mode.
var ErrNotCached = errors.New("cache: not in the cache")

// created records what this process wrote, so that Remove and Tidy undo only that.
type created struct {
	mu    sync.Mutex
	files map[string]bool // blobs, links, real files, metadata
	dirs  []string        // in creation order
	refs  map[string]string
	log   *intents // nil unless Transient
}

func newCreated() created {
	return created{files: map[string]bool{}, refs: map[string]string{}}
}

func (c *created) file(p string) {
	c.mu.Lock()
	c.files[p] = true
	c.mu.Unlock()
}

// remove deletes p if this process created it.
func (c *created) remove(p string) error {
	c.mu.Lock()
	mine := c.files[p]
	delete(c.files, p)
	c.mu.Unlock()
	if !mine {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// mkdirAll creates dir and records the directories it made.
func (c *created) mkdirAll(dir string) error {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := c.log.record("dir", missing[i], ""); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	c.mu.Lock()
	for i := len(missing) - 1; i >= 0; i-- {
		c.dirs = append(c.dirs, missing[i])
	}
	c.mu.Unlock()
	return nil
}

// tidy removes created directories that are empty, deepest first, then created refs
// whose snapshot is gone, then the directories that leaves empty.
func (c *created) tidy() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.dirs) - 1; i >= 0; i-- {
		os.Remove(c.dirs[i]) // fails, as it should, when not empty
	}
	for ref, target := range c.refs {
		if _, err := os.Stat(target); errors.Is(err, os.ErrNotExist) {
			if err := os.Remove(ref); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			delete(c.refs, ref)
		}
	}
	for i := len(c.dirs) - 1; i >= 0; i-- {
		os.Remove(c.dirs[i]) // fails, as it should, when not empty
	}
	c.dirs = nil
	if len(c.files) == 0 {
		c.log.close() // everything it names is gone
	}
	return nil
}

// writeAtomic writes data to path through a temporary file in the same directory. The
// file is created with mode 0666 less the umask (0644 usually), as Python's open(path,
// "w") creates refs/ and metadata files in huggingface_hub; os.CreateTemp would make it
// 0600, unreadable by the other users of a shared cache.
func writeAtomic(path string, data []byte) error {
	var tmp *os.File
	var err error
	for range 100 {
		name := fmt.Sprintf("%s/.%s.%d.tmp", filepath.Dir(path), filepath.Base(path), rand.Uint64())
		tmp, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// tagContent marks a cache directory for backup tools (https://bford.info/cachedir/), with
// the text huggingface_hub writes.
const tagContent = "Signature: 8a477f597d28d172789f06886806bc55\n" +
	"# This file is a cache directory tag created by huggingface_hub.\n" +
	"# For information about cache directory tags, see:\n" +
	"#\thttps://bford.info/cachedir/\n"

func writeTag(dir string) {
	p := filepath.Join(dir, "CACHEDIR.TAG")
	if _, err := os.Stat(p); err == nil {
		return
	}
	_ = writeAtomic(p, []byte(tagContent)) // best effort, as huggingface_hub does
}
