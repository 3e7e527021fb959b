package hfmerge

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/upload"
	"github.com/hfmerge/hfmerge/xet"
)

// The Xet push schedule. Where the Hub offers Xet storage (upload.Target.StartXet),
// every shard goes up in ONE streaming pass and nothing touches the disk: the virtual
// shard (or, for a shard whose bytes are the base's, the base file) flows into the Xet
// session, which computes the sha256 on the way, cuts chunks, asks the CAS which it
// has, and posts only new chunks, in xorbs. The session posts each full xorb while the
// next fills, so the download link (a remote base, read as the merge needs it) and the
// upload link are busy at once; there is no learn-then-put split and no disk budget to
// respect. The sha256 is journalled after the pass; the files exist in the CAS only
// once the session is flushed (per push, or every xetSessionBytes of new data, which
// bounds the session's per-chunk memory), and that happens before the commit.
//
// Resume: a shard the journal marks uploaded, or whose sha256 is known and which the
// Hub has, is skipped; any other is streamed again, and the session finds the xorbs
// a killed run posted (HEAD) and the files an earlier session registered (global
// dedup), so nothing is sent twice.

// xetSessionBytes is the new data after which a session is flushed: a session keeps
// about 150 bytes per new 64 KiB chunk until Close, 40 MB per 16 GiB.
const xetSessionBytes = 16 << 30

