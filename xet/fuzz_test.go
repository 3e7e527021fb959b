package xet

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"testing"
)

// FuzzParseShard: no input panics or allocates beyond its size, every rejection is
// ErrMalformed, and what parses as an upload shard (no footer) writes back to a shard
// that parses to the same content (reserved fields aside, which the writer zeroes).
func FuzzParseShard(f *testing.F) {
	good, _ := sampleShard().MarshalUpload()
	f.Add(good)
	f.Add(good[:len(good)-48])
	if answer, err := os.ReadFile("testdata/gpt2-64-8bits.tflite.shard"); err == nil {
		f.Add(answer) // a real dedup answer, with footer and HMAC key
	} else {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseShard(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error without ErrMalformed: %v", err)
			}
			return
		}
		if s.Footer != nil {
			return
		}
		for _, fi := range s.Files {
			if fi.Verification == nil {
				return // uploads always carry them; the writer insists
			}
		}
		out, err := s.MarshalUpload()
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseShard(out)
		if err != nil {
			t.Fatalf("the written shard does not parse: %v", err)
		}
		a, _ := json.Marshal(s)
		b, _ := json.Marshal(again)
		if !bytes.Equal(a, b) {
			t.Fatalf("round trip changed the shard:\n%s\n%s", a, b)
		}
	})
}

// FuzzParseXorb: no input panics; what parses re-serializes (uncompressed) to a xorb
// with the same hash and chunks.
func FuzzParseXorb(f *testing.F) {
	seed := &xorbBuilder{comp: newCompressor()}
	for _, c := range [][]byte{bytes.Repeat([]byte("ab"), 3000), splitmix64Data(700, 1), bf16Like(1001, 2)} {
		seed.add(c, ChunkHash(c))
	}
	f.Add(seed.seal().data)
	f.Add(appendChunkRecord(nil, CompressionNone, []byte("abc"), 3))
	comp := newCompressor()
	comp.disabled = true // the hash ignores compression; keep executions fast
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := ParseXorb(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error without ErrMalformed: %v", err)
			}
			return
		}
		b := &xorbBuilder{comp: comp}
		for _, c := range x.Chunks {
			if len(c.Data) > MaxChunk || ChunkHash(c.Data) != c.Hash {
				t.Fatalf("chunk of %d bytes or wrong hash", len(c.Data))
			}
			if !b.fits(len(c.Data)) {
				return
			}
			b.add(c.Data, c.Hash)
		}
		again, err := ParseXorb(b.seal().data)
		if err != nil || again.Hash != x.Hash {
			t.Fatalf("re-serialized xorb: %v, hash %v vs %v", err, again, x.Hash)
		}
	})
}
