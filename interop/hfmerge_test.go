//go:build interop

package interop

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// buildHfmerge builds the command as users run it.
func buildHfmerge(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hfmerge")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/hfmerge").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// seedTiny puts the quickstart model (testdata/tiny-llama) on the fake Hub as
// alice/tiny and returns its files and commit.
func seedTiny(t *testing.T, h *fakeHub) (map[string][]byte, string) {
	t.Helper()
	files := map[string][]byte{}
	entries, err := os.ReadDir("../testdata/tiny-llama")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("../testdata/tiny-llama", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	commit, err := h.Seed("alice/tiny", files)
	if err != nil {
		t.Fatal(err)
	}
	return files, commit
}

// hfmerge runs the built command with the fake Hub's endpoint and the given cache.
func runHfmerge(t *testing.T, bin string, h *fakeHub, cache string, env []string, args ...string) {
	t.Helper()
	c := exec.Command(bin, args...)
	c.Env = append(os.Environ(), "HF_ENDPOINT="+h.URL(), "HF_TOKEN="+token, "HF_HUB_CACHE="+cache)
	c.Env = append(c.Env, env...)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("hfmerge %v: %v\n%s", args, err, out)
	}
}

// sameShards compares the merged shards and index of two output directories.
func sameShards(t *testing.T, a, b string) {
	t.Helper()
	for _, n := range []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json", "config.json"} {
		x, err1 := os.ReadFile(filepath.Join(a, n))
		y, err2 := os.ReadFile(filepath.Join(b, n))
		if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
			t.Errorf("%s differs between %s and %s (%v %v)", n, a, b, err1, err2)
		}
	}
}

// TestJSDownloadThenOfflineMerge: the official JS client downloads the base into a cache
// (snapshotDownload), and hfmerge then merges from that cache with HF_HUB_OFFLINE,
// making no request, and gets what a merge of the local copy gives.
func TestJSDownloadThenOfflineMerge(t *testing.T) {
	requireJS(t)
	bin := buildHfmerge(t)
	h := startHub(t, hubtest.WithLFSThreshold(1000))
	seedTiny(t, h)
	cache := t.TempDir()
	var snap struct{ Path string }
	js(t, h, true, "snapshot", map[string]any{"repo": "alice/tiny", "cacheDir": cache}, &snap)
	waitIdle(t, h)
	before := len(h.Requests())
	offline := filepath.Join(t.TempDir(), "offline")
	runHfmerge(t, bin, h, cache, []string{"HF_HUB_OFFLINE=1"}, "merge", "--base", "alice/tiny", "--adapter", "../testdata/tiny-lora", "--out", offline, "--progress", "none")
	local := filepath.Join(t.TempDir(), "local")
	runHfmerge(t, bin, h, cache, nil, "merge", "--base", "../testdata/tiny-llama", "--adapter", "../testdata/tiny-lora", "--out", local, "--progress", "none")
	sameShards(t, local, offline)
	waitIdle(t, h)
	if n := len(h.Requests()) - before; n != 0 {
		t.Errorf("the offline merge and the local one made %d requests", n)
	}
}

// TestHfmergeCacheForJS: hfmerge fetches the base into a cache with --keep-base; the JS
// client's scanCacheDir reports it with no warning, and downloadFileToCacheDir finds
// every file there without asking for a single shard byte.
func TestHfmergeCacheForJS(t *testing.T) {
	requireJS(t)
	bin := buildHfmerge(t)
	h := startHub(t, hubtest.WithLFSThreshold(1000))
	files, commit := seedTiny(t, h)
	cache := t.TempDir()
	runHfmerge(t, bin, h, cache, nil, "merge", "--base", "alice/tiny", "--adapter", "../testdata/tiny-lora",
		"--out", filepath.Join(t.TempDir(), "out"), "--keep-base", "--progress", "none")
	var scan struct {
		Warnings []string
		Repos    []struct {
			ID struct {
				Name, Type string
			}
			Files     int
			Revisions []struct {
				Commit string
				Refs   []string
				Files  int
			}
		}
	}
	js(t, h, false, "scanCache", map[string]any{"cacheDir": cache}, &scan)
	if len(scan.Warnings) != 0 {
		t.Errorf("scanCacheDir warnings: %v", scan.Warnings)
	}
	if len(scan.Repos) != 1 || scan.Repos[0].ID.Name != "alice/tiny" || len(scan.Repos[0].Revisions) != 1 ||
		scan.Repos[0].Revisions[0].Commit != commit || strings.Join(scan.Repos[0].Revisions[0].Refs, ",") != "main" {
		t.Errorf("scanCacheDir: %+v", scan.Repos)
	}
	waitIdle(t, h)
	h.ResetStats()
	for name, data := range files {
		if name == "README.md" {
			continue // replaced by the model card, so never fetched
		}
		var one struct{ Path string }
		js(t, h, true, "cacheFile", map[string]any{"repo": "alice/tiny", "path": name, "cacheDir": cache}, &one)
		if got, err := os.ReadFile(one.Path); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: %s: %v", name, one.Path, err)
		}
		if !strings.Contains(one.Path, commit) {
			t.Errorf("%s found at %s, not in snapshot %s", name, one.Path, commit)
		}
	}
	waitIdle(t, h)
	if n := h.Stats().Requests[hubtest.RouteCDNGet]; n != 0 {
		t.Errorf("the JS client asked the CDN %d times for bytes hfmerge had cached", n)
	}
}
