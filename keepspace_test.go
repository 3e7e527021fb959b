package hfmerge

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// TestKeepBaseChecksSpace: with --keep-base, a base that would not fit in the cache
// is refused before any shard is downloaded; with room it is merged and kept.
func TestKeepBaseChecksSpace(t *testing.T) {
	base, adapter := model(t, tinySpec(), 2, []string{"self_attn.q_proj"}, nil)
	h := hubtest.New().Start(t)
	files := map[string][]byte{}
	entries, _ := os.ReadDir(base)
	var shards int64
	for _, e := range entries {
		files[e.Name()], _ = os.ReadFile(filepath.Join(base, e.Name()))
		if strings.HasSuffix(e.Name(), ".safetensors") {
			shards += int64(len(files[e.Name()]))
		}
	}
	if _, err := h.Seed("alice/base", files); err != nil {
		t.Fatal(err)
	}
	client, err := hub.New(hub.Options{Endpoint: h.URL(), Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(t.TempDir(), "hub")
	o := &Sources{Client: client, Anonymous: true, CacheDir: cacheDir, KeepBase: true}
	l := loadDirs(t, o, "alice/base", adapter)
	p := l.Plan()
	h.ResetStats()
	small := disk{freeSpace: func(string) (int64, bool) { return shards - 1, true }}
	err = MergeDir(context.Background(), l, p, filepath.Join(t.TempDir(), "out"), MergeOptions{disk: small})
	if err == nil || !strings.Contains(err.Error(), "--keep-base would download") || !strings.Contains(err.Error(), cacheDir) {
		t.Fatalf("error %v", err)
	}
	h.WaitIdle(context.Background())
	if n := h.Stats().Requests[hubtest.RouteCDNGet]; n != 0 {
		t.Errorf("%d downloads before the refusal", n)
	}
	room := disk{freeSpace: func(string) (int64, bool) { return shards * 10, true }}
	if err := MergeDir(context.Background(), l, p, filepath.Join(t.TempDir(), "out"), MergeOptions{disk: room}); err != nil {
		t.Fatal(err)
	}
}
