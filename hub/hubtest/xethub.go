package hubtest

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// xetFileInfoType is the media type a client puts in Accept on /resolve/ to get a
// Xet file's info instead of a redirect (huggingface.js lib/file-download-info.ts).
const xetFileInfoType = "application/vnd.xet-fileinfo+json"

// issueXetTokenLocked makes a CAS token for repo. h.mu must be held.
func (h *Hub) issueXetTokenLocked(repo repoKey, write bool) (string, time.Time) {
	x := h.xet
	v := "xet_" + newID(24)
	exp := h.cfg.now().Add(h.cfg.xet.tokenLifetime)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.tokens[v] = xetToken{repo: repo, write: write, exp: exp}
	if write {
		x.stats.TokensWrite++
	} else {
		x.stats.TokensRead++
	}
	return v, exp
}

// xetToken answers GET /api/{kind}s/{repo}/xet-{read,write}-token/{rev}[?create_pr=1]
// with {accessToken, exp, casUrl}, and the same in X-Xet-Access-Token,
// X-Xet-Token-Expiration and X-Xet-Cas-Url (spec auth.md). A read token needs read
// access to the contents (gates apply), a write token write access; rev must exist,
// except for a write token with create_pr=1, where huggingface_hub sends the base
// branch or, for the default one, the literal "None". Without Xet: 404.
func (h *Hub) xetToken(c *call) {
	if h.xet == nil {
		writeError(c.w, http.StatusNotFound, "", "hubtest: Xet storage is not enabled for this repo")
		return
	}
	write := strings.Contains(c.r.URL.Path, "/xet-write-token/")
	need := accessDownload
	if write {
		need = accessWrite
	}
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, need)
	if !ok {
		return
	}
	newPR := write && boolParam(c.r.URL.Query().Get("create_pr")) && c.rev == "None"
	if !newPR {
		if _, ok := commitFor(c, rp); !ok {
			return
		}
	}
	tok, exp := h.issueXetTokenLocked(rp.key(), write)
	cas := h.CASURL()
	hd := c.w.Header()
	hd.Set("X-Xet-Access-Token", tok)
	hd.Set("X-Xet-Token-Expiration", strconv.FormatInt(exp.Unix(), 10))
	hd.Set("X-Xet-Cas-Url", cas)
	writeJSON(c.w, http.StatusOK, map[string]any{"accessToken": tok, "exp": exp.Unix(), "casUrl": cas})
}

// xetUploadActionLocked is the LFS batch upload action of the "xet" transfer, as
// huggingface.js reads it (lib/commit.ts) and git-xet (xet-core git_xet/src/app/
// xet_agent.rs): the CAS URL, a write token and its expiry (unix seconds) and a session
// id in header; href is the URL that refreshes the token. h.mu must be held.
func (h *Hub) xetUploadActionLocked(c *call, rp *repo, ref string) *lfsAction {
	if ref == "" {
		ref = "main"
	}
	tok, exp := h.issueXetTokenLocked(rp.key(), true)
	return &lfsAction{
		Href: h.baseURL(c.r) + "/api/" + rp.Kind + "s/" + rp.ID + "/xet-write-token/" + url.PathEscape(ref),
		Header: map[string]string{
			"X-Xet-Cas-Url":          h.CASURL(),
			"X-Xet-Access-Token":     tok,
			"X-Xet-Token-Expiration": strconv.FormatInt(exp.Unix(), 10),
			"X-Xet-Session-Id":       newID(16),
		},
		ExpiresIn: int64(h.cfg.xet.tokenLifetime.Seconds()),
	}
}

// xetHashLocked is the xetHash a listing reports for an entry: the file hash of its
// content when the CAS stores it, "" otherwise. h.mu must be held.
func (h *Hub) xetHashLocked(te treeEntry) string {
	if h.xet == nil || te.LFS == nil {
		return ""
	}
	h.xet.mu.Lock()
	defer h.xet.mu.Unlock()
	if fh, ok := h.xet.bySHA[te.LFS.OID]; ok {
		return fh.String()
	}
	return ""
}

// repoHasObjectLocked says whether some commit of repo has a file with that sha256.
// h.mu must be held.
func (h *Hub) repoHasObjectLocked(k repoKey, sha string) bool {
	rp := h.repos[k]
	if rp == nil {
		return false
	}
	for _, cm := range rp.Commits {
		for _, e := range cm.Files {
			if e.LFSOID == sha {
				return true
			}
		}
	}
	return false
}

// xetResolve adds the Xet headers to the /resolve/ answer of a file the CAS stores:
// X-Xet-Hash (the file id), X-Xet-Refresh-Route and a Link with rel="xet-auth" (the
// read token URL) and rel="xet-reconstruction-info" (the v1 reconstruction URL, as
// the Hub gives it; huggingface.js rewrites it to v2). When the client's Accept names
// the Xet file-info type, it answers 200 with that type and a JSON body instead of the
// redirect, and returns true.
func (h *Hub) xetResolve(c *call, rp *repo, e *fileEntry) bool {
	if h.xet == nil || !e.isLFS() || c.route != RouteResolve {
		return false
	}
	h.xet.mu.Lock()
	fh, ok := h.xet.bySHA[e.LFSOID]
	h.xet.mu.Unlock()
	if !ok {
		return false
	}
	refresh := h.baseURL(c.r) + "/api/" + rp.Kind + "s/" + rp.ID + "/xet-read-token/" + url.PathEscape(revOrMain(c))
	recon := h.CASURL() + "/v1/reconstructions/" + fh.String()
	hd := c.w.Header()
	hd.Set("X-Xet-Hash", fh.String())
	hd.Set("X-Xet-Refresh-Route", refresh)
	hd.Set("Link", "<"+refresh+`>; rel="xet-auth", <`+recon+`>; rel="xet-reconstruction-info"`)
	if !strings.Contains(c.r.Header.Get("Accept"), xetFileInfoType) {
		return false
	}
	etag := `"` + e.LFSOID + `"`
	hd.Set("ETag", etag)
	hd.Set("X-Linked-Etag", etag)
	hd.Set("X-Linked-Size", itoa(e.Size))
	body := map[string]any{"hash": fh.String(), "refreshUrl": refresh, "reconstructionUrl": recon, "etag": etag, "size": e.Size}
	if c.r.Method == http.MethodHead {
		hd.Set("Content-Type", xetFileInfoType)
		c.w.WriteHeader(http.StatusOK)
		return true
	}
	writeJSONType(c.w, http.StatusOK, xetFileInfoType, body)
	return true
}

// resetXetStats zeroes the CAS counters and check log (ResetStats).
func (h *Hub) resetXetStats() {
	if h.xet == nil {
		return
	}
	h.xet.mu.Lock()
	defer h.xet.mu.Unlock()
	h.xet.stats = XetStats{}
	h.xet.checks = nil
}
