package hfmerge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hfmerge/hfmerge/cache"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
)

// PushOptions tune Push.
type PushOptions struct {
	Target  upload.Target
	Private bool       // create the repo private
	Message string     // the commit's title; "" gives one naming the inputs
	Card    CardPolicy // what to do with a model card on the Hub; "" is CardKeep
	// DiskBudget is the disk the run may use for merged shards; < 0 is the default:
	// the largest shard and 5%, at most the free space. It only decides how shards are
	// staged (see the README's "The push schedule"), never whether the push can run.
	DiskBudget int64
	WorkDir    string // merged shards and the journal; "" is HF_HOME/hfmerge
	Merge      merge.Options
	Log        *slog.Logger
	Progress   Progress
	// Share, when set, makes the push merge and upload only that share of the shards
	// and record them on the run's scratch branch, for CommitShares (share.go).
	Share *Share
	// Run, when set, is recorded in hfmerge.json as what started the push; it does not
	// change the merge, so it never makes an up-to-date target stale.
	Run *Run

	disk disk // the filesystem; tests fake its free space
}

// PushResult says what a push did.
type PushResult struct {
	Commit    *hub.CommitResult // nil when the target was up to date
	UpToDate  bool              // the target already held this merge: nothing moved
	Shards    int               // output shards
	Uploaded  int               // shards sent
	OnHub     int               // shards the Hub had already (a resumed run)
	Unchanged int               // shards whose bytes are the base's: not merged
	BytesUp   int64             // bytes sent to the Hub (shards and small files)
	BytesDown int64             // bytes received from the Hub for the base
	Elapsed   time.Duration
	// UploadBusy is how long at least one shard was being sent: against Elapsed, how
	// well the push kept the upload link, its floor, busy.
	UploadBusy time.Duration
	Budget     int64 // the disk budget used
	// Xet: the shards went up through Xet storage. XetExpected is what the plan expects
	// a Xet push to send (the changed tensors' bytes and their chunk boundaries, see
	// XetExpected); XetSent the xorb bytes actually sent.
	Xet         bool
	ShardBytes  int64 // the size of every output shard together
	XetExpected int64
	XetSent     int64

	// Share is the share a push --shards uploaded ("2/3"), Scratch the branch it
	// recorded it on; both "" for a whole push and for CommitShares.
	Share, Scratch string
	// RunID is the run id: the digest of the inputs and the target that names the
	// push's journal and, for push --shards, its scratch branch.
	RunID string
}

// URL is where the result is seen: the pull request, or the commit (the branch when it
// was up to date).
func (r *PushResult) URL() string {
	if r.Commit == nil {
		return ""
	}
	if r.Commit.PullRequestURL != "" {
		return r.Commit.PullRequestURL
	}
	return r.Commit.URL
}

// Outcome says in a word what the push did ("up to date", "opened pull request",
// "committed"), and in a line for people.
func (r *PushResult) Outcome(t upload.Target) (result, line string) {
	switch {
	case r.Share != "" && r.UpToDate:
		return "up to date", fmt.Sprintf("share %s is recorded on %s@%s already, and the Hub has its shards; nothing to do", r.Share, t.Repo, r.Scratch)
	case r.Share != "":
		return "uploaded share", fmt.Sprintf("share %s: %d shard(s) recorded on %s@%s; `hfmerge commit` publishes them once every share is up",
			r.Share, r.Shards, t.Repo, r.Scratch)
	case r.UpToDate && t.PR:
		return "up to date", fmt.Sprintf("an open pull request already holds this merge: %s; nothing to do", r.URL())
	case r.UpToDate:
		return "up to date", fmt.Sprintf("%s is up to date: its %s records these inputs and every file; nothing to do", t.String(), ProvenanceFile)
	case r.Commit.PullRequestURL != "":
		return "opened pull request", "opened pull request " + r.URL()
	}
	return "committed", "committed " + r.URL()
}

