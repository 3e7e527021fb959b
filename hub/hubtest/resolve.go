package hubtest

import (
	"io"
	"net/http"
	"net/url"
	"strings"
)

// resolve answers GET|HEAD /{repo}/resolve/{rev}/{path} and /raw/: regular files (and
// raw LFS pointers) are served here with ETag = git sha1; LFS files redirect (302) to
// a signed CDN URL with X-Linked-Etag and X-Linked-Size. Every answer about an
// existing revision carries X-Repo-Commit.
func (h *Hub) resolve(c *call) {
	p := h.who(c.r)
	h.mu.Lock()
	rp, ok := h.repoFor(c, p, accessDownload)
	if !ok {
		h.mu.Unlock()
		return
	}
	cm, ok := commitFor(c, rp)
	if !ok {
		h.mu.Unlock()
		return
	}
	e := cm.Files[c.path]
	var loc string
	if e != nil && e.isLFS() && c.route == RouteResolve {
		loc = h.signedURLLocked("/lfs/"+e.LFSOID, url.Values{"filename": {pathBase(c.path)}})
	}
	h.mu.Unlock()

	hd := c.w.Header()
	hd.Set("X-Repo-Commit", cm.ID)
	if e == nil {
		writeError(c.w, http.StatusNotFound, CodeEntryNotFound, "Entry not found")
		return
	}
	if h.xetResolve(c, rp, e) {
		return
	}
	switch {
	case loc != "":
		hd.Set("Location", loc)
		hd.Set("ETag", `"`+e.LFSOID+`"`)
		hd.Set("X-Linked-Etag", `"`+e.LFSOID+`"`)
		hd.Set("X-Linked-Size", itoa(e.Size))
		body := "Found. Redirecting to " + loc
		hd.Set("Content-Type", "text/plain; charset=utf-8")
		hd.Set("Content-Length", itoa(int64(len(body))))
		c.w.WriteHeader(http.StatusFound)
		if c.r.Method != http.MethodHead {
			io.WriteString(c.w, body)
		}
	case e.isLFS(): // raw: the pointer is the git blob
		serveBytes(c, e.pointer(), e.BlobOID, "text/plain; charset=utf-8")
	default:
		c.setFileKey(e.BlobOID)
		serveBytes(c, e.data, e.BlobOID, "application/octet-stream")
	}
}

func pathBase(p string) string { return p[strings.LastIndex(p, "/")+1:] }