func (sch *schedule) runXet(ctx context.Context, x *upload.Xet) error {
	ps := sch.ps
	var total int64
	for _, s := range ps.p.Shards {
		total += s.Size()
	}
	ps.res.Xet = true
	ps.o.Progress.emit(Event{Type: Begin, Stage: StageHash, Bytes: total})
	ps.o.Progress.emit(Event{Type: Begin, Stage: StageUpload, Bytes: total})
	defer ps.o.Progress.emit(Event{Type: End, Stage: StageUpload})
	defer ps.o.Progress.emit(Event{Type: End, Stage: StageHash})

	// The shards whose sha256 is known before any pass (the journal, the base's
	// listing): one batch call says which of them the Hub has.
	known := map[string]string{}
	var objs []hub.LFSObject
	for i := range ps.p.Shards {
		s := &ps.p.Shards[i]
		oid := ""
		if js, ok := ps.j.get(s.Name, s.Size()); ok {
			oid = js.SHA256
		} else if s.Unchanged() {
			oid, _ = digestOf(ps.l.Base, s.Base)
		}
		if oid != "" {
			known[s.Name] = oid
			objs = append(objs, hub.LFSObject{OID: oid, Size: s.Size()})
		}
	}
	missing := map[string]bool{}
	if len(objs) > 0 {
		var err error
		if missing, err = ps.t.Missing(ctx, objs); err != nil {
			return err
		}
	}

	var pending []*mergeplan.Shard // streamed in the open session
	var pendingNew int64
	flush := func() error {
		if !x.Pending() {
			return nil
		}
		start := time.Now()
		if _, err := x.Flush(ctx); err != nil {
			names := make([]string, len(pending))
			for i, s := range pending {
				names[i] = s.Name
			}
			return fmt.Errorf("finishing the Xet upload of %s: %w", strings.Join(names, ", "), err)
		}
		for _, s := range pending {
			js, _ := ps.j.get(s.Name, s.Size())
			js.Uploaded = true
			if err := ps.j.set(s.Name, js); err != nil {
				return err
			}
			ps.o.Progress.emit(Event{Type: ShardDone, Stage: StageUpload, Shard: s.Name, Bytes: s.Size(), Note: "uploaded", Elapsed: time.Since(start)})
		}
		pending, pendingNew = nil, 0
		return nil
	}
	for i := range ps.p.Shards {
		s := &ps.p.Shards[i]
		if s.Unchanged() {
			ps.res.Unchanged++
		}
		if oid, ok := known[s.Name]; ok && !missing[oid] {
			ps.res.OnHub++
			if err := ps.j.set(s.Name, journalShard{SHA256: oid, Size: s.Size(), Uploaded: true}); err != nil {
				return err
			}
			ps.o.Progress.emit(Event{Type: Advance, Stage: StageHash, Bytes: s.Size(), Note: "known"})
			ps.o.Progress.emit(Event{Type: Advance, Stage: StageUpload, Bytes: s.Size(), Note: "skipped"})
			ps.o.Progress.emit(Event{Type: ShardDone, Stage: StageUpload, Shard: s.Name, Bytes: s.Size(), Note: "already on the Hub"})
			continue
		}
		start := time.Now()
		res, err := sch.streamXet(ctx, x, s)
		if err != nil {
			return fmt.Errorf("uploading %s through Xet: %w", s.Name, err)
		}
		if want, ok := known[s.Name]; ok && res.SHA256 != want {
			return fmt.Errorf("%s: its bytes now have sha256 %s, not the %s known before (the inputs changed?)", s.Name, res.SHA256, want)
		}
		if res.Size != s.Size() {
			return fmt.Errorf("%s: %d bytes streamed, the plan says %d", s.Name, res.Size, s.Size())
		}
		if err := ps.j.set(s.Name, journalShard{SHA256: res.SHA256, Size: s.Size()}); err != nil {
			return err
		}
		ps.res.Uploaded++
		note := "hashed"
		if s.Unchanged() {
			note = "unchanged"
		}
		ps.o.Progress.emit(Event{Type: ShardDone, Stage: StageHash, Shard: s.Name, Bytes: s.Size(), Note: note, Elapsed: time.Since(start)})
		pending = append(pending, s)
		if pendingNew += res.NewBytes; pendingNew >= xetSessionBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	sum := x.Total()
	ps.res.XetSent = sum.XorbBytes
	ps.res.BytesUp += sum.XorbBytes + int64(sum.ShardBytes)
	ps.res.BytesDown = received(ps.l.Base)
	return nil
}

// streamXet sends one shard through the session in one pass: the merged bytes, or the
// base file's when the shard is unchanged, never on disk.
func (sch *schedule) streamXet(ctx context.Context, x *upload.Xet, s *mergeplan.Shard) (xet.FileResult, error) {
	ps := sch.ps
	hashAdv := ps.o.Progress.advance(StageHash)
	upAdv := ps.o.Progress.advance(StageUpload)
	var last int64
	x.SetProgress(func(p xet.Progress) {
		if p.FileBytes < last {
			last = 0 // a new file
		}
		if d := p.FileBytes - last; d > 0 && upAdv != nil {
			upAdv(d)
		}
		last = p.FileBytes
	})
	if s.Unchanged() {
		f, err := ps.l.Base.Open(ctx, s.Base)
		if err != nil {
			return xet.FileResult{}, err
		}
		defer ps.l.Base.Release(s.Base)
		defer f.Close()
		var r io.Reader = io.NewSectionReader(f, 0, f.Size())
		if hashAdv != nil {
			r = io.TeeReader(r, progressWriter(hashAdv))
		}
		res, err := x.Upload(ctx, r)
		if err != nil {
			return res, fmt.Errorf("%s: %w", s.Base, err)
		}
		return res, nil
	}
	// The merged shard shares most bytes with its base files: the CAS's answer about
	// each one's first chunk lists their chunks, whichever of the merged shard's own
	// chunks changed.
	for _, name := range baseFiles(s) {
		b, err := headOf(ctx, ps.l.Base, name, xet.MaxChunk)
		if err == nil {
			err = x.Hint(ctx, bytes.NewReader(b))
		}
		if err != nil {
			return xet.FileResult{}, fmt.Errorf("%s: %w", name, err)
		}
	}
	v, err := ps.l.openShard(ctx, s, ps.o.Merge)
	if err != nil {
		return xet.FileResult{}, err
	}
	defer v.Close()
	pr, pw := io.Pipe()
	merged := make(chan error, 1)
	go func() {
		_, err := v.Write(ctx, pw, hashAdv)
		pw.CloseWithError(err)
		merged <- err
	}()
	res, err := x.Upload(ctx, pr)
	pr.CloseWithError(io.ErrClosedPipe) // stops the merge if the upload ended early
	if merr := <-merged; merr != nil && merr != io.ErrClosedPipe {
		return res, merr
	}
	return res, err
}
