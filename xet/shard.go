package xet

import (
	"encoding/binary"
	"fmt"
)

// Shard layout (spec shard.md; xet-core metadata_shard/shard_format.rs, file_structs.rs,
// xorb_structs.rs). All integers are little-endian, every record is 48 bytes.
const (
	MaxShardBytes = 64 << 20 // spec upload-protocol.md: split larger uploads

	shardHeaderLen  = 48
	shardFooterLen  = 200
	shardRecordLen  = 48
	shardVersion    = 2
	footerVersion   = 1
	fileFlagVerify  = 1 << 31 // MDB_FILE_FLAG_WITH_VERIFICATION, required on upload
	fileFlagMetaExt = 1 << 30 // MDB_FILE_FLAG_WITH_METADATA_EXT: the sha256
	// ChunkFlagGlobalDedup marks, in a xorb listing, a chunk the global dedup index
	// should know (xet-core sets it on chunks that start a file).
	ChunkFlagGlobalDedup = 1 << 31
)

// shardTag opens every shard: "HFRepoMetaData", a zero, then 17 magic bytes (xet-core
// MDB_SHARD_HEADER_TAG; huggingface.js SHARD_MAGIC_TAG; the spec does not list them).
var shardTag = [32]byte{'H', 'F', 'R', 'e', 'p', 'o', 'M', 'e', 't', 'a', 'D', 'a', 't', 'a', 0,
	85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169}

