package hfmerge

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// checkKeepSpace refuses, before anything is downloaded, a --keep-base run whose base
// files would not fit where they are kept (the HF cache or --local-dir): without the
// check the run would fill the disk and fail part way through a shard.
func checkKeepSpace(ctx context.Context, l *Inputs, p *mergeplan.Plan, d disk) error {
	s, ok := l.Base.(*hubSource)
	if !ok || !s.keep {
		return nil
	}
	sizes, err := s.Files(ctx)
	if err != nil {
		return err
	}
	var need int64
	seen := map[string]bool{}
	for _, sh := range p.Shards {
		if sh.Base == "" || seen[sh.Base] {
			continue
		}
		seen[sh.Base] = true
		if _, local := s.at.local(sh.Base); !local {
			need += sizes[sh.Base]
		}
	}
	root := s.storeRoot()
	for root != "" {
		if _, err := os.Stat(root); err == nil {
			break
		}
		parent := filepath.Dir(root)
		if parent == root {
			break
		}
		root = parent
	}
	if free, ok := d.free(root); ok && need > free {
		return fmt.Errorf("--keep-base would download %s of base shards into %s, which has %s free: free some space, keep them elsewhere (--cache-dir, --local-dir), or drop --keep-base to stream them",
			human(need), s.storeRoot(), human(free))
	}
	return nil
}
