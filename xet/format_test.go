package xet

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"testing"
)

// bf16Like is data whose high bytes repeat, as bf16 weights' exponents do: BG4 should
// compress it better than LZ4 alone.
func bf16Like(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	d := make([]byte, n)
	for i := range d {
		if i%2 == 1 {
			d[i] = 0x3c + byte(r.IntN(2))
		} else {
			d[i] = byte(r.Uint32())
		}
	}
	return d
}

func buildXorb(t *testing.T, chunks ...[]byte) serializedXorb {
	t.Helper()
	b := &xorbBuilder{comp: newCompressor()}
	for _, c := range chunks {
		if !b.fits(len(c)) {
			t.Fatal("chunk does not fit")
		}
		if _, err := b.add(c, ChunkHash(c)); err != nil {
			t.Fatal(err)
		}
	}
	return b.seal()
}

func TestXorbRoundTrip(t *testing.T) {
	random := splitmix64Data(100000, 5)
	text := bytes.Repeat([]byte("the same words again and again "), 3000)
	bf := bf16Like(65536+3, 7) // a remainder mod 4 exercises BG4's uneven groups
	x := buildXorb(t, random, text, bf, []byte{42})
	p, err := ParseXorb(x.data)
	if err != nil {
		t.Fatal(err)
	}
	if p.Hash != x.hash {
		t.Fatalf("parsed hash %s, built %s", p.Hash, x.hash)
	}
	want := [][]byte{random, text, bf, {42}}
	schemes := []uint8{CompressionNone, CompressionLZ4, CompressionBG4, CompressionNone}
	for i, c := range p.Chunks {
		if !bytes.Equal(c.Data, want[i]) {
			t.Errorf("chunk %d differs after the round trip", i)
		}
		if c.Scheme != schemes[i] {
			t.Errorf("chunk %d stored with scheme %d, want %d", i, c.Scheme, schemes[i])
		}
	}
	// Compression never changes the xorb hash.
	plain := &xorbBuilder{comp: newCompressor()}
	plain.comp.disabled = true
	for _, c := range want {
		plain.add(c, ChunkHash(c))
	}
	if px := plain.seal(); px.hash != x.hash || len(px.data) <= len(x.data) {
		t.Errorf("uncompressed xorb: hash %s (want %s), %d bytes vs %d compressed", px.hash, x.hash, len(px.data), len(x.data))
	}
}

func TestBG4(t *testing.T) {
	for n := 0; n < 12; n++ {
		d := make([]byte, n)
		for i := range d {
			d[i] = byte(i)
		}
		g := bg4Split(nil, d)
		// Group 0 holds positions 0,4,8…, then group 1, as xet-core bg4_split_together.
		var want []byte
		for k := 0; k < 4; k++ {
			for i := k; i < n; i += 4 {
				want = append(want, byte(i))
			}
		}
		if !bytes.Equal(g, want) || !bytes.Equal(bg4Join(nil, g), d) {
			t.Errorf("n=%d: split %v, want %v", n, g, want)
		}
	}
}

