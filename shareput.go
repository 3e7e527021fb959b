package hfmerge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/upload"
)

// useShare narrows the push to one share of the plan. The share gets its own temp
// dir and journal (two shares may run on one machine with one work dir), while the
// run id, which names the scratch branch, stays the whole push's.
func (ps *pusher) useShare(s Share) error {
	if s.N < 1 || s.I < 1 || s.I > s.N {
		return &UsageError{fmt.Errorf("share %d/%d: i counts from 1 to N", s.I, s.N)}
	}
	if ps.t.PR {
		// The shares are recorded on a branch of the target repo, which needs write
		// access; a pull request is for those who have none.
		return &UsageError{errors.New("--shards cannot be used with --pr: the shares are recorded on a branch of the repo, which needs write access")}
	}
	ps.share = &s
	sub := *ps.p
	sub.Shards = shareOf(ps.p, s)
	ps.p = &sub
	ps.res.Shards = len(sub.Shards)
	ps.res.Share = s.String()
	ps.res.Scratch = ScratchBranch(ps.id)
	ps.local = fmt.Sprintf("%s-s%dof%d", ps.id, s.I, s.N)
	ps.tmp = filepath.Join(ps.work, "tmp-"+ps.local)
	return nil
}

// RunID is the run id of a push of these inputs to the target: the digest that names
// its journal and, for push --shards, its scratch branch ScratchBranch(id).
func RunID(l *Inputs, t upload.Target) (string, error) {
	prov, err := newProvenance(l, l.in.Options)
	if err != nil {
		return "", err
	}
	ps := &pusher{l: l, t: &t, prov: prov}
	ps.paths()
	return ps.id, nil
}

// scratch is the target of the share commits: the run's scratch branch, never a pull
// request, and never split (a share's commit is one manifest and a pointer per shard).
func (ps *pusher) scratch() *upload.Target {
	t := *ps.t
	t.Branch, t.PR = ScratchBranch(ps.id), false
	return &t
}

// manifest is this share's record, from the journal.
func (ps *pusher) manifest(transfer string) *shareManifest {
	m := &shareManifest{Tool: ps.prov.Tool, Run: ps.id, Inputs: ps.prov.Inputs, Target: ps.t.String(),
		Share: ps.share.String(), Transfer: transfer, Shards: []sharedShard{}}
	for _, s := range ps.p.Shards {
		js, _ := ps.j.get(s.Name, s.Size())
		m.Shards = append(m.Shards, sharedShard{Name: s.Name, SHA256: js.SHA256, Size: s.Size(), Base: js.Base})
	}
	return m
}

func (m *shareManifest) encode() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// shareRecorded reports a result when this share's record is on the scratch branch
// already, for these inputs, and the Hub has every object it names: a rerun of a
// share that finished moves nothing.
func (ps *pusher) shareRecorded(ctx context.Context) (*PushResult, error) {
	if ps.share == nil {
		return nil, nil
	}
	t := ps.scratch()
	m, err := readManifest(ctx, t, ps.share.manifestPath())
	if err != nil || m == nil || m.Inputs != ps.prov.Inputs || len(m.Shards) != len(ps.p.Shards) {
		return nil, err
	}
	var objs []hub.LFSObject
	for i, s := range ps.p.Shards {
		if m.Shards[i].Name != s.Name || m.Shards[i].Size != s.Size() {
			return nil, nil
		}
		objs = append(objs, hub.LFSObject{OID: m.Shards[i].SHA256, Size: s.Size()})
	}
	if len(objs) > 0 {
		missing, err := ps.t.Missing(ctx, objs)
		if err != nil {
			return nil, err
		}
		for _, lacks := range missing {
			if lacks {
				return nil, nil
			}
		}
	}
	ps.o.Log.Info("this share is recorded already; nothing to do", "share", ps.share.String(), "branch", t.Branch)
	r := *ps.res
	r.UpToDate = true
	r.Elapsed = time.Since(ps.start)
	r.Commit = &hub.CommitResult{URL: ps.t.Client.RepoURL(ps.t.Repo) + "/tree/" + t.Branch}
	return &r, nil
}

