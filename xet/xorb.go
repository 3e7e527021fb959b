package xet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/pierrec/lz4/v4"
)

// Xorb limits (xet-core xorb_object/constants.rs MAX_XORB_BYTES, MAX_XORB_CHUNKS; spec
// xorb.md and deduplication.md). The CAS rejects a larger xorb; xet-core cuts on raw
// bytes and huggingface.js on serialized bytes, so a builder here cuts on both.
const (
	MaxXorbBytes  = 64 << 20
	MaxXorbChunks = 8192

	chunkHeaderLen = 8
	// maxCompressed bounds a chunk header's compressed length, as xet-core's
	// XorbChunkHeader::validate does (twice the maximum chunk).
	maxCompressed = 2 * MaxChunk
)

// Compression schemes of a chunk header (xet-core compression_scheme.rs).
const (
	CompressionNone uint8 = 0
	CompressionLZ4  uint8 = 1 // an LZ4 frame
	CompressionBG4  uint8 = 2 // byte-grouped by position mod 4, then an LZ4 frame
)

// ErrMalformed marks a xorb or shard that breaks the format or its limits.
var ErrMalformed = errors.New("malformed")

// compressor picks, per chunk, the smallest of none, LZ4 and BG4+LZ4. xet-core guesses
// between LZ4 and BG4 with a predictor; huggingface.js tries both as we do. Either
// choice leaves the xorb hash unchanged: it covers chunk hashes and sizes only.
type compressor struct {
	w        *lz4.Writer
	lz, bg   bytes.Buffer
	grouped  []byte
	disabled bool // for tests of the uncompressed path
}

func newCompressor() *compressor {
	c := &compressor{w: lz4.NewWriter(nil)}
	// As lz4_flex's FrameEncoder writes by default: 64 KiB independent blocks, no
	// content checksum; any LZ4 frame decoder reads them.
	if err := c.w.Apply(lz4.BlockSizeOption(lz4.Block64Kb), lz4.ChecksumOption(false)); err != nil {
		panic(err) // constant options
	}
	return c
}

func (c *compressor) frame(dst *bytes.Buffer, data []byte) error {
	dst.Reset()
	c.w.Reset(dst)
	if _, err := c.w.Write(data); err != nil {
		return err
	}
	return c.w.Close()
}

// appendChunk appends data's header and payload to xorb.
func (c *compressor) appendChunk(xorb, data []byte) ([]byte, error) {
	scheme, payload := CompressionNone, data
	if !c.disabled {
		if err := c.frame(&c.lz, data); err != nil {
			return xorb, err
		}
		c.grouped = bg4Split(c.grouped[:0], data)
		if err := c.frame(&c.bg, c.grouped); err != nil {
			return xorb, err
		}
		if c.lz.Len() < len(payload) {
			scheme, payload = CompressionLZ4, c.lz.Bytes()
		}
		if c.bg.Len() < len(payload) {
			scheme, payload = CompressionBG4, c.bg.Bytes()
		}
	}
	return appendChunkRecord(xorb, scheme, payload, len(data)), nil
}

func appendChunkRecord(xorb []byte, scheme uint8, payload []byte, rawLen int) []byte {
	var h [chunkHeaderLen]byte
	h[0] = 0 // version
	put24(h[1:4], len(payload))
	h[4] = scheme
	put24(h[5:8], rawLen)
	return append(append(xorb, h[:]...), payload...)
}

func put24(b []byte, v int) { b[0], b[1], b[2] = byte(v), byte(v>>8), byte(v>>16) }
func get24(b []byte) int    { return int(b[0]) | int(b[1])<<8 | int(b[2])<<16 }

