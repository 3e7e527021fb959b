package hubtest

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// createRepoLocked makes a repo with its first commit ("initial commit", holding the
// default .gitattributes and any extra files), on branch main. h.mu must be held.
func (h *Hub) createRepoLocked(k repoKey, private bool, author string, extra map[string][]byte) (*repo, error) {
	if h.repos[k] != nil {
		return nil, fail(http.StatusConflict, "", "You already created this %s repo", k.kind)
	}
	now := h.cfg.now()
	files := map[string]*fileEntry{".gitattributes": regularEntry([]byte(defaultGitattributes))}
	for p, data := range extra {
		cp, err := cleanRepoPath(p)
		if err != nil {
			return nil, fail(http.StatusBadRequest, "", "%v", err)
		}
		files[cp] = regularEntry(data)
	}
	h.seq++
	cm := &commit{ID: newCommitID(h.seq, "", "initial commit", now, files), Title: "initial commit", Author: author, Date: now, Files: files}
	rp := &repo{
		Kind: k.kind, ID: k.id, Private: private, Created: now,
		Branches: map[string]string{"main": cm.ID}, Tags: map[string]string{}, PRs: map[int]string{}, NextPR: 1,
		Commits: map[string]*commit{cm.ID: cm}, Granted: map[string]bool{}, ObjectID: objectID(k.String()),
	}
	h.repos[k] = rp
	return rp, h.persistLocked()
}

// createRepo answers POST /api/repos/create. Body: {"name", "organization"?,
// "type"?, "private"? | "visibility"?, "files"?}; "name" may also be "owner/name".
// It needs a write token of the namespace (the user or one of its orgs): 401 without
// a token, 403 for another namespace; 409 (with "url") if the repo exists.
func (h *Hub) createRepo(c *call) {
	var req struct {
		Name         string `json:"name"`
		Organization string `json:"organization"`
		Type         string `json:"type"`
		Private      *bool  `json:"private"`
		Visibility   string `json:"visibility"`
		Files        []struct {
			Path     string `json:"path"`
			Content  string `json:"content"`
			Encoding string `json:"encoding"`
		} `json:"files"`
	}
	if err := json.NewDecoder(io.LimitReader(c.r.Body, 64<<20)).Decode(&req); err != nil {
		writeError(c.w, http.StatusBadRequest, "", "invalid JSON body: "+err.Error())
		return
	}
	p := h.who(c.r)
	if !p.valid {
		msg := "You must be authenticated to perform this action."
		if p.present {
			msg = msgInvalidCredentials
		}
		writeError(c.w, http.StatusUnauthorized, "", msg)
		return
	}
	ns, name := req.Organization, req.Name
	if o, n, ok := strings.Cut(req.Name, "/"); ok {
		ns, name = o, n
	}
	if ns == "" {
		ns = p.token.User
	}
	kind := req.Type
	if kind == "" {
		kind = KindModel
	}
	if kind != KindModel && kind != KindDataset && kind != KindSpace {
		writeError(c.w, http.StatusBadRequest, "", "invalid repo type "+kind)
		return
	}
	if !validName(ns) || !validName(name) {
		writeError(c.w, http.StatusBadRequest, "", "invalid repo name "+ns+"/"+name)
		return
	}
	extra := map[string][]byte{}
	for _, f := range req.Files {
		data := []byte(f.Content)
		if f.Encoding == "base64" {
			var err error
			if data, err = base64.StdEncoding.DecodeString(f.Content); err != nil {
				writeError(c.w, http.StatusBadRequest, "", "invalid base64 for "+f.Path)
				return
			}
		}
		extra[f.Path] = data
	}
	private := (req.Private != nil && *req.Private) || req.Visibility == "private" || req.Visibility == "protected"
	k := repoKey{kind, ns + "/" + name}
	url := h.baseURL(c.r) + "/" + k.String()
	h.mu.Lock()
	if ok, msg := h.mayWriteLocked(p.token, kind, k.id); !ok {
		h.mu.Unlock()
		if !h.isMemberLocked(p.token.User, ns) || p.token.Scope == ScopeRead {
			msg = "You don't have the rights to create a " + kind + " under the namespace \"" + ns + "\""
		}
		writeError(c.w, http.StatusForbidden, "", msg)
		return
	}
	rp, err := h.createRepoLocked(k, private, p.token.User, extra)
	h.mu.Unlock()
	if se, ok := err.(*statusError); ok && se.status == http.StatusConflict {
		c.w.Header().Set("X-Error-Message", se.msg)
		writeJSON(c.w, http.StatusConflict, map[string]string{"error": se.msg, "url": url})
		return
	}
	if err != nil {
		writeStatusError(c.w, err)
		return
	}
	writeJSON(c.w, http.StatusOK, map[string]string{"url": url, "name": k.id, "id": rp.ObjectID})
}

// preupload answers POST /api/{kind}s/{repo}/preupload/{rev}: for each file, "lfs" when
// .gitattributes (sent, else the repo's) marks it, when it reaches the LFS threshold, or
// when its sample holds a NUL byte (binary), else "regular"; shouldIgnore from
// .gitignore (sent, else the repo's); oid when the path exists at rev (sha256 for LFS,
// git sha1 otherwise); and commitOid, the head of rev.
func (h *Hub) preupload(c *call) {
	var req struct {
		Files []struct {
			Path   string `json:"path"`
			Size   int64  `json:"size"`
			Sample string `json:"sample"`
		} `json:"files"`
		GitIgnore     *string `json:"gitIgnore"`
		GitAttributes *string `json:"gitAttributes"`
	}
	if err := json.NewDecoder(io.LimitReader(c.r.Body, 64<<20)).Decode(&req); err != nil {
		writeError(c.w, http.StatusBadRequest, "", "invalid JSON body: "+err.Error())
		return
	}
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessWrite)
	if !ok {
		return
	}
	cm, ok := commitFor(c, rp)
	if !ok {
		return
	}
	attrs := fileText(cm, ".gitattributes", req.GitAttributes)
	ignores := fileText(cm, ".gitignore", req.GitIgnore)
	type answer struct {
		Path         string `json:"path"`
		UploadMode   string `json:"uploadMode"`
		ShouldIgnore bool   `json:"shouldIgnore"`
		OID          string `json:"oid,omitempty"`
	}
	out := []answer{}
	for _, f := range req.Files {
		pth, err := cleanRepoPath(f.Path)
		if err != nil {
			writeError(c.w, http.StatusBadRequest, "", err.Error())
			return
		}
		sample, _ := base64.StdEncoding.DecodeString(f.Sample)
		a := answer{Path: f.Path, UploadMode: "regular", ShouldIgnore: matchAny(ignorePatterns(ignores), pth)}
		if matchAny(attrPatterns(attrs), pth) || f.Size >= h.cfg.lfsThreshold || strings.ContainsRune(string(sample), 0) {
			a.UploadMode = "lfs"
		}
		if e := cm.Files[pth]; e != nil {
			a.OID = e.BlobOID
			if e.isLFS() {
				a.OID = e.LFSOID
			}
		}
		out = append(out, a)
	}
	writeJSON(c.w, http.StatusOK, map[string]any{"files": out, "commitOid": cm.ID})
}

// fileText is the sent text if any, else the regular file p at cm, else "".
func fileText(cm *commit, p string, sent *string) string {
	if sent != nil {
		return *sent
	}
	if e := cm.Files[p]; e != nil && !e.isLFS() {
		return string(e.data)
	}
	return ""
}