// readManifest reads a share's record from a branch; nil when it is not there.
func readManifest(ctx context.Context, t *upload.Target, path string) (*shareManifest, error) {
	info, err := t.Client.FileInfo(ctx, t.Repo, t.Branch, path)
	if errors.Is(err, hub.ErrEntryNotFound) || errors.Is(err, hub.ErrRevisionNotFound) || errors.Is(err, hub.ErrRepoNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if info.Size > 16<<20 {
		return nil, fmt.Errorf("%s@%s: %s is %d bytes, too big for a share's record", t.Repo, t.Branch, path, info.Size)
	}
	b, err := t.Client.ReadRange(ctx, info, 0, info.Size)
	if err != nil {
		return nil, fmt.Errorf("reading %s@%s:%s: %w", t.Repo, t.Branch, path, err)
	}
	var m shareManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s@%s:%s is not a share's record: %w", t.Repo, t.Branch, path, err)
	}
	return &m, nil
}

// shareCommitTries bounds the retries of a share's commit that another share's
// commit to the scratch branch overtook (412): each try is one small commit.
const shareCommitTries = 8

// recordShare commits this share's record to the scratch branch: the manifest, and
// the share's shards as LFS pointers under shares/<i>-of-<N>/, so that the uploaded
// objects are referenced by a commit until the final one names them. The branch
// starts at the default branch's head; no share writes a path another writes, so
// concurrent shares only ever race on the head, and a share overtaken retries.
func (ps *pusher) recordShare(ctx context.Context) (*hub.CommitResult, error) {
	t := ps.scratch()
	if _, err := t.Client.CreateBranch(ctx, t.Repo, t.Branch, ""); err != nil {
		return nil, fmt.Errorf("creating the scratch branch %s of %s: %w", t.Branch, t.Repo, err)
	}
	transfer := "lfs"
	if ps.res.Xet {
		transfer = "xet"
	}
	m := ps.manifest(transfer)
	c := upload.Commit{Summary: fmt.Sprintf("hfmerge: share %s of run %s", ps.share, ps.id),
		Description: fmt.Sprintf("Recorded by push --shards %s; `hfmerge commit` publishes the run on %s and deletes this branch.", ps.share, ps.t),
		Marker:      hub.CommitFile{Path: ps.share.manifestPath(), Content: m.encode()}}
	for _, s := range m.Shards {
		c.LFS = append(c.LFS, hub.CommitLFS{Path: ps.share.pointerPath(s.Name), OID: s.SHA256, Size: s.Size})
	}
	for try := 1; ; try++ {
		res, err := t.Commit(ctx, c)
		var he *hub.HTTPError
		if err != nil && errors.As(err, &he) && (he.Status == 412 || he.Status == 409) && try < shareCommitTries {
			ps.o.Log.Info("another share committed to the scratch branch first; trying again", "branch", t.Branch, "try", try)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("recording share %s on %s@%s: %w", ps.share, t.Repo, t.Branch, err)
		}
		// A share that started before the run was published and records itself after
		// the commit deleted the branch has just made it again: with the target holding
		// the run, nothing else would ever delete it. (A record made before the
		// deletion is deleted with the branch by the commit.)
		if held, err := holdsMerge(ctx, ps.t, ps.branch(), ps.prov.Inputs); err == nil && held {
			ps.o.Log.Info("the run was published while this share ran; its record is not needed", "share", ps.share.String())
			ps.dropScratch(ctx)
		}
		return res, nil
	}
}

// dropScratch deletes the run's scratch branch, once the target holds the merge.
func (ps *pusher) dropScratch(ctx context.Context) {
	b := ScratchBranch(ps.id)
	deleted, err := ps.t.Client.DeleteBranch(ctx, ps.t.Repo, b)
	switch {
	case err != nil:
		ps.o.Log.Warn("could not delete the scratch branch; delete it by hand", "repo", ps.t.Repo.String(), "branch", b, "error", err)
	case deleted:
		ps.o.Log.Info("deleted the scratch branch", "repo", ps.t.Repo.String(), "branch", b)
	}
}
