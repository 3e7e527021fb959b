package hfmerge

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
)

// loadRemote loads alice/base (from the fake Hub) and the adapter on disk.
func (e *pushEnv) loadRemote(t *testing.T, c *hub.Client) (*Inputs, *mergeplan.Plan) {
	t.Helper()
	ctx := context.Background()
	src := &Sources{Client: c, CacheDir: t.TempDir()}
	b, err := src.Base(ctx, "alice/base")
	if err != nil {
		t.Fatal(err)
	}
	a, err := src.Adapter(ctx, e.adapter)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Load(ctx, b, a, mergeplan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, l.Plan()
}

// TestShareAfterCommit: the scratch branch never outlives a published run. A share
// that finds the target up to date deletes a scratch branch left behind (a commit
// killed between its commit and the branch's deletion, or a late share's record); a
// late share, whose record lands after the commit published the run and deleted the
// branch (so re-creating it), deletes it again.
func TestShareAfterCommit(t *testing.T) {
	e := newPushEnv(t, 3)
	c := e.client(t, writeToken)
	ctx := context.Background()
	target := upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}}
	l, p := e.loadRemote(t, c)
	run, err := RunID(l, target)
	if err != nil {
		t.Fatal(err)
	}
	scratch := ScratchBranch(run)

	// The late share: the run is published (here by a whole push of the same inputs,
	// as a commit would) after the share started and before it records itself.
	var once sync.Once
	late := func(Event) {
		once.Do(func() {
			l2, p2 := e.loadRemote(t, c)
			if _, err := Push(ctx, l2, p2, PushOptions{Target: target, DiskBudget: -1, WorkDir: t.TempDir()}); err != nil {
				t.Errorf("the push published meanwhile: %v", err)
			}
		})
	}
	res, err := Push(ctx, l, p, PushOptions{Target: target, DiskBudget: -1, WorkDir: t.TempDir(), Share: &Share{1, 2}, Progress: late})
	if err != nil {
		t.Fatal(err)
	}
	if res.UpToDate {
		t.Fatal("the share found the target up to date: the publish did not happen while it ran")
	}
	if _, ok := e.h.Head("alice/merged", scratch); ok {
		t.Errorf("the late share left the scratch branch %s on a repo that holds the run", scratch)
	}
	e.check(t, "alice/merged")

	// A scratch branch left behind; a share run again finds the target up to date.
	if _, err := c.CreateBranch(ctx, target.Repo, scratch, ""); err != nil {
		t.Fatal(err)
	}
	res, err = Push(ctx, l, p, PushOptions{Target: target, DiskBudget: -1, WorkDir: t.TempDir(), Share: &Share{2, 2}})
	if err != nil || !res.UpToDate {
		t.Fatalf("share 2/2 on a published run: %+v, %v", res, err)
	}
	if _, ok := e.h.Head("alice/merged", scratch); ok {
		t.Errorf("share 2/2 found the run published and left the scratch branch %s", scratch)
	}
	// The same for commit run again after one killed between its commit and the
	// branch's deletion: nothing is committed, the branch goes.
	if _, err := c.CreateBranch(ctx, target.Repo, scratch, ""); err != nil {
		t.Fatal(err)
	}
	head, _ := e.h.Head("alice/merged", "main")
	res, err = CommitShares(ctx, l, p, PushOptions{Target: target})
	if err != nil || !res.UpToDate {
		t.Fatalf("commit on a published run: %+v, %v", res, err)
	}
	if now, _ := e.h.Head("alice/merged", "main"); now != head {
		t.Error("commit on a published run committed")
	}
	if _, ok := e.h.Head("alice/merged", scratch); ok {
		t.Errorf("commit found the run published and left the scratch branch %s", scratch)
	}
	// No share of this run: the refusal says what the run id is made of, the hfmerge
	// version included (workers on another image push another run).
	other := upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/other"}}
	if _, err := CommitShares(ctx, l, p, PushOptions{Target: other}); !errors.Is(err, ErrNoShares) || !strings.Contains(err.Error(), "hfmerge "+Version()) {
		t.Errorf("commit of a run no share pushed: %v", err)
	}
}

// TestShareBadBaseRecord: a share's record names, for each shard, the sha256 of the
// base file it was merged from, and commit writes it into hfmerge.json's base_files.
// A record whose base sha256 is not the base file's (corrupt, or written by hand) is
// refused, naming the share and the shard; hfmerge.json never records a wrong one.
func TestShareBadBaseRecord(t *testing.T) {
	e := newPushEnv(t, 2)
	c := e.client(t, writeToken)
	ctx := context.Background()
	target := upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}}
	l, p := e.loadRemote(t, c)
	if _, err := Push(ctx, l, p, PushOptions{Target: target, DiskBudget: -1, WorkDir: t.TempDir(), Share: &Share{1, 1}}); err != nil {
		t.Fatal(err)
	}
	run, _ := RunID(l, target)
	scratch := &upload.Target{Client: c, Repo: target.Repo, Branch: ScratchBranch(run)}
	m, err := readManifest(ctx, scratch, Share{1, 1}.manifestPath())
	if err != nil || m == nil || len(m.Shards) == 0 {
		t.Fatalf("the share's record: %+v, %v", m, err)
	}
	good := *m
	for _, bad := range []string{strings.Repeat("ab", 32), "not-a-sha256"} {
		bm := good
		bm.Shards = slices.Clone(good.Shards)
		bm.Shards[0].Base = bad
		if _, err := scratch.Commit(ctx, upload.Commit{Summary: "tamper", Marker: hub.CommitFile{Path: Share{1, 1}.manifestPath(), Content: bm.encode()}}); err != nil {
			t.Fatal(err)
		}
		_, err := CommitShares(ctx, l, p, PushOptions{Target: target})
		if err == nil || !strings.Contains(err.Error(), "share 1/1") || !strings.Contains(err.Error(), bm.Shards[0].Name) {
			t.Errorf("base sha256 %q in the record: %v; want a refusal naming share 1/1 and %s", bad, err, bm.Shards[0].Name)
		}
	}
	if _, ok := e.h.Head("alice/merged", "main"); ok {
		if b, err := e.h.File("alice/merged", "main", ProvenanceFile); err == nil {
			t.Errorf("a refused record was published:\n%s", b)
		}
	}
}
