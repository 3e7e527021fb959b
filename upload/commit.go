package upload

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/hfmerge/hfmerge/hub"
)

// Commit is one commit of a push: LFS objects already uploaded, small files that the
// Hub decides to keep inline or in LFS, paths to delete, and a marker file whose content
// identifies the commit after a lost reply.
type Commit struct {
	Summary, Description string
	LFS                  []hub.CommitLFS
	Files                []hub.CommitFile
	Delete               []string
	Marker               hub.CommitFile
}

// Commit uploads the small files the Hub wants in LFS, then makes the one commit (or
// opens the one pull request). When its reply is lost it finds out whether it landed
// before trying again, so that a lost reply never becomes two commits. A commit of more
// files than the Hub takes in one (MaxFiles) goes through a pull request of several
// commits that is then merged: the branch still changes once.
func (t *Target) Commit(ctx context.Context, c Commit) (*hub.CommitResult, error) {
	files := append(slices.Clip(c.Files), c.Marker)
	var pre []hub.PreuploadFile
	for _, f := range files {
		pre = append(pre, hub.PreuploadFile{Path: f.Path, Size: int64(len(f.Content)), Sample: f.Content[:min(512, len(f.Content))]})
	}
	modes, head, err := t.Client.Preupload(ctx, t.Repo, t.branch(), pre, t.PR)
	if err != nil {
		return nil, fmt.Errorf("preupload: %w", err)
	}
	lfs := map[string]bool{}
	for _, m := range modes {
		lfs[m.Path] = m.UploadMode == "lfs"
	}
	req := hub.CommitRequest{Summary: c.Summary, Description: c.Description, ParentCommit: head,
		LFSFiles: slices.Clip(c.LFS), Deleted: c.Delete}
	for _, f := range files {
		if !lfs[f.Path] {
			req.Files = append(req.Files, f)
			continue
		}
		obj := BytesObject(f.Content)
		if _, err := t.Put(ctx, obj, Options{}); err != nil {
			return nil, fmt.Errorf("uploading %s: %w", f.Path, err)
		}
		req.LFSFiles = append(req.LFSFiles, hub.CommitLFS{Path: f.Path, OID: obj.OID, Size: obj.Size})
	}
	if !t.PR && len(req.Files)+len(req.LFSFiles)+len(req.Deleted) > t.maxFiles() {
		return t.split(ctx, req, c.Marker)
	}
	return t.commit(ctx, req, c.Marker)
}

func (t *Target) commit(ctx context.Context, req hub.CommitRequest, marker hub.CommitFile) (*hub.CommitResult, error) {
	want := GitBlobID(marker.Content)
	for attempt := 0; attempt < 2; attempt++ {
		res, err := t.Client.Commit(ctx, t.Repo, t.branch(), req, t.PR)
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, hub.ErrCommitUnknown) {
			return nil, err
		}
		landed, lerr := t.findLanded(ctx, req.ParentCommit, marker.Path, want)
		if lerr != nil {
			return nil, fmt.Errorf("%w; checking whether it landed: %v", err, lerr)
		}
		if landed != nil {
			return landed, nil
		}
	}
	return nil, fmt.Errorf("commit to %s: the reply was lost twice and the commit did not land", t)
}

// findLanded looks for our commit: on the branch when its head moved past parent, or
// in a pull request.
func (t *Target) findLanded(ctx context.Context, parent, path, want string) (*hub.CommitResult, error) {
	c := t.Client
	holds := func(rev string) (bool, error) {
		es, err := c.PathsInfo(ctx, t.Repo, rev, []string{path})
		if err != nil {
			return false, err
		}
		return len(es) == 1 && es[0].OID == want, nil
	}
	if !t.PR {
		head, err := c.BranchHead(ctx, t.Repo, t.branch())
		if err != nil {
			return nil, err
		}
		if head == parent {
			return nil, nil
		}
		ok, err := holds(head)
		if err != nil || !ok {
			return nil, err
		}
		return &hub.CommitResult{OID: head, URL: c.RepoURL(t.Repo) + "/commit/" + head}, nil
	}
	p, err := t.FindPullRequest(ctx, path, want)
	return p, err
}

// FindPullRequest returns the newest pull request whose head holds the file path with
// the given git blob id, or nil.
func (t *Target) FindPullRequest(ctx context.Context, path, gitOID string) (*hub.CommitResult, error) {
	c := t.Client
	prs, err := c.PullRequests(ctx, t.Repo)
	if err != nil {
		return nil, err
	}
	slices.Reverse(prs) // newest first
	for _, p := range prs {
		es, err := c.PathsInfo(ctx, t.Repo, p.Commit, []string{path})
		if err != nil {
			return nil, err
		}
		if len(es) == 1 && es[0].OID == gitOID {
			return &hub.CommitResult{OID: p.Commit, URL: c.RepoURL(t.Repo) + "/commit/" + p.Commit,
				PullRequestURL: fmt.Sprintf("%s/discussions/%d", c.RepoURL(t.Repo), p.Number)}, nil
		}
	}
	return nil, nil
}

// GitBlobID is the git blob sha1 of content, which the Hub lists as a regular file's oid.
func GitBlobID(content []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(content))
	h.Write(content)
	return hex.EncodeToString(h.Sum(nil))
}
