package xet

import (
	"bytes"
	"context"
	"testing"
)

// TestSessionHint: a file whose first chunk changed and which has no other eligible
// chunk finds no dedup answer by itself; hinted with the first chunk of the stored
// file it shares bytes with, it sends only what changed.
func TestSessionHint(t *testing.T) {
	base := splitmix64Data(1<<20, 31)
	merged := bytes.Clone(base)
	copy(merged[:100_000], splitmix64Data(100_000, 32))
	first, err := NewChunkReader(bytes.NewReader(base)).Next()
	if err != nil {
		t.Fatal(err)
	}
	for _, hint := range []bool{false, true} {
		cas := newTestCAS(t)
		s := NewSession(cas.client(ClientOptions{}), Options{})
		upload(t, s, base)
		closeSession(t, s)
		before, _, _ := cas.stats()
		s2 := NewSession(cas.client(ClientOptions{}), Options{})
		if hint {
			if err := s2.Hint(context.Background(), ChunkHash(first)); err != nil {
				t.Fatal(err)
			}
		}
		res := upload(t, s2, merged)
		closeSession(t, s2)
		after, _, _ := cas.stats()
		sent := after - before
		if !bytes.Equal(cas.file(res.Hash), merged) {
			t.Fatal("the CAS rebuilds the file wrong")
		}
		t.Logf("hint %v: sent %d of %d bytes, 100000 changed", hint, sent, len(merged))
		if hint && sent > 100_000+2*MaxChunk {
			t.Errorf("hinted: sent %d bytes for 100000 changed", sent)
		}
		if !hint && sent < int64(len(merged))*9/10 {
			t.Errorf("unhinted: sent only %d bytes; the test's premise (no answer without the hint) fails", sent)
		}
	}
}

// TestSessionXorbBytes: a session with a smaller xorb cap cuts more, smaller xorbs, and
// the CAS rebuilds the file from them.
func TestSessionXorbBytes(t *testing.T) {
	data := splitmix64Data(4<<20, 41)
	cas := newTestCAS(t)
	s := NewSession(cas.client(ClientOptions{}), Options{XorbBytes: 1 << 20})
	res := upload(t, s, data)
	sum := closeSession(t, s)
	if sum.XorbsSent < 4 {
		t.Fatalf("%d xorbs for 4 MiB under a 1 MiB cap", sum.XorbsSent)
	}
	if sum.XorbBytes > int64(sum.XorbsSent)<<20 {
		t.Fatalf("%d xorb bytes in %d xorbs: over the cap", sum.XorbBytes, sum.XorbsSent)
	}
	if !bytes.Equal(cas.file(res.Hash), data) {
		t.Fatal("the CAS rebuilds the file wrong")
	}
}