// ErrNoToken marks a push without a token.
var ErrNoToken = errors.New("push needs a Hugging Face token with write access: give --token, or set HF_TOKEN")

// CheckAccess asks the Hub whether the client's token may publish to the target, so
// that a push that would fail fails before anything moves.
func CheckAccess(ctx context.Context, t upload.Target) error {
	who, err := t.Client.WhoAmI(ctx)
	if err != nil {
		return fmt.Errorf("checking the token: %w", err)
	}
	if ok, why := who.CanWrite(t.Repo); !ok {
		return fmt.Errorf("cannot publish to %s: %s", t.Repo, why)
	}
	return nil
}

// Push merges the adapter into the base and publishes the merged model to the target
// in one commit (or one pull request): every shard, the index, config, tokenizer files,
// the model card and hfmerge.json. A run whose inputs the target already holds moves
// nothing; a killed run is resumed by running it again.
func Push(ctx context.Context, l *Inputs, p *mergeplan.Plan, o PushOptions) (*PushResult, error) {
	if !p.OK() {
		return nil, &ProblemsError{p.Problems}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ps := &pusher{l: l, p: p, o: o, t: &o.Target, start: time.Now(), res: &PushResult{Shards: len(p.Shards)}}
	var err error
	if ps.prov, err = newProvenance(l, l.in.Options); err != nil {
		return nil, err
	}
	ps.prov.Run = o.Run
	ps.paths()
	ps.res.RunID = ps.id
	if o.Share != nil {
		if err := ps.useShare(*o.Share); err != nil {
			return nil, err
		}
	}
	if done, err := ps.upToDate(ctx); err != nil || done != nil {
		if done != nil {
			// A run killed after its commit left its journal and work dir: done with.
			cleanWorkDir(ps.work, "", ps.prov.Inputs, ps.t.String())
			if unlock, err := tryLockDir(ps.tmp); err == nil {
				os.RemoveAll(ps.tmp)
				unlock()
			}
			os.Remove(ps.journalPath())
			if ps.share != nil {
				// A commit killed before it deleted the scratch branch, or a late
				// share's record, left it behind: the run is published, it is done with.
				ps.dropScratch(ctx)
			}
		}
		return done, err
	}
	if done, err := ps.shareRecorded(ctx); err != nil || done != nil {
		return done, err
	}
	res, err := ps.run(ctx)
	switch {
	case err == nil, ctx.Err() != nil, errors.Is(err, hub.ErrCommitUnknown):
	case ps.created:
		err = fmt.Errorf("%w (nothing was committed, and %s, which this push created, is empty; running the same push again resumes it)", err, ps.t.Repo)
	default:
		err = fmt.Errorf("%w (nothing was committed; running the same push again resumes it)", err)
	}
	return res, err
}

// pusher runs one push.
type pusher struct {
	l       *Inputs
	p       *mergeplan.Plan
	o       PushOptions
	t       *upload.Target
	prov    *Provenance
	j       *journal
	work    string            // the work dir
	id      string            // this push's inputs and target, as a short digest: the run id
	local   string            // names tmp and journal: id, and the share for push --shards
	share   *Share            // push --shards: p is then that share's part of the plan
	tmp     string            // this push's merged shards: work/tmp-<local>
	created bool              // the repo did not exist before this push
	stamps  map[string]string // base file → fileStamp when the push started
	start   time.Time
	res     *PushResult
}

// upToDate reports a result when the target already holds this merge: the branch's
// hfmerge.json, or with a pull request an open one's, records these inputs and every
// file it lists is there with that content.
func (ps *pusher) upToDate(ctx context.Context) (*PushResult, error) {
	var revs []string
	if ps.t.PR {
		prs, err := ps.t.Client.PullRequests(ctx, ps.t.Repo)
		if err != nil && !errors.Is(err, hub.ErrRepoNotFound) {
			return nil, err
		}
		for i := len(prs) - 1; i >= 0; i-- {
			revs = append(revs, prs[i].Ref)
		}
	} else {
		revs = []string{ps.branch()}
	}
	for _, rev := range revs {
		ok, err := holdsMerge(ctx, ps.t, rev, ps.prov.Inputs)
		if err != nil {
			return nil, err
		}
		if ok {
			r := &PushResult{UpToDate: true, Shards: len(ps.p.Shards), Elapsed: time.Since(ps.start), RunID: ps.id,
				Commit: &hub.CommitResult{URL: ps.t.Client.RepoURL(ps.t.Repo) + "/tree/" + rev}}
			if n, ok := strings.CutPrefix(rev, "refs/pr/"); ok {
				r.Commit.PullRequestURL = ps.t.Client.RepoURL(ps.t.Repo) + "/discussions/" + n
			}
			return r, nil
		}
	}
	return nil, nil
}

// paths names the work dir, the temp dir and the journal of this push.
func (ps *pusher) paths() {
	ps.work = ps.o.WorkDir
	if ps.work == "" {
		ps.work = filepath.Join(cache.Home(), "hfmerge")
	}
	key := sha256.Sum256([]byte(ps.prov.Inputs + "\x00" + ps.t.Repo.String() + "\x00" + ps.branch() + "\x00" + strconv.FormatBool(ps.t.PR)))
	ps.id = hex.EncodeToString(key[:8])
	ps.local = ps.id
	ps.tmp = filepath.Join(ps.work, "tmp-"+ps.local)
}

func (ps *pusher) journalPath() string { return filepath.Join(ps.work, "journal-"+ps.local+".json") }

func (ps *pusher) branch() string {
	if ps.t.Branch == "" {
		return "main"
	}
	return ps.t.Branch
}

// holdsMerge says whether rev's hfmerge.json records these inputs and every file it
// lists is at rev with the content it records.
func holdsMerge(ctx context.Context, t *upload.Target, rev, inputs string) (bool, error) {
	entries, err := t.Client.Tree(ctx, t.Repo, rev, "", true)
	if err != nil {
		if errors.Is(err, hub.ErrRepoNotFound) || errors.Is(err, hub.ErrRevisionNotFound) {
			return false, nil // no repo or no branch yet
		}
		return false, err
	}
	byPath := map[string]hub.Entry{}
	for _, e := range entries {
		byPath[e.Path] = e
	}
	if _, ok := byPath[ProvenanceFile]; !ok {
		return false, nil
	}
	have, err := hubProvenance(ctx, t, rev)
	if err != nil {
		return false, err
	}
	if have == nil || have.Inputs != inputs || len(have.Files) == 0 {
		return false, nil
	}
	for path, f := range have.Files {
		e, ok := byPath[path]
		switch {
		case !ok:
			return false, nil
		case e.LFS != nil && (e.LFS.OID != f.SHA256 || e.LFS.Size != f.Size):
			return false, nil
		case e.LFS == nil && (f.Git == "" || e.OID != f.Git):
			return false, nil
		}
	}
	return true, nil
}

func (ps *pusher) run(ctx context.Context) (*PushResult, error) {
	o := &ps.o
	var largest, total int64
	for _, s := range ps.p.Shards {
		largest = max(largest, s.Size())
		total += s.Size()
	}
	target := ps.t.String()
	if err := os.MkdirAll(ps.work, 0o755); err != nil {
		return nil, err
	}
	cleanWorkDir(ps.work, ps.local, ps.prov.Inputs, target)
	if err := os.MkdirAll(ps.tmp, 0o755); err != nil {
		return nil, err
	}
	unlock, err := tryLockDir(ps.tmp)
	if errors.Is(err, ErrLocked) {
		return nil, fmt.Errorf("another hfmerge is pushing the same merge to %s (its work dir %s is locked); wait for it to finish", target, ps.tmp)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		os.RemoveAll(ps.tmp) // merged shards are never left behind, even on failure
		unlock()
	}()
	clearDir(ps.tmp) // what a killed run left
	budget := o.DiskBudget
	if budget < 0 {
		// Near one shard: the largest, 5% more, and never more than the disk has.
		budget = largest + largest/20
		if free, ok := o.disk.free(ps.tmp); ok {
			budget = min(budget, max(free-(64<<20), 0))
		}
	} else if free, ok := o.disk.free(ps.tmp); ok && budget > free {
		return nil, &UsageError{fmt.Errorf("--disk-budget %s is more than the %s free in %s", human(budget), human(free), ps.tmp)}
	}
	ps.res.Budget = budget
	if err := checkSizes(ps.p, o.Log); err != nil {
		return nil, err
	}
	if err := checkKeepSpace(ctx, ps.l, ps.p, o.disk); err != nil {
		return nil, err
	}
	o.Log.Info("pushing", "target", target, "shards", len(ps.p.Shards), "size", human(total), "disk_budget", human(budget))
	_, existed, err := ps.t.Client.CreateRepo(ctx, ps.t.Repo, o.Private)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", ps.t.Repo, err)
	}
	ps.created = !existed
	if b := ps.branch(); b != "main" {
		// As `hf upload --revision` does: a missing branch starts at the default branch.
		made, err := ps.t.Client.CreateBranch(ctx, ps.t.Repo, b, "")
		if err != nil {
			return nil, fmt.Errorf("creating branch %s of %s: %w", b, ps.t.Repo, err)
		}
		if made {
			o.Log.Info("created the branch from the default branch", "repo", ps.t.Repo.String(), "branch", b)
		}
	}
	if existed && o.Private {
		if info, err := ps.t.Client.RepoInfo(ctx, ps.t.Repo, ""); err == nil && !info.Private {
			o.Log.Warn("the repo exists and is public; --private applies only to a repo push creates, so the merged model will be public",
				"repo", ps.t.Repo.String())
		}
	}
	ps.stamps = ps.baseStamps()
	ps.j = openJournal(ps.journalPath(), ps.prov.Inputs, target, ps.stamps)
	if ps.j.stale {
		o.Log.Warn("a base file changed since the interrupted push recorded it; starting that push over")
	}
	sch := &schedule{ps: ps, budget: budget}
	if err := sch.run(ctx); err != nil {
		return nil, err
	}
	commit := ps.commit
	if ps.share != nil {
		commit = ps.recordShare
	}
	res, err := commit(ctx)
	if err != nil {
		return nil, err
	}
	ps.j.remove()
	ps.res.Commit = res
	ps.res.Elapsed = time.Since(ps.start)
	return ps.res, nil
}

