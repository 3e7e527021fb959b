package hubtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"time"
)

// Handler returns the Hub API host.
func (h *Hub) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(HostHub, w, r) })
}

// CDNHandler returns the CDN/storage host: signed downloads and upload PUTs. It
// refuses, and counts, every request that carries Authorization, as presigned storage
// does ("only one auth mechanism allowed").
func (h *Hub) CDNHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(HostCDN, w, r) })
}

// errDropped is returned by writes after a fault cut the connection.
var errDropped = errors.New("hubtest: connection dropped by fault")

// serve routes a request, logs and counts it, applies faults, and dispatches it.
func (h *Hub) serve(host string, w http.ResponseWriter, r *http.Request) {
	var c *call
	switch host {
	case HostCDN:
		c = routeCDN(r)
	case HostCAS:
		c = routeCAS(r)
	default:
		c = routeHub(r)
	}
	i := h.stats.begin(host, r, c.route, h.cfg.now())
	h.inflight.Add(1)
	defer h.inflight.Add(-1)
	down, up := linkOf(c.route)
	body := &countingReader{r: r.Body, ctx: r.Context()}
	if up {
		body.link, body.rec = h.up, &h.stats
	}
	r.Body = body
	mw := &meteredWriter{ResponseWriter: w, rec: &h.stats, host: host, dropAt: -1, stallAt: -1, req: r, down: down}
	if down {
		mw.link = h.down
	}
	c.w, c.r, c.mw = mw, r, mw
	faulted := false
	defer func() {
		h.stats.end(i, mw.status, body.n, mw.n, faulted, h.cfg.now())
		if h.cfg.logf != nil {
			note := ""
			if faulted {
				note = " [fault]"
			}
			h.cfg.logf("%s %s %s %s -> %d (%d bytes)%s", host, r.Method, r.URL.Path, r.Header.Get("Range"), mw.status, mw.n, note)
		}
	}()
	if host == HostHub {
		w.Header().Set("X-Request-Id", newID(12))
	}
	if h.cfg.latency > 0 && !sleepCtx(r, h.cfg.latency) {
		return
	}
	if c.route == RouteUnknown {
		writeError(c.w, http.StatusNotFound, "", "Sorry, we can't find the page you are looking for.")
		return
	}
	if !slices.Contains(c.method, r.Method) {
		w.Header().Set("Allow", fmt.Sprint(c.method))
		writeError(c.w, http.StatusMethodNotAllowed, "", "method not allowed")
		return
	}
	if host == HostCDN && r.Header.Get("Authorization") != "" {
		h.stats.add(func(s *Stats) { s.CDNAuthRejected++ })
		writeS3Error(c.w, http.StatusForbidden, "InvalidArgument",
			"Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified")
		return
	}
	f, ok := h.faults.take(c.route, r)
	if !ok {
		h.dispatch(c)
		return
	}
	faulted = true
	h.stats.add(func(s *Stats) { s.FaultsFired++ })
	h.applyFault(c, f)
}

func (h *Hub) applyFault(c *call, f Fault) {
	if f.Delay > 0 && !sleepCtx(c.r, f.Delay) {
		return
	}
	if f.RetryAfter > 0 {
		secs := int((f.RetryAfter + time.Second - 1) / time.Second)
		c.w.Header().Set("Retry-After", strconv.Itoa(secs))
		c.w.Header().Set("RateLimit", fmt.Sprintf(`"api";r=0;t=%d`, secs))
		c.w.Header().Set("RateLimit-Policy", `"fixed window";"api";q=500;w=300`)
	}
	if f.RateLimit > 0 {
		secs := int((f.RateLimit + time.Second - 1) / time.Second)
		c.w.Header().Set("RateLimit", fmt.Sprintf(`"api";r=0;t=%d`, secs))
		c.w.Header().Set("RateLimit-Policy", `"fixed window";"api";q=500;w=300`)
	}
	c.mw.slow, c.mw.slowChunk = f.SlowBody, f.SlowChunk
	switch {
	case f.ApplyThenLose:
		rec := httptest.NewRecorder()
		inner := *c
		inner.w, inner.mw = rec, nil
		h.dispatch(&inner)
		if f.Status != 0 {
			writeFaultStatus(c, f.Status, f.Message)
			return
		}
		c.mw.cut()
	case f.Hang:
		<-c.r.Context().Done()
	case f.Stall:
		c.mw.stallAt = f.StallAfterBytes
		h.dispatch(c)
	case f.ExpiredURL:
		writeS3Error(c.w, http.StatusForbidden, "AccessDenied", "Request has expired")
	case f.Drop && f.DropAfterBytes <= 0:
		c.mw.cut()
	case f.Drop && (c.r.Method == http.MethodGet || c.r.Method == http.MethodHead):
		c.mw.dropAt = f.DropAfterBytes
		h.dispatch(c)
		c.mw.cut() // also when the body was shorter than DropAfterBytes
	case f.Drop:
		io.CopyN(io.Discard, c.r.Body, f.DropAfterBytes)
		c.mw.cut()
	case f.Status != 0:
		writeFaultStatus(c, f.Status, f.Message)
	default:
		h.dispatch(c)
	}
}

func writeFaultStatus(c *call, status int, msg string) {
	if msg == "" {
		msg = fmt.Sprintf("hubtest: scripted fault (%d %s)", status, http.StatusText(status))
	}
	if c.mw.host == HostCDN {
		writeS3Error(c.w, status, "InternalError", msg)
		return
	}
	writeError(c.w, status, "", msg)
}