// bg4Split regroups data by byte position mod 4: all bytes 0 mod 4, then 1, 2, 3; with
// a remainder r the first r groups are one byte longer (xet-core bg4_split_together).
func bg4Split(dst, data []byte) []byte {
	n, q, r := len(data), len(data)/4, len(data)%4
	base := len(dst)
	dst = slices.Grow(dst, n)[:base+n]
	out := dst[base:]
	o1 := q + min(r, 1)
	o2 := o1 + q + min(max(r-1, 0), 1)
	o3 := o2 + q + min(max(r-2, 0), 1)
	for i := 0; i < q; i++ {
		b := data[4*i : 4*i+4 : 4*i+4]
		out[i], out[o1+i], out[o2+i], out[o3+i] = b[0], b[1], b[2], b[3]
	}
	for k := 0; k < r; k++ {
		out[[3]int{q, o1 + q, o2 + q}[k]] = data[4*q+k]
	}
	return dst
}

// bg4Join undoes bg4Split.
func bg4Join(dst, grouped []byte) []byte {
	n := len(grouped)
	base := len(dst)
	dst = append(dst, make([]byte, n)...)
	out := dst[base:]
	pos := 0
	for g := 0; g < 4; g++ {
		for i := g; i < n; i += 4 {
			out[i] = grouped[pos]
			pos++
		}
	}
	return dst
}

// Xorb is a parsed xorb: its chunks' bytes and hashes, in order.
type Xorb struct {
	Hash   Hash
	Chunks []XorbChunk
}

// XorbChunk is one chunk of a parsed xorb.
type XorbChunk struct {
	Hash   Hash
	Data   []byte
	Scheme uint8
	Offset int // of its header in the serialized xorb
}

// ParseXorb decodes a serialized xorb as uploaded (chunk records, no footer), checking
// every header against the format's limits, decompressing every chunk and hashing it.
func ParseXorb(data []byte) (*Xorb, error) {
	if len(data) > MaxXorbBytes {
		return nil, fmt.Errorf("xet: xorb of %d bytes is over the %d-byte limit: %w", len(data), MaxXorbBytes, ErrMalformed)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("xet: empty xorb: %w", ErrMalformed)
	}
	x := &Xorb{}
	var leaves []Chunk
	var scratch []byte
	lr := lz4.NewReader(nil) // one reader, so its block buffers are reused across chunks
	for off := 0; off < len(data); {
		if len(x.Chunks) == MaxXorbChunks {
			return nil, fmt.Errorf("xet: xorb has more than %d chunks: %w", MaxXorbChunks, ErrMalformed)
		}
		if len(data)-off < chunkHeaderLen {
			return nil, fmt.Errorf("xet: xorb chunk %d at byte %d: truncated header: %w", len(x.Chunks), off, ErrMalformed)
		}
		h := data[off : off+chunkHeaderLen]
		clen, scheme, rawLen := get24(h[1:4]), h[4], get24(h[5:8])
		where := fmt.Sprintf("xet: xorb chunk %d at byte %d", len(x.Chunks), off)
		switch {
		case bytes.HasPrefix(data[off:], []byte("XETBLOB")):
			return nil, fmt.Errorf("%s: a xorb footer, which uploads do not carry: %w", where, ErrMalformed)
		case h[0] != 0:
			return nil, fmt.Errorf("%s: header version %d, want 0: %w", where, h[0], ErrMalformed)
		case rawLen == 0 || rawLen > MaxChunk:
			return nil, fmt.Errorf("%s: uncompressed length %d not in 1..%d: %w", where, rawLen, MaxChunk, ErrMalformed)
		case clen > maxCompressed:
			return nil, fmt.Errorf("%s: compressed length %d over %d: %w", where, clen, maxCompressed, ErrMalformed)
		case clen > len(data)-off-chunkHeaderLen:
			return nil, fmt.Errorf("%s: compressed length %d runs past the end: %w", where, clen, ErrMalformed)
		}
		payload := data[off+chunkHeaderLen : off+chunkHeaderLen+clen]
		var raw []byte
		switch scheme {
		case CompressionNone:
			if clen != rawLen {
				return nil, fmt.Errorf("%s: uncompressed chunk with lengths %d and %d: %w", where, clen, rawLen, ErrMalformed)
			}
			raw = bytes.Clone(payload)
		case CompressionLZ4, CompressionBG4:
			var err error
			if scratch, err = unframe(lr, scratch[:0], payload, rawLen); err != nil {
				return nil, fmt.Errorf("%s: %w: %w", where, err, ErrMalformed)
			}
			if scheme == CompressionBG4 {
				raw = bg4Join(nil, scratch)
			} else {
				raw = bytes.Clone(scratch)
			}
		default:
			return nil, fmt.Errorf("%s: unknown compression scheme %d: %w", where, scheme, ErrMalformed)
		}
		c := XorbChunk{Hash: ChunkHash(raw), Data: raw, Scheme: scheme, Offset: off}
		x.Chunks = append(x.Chunks, c)
		leaves = append(leaves, Chunk{c.Hash, uint64(len(raw))})
		off += chunkHeaderLen + clen
	}
	x.Hash = XorbHash(leaves)
	return x, nil
}

