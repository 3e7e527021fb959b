package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/hfmerge/hfmerge/cache"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
)

// target is the repo and branch push publishes to.
type target struct {
	client  *hub.Client
	repo    hub.Repo
	branch  string
	pr      bool
	private bool
}

func pushFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "repo", Usage: "publish to the Hub repo `OWNER/NAME` (created if missing)"},
		&cli.BoolFlag{Name: "private", Usage: "create the repo private"},
		&cli.StringFlag{Name: "revision", Value: "main", Usage: "commit to `BRANCH`"},
		&cli.BoolFlag{Name: "pr", Usage: "open a pull request instead of committing to the branch"},
		&cli.StringFlag{Name: "message", Usage: "the commit's title"},
		&cli.StringFlag{Name: "disk-budget", Usage: "disk the run may use for merged shards, e.g. 20GB (default: the largest shard and 5%, at most the free space)"},
		&cli.StringFlag{Name: "work-dir", Usage: "`DIR` for merged shards and the journal (default: HF_HOME/hfmerge)"},
	}
}

func pushCmd(c *cli.Context) error {
	o, err := readOptions(c)
	if err != nil {
		return err
	}
	if c.String("repo") == "" {
		return usageErr("--repo is required")
	}
	repo, rev, err := hub.ParseRepo(c.String("repo"))
	if err != nil {
		return usageErr("--repo: %v", err)
	}
	if rev != "" {
		return usageErr("--repo %s: give the branch with --revision", c.String("repo"))
	}
	if o.hub.offline {
		return usageErr("push needs the Hub; it cannot run offline")
	}
	budget := int64(-1)
	if s := c.String("disk-budget"); s != "" {
		if budget, err = parseSize(s); err != nil {
			return usageErr("--disk-budget %q: %v", s, err)
		}
	}
	log := newLogger(o.logFormat, c.App.ErrWriter)
	ctx := c.Context
	client, anonymous, err := newClient(o, c.App.ErrWriter)
	if err != nil {
		return err
	}
	if anonymous {
		return fmt.Errorf("push needs a Hugging Face token with write access: give --token, or set HF_TOKEN")
	}
	t := &target{client: client, repo: repo, branch: c.String("revision"), pr: c.Bool("pr"), private: c.Bool("private")}

	// Check write access before anything else moves.
	who, err := client.WhoAmI(ctx)
	if err != nil {
		return fmt.Errorf("checking the token: %w", err)
	}
	if ok, why := who.CanWrite(repo); !ok {
		return fmt.Errorf("cannot publish to %s: %s", repo, why)
	}

	base, adapter, err := openSources(ctx, o, openOS, client, anonymous)
	if err != nil {
		return err
	}
	bid, err := identify(base)
	if err != nil {
		return err
	}
	aid, err := identify(adapter)
	if err != nil {
		return err
	}
	prov := newProvenance(bid, aid, o)
	if !t.pr {
		ok, err := upToDate(ctx, t, prov)
		if err != nil {
			return err
		}
		if ok {
			base.Close()
			adapter.Close()
			fmt.Fprintf(c.App.Writer, "%s@%s is up to date: its %s records these inputs and every file; nothing to do\n", repo, t.branch, ProvenanceFile)
			return nil
		}
	}
	l, err := loadOpened(ctx, base, adapter, o)
	if err != nil {
		return err
	}
	defer l.Close()
	p, err := checkedPlan(c, l, o, log)
	if err != nil {
		return err
	}
	work := c.String("work-dir")
	if work == "" {
		work = filepath.Join(cache.Home(), "hfmerge")
	}
	ps := &pusher{t: t, l: l, p: p, prov: prov, o: o, log: log, work: work, budget: budget,
		meter: newMeter(o.progress, c.App.ErrWriter, log), start: time.Now()}
	res, err := ps.run(ctx, c.String("message"))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("push stopped (%v); what was uploaded stays for the next run", context.Cause(ctx))
		}
		return err
	}
	if res.PullRequestURL != "" {
		fmt.Fprintf(c.App.Writer, "opened pull request %s\n", res.PullRequestURL)
	} else {
		fmt.Fprintf(c.App.Writer, "committed %s\n", res.URL)
	}
	return nil
}

