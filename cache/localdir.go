package cache

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// LocalDir is a directory laid out as `hf download --local-dir` lays it out: the repo's
// files as real files, and for each a metadata file recording its commit and etag.
type LocalDir struct {
	root string
	made created
}

// NewLocalDir opens a local dir. It touches nothing until a file is fetched.
func NewLocalDir(root string) *LocalDir { return &LocalDir{root: root, made: newCreated()} }

// Root is the directory.
func (d *LocalDir) Root() string { return d.root }

type localPaths struct{ file, meta, lock, tmp string }

func (d *LocalDir) paths(f File) (localPaths, error) {
	if err := f.check(); err != nil {
		return localPaths{}, err
	}
	file, err := within(d.root, f.Path)
	if err != nil {
		return localPaths{}, err
	}
	meta, err := within(filepath.Join(d.root, ".cache", "huggingface", "download"), f.Path+".metadata")
	if err != nil {
		return localPaths{}, err
	}
	// The temp file sits beside the metadata, named as huggingface_hub names it:
	// urlsafe-base64(sha1(basename of the metadata file)).<etag>.incomplete.
	sum := sha1.Sum([]byte(filepath.Base(meta)))
	short := base64.URLEncoding.EncodeToString(sum[:])
	return localPaths{
		file: file,
		meta: meta,
		lock: strings.TrimSuffix(meta, ".metadata") + ".lock",
		tmp:  filepath.Join(filepath.Dir(meta), short+"."+f.ETag+".incomplete"),
	}, nil
}

// Lookup returns the file's path when it is there with the same content: its metadata
// names the same etag and the file was not modified after it was written, or, without
// metadata, its digest equals the etag (then the metadata is written, as `hf download`
// does).
func (d *LocalDir) Lookup(f File) (string, bool) {
	p, err := d.paths(f)
	if err != nil {
		return "", false
	}
	st, err := os.Stat(p.file)
	if err != nil || !st.Mode().IsRegular() || st.Size() != f.Size {
		return "", false
	}
	if commit, etag, when, ok := readMeta(p.meta); ok {
		modified := float64(st.ModTime().UnixNano())/1e9 - 1
		_ = commit // the etag names the content; a file may be the same at other commits
		return p.file, etag == f.ETag && modified <= when
	}
	in, err := os.Open(p.file)
	if err != nil {
		return "", false
	}
	defer in.Close()
	h := newDigest(f)
	if _, err := io.Copy(h, in); err != nil || hex.EncodeToString(h.Sum(nil)) != f.ETag {
		return "", false
	}
	d.writeMeta(p, f)
	return p.file, true
}

// Find returns a file by path alone, for offline runs: it must have metadata whose
// commit matches.
func (d *LocalDir) Find(commit, path string) (string, bool) {
	if checkPath(path) != nil {
		return "", false
	}
	file, err := within(d.root, path)
	if err != nil {
		return "", false
	}
	meta, err := within(filepath.Join(d.root, ".cache", "huggingface", "download"), path+".metadata")
	if err != nil {
		return "", false
	}
	c, _, _, ok := readMeta(meta)
	if _, err := os.Stat(file); err != nil || !ok || (commit != "" && c != commit) {
		return "", false
	}
	return file, true
}

// Fetch downloads the file into place unless it is already there. It never replaces a
// file it did not write.
func (d *LocalDir) Fetch(ctx context.Context, f File, get Getter, prog Progress) (string, bool, error) {
	p, err := d.paths(f)
	if err != nil {
		return "", false, err
	}
	if path, ok := d.Lookup(f); ok {
		return path, false, nil
	}
	if _, err := os.Lstat(p.file); err == nil {
		return "", false, fmt.Errorf("cache: %s exists with other content than %s at %s; hfmerge does not overwrite it (move it away, or use another --local-dir)",
			p.file, f.Path, f.Commit[:12])
	}
	hf := filepath.Join(d.root, ".cache", "huggingface")
	if err := d.made.mkdirAll(filepath.Dir(p.meta)); err != nil {
		return "", false, err
	}
	if _, err := os.Stat(filepath.Join(hf, ".gitignore")); err != nil {
		if writeAtomic(filepath.Join(hf, ".gitignore"), []byte("*")) == nil {
			d.made.file(filepath.Join(hf, ".gitignore"))
		}
	}
	writeTag(hf)
	if err := d.made.mkdirAll(filepath.Dir(p.file)); err != nil {
		return "", false, err
	}
	unlock, err := lock(ctx, p.lock)
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if path, ok := d.Lookup(f); ok { // another process fetched it while we waited
		return path, false, nil
	}
	if err := download(ctx, p.tmp, p.file, f, get, prog); err != nil {
		return "", false, err
	}
	d.made.file(p.file)
	d.writeMeta(p, f)
	return p.file, true, nil
}

func (d *LocalDir) writeMeta(p localPaths, f File) {
	content := fmt.Sprintf("%s\n%s\n%s\n", f.Commit, f.ETag, strconv.FormatFloat(float64(time.Now().UnixNano())/1e9, 'f', 6, 64))
	if d.made.mkdirAll(filepath.Dir(p.meta)) == nil && writeAtomic(p.meta, []byte(content)) == nil {
		d.made.file(p.meta)
	}
}

// readMeta reads the three lines of a metadata file: commit, etag, Unix time.
func readMeta(path string) (commit, etag string, when float64, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", 0, false
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 3 {
		return "", "", 0, false
	}
	when, err = strconv.ParseFloat(strings.TrimSpace(lines[2]), 64)
	if err != nil {
		return "", "", 0, false
	}
	return strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1]), when, true
}

// Remove deletes the file and its metadata if this process wrote them.
func (d *LocalDir) Remove(f File) error {
	p, err := d.paths(f)
	if err != nil {
		return err
	}
	if err := d.made.remove(p.file); err != nil {
		return err
	}
	return d.made.remove(p.meta)
}

// Tidy removes the directories this process created and left empty.
func (d *LocalDir) Tidy() error { return d.made.tidy() }
