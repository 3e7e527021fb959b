package xet

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"testing"
	"testing/iotest"
)

// splitmix64Data is xet-core's create_random_data (chunking.rs tests): SplitMix64 from
// seed, each output appended as 8 little-endian bytes, cut to n. huggingface.js
// @huggingface/splitmix64-wasm createRandomArray is the same generator.
func splitmix64Data(n int, seed uint64) []byte {
	out := make([]byte, 0, n+8)
	s := seed
	for len(out) < n {
		s += 0x9E3779B97F4A7C15
		z := s
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		z ^= z >> 31
		for i := 0; i < 8; i++ {
			out = append(out, byte(z>>(8*i)))
		}
	}
	return out[:n]
}

// blockReader hands out at most n bytes per Read.
type blockReader struct {
	b []byte
	n int
}

func (r *blockReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n, len(r.b))
	copy(p, r.b[:k])
	r.b = r.b[k:]
	return k, nil
}

func chunksOf(t testing.TB, r io.Reader) [][]byte {
	t.Helper()
	cr := NewChunkReader(r)
	var out [][]byte
	for {
		c, err := cr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(c))
	}
}

func boundaries(chunks [][]byte) []int {
	var b []int
	pos := 0
	for _, c := range chunks {
		pos += len(c)
		b = append(b, pos)
	}
	return b
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestChunkBoundaries1MB: xet-core test_correctness_1mb_random_data and huggingface.js
// xetchunk-wasm "1MB random data": byte samples, the sha256 of the input, the 19
// boundaries and (from huggingface.js) the 19 chunk hashes, which check DATA_KEY.
func TestChunkBoundaries1MB(t *testing.T) {
	data := splitmix64Data(1_000_000, 0)
	if data[0] != 175 || data[127] != 132 || data[111111] != 118 {
		t.Fatalf("splitmix64 input differs from xet-core's: %d %d %d", data[0], data[127], data[111111])
	}
	if s := sha256.Sum256(data); hex.EncodeToString(s[:]) != "b3d0a1f7938cd4d8413a4dcffd4313e2e8ac0cb61cb1090eb140ea8e9154befb" {
		t.Fatalf("sha256 of the input %x", s)
	}
	want := []int{84493, 134421, 144853, 243318, 271793, 336457, 467529, 494581, 582000, 596735, 616815,
		653164, 678202, 724510, 815591, 827760, 958832, 991092, 1000000}
	wantHashes := []string{
		"6eca1e7dadaf08cca5d82d318c800f07c2ddcec115a7e8627e5edd9605b94b8d",
		"624ea34d72a06e5d43a1b8dd10763f0d22f165992c397ed97563899b27fdd88a",
		"4411d2ec847c6e3f451a7451ff3933adb4f1c31587421b9f730b698a78313b47",
		"6342bde97433e29e0779ad33eb8040d986679040361b3cc3a06230fe60dd6c9b",
		"405253fcf15bba751adc4f507d3453273daff81ed4d8acd71c521aa1cbddc0b5",
		"4482374af7f8bebfdb5c5df0299f80128d6c58886ad7b218c562b1d74064e4cb",
		"80acc8d39c853b4b8a8c6ad7b63bf2ea68f62c2226b92f06349f92cc84d213cc",
		"a7076d7d343f711fb20fe6cd023248d8d051e8fe7d44172596cd5c7ea7edaf65",
		"44755217bbb4dadc81ea7695765230a34a2e6cb3b55f373f1de35aeba79ae92c",
		"001adc1d302d5f039278325dcbd5ec3b194f4794f1629d6f962f9f4bb78a7bff",
		"f8460a337c186f07c2e225bb287a1d3d3d686dc69d0828e99640f7d8852c5b90",
		"c9bc3da29025dc1ba562d303d815151d9a937367abb766ae842a165e8493d9fe",
		"5044339dfd65e8163bdfe642614a6be604b04d6aeacf222cf219ad287bfc5cf1",
		"163622db0fe0da93f2ef964eed4c485f3c7a9c312f8e8e8a312ab4bb8141f13e",
		"e1730534a858aa0258ad8904ef12b829b8a123a1c611250275c9ca9471e4c650",
		"1fbc6854f9185caba1e1f55393f41f83b895b18f9c99245c029025ca48f1e14b",
		"8a27b66ccf05b864b6bef6fb5c970fe894f73d2330e8e98fe7841dcdbd9e9576",
		"bc70a33e7a9ec820cac24b87023469a57bdae1bf91cc3961b95806c64a525221",
		"03e5b5f5a088269ec4b329f1e04debfac4cb54b9c0facf038f7e8e0f054be7e2",
	}
	for _, block := range []int{1, 37, 255, 4096, 1 << 20} {
		chunks := chunksOf(t, &blockReader{data, block})
		if got := boundaries(chunks); !equalInts(got, want) {
			t.Fatalf("block %d: boundaries %v, want %v", block, got, want)
		}
		if block != 1<<20 {
			continue
		}
		for i, c := range chunks {
			if got := ChunkHash(c).String(); got != wantHashes[i] {
				t.Errorf("chunk %d: hash %s, want %s", i, got, wantHashes[i])
			}
		}
	}
}

// TestChunkBoundariesConst: xet-core test_correctness_1mb_const_data (59-filled): no
// gear boundary ever triggers, so every chunk is MaxChunk long.
func TestChunkBoundariesConst(t *testing.T) {
	data := bytes.Repeat([]byte{59}, 1_000_000)
	want := []int{131072, 262144, 393216, 524288, 655360, 786432, 917504, 1000000}
	for _, r := range []io.Reader{bytes.NewReader(data), iotest.HalfReader(bytes.NewReader(data))} {
		if got := boundaries(chunksOf(t, r)); !equalInts(got, want) {
			t.Fatalf("boundaries %v, want %v", got, want)
		}
	}
}

// TestChunkBoundariesStreaming: xet-core test_chunk_boundaries (seed 1, 256,000 bytes):
// the boundaries do not depend on the read block size.
func TestChunkBoundariesStreaming(t *testing.T) {
	data := splitmix64Data(256000, 1)
	ref := boundaries(chunksOf(t, bytes.NewReader(data)))
	if len(ref) < 2 {
		t.Fatalf("only %d chunks", len(ref))
	}
	for _, block := range []int{1, 37, 255, MinChunk - 65, MaxChunk + 1} {
		if got := boundaries(chunksOf(t, &blockReader{data, block})); !equalInts(got, ref) {
			t.Errorf("block %d: %v, want %v", block, got, ref)
		}
	}
}

// triggeringData is xet-core's get_triggering_base_data: a 128-byte pattern known to
// hit the mask, then padding zeros, doubled until n bytes.
func triggeringData(n, padding int) []byte {
	data := []byte{154, 52, 42, 34, 159, 75, 126, 224, 70, 236, 12, 196, 79, 236, 178, 124, 127, 50, 99,
		178, 44, 176, 174, 126, 250, 235, 205, 174, 252, 122, 35, 10, 20, 101, 214, 69, 193, 8, 115, 105,
		158, 228, 120, 111, 136, 162, 198, 251, 211, 183, 253, 252, 164, 147, 63, 16, 186, 162, 117, 23,
		170, 36, 205, 187, 174, 76, 210, 174, 211, 175, 12, 173, 145, 59, 2, 70, 222, 181, 159, 227, 182,
		156, 189, 51, 226, 106, 24, 50, 183, 157, 140, 10, 8, 23, 212, 70, 10, 234, 23, 33, 219, 254, 39,
		236, 70, 49, 191, 116, 9, 115, 15, 101, 26, 159, 165, 220, 15, 170, 56, 125, 92, 163, 94, 235, 38,
		40, 49, 81}
	data = append(data, make([]byte, padding)...)
	for len(data) < n {
		data = append(data, data[:min(n-len(data), len(data))]...)
	}
	return data
}

// TestChunkBoundariesMinimum: a sample of xet-core test_correctness_100kb_hitting_data,
// whose pattern triggers just around MinChunk and so checks the skip-ahead.
func TestChunkBoundariesMinimum(t *testing.T) {
	cases := []struct {
		padding int
		at11111 byte
		want    []int
	}{
		{0, 236, []int{8256, 16448, 24640, 32832, 41024, 49216, 57408, 65536}},
		{1, 50, []int{8320, 16576, 24832, 33088, 41344, 49600, 57856, 65536}},
		{2, 36, []int{8254, 16574, 24894, 33214, 41534, 49854, 58174, 65536}},
		{11, 0, []int{8265, 16466, 24667, 32868, 41069, 49270, 57471, 65536}},
		{61, 0, []int{8380, 16696, 25012, 33328, 41644, 49960, 58276, 65536}},
		{104, 0, []int{8416, 16768, 25120, 33472, 41824, 50176, 58528, 65536}},
		{126, 0, []int{8192, 16574, 24956, 33338, 41720, 50102, 58484, 65536}},
		{127, 0, []int{8224, 16639, 25054, 33469, 41884, 50299, 58714, 65536}},
	}
	for _, c := range cases {
		data := triggeringData(65536, c.padding)
		if data[11111] != c.at11111 {
			t.Fatalf("padding %d: input differs from xet-core's (%d at 11111)", c.padding, data[11111])
		}
		for _, block := range []int{1 << 20, 37} {
			if got := boundaries(chunksOf(t, &blockReader{data, block})); !equalInts(got, c.want) {
				t.Errorf("padding %d block %d: %v, want %v", c.padding, block, got, c.want)
			}
		}
	}
}

func TestChunkReaderError(t *testing.T) {
	data := splitmix64Data(300000, 3)
	boom := errors.New("boom")
	cr := NewChunkReader(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)))
	total := 0
	for {
		c, err := cr.Next()
		if err != nil {
			if !errors.Is(err, boom) {
				t.Fatalf("err %v, want boom", err)
			}
			break
		}
		total += len(c)
	}
	if total >= len(data) {
		t.Fatalf("the truncated last chunk was returned (%d of %d bytes)", total, len(data))
	}
}

