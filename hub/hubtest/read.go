package hubtest

import (
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// objectID makes a stable 24-hex id in the shape of the Hub's "_id" fields.
func objectID(seed string) string {
	s := sha1.Sum([]byte(seed))
	return hex.EncodeToString(s[:12])
}

// hubTime formats dates as the Hub does: UTC, milliseconds, Z.
func hubTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// revOrMain is the revision of a call, "main" when the URL named none.
func revOrMain(c *call) string {
	if c.rev == "" {
		return "main"
	}
	return c.rev
}

// commitFor resolves the call's revision, answering 404 RevisionNotFound if it fails.
// h.mu must be held.
func commitFor(c *call, rp *repo) (*commit, bool) {
	cm, ok := rp.resolve(revOrMain(c))
	if !ok {
		writeError(c.w, http.StatusNotFound, CodeRevisionNotFound, "Invalid rev id: "+revOrMain(c))
		return nil, false
	}
	return cm, true
}

// info answers GET /api/{kind}s/{repo}[/revision/{rev}].
func (h *Hub) info(c *call) {
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessRead)
	if !ok {
		return
	}
	cm, ok := commitFor(c, rp)
	if !ok {
		return
	}
	q := c.r.URL.Query()
	blobs := q.Get("blobs") == "true" || q.Get("blobs") == "1"
	var used int64
	siblings := []map[string]any{}
	for _, name := range sortedKeys(cm.Files) {
		e := cm.Files[name]
		used += e.Size
		s := map[string]any{"rfilename": name}
		if blobs {
			s["size"], s["blobId"] = e.Size, e.BlobOID
			if e.isLFS() {
				s["lfs"] = map[string]any{"size": e.Size, "sha256": e.LFSOID, "pointerSize": len(e.pointer())}
			}
		}
		siblings = append(siblings, s)
	}
	var gated any = false
	if rp.Gated {
		gated = "manual"
	}
	full := map[string]any{
		"_id": rp.ObjectID, "id": rp.ID, "author": rp.owner(), "sha": cm.ID,
		"lastModified": hubTime(cm.Date), "createdAt": hubTime(rp.Created),
		"private": rp.Private, "gated": gated, "disabled": false,
		"downloads": 0, "likes": 0, "tags": []string{}, "siblings": siblings,
		"usedStorage": used, "xetEnabled": h.xet != nil,
	}
	if rp.Kind == KindModel {
		full["modelId"] = rp.ID
	}
	expand := append(q["expand"], q["expand[]"]...)
	if len(expand) == 0 {
		writeJSON(c.w, http.StatusOK, full)
		return
	}
	out := map[string]any{"_id": rp.ObjectID, "id": rp.ID}
	for _, k := range expand {
		if v, ok := full[k]; ok {
			out[k] = v
		}
	}
	writeJSON(c.w, http.StatusOK, out)
}

// treeEntry is an entry of the tree and paths-info answers.
type treeEntry struct {
	Type       string      `json:"type"`
	OID        string      `json:"oid"`
	Size       int64       `json:"size"`
	Path       string      `json:"path"`
	LFS        *lfsInfo    `json:"lfs,omitempty"`
	XetHash    string      `json:"xetHash,omitempty"` // when the CAS stores the content
	LastCommit *lastCommit `json:"lastCommit,omitempty"`
}

type lfsInfo struct {
	OID         string `json:"oid"`
	Size        int64  `json:"size"`
	PointerSize int    `json:"pointerSize"`
}

type lastCommit struct {
	ID    string `json:"id"`
	Title string `json:"title"`
	Date  string `json:"date"`
}

// entryAt describes p at commit cm: a file, a directory, or nothing.
func entryAt(rp *repo, cm *commit, p string, expand bool) (treeEntry, bool) {
	var te treeEntry
	if e, ok := cm.Files[p]; ok {
		te = treeEntry{Type: "file", OID: e.BlobOID, Size: e.Size, Path: p}
		if e.isLFS() {
			te.LFS = &lfsInfo{OID: e.LFSOID, Size: e.Size, PointerSize: len(e.pointer())}
		}
	} else if oid := cm.treeOID(p); oid != "" && p != "" {
		te = treeEntry{Type: "directory", OID: oid, Path: p}
	} else {
		return te, false
	}
	if expand {
		lc := rp.lastCommit(cm, p)
		te.LastCommit = &lastCommit{ID: lc.ID, Title: lc.Title, Date: hubTime(lc.Date)}
	}
	return te, true
}

// listDir returns the paths under dir ("" is the root): its direct children, or
// everything below it when recursive. Sorted by path.
func listDir(cm *commit, dir string, recursive bool) []string {
	seen := map[string]bool{}
	prefix := ""
	if dir != "" {
		prefix = dir + "/"
	}
	for p := range cm.Files {
		rest, ok := strings.CutPrefix(p, prefix)
		if !ok {
			continue
		}
		parts := strings.Split(rest, "/")
		if !recursive {
			seen[prefix+parts[0]] = true
			continue
		}
		for i := range parts {
			seen[prefix+strings.Join(parts[:i+1], "/")] = true
		}
	}
	return sortedKeys(seen)
}

