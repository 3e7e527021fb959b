package hfmerge

import (
	"context"
	"errors"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/mergeplan"
)

// xetBoundary is what one run of changed bytes costs beyond its own length in a Xet
// upload: the chunks on either side of it, which mix old and new bytes, are new too
// (two chunks of 64 KiB on average, at most 128 KiB each).
const xetBoundary = 2 * 64 << 10

// XetExpected is what a Xet push of the plan is expected to send when the base is in
// the CAS: for every shard whose bytes are not the base's, its header and each run of
// changed or new tensors, with the chunk boundaries around them. Unchanged tensors are
// found in the CAS and cost nothing. (Sent bytes are compressed and may be fewer.)
func XetExpected(p *mergeplan.Plan) int64 {
	var n int64
	for i := range p.Shards {
		s := &p.Shards[i]
		if s.Unchanged() {
			continue
		}
		n += int64(len(s.Layout.Prefix)) + xetBoundary/2
		inRun := false
		for j := range s.Tensors {
			t := &s.Tensors[j]
			changed := !t.Copy() || t.New
			if changed {
				n += s.Layout.Tensors[j].Len()
				if !inRun {
					n += xetBoundary
				}
			}
			inRun = changed
		}
	}
	return n
}

// PushPreview is what plan --repo says a push to a repo would upload.
type PushPreview struct {
	Repo     string `json:"repo"`
	Xet      *bool  `json:"xet_enabled,omitempty"` // nil: not known (offline, or no repo yet)
	Note     string `json:"note"`
	XetBytes int64  `json:"xet_expected_bytes"` // XetExpected
	LFSBytes int64  `json:"lfs_bytes"`          // every shard byte
}

// PlanPush asks the Hub (c nil: offline) whether repo is on Xet storage and says what a
// push of p would send each way. The push itself decides once, at its start, through
// the Xet write token (upload.Target.StartXet).
func PlanPush(ctx context.Context, c *hub.Client, repo hub.Repo, p *mergeplan.Plan) *PushPreview {
	pv := &PushPreview{Repo: repo.String(), XetBytes: XetExpected(p)}
	for _, s := range p.Shards {
		pv.LFSBytes += s.Size()
	}
	if c == nil {
		pv.Note = "offline: whether the Hub offers Xet for it is decided when the push starts"
		return pv
	}
	info, err := c.RepoInfo(ctx, repo, "")
	switch {
	case errors.Is(err, hub.ErrRepoNotFound) || errors.Is(err, hub.ErrRevisionNotFound):
		pv.Note = "the repo does not exist yet (push creates it); the push uses Xet if the Hub offers it"
	case err != nil:
		pv.Note = "the Hub did not say whether the repo is on Xet: " + err.Error()
	default:
		pv.Xet = &info.Xet
		pv.Note = "the repo is on Xet storage: push uploads through Xet (--xet auto)"
		if !info.Xet {
			pv.Note = "the repo has no Xet storage: push uploads through LFS"
		}
	}
	return pv
}
