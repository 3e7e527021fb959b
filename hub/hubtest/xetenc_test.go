package hubtest

// A small Xet encoder for the tests, written from the spec (xorb.md, shard.md): it
// builds the xorbs and shards a client would send, so each rejection can be provoked
// by changing one thing. It uses the package's hash functions; those are checked on
// their own against huggingface.js's and xet-core's vectors (TestXetHashVectors) and,
// in interop/, against the JavaScript client.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// encXorb is a xorb as a client builds it.
type encXorb struct {
	hash   xetHash
	body   []byte
	chunks []shardChunk // hash, raw offset and length of each chunk
	raw    uint32
}

// encodeXorb serializes chunks with the given scheme (schemeNone, schemeLZ4 or
// schemeBG4) for every chunk.
func encodeXorb(t testing.TB, chunks [][]byte, scheme byte) encXorb {
	t.Helper()
	var x encXorb
	var leaves []xetLeaf
	for _, data := range chunks {
		payload := data
		switch scheme {
		case schemeLZ4:
			payload = lz4Frame(t, data)
		case schemeBG4:
			payload = lz4Frame(t, bg4Split(data))
		}
		h := chunkHash(data)
		x.body = append(x.body, 0,
			byte(len(payload)), byte(len(payload)>>8), byte(len(payload)>>16),
			scheme,
			byte(len(data)), byte(len(data)>>8), byte(len(data)>>16))
		x.body = append(x.body, payload...)
		x.chunks = append(x.chunks, shardChunk{hash: h, rawOff: x.raw, rawLen: uint32(len(data))})
		x.raw += uint32(len(data))
		leaves = append(leaves, xetLeaf{h, uint64(len(data))})
	}
	x.hash = merkleRoot(leaves)
	return x
}

func lz4Frame(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w := lz4.NewWriter(&b)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bg4Split groups the bytes at positions 0, 1, 2, 3 mod 4.
func bg4Split(data []byte) []byte {
	out := make([]byte, 0, len(data))
	for s := 0; s < 4; s++ {
		for i := s; i < len(data); i += 4 {
			out = append(out, data[i])
		}
	}
	return out
}

// encTerm is one term of a file: chunks [start, end) of a xorb.
type encTerm struct {
	x          encXorb
	start, end int
}

// encFile is a file reconstruction as a client describes it in a shard.
type encFile struct {
	terms  []encTerm
	hash   xetHash // file hash; computed by newEncFile
	sha256 string  // hex; "" leaves out the metadata extension
}

func newEncFile(data []byte, terms ...encTerm) encFile {
	var leaves []xetLeaf
	for _, tm := range terms {
		for _, c := range tm.x.chunks[tm.start:tm.end] {
			leaves = append(leaves, xetLeaf{c.hash, uint64(c.rawLen)})
		}
	}
	sum := sha256.Sum256(data)
	return encFile{terms: terms, hash: fileHash(leaves), sha256: hex.EncodeToString(sum[:])}
}

// encodeShard serializes files and the CAS info of new xorbs, with no footer (as the
// spec asks) or with the 200-byte footer huggingface.js sends.
func encodeShard(t testing.TB, files []encFile, xorbs []encXorb, footer bool) []byte {
	t.Helper()
	var b bytes.Buffer
	u32 := func(v uint32) { binary.Write(&b, binary.LittleEndian, v) }
	u64 := func(v uint64) { binary.Write(&b, binary.LittleEndian, v) }
	bookend := func() { b.Write(xetBookend[:]); b.Write(make([]byte, 16)) }
	b.Write(xetShardTag[:])
	u64(shardHeaderVersion)
	if footer {
		u64(shardFooterSize)
	} else {
		u64(0)
	}
	for _, f := range files {
		b.Write(f.hash[:])
		flags := uint32(fileFlagWithVerify)
		if f.sha256 != "" {
			flags |= fileFlagWithMeta
		}
		u32(flags)
		u32(uint32(len(f.terms)))
		u64(0)
		for _, tm := range f.terms {
			var raw uint32
			for _, c := range tm.x.chunks[tm.start:tm.end] {
				raw += c.rawLen
			}
			b.Write(tm.x.hash[:])
			u32(0)
			u32(raw)
			u32(uint32(tm.start))
			u32(uint32(tm.end))
		}
		for _, tm := range f.terms {
			var hashes []xetHash
			for _, c := range tm.x.chunks[tm.start:tm.end] {
				hashes = append(hashes, c.hash)
			}
			rh := rangeHash(hashes)
			b.Write(rh[:])
			b.Write(make([]byte, 16))
		}
		if f.sha256 != "" {
			field, err := sha256Field(f.sha256)
			if err != nil {
				t.Fatal(err)
			}
			b.Write(field[:])
			b.Write(make([]byte, 16))
		}
	}
	bookend()
	casOff := b.Len()
	for _, x := range xorbs {
		b.Write(x.hash[:])
		u32(0)
		u32(uint32(len(x.chunks)))
		u32(x.raw)
		u32(uint32(len(x.body)))
		for _, c := range x.chunks {
			b.Write(c.hash[:])
			u32(c.rawOff)
			u32(c.rawLen)
			u64(0)
		}
	}
	bookend()
	if footer {
		foot := b.Len()
		u64(shardFooterVersion)
		u64(shardHeaderSize)
		u64(uint64(casOff))
		b.Write(make([]byte, 48+32)) // reserved, zero HMAC key
		u64(1700000000)
		u64(0)
		b.Write(make([]byte, 72))
		u64(uint64(foot))
	}
	return b.Bytes()
}

// splitFixed cuts data into pieces of n bytes (the fake does not re-chunk, so any
// boundaries do).
func splitFixed(data []byte, n int) [][]byte {
	var out [][]byte
	for len(data) > n {
		out = append(out, data[:n])
		data = data[n:]
	}
	return append(out, data)
}
