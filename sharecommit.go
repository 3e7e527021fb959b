package hfmerge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/mergeplan"
)

// CommitShares publishes a push that `push --shards i/N` workers uploaded: it reads
// their records from the run's scratch branch, refuses while any shard of the plan is
// not recorded (naming the shards and the shares that should upload them), checks each
// record against the plan and the Hub, then makes the one commit a single-machine push
// of the same inputs makes (the same files, the same hfmerge.json) and deletes the
// scratch branch. A target that already holds the merge is a no-op, as for Push. It
// needs the inputs (headers, and the small files: config, tokenizer, card), never the
// bytes of a shard.
func CommitShares(ctx context.Context, l *Inputs, p *mergeplan.Plan, o PushOptions) (*PushResult, error) {
	if !p.OK() {
		return nil, &ProblemsError{p.Problems}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Target.PR {
		return nil, &UsageError{errors.New("commit cannot open a pull request: push --shards records the shares on a branch, and commit publishes them to it")}
	}
	ps := &pusher{l: l, p: p, o: o, t: &o.Target, start: time.Now(), res: &PushResult{Shards: len(p.Shards)}}
	var err error
	if ps.prov, err = newProvenance(l, l.in.Options); err != nil {
		return nil, err
	}
	ps.prov.Run = o.Run
	ps.paths()
	ps.res.RunID = ps.id
	if done, err := ps.upToDate(ctx); err != nil || done != nil {
		if done != nil {
			ps.dropScratch(ctx) // a commit killed before it deleted the branch
		}
		return done, err
	}
	recorded, err := ps.readShares(ctx)
	if err != nil {
		return nil, err
	}
	ps.j = &journal{Shards: map[string]*journalShard{}}
	for name, r := range recorded {
		ps.j.Shards[name] = &journalShard{SHA256: r.SHA256, Size: r.Size, Uploaded: true, Base: r.Base}
	}
	ps.stamps = ps.baseStamps()
	res, err := ps.commit(ctx)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, hub.ErrCommitUnknown) {
			return nil, err
		}
		return nil, fmt.Errorf("%w (nothing was committed; the shares stay recorded on %s, and running commit again retries)", err, ScratchBranch(ps.id))
	}
	ps.dropScratch(ctx)
	ps.res.Commit = res
	ps.res.OnHub = len(p.Shards)
	for _, s := range p.Shards {
		ps.res.ShardBytes += s.Size()
		if s.Unchanged() {
			ps.res.Unchanged++
		}
	}
	ps.res.Elapsed = time.Since(ps.start)
	return ps.res, nil
}

// recordedShard is a shard as a share recorded it.
type recordedShard struct {
	sharedShard
	by Share
}

