package hubtest

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Query parameters of signed URLs. They are checked by the fake, so that a test can
// expire them (ExpireURLs, WithURLExpiry, WithClock) or tamper with them.
const (
	paramExpires = "X-Amz-Expires"   // unix seconds after which the URL is refused
	paramIssued  = "X-Amz-Date"      // unix nanoseconds when it was signed
	paramSig     = "X-Amz-Signature" // HMAC over path, other params, expiry and issue time
)

// signedURLLocked returns an absolute URL on the CDN host for p (or on the Hub host
// when p starts with /api/), signed until now+expiry. h.mu must be held.
func (h *Hub) signedURLLocked(p string, extra url.Values) string {
	now := h.cfg.now()
	q := url.Values{}
	for k, v := range extra {
		q[k] = v
	}
	q.Set(paramExpires, strconv.FormatInt(now.Add(h.cfg.urlExpiry).Unix(), 10))
	q.Set(paramIssued, strconv.FormatInt(now.UnixNano(), 10))
	q.Set(paramSig, h.sign(p, q))
	base := h.CDNURL()
	if strings.HasPrefix(p, "/api/") {
		base = h.URL()
	}
	return base + p + "?" + q.Encode()
}

// sign is the HMAC of the path and every query parameter but the signature.
func (h *Hub) sign(p string, q url.Values) string {
	cp := url.Values{}
	for k, v := range q {
		if k != paramSig {
			cp[k] = v
		}
	}
	m := hmac.New(sha256.New, h.key)
	io.WriteString(m, p+"?"+cp.Encode())
	return hex.EncodeToString(m.Sum(nil))
}

// checkSigned verifies the request's signature and expiry, answering 403 as S3 does
// when it fails.
func (h *Hub) checkSigned(c *call) bool {
	q := c.r.URL.Query()
	if !hmac.Equal([]byte(q.Get(paramSig)), []byte(h.sign(c.r.URL.EscapedPath(), q))) {
		writeS3Error(c.w, http.StatusForbidden, "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided.")
		return false
	}
	exp, _ := strconv.ParseInt(q.Get(paramExpires), 10, 64)
	issued, _ := strconv.ParseInt(q.Get(paramIssued), 10, 64)
	h.mu.Lock()
	epoch := h.urlEpoch
	h.mu.Unlock()
	now := h.cfg.now()
	if now.Unix() > exp || (!epoch.IsZero() && !time.Unix(0, issued).After(epoch)) {
		writeS3Error(c.w, http.StatusForbidden, "AccessDenied", "Request has expired")
		return false
	}
	return true
}