func TestParseXorbRejects(t *testing.T) {
	good := buildXorb(t, bytes.Repeat([]byte("abcdefgh"), 2000), splitmix64Data(9000, 2)).data
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":          {},
		"short header":   good[:5],
		"truncated":      good[:len(good)-1],
		"version":        mut(func(b []byte) []byte { b[0] = 1; return b }),
		"scheme":         mut(func(b []byte) []byte { b[4] = 7; return b }),
		"raw too large":  mut(func(b []byte) []byte { put24(b[5:8], MaxChunk+1); return b }),
		"raw mismatch":   mut(func(b []byte) []byte { put24(b[5:8], get24(b[5:8])+1); return b }),
		"frame magic":    mut(func(b []byte) []byte { b[8] ^= 0xff; return b }),
		"footer":         append(bytes.Clone(good), []byte("XETBLOB\x00")...),
		"none mismatch":  appendChunkRecord(nil, CompressionNone, []byte("abc"), 4),
		"oversize input": make([]byte, MaxXorbBytes+1),
	}
	for name, data := range cases {
		if _, err := ParseXorb(data); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
	// A flipped byte inside a frame may still decode: the chunk hash then differs.
	flipped := mut(func(b []byte) []byte { b[40] ^= 0xff; return b })
	if p, err := ParseXorb(flipped); err == nil && p.Hash == buildXorb(t, bytes.Repeat([]byte("abcdefgh"), 2000), splitmix64Data(9000, 2)).hash {
		t.Errorf("a corrupted xorb parsed to the original hash")
	}
	var many []byte
	for i := 0; i <= MaxXorbChunks; i++ {
		many = appendChunkRecord(many, CompressionNone, []byte{byte(i)}, 1)
	}
	if _, err := ParseXorb(many); !errors.Is(err, ErrMalformed) {
		t.Errorf("%d chunks accepted", MaxXorbChunks+1)
	}
}

func TestXorbBuilderLimits(t *testing.T) {
	b := &xorbBuilder{comp: newCompressor()}
	one := []byte{1}
	for b.fits(1) {
		b.add(one, ChunkHash(one))
	}
	if len(b.chunks) != MaxXorbChunks {
		t.Fatalf("builder stopped at %d chunks, want %d", len(b.chunks), MaxXorbChunks)
	}
	big := &xorbBuilder{comp: newCompressor()}
	big.comp.disabled = true
	chunk := splitmix64Data(MaxChunk, 9)
	for big.fits(len(chunk)) {
		big.add(chunk, ChunkHash(chunk))
	}
	if len(big.data) > MaxXorbBytes || len(big.data)+chunkHeaderLen+MaxChunk <= MaxXorbBytes {
		t.Fatalf("builder stopped at %d bytes; limit %d", len(big.data), MaxXorbBytes)
	}
	if cap(big.data) > MaxXorbBytes {
		t.Errorf("builder reserved %d bytes, over the limit", cap(big.data))
	}
}

func sampleShard() *Shard {
	d := sha256.Sum256([]byte("file"))
	h := func(b byte) Hash { var x Hash; x[0], x[31] = b, b; return x }
	return &Shard{
		Files: []FileInfo{{
			Hash:         h(1),
			Terms:        []Term{{Xorb: h(2), Bytes: 1000, Start: 0, End: 3}, {Xorb: h(3), Bytes: 5, Start: 7, End: 8}},
			Verification: []Hash{h(4), h(5)},
			SHA256:       &d,
		}},
		Xorbs: []XorbInfo{{Hash: h(2), RawBytes: 1000, StoredBytes: 900, Chunks: []XorbChunkInfo{
			{Hash: h(6), Offset: 0, Size: 400, Flags: ChunkFlagGlobalDedup}, {Hash: h(7), Offset: 400, Size: 300}, {Hash: h(8), Offset: 700, Size: 300},
		}}},
	}
}

func TestShardRoundTrip(t *testing.T) {
	s := sampleShard()
	b, err := s.MarshalUpload()
	if err != nil {
		t.Fatal(err)
	}
	// header + file(1 + 2 terms + 2 verification + ext) + bookend + xorb(1 + 3) + bookend
	if want := 48 + 48*(6+1+4+1); len(b) != want {
		t.Fatalf("shard is %d bytes, want %d", len(b), want)
	}
	if le64(b, 40) != 0 {
		t.Errorf("upload shard footer_size %d, want 0", le64(b, 40))
	}
	if got := le32(b, 48+32); got != fileFlagVerify|fileFlagMetaExt {
		t.Errorf("file flags %#x", got)
	}
	// The sha256 is stored so that its Hash string is the usual hex digest.
	ext := Hash(b[48+5*48 : 48+5*48+32])
	if ext.String() != hexOf(*s.Files[0].SHA256) {
		t.Errorf("sha256 field prints %s", ext)
	}
	p, err := ParseShard(b)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(p)
	want, _ := json.Marshal(s)
	if !bytes.Equal(got, want) {
		t.Errorf("round trip:\n got %s\nwant %s", got, want)
	}
}