// unframe decodes one LZ4 frame that must hold exactly want bytes, reading at most
// want+1 so a hostile frame cannot expand without bound.
func unframe(r *lz4.Reader, dst, frame []byte, want int) ([]byte, error) {
	r.Reset(bytes.NewReader(frame))
	base := len(dst)
	dst = append(dst, make([]byte, want+1)...)
	n, err := io.ReadFull(r, dst[base:])
	switch {
	case err == nil:
		return nil, fmt.Errorf("LZ4 frame holds more than the %d bytes its header says", want)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		if n != want {
			return nil, fmt.Errorf("LZ4 frame holds %d bytes, its header says %d", n, want)
		}
		return dst[:base+n], nil
	default:
		return nil, fmt.Errorf("LZ4 frame: %v", err)
	}
}

// xorbBuilder accumulates chunks into one serialized xorb within the limits.
type xorbBuilder struct {
	data   []byte
	chunks []Chunk
	raw    int
	comp   *compressor
	limit  int // serialized bytes at most; 0 is MaxXorbBytes
}

func (b *xorbBuilder) max() int {
	if b.limit <= 0 || b.limit > MaxXorbBytes {
		return MaxXorbBytes
	}
	return b.limit
}

// fits reports whether a chunk of n raw bytes may join: under both the chunk limit
// and, counting the worst case of an uncompressed chunk, the byte limit.
func (b *xorbBuilder) fits(n int) bool {
	return len(b.chunks) < MaxXorbChunks && len(b.data)+chunkHeaderLen+n <= b.max()
}

// add appends a chunk and returns its serialized size. The caller checked fits.
func (b *xorbBuilder) add(data []byte, h Hash) (int, error) {
	before := len(b.data)
	if need := before + chunkHeaderLen + len(data); need > cap(b.data) {
		// Small xorbs (small files) stay small; past 8 MiB the buffer goes straight to
		// the limit, so growing leaves little garbage and never reserves more than the
		// limit, as append's own growth would.
		size := b.max()
		if need <= 8<<20 && size > 8<<20 {
			size = 8 << 20
		}
		grown := make([]byte, before, size)
		copy(grown, b.data)
		b.data = grown
	}
	var err error
	if b.data, err = b.comp.appendChunk(b.data, data); err != nil {
		return 0, fmt.Errorf("xet: compressing a chunk: %w", err)
	}
	b.chunks = append(b.chunks, Chunk{h, uint64(len(data))})
	b.raw += len(data)
	return len(b.data) - before, nil
}

func (b *xorbBuilder) empty() bool { return len(b.chunks) == 0 }

// serializedXorb is a finished xorb: its hash, bytes and chunk listing.
type serializedXorb struct {
	hash   Hash
	data   []byte
	chunks []Chunk
	raw    int
}

func (b *xorbBuilder) seal() serializedXorb {
	x := serializedXorb{hash: XorbHash(b.chunks), data: b.data, chunks: b.chunks, raw: b.raw}
	b.data, b.chunks, b.raw = nil, nil, 0
	return x
}