// pusher runs one push: merge every shard within the disk budget, upload it, commit.
type pusher struct {
	t      *target
	l      *loaded
	p      *mergeplan.Plan
	prov   *provenance
	o      *options
	log    *slog.Logger
	meter  *meter
	work   string
	budget int64
	tmp    string
	j      *journal
	start  time.Time

	uploaded, skipped int   // shards sent, shards the Hub had
	sent              int64 // bytes sent
}

func (ps *pusher) run(ctx context.Context, message string) (*hub.CommitResult, error) {
	var largest, total int64
	for _, s := range ps.p.Shards {
		largest = max(largest, s.Size())
		total += s.Size()
	}
	key := sha256.Sum256([]byte(ps.prov.Inputs + "\x00" + ps.t.repo.String() + "\x00" + ps.t.branch + "\x00" + strconv.FormatBool(ps.t.pr)))
	id := hex.EncodeToString(key[:8])
	ps.tmp = filepath.Join(ps.work, "tmp-"+id)
	os.RemoveAll(ps.tmp) // what a killed run left
	if err := os.MkdirAll(ps.tmp, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(ps.tmp)
	if ps.budget < 0 {
		// Near one shard: the largest, 5% more, and never more than the disk has.
		ps.budget = largest + largest/20
		if free, ok := freeSpace(ps.tmp); ok {
			ps.budget = min(ps.budget, free-(64<<20))
		}
	}
	ps.log.Info("pushing", "repo", ps.t.repo.String(), "branch", ps.t.branch, "shards", len(ps.p.Shards),
		"bytes", total, "disk_budget", ps.budget, "mode", map[bool]string{true: "file", false: "two-pass"}[ps.budget >= largest])
	if _, _, err := ps.t.client.CreateRepo(ctx, ps.t.repo, ps.t.private); err != nil {
		return nil, fmt.Errorf("creating %s: %w", ps.t.repo, err)
	}
	ps.j = openJournal(filepath.Join(ps.work, "journal-"+id+".json"), ps.prov.Inputs, ps.t.repo.String()+"@"+ps.t.branch)
	ps.meter.start("push", total, "merged", "uploaded")
	err := ps.shards(ctx)
	ps.meter.finish()
	if err != nil {
		return nil, err
	}
	res, err := ps.commit(ctx, message)
	if err != nil {
		return nil, err
	}
	ps.j.remove()
	ps.log.Info("pushed", "shards", len(ps.p.Shards), "uploaded", ps.uploaded, "already_on_hub", ps.skipped,
		"bytes_sent", ps.sent, "seconds", time.Since(ps.start).Round(time.Millisecond).Seconds(), "url", res.URL)
	return res, nil
}

// shardJob is one output shard on its way to the Hub.
type shardJob struct {
	s       *mergeplan.Shard
	oid     string
	path    string // the merged shard on disk, in file mode
	done    bool   // the Hub has it
	twoPass bool   // too big for the budget: hashed, then streamed into the upload
}

// shards merges and uploads every shard. A merge stage writes shards to disk within the
// budget while an upload stage sends them, so that with room for two shards the next is
// merged while one uploads; a shard larger than the budget is hashed in one pass and
// streamed into the upload in a second, with nothing on disk.
func (ps *pusher) shards(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	sem := semaphore.NewWeighted(max(ps.budget, 1))
	ready := make(chan *shardJob, len(ps.p.Shards))
	g.Go(func() error {
		defer close(ready)
		for i := range ps.p.Shards {
			s := &ps.p.Shards[i]
			job := &shardJob{s: s}
			js := ps.j.get(s.Name)
			switch {
			case js.Uploaded && js.Size == s.Size():
				job.oid, job.done = js.SHA256, true
			case s.Size() > ps.budget:
				job.twoPass = true
			default:
				if err := sem.Acquire(ctx, s.Size()); err != nil {
					return err
				}
				path, oid, err := ps.mergeToFile(ctx, s)
				if err != nil {
					sem.Release(s.Size())
					return err
				}
				job.path, job.oid = path, oid
				if err := ps.j.set(s.Name, journalShard{SHA256: oid, Size: s.Size()}); err != nil {
					return err
				}
			}
			ready <- job
		}
		return nil
	})
	g.Go(func() error {
		for job := range ready {
			if err := ps.send(ctx, job, sem); err != nil {
				return err
			}
		}
		return nil
	})
	return g.Wait()
}

// mergeToFile writes a merged shard into the work dir and returns its path and sha256.
func (ps *pusher) mergeToFile(ctx context.Context, s *mergeplan.Shard) (string, string, error) {
	start := time.Now()
	in, done, err := ps.l.inputs(ctx, s)
	if err != nil {
		return "", "", err
	}
	defer done()
	sh, err := merge.New(s, in, merge.Options{Jobs: ps.o.jobs})
	if err != nil {
		return "", "", err
	}
	path := filepath.Join(ps.tmp, s.Name)
	f, err := os.Create(path)
	if err != nil {
		return "", "", err
	}
	if err := preallocate(f, s.Size()); err != nil {
		f.Close()
		os.Remove(path)
		return "", "", err
	}
	h := sha256.New()
	_, err = sh.Write(ctx, io.MultiWriter(f, h), func(n int64) { ps.meter.addTo("merged", n) })
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", "", err
	}
	oid := hex.EncodeToString(h.Sum(nil))
	ps.meter.step("shard merged", "shard", s.Name, "bytes", s.Size(), "seconds", time.Since(start).Round(time.Millisecond).Seconds())
	return path, oid, nil
}

