package hubtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"
)

// HostCAS is the Xet CAS host, as Request.Host reports it.
const HostCAS = "cas"

// Routes of the Xet CAS host.
const (
	RouteXetXorb     Route = "xet-xorb"     // POST|HEAD /v1/xorbs/{prefix}/{hash}
	RouteXetShard    Route = "xet-shard"    // POST /v1/shards
	RouteXetDedup    Route = "xet-dedup"    // GET /v1/chunks/{prefix}/{chunk hash}
	RouteXetRecon    Route = "xet-recon"    // GET /v1/reconstructions/{file hash}, /v2/...
	RouteXetTransfer Route = "xet-transfer" // GET /xorb/default/{hash} (signed, Range)
)

// CASHandler returns the Xet CAS host (404 for everything when the Hub has no Xet).
func (h *Hub) CASHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(HostCAS, w, r) })
}

// startCAS serves the CAS for Start, on 127.0.0.3 when the system allows it so that it
// is a host of its own, as cas-server.xethub.hf.co is.
func (h *Hub) startCAS() {
	if h.xet == nil {
		return
	}
	cas := httptest.NewUnstartedServer(h.CASHandler())
	if ln, err := net.Listen("tcp", "127.0.0.3:0"); err == nil {
		cas.Listener.Close()
		cas.Listener = ln
	}
	cas.Start()
	h.srvMu.Lock()
	h.servers = append(h.servers, cas)
	h.srvMu.Unlock()
	h.SetCASURL(cas.URL)
}

// ServeCAS runs the CAS host on ln until ctx is done (for cmd/hubfake, next to Serve).
func (h *Hub) ServeCAS(ctx context.Context, ln net.Listener) error {
	h.SetCASURL("http://" + ln.Addr().String())
	srv := &http.Server{Handler: h.CASHandler(), ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = errors.Join(err, srv.Shutdown(sctx))
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("hubtest: serve CAS: %w", err)
	}
	return nil
}

// routeCAS classifies a request to the CAS host.
func routeCAS(r *http.Request) *call {
	s := segments(r)
	c := &call{route: RouteUnknown}
	post, get := []string{http.MethodPost}, []string{http.MethodGet}
	switch {
	case len(s) == 4 && s[0] == "v1" && s[1] == "xorbs":
		c.route, c.method, c.path, c.id = RouteXetXorb, []string{http.MethodPost, http.MethodHead}, s[2], s[3]
	case len(s) == 2 && s[0] == "v1" && s[1] == "shards":
		c.route, c.method = RouteXetShard, post
	case len(s) == 4 && s[0] == "v1" && s[1] == "chunks":
		c.route, c.method, c.path, c.id = RouteXetDedup, get, s[2], s[3]
	case len(s) == 3 && (s[0] == "v1" || s[0] == "v2") && s[1] == "reconstructions":
		c.route, c.method, c.id, c.part = RouteXetRecon, get, s[2], int(s[0][1]-'0')
	case len(s) == 3 && s[0] == "xorb" && s[1] == "default":
		c.route, c.method, c.id = RouteXetTransfer, get, s[2]
	}
	return c
}

// dispatchXet runs a CAS route.
func (h *Hub) dispatchXet(c *call) {
	if h.xet == nil {
		writeError(c.w, http.StatusNotFound, "", "hubtest: this Hub has no Xet storage")
		return
	}
	switch c.route {
	case RouteXetXorb:
		h.xorbUpload(c)
	case RouteXetShard:
		h.shardUpload(c)
	case RouteXetDedup:
		h.dedupQuery(c)
	case RouteXetRecon:
		h.reconstruction(c)
	case RouteXetTransfer:
		h.transfer(c)
	}
}

// casAuth checks the CAS token of a request: 401 when it is missing, unknown or
// expired (a Hub token sent by mistake is counted apart), 403 when a read token is
// used to write.
func (h *Hub) casAuth(c *call, write bool) (xetToken, bool) {
	x := h.xet
	v, ok := strings.CutPrefix(c.r.Header.Get("Authorization"), "Bearer ")
	v = strings.TrimSpace(v)
	deny := func(status int, hubToken bool, msg string) (xetToken, bool) {
		x.count(func(s *XetStats) {
			s.AuthRejected++
			if hubToken {
				s.HubTokenRejected++
			}
		})
		writeError(c.w, status, "", msg)
		return xetToken{}, false
	}
	if !ok || v == "" {
		return deny(http.StatusUnauthorized, false, "CAS: missing Authorization: Bearer <CAS token> (get one from /api/{type}s/{repo}/xet-{read,write}-token/{rev})")
	}
	x.mu.Lock()
	t, known := x.tokens[v]
	x.mu.Unlock()
	if !known {
		h.mu.Lock()
		_, hub := h.tokens[v]
		h.mu.Unlock()
		if hub {
			return deny(http.StatusUnauthorized, true, "CAS: this is a Hub token; the CAS takes the accessToken of a xet-read-token or xet-write-token answer")
		}
		return deny(http.StatusUnauthorized, false, "CAS: unknown token")
	}
	if now := h.cfg.now(); !now.Before(t.exp) {
		return deny(http.StatusUnauthorized, false, fmt.Sprintf("CAS: token expired at %d (now %d): refresh it", t.exp.Unix(), now.Unix()))
	}
	if write && !t.write {
		return deny(http.StatusForbidden, false, "CAS: a read token cannot upload; use xet-write-token")
	}
	return t, true
}

