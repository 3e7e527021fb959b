package upload

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/hfmerge/hfmerge/hub"
)

// defaultMaxFiles is how many files one commit carries at most: the Hub advises 50-100
// per commit (hub-docs storage-limits.md), since each is checked within the commit
// request's 60 s.
const defaultMaxFiles = 100

func (t *Target) maxFiles() int {
	if t.MaxFiles > 0 {
		return t.MaxFiles
	}
	return defaultMaxFiles
}

// split publishes a commit too large for one: a pull request against the branch, filled
// in several commits (the marker in the first, so that a rerun finds the pull request
// and goes on with it), then merged, so that the branch still changes once.
func (t *Target) split(ctx context.Context, req hub.CommitRequest, marker hub.CommitFile) (*hub.CommitResult, error) {
	want := GitBlobID(marker.Content)
	pr, err := t.FindPullRequest(ctx, marker.Path, want)
	if err != nil {
		return nil, err
	}
	n := 0
	if pr != nil {
		n = prNumber(pr.PullRequestURL)
	}
	var have map[string]string // what the pull request already holds: path → oid
	if n == 0 {
		first := hub.CommitRequest{Summary: req.Summary, Description: req.Description, ParentCommit: req.ParentCommit,
			Files: []hub.CommitFile{marker}}
		res, err := (&Target{Client: t.Client, Repo: t.Repo, Branch: t.Branch, PR: true}).commit(ctx, first, marker)
		if err != nil {
			return nil, fmt.Errorf("opening the pull request that carries the commit: %w", err)
		}
		if n = prNumber(res.PullRequestURL); n == 0 {
			return nil, fmt.Errorf("the Hub opened no pull request (%s)", res.URL)
		}
	} else if have, err = t.held(ctx, "refs/pr/"+strconv.Itoa(n)); err != nil {
		return nil, err
	}
	ref := "refs/pr/" + strconv.Itoa(n)
	var batch hub.CommitRequest
	flush := func() error {
		if len(batch.LFSFiles)+len(batch.Files)+len(batch.Deleted) == 0 {
			return nil
		}
		batch.Summary = fmt.Sprintf("%s (part of #%d)", req.Summary, n)
		if _, err := t.Client.Commit(ctx, t.Repo, ref, batch, false); err != nil && !errors.Is(err, hub.ErrCommitUnknown) {
			return fmt.Errorf("committing to %s: %w", ref, err)
		}
		// A lost reply is fine here: the batch is committed again only if the pull
		// request lacks its files, and a commit twice in a pull request changes nothing.
		batch = hub.CommitRequest{}
		return nil
	}
	add := func(count int) error {
		if len(batch.LFSFiles)+len(batch.Files)+len(batch.Deleted)+count > t.maxFiles() {
			return flush()
		}
		return nil
	}
	for _, f := range req.LFSFiles {
		if have[f.Path] == f.OID {
			continue
		}
		if err := add(1); err != nil {
			return nil, err
		}
		batch.LFSFiles = append(batch.LFSFiles, f)
	}
	for _, f := range req.Files {
		if have[f.Path] == GitBlobID(f.Content) {
			continue
		}
		if err := add(1); err != nil {
			return nil, err
		}
		batch.Files = append(batch.Files, f)
	}
	for _, p := range req.Deleted {
		if err := add(1); err != nil {
			return nil, err
		}
		batch.Deleted = append(batch.Deleted, p)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if missing, err := t.missingFrom(ctx, ref, req); err != nil || len(missing) > 0 {
		if err == nil {
			err = fmt.Errorf("the pull request lacks %s after its commits", strings.Join(missing, ", "))
		}
		return nil, err
	}
	head, err := t.Client.BranchHead(ctx, t.Repo, t.branch())
	if err != nil {
		return nil, err
	}
	if err := t.Client.MergePullRequest(ctx, t.Repo, n, "Merged by hfmerge: one model, committed in parts."); err != nil && !errors.Is(err, hub.ErrCommitUnknown) {
		return nil, fmt.Errorf("merging pull request #%d into %s: %w (rerun to try again)", n, t.branch(), err)
	}
	landed, err := t.findLanded(ctx, head, marker.Path, want)
	if err != nil {
		return nil, err
	}
	if landed == nil {
		return nil, fmt.Errorf("merging pull request #%d into %s: the branch does not hold it (rerun to try again)", n, t.branch())
	}
	return landed, nil
}

// held lists what a revision holds: path → LFS oid, or git blob id for a regular file.
func (t *Target) held(ctx context.Context, rev string) (map[string]string, error) {
	entries, err := t.Client.Tree(ctx, t.Repo, rev, "", true)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range entries {
		out[e.Path] = e.OID
		if e.LFS != nil {
			out[e.Path] = e.LFS.OID
		}
	}
	return out, nil
}

// missingFrom lists the files of req a revision does not hold as req has them, and
// the deletions it has not made.
func (t *Target) missingFrom(ctx context.Context, rev string, req hub.CommitRequest) ([]string, error) {
	have, err := t.held(ctx, rev)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, f := range req.LFSFiles {
		if have[f.Path] != f.OID {
			missing = append(missing, f.Path)
		}
	}
	for _, f := range req.Files {
		if have[f.Path] != GitBlobID(f.Content) {
			missing = append(missing, f.Path)
		}
	}
	for _, p := range req.Deleted {
		if _, ok := have[p]; ok {
			missing = append(missing, "(deleted) "+p)
		}
	}
	return missing, nil
}

// prNumber reads N from a …/discussions/N URL; 0 if there is none.
func prNumber(url string) int {
	i := strings.LastIndex(url, "/discussions/")
	if i < 0 {
		return 0
	}
	n, _ := strconv.Atoi(url[i+len("/discussions/"):])
	return n
}