// send uploads one shard and records it.
func (ps *pusher) send(ctx context.Context, job *shardJob, sem *semaphore.Weighted) error {
	s := job.s
	if job.done {
		ps.skipped++
		ps.meter.addTo("merged", s.Size())
		ps.meter.addTo("uploaded", s.Size())
		ps.meter.step("shard already on the Hub", "shard", s.Name)
		return nil
	}
	start := time.Now()
	opts := upload.Options{Progress: func(d int64) { ps.meter.addTo("uploaded", d) }}
	var sent bool
	var err error
	if job.twoPass {
		sent, err = ps.twoPass(ctx, job, opts)
	} else {
		var f *os.File
		if f, err = os.Open(job.path); err == nil {
			sent, err = upload.Object(ctx, ps.t.client, ps.t.repo, ps.uploadRev(), job.oid, s.Size(), f, opts)
			f.Close()
		}
		os.Remove(job.path)
		sem.Release(s.Size())
	}
	if err != nil {
		return fmt.Errorf("uploading %s: %w", s.Name, err)
	}
	if sent {
		ps.uploaded++
		ps.sent += s.Size()
	} else {
		ps.skipped++
		ps.meter.addTo("uploaded", s.Size())
	}
	if err := ps.j.set(s.Name, journalShard{SHA256: job.oid, Size: s.Size(), Uploaded: true}); err != nil {
		return err
	}
	ps.meter.step(map[bool]string{true: "shard uploaded", false: "shard already on the Hub"}[sent], "shard", s.Name,
		"bytes", s.Size(), "seconds", time.Since(start).Round(time.Millisecond).Seconds())
	return nil
}

// twoPass hashes the virtual merged shard, then streams it into the upload: the budget
// is below one shard, so nothing is written to disk; the merge runs twice.
func (ps *pusher) twoPass(ctx context.Context, job *shardJob, opts upload.Options) (bool, error) {
	s := job.s
	in, done, err := ps.l.inputs(ctx, s)
	if err != nil {
		return false, err
	}
	defer func() { done() }() // the inputs open last
	sh, err := merge.New(s, in, merge.Options{Jobs: ps.o.jobs})
	if err != nil {
		return false, err
	}
	if job.oid = ps.j.get(s.Name).SHA256; job.oid == "" || ps.j.get(s.Name).Size != s.Size() {
		h := sha256.New()
		if _, err := sh.Write(ctx, h, func(n int64) { ps.meter.addTo("merged", n) }); err != nil {
			return false, err
		}
		job.oid = hex.EncodeToString(h.Sum(nil))
		if err := ps.j.set(s.Name, journalShard{SHA256: job.oid, Size: s.Size()}); err != nil {
			return false, err
		}
	}
	// The base is read again for this pass; open it anew so a streamed base starts over.
	done()
	if in, done, err = ps.l.inputs(ctx, s); err != nil {
		done = func() error { return nil }
		return false, err
	}
	sh, err = merge.New(s, in, merge.Options{Jobs: ps.o.jobs})
	if err != nil {
		return false, err
	}
	return upload.Object(ctx, ps.t.client, ps.t.repo, ps.uploadRev(), job.oid, s.Size(), sh, opts)
}

