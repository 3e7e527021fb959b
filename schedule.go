package hfmerge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
)

// The push schedule. Per output shard there are two things to do: learn its sha256
// (the LFS oid the upload and the commit name), then put it on the Hub. One goroutine
// learns, shard after shard, while uploaders put the shards learnt before, so that the
// download link (the base, when it is remote) and the upload link are busy at once.
// How a shard's bytes reach the upload is decided per shard, in one place (learn):
//
//   - Its bytes are the base's (the adapter changes none of its tensors and the header
//     is the same): its sha256 is in the base's listing (or the HF cache's blob name);
//     nothing is merged, and the upload, if the Hub lacks it, reads the base file.
//   - The base shard is on this machine (a local dir, the HF cache, or kept): the shard
//     is merged once to hash it and again as the upload reads it. No disk at all.
//   - The base shard is remote and the disk budget has room for the merged shard: it is
//     merged into the work dir while it is hashed, one download, and uploaded from there.
//   - The base shard is remote and the budget has no room now: it is hashed from the
//     virtual shard, and the upload merges it again, downloading the base a second time.
//
// The learner runs at most one shard ahead of the uploaders, so that it never hashes
// what it then has to download again for want of room; a shard the journal knows is
// not hashed again, and one the Hub has (the batch call says so) is not sent.
type schedule struct {
	ps     *pusher
	budget int64
	sem    *semaphore.Weighted
	mu     sync.Mutex // the counts in ps.res, which the uploaders share
	active int        // uploads in flight
	since  time.Time  // when the first of them started
}

// sending counts an upload in or out, adding to the time at least one was running: the
// summary compares it with the run's length.
func (sch *schedule) sending(in bool) {
	sch.mu.Lock()
	defer sch.mu.Unlock()
	if in {
		if sch.active == 0 {
			sch.since = time.Now()
		}
		sch.active++
		return
	}
	sch.active--
	if sch.active == 0 {
		sch.ps.res.UploadBusy += time.Since(sch.since)
	}
}

// count updates the push's result under the schedule's lock.
func (sch *schedule) count(f func(r *PushResult)) {
	sch.mu.Lock()
	defer sch.mu.Unlock()
	f(sch.ps.res)
}

// uploaders is how many shards are put at once: a second upload keeps the link busy
// while the first waits for the Hub (a batch call, a verify, a multipart completion).
const uploaders = 2

type source int

const (
	fromVirtual source = iota // merged again as the upload reads it
	fromFile                  // merged into the work dir
	fromBase                  // the base file's own bytes
)

// job is one shard on its way to the Hub.
type job struct {
	s      *mergeplan.Shard
	oid    string
	from   source
	path   string // fromFile
	remote bool   // its bytes come from a remote base, best read in order
}

