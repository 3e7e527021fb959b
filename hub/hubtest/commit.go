package hubtest

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
)

// op is one operation of a commit, from the NDJSON body or from Seed.
type op struct {
	kind string // "file", "lfsFile", "deletedFile", "deletedFolder"
	path string
	data []byte // file
	oid  string // lfsFile
	size int64  // lfsFile; -1 when not sent
}

// statusError is an error with the HTTP answer it deserves.
type statusError struct {
	status int
	code   string
	msg    string
}

func (e *statusError) Error() string { return e.msg }

func fail(status int, code, format string, args ...any) error {
	return &statusError{status, code, fmt.Sprintf(format, args...)}
}

func writeStatusError(w http.ResponseWriter, err error) {
	if se, ok := errors.AsType[*statusError](err); ok {
		writeError(w, se.status, se.code, se.msg)
		return
	}
	writeError(w, http.StatusInternalServerError, "", err.Error())
}

// commitReq says where and how to commit.
type commitReq struct {
	ref         string // branch or refs/pr/N to move; for a new PR, the branch it targets
	createPR    bool
	parent      string // parentCommit as sent (full or short sha), may be empty
	title, desc string
	author      string
	ops         []op
	anySize     bool // accept regular files over the inline limit (Seed)
}

// commitLocked applies ops on top of the target ref (or of parent for a new PR),
// moves the ref, and returns the new commit and the PR number (0 if none). h.mu must
// be held. It makes nothing on error.
func (h *Hub) commitLocked(rp *repo, req commitReq) (*commit, int, error) {
	var headID string
	var ok bool
	if n, isPR := prNumber(req.ref); isPR && !req.createPR {
		headID, ok = rp.PRs[n]
	} else {
		headID, ok = rp.Branches[strings.TrimPrefix(req.ref, "refs/heads/")]
	}
	if !ok {
		return nil, 0, fail(http.StatusNotFound, CodeRevisionNotFound, "Invalid rev id: %s (commits need an existing branch or refs/pr/N)", req.ref)
	}
	base := rp.Commits[headID]
	if req.parent != "" {
		pc := findCommit(rp, req.parent)
		if pc == nil {
			return nil, 0, fail(http.StatusBadRequest, "", "parentCommit %s does not exist in %s", req.parent, rp.ID)
		}
		if req.createPR {
			base = pc
		} else if pc.ID != headID {
			return nil, 0, fail(http.StatusPreconditionFailed, "",
				"A commit has happened since. Please refresh and try again. (parentCommit %s, head of %s is %s)", req.parent, req.ref, headID)
		}
	}
	files := maps.Clone(base.Files)
	for _, o := range req.ops {
		limit := h.cfg.maxRegularSize
		if req.anySize {
			limit = 1 << 62
		}
		if err := h.applyOpLocked(files, o, limit); err != nil {
			return nil, 0, err
		}
	}
	h.seq++
	now := h.cfg.now()
	cm := &commit{
		ID: newCommitID(h.seq, base.ID, req.title, now, files), Parent: base.ID,
		Title: req.title, Description: req.desc, Author: req.author, Date: now, Files: files,
	}
	rp.Commits[cm.ID] = cm
	pr := 0
	switch n, isPR := prNumber(req.ref); {
	case req.createPR:
		if rp.NextPR < 1 {
			rp.NextPR = 1
		}
		pr = rp.NextPR
		rp.NextPR++
		rp.PRs[pr] = cm.ID
	case isPR:
		rp.PRs[n] = cm.ID
	default:
		rp.Branches[strings.TrimPrefix(req.ref, "refs/heads/")] = cm.ID
	}
	return cm, pr, h.persistLocked()
}

// findCommit finds a commit by full or abbreviated (>= 5 hex digits) id.
func findCommit(rp *repo, id string) *commit {
	id = strings.ToLower(id)
	if c, ok := rp.Commits[id]; ok {
		return c
	}
	if len(id) < 5 || !isLowerHex(id) {
		return nil
	}
	var found *commit
	for cid, c := range rp.Commits {
		if strings.HasPrefix(cid, id) {
			if found != nil {
				return nil // ambiguous
			}
			found = c
		}
	}
	return found
}