func hexOf(d [32]byte) string {
	const digits = "0123456789abcdef"
	var b []byte
	for _, c := range d {
		b = append(b, digits[c>>4], digits[c&15])
	}
	return string(b)
}

func TestParseShardRejects(t *testing.T) {
	good, _ := sampleShard().MarshalUpload()
	mut := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	cases := map[string][]byte{
		"short":            good[:40],
		"tag":              mut(func(b []byte) { b[3] ^= 1 }),
		"version":          mut(func(b []byte) { b[32] = 3 }),
		"footer size":      mut(func(b []byte) { b[40] = 7 }),
		"no bookend":       good[:len(good)-48],
		"trailing bytes":   append(bytes.Clone(good), make([]byte, 48)...),
		"too many terms":   mut(func(b []byte) { b[48+36] = 200 }),
		"empty term":       mut(func(b []byte) { b[48+48+44] = 0 }),
		"too many chunks":  mut(func(b []byte) { b[48+7*48+36], b[48+7*48+37] = 0xff, 0xff }),
		"footer too short": mut(func(b []byte) { b[40] = 200 }),
	}
	for name, data := range cases {
		if _, err := ParseShard(data); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
}

// TestRecordedDedupAnswer parses huggingface.js packages/hub/tests/gpt2-64-8bits.tflite.shard
// (MIT, committed with its .json) as shardParser.spec.ts does: a real global-dedup answer
// with a footer and an HMAC key.
func TestRecordedDedupAnswer(t *testing.T) {
	data, err := os.ReadFile("testdata/gpt2-64-8bits.tflite.shard")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile("testdata/gpt2-64-8bits.tflite.shard.json")
	var want struct {
		HMACKey string `json:"hmac_key"`
		Xorbs   []struct {
			Hash        string   `json:"hash"`
			ChunkHashes []string `json:"chunk_hashes"`
		} `json:"xorbs"`
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	s, err := ParseShard(data)
	if err != nil {
		t.Fatal(err)
	}
	if s.Footer == nil || s.Footer.HMACKey.String() != want.HMACKey {
		t.Fatalf("footer %+v, want HMAC key %s", s.Footer, want.HMACKey)
	}
	if len(s.Files) != 0 || len(s.Xorbs) != len(want.Xorbs) {
		t.Fatalf("%d files, %d xorbs; want 0 and %d", len(s.Files), len(s.Xorbs), len(want.Xorbs))
	}
	for i, x := range s.Xorbs {
		if x.Hash.String() != want.Xorbs[i].Hash || len(x.Chunks) != len(want.Xorbs[i].ChunkHashes) {
			t.Fatalf("xorb %d: %s with %d chunks", i, x.Hash, len(x.Chunks))
		}
		for j, c := range x.Chunks {
			if c.Hash.String() != want.Xorbs[i].ChunkHashes[j] {
				t.Fatalf("xorb %d chunk %d: %s", i, j, c.Hash)
			}
		}
	}
	chunk, _ := ParseHash("9502eec19d4b0c9f7b389228fa801f68ecdf15d69ccd1da2f9ddbd0219898335")
	if HMAC(chunk, s.Footer.HMACKey) != s.Xorbs[1].Chunks[0].Hash {
		t.Errorf("HMAC(chunk, key) is not the answer's xorb 1 chunk 0")
	}
	if s.Footer.KeyExpiry == 0 || s.Footer.KeyExpiry <= s.Footer.Created {
		t.Errorf("key expiry %d, created %d", s.Footer.KeyExpiry, s.Footer.Created)
	}
}