// tree answers GET /api/{kind}s/{repo}/tree/{rev}[/{path}], paginated with a Link
// header whose cursor is the offset of the next page.
func (h *Hub) tree(c *call) {
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessRead)
	if !ok {
		return
	}
	cm, ok := commitFor(c, rp)
	if !ok {
		return
	}
	dir := strings.Trim(c.path, "/")
	if dir != "" {
		if _, isFile := cm.Files[dir]; isFile || cm.treeOID(dir) == "" {
			writeError(c.w, http.StatusNotFound, CodeEntryNotFound, "Entry not found: "+dir+" is not a directory at "+cm.ID)
			return
		}
	}
	q := c.r.URL.Query()
	expand := boolParam(q.Get("expand"))
	paths := listDir(cm, dir, boolParam(q.Get("recursive")))
	size := h.cfg.treePage
	if expand {
		size = h.cfg.treePageExpand
	}
	if l, err := strconv.Atoi(q.Get("limit")); err == nil && l > 0 && l < size {
		size = l
	}
	start := decodeCursor(q.Get("cursor"))
	if start > len(paths) {
		start = len(paths)
	}
	end := min(start+max(size, 1), len(paths))
	out := []treeEntry{}
	for _, pth := range paths[start:end] {
		te, _ := entryAt(rp, cm, pth, expand)
		te.XetHash = h.xetHashLocked(te)
		out = append(out, te)
	}
	if end < len(paths) {
		c.w.Header().Set("Link", "<"+nextPageURL(h.baseURL(c.r), c.r, end)+`>; rel="next"`)
	}
	writeJSON(c.w, http.StatusOK, out)
}

func boolParam(s string) bool {
	b, err := strconv.ParseBool(s)
	return err == nil && b
}

func decodeCursor(s string) int {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimPrefix(string(b), "offset:"))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// nextPageURL is the absolute URL of the page starting at offset: the request's own
// path and query with the cursor replaced.
func nextPageURL(base string, r *http.Request, offset int) string {
	q := r.URL.Query()
	q.Set("cursor", base64.RawURLEncoding.EncodeToString([]byte("offset:"+strconv.Itoa(offset))))
	return base + r.URL.EscapedPath() + "?" + q.Encode()
}

// pathsInfo answers POST /api/{kind}s/{repo}/paths-info/{rev}, with a JSON body
// {"paths": [...], "expand": bool} (JS) or a form body paths=a&paths=b&expand=... (Python).
// Unknown paths are left out.
func (h *Hub) pathsInfo(c *call) {
	var req struct {
		Paths  []string `json:"paths"`
		Expand any      `json:"expand"`
	}
	if strings.HasPrefix(c.r.Header.Get("Content-Type"), "application/json") {
		if err := json.NewDecoder(io.LimitReader(c.r.Body, 10<<20)).Decode(&req); err != nil {
			writeError(c.w, http.StatusBadRequest, "", "invalid JSON body: "+err.Error())
			return
		}
	} else {
		if err := c.r.ParseForm(); err != nil {
			writeError(c.w, http.StatusBadRequest, "", "invalid form body: "+err.Error())
			return
		}
		req.Paths, req.Expand = c.r.PostForm["paths"], c.r.PostForm.Get("expand")
	}
	if len(req.Paths) > 1000 {
		writeError(c.w, http.StatusRequestEntityTooLarge, "", "too many parameters: at most 1000 paths")
		return
	}
	// JS sends a JSON boolean, Python a form string ("True"/"False").
	expand := req.Expand == true
	if s, ok := req.Expand.(string); ok {
		expand = boolParam(s)
	}
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessRead)
	if !ok {
		return
	}
	cm, ok := commitFor(c, rp)
	if !ok {
		return
	}
	out := []treeEntry{}
	var seen []string
	for _, pth := range req.Paths {
		pth = strings.Trim(pth, "/")
		if slices.Contains(seen, pth) {
			continue
		}
		seen = append(seen, pth)
		if te, ok := entryAt(rp, cm, pth, expand); ok {
			te.XetHash = h.xetHashLocked(te)
			out = append(out, te)
		}
	}
	writeJSON(c.w, http.StatusOK, out)
}

// refs answers GET /api/{kind}s/{repo}/refs[?include_prs=1].
func (h *Hub) refs(c *call) {
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessRead)
	if !ok {
		return
	}
	type ref struct {
		Name         string `json:"name"`
		Ref          string `json:"ref"`
		TargetCommit string `json:"targetCommit"`
	}
	branches, tags := []ref{}, []ref{}
	for _, b := range sortedKeys(rp.Branches) {
		branches = append(branches, ref{b, "refs/heads/" + b, rp.Branches[b]})
	}
	for _, t := range sortedKeys(rp.Tags) {
		tags = append(tags, ref{t, "refs/tags/" + t, rp.Tags[t]})
	}
	out := map[string]any{"branches": branches, "tags": tags, "converts": []ref{}}
	if boolParam(c.r.URL.Query().Get("include_prs")) {
		prs := []ref{}
		for n := 1; n < rp.NextPR; n++ {
			if id, ok := rp.PRs[n]; ok {
				prs = append(prs, ref{strconv.Itoa(n), "refs/pr/" + strconv.Itoa(n), id})
			}
		}
		out["pullRequests"] = prs
	}
	writeJSON(c.w, http.StatusOK, out)
}

// commits answers GET /api/{kind}s/{repo}/commits/{rev}, newest first, paginated like
// the tree.
func (h *Hub) commits(c *call) {
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessRead)
	if !ok {
		return
	}
	cm, ok := commitFor(c, rp)
	if !ok {
		return
	}
	hist := rp.history(cm)
	start := min(decodeCursor(c.r.URL.Query().Get("cursor")), len(hist))
	end := min(start+h.cfg.treePage, len(hist))
	out := []map[string]any{}
	for _, x := range hist[start:end] {
		out = append(out, map[string]any{
			"id": x.ID, "title": x.Title, "message": x.Description, "date": hubTime(x.Date),
			"authors": []map[string]string{{"user": x.Author}},
		})
	}
	if end < len(hist) {
		c.w.Header().Set("Link", "<"+nextPageURL(h.baseURL(c.r), c.r, end)+`>; rel="next"`)
	}
	writeJSON(c.w, http.StatusOK, out)
}