// sleepCtx waits d unless the request is cancelled first.
func sleepCtx(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func (h *Hub) dispatch(c *call) {
	switch c.route {
	case RouteWhoami:
		h.whoami(c)
	case RouteCreateRepo:
		h.createRepo(c)
	case RouteInfo:
		h.info(c)
	case RouteTree:
		h.tree(c)
	case RoutePathsInfo:
		h.pathsInfo(c)
	case RouteRefs:
		h.refs(c)
	case RouteCommits:
		h.commits(c)
	case RoutePreupload:
		h.preupload(c)
	case RouteCommit:
		h.commit(c)
	case RouteXetToken:
		h.xetToken(c)
	case RouteMergePR:
		h.mergePR(c, c.id)
	case RouteBranch:
		if c.r.Method == http.MethodDelete {
			h.deleteBranch(c)
			return
		}
		h.createBranch(c)
	case RouteBatch:
		h.batch(c)
	case RouteVerify:
		h.verify(c)
	case RouteComplete:
		h.complete(c)
	case RouteResolve, RouteRaw:
		h.resolve(c)
	case RouteCDNGet:
		h.cdnGet(c)
	case RouteUploadPut, RoutePartPut:
		h.uploadPut(c)
	default:
		h.dispatchXet(c)
	}
}

// countingReader counts request body bytes and, for bodies that cross the upload
// link, paces them to its rate.
type countingReader struct {
	r    io.ReadCloser
	n    int64
	ctx  context.Context
	link *bucket   // nil: unlimited
	rec  *recorder // set for bodies that count as upload
}

func (cr *countingReader) Read(p []byte) (int, error) {
	if cr.rec != nil && len(p) > linkChunk {
		p = p[:linkChunk]
	}
	n, err := cr.r.Read(p)
	cr.n += int64(n)
	if cr.rec != nil && n > 0 {
		cr.rec.add(func(s *Stats) { s.BytesUp += int64(n) })
		if !cr.link.wait(cr.ctx, n) {
			return n, cr.ctx.Err()
		}
	}
	return n, err
}

func (cr *countingReader) Close() error { return cr.r.Close() }

// meteredWriter counts response bytes per host and file, and carries out the body
// faults: cut after N bytes, slow body.
type meteredWriter struct {
	http.ResponseWriter
	rec       *recorder
	req       *http.Request
	host      string
	down      bool   // the body counts as download (Stats.BytesDown)
	fileKey   string // set by handlers that serve a file's bytes
	status    int
	n         int64
	dropAt    int64   // -1: never
	stallAt   int64   // -1: never; else the body stops after this many bytes
	link      *bucket // the modelled download link this body goes through, if any
	slow      time.Duration
	slowChunk int
	cutDone   bool
}

func (m *meteredWriter) Unwrap() http.ResponseWriter { return m.ResponseWriter }

func (m *meteredWriter) WriteHeader(code int) {
	if m.status == 0 {
		m.status = code
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *meteredWriter) Write(p []byte) (int, error) {
	if m.cutDone {
		return 0, errDropped
	}
	if m.status == 0 {
		m.WriteHeader(http.StatusOK)
	}
	if m.stallAt >= 0 && m.n+int64(len(p)) > m.stallAt {
		n, _ := m.write(p[:max(m.stallAt-m.n, 0)])
		http.NewResponseController(m.ResponseWriter).Flush()
		<-m.req.Context().Done()
		return n, m.req.Context().Err()
	}
	if m.dropAt >= 0 && m.n+int64(len(p)) > m.dropAt {
		k := int(m.dropAt - m.n)
		n, _ := m.write(p[:k])
		m.cut()
		return n, errDropped
	}
	return m.write(p)
}

func (m *meteredWriter) write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		chunk := p
		if m.slow > 0 {
			size := m.slowChunk
			if size <= 0 {
				size = 4 << 10
			}
			chunk = p[:min(size, len(p))]
			if !sleepCtx(m.req, m.slow) {
				return total, m.req.Context().Err()
			}
		}
		if m.link != nil {
			chunk = chunk[:min(linkChunk, len(chunk))]
			if !m.link.wait(m.req.Context(), len(chunk)) {
				return total, m.req.Context().Err()
			}
		}
		// Count first, so a client that has read the bytes finds them counted.
		m.count(int64(len(chunk)))
		n, err := m.ResponseWriter.Write(chunk)
		total += n
		m.count(int64(n - len(chunk)))
		if err != nil {
			return total, err
		}
		if m.slow > 0 {
			http.NewResponseController(m.ResponseWriter).Flush()
		}
		p = p[len(chunk):]
	}
	return total, nil
}

func (m *meteredWriter) count(n int64) {
	m.n += n
	m.rec.add(func(s *Stats) {
		s.BytesServed[m.host] += n
		if m.down {
			s.BytesDown += n
		}
		if m.fileKey != "" {
			s.FileBytes[m.fileKey] += n
		}
	})
}

// cut flushes what was written and closes the connection under the client, which
// then sees a truncated body or no reply at all.
func (m *meteredWriter) cut() {
	if m.cutDone {
		return
	}
	m.cutDone = true
	rc := http.NewResponseController(m.ResponseWriter)
	if m.status != 0 {
		rc.Flush()
	}
	conn, buf, err := rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // HTTP/2 or a recorder: abort the stream instead
	}
	buf.Flush()
	conn.Close()
}

func newID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
