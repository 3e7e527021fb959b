package hubtest

// Xorb and shard parsing, written from the Xet protocol specification (hub-docs
// docs/xet/xorb.md, shard.md) and what huggingface.js sends (packages/hub/src/utils/
// createXorbs.ts, uploadShards.ts, shardParser.ts); independent of hfmerge's own Xet
// package for the reason given in xethash.go.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// Limits of the format (spec xorb.md, shard.md; xet-core constants.rs).
const (
	xetMaxXorbBytes  = 64 << 20
	xetMaxXorbChunks = 8192
	xetMaxShardBytes = 64 << 20
)

// Chunk compression schemes (spec xorb.md).
const (
	schemeNone = 0
	schemeLZ4  = 1
	schemeBG4  = 2 // byte grouping by position mod 4, then LZ4
)

// xetChunk is one chunk of a stored xorb.
type xetChunk struct {
	hash   xetHash
	rawLen uint32 // uncompressed bytes
	rawOff uint64 // uncompressed offset inside the xorb
	off    uint32 // offset of its 8-byte header in the serialized xorb
	size   uint32 // header + payload bytes
}

// parseXorb splits a serialized xorb into chunks, decompresses each one and hashes
// it. It returns the chunks and their data; any malformed header, unknown scheme or
// length that does not match is an error naming the chunk.
func parseXorb(b []byte) ([]xetChunk, [][]byte, error) {
	var chunks []xetChunk
	var datas [][]byte
	var rawOff uint64
	for off := 0; off < len(b); {
		i := len(chunks)
		if i == xetMaxXorbChunks {
			return nil, nil, fmt.Errorf("more than %d chunks", xetMaxXorbChunks)
		}
		if len(b)-off < 8 {
			return nil, nil, fmt.Errorf("chunk %d at byte %d: truncated header (%d bytes left)", i, off, len(b)-off)
		}
		h := b[off : off+8]
		version, scheme := h[0], h[4]
		clen := int(h[1]) | int(h[2])<<8 | int(h[3])<<16
		ulen := int(h[5]) | int(h[6])<<8 | int(h[7])<<16
		if version != 0 {
			return nil, nil, fmt.Errorf("chunk %d at byte %d: header version %d, want 0 (a xorb is uploaded without footer)", i, off, version)
		}
		if off+8+clen > len(b) {
			return nil, nil, fmt.Errorf("chunk %d at byte %d: compressed length %d runs past the end of the xorb", i, off, clen)
		}
		payload := b[off+8 : off+8+clen]
		data, err := decompressChunk(scheme, payload, ulen)
		if err != nil {
			return nil, nil, fmt.Errorf("chunk %d at byte %d: %w", i, off, err)
		}
		chunks = append(chunks, xetChunk{hash: chunkHash(data), rawLen: uint32(ulen), rawOff: rawOff,
			off: uint32(off), size: uint32(8 + clen)})
		datas = append(datas, data)
		rawOff += uint64(ulen)
		off += 8 + clen
	}
	if len(chunks) == 0 {
		return nil, nil, fmt.Errorf("the xorb has no chunks")
	}
	return chunks, datas, nil
}

func decompressChunk(scheme byte, payload []byte, ulen int) ([]byte, error) {
	switch scheme {
	case schemeNone:
		if len(payload) != ulen {
			return nil, fmt.Errorf("uncompressed chunk has %d bytes but its header says %d", len(payload), ulen)
		}
		return payload, nil
	case schemeLZ4, schemeBG4:
		data, err := io.ReadAll(io.LimitReader(lz4.NewReader(bytes.NewReader(payload)), int64(ulen)+1))
		if err != nil {
			return nil, fmt.Errorf("LZ4 frame does not decompress: %v", err)
		}
		if len(data) != ulen {
			return nil, fmt.Errorf("LZ4 frame decompresses to %d bytes but the header says %d", len(data), ulen)
		}
		if scheme == schemeBG4 {
			data = bg4Regroup(data)
		}
		return data, nil
	}
	return nil, fmt.Errorf("unknown compression scheme %d (want 0 none, 1 LZ4, 2 BG4+LZ4)", scheme)
}

