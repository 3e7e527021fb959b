package hubtest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
)

// createBranch answers POST /api/{kind}s/{repo}/branch/{branch} as the Hub does (the
// shape huggingface.js's createBranch and huggingface_hub's create_branch send): a JSON
// body {startingPoint, emptyBranch, overwrite}, all optional; the branch starts at
// startingPoint (a branch, tag or commit), else at the default branch's head. An
// existing branch is 409 unless overwrite. emptyBranch is not modelled (400).
func (h *Hub) createBranch(c *call) {
	var req struct {
		StartingPoint string `json:"startingPoint"`
		EmptyBranch   bool   `json:"emptyBranch"`
		Overwrite     bool   `json:"overwrite"`
	}
	if body, _ := io.ReadAll(io.LimitReader(c.r.Body, 1<<20)); len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(c.w, http.StatusBadRequest, "", "invalid JSON body: "+err.Error())
			return
		}
	}
	if req.EmptyBranch {
		writeError(c.w, http.StatusBadRequest, "", "hubtest: emptyBranch is not modelled")
		return
	}
	if c.rev == "" || strings.HasPrefix(c.rev, "refs/") || strings.ContainsAny(c.rev, " ~^:?*[\\") {
		writeError(c.w, http.StatusBadRequest, "", "Invalid reference for a branch: "+c.rev)
		return
	}
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessWrite)
	if !ok {
		return
	}
	if _, exists := rp.Branches[c.rev]; exists && !req.Overwrite {
		writeError(c.w, http.StatusConflict, "", "Reference already exists")
		return
	}
	from := req.StartingPoint
	if from == "" {
		from = "main"
	}
	cm, ok := rp.resolve(from)
	if !ok {
		writeError(c.w, http.StatusNotFound, CodeRevisionNotFound, "Invalid rev id: "+from)
		return
	}
	rp.Branches[c.rev] = cm.ID
	if err := h.persistLocked(); err != nil {
		writeError(c.w, http.StatusInternalServerError, "", err.Error())
		return
	}
	writeJSON(c.w, http.StatusOK, map[string]string{})
}

// deleteBranch answers DELETE /api/{kind}s/{repo}/branch/{branch}: the branch goes (its
// commits stay, as the objects they name do); the default branch cannot be deleted
// (403), and a branch that is not there is 404.
func (h *Hub) deleteBranch(c *call) {
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessWrite)
	if !ok {
		return
	}
	if c.rev == "main" {
		writeError(c.w, http.StatusForbidden, "", "Cannot delete the default branch")
		return
	}
	if _, exists := rp.Branches[c.rev]; !exists {
		writeError(c.w, http.StatusNotFound, CodeRevisionNotFound, "Invalid rev id: "+c.rev)
		return
	}
	delete(rp.Branches, c.rev)
	if err := h.persistLocked(); err != nil {
		writeError(c.w, http.StatusInternalServerError, "", err.Error())
		return
	}
	writeJSON(c.w, http.StatusOK, map[string]string{})
}
