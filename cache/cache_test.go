package cache_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hfmerge/hfmerge/cache"
)

const commit = "0123456789abcdef0123456789abcdef01234567"

func lfsFile(path string, content []byte) cache.File {
	sum := sha256.Sum256(content)
	return cache.File{Repo: "models--org--base", Commit: commit, Ref: "main", Path: path, ETag: hex.EncodeToString(sum[:]), Size: int64(len(content))}
}

func regularFile(path string, content []byte) cache.File {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(content))
	h.Write(content)
	return cache.File{Repo: "models--org--base", Commit: commit, Ref: "main", Path: path, ETag: hex.EncodeToString(h.Sum(nil)), Size: int64(len(content))}
}

// server hands out content and counts what it was asked for.
type server struct {
	content []byte
	calls   atomic.Int64
	offsets []int64
	mu      sync.Mutex
}

func (s *server) get(ctx context.Context, off int64, w io.Writer) (int64, error) {
	s.calls.Add(1)
	s.mu.Lock()
	s.offsets = append(s.offsets, off)
	s.mu.Unlock()
	n, err := w.Write(s.content[off:])
	return int64(n), err
}

// tree lists every path under root with its kind, for before/after comparisons.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		kind := "f"
		if d.IsDir() {
			kind = "d"
		} else if d.Type()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			kind = "l->" + target
		}
		out = append(out, rel+" "+kind)
		return nil
	})
	sort.Strings(out)
	return out
}

func TestFetchLayout(t *testing.T) {
	root := t.TempDir()
	c := cache.New(root)
	content := bytes.Repeat([]byte("weights"), 1000)
	f := lfsFile("sub/dir/model.safetensors", content)
	s := &server{content: content}
	path, fetched, err := c.Fetch(context.Background(), f, s.get, nil)
	if err != nil || !fetched {
		t.Fatalf("fetch: %v %v", fetched, err)
	}
	repo := filepath.Join(root, "models--org--base")
	if path != filepath.Join(repo, "snapshots", commit, "sub", "dir", "model.safetensors") {
		t.Errorf("path %s", path)
	}
	target, err := os.Readlink(path)
	if err != nil || target != "../../../../blobs/"+f.ETag {
		t.Errorf("link %q (%v), want a relative link to the blob", target, err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
		t.Error("content differs")
	}
	if ref, _ := os.ReadFile(filepath.Join(repo, "refs", "main")); string(ref) != commit {
		t.Errorf("refs/main = %q, want the commit without a newline", ref)
	}
	if tag, _ := os.ReadFile(filepath.Join(root, "CACHEDIR.TAG")); !strings.HasPrefix(string(tag), "Signature: 8a477f597d28d172789f06886806bc55") {
		t.Errorf("CACHEDIR.TAG = %q", tag)
	}
	if _, err := os.Stat(filepath.Join(root, ".locks", "models--org--base", f.ETag+".lock")); err != nil {
		t.Errorf("no lock file: %v", err)
	}
	if got, ok := c.Commit("models--org--base", "main"); !ok || got != commit {
		t.Errorf("Commit(main) = %q %v", got, ok)
	}
	// Present now: no second download, from this Cache or a new one.
	for _, cc := range []*cache.Cache{c, cache.New(root)} {
		if _, fetched, err := cc.Fetch(context.Background(), f, s.get, nil); err != nil || fetched {
			t.Errorf("second fetch: %v %v", fetched, err)
		}
	}
	if s.calls.Load() != 1 {
		t.Errorf("%d downloads, want 1", s.calls.Load())
	}
	// The same content at another commit is linked, not downloaded.
	g := f
	g.Commit = strings.Repeat("b", 40)
	if _, fetched, err := c.Fetch(context.Background(), g, s.get, nil); err != nil || fetched || s.calls.Load() != 1 {
		t.Errorf("other commit: fetched %v, err %v, downloads %d", fetched, err, s.calls.Load())
	}
	// A regular file is checked against its git blob sha1.
	cfg := []byte(`{"model_type": "llama"}`)
	r := regularFile("config.json", cfg)
	if _, _, err := c.Fetch(context.Background(), r, (&server{content: cfg}).get, nil); err != nil {
		t.Errorf("regular file: %v", err)
	}
}

func TestChecksumMismatch(t *testing.T) {
	root := t.TempDir()
	c := cache.New(root)
	good := []byte("the real bytes")
	f := lfsFile("model.safetensors", good)
	bad := &server{content: []byte("the fake bytes")}
	_, _, err := c.Fetch(context.Background(), f, bad.get, nil)
	if !errors.Is(err, cache.ErrChecksum) || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("error %v, want ErrChecksum naming the file", err)
	}
	for _, e := range tree(t, root) {
		if strings.Contains(e, f.ETag) && !strings.Contains(e, ".lock") || strings.Contains(e, "model.safetensors") {
			t.Errorf("left behind: %s", e)
		}
	}
}