// bg4Regroup undoes the byte grouping: the input is 4 streams (bytes at positions 0, 1,
// 2, 3 mod 4), the first n%4 of them one byte longer.
func bg4Regroup(g []byte) []byte {
	n := len(g)
	out := make([]byte, n)
	pos := 0
	for s := 0; s < 4; s++ {
		for i := s; i < n; i += 4 {
			out[i] = g[pos]
			pos++
		}
	}
	return out
}

// Shard layout constants (spec shard.md).
var xetShardTag = [32]byte{'H', 'F', 'R', 'e', 'p', 'o', 'M', 'e', 't', 'a', 'D', 'a', 't', 'a', 0,
	85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169}

const (
	shardHeaderSize    = 48
	shardFooterSize    = 200
	shardHeaderVersion = 2
	shardFooterVersion = 1
	fileFlagWithVerify = 0x80000000
	fileFlagWithMeta   = 0x40000000
	chunkFlagDedup     = 0x80000000 // global dedup eligible (xet-core xorb_structs.rs)
	shardEntrySize     = 48
)

// shardTerm is one FileDataSequenceEntry, with its verification hash.
type shardTerm struct {
	xorb       xetHash
	raw        uint32 // unpacked_segment_bytes
	start, end uint32 // chunk range, end exclusive
	rangeHash  xetHash
}

type shardFile struct {
	hash     xetHash
	flags    uint32
	terms    []shardTerm
	sha256   xetHash
	hasSHA   bool
	hasCheck bool
}

type shardChunk struct {
	hash   xetHash
	rawOff uint32
	rawLen uint32
	flags  uint32
}

type shardXorb struct {
	hash      xetHash
	rawBytes  uint32
	diskBytes uint32
	chunks    []shardChunk
}

type shard struct {
	files      []shardFile
	xorbs      []shardXorb
	footerSize uint64
}

// shardReader reads the fixed-size entries of a shard with bounds checks.
type shardReader struct {
	b   []byte
	off int
}

func (r *shardReader) entry(what string) ([]byte, error) {
	if len(r.b)-r.off < shardEntrySize {
		return nil, fmt.Errorf("truncated at byte %d reading %s", r.off, what)
	}
	e := r.b[r.off : r.off+shardEntrySize]
	r.off += shardEntrySize
	return e, nil
}

func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

// parseShard reads an uploaded shard: header, file info section, CAS info section,
// and a footer if the header announces one (the spec says uploads omit it;
// huggingface.js sends a 200-byte one, which the Hub accepts).
func parseShard(b []byte) (*shard, error) {
	if len(b) < shardHeaderSize {
		return nil, fmt.Errorf("%d bytes is shorter than the %d-byte header", len(b), shardHeaderSize)
	}
	if !bytes.Equal(b[:32], xetShardTag[:]) {
		return nil, fmt.Errorf("the header does not start with the shard tag")
	}
	if v := binary.LittleEndian.Uint64(b[32:]); v != shardHeaderVersion {
		return nil, fmt.Errorf("header version %d, want %d", v, shardHeaderVersion)
	}
	s := &shard{footerSize: binary.LittleEndian.Uint64(b[40:])}
	if s.footerSize != 0 && s.footerSize != shardFooterSize {
		return nil, fmt.Errorf("footer size %d, want 0 (no footer) or %d", s.footerSize, shardFooterSize)
	}
	body := b
	if s.footerSize != 0 {
		if len(b) < shardHeaderSize+int(s.footerSize) {
			return nil, fmt.Errorf("%d bytes cannot hold the header and a %d-byte footer", len(b), s.footerSize)
		}
		footer := b[len(b)-int(s.footerSize):]
		if v := binary.LittleEndian.Uint64(footer); v != shardFooterVersion {
			return nil, fmt.Errorf("footer version %d, want %d", v, shardFooterVersion)
		}
		body = b[:len(b)-int(s.footerSize)]
	}
	r := &shardReader{b: body, off: shardHeaderSize}
	for {
		e, err := r.entry(fmt.Sprintf("file %d header", len(s.files)))
		if err != nil {
			return nil, err
		}
		var f shardFile
		copy(f.hash[:], e)
		if f.hash == xetBookend {
			break
		}
		f.flags = le32(e[32:])
		n := int(le32(e[36:]))
		if n > len(body)/shardEntrySize {
			return nil, fmt.Errorf("file %s claims %d entries, more than the shard can hold", f.hash, n)
		}
		for i := 0; i < n; i++ {
			e, err := r.entry(fmt.Sprintf("file %s entry %d", f.hash, i))
			if err != nil {
				return nil, err
			}
			var t shardTerm
			copy(t.xorb[:], e)
			t.raw, t.start, t.end = le32(e[36:]), le32(e[40:]), le32(e[44:])
			f.terms = append(f.terms, t)
		}
		if f.flags&fileFlagWithVerify != 0 {
			f.hasCheck = true
			for i := 0; i < n; i++ {
				e, err := r.entry(fmt.Sprintf("file %s verification entry %d", f.hash, i))
				if err != nil {
					return nil, err
				}
				copy(f.terms[i].rangeHash[:], e)
			}
		}
		if f.flags&fileFlagWithMeta != 0 {
			e, err := r.entry(fmt.Sprintf("file %s metadata extension", f.hash))
			if err != nil {
				return nil, err
			}
			copy(f.sha256[:], e)
			f.hasSHA = true
		}
		s.files = append(s.files, f)
	}
	for {
		e, err := r.entry(fmt.Sprintf("xorb %d header", len(s.xorbs)))
		if err != nil {
			return nil, err
		}
		var x shardXorb
		copy(x.hash[:], e)
		if x.hash == xetBookend {
			break
		}
		n := int(le32(e[36:]))
		x.rawBytes, x.diskBytes = le32(e[40:]), le32(e[44:])
		if n > len(body)/shardEntrySize {
			return nil, fmt.Errorf("xorb %s claims %d chunks, more than the shard can hold", x.hash, n)
		}
		for i := 0; i < n; i++ {
			e, err := r.entry(fmt.Sprintf("xorb %s chunk %d", x.hash, i))
			if err != nil {
				return nil, err
			}
			var c shardChunk
			copy(c.hash[:], e)
			c.rawOff, c.rawLen, c.flags = le32(e[32:]), le32(e[36:]), le32(e[40:])
			x.chunks = append(x.chunks, c)
		}
		s.xorbs = append(s.xorbs, x)
	}
	if r.off != len(body) {
		return nil, fmt.Errorf("%d bytes after the CAS info bookend (footer size in the header is %d)", len(body)-r.off, s.footerSize)
	}
	return s, nil
}

