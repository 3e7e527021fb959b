package hfmerge

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestJournalBaseStamp: a journal that recorded a base file's stamp is used while the
// file is the same, and started over as soon as any base file differs from it.
func TestJournalBaseStamp(t *testing.T) {
	dir := t.TempDir()
	base := &localSource{dir: dir}
	shard := filepath.Join(dir, "model-00001-of-00002.safetensors")
	if err := os.WriteFile(shard, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	stamp := fileStamp(base, "model-00001-of-00002.safetensors")
	path := filepath.Join(t.TempDir(), "journal.json")
	j := openJournal(path, "in", "target", map[string]string{"model-00001-of-00002.safetensors": stamp})
	sha := "0000000000000000000000000000000000000000000000000000000000000001"
	if err := j.set("out-1", journalShard{SHA256: sha, Size: 9, BaseFile: "model-00001-of-00002.safetensors", Base: "b", BaseStamp: stamp}); err != nil {
		t.Fatal(err)
	}
	// The upload's record keeps what learning found.
	if err := j.set("out-1", journalShard{SHA256: sha, Size: 9, Uploaded: true}); err != nil {
		t.Fatal(err)
	}
	again := openJournal(path, "in", "target", map[string]string{"model-00001-of-00002.safetensors": stamp})
	if s, ok := again.get("out-1", 9); !ok || again.stale || s.Base != "b" || !s.Uploaded {
		t.Fatalf("unchanged base: %+v %v stale %v", s, ok, again.stale)
	}
	// Same size, rewritten in place: another modification time.
	if err := os.WriteFile(shard, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(shard, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	now := fileStamp(base, "model-00001-of-00002.safetensors")
	if now == stamp {
		t.Fatal("the stamp did not change")
	}
	changed := openJournal(path, "in", "target", map[string]string{"model-00001-of-00002.safetensors": now})
	if _, ok := changed.get("out-1", 9); ok || !changed.stale {
		t.Errorf("a journal of a changed base was used")
	}
}
