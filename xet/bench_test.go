package xet

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
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

// BenchmarkBLAKE3 is the keyed hash on 1 MiB, where lukechampine.com/blake3 uses its
// AVX-512/AVX2 paths fully; chunks (64 KiB) hash a little slower.
func BenchmarkBLAKE3(b *testing.B) {
	data := splitmix64Data(1<<20, 1)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		ChunkHash(data)
	}
}

func BenchmarkSHA256(b *testing.B) {
	data := splitmix64Data(1<<20, 1)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		sha256Of(data)
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

// splitmixReader streams SplitMix64 bytes without holding them.
type splitmixReader struct {
	s, left uint64
}

func (r *splitmixReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := min(uint64(len(p)), r.left) &^ 7
	if n == 0 {
		n = min(uint64(len(p)), r.left)
	}
	for i := uint64(0); i < n; i += 8 {
		r.s += 0x9E3779B97F4A7C15
		z := r.s
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		z ^= z >> 31
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], z)
		copy(p[i:n], b[:])
	}
	r.left -= n
	return int(n), nil
}

// BenchmarkSessionUpload streams 512 MiB of new (incompressible) data through a
// session to a CAS that accepts everything unchecked, and reports the peak Go heap,
// which must stay near two xorbs plus the lookahead whatever the file size.
func BenchmarkSessionUpload(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch {
		case r.Method == http.MethodHead || r.Method == http.MethodGet:
			w.WriteHeader(http.StatusNotFound)
		case strings.HasPrefix(r.URL.Path, "/v1/xorbs/"):
			io.WriteString(w, `{"was_inserted":true}`)
		default:
			io.WriteString(w, `{"result":1}`)
		}
	}))
	defer srv.Close()
	c := NewClient(func(context.Context) (Token, error) {
		return Token{AccessToken: "t", Expiry: time.Now().Add(time.Hour), CASURL: srv.URL}, nil
	}, ClientOptions{})
	const size = 512 << 20
	var peak uint64
	var ms runtime.MemStats
	sample := func(Progress) {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	b.SetBytes(size)
	for b.Loop() {
		b.StopTimer()
		runtime.GC() // the last iteration's session is garbage, not this one's peak
		b.StartTimer()
		s := NewSession(c, Options{Progress: sample})
		if _, err := s.Upload(context.Background(), &splitmixReader{s: 1, left: size}); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	if status, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				var kb float64
				fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
				b.ReportMetric(kb/1024, "peak-RSS-MiB")
			}
		}
	}
}