// bookend is the 32×0xFF hash that ends each section.
var bookend = Hash{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Shard is a parsed or to-be-written shard.
type Shard struct {
	Files  []FileInfo
	Xorbs  []XorbInfo
	Footer *Footer // nil when the shard has none (every upload)
}

// FileInfo is one file's reconstruction: the terms, in order, that rebuild it.
type FileInfo struct {
	Hash  Hash
	Terms []Term
	// Verification holds one range hash per term; uploads must carry it.
	Verification []Hash
	// SHA256 is the file's sha256 digest, as the Hub's commit names it; nil when absent.
	SHA256 *[32]byte
}

// Term is a range of chunks [Start, End) of one xorb and its unpacked length.
type Term struct {
	Xorb       Hash
	Flags      uint32
	Bytes      uint32
	Start, End uint32
}

// XorbInfo lists one xorb's chunks.
type XorbInfo struct {
	Hash  Hash
	Flags uint32
	// RawBytes is the sum of the chunk lengths; StoredBytes the serialized length
	// (xet-core writes 0 there on upload, huggingface.js the length; we write the length).
	RawBytes, StoredBytes uint32
	Chunks                []XorbChunkInfo
}

// XorbChunkInfo is a chunk of a xorb listing. Offset is the uncompressed offset of the
// chunk in the xorb, as both reference clients write it.
type XorbChunkInfo struct {
	Hash   Hash
	Offset uint32
	Size   uint32
	Flags  uint32
}

// Footer is the 200-byte trailer of stored shards and global-dedup answers.
type Footer struct {
	FileInfoOffset, XorbInfoOffset uint64
	// HMACKey, when not zero, says the chunk hashes of the xorb listings are
	// HMAC(hash, key), not raw hashes.
	HMACKey Hash
	// Created and KeyExpiry are unix seconds; after KeyExpiry the answer must not
	// be deduplicated against.
	Created, KeyExpiry                                uint64
	StoredBytesOnDisk, MaterializedBytes, StoredBytes uint64
	FooterOffset                                      uint64
}

// sha256Field is the metadata extension's byte order: each 8-byte group of the digest
// reversed, so that the hash's String prints the usual sha256 hex (xet-core
// Sha256::from_be_bytes; huggingface.js writeHashToArray(sha256hex)).
func sha256Field(d [32]byte) Hash {
	var h Hash
	for g := 0; g < 4; g++ {
		binary.LittleEndian.PutUint64(h[8*g:], binary.BigEndian.Uint64(d[8*g:]))
	}
	return h
}

func sha256FromField(h Hash) [32]byte {
	var d [32]byte
	for g := 0; g < 4; g++ {
		binary.BigEndian.PutUint64(d[8*g:], binary.LittleEndian.Uint64(h[8*g:]))
	}
	return d
}

type shardWriter struct{ b []byte }

func (w *shardWriter) hash(h Hash)  { w.b = append(w.b, h[:]...) }
func (w *shardWriter) u32(v uint32) { w.b = binary.LittleEndian.AppendUint32(w.b, v) }
func (w *shardWriter) u64(v uint64) { w.b = binary.LittleEndian.AppendUint64(w.b, v) }
func (w *shardWriter) bookend()     { w.hash(bookend); w.u64(0); w.u64(0) }

// MarshalUpload serializes the shard as POST /v1/shards takes it: header with
// footer_size 0, file info section, xorb info section, each with its bookend, and no
// footer (spec shard.md "When uploading a shard the footer section MUST be omitted";
// xet-core read_shard_to_bytes_remove_footer). s.Footer is ignored.
func (s *Shard) MarshalUpload() ([]byte, error) {
	w := &shardWriter{b: make([]byte, 0, s.uploadSize())}
	w.b = append(w.b, shardTag[:]...)
	w.u64(shardVersion)
	w.u64(0)
	for i, f := range s.Files {
		if len(f.Verification) != len(f.Terms) {
			return nil, fmt.Errorf("xet: shard file %d (%s): %d verification hashes for %d terms", i, f.Hash, len(f.Verification), len(f.Terms))
		}
		flags := uint32(fileFlagVerify)
		if f.SHA256 != nil {
			flags |= fileFlagMetaExt
		}
		w.hash(f.Hash)
		w.u32(flags)
		w.u32(uint32(len(f.Terms)))
		w.u64(0)
		for _, t := range f.Terms {
			w.hash(t.Xorb)
			w.u32(t.Flags)
			w.u32(t.Bytes)
			w.u32(t.Start)
			w.u32(t.End)
		}
		for _, v := range f.Verification {
			w.hash(v)
			w.u64(0)
			w.u64(0)
		}
		if f.SHA256 != nil {
			w.hash(sha256Field(*f.SHA256))
			w.u64(0)
			w.u64(0)
		}
	}
	w.bookend()
	for _, x := range s.Xorbs {
		w.hash(x.Hash)
		w.u32(x.Flags)
		w.u32(uint32(len(x.Chunks)))
		w.u32(x.RawBytes)
		w.u32(x.StoredBytes)
		for _, c := range x.Chunks {
			w.hash(c.Hash)
			w.u32(c.Offset)
			w.u32(c.Size)
			w.u32(c.Flags)
			w.u32(0)
		}
	}
	w.bookend()
	if len(w.b) > MaxShardBytes {
		return nil, fmt.Errorf("xet: shard of %d bytes is over the %d-byte limit", len(w.b), MaxShardBytes)
	}
	return w.b, nil
}

func (s *Shard) uploadSize() int {
	n := shardHeaderLen + 2*shardRecordLen
	for _, f := range s.Files {
		n += shardRecordLen * (1 + 2*len(f.Terms))
		if f.SHA256 != nil {
			n += shardRecordLen
		}
	}
	for _, x := range s.Xorbs {
		n += shardRecordLen * (1 + len(x.Chunks))
	}
	return n
}

type shardReader struct {
	b   []byte
	off int
}

func (r *shardReader) record(what string) ([]byte, error) {
	if len(r.b)-r.off < shardRecordLen {
		return nil, fmt.Errorf("xet: shard: %s at byte %d: truncated: %w", what, r.off, ErrMalformed)
	}
	rec := r.b[r.off : r.off+shardRecordLen]
	r.off += shardRecordLen
	return rec, nil
}

func recHash(rec []byte) Hash     { return Hash(rec[:32]) }
func le32(b []byte, i int) uint32 { return binary.LittleEndian.Uint32(b[i:]) }
func le64(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

// ParseShard decodes a shard, with or without its footer: an upload, a stored shard,
// or a global-dedup answer. Every count is checked against the bytes that remain, so
// no input allocates more than its own size.
func ParseShard(data []byte) (*Shard, error) {
	if len(data) > MaxShardBytes {
		return nil, fmt.Errorf("xet: shard of %d bytes is over the %d-byte limit: %w", len(data), MaxShardBytes, ErrMalformed)
	}
	if len(data) < shardHeaderLen {
		return nil, fmt.Errorf("xet: shard of %d bytes has no header: %w", len(data), ErrMalformed)
	}
	if [32]byte(data[:32]) != shardTag {
		return nil, fmt.Errorf("xet: not a shard (wrong magic tag): %w", ErrMalformed)
	}
	if v := le64(data, 32); v != shardVersion {
		return nil, fmt.Errorf("xet: shard header version %d, want %d: %w", v, shardVersion, ErrMalformed)
	}
	s := &Shard{}
	end := len(data)
	switch fs := le64(data, 40); fs {
	case 0:
	case shardFooterLen:
		if len(data) < shardHeaderLen+shardFooterLen {
			return nil, fmt.Errorf("xet: shard of %d bytes cannot hold its footer: %w", len(data), ErrMalformed)
		}
		end = len(data) - shardFooterLen
		f, err := parseFooter(data[end:], end)
		if err != nil {
			return nil, err
		}
		s.Footer = f
	default:
		return nil, fmt.Errorf("xet: shard footer size %d, want 0 or %d: %w", fs, shardFooterLen, ErrMalformed)
	}
	r := &shardReader{b: data[:end], off: shardHeaderLen}
	for {
		rec, err := r.record("file header")
		if err != nil {
			return nil, err
		}
		if recHash(rec) == bookend {
			break
		}
		f, err := parseFile(r, rec, len(s.Files))
		if err != nil {
			return nil, err
		}
		s.Files = append(s.Files, f)
	}
	for {
		rec, err := r.record("xorb header")
		if err != nil {
			return nil, err
		}
		if recHash(rec) == bookend {
			break
		}
		x, err := parseXorbInfo(r, rec, len(s.Xorbs))
		if err != nil {
			return nil, err
		}
		s.Xorbs = append(s.Xorbs, x)
	}
	// What follows the xorb section (lookup tables of stored shards) is not needed here.
	if s.Footer == nil && r.off != len(data) {
		return nil, fmt.Errorf("xet: shard without footer has %d bytes after its last section: %w", len(data)-r.off, ErrMalformed)
	}
	return s, nil
}

func parseFile(r *shardReader, hdr []byte, i int) (FileInfo, error) {
	f := FileInfo{Hash: recHash(hdr)}
	flags, n := le32(hdr, 32), int(le32(hdr, 36))
	where := fmt.Sprintf("xet: shard file %d (%s)", i, f.Hash)
	records := n
	if flags&fileFlagVerify != 0 {
		records += n
	}
	if flags&fileFlagMetaExt != 0 {
		records++
	}
	if n < 0 || records > (len(r.b)-r.off)/shardRecordLen {
		return f, fmt.Errorf("%s: %d terms do not fit in the shard: %w", where, n, ErrMalformed)
	}
	f.Terms = make([]Term, n)
	for j := range f.Terms {
		rec, _ := r.record("term")
		t := Term{Xorb: recHash(rec), Flags: le32(rec, 32), Bytes: le32(rec, 36), Start: le32(rec, 40), End: le32(rec, 44)}
		if t.End <= t.Start || t.End-t.Start > MaxXorbChunks {
			return f, fmt.Errorf("%s: term %d has chunk range [%d, %d): %w", where, j, t.Start, t.End, ErrMalformed)
		}
		f.Terms[j] = t
	}
	if flags&fileFlagVerify != 0 {
		f.Verification = make([]Hash, n)
		for j := range f.Verification {
			rec, _ := r.record("verification")
			f.Verification[j] = recHash(rec)
		}
	}
	if flags&fileFlagMetaExt != 0 {
		rec, _ := r.record("metadata extension")
		d := sha256FromField(recHash(rec))
		f.SHA256 = &d
	}
	return f, nil
}

func parseXorbInfo(r *shardReader, hdr []byte, i int) (XorbInfo, error) {
	x := XorbInfo{Hash: recHash(hdr), Flags: le32(hdr, 32), RawBytes: le32(hdr, 40), StoredBytes: le32(hdr, 44)}
	n := int(le32(hdr, 36))
	where := fmt.Sprintf("xet: shard xorb %d (%s)", i, x.Hash)
	if n > MaxXorbChunks || n > (len(r.b)-r.off)/shardRecordLen {
		return x, fmt.Errorf("%s: %d chunks do not fit (at most %d, and the shard's size): %w", where, n, MaxXorbChunks, ErrMalformed)
	}
	x.Chunks = make([]XorbChunkInfo, n)
	for j := range x.Chunks {
		rec, _ := r.record("chunk")
		c := XorbChunkInfo{Hash: recHash(rec), Offset: le32(rec, 32), Size: le32(rec, 36), Flags: le32(rec, 40)}
		if c.Size > MaxChunk {
			return x, fmt.Errorf("%s: chunk %d of %d bytes is over %d: %w", where, j, c.Size, MaxChunk, ErrMalformed)
		}
		x.Chunks[j] = c
	}
	return x, nil
}

func parseFooter(b []byte, at int) (*Footer, error) {
	if v := le64(b, 0); v != footerVersion {
		return nil, fmt.Errorf("xet: shard footer version %d, want %d: %w", v, footerVersion, ErrMalformed)
	}
	f := &Footer{
		FileInfoOffset: le64(b, 8), XorbInfoOffset: le64(b, 16),
		HMACKey: Hash(b[72:104]), Created: le64(b, 104), KeyExpiry: le64(b, 112),
		StoredBytesOnDisk: le64(b, 168), MaterializedBytes: le64(b, 176), StoredBytes: le64(b, 184),
		FooterOffset: le64(b, 192),
	}
	if f.FooterOffset != uint64(at) {
		return nil, fmt.Errorf("xet: shard footer says it is at byte %d, it is at %d: %w", f.FooterOffset, at, ErrMalformed)
	}
	return f, nil
}
