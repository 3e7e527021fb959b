package hubtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
)

// shardUpload answers POST /v1/shards. Every xorb of the CAS info section must be
// stored with exactly the chunks listed; every file's terms must reference stored
// xorbs and existing chunk ranges, carry the right verification hashes and sizes,
// hash to the file hash, and reassemble to bytes whose sha256 is the metadata
// extension's. Then the files are registered (and committable by sha256, and
// readable through the LFS path) and their xorbs enter the global dedup index.
func (h *Hub) shardUpload(c *call) {
	x := h.xet
	tok, ok := h.casAuth(c, true)
	if !ok {
		return
	}
	body, err := io.ReadAll(io.LimitReader(c.r.Body, xetMaxShardBytes+1))
	if err != nil {
		return
	}
	rejected := func(s *XetStats) { s.ShardsRejected++ }
	if len(body) > xetMaxShardBytes {
		h.casReject(c, rejected, "shard: more than %d bytes (the limit is 64 MiB)", xetMaxShardBytes)
		return
	}
	s, err := parseShard(body)
	if err != nil {
		h.casReject(c, rejected, "shard is malformed: %v", err)
		return
	}
	x.mu.Lock()
	files, data, problem := x.verifyShardLocked(s)
	if problem != "" {
		x.mu.Unlock()
		h.casReject(c, rejected, "shard rejected: %s", problem)
		return
	}
	sum := sha256.Sum256(body)
	key := hex.EncodeToString(sum[:])
	result := 1
	if x.shards[key] {
		result = 0
	}
	x.shards[key] = true
	x.registerShardLocked(s, files, tok.repo)
	x.mu.Unlock()
	if err := h.persistShard(key, body, tok.repo); err != nil {
		writeError(c.w, http.StatusInternalServerError, "", err.Error())
		return
	}
	for i, f := range files {
		if err := h.storeObject(f.sha256, data[i]); err != nil {
			writeError(c.w, http.StatusInternalServerError, "", err.Error())
			return
		}
	}
	writeJSON(c.w, http.StatusOK, map[string]int{"result": result})
}

// verifyShardLocked checks a parsed shard against the stored xorbs and returns the
// files it describes with their reassembled bytes, or the first problem found.
func (x *xetState) verifyShardLocked(s *shard) ([]*xetFile, [][]byte, string) {
	for _, sx := range s.xorbs {
		xb := x.xorbs[sx.hash]
		if xb == nil {
			return nil, nil, fmt.Sprintf("the CAS info lists xorb %s, which was never uploaded (POST /v1/xorbs/default/%s first)", sx.hash, sx.hash)
		}
		if len(sx.chunks) != len(xb.chunks) {
			return nil, nil, fmt.Sprintf("the CAS info gives xorb %s %d chunks; the uploaded xorb has %d", sx.hash, len(sx.chunks), len(xb.chunks))
		}
		if uint64(sx.rawBytes) != xb.raw {
			return nil, nil, fmt.Sprintf("the CAS info gives xorb %s %d bytes; its chunks hold %d", sx.hash, sx.rawBytes, xb.raw)
		}
		if sx.diskBytes != 0 && int(sx.diskBytes) != len(xb.data) {
			return nil, nil, fmt.Sprintf("the CAS info gives xorb %s %d bytes on disk; it was uploaded with %d", sx.hash, sx.diskBytes, len(xb.data))
		}
		for i, ch := range sx.chunks {
			st := xb.chunks[i]
			if !x.check("chunk", sx.hash.String(), ch.hash.String(), st.hash.String()) {
				return nil, nil, fmt.Sprintf("chunk %d of xorb %s: the CAS info says hash %s, the uploaded chunk hashes to %s", i, sx.hash, ch.hash, st.hash)
			}
			if ch.rawLen != st.rawLen || uint64(ch.rawOff) != st.rawOff {
				return nil, nil, fmt.Sprintf("chunk %d of xorb %s: the CAS info says %d bytes at offset %d, the uploaded chunk has %d at %d",
					i, sx.hash, ch.rawLen, ch.rawOff, st.rawLen, st.rawOff)
			}
		}
	}
	var files []*xetFile
	var datas [][]byte
	for _, sf := range s.files {
		name := "file " + sf.hash.String()
		if !sf.hasCheck && len(sf.terms) > 0 {
			return nil, nil, name + " has no verification entries (uploads must carry them)"
		}
		if !sf.hasSHA {
			return nil, nil, name + " has no sha256 metadata extension (required for Git-based repos: commits name files by sha256)"
		}
		var leaves []xetLeaf
		var buf []byte
		for i, t := range sf.terms {
			xb := x.xorbs[t.xorb]
			if xb == nil {
				return nil, nil, fmt.Sprintf("%s term %d references xorb %s, which was never uploaded", name, i, t.xorb)
			}
			if t.start >= t.end || int(t.end) > len(xb.chunks) {
				return nil, nil, fmt.Sprintf("%s term %d references chunks [%d, %d) of xorb %s, which has %d chunks", name, i, t.start, t.end, t.xorb, len(xb.chunks))
			}
			var n uint64
			var hashes []xetHash
			for _, ch := range xb.chunks[t.start:t.end] {
				n += uint64(ch.rawLen)
				hashes = append(hashes, ch.hash)
				leaves = append(leaves, xetLeaf{ch.hash, uint64(ch.rawLen)})
				data, err := decompressChunk(xb.data[ch.off+4], xb.data[ch.off+8:ch.off+ch.size], int(ch.rawLen))
				if err != nil { // parsed once already: cannot happen
					return nil, nil, fmt.Sprintf("%s term %d: stored xorb %s: %v", name, i, t.xorb, err)
				}
				buf = append(buf, data...)
			}
			if uint64(t.raw) != n {
				return nil, nil, fmt.Sprintf("%s term %d says %d bytes; chunks [%d, %d) of xorb %s hold %d", name, i, t.raw, t.start, t.end, t.xorb, n)
			}
			if sf.hasCheck {
				got := rangeHash(hashes)
				if !x.check("range", sf.hash.String(), t.rangeHash.String(), got.String()) {
					return nil, nil, fmt.Sprintf("%s term %d: verification hash %s, the chunks give %s", name, i, t.rangeHash, got)
				}
			}
		}
		got := fileHash(leaves)
		if !x.check("file", sf.hash.String(), sf.hash.String(), got.String()) {
			return nil, nil, fmt.Sprintf("%s: its reconstruction (%d bytes in %d terms) hashes to %s", name, len(buf), len(sf.terms), got)
		}
		digest := sha256Hex(buf)
		if !x.check("sha256", sf.hash.String(), sf.sha256.String(), digest) {
			return nil, nil, fmt.Sprintf("%s: the metadata extension says sha256 %s, the reconstructed bytes have sha256 %s", name, sf.sha256, digest)
		}
		if old := x.files[sf.hash]; old != nil && old.sha256 != digest { // cannot happen unless the hashes collide
			return nil, nil, fmt.Sprintf("%s is stored with sha256 %s", name, old.sha256)
		}
		files = append(files, &xetFile{hash: sf.hash, sha256: digest, size: int64(len(buf)), terms: sf.terms, repos: map[repoKey]bool{}})
		datas = append(datas, buf)
	}
	return files, datas, ""
}