// casReject answers 400 with the reason and counts the rejection.
func (h *Hub) casReject(c *call, count func(s *XetStats), format string, args ...any) {
	h.xet.count(count)
	writeError(c.w, http.StatusBadRequest, "", fmt.Sprintf(format, args...))
}

// check records one comparison of a claimed value with a recomputed one; it says
// whether they agree.
func (x *xetState) check(what, object, claimed, computed string) bool {
	x.checks = append(x.checks, XetCheck{What: what, Object: object, Claimed: claimed, Computed: computed})
	return claimed == computed
}

// xorbUpload answers POST /v1/xorbs/default/{hash}: the body is parsed, every chunk
// decompressed and hashed, and the xorb hash recomputed; a mismatch or malformed body
// is a 400 naming the chunk or the two hashes. HEAD says whether a xorb is stored.
func (h *Hub) xorbUpload(c *call) {
	x := h.xet
	if _, ok := h.casAuth(c, c.r.Method == http.MethodPost); !ok {
		return
	}
	want, err := parseXetHash(c.id)
	if err != nil {
		h.casReject(c, func(s *XetStats) { s.XorbsRejected++ }, "xorb upload: bad hash in the path: %v", err)
		return
	}
	if c.r.Method == http.MethodHead {
		x.mu.Lock()
		xb := x.xorbs[want]
		x.mu.Unlock()
		if xb == nil {
			c.w.WriteHeader(http.StatusNotFound)
			return
		}
		c.w.Header().Set("Content-Length", itoa(int64(len(xb.data))))
		c.w.WriteHeader(http.StatusOK)
		return
	}
	if c.path != "default" {
		h.casReject(c, func(s *XetStats) { s.XorbsRejected++ }, "xorb upload: prefix %q, want \"default\"", c.path)
		return
	}
	body, err := io.ReadAll(io.LimitReader(c.r.Body, xetMaxXorbBytes+1))
	x.count(func(s *XetStats) { s.XorbBytes += int64(len(body)) })
	if err != nil {
		return // the client went away
	}
	if len(body) > xetMaxXorbBytes {
		h.casReject(c, func(s *XetStats) { s.XorbsRejected++ }, "xorb %s: more than %d bytes (the limit is 64 MiB)", want, xetMaxXorbBytes)
		return
	}
	chunks, _, err := parseXorb(body)
	if err != nil {
		h.casReject(c, func(s *XetStats) { s.XorbsRejected++ }, "xorb %s is corrupt: %v", want, err)
		return
	}
	leaves := make([]xetLeaf, len(chunks))
	var raw uint64
	for i, ch := range chunks {
		leaves[i] = xetLeaf{ch.hash, uint64(ch.rawLen)}
		raw += uint64(ch.rawLen)
	}
	got := merkleRoot(leaves)
	x.mu.Lock()
	ok := x.check("xorb", want.String(), want.String(), got.String())
	x.mu.Unlock()
	if !ok {
		h.casReject(c, func(s *XetStats) { s.XorbsRejected++ },
			"xorb hash mismatch: the URL names %s but the %d chunks of the body hash to %s", want, len(chunks), got)
		return
	}
	if err := h.persistXorb(want, body); err != nil {
		writeError(c.w, http.StatusInternalServerError, "", err.Error())
		return
	}
	x.mu.Lock()
	inserted := x.xorbs[want] == nil
	if inserted {
		x.xorbs[want] = &xetXorb{hash: want, data: body, chunks: chunks, raw: raw}
		x.stats.XorbsAccepted++
	} else {
		x.stats.XorbsExisting++
	}
	x.mu.Unlock()
	writeJSON(c.w, http.StatusOK, map[string]bool{"was_inserted": inserted})
}

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
