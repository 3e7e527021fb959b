//go:build unix

package cache_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hfmerge/hfmerge/cache"
)

// TestRecover: what a dead process's intent log names is removed, except a blob another
// snapshot links to; a live process's log is left alone.
func TestRecover(t *testing.T) {
	root := t.TempDir()
	content := []byte("config")
	f := lfsFile("config.json", content)
	// A live transient run.
	live := cache.New(root)
	live.Transient()
	if _, _, err := live.Fetch(context.Background(), f, (&server{content: content}).get, nil); err != nil {
		t.Fatal(err)
	}
	if removed := cache.New(root).Recover(); len(removed) != 0 {
		t.Fatalf("a live process's files were removed: %v", removed)
	}
	// Its log, copied under another name and unlocked, is a dead process's; the user's
	// own snapshot at another commit links the same blob.
	logs, _ := filepath.Glob(filepath.Join(root, ".locks", "hfmerge", "*.log"))
	if len(logs) != 1 {
		t.Fatalf("logs: %v", logs)
	}
	b, _ := os.ReadFile(logs[0])
	os.WriteFile(filepath.Join(root, ".locks", "hfmerge", "1-1.log"), b, 0o644)
	repo := filepath.Join(root, "models--org--base")
	other := filepath.Join(repo, "snapshots", "b"+commit[1:])
	os.MkdirAll(other, 0o755)
	os.Symlink("../../blobs/"+f.ETag, filepath.Join(other, "config.json"))
	removed := cache.New(root).Recover()
	link := filepath.Join(repo, "snapshots", commit, "config.json")
	if !slices.Contains(removed, link) || slices.Contains(removed, filepath.Join(repo, "blobs", f.ETag)) {
		t.Errorf("removed %v", removed)
	}
	if _, err := os.Stat(filepath.Join(other, "config.json")); err != nil {
		t.Errorf("the user's snapshot lost its blob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, ".locks", "hfmerge", "1-1.log")); err == nil {
		t.Error("the dead process's log is still there")
	}
}