// clearDir empties a directory.
func clearDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != ".lock" {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// The Hub's limits on one file (hub-docs storage-limits.md): 500 GB at most, under
// 200 GB recommended.
const (
	maxFileSize         = 500_000_000_000
	recommendedFileSize = 200_000_000_000
)

// checkSizes refuses a shard the Hub cannot store and warns of one it advises against,
// before anything moves.
func checkSizes(p *mergeplan.Plan, log *slog.Logger) error {
	for _, s := range p.Shards {
		switch {
		case s.Size() > maxFileSize:
			return fmt.Errorf("%s would be %s, and the Hub stores files of at most %s: reshard the base into smaller files (for example save_pretrained with max_shard_size=\"50GB\") and merge that",
				s.Name, human(s.Size()), human(maxFileSize))
		case s.Size() > recommendedFileSize:
			log.Warn("the Hub recommends files under 200 GB; uploads of larger ones fail more often", "shard", s.Name, "size", human(s.Size()))
		}
	}
	return nil
}

// weightFile says whether a repo file is model weights or their index: files of an
// earlier model that the new one does not have must go in the same commit.
func weightFile(path string) bool {
	base := filepath.Base(path)
	return strings.HasSuffix(base, ".safetensors") || strings.HasSuffix(base, ".safetensors.index.json") ||
		(strings.HasPrefix(base, "pytorch_model") && (strings.HasSuffix(base, ".bin") || strings.HasSuffix(base, ".bin.index.json"))) ||
		strings.HasSuffix(base, ".gguf")
}

// commit builds the one commit that shows the merged model: every shard, the small
// files, hfmerge.json, and the deletion of weight files an earlier model left.
func (ps *pusher) commit(ctx context.Context) (*hub.CommitResult, error) {
	name := ps.t.Repo.ID[strings.IndexByte(ps.t.Repo.ID, '/')+1:]
	extras, err := ps.l.extras(ctx, ps.p, name, ps.t.Repo.ID, ps.o.Log)
	if err != nil {
		return nil, err
	}
	c := upload.Commit{Summary: ps.o.Message}
	if c.Summary == "" {
		c.Summary = fmt.Sprintf("Merge %s into %s with hfmerge", sourceName(ps.l.Adapter), sourceName(ps.l.Base))
	}
	keepCard, why, err := keepHubCard(ctx, ps.t, ps.branch(), ps.o.Card)
	if err != nil {
		return nil, err
	}
	switch {
	case keepCard:
		ps.o.Log.Warn("keeping the model card on the Hub: "+why+"; --card replace writes hfmerge's", "repo", ps.t.Repo.String())
	case ps.o.Card == CardReplace:
		ps.o.Log.Info("replacing the model card with hfmerge's (--card replace)", "repo", ps.t.Repo.String())
	}
	keep := map[string]bool{ProvenanceFile: true, "README.md": true}
	for _, s := range ps.p.Shards {
		js, _ := ps.j.get(s.Name, s.Size())
		c.LFS = append(c.LFS, hub.CommitLFS{Path: s.Name, OID: js.SHA256, Size: s.Size()})
		ps.prov.Files[s.Name] = FileID{SHA256: js.SHA256, Size: s.Size()}
		keep[s.Name] = true
	}
	for _, e := range extras {
		if keepCard && e.name == "README.md" {
			continue
		}
		c.Files = append(c.Files, hub.CommitFile{Path: e.name, Content: e.data})
		ps.prov.Files[e.name] = smallFileID(e.data)
		keep[e.name] = true
	}
	if err := ps.checkBaseUnchanged(); err != nil {
		return nil, err
	}
	if ps.prov.BaseFiles, err = ps.baseFiles(); err != nil {
		return nil, err
	}
	rev := ps.branch()
	if entries, err := ps.t.Client.Tree(ctx, ps.t.Repo, rev, "", true); err == nil {
		for _, e := range entries {
			if e.Type == "file" && weightFile(e.Path) && !keep[e.Path] {
				c.Delete = append(c.Delete, e.Path)
			}
		}
	}
	if len(c.Delete) > 0 {
		ps.o.Log.Info("removing weight files of the earlier model in the same commit", "files", strings.Join(c.Delete, ", "))
	}
	c.Marker = hub.CommitFile{Path: ProvenanceFile, Content: ps.prov.encode()}
	c.Description = fmt.Sprintf("Base: %s\nAdapter: %s\nMade by %s; inputs %s. See %s.",
		sourceLabel(ps.l.Base), sourceName(ps.l.Adapter), ps.prov.Tool, ps.prov.Inputs[:16], ProvenanceFile)
	res, err := ps.t.Commit(ctx, c)
	if err != nil {
		if errors.Is(err, hub.ErrCommitUnknown) {
			return nil, err
		}
		var he *hub.HTTPError
		if errors.As(err, &he) && he.Status == 412 {
			return nil, fmt.Errorf("%w: the branch moved while the push ran; the uploaded shards stay on the Hub, and a rerun commits them on the new head", err)
		}
		return nil, err
	}
	var up int64
	for _, e := range extras {
		up += int64(len(e.data))
	}
	ps.res.BytesUp += up
	return res, nil
}

// sourceLabel names a source for a commit description: a Hub repo with its commit, or
// a local directory's name only.
func sourceLabel(s Source) string {
	if s.Dir() != "" {
		return filepath.Base(filepath.Clean(s.Dir()))
	}
	return s.String()
}