// registerShardLocked records a verified shard: its files, and its xorbs' eligible
// chunks (hash % 1024 == 0, flagged by the client, or the first chunk of a file) in the
// global dedup index. The xorbs of one shard form a group that dedup answers return
// together ("possibly more" xorbs, spec shard.md).
func (x *xetState) registerShardLocked(s *shard, files []*xetFile, repo repoKey) {
	var group []xetHash
	for _, sx := range s.xorbs {
		group = append(group, sx.hash)
	}
	index := func(chunk, xorb xetHash) {
		for _, have := range x.dedup[chunk] {
			if have == xorb {
				return
			}
		}
		x.dedup[chunk] = append(x.dedup[chunk], xorb)
	}
	for i, sx := range s.xorbs {
		xb := x.xorbs[sx.hash]
		if xb.group == nil {
			xb.group = group
		}
		for j, ch := range xb.chunks {
			if dedupEligible(ch.hash) || s.xorbs[i].chunks[j].flags&chunkFlagDedup != 0 {
				index(ch.hash, sx.hash)
			}
		}
	}
	for _, f := range files {
		if len(f.terms) > 0 {
			t := f.terms[0]
			index(x.xorbs[t.xorb].chunks[t.start].hash, t.xorb)
		}
		if old := x.files[f.hash]; old != nil {
			old.repos[repo] = true
			continue
		}
		f.repos[repo] = true
		x.files[f.hash] = f
		x.bySHA[f.sha256] = f.hash
		x.stats.FilesRegistered++
	}
	x.stats.ShardsAccepted++
}

// dedupQuery answers GET /v1/chunks/{prefix}/{hash}: 404 unless the chunk is in the
// global dedup index, else a shard listing the xorbs that hold it (and, unless
// WithXetNarrowDedup, the others uploaded with them), chunk hashes keyed with the
// Hub's HMAC key.
func (h *Hub) dedupQuery(c *call) {
	x := h.xet
	if _, ok := h.casAuth(c, false); !ok {
		return
	}
	want, err := parseXetHash(c.id)
	if err != nil {
		writeError(c.w, http.StatusBadRequest, "", "dedup query: bad chunk hash: "+err.Error())
		return
	}
	// The spec names the prefix default-merkledb; both reference clients send default.
	if c.path != "default-merkledb" && c.path != "default" {
		writeError(c.w, http.StatusBadRequest, "", fmt.Sprintf("dedup query: prefix %q, want default-merkledb", c.path))
		return
	}
	now := h.cfg.now()
	x.mu.Lock()
	x.stats.DedupQueries++
	var list []shardXorb
	seen := map[xetHash]bool{}
	for _, xh := range x.dedup[want] {
		group := x.xorbs[xh].group
		if h.cfg.xet.narrowDedup {
			group = nil
		}
		for _, gh := range append([]xetHash{xh}, group...) {
			if seen[gh] {
				continue
			}
			seen[gh] = true
			xb := x.xorbs[gh]
			sx := shardXorb{hash: gh, rawBytes: uint32(xb.raw), diskBytes: uint32(len(xb.data))}
			for _, ch := range xb.chunks {
				flags := uint32(0)
				if len(x.dedup[ch.hash]) > 0 {
					flags = chunkFlagDedup
				}
				sx.chunks = append(sx.chunks, shardChunk{hash: ch.hash, rawOff: uint32(ch.rawOff), rawLen: ch.rawLen, flags: flags})
			}
			list = append(list, sx)
		}
	}
	if len(list) > 0 {
		x.stats.DedupHits++
	}
	key := x.hmacKey
	x.mu.Unlock()
	if len(list) == 0 {
		writeError(c.w, http.StatusNotFound, "", "chunk "+want.String()+" is not tracked by global deduplication")
		return
	}
	b := dedupShard(list, key, now.Unix(), now.Add(h.cfg.xet.keyExpiry).Unix())
	c.w.Header().Set("Content-Type", "application/octet-stream")
	c.w.Header().Set("Content-Length", itoa(int64(len(b))))
	c.w.WriteHeader(http.StatusOK)
	c.w.Write(b)
}
