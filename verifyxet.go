package hfmerge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"slices"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/xet"
)

// Localizing a difference with Xet, without the bytes (docs/verify.md). A file stored
// in Xet is a list of terms, chunk ranges of xorbs; the global dedup index, asked about
// a chunk hash, answers with the listings of the xorbs that hold it (every chunk's hash
// and length). So: cut the expected shard into the same content-defined chunks every
// Xet client cuts, ask the index about those of its chunks it tracks (the first, and
// those whose hash is 0 mod 1024), and walk the Hub file's terms: where a term's xorb
// is listed, each of its chunks is known to be, or not to be, the expected chunk at the
// same offset. What is left, chunks that differ and xorbs no answer listed, is all
// that has to be downloaded.

// span is a byte range [off, end) of a file.
type span struct{ off, end int64 }

// maxDedupQueries bounds the index questions per shard: one per 64 MiB on average, so
// this covers 16 GiB shards; a bigger shard leaves its tail to the downloads.
const maxDedupQueries = 256

// expectedChunk is a chunk of the expected shard.
type expectedChunk struct {
	off  int64
	size uint32
	hash xet.Hash
}

// chunkFile cuts r into Xet chunks and hashes them.
func chunkFile(ctx context.Context, r io.ReaderAt, size int64) ([]expectedChunk, error) {
	cr := xet.NewChunkReader(io.NewSectionReader(r, 0, size))
	var out []expectedChunk
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c, err := cr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, expectedChunk{off: off, size: uint32(len(c)), hash: xet.ChunkHash(c)})
		off += int64(len(c))
	}
}

// listedXorb is a xorb listing from a dedup answer, with the key its chunk hashes are
// keyed with (zero: raw).
type listedXorb struct {
	chunks []xet.XorbChunkInfo
	key    xet.Hash
}

// xetLocalizer finds the ranges of a Hub file not known to equal the expected file.
type xetLocalizer struct {
	cas *xet.Client
}

// newXetLocalizer gets a read token for the repo; ErrNoXet (wrapped) when there is
// no Xet storage.
func newXetLocalizer(ctx context.Context, c *hub.Client, repo hub.Repo, rev string, log *slog.Logger) (*xetLocalizer, error) {
	first, err := c.XetReadToken(ctx, repo, rev)
	if err != nil {
		return nil, err
	}
	used := false
	tokens := func(ctx context.Context) (xet.Token, error) {
		tok := first
		if used {
			var err error
			if tok, err = c.XetReadToken(ctx, repo, rev); err != nil {
				return xet.Token{}, err
			}
		}
		used = true
		return xet.Token{AccessToken: tok.AccessToken, Expiry: tok.Expiry, CASURL: tok.CASURL}, nil
	}
	// The CAS client logs every retry and wait (bounded by its own timeouts), so that
	// none is silent.
	return &xetLocalizer{cas: xet.NewClient(tokens, xet.ClientOptions{Logger: log, UserAgent: "hfmerge"})}, nil
}