func (sch *schedule) run(ctx context.Context) error {
	sch.sem = semaphore.NewWeighted(sch.budget)
	ps := sch.ps
	for _, s := range ps.p.Shards {
		ps.res.ShardBytes += s.Size()
	}
	x, err := ps.t.StartXet(ctx, ps.o.Log)
	if err != nil {
		return err
	}
	if x != nil {
		ps.res.XetExpected = XetExpected(ps.p)
		return sch.runXet(ctx, x)
	}
	var total int64
	for _, s := range ps.p.Shards {
		total += s.Size()
	}
	ps.o.Progress.emit(Event{Type: Begin, Stage: StageHash, Bytes: total})
	ps.o.Progress.emit(Event{Type: Begin, Stage: StageUpload, Bytes: total})
	defer ps.o.Progress.emit(Event{Type: End, Stage: StageUpload})
	g, gctx := errgroup.WithContext(ctx)
	ready := make(chan *job)
	g.Go(func() error {
		defer close(ready)
		defer ps.o.Progress.emit(Event{Type: End, Stage: StageHash})
		for i := range ps.p.Shards {
			j, err := sch.learn(gctx, &ps.p.Shards[i])
			if err != nil {
				return err
			}
			select {
			case ready <- j:
			case <-gctx.Done():
				sch.drop(j)
				return gctx.Err()
			}
		}
		return nil
	})
	for range uploaders {
		g.Go(func() error {
			for j := range ready {
				if err := sch.send(gctx, j); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err = g.Wait()
	if err == nil {
		sch.count(func(r *PushResult) { r.BytesDown = received(ps.l.Base) })
	}
	return err
}

// drop forgets a job that will not be sent.
func (sch *schedule) drop(j *job) {
	if j.from == fromFile {
		os.Remove(j.path)
		sch.sem.Release(j.s.Size())
	}
}

// learn finds a shard's sha256 and decides where its upload reads its bytes.
func (sch *schedule) learn(ctx context.Context, s *mergeplan.Shard) (*job, error) {
	ps := sch.ps
	start := time.Now()
	j := &job{s: s, remote: !baseLocal(ps.l.Base, s.Base)}
	if s.Unchanged() {
		j.from = fromBase
	}
	if js, ok := ps.j.get(s.Name, s.Size()); ok {
		j.oid = js.SHA256
		ps.o.Progress.emit(Event{Type: Advance, Stage: StageHash, Bytes: s.Size(), Note: "known"})
		return j, nil
	}
	baseSum := ps.baseDigest(ctx, s)
	var err error
	note := "hashed"
	switch {
	case s.Unchanged():
		note = "unchanged"
		sch.count(func(r *PushResult) { r.Unchanged++ })
		if oid, ok := digestOf(ps.l.Base, s.Base); ok {
			j.oid = oid
			ps.o.Progress.emit(Event{Type: Advance, Stage: StageHash, Bytes: s.Size(), Note: "unchanged"})
		} else {
			j.oid, err = sch.hashBase(ctx, s)
		}
	case j.remote && sch.sem.TryAcquire(s.Size()):
		note = "merged"
		j.from = fromFile
		if j.path, j.oid, err = sch.spool(ctx, s); err != nil {
			sch.sem.Release(s.Size())
		}
	default:
		j.oid, err = sch.hash(ctx, s)
	}
	base, berr := baseSum()
	if err == nil && berr != nil {
		sch.drop(j)
		err = berr
	}
	if err != nil {
		return nil, err
	}
	if err := ps.j.set(s.Name, journalShard{SHA256: j.oid, Size: s.Size(), BaseFile: s.Base, Base: base, BaseStamp: ps.stamps[s.Base]}); err != nil {
		sch.drop(j)
		return nil, err
	}
	ps.o.Progress.emit(Event{Type: ShardDone, Stage: StageHash, Shard: s.Name, Bytes: s.Size(), Note: note, Elapsed: time.Since(start)})
	return j, nil
}

// hash computes the merged shard and its sha256, with no disk.
func (sch *schedule) hash(ctx context.Context, s *mergeplan.Shard) (string, error) {
	v, err := sch.ps.l.openShard(ctx, s, sch.ps.o.Merge)
	if err != nil {
		return "", err
	}
	defer v.Close()
	h := sha256.New()
	if _, err := v.Write(ctx, h, sch.ps.o.Progress.advance(StageHash)); err != nil {
		return "", fmt.Errorf("%s: %w", s.Name, err)
	}
	logRequantized(sch.ps.o.Log, v.Requantized()) // the hash pass computes every block once
	return hex.EncodeToString(h.Sum(nil)), nil
}

// hashBase hashes a base file the listing gives no digest for (a local directory).
func (sch *schedule) hashBase(ctx context.Context, s *mergeplan.Shard) (string, error) {
	f, err := sch.ps.l.Base.Open(ctx, s.Base)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	w := io.Writer(h)
	if adv := sch.ps.o.Progress.advance(StageHash); adv != nil {
		w = io.MultiWriter(h, progressWriter(adv))
	}
	if _, err := io.Copy(w, io.NewSectionReader(f, 0, f.Size())); err != nil {
		return "", fmt.Errorf("%s: %w", s.Base, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

type progressWriter func(int64)

func (p progressWriter) Write(b []byte) (int, error) { p(int64(len(b))); return len(b), nil }

// spool merges a shard into the work dir, hashing it on the way.
func (sch *schedule) spool(ctx context.Context, s *mergeplan.Shard) (string, string, error) {
	v, err := sch.ps.l.openShard(ctx, s, sch.ps.o.Merge)
	if err != nil {
		return "", "", err
	}
	defer v.Close()
	path := filepath.Join(sch.ps.tmp, s.Name)
	f, err := os.Create(path)
	if err != nil {
		return "", "", err
	}
	if err := sch.ps.o.disk.preallocate(f, s.Size()); err != nil {
		f.Close()
		os.Remove(path)
		return "", "", err
	}
	h := sha256.New()
	_, err = v.Write(ctx, io.MultiWriter(f, h), sch.ps.o.Progress.advance(StageHash))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", "", fmt.Errorf("%s: %w", s.Name, err)
	}
	return path, hex.EncodeToString(h.Sum(nil)), nil
}

// send puts one shard on the Hub and records it.
func (sch *schedule) send(ctx context.Context, j *job) error {
	ps := sch.ps
	s := j.s
	start := time.Now()
	defer sch.drop(j)
	var sent atomic.Int64
	adv := ps.o.Progress.advance(StageUpload)
	opts := upload.Options{Progress: func(n int64) {
		sent.Add(n)
		if adv != nil {
			adv(n)
		}
	}}
	if j.remote && j.from != fromFile {
		// Parts read in parallel would make a remote base be fetched at several places
		// at once; one part after another reads it in order, as it is downloaded.
		opts.Parallel = 1
	}
	obj := upload.Object{OID: j.oid, Size: s.Size(), Open: func(ctx context.Context) (io.ReaderAt, func() error, error) {
		r, done, err := sch.open(ctx, j)
		if err != nil {
			return nil, nil, err
		}
		sch.sending(true)
		return r, func() error { sch.sending(false); return done() }, nil
	}}
	put, err := ps.t.Put(ctx, obj, opts)
	if err != nil {
		return fmt.Errorf("uploading %s: %w", s.Name, err)
	}
	note := "uploaded"
	if !put {
		note = "already on the Hub"
		ps.o.Progress.emit(Event{Type: Advance, Stage: StageUpload, Bytes: s.Size(), Note: "skipped"})
	}
	sch.count(func(r *PushResult) {
		if put {
			r.Uploaded++
		} else {
			r.OnHub++
		}
		r.BytesUp += sent.Load()
	})
	if err := ps.j.set(s.Name, journalShard{SHA256: j.oid, Size: s.Size(), Uploaded: true}); err != nil {
		return err
	}
	ps.o.Progress.emit(Event{Type: ShardDone, Stage: StageUpload, Shard: s.Name, Bytes: s.Size(), Note: note, Elapsed: time.Since(start)})
	return nil
}

// open gives the bytes of a shard for its upload.
func (sch *schedule) open(ctx context.Context, j *job) (io.ReaderAt, func() error, error) {
	l := sch.ps.l
	switch j.from {
	case fromFile:
		f, err := os.Open(j.path)
		if err != nil {
			return nil, nil, err
		}
		return f, f.Close, nil
	case fromBase:
		f, err := l.Base.Open(ctx, j.s.Base)
		if err != nil {
			return nil, nil, err
		}
		return f, func() error { f.Close(); return l.Base.Release(j.s.Base) }, nil
	}
	v, err := l.openShard(ctx, j.s, sch.ps.o.Merge)
	if err != nil {
		return nil, nil, err
	}
	return v, v.Close, nil
}

// digester is a source that knows some files' sha256 without reading them.
type digester interface {
	sha256(path string) (string, bool)
}

func digestOf(s Source, path string) (string, bool) {
	if d, ok := s.(digester); ok {
		return d.sha256(path)
	}
	return "", false
}

// localer is a source that can say whether a file is on this machine.
type localer interface{ isLocal(path string) bool }

// baseLocal says whether reading a base file costs no download.
func baseLocal(s Source, path string) bool {
	if l, ok := s.(localer); ok {
		return l.isLocal(path)
	}
	return true
}

// counter is a source that counts the bytes it received from the Hub.
type counter interface{ received() int64 }

func received(s Source) int64 {
	if c, ok := s.(counter); ok {
		return c.received()
	}
	return 0
}