// TestAggregatedHashes: every case of xet-core aggregated_hashes.rs test_correctness,
// committed as testdata/aggregated_hashes.json: xorb hash and file hash under 3 salts.
func TestAggregatedHashes(t *testing.T) {
	raw, err := os.ReadFile("testdata/aggregated_hashes.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Chunks [][2]any    `json:"chunks"`
		Xorb   string      `json:"xorb"`
		Files  [][2]string `json:"files"`
	}
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) != 18 {
		t.Fatalf("%d cases, want 18", len(cases))
	}
	for i, c := range cases {
		var chunks []Chunk
		for _, e := range c.Chunks {
			h, err := ParseHash(e[0].(string))
			if err != nil {
				t.Fatal(err)
			}
			chunks = append(chunks, Chunk{h, uint64(e[1].(float64))})
		}
		if got := XorbHash(chunks).String(); got != c.Xorb {
			t.Errorf("case %d (%d chunks): xorb hash %s, want %s", i, len(chunks), got, c.Xorb)
		}
		for _, f := range c.Files {
			salt, _ := ParseHash(f[0])
			if got := fileHashWithSalt(chunks, salt).String(); got != f[1] {
				t.Errorf("case %d salt %s: file hash %s, want %s", i, f[0], got, f[1])
			}
		}
	}
}

