package merge

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/safetensors"
)

// aheadShard is a shard of one 2048-row weight with a LoRA: blocks of 408 rows.
func aheadShard(t *testing.T) *Shard {
	t.Helper()
	sh := oneWeight(t, safetensors.BF16, 2048, 640, 8, Options{Jobs: 2})
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

// TestReadAheadReaders: two readers going in order through their own parts, as the
// parts of a multipart upload do, each find the blocks after theirs computed.
func TestReadAheadReaders(t *testing.T) {
	sh := aheadShard(t)
	if len(sh.ahead.order) < 5 {
		t.Fatalf("%d blocks; the test needs 5", len(sh.ahead.order))
	}
	at := func(i int) int64 {
		k := sh.ahead.order[i]
		m := sh.tensors[k.tensor]
		return m.off + int64(k.block*m.blockRows*m.cols*size(m.t.DType))
	}
	p := make([]byte, 10)
	for _, off := range []int64{at(1), at(3), at(1) + 10, at(3) + 10} { // interleaved
		if _, err := sh.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second) // a bound on waiting, not on speed
	for _, i := range []int{2, 4} {
		for !sh.blocks.has(sh.ahead.order[i]) {
			if time.Now().After(deadline) {
				t.Fatalf("block %d, after a reader's, was not computed ahead", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for len(sh.ahead.slots) > 0 {
		time.Sleep(time.Millisecond)
	}
}
