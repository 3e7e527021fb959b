package xet

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"lukechampine.com/blake3"
)

// Hash is a 32-byte Xet hash in its raw byte order, as shards and the hash inputs carry it.
type Hash [32]byte

// Keys of the keyed BLAKE3 hashes (xet-core merklehash/data_hash.rs DATA_KEY and
// INTERNAL_NODE_HASH, metadata_shard/chunk_verification.rs VERIFICATION_KEY; the same
// bytes are in huggingface.js xetchunk-wasm and the spec's hashing.md).
var (
	dataKey = [32]byte{102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
		157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41}
	internalNodeKey = [32]byte{1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
		93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63}
	verificationKey = [32]byte{127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243,
		164, 205, 38, 213, 181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195}
)

// String is the form the CAS API, URLs and Merkle node text use: each 8-byte group read
// as a little-endian u64 and printed as 16 lowercase hex digits. It is not the plain hex
// of the bytes (spec api.md "Converting Hashes to Strings"; xet-core DataHash::hex).
func (h Hash) String() string {
	var b [64]byte
	h.appendString(b[:0])
	return string(b[:])
}

func (h Hash) appendString(dst []byte) []byte {
	for i := 0; i < 4; i++ {
		var g [8]byte
		binary.BigEndian.PutUint64(g[:], binary.LittleEndian.Uint64(h[8*i:]))
		dst = hex.AppendEncode(dst, g[:])
	}
	return dst
}

// ParseHash reads the string form String writes.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 64 {
		return h, fmt.Errorf("xet: hash %q: want 64 hex digits, have %d characters", s, len(s))
	}
	var raw [32]byte
	if _, err := hex.Decode(raw[:], []byte(s)); err != nil {
		return h, fmt.Errorf("xet: hash %q: %w", s, err)
	}
	for i := 0; i < 4; i++ {
		binary.LittleEndian.PutUint64(h[8*i:], binary.BigEndian.Uint64(raw[8*i:]))
	}
	return h, nil
}

// IsZero reports the all-zero hash (the empty file, and "no HMAC key").
func (h Hash) IsZero() bool { return h == Hash{} }

// mod is the hash's last 8 bytes as a little-endian u64, modulo n: the rule both the
// Merkle cuts (n = 4) and global-dedup eligibility (n = 1024) use (xet-core
// `impl Rem for DataHash` reads self[3]).
func (h Hash) mod(n uint64) uint64 { return binary.LittleEndian.Uint64(h[24:]) % n }

func keyed(key *[32]byte, parts ...[]byte) Hash {
	hs := blake3.New(32, key[:])
	for _, p := range parts {
		hs.Write(p)
	}
	var h Hash
	hs.Sum(h[:0])
	return h
}

// ChunkHash is the hash of one chunk's bytes: BLAKE3 keyed with DATA_KEY.
func ChunkHash(data []byte) Hash { return keyed(&dataKey, data) }

// HMAC is the keyed hash a global-dedup answer stores in place of each chunk hash:
// BLAKE3 keyed with the answer's key over the raw hash bytes (xet-core DataHash::hmac).
func HMAC(h, key Hash) Hash { return keyed((*[32]byte)(&key), h[:]) }

// VerificationHash is the range hash a shard's verification entry carries for a term:
// BLAKE3 keyed with VERIFICATION_KEY over the raw chunk hashes of the term, concatenated.
func VerificationHash(chunks []Hash) Hash {
	hs := blake3.New(32, verificationKey[:])
	for i := range chunks {
		hs.Write(chunks[i][:])
	}
	var h Hash
	hs.Sum(h[:0])
	return h
}

// Chunk names a chunk by hash and length, the leaves of the xorb and file hashes.
type Chunk struct {
	Hash Hash
	Size uint64
}

// XorbHash is the aggregated Merkle root of a xorb's chunks (xet-core
// merklehash/aggregated_hashes.rs): levels are cut into groups of 2 to 9 nodes, a group
// ending at the first node from the third on whose hash is 0 mod 4, and each group
// becomes BLAKE3 keyed with INTERNAL_NODE_KEY over "{hash} : {size}\n" per member,
// until one node is left. One chunk is its own root; no chunk gives the zero hash.
func XorbHash(chunks []Chunk) Hash {
	if len(chunks) == 0 {
		return Hash{}
	}
	level := append([]Chunk(nil), chunks...)
	buf := make([]byte, 0, 9*90)
	for len(level) > 1 {
		out := level[:0]
		for i := 0; i < len(level); {
			n := mergeCut(level[i:])
			buf = buf[:0]
			var size uint64
			for _, c := range level[i : i+n] {
				buf = c.Hash.appendString(buf)
				buf = append(buf, " : "...)
				buf = fmt.Appendf(buf, "%d\n", c.Size)
				size += c.Size
			}
			out = append(out, Chunk{Hash: keyed(&internalNodeKey, buf), Size: size})
			i += n
		}
		level = out
	}
	return level[0].Hash
}

// mergeCut is the size of the next group: all of at most 2 nodes; else the first i in
// [2, 9) whose hash is 0 mod 4 gives i+1; else up to 9 (xet-core next_merge_cut).
func mergeCut(nodes []Chunk) int {
	if len(nodes) <= 2 {
		return len(nodes)
	}
	end := min(9, len(nodes))
	for i := 2; i < end; i++ {
		if nodes[i].Hash.mod(4) == 0 {
			return i + 1
		}
	}
	return end
}

// FileHash is the file id: the Merkle root of all the file's chunks, keyed once more
// with the salt (32 zero bytes for Hub files). An empty file has the zero hash, which
// the CAS expects (xet-core file_hash_with_salt; huggingface.js #2243).
func FileHash(chunks []Chunk) Hash { return fileHashWithSalt(chunks, Hash{}) }

func fileHashWithSalt(chunks []Chunk, salt Hash) Hash {
	if len(chunks) == 0 {
		return Hash{}
	}
	return HMAC(XorbHash(chunks), salt)
}

// globalDedupEligible: the spec queries the global dedup index for a file's first chunk
// and for every chunk whose hash is 0 mod 1024 (xet-core hash_is_global_dedup_eligible).
func globalDedupEligible(h Hash) bool { return h.mod(1024) == 0 }