func (h *Hub) applyOpLocked(files map[string]*fileEntry, o op, limit int64) error {
	raw := o.path
	if o.kind == "deletedFolder" {
		raw = strings.TrimSuffix(raw, "/") // folders are sent as "dir/"
	}
	p, err := cleanRepoPath(raw)
	if err != nil {
		return fail(http.StatusBadRequest, "", "Bad request for commit endpoint: %v", err)
	}
	switch o.kind {
	case "file":
		if int64(len(o.data)) > limit {
			return fail(http.StatusBadRequest, "", "Bad request for commit endpoint: %s is %d bytes; files larger than %d bytes must be stored with LFS", p, len(o.data), limit)
		}
		files[p] = regularEntry(o.data)
	case "lfsFile":
		data, ok := h.objects[o.oid]
		if !ok || (o.size >= 0 && int64(len(data)) != o.size) {
			return fail(http.StatusBadRequest, "", "Bad request for commit endpoint: LFS object %s (size %d) for %s was never uploaded: "+
				"your push was rejected because an LFS pointer pointed to a file that does not exist", o.oid, o.size, p)
		}
		files[p] = lfsEntry(o.oid, int64(len(data)))
		ensureLFSAttribute(files, p)
	case "deletedFile":
		if _, ok := files[p]; !ok {
			return fail(http.StatusNotFound, CodeEntryNotFound, "Entry not found: cannot delete %s", p)
		}
		delete(files, p)
	case "deletedFolder":
		prefix := p + "/"
		n := len(files)
		maps.DeleteFunc(files, func(k string, _ *fileEntry) bool { return strings.HasPrefix(k, prefix) })
		if n == len(files) {
			return fail(http.StatusNotFound, CodeEntryNotFound, "Entry not found: cannot delete folder %s", p)
		}
	default:
		return fail(http.StatusBadRequest, "", "Bad request for commit endpoint: unknown operation %q", o.kind)
	}
	return nil
}

// ensureLFSAttribute adds p to .gitattributes when no LFS pattern there covers it, as
// the commit endpoint does for paths committed as LFS.
func ensureLFSAttribute(files map[string]*fileEntry, p string) {
	var text string
	if e := files[".gitattributes"]; e != nil && !e.isLFS() {
		text = string(e.data)
	}
	if matchAny(attrPatterns(text), p) {
		return
	}
	if text != "" && !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	files[".gitattributes"] = regularEntry([]byte(text + strings.ReplaceAll(p, " ", "[[:space:]]") + " filter=lfs diff=lfs merge=lfs -text\n"))
}

// commit answers POST /api/{kind}s/{repo}/commit/{rev}[?create_pr=1] with an NDJSON
// body: a header line, then file (base64 or utf-8), lfsFile, deletedFile and
// deletedFolder lines.
func (h *Hub) commit(c *call) {
	req, err := parseNDJSON(c.r.Body)
	if err != nil {
		writeStatusError(c.w, err)
		return
	}
	req.ref = c.rev
	req.createPR = boolParam(c.r.URL.Query().Get("create_pr"))
	p := h.who(c.r)
	h.mu.Lock()
	rp, ok := h.repoFor(c, p, accessWrite)
	if !ok {
		h.mu.Unlock()
		return
	}
	req.author = p.user()
	cm, pr, err := h.commitLocked(rp, req)
	h.mu.Unlock()
	if err != nil {
		writeStatusError(c.w, err)
		return
	}
	ref := c.rev
	if pr != 0 {
		ref = "refs/pr/" + strconv.Itoa(pr)
	}
	h.stats.add(func(s *Stats) { s.Commits[rp.urlPath()+"@"+ref]++ })
	base := h.baseURL(c.r) + "/" + rp.urlPath()
	out := map[string]any{"success": true, "commitOid": cm.ID, "commitUrl": base + "/commit/" + cm.ID, "hookOutput": ""}
	if pr != 0 {
		out["pullRequestUrl"] = base + "/discussions/" + strconv.Itoa(pr)
	}
	writeJSON(c.w, http.StatusOK, out)
}

// parseNDJSON reads a commit body.
func parseNDJSON(body io.Reader) (commitReq, error) {
	var req commitReq
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<30)
	line := 0
	for sc.Scan() {
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		line++
		var item struct {
			Key   string `json:"key"`
			Value struct {
				Summary      string `json:"summary"`
				Description  string `json:"description"`
				ParentCommit string `json:"parentCommit"`
				Path         string `json:"path"`
				Content      string `json:"content"`
				Encoding     string `json:"encoding"`
				OID          string `json:"oid"`
				Algo         string `json:"algo"`
				Size         *int64 `json:"size"`
			} `json:"value"`
		}
		if err := json.Unmarshal(raw, &item); err != nil {
			return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: line %d: %v", line, err)
		}
		v := item.Value
		if line == 1 {
			if item.Key != "header" {
				return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: the first line must be the header")
			}
			if strings.TrimSpace(v.Summary) == "" {
				return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: summary is required")
			}
			req.title, req.desc, req.parent = v.Summary, v.Description, v.ParentCommit
			continue
		}
		o := op{kind: item.Key, path: v.Path, oid: v.OID, size: -1}
		switch item.Key {
		case "file":
			if v.Encoding == "base64" {
				data, err := base64.StdEncoding.DecodeString(v.Content)
				if err != nil {
					return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: %s: invalid base64: %v", v.Path, err)
				}
				o.data = data
			} else {
				o.data = []byte(v.Content)
			}
		case "lfsFile":
			if v.Algo != "" && v.Algo != "sha256" {
				return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: %s: unsupported algo %q", v.Path, v.Algo)
			}
			if v.Size != nil {
				o.size = *v.Size
			}
		case "header":
			return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: line %d: a second header", line)
		}
		req.ops = append(req.ops, o)
	}
	if err := sc.Err(); err != nil {
		return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: %v", err)
	}
	if line == 0 {
		return req, fail(http.StatusBadRequest, "", "Bad request for commit endpoint: empty body")
	}
	return req, nil
}
