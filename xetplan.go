package hfmerge

import "github.com/hfmerge/hfmerge/mergeplan"

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