// dedupShard serializes a global-dedup answer: no files, the given xorbs with their
// chunk hashes keyed by hmacKey (raw when the key is zero), and a footer carrying the
// key and its expiry. The footer's lookup-table offsets (which the spec calls
// reserved) point at the footer: huggingface.js's shardParser reads CAS info entries
// while the offset is below the one at footer+24, so a zero there would hide them all.
func dedupShard(xorbs []shardXorb, hmacKey xetHash, created, expiry int64) []byte {
	var b bytes.Buffer
	u32 := func(v uint32) { binary.Write(&b, binary.LittleEndian, v) }
	u64 := func(v uint64) { binary.Write(&b, binary.LittleEndian, v) }
	bookend := func() { b.Write(xetBookend[:]); b.Write(make([]byte, 16)) }
	b.Write(xetShardTag[:])
	u64(shardHeaderVersion)
	u64(shardFooterSize)
	fileInfo := uint64(b.Len())
	bookend()
	casInfo := uint64(b.Len())
	var raw, disk uint64
	for _, x := range xorbs {
		b.Write(x.hash[:])
		u32(0)
		u32(uint32(len(x.chunks)))
		u32(x.rawBytes)
		u32(x.diskBytes)
		raw += uint64(x.rawBytes)
		disk += uint64(x.diskBytes)
		for _, c := range x.chunks {
			h := hmacHash(hmacKey, c.hash)
			b.Write(h[:])
			u32(c.rawOff)
			u32(c.rawLen)
			u32(c.flags)
			u32(0)
		}
	}
	bookend()
	footer := uint64(b.Len())
	u64(shardFooterVersion)
	u64(fileInfo)
	u64(casInfo)
	for i := 0; i < 6; i++ { // file, cas and chunk lookup tables: offset, count (none)
		if i%2 == 0 {
			u64(footer)
		} else {
			u64(0)
		}
	}
	b.Write(hmacKey[:])
	u64(uint64(created))
	u64(uint64(expiry))
	b.Write(make([]byte, 48))
	u64(disk) // stored_bytes_on_disk
	u64(raw)  // materialized_bytes
	u64(raw)  // stored_bytes
	u64(footer)
	return b.Bytes()
}
