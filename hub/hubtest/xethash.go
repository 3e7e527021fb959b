package hubtest

// The Xet hashes, written from the Xet protocol specification (hub-docs docs/xet/
// hashing.md and api.md) and checked against huggingface.js (packages/xetchunk-wasm/src/
// xorb-hash.ts, hash-utils.ts). They are deliberately not imported from hfmerge's own
// Xet package: the fake is the referee that client is tested against, so a mistake
// shared by both would pass unseen. Only the keyed BLAKE3 primitive comes from a
// library (lukechampine.com/blake3).

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"

	"lukechampine.com/blake3"
)

// xetHash is a 32-byte Xet hash (chunk, xorb, file, range or HMAC).
type xetHash [32]byte

// Keys of the keyed BLAKE3 hashes (spec hashing.md).
var (
	xetDataKey = xetHash{102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
		157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41}
	xetNodeKey = xetHash{1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
		93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63}
	xetVerificationKey = xetHash{127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243,
		164, 205, 38, 213, 181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195}
)

// xetBookend is the hash that ends a shard section: 32 bytes of 0xFF.
var xetBookend = xetHash{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func keyedHash(key xetHash, data []byte) xetHash {
	h := blake3.New(32, key[:])
	h.Write(data)
	var out xetHash
	copy(out[:], h.Sum(nil))
	return out
}

// String is the hash's string form used in URLs, shards' text nodes and headers: each
// 8-byte group read as a little-endian u64, printed as 16 hex digits (spec api.md
// "Converting Hashes to Strings"); it is not the hex of the bytes.
func (x xetHash) String() string {
	var b [32]byte
	for g := 0; g < 4; g++ {
		for i := 0; i < 8; i++ {
			b[g*8+i] = x[g*8+7-i]
		}
	}
	return hex.EncodeToString(b[:])
}

// parseXetHash reads the string form back.
func parseXetHash(s string) (xetHash, error) {
	var x xetHash
	if len(s) != 64 || !isLowerHex(s) {
		return x, fmt.Errorf("%q is not a Xet hash (64 lowercase hex digits)", s)
	}
	b, _ := hex.DecodeString(s)
	for g := 0; g < 4; g++ {
		for i := 0; i < 8; i++ {
			x[g*8+i] = b[g*8+7-i]
		}
	}
	return x, nil
}

// lastU64 is the hash's last 8 bytes as a little-endian u64: "hash % n" in the spec.
func (x xetHash) lastU64() uint64 { return binary.LittleEndian.Uint64(x[24:]) }

func (x xetHash) isZero() bool { return x == xetHash{} }

// chunkHash is the hash of one chunk's uncompressed bytes.
func chunkHash(data []byte) xetHash { return keyedHash(xetDataKey, data) }

// xetLeaf is one entry of the Merkle tree: a hash and the bytes it covers.
type xetLeaf struct {
	hash xetHash
	size uint64
}

// merkleRoot is the aggregated hash of a xorb or of a file's chunks (spec hashing.md
// "Xorb Hashes"): groups of 3 to 9 entries, cut after an entry (from the third on)
// whose hash is 0 mod 4, or at 9, or at the end; each group is hashed as the text
// "{hash} : {size}\n" per entry under the node key; repeat until one is left. One
// leaf is its own root; no leaf is the zero hash.
func merkleRoot(leaves []xetLeaf) xetHash {
	if len(leaves) == 0 {
		return xetHash{}
	}
	level := leaves
	for len(level) > 1 {
		var next []xetLeaf
		for start := 0; start < len(level); {
			end := mergeCut(level[start:]) + start
			next = append(next, mergeNode(level[start:end]))
			start = end
		}
		level = next
	}
	return level[0].hash
}

// mergeCut is how many entries of rest go into the next group.
func mergeCut(rest []xetLeaf) int {
	if len(rest) <= 2 {
		return len(rest)
	}
	for i := 2; i < min(9, len(rest)); i++ {
		if rest[i].hash.lastU64()%4 == 0 {
			return i + 1
		}
	}
	return min(9, len(rest))
}

func mergeNode(group []xetLeaf) xetLeaf {
	var text []byte
	var size uint64
	for _, l := range group {
		text = append(text, l.hash.String()...)
		text = append(text, " : "...)
		text = strconv.AppendUint(text, l.size, 10)
		text = append(text, '\n')
		size += l.size
	}
	return xetLeaf{keyedHash(xetNodeKey, text), size}
}

// fileHash is the Merkle root of all of a file's chunks, keyed once more with the zero
// key; an empty file has the zero hash (xet-core file_hash_with_salt; huggingface.js
// fixed this case in #2243 because the CAS rejected the other value).
func fileHash(chunks []xetLeaf) xetHash {
	if len(chunks) == 0 {
		return xetHash{}
	}
	root := merkleRoot(chunks)
	return keyedHash(xetHash{}, root[:])
}

// rangeHash is a term's verification hash: the raw chunk hashes of its chunk range,
// concatenated, under the verification key.
func rangeHash(chunks []xetHash) xetHash {
	buf := make([]byte, 0, 32*len(chunks))
	for _, c := range chunks {
		buf = append(buf, c[:]...)
	}
	return keyedHash(xetVerificationKey, buf)
}

// hmacHash is how a global-dedup answer hides chunk hashes: the hash keyed by the
// answer's key. An all-zero key means the hashes are sent as they are.
func hmacHash(key, h xetHash) xetHash {
	if key.isZero() {
		return h
	}
	return keyedHash(key, h[:])
}

// dedupEligible says whether the global dedup index tracks a chunk by its hash alone
// (hash % 1024 == 0, about 0.1% of chunks); the first chunk of every file is tracked
// too (xet-core metadata_shard constants.rs hash_is_global_dedup_eligible).
func dedupEligible(h xetHash) bool { return h.lastU64()%1024 == 0 }

// sha256Field converts a sha256 digest to and from the byte order of a shard's
// metadata extension, where (as in xet-core sha256.rs and huggingface.js
// writeHashToArray) each 8-byte group is reversed, so that the field's string form is
// the usual sha256 hex.
func sha256Field(hexDigest string) (xetHash, error) { return parseXetHash(hexDigest) }