// cdnGet serves an LFS object by its sha256, as the Hub's CDN does: signed URL, no
// Authorization, Range support, ETag = "<sha256>".
func (h *Hub) cdnGet(c *call) {
	if !h.checkSigned(c) {
		return
	}
	h.mu.Lock()
	data, ok := h.objects[c.id]
	h.mu.Unlock()
	if !ok {
		writeS3Error(c.w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
		return
	}
	hd := c.w.Header()
	if name := c.r.URL.Query().Get("filename"); name != "" {
		hd.Set("Content-Disposition", fmt.Sprintf("inline; filename*=UTF-8''%s; filename=%q", url.PathEscape(name), name))
	}
	hd.Set("Cache-Control", "public, max-age=31536000, immutable")
	c.setFileKey(c.id)
	serveBytes(c, data, c.id, "application/octet-stream")
}

// serveBytes answers a GET or HEAD of data with one byte range at most: no Range or
// one it cannot parse (several ranges included, as S3) → 200 with everything;
// "bytes=a-b", "bytes=a-", "bytes=-n" → 206 with Content-Range; a range starting past
// the end (or any range of an empty file) → 416 with "Content-Range: bytes */size".
func serveBytes(c *call, data []byte, etag, ctype string) {
	hd := c.w.Header()
	hd.Set("Accept-Ranges", "bytes")
	hd.Set("ETag", `"`+etag+`"`)
	hd.Set("Content-Type", ctype)
	size := int64(len(data))
	start, end, status := parseRange(c.r.Header.Get("Range"), size)
	switch status {
	case http.StatusRequestedRangeNotSatisfiable:
		hd.Set("Content-Range", "bytes */"+itoa(size))
		hd.Set("Content-Length", "0")
		c.w.WriteHeader(status)
		return
	case http.StatusPartialContent:
		hd.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
	}
	hd.Set("Content-Length", itoa(end-start))
	c.w.WriteHeader(status)
	if c.r.Method != http.MethodHead {
		c.w.Write(data[start:end])
	}
}

// parseRange reads a Range header for a body of size bytes and returns the half-open
// interval to send and the status to send it with.
func parseRange(h string, size int64) (start, end int64, status int) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, size, http.StatusOK
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, size, http.StatusOK
	}
	if a == "" { // suffix: the last n bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n < 0 {
			return 0, size, http.StatusOK
		}
		if n == 0 || size == 0 {
			return 0, 0, http.StatusRequestedRangeNotSatisfiable
		}
		return max(size-n, 0), size, http.StatusPartialContent
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 {
		return 0, size, http.StatusOK
	}
	last := size - 1
	if b != "" {
		last, err = strconv.ParseInt(b, 10, 64)
		if err != nil || last < first {
			return 0, size, http.StatusOK
		}
	}
	if first >= size {
		return 0, 0, http.StatusRequestedRangeNotSatisfiable
	}
	return first, min(last+1, size), http.StatusPartialContent
}

// uploadPut receives a basic upload (PUT /upload/{id}) or one part of a multipart
// upload (PUT /upload/{id}/{n}) and answers with an S3-style ETag (quoted md5).
func (h *Hub) uploadPut(c *call) {
	if !h.checkSigned(c) {
		return
	}
	h.mu.Lock()
	up := h.uploads[c.id]
	h.mu.Unlock()
	if up == nil {
		writeS3Error(c.w, http.StatusNotFound, "NoSuchUpload", "The specified upload does not exist.")
		return
	}
	limit := up.size
	if c.route == RoutePartPut {
		if up.chunk == 0 || c.part > up.parts() {
			writeS3Error(c.w, http.StatusBadRequest, "InvalidArgument", "Part number must be between 1 and "+strconv.Itoa(up.parts()))
			return
		}
		limit = up.chunk
	} else if up.chunk != 0 {
		writeS3Error(c.w, http.StatusBadRequest, "InvalidRequest", "This object is a multipart upload; PUT its parts.")
		return
	}
	data, err := io.ReadAll(io.LimitReader(c.r.Body, limit+1))
	h.stats.add(func(s *Stats) {
		s.UploadedBytes += int64(len(data))
		s.ObjectUploads[up.oid] += int64(len(data))
	})
	if err != nil {
		return // the client went away; nothing to answer
	}
	if int64(len(data)) > limit {
		writeS3Error(c.w, http.StatusBadRequest, "EntityTooLarge", "Your proposed upload exceeds the declared size.")
		return
	}
	sum := md5.Sum(data)
	etag := `"` + hex.EncodeToString(sum[:]) + `"`
	if c.route == RouteUploadPut {
		if int64(len(data)) != up.size || sha256Hex(data) != up.oid {
			writeS3Error(c.w, http.StatusBadRequest, "BadDigest",
				fmt.Sprintf("The content does not match the declared sha256 %s and size %d.", up.oid, up.size))
			return
		}
		if err := h.storeObject(up.oid, data); err != nil {
			writeS3Error(c.w, http.StatusInternalServerError, "InternalError", err.Error())
			return
		}
		h.mu.Lock()
		delete(h.uploads, up.id)
		h.mu.Unlock()
	} else {
		h.mu.Lock()
		up.partData[c.part] = data
		up.partETag[c.part] = etag
		h.mu.Unlock()
	}
	c.w.Header().Set("ETag", etag)
	c.w.Header().Set("Content-Length", "0")
	c.w.WriteHeader(http.StatusOK)
}
