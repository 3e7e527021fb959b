//go:build interop

package interop

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	gohf "github.com/gomlx/go-huggingface/hub"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// gohfRepo is github.com/gomlx/go-huggingface pointed at the fake Hub and a cache.
func gohfRepo(h *fakeHub, cache string) *gohf.Repo {
	return gohf.New("alice/tiny").WithEndpoint(h.URL()).WithAuth(token).WithCacheDir(cache).WithProgressBar(false)
}

func gohfNames(t *testing.T, r *gohf.Repo) []string {
	t.Helper()
	var names []string
	for name, err := range r.IterFileNames() {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	return names
}

// TestGoHuggingfaceCache: go-huggingface downloads the base into a cache and hfmerge
// merges from it offline; and go-huggingface finds a cache hfmerge kept without
// downloading a shard byte. go-huggingface writes no refs, so the offline merge names
// the commit.
func TestGoHuggingfaceCache(t *testing.T) {
	bin := buildHfmerge(t)
	h := startHub(t, hubtest.WithLFSThreshold(1000))
	files, commit := seedTiny(t, h)

	cache := t.TempDir()
	r := gohfRepo(h, cache)
	if _, err := r.DownloadFiles(gohfNames(t, r)...); err != nil {
		t.Fatal(err)
	}
	offline := filepath.Join(t.TempDir(), "offline")
	runHfmerge(t, bin, h, cache, []string{"HF_HUB_OFFLINE=1"}, "merge", "--base", "alice/tiny@"+commit,
		"--adapter", "../testdata/tiny-lora", "--out", offline, "--progress", "none")
	local := filepath.Join(t.TempDir(), "local")
	runHfmerge(t, bin, h, cache, nil, "merge", "--base", "../testdata/tiny-llama", "--adapter", "../testdata/tiny-lora", "--out", local, "--progress", "none")
	sameShards(t, local, offline)

	kept := t.TempDir()
	runHfmerge(t, bin, h, kept, nil, "merge", "--base", "alice/tiny", "--adapter", "../testdata/tiny-lora",
		"--out", filepath.Join(t.TempDir(), "out"), "--keep-base", "--progress", "none")
	waitIdle(t, h)
	h.ResetStats()
	r2 := gohfRepo(h, kept)
	shards := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json"}
	paths, err := r2.DownloadFiles(shards...)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, files[shards[i]]) {
			t.Errorf("%s: %v", shards[i], err)
		}
	}
	waitIdle(t, h)
	if n := h.Stats().Requests[hubtest.RouteCDNGet]; n != 0 {
		t.Errorf("go-huggingface asked the CDN %d times for bytes hfmerge had cached", n)
	}
}