// readShares reads every share's record of this run from the scratch branch and
// returns the plan's shards as recorded, refusing when one is missing, recorded twice
// with two oids, not in the plan, of another size than the plan's, or not on the Hub.
func (ps *pusher) readShares(ctx context.Context) (map[string]recordedShard, error) {
	t := ps.scratch()
	entries, err := t.Client.Tree(ctx, t.Repo, t.Branch, sharesDir, false)
	if errors.Is(err, hub.ErrRevisionNotFound) || errors.Is(err, hub.ErrRepoNotFound) || errors.Is(err, hub.ErrEntryNotFound) {
		return nil, fmt.Errorf("%w: %s has no branch %s (run %s) holding shares/; run `hfmerge push --shards i/N` with the same inputs on each worker first "+
			"(the run id is a digest of the base, adapters, options, target and %s: a share pushed with any of them different is another run)",
			ErrNoShares, t.Repo, t.Branch, ps.id, ps.prov.Tool)
	}
	if err != nil {
		return nil, fmt.Errorf("listing the shares on %s@%s: %w", t.Repo, t.Branch, err)
	}
	plan := map[string]*mergeplan.Shard{}
	for i := range ps.p.Shards {
		plan[ps.p.Shards[i].Name] = &ps.p.Shards[i]
	}
	got := map[string]recordedShard{}
	ns := map[int]bool{}
	for _, e := range entries {
		sh, ok := parseManifestPath(e.Path)
		if e.Type != "file" || !ok {
			continue
		}
		m, err := readManifest(ctx, t, e.Path)
		if err != nil {
			return nil, err
		}
		if m == nil {
			continue
		}
		if m.Inputs != ps.prov.Inputs || m.Run != ps.id {
			return nil, fmt.Errorf("%s@%s:%s records run %s of inputs %.16s, not run %s of these inputs (%.16s)",
				t.Repo, t.Branch, e.Path, m.Run, m.Inputs, ps.id, ps.prov.Inputs)
		}
		ns[sh.N] = true
		for _, r := range m.Shards {
			s, ok := plan[r.Name]
			switch {
			case !ok:
				return nil, fmt.Errorf("share %s recorded %s, which the plan does not have", sh, r.Name)
			case r.Size != s.Size():
				return nil, fmt.Errorf("share %s recorded %s as %d bytes; the plan says %d", sh, r.Name, r.Size, s.Size())
			case !isSHA256(r.SHA256):
				return nil, fmt.Errorf("share %s recorded %s with sha256 %q, which is not one", sh, r.Name, r.SHA256)
			case r.Base != "" && !isSHA256(r.Base):
				return nil, fmt.Errorf("share %s recorded %s's base file %s with sha256 %q, which is not one", sh, r.Name, s.Base, r.Base)
			}
			// The base sha256 goes into hfmerge.json's base_files: where the base's
			// listing knows the file's, the record must agree with it.
			if oid, ok := digestOf(ps.l.Base, s.Base); ok && r.Base != "" && r.Base != oid {
				return nil, fmt.Errorf("share %s recorded %s as merged from %s of sha256 %s; the base's is %s", sh, r.Name, s.Base, r.Base, oid)
			}
			if s.Unchanged() {
				if oid, ok := digestOf(ps.l.Base, s.Base); ok && oid != r.SHA256 {
					return nil, fmt.Errorf("share %s recorded %s as %s, but its bytes are the base's %s, whose sha256 is %s", sh, r.Name, r.SHA256, s.Base, oid)
				}
			}
			if old, ok := got[r.Name]; ok && old.SHA256 != r.SHA256 {
				return nil, fmt.Errorf("shares %s and %s recorded %s with two sha256s (%s, %s): the shares were not made from the same inputs",
					old.by, sh, r.Name, old.SHA256, r.SHA256)
			}
			if _, ok := got[r.Name]; !ok {
				got[r.Name] = recordedShard{r, sh}
			}
		}
	}
	var missing []string
	for _, s := range ps.p.Shards {
		if _, ok := got[s.Name]; !ok {
			missing = append(missing, s.Name)
		}
	}
	if len(missing) > 0 {
		e := &MissingSharesError{Run: ps.id, Branch: t.Branch, Missing: missing, Owners: map[Share][]string{}}
		lacks := map[string]bool{}
		for _, n := range missing {
			lacks[n] = true
		}
		for n := range ns {
			for i, idx := range Partition(ps.p.Shards, n) {
				for _, k := range idx {
					if name := ps.p.Shards[k].Name; lacks[name] {
						sh := Share{I: i + 1, N: n}
						e.Owners[sh] = append(e.Owners[sh], name)
					}
				}
			}
		}
		return nil, e
	}
	// Each share's commit named its objects, so the Hub had them then; asking again
	// costs one batch call and turns a lost object into a clear message.
	var objs []hub.LFSObject
	for _, name := range slices.Sorted(maps.Keys(got)) {
		objs = append(objs, hub.LFSObject{OID: got[name].SHA256, Size: got[name].Size})
	}
	lacking, err := ps.t.Missing(ctx, objs)
	if err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(got)) {
		if r := got[name]; lacking[r.SHA256] {
			return nil, fmt.Errorf("share %s recorded %s (sha256 %s), but the Hub does not have it: run push --shards %s again", r.by, name, r.SHA256, r.by)
		}
	}
	return got, nil
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
