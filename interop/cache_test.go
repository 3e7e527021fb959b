//go:build interop

package interop

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// TestJSCacheLayout downloads into an HF cache dir with downloadFileToCacheDir and
// snapshotDownload, and checks the layout they write against the fake's answers.
func TestJSCacheLayout(t *testing.T) {
	requireJS(t)
	h := startHub(t, hubtest.WithLFSThreshold(1000))
	weights := pattern(4000, 5)
	first, err := h.Seed("alice/base", map[string][]byte{
		"model.safetensors": weights, "config.json": []byte(`{"a":1}`), "tok/vocab.txt": []byte("a\nb\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	// A later commit that does not touch the weights.
	head, err := h.Seed("alice/base", map[string][]byte{"README.md": []byte("# base\n")})
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	repoDir := filepath.Join(cache, "models--alice--base")

	var one struct{ Path string }
	js(t, h, true, "cacheFile", map[string]any{"repo": "alice/base", "path": "model.safetensors", "cacheDir": cache}, &one)
	// JS names the snapshot after the file's lastCommit (from paths-info), not the
	// branch head; hub-protocol.md §13 says so and the fake's lastCommit makes it show.
	if one.Path != filepath.Join(repoDir, "snapshots", first, "model.safetensors") {
		t.Fatalf("downloadFileToCacheDir = %s (first commit %s, head %s)", one.Path, first, head)
	}
	checkBlobLink(t, one.Path, sha(weights), weights)

	var snap struct{ Path string }
	js(t, h, true, "snapshot", map[string]any{"repo": "alice/base", "cacheDir": cache}, &snap)
	if snap.Path != filepath.Join(repoDir, "snapshots", head) {
		t.Fatalf("snapshotDownload = %s, want snapshot of head %s", snap.Path, head)
	}
	for p, data := range map[string][]byte{"model.safetensors": weights, "config.json": []byte(`{"a":1}`), "tok/vocab.txt": []byte("a\nb\n"), "README.md": []byte("# base\n")} {
		infos, _ := h.Files("alice/base", "main")
		etag := ""
		for _, f := range infos {
			if f.Path == p {
				etag = f.OID
				if f.LFS {
					etag = f.SHA256
				}
			}
		}
		checkBlobLink(t, filepath.Join(snap.Path, p), etag, data)
	}
	ref, err := os.ReadFile(filepath.Join(repoDir, "refs", "main"))
	if err != nil || string(ref) != head {
		t.Fatalf("refs/main = %q, %v (want %s, no newline)", ref, err, head)
	}

	var scan struct {
		Warnings []string `json:"warnings"`
		Repos    []struct {
			Files int `json:"files"`
		} `json:"repos"`
	}
	js(t, h, true, "scanCache", map[string]any{"cacheDir": cache}, &scan)
	if len(scan.Warnings) != 0 || len(scan.Repos) != 1 {
		t.Fatalf("scanCacheDir = %+v", scan)
	}
	waitIdle(t, h)
	if h.Stats().CDNAuthRejected != 0 {
		t.Fatal("the JS client sent its token to the CDN")
	}
}

// checkBlobLink checks that p is a relative symlink to blobs/<etag> holding data.
func checkBlobLink(t *testing.T, p, etag string, data []byte) {
	t.Helper()
	target, err := os.Readlink(p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if filepath.IsAbs(target) || !strings.HasSuffix(target, "blobs/"+etag) {
		t.Fatalf("%s -> %s, want a relative link to blobs/%s", p, target, etag)
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != string(data) {
		t.Fatalf("%s: content differs (%v)", p, err)
	}
}