func TestResume(t *testing.T) {
	root := t.TempDir()
	c := cache.New(root)
	content := bytes.Repeat([]byte{1, 2, 3, 4, 5}, 2000)
	f := lfsFile("model.safetensors", content)
	blobs := filepath.Join(root, "models--org--base", "blobs")
	os.MkdirAll(blobs, 0o755)
	os.WriteFile(filepath.Join(blobs, f.ETag+".incomplete"), content[:3000], 0o644)
	s := &server{content: content}
	if _, fetched, err := c.Fetch(context.Background(), f, s.get, nil); err != nil || !fetched {
		t.Fatalf("%v %v", fetched, err)
	}
	if len(s.offsets) != 1 || s.offsets[0] != 3000 {
		t.Errorf("asked for offsets %v, want [3000]", s.offsets)
	}
}

func TestUnsafePaths(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "cache")
	local := filepath.Join(parent, "local")
	before := tree(t, parent)
	content := []byte("x")
	for _, p := range []string{"../x", "/etc/x", "a/../../x", "a/./b", `C:\x`, "C:/x", `\\server\share\x`, ".git/config", ".cache/huggingface/x", "a//b", ""} {
		f := lfsFile(p, content)
		for _, st := range []cache.Store{cache.New(root), cache.NewLocalDir(local)} {
			if _, _, err := st.Fetch(context.Background(), f, (&server{content: content}).get, nil); !errors.Is(err, cache.ErrPath) {
				t.Errorf("%T %q: error %v, want ErrPath", st, p, err)
			}
		}
	}
	bad := lfsFile("ok", content)
	bad.ETag = "../../../etc/passwd"
	if _, _, err := cache.New(root).Fetch(context.Background(), bad, (&server{content: content}).get, nil); !errors.Is(err, cache.ErrPath) {
		t.Errorf("etag with a path: %v", err)
	}
	if after := tree(t, parent); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("something was written:\n%s", strings.Join(after, "\n"))
	}
}

// TestConcurrentFetch: two fetchers of the same file in one cache both succeed and the
// file is downloaded once; the flock on .locks/<repo>/<etag>.lock serialises them.
func TestConcurrentFetch(t *testing.T) {
	root := t.TempDir()
	content := bytes.Repeat([]byte("concurrent"), 100_000)
	f := lfsFile("model.safetensors", content)
	s := &server{content: content}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = cache.New(root).Fetch(context.Background(), f, s.get, nil)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if s.calls.Load() != 1 {
		t.Errorf("%d downloads, want 1", s.calls.Load())
	}
}

