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

// Commit makes one commit (or opens one pull request) and, when its reply is lost,
// finds out whether it landed before trying again, so that a lost reply never becomes
// two commits. marker is a small file of the commit whose content identifies it: when
// the branch (or a pull request) holds it after a lost reply, the commit landed.
func Commit(ctx context.Context, c *hub.Client, repo hub.Repo, branch string, req hub.CommitRequest, pr bool, marker hub.CommitFile) (*hub.CommitResult, error) {
	want := GitBlobID(marker.Content)
	for attempt := 0; attempt < 2; attempt++ {
		res, err := c.Commit(ctx, repo, branch, req, pr)
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, hub.ErrCommitUnknown) {
			return nil, err
		}
		landed, lerr := findLanded(ctx, c, repo, branch, req.ParentCommit, pr, marker.Path, want)
		if lerr != nil {
			return nil, fmt.Errorf("%w; checking whether it landed: %v", err, lerr)
		}
		if landed != nil {
			return landed, nil
		}
	}
	return nil, fmt.Errorf("commit to %s: the reply was lost twice and the commit did not land", repo)
}

// findLanded looks for our commit: on the branch when its head moved past parent, or
// in a pull request.
func findLanded(ctx context.Context, c *hub.Client, repo hub.Repo, branch, parent string, pr bool, path, want string) (*hub.CommitResult, error) {
	holds := func(rev string) (bool, error) {
		es, err := c.PathsInfo(ctx, repo, rev, []string{path})
		if err != nil {
			return false, err
		}
		return len(es) == 1 && es[0].OID == want, nil
	}
	if !pr {
		head, err := c.BranchHead(ctx, repo, branch)
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
		return &hub.CommitResult{OID: head, URL: c.RepoURL(repo) + "/commit/" + head}, nil
	}
	prs, err := c.PullRequests(ctx, repo)
	if err != nil {
		return nil, err
	}
	slices.Reverse(prs) // newest first
	for _, p := range prs {
		ok, err := holds(p.Commit)
		if err != nil {
			return nil, err
		}
		if ok {
			return &hub.CommitResult{OID: p.Commit, URL: c.RepoURL(repo) + "/commit/" + p.Commit,
				PullRequestURL: fmt.Sprintf("%s/discussions/%d", c.RepoURL(repo), p.Number)}, nil
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
