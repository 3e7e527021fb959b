package hubtest

import (
	"context"
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