// unknown returns the ranges of the Hub file (Xet hash fileHash) that are not made of
// chunks identical to the expected file's at the same offsets, merged and in order.
func (x *xetLocalizer) unknown(ctx context.Context, fileHash string, exp []expectedChunk, size int64) ([]span, error) {
	fh, err := xet.ParseHash(fileHash)
	if err != nil {
		return nil, fmt.Errorf("the listing's xetHash %q: %w", fileHash, err)
	}
	terms, err := x.cas.Reconstruction(ctx, fh)
	if err != nil {
		return nil, err
	}
	xorbs := map[xet.Hash]*listedXorb{}
	need := map[xet.Hash]bool{}
	for _, t := range terms {
		need[t.Xorb] = true
	}
	queries := 0
	for i, c := range exp {
		if len(need) == 0 || queries >= maxDedupQueries {
			break
		}
		if i > 0 && !c.hash.DedupEligible() {
			continue
		}
		queries++
		sh, err := x.cas.QueryChunk(ctx, c.hash)
		if err != nil {
			return nil, err
		}
		if sh == nil {
			continue
		}
		var key xet.Hash
		if sh.Footer != nil {
			key = sh.Footer.HMACKey
		}
		for _, xi := range sh.Xorbs {
			if _, ok := xorbs[xi.Hash]; !ok {
				xorbs[xi.Hash] = &listedXorb{chunks: xi.Chunks, key: key}
				delete(need, xi.Hash)
			}
		}
	}
	at := make(map[int64]int, len(exp))
	for i, c := range exp {
		at[c.off] = i
	}
	keyed := func(h, key xet.Hash) xet.Hash {
		if key.IsZero() {
			return h
		}
		return xet.HMAC(h, key)
	}
	var out []span
	add := func(a, b int64) {
		if n := len(out); n > 0 && out[n-1].end >= a {
			out[n-1].end = max(out[n-1].end, b)
			return
		}
		out = append(out, span{a, b})
	}
	var pos int64
	for _, t := range terms {
		end := pos + int64(t.Bytes)
		lx := xorbs[t.Xorb]
		if lx == nil || int(t.End) > len(lx.chunks) || termBytes(lx.chunks[t.Start:t.End]) != t.Bytes {
			add(pos, end)
			pos = end
			continue
		}
		for _, ch := range lx.chunks[t.Start:t.End] {
			i, ok := at[pos]
			if !ok || exp[i].size != ch.Size || keyed(exp[i].hash, lx.key) != ch.Hash {
				add(pos, pos+int64(ch.Size))
			}
			pos += int64(ch.Size)
		}
	}
	if pos != size {
		return nil, fmt.Errorf("its Xet reconstruction has %d bytes, the listing says %d", pos, size)
	}
	return out, nil
}

func termBytes(cs []xet.XorbChunkInfo) uint64 {
	var n uint64
	for _, c := range cs {
		n += uint64(c.Size)
	}
	return n
}

// clip returns the parts of spans inside [a, b), widened to whole elements of n bytes
// counted from a.
func clip(spans []span, a, b, n int64) []span {
	var out []span
	i, _ := slices.BinarySearchFunc(spans, a, func(s span, v int64) int {
		switch {
		case s.end <= v:
			return -1
		case s.off > v:
			return 1
		}
		return 0
	})
	for ; i < len(spans) && spans[i].off < b; i++ {
		s := span{max(spans[i].off, a), min(spans[i].end, b)}
		if s.off >= s.end {
			continue
		}
		s.off = a + (s.off-a)/n*n
		s.end = min(b, a+(s.end-a+n-1)/n*n)
		if k := len(out); k > 0 && out[k-1].end >= s.off {
			out[k-1].end = max(out[k-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// fileSum re-forms the sha256 of the Hub's file from the bytes downloaded and, between
// them, the expected bytes Xet's answers vouched for. Equal to the sha256 the Hub lists,
// it proves the answers right; else they were wrong (a buggy or lying CAS), and nothing
// they vouched for may be trusted. It reads the expected file once, a block at a time.
type fileSum struct {
	h   hash.Hash
	exp io.ReaderAt
	pos int64
	buf []byte
}

func newFileSum(exp io.ReaderAt) *fileSum { return &fileSum{h: sha256.New(), exp: exp} }

// add feeds the expected bytes up to off, then b, the Hub's bytes at off.
func (f *fileSum) add(ctx context.Context, off int64, b []byte) error {
	if off < f.pos {
		return fmt.Errorf("verify: bytes at %d fed after %d", off, f.pos)
	}
	if err := f.fill(ctx, off); err != nil {
		return err
	}
	f.h.Write(b)
	f.pos += int64(len(b))
	return nil
}

// fill feeds the expected bytes [pos, end).
func (f *fileSum) fill(ctx context.Context, end int64) error {
	if f.buf == nil && f.pos < end {
		f.buf = make([]byte, compareBlock)
	}
	for f.pos < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(f.buf)), end-f.pos)
		if _, err := f.exp.ReadAt(f.buf[:n], f.pos); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		f.h.Write(f.buf[:n])
		f.pos += n
	}
	return nil
}

// finish feeds the expected bytes to the end of the file and returns the sha256.
func (f *fileSum) finish(ctx context.Context, size int64) (string, error) {
	if err := f.fill(ctx, size); err != nil {
		return "", err
	}
	return hex.EncodeToString(f.h.Sum(nil)), nil
}