// TestRemoveOnlyOwn: Remove and Tidy undo what this process fetched and leave what was
// there before.
func TestRemoveOnlyOwn(t *testing.T) {
	root := t.TempDir()
	content := []byte("user's file")
	mine := []byte("fetched by this run")
	theirs := lfsFile("a.safetensors", content)
	if _, _, err := cache.New(root).Fetch(context.Background(), theirs, (&server{content: content}).get, nil); err != nil {
		t.Fatal(err)
	}
	before := tree(t, root)
	c := cache.New(root)
	f := lfsFile("nested/b.safetensors", mine)
	f.Commit = strings.Repeat("c", 40)
	f.Ref = "dev"
	if _, _, err := c.Fetch(context.Background(), f, (&server{content: mine}).get, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Fetch(context.Background(), theirs, nil, nil); err != nil { // present: needs no getter
		t.Fatal(err)
	}
	if err := c.Remove(theirs); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(f); err != nil {
		t.Fatal(err)
	}
	if err := c.Tidy(); err != nil {
		t.Fatal(err)
	}
	var extra []string
	after := tree(t, root)
	for _, e := range after {
		if !strings.Contains(strings.Join(before, "\n"), e) && !strings.Contains(e, ".lock") {
			extra = append(extra, e)
		}
	}
	if len(extra) > 0 {
		t.Errorf("left behind: %v", extra)
	}
	if _, ok := c.Lookup(theirs); !ok {
		t.Error("the file that was there before is gone")
	}
}

func TestLocalDir(t *testing.T) {
	root := t.TempDir()
	d := cache.NewLocalDir(root)
	content := bytes.Repeat([]byte("local"), 100)
	f := lfsFile("shards/model.safetensors", content)
	s := &server{content: content}
	path, fetched, err := d.Fetch(context.Background(), f, s.get, nil)
	if err != nil || !fetched || path != filepath.Join(root, "shards", "model.safetensors") {
		t.Fatalf("%s %v %v", path, fetched, err)
	}
	meta, _ := os.ReadFile(filepath.Join(root, ".cache", "huggingface", "download", "shards", "model.safetensors.metadata"))
	lines := strings.Split(string(meta), "\n")
	if len(lines) != 4 || lines[0] != commit || lines[1] != f.ETag || lines[3] != "" {
		t.Errorf("metadata %q", meta)
	}
	if gi, _ := os.ReadFile(filepath.Join(root, ".cache", "huggingface", ".gitignore")); string(gi) != "*" {
		t.Errorf(".gitignore %q", gi)
	}
	if _, fetched, _ := cache.NewLocalDir(root).Fetch(context.Background(), f, s.get, nil); fetched || s.calls.Load() != 1 {
		t.Errorf("second fetch downloaded again")
	}
	// A file put there by `hf download` without metadata is recognised by its digest.
	other := []byte("from hf download")
	g := lfsFile("other.safetensors", other)
	os.WriteFile(filepath.Join(root, "other.safetensors"), other, 0o644)
	if _, ok := cache.NewLocalDir(root).Lookup(g); !ok {
		t.Error("existing file with matching sha256 not recognised")
	}
	// A different file under the same name is never overwritten.
	h := lfsFile("other.safetensors", []byte("something else"))
	if _, _, err := cache.NewLocalDir(root).Fetch(context.Background(), h, (&server{content: []byte("something else")}).get, nil); err == nil {
		t.Error("overwrote a file it did not write")
	}
	if got, _ := os.ReadFile(filepath.Join(root, "other.safetensors")); !bytes.Equal(got, other) {
		t.Error("the user's file changed")
	}
}

func TestDir(t *testing.T) {
	home, _ := os.UserHomeDir()
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"HF_HUB_CACHE": "/a", "HUGGINGFACE_HUB_CACHE": "/b", "HF_HOME": "/c"}, "/a"},
		{map[string]string{"HUGGINGFACE_HUB_CACHE": "/b", "HF_HOME": "/c"}, "/b"},
		{map[string]string{"HF_HOME": "/c", "XDG_CACHE_HOME": "/x"}, "/c/hub"},
		{map[string]string{"XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub"},
		{map[string]string{}, filepath.Join(home, ".cache", "huggingface", "hub")},
		{map[string]string{"HF_HUB_CACHE": "~/hfc"}, filepath.Join(home, "hfc")},
		{map[string]string{"HF_HOME": "$TESTROOT/h", "TESTROOT": "/r"}, "/r/h/hub"},
	} {
		for _, v := range []string{"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "TESTROOT"} {
			t.Setenv(v, c.env[v])
			if c.env[v] == "" {
				os.Unsetenv(v)
			}
		}
		if got := cache.Dir(); got != c.want {
			t.Errorf("%v: Dir() = %s, want %s", c.env, got, c.want)
		}
	}
}

// TestFailedDownloadRemoved: a download that fails leaves its .incomplete file for a
// later run to resume, and Remove (the file was not to be kept) deletes it; one another
// process left is not this process's to delete.
func TestFailedDownloadRemoved(t *testing.T) {
	root := t.TempDir()
	c := cache.New(root)
	content := bytes.Repeat([]byte("w"), 10_000)
	f := lfsFile("model.safetensors", content)
	fail := func(ctx context.Context, off int64, w io.Writer) (int64, error) {
		n, _ := w.Write(content[off : off+100])
		return int64(n), errors.New("connection reset")
	}
	if _, _, err := c.Fetch(context.Background(), f, fail, nil); err == nil {
		t.Fatal("the failing download succeeded")
	}
	partial := filepath.Join(root, "models--org--base", "blobs", f.ETag+".incomplete")
	if _, err := os.Stat(partial); err != nil {
		t.Fatalf("no partial file to resume: %v", err)
	}
	if err := c.Remove(f); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(partial); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Remove left %s", partial)
	}
	// Another process's partial file: resumed, failed again, and left alone.
	os.WriteFile(partial, content[:500], 0o644)
	c2 := cache.New(root)
	c2.Fetch(context.Background(), f, fail, nil)
	c2.Remove(f)
	if st, err := os.Stat(partial); err != nil || st.Size() != 600 {
		t.Errorf("another process's partial file: %v %v", st, err)
	}
}
