package merge

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// aheadShard is a shard of one 2048-row weight with a LoRA: 5 blocks of 384 rows.
func aheadShard(t *testing.T) *Shard {
	t.Helper()
	m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
	rnd := fixture.NewRand(3)
	m.Tensors = []*fixture.Tensor{{Name: "layer.proj.weight", DType: safetensors.BF16, Shape: []int64{2048, 640},
		Values: rnd.Normal(2048*640, 0.02, safetensors.BF16)}}
	a := fixture.NewAdapter(8, 16, "proj")
	a.Linear("layer.proj", 2048, 640, 8, safetensors.F32, rnd)
	dir := t.TempDir()
	if err := m.Write(filepath.Join(dir, "base")); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(filepath.Join(dir, "adapter")); err != nil {
		t.Fatal(err)
	}
	in, files, closeAll, err := fixture.Open(filepath.Join(dir, "base"), filepath.Join(dir, "adapter"), mergeplan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeAll)
	p := mergeplan.Build(in)
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	sh, err := New(&p.Shards[0], files, Options{Jobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(sh.ahead.order); n < 4 {
		t.Fatalf("%d blocks; the test needs several", n)
	}
	return sh
}

// TestReadAhead: a reader going in order finds the next blocks computed for it; one
// reading elsewhere starts nothing; the bytes are the same either way.
func TestReadAhead(t *testing.T) {
	sh := aheadShard(t)
	var want bytes.Buffer
	if _, err := sh.Write(context.Background(), &want, nil); err != nil {
		t.Fatal(err)
	}

	// Out of order: the third block first.
	sh = aheadShard(t)
	t2 := sh.tensors[sh.ahead.order[2].tensor]
	blockBytes := int64(t2.blockRows * t2.cols * size(t2.t.DType))
	off := t2.off + 2*blockBytes
	p := make([]byte, 10)
	if _, err := sh.ReadAt(p, off); err != nil {
		t.Fatal(err)
	}
	if n := len(sh.ahead.slots); n != 0 {
		t.Errorf("a read out of order started %d blocks ahead", n)
	}
	if !bytes.Equal(p, want.Bytes()[off:off+10]) {
		t.Error("bytes differ")
	}

	// In order from the start: the first read of the first block starts the next.
	sh = aheadShard(t)
	first := sh.tensors[sh.ahead.order[0].tensor].off
	if _, err := sh.ReadAt(p, first); err != nil {
		t.Fatal(err)
	}
	next := sh.ahead.order[1 : 1+min(sh.ahead.depth, len(sh.ahead.order)-1)]
	deadline := time.Now().Add(30 * time.Second) // a bound on waiting, not on speed
	for _, k := range next {
		for !sh.blocks.has(k) {
			if time.Now().After(deadline) {
				t.Fatalf("block %v was not computed ahead", k)
			}
			time.Sleep(time.Millisecond)
		}
	}
	got := make([]byte, sh.Size())
	for o := int64(0); o < sh.Size(); o += 4096 {
		if _, err := sh.ReadAt(got[o:min(o+4096, sh.Size())], o); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Error("reading in order with read-ahead gives other bytes than Write")
	}
	for len(sh.ahead.slots) > 0 { // let the last read-ahead finish before the files close
		time.Sleep(time.Millisecond)
	}
}