func chunkList(data []byte) []Chunk {
	var out []Chunk
	cr := NewChunkReader(bytes.NewReader(data))
	for {
		c, err := cr.Next()
		if err != nil {
			return out
		}
		out = append(out, Chunk{ChunkHash(c), uint64(len(c))})
	}
}

// TestHashVectors: huggingface.js xetchunk-wasm "Hash functions (verified against Rust
// thin-wasm)": xorb and file hashes of data[i] = (i*a+b)&0xff, the empty file, HMAC and
// verification hash.
func TestHashVectors(t *testing.T) {
	makeData := func(n, a, b int) []byte {
		d := make([]byte, n)
		for i := range d {
			d[i] = byte(i*a + b)
		}
		return d
	}
	small, large := chunkList(makeData(200000, 7, 13)), chunkList(makeData(1000000, 13, 37))
	if len(small) != 2 || len(large) != 8 {
		t.Fatalf("%d and %d chunks, want 2 and 8", len(small), len(large))
	}
	for _, c := range []struct{ got, want string }{
		{XorbHash(small).String(), "f0755d96ee199d4f01e83da9fe2c38353de7fd38fb79a320a7d50be510026f74"},
		{XorbHash(large).String(), "7be289d851485c40dcde52dbcf37a7823a5ef0bfcdf1ca1c5a32ad9594c71571"},
		{FileHash(small).String(), "d88d9e0b760f32c90b7c6592b4cb85251c01bb797371e3c637087b96ac578723"},
		{FileHash(large).String(), "041a50f3639f4a080a89237025d643e2a3e22935ca5d7dbc1a38f5c1e859f859"},
		{FileHash(nil).String(), "0000000000000000000000000000000000000000000000000000000000000000"},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
	h1, _ := ParseHash("118bbac5c38b2bca9c2b7ae8307786de066696b91b2b5ccb7dbbd4608c966882")
	h2, _ := ParseHash("7884d4de4bcc904767362a91e97eb6c2b6bc5f3a61b640d0cad8bb1129ff0827")
	key, _ := ParseHash("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
	if got := HMAC(h1, key).String(); got != "1e1f5ae2bae99fe030647a14a8c5fe6cdce57826387a7552236dfbebed533e04" {
		t.Errorf("hmac %s", got)
	}
	if got := VerificationHash([]Hash{h1, h2}).String(); got != "82d580dd3896919ef870af78b2c7bd21e67e79777922bbc8cef1fc21630c308c" {
		t.Errorf("verification hash %s", got)
	}
}

func TestHashString(t *testing.T) {
	var h Hash
	for i := range h {
		h[i] = byte(i)
	}
	// Each 8-byte group is printed as a little-endian u64: bytes 0..7 read 0x0706050403020100.
	want := "0706050403020100" + "0f0e0d0c0b0a0908" + "1716151413121110" + "1f1e1d1c1b1a1918"
	if h.String() != want {
		t.Fatalf("String %s, want %s", h, want)
	}
	back, err := ParseHash(want)
	if err != nil || back != h {
		t.Fatalf("ParseHash: %v %v", back, err)
	}
	for _, bad := range []string{"", want[:63], want + "0", "zz" + want[2:]} {
		if _, err := ParseHash(bad); err == nil {
			t.Errorf("ParseHash(%q) accepted", bad)
		}
	}
	if h.mod(4) != 0x1f1e1d1c1b1a1918%4 || h.mod(1024) != 0x1f1e1d1c1b1a1918%1024 {
		t.Errorf("mod reads the wrong bytes")
	}
}
