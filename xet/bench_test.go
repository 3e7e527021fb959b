package xet

import (
	"bytes"
	"testing"
)

// Benchmarks of the per-byte work of an upload: go test -bench . ./xet

func BenchmarkChunker(b *testing.B) {
	data := splitmix64Data(64<<20, 1)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		cr := NewChunkReader(bytes.NewReader(data))
		for {
			if _, err := cr.Next(); err != nil {
				break
			}
		}
	}
}

func BenchmarkChunkHash(b *testing.B) {
	data := splitmix64Data(TargetChunk, 1)
	s := NewSession(nil, Options{})
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		s.chunkHash(data)
	}
}

func BenchmarkXorbHash(b *testing.B) {
	chunks := chunkList(splitmix64Data(64<<20, 2)) // about 1,000 chunks: one xorb
	b.ReportMetric(float64(len(chunks)), "chunks")
	for b.Loop() {
		XorbHash(chunks)
	}
}

func benchCompress(b *testing.B, data []byte) {
	c := newCompressor()
	var dst []byte
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		dst, _ = c.appendChunk(dst[:0], data)
	}
	b.ReportMetric(float64(len(dst))/float64(len(data)), "ratio")
}

func BenchmarkCompressRandom(b *testing.B) { benchCompress(b, splitmix64Data(TargetChunk, 3)) }
func BenchmarkCompressBF16(b *testing.B)   { benchCompress(b, bf16Like(TargetChunk, 4)) }

func BenchmarkParseXorb(b *testing.B) {
	bl := &xorbBuilder{comp: newCompressor()}
	for i := 0; i < 64; i++ {
		c := bf16Like(TargetChunk, uint64(i))
		bl.add(c, ChunkHash(c))
	}
	x := bl.seal()
	b.SetBytes(int64(x.raw))
	for b.Loop() {
		ParseXorb(x.data)
	}
}