// uploadRev is the ref the LFS batch call names: none for a pull request, which needs no
// write access to the branch.
func (ps *pusher) uploadRev() string {
	if ps.t.pr {
		return ""
	}
	return ps.t.branch
}

// commit uploads the small files and makes the one commit that shows the merged model.
func (ps *pusher) commit(ctx context.Context, message string) (*hub.CommitResult, error) {
	files := map[string][]byte{}
	if ps.p.Index != nil {
		files[ps.p.IndexName] = ps.p.Index
	}
	if ps.p.Config != nil {
		files["config.json"] = ps.p.Config
	}
	copies, err := extraFiles(ctx, ps.l, ps.p, ps.log)
	if err != nil {
		return nil, err
	}
	for _, c := range copies {
		var b bytes.Buffer
		if err := c.from.Copy(ctx, c.name, &b); err != nil {
			return nil, err
		}
		files[c.name] = b.Bytes()
	}
	card, err := modelCard(ctx, ps.l, ps.p, ps.t.repo.ID[strings.IndexByte(ps.t.repo.ID, '/')+1:])
	if err != nil {
		return nil, err
	}
	files["README.md"] = card
	req := hub.CommitRequest{Summary: message}
	if req.Summary == "" {
		req.Summary = fmt.Sprintf("Merge %s into %s with hfmerge", sourceName(ps.l.adapter), sourceName(ps.l.base))
	}
	for _, s := range ps.p.Shards {
		js := ps.j.get(s.Name)
		req.LFSFiles = append(req.LFSFiles, hub.CommitLFS{Path: s.Name, OID: js.SHA256, Size: s.Size()})
		ps.prov.Files[s.Name] = fileID{SHA256: js.SHA256, Size: s.Size()}
	}
	var pre []hub.PreuploadFile
	for name, b := range files {
		pre = append(pre, hub.PreuploadFile{Path: name, Size: int64(len(b)), Sample: b[:min(512, len(b))]})
	}
	modes, head, err := ps.t.client.Preupload(ctx, ps.t.repo, ps.t.branch, pre, ps.t.pr)
	if err != nil {
		return nil, fmt.Errorf("preupload: %w", err)
	}
	lfs := map[string]bool{}
	for _, m := range modes {
		lfs[m.Path] = m.UploadMode == "lfs"
	}
	for name, b := range files {
		sum := sha256.Sum256(b)
		id := fileID{SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b))}
		if lfs[name] {
			if _, err := upload.Object(ctx, ps.t.client, ps.t.repo, ps.uploadRev(), id.SHA256, id.Size, bytes.NewReader(b), upload.Options{}); err != nil {
				return nil, fmt.Errorf("uploading %s: %w", name, err)
			}
			req.LFSFiles = append(req.LFSFiles, hub.CommitLFS{Path: name, OID: id.SHA256, Size: id.Size})
		} else {
			id.Git = upload.GitBlobID(b)
			req.Files = append(req.Files, hub.CommitFile{Path: name, Content: b})
		}
		ps.prov.Files[name] = id
	}
	marker := hub.CommitFile{Path: ProvenanceFile, Content: ps.prov.encode()}
	req.Files = append(req.Files, marker)
	req.ParentCommit = head
	req.Description = fmt.Sprintf("Base: %s\nAdapter: %s\nMade by %s; inputs %s. See %s.", ps.l.base, ps.l.adapter, ps.prov.Tool, ps.prov.Inputs[:16], ProvenanceFile)
	res, err := upload.Commit(ctx, ps.t.client, ps.t.repo, ps.t.branch, req, ps.t.pr, marker)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// parseSize reads a size such as 5GB, 500MiB, 1.5G or a plain number of bytes.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	units := []struct {
		suffix string
		mult   float64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3},
		{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"K", 1e3}, {"B", 1}}
	mult := 1.0
	for _, u := range units {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 {
		return 0, errors.New("want a size such as 20GB, 500MiB or 0")
	}
	return int64(f * mult), nil
}
