package hubtest

import (
	"net/http"
	"strconv"
	"strings"
)

// RouteMergePR is POST /api/{kind}s/{repo}/discussions/{n}/merge.
const RouteMergePR Route = "merge-pr"

// mergePR merges pull request n into main, as the Hub's merge button does: one new
// commit on the branch with the pull request's files. The branch must not have moved
// since the pull request was opened (the fake does no three-way merge): 409 otherwise.
// A merged pull request is closed: it leaves the refs listing.
func (h *Hub) mergePR(c *call, num string) {
	n, err := strconv.Atoi(num)
	p := h.who(c.r)
	h.mu.Lock()
	defer h.mu.Unlock()
	rp, ok := h.repoFor(c, p, accessWrite)
	if !ok {
		return
	}
	head, open := rp.PRs[n]
	if err != nil || !open {
		writeError(c.w, http.StatusNotFound, "", "Pull request #"+num+" not found or not open")
		return
	}
	target := "main"
	base := h.prBaseLocked(rp, head)
	if rp.Branches[target] != base {
		writeError(c.w, http.StatusConflict, "", "This pull request cannot be merged: main has moved since it was opened; rebase it")
		return
	}
	pr := rp.Commits[head]
	h.seq++
	now := h.cfg.now()
	cm := &commit{ID: newCommitID(h.seq, base, "Merge pull request #"+num, now, pr.Files), Parent: base,
		Title: "Merge pull request #" + num, Description: pr.Title, Author: p.user(), Date: now, Files: pr.Files}
	rp.Commits[cm.ID] = cm
	rp.Branches[target] = cm.ID
	delete(rp.PRs, n)
	if err := h.persistLocked(); err != nil {
		writeError(c.w, http.StatusInternalServerError, "", err.Error())
		return
	}
	h.stats.add(func(s *Stats) { s.Commits[rp.urlPath()+"@"+target]++ })
	writeJSON(c.w, http.StatusOK, map[string]any{"success": true})
}

// prBaseLocked walks a pull request's commits back to the first one, whose parent is
// the branch head the pull request was opened on.
func (h *Hub) prBaseLocked(rp *repo, head string) string {
	onBranch := map[string]bool{}
	for id := rp.Branches["main"]; id != ""; id = rp.Commits[id].Parent {
		onBranch[id] = true
		if rp.Commits[id] == nil {
			break
		}
	}
	id := head
	for id != "" && !onBranch[id] {
		cm := rp.Commits[id]
		if cm == nil {
			return ""
		}
		id = cm.Parent
	}
	return id
}

// isMergePR recognises the route's path after /api/{kind}s/{repo}/.
func isMergePR(rest []string) (string, bool) {
	if len(rest) == 3 && rest[0] == "discussions" && rest[2] == "merge" && strings.Trim(rest[1], "0123456789") == "" {
		return rest[1], true
	}
	return "", false
}
