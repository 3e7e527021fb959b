//go:build unix

package cache_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hfmerge/hfmerge/cache"
)

// TestRefMode: refs/ files get the mode huggingface_hub's open(path, "w") gives them,
// 0666 less the umask, not CreateTemp's 0600.
func TestRefMode(t *testing.T) {
	root := t.TempDir()
	content := []byte("x")
	if _, _, err := cache.New(root).Fetch(context.Background(), lfsFile("a.bin", content), (&server{content: content}).get, nil); err != nil {
		t.Fatal(err)
	}
	umask := syscall.Umask(0)
	syscall.Umask(umask)
	for _, p := range []string{filepath.Join(root, "models--org--base", "refs", "main"), filepath.Join(root, "CACHEDIR.TAG")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if want := os.FileMode(0o666 &^ umask); st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
}
