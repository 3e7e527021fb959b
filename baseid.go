package hfmerge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// Per-shard base identities. A local base's digest in the inputs is cheap (names,
// sizes, modification times, inodes, headers: see dirDigest), so it cannot prove that
// the bytes a shard was merged from are the bytes the next shard is merged from. Each
// shard a push merges therefore records two things about its base file in the journal:
// its stamp (the cheap identity, taken when the push starts) and its sha256 (from the
// Hub's listing or the HF cache's blob name when there is one, else computed by reading
// the file while the shard is merged). A rerun that finds any recorded stamp different
// from the file now starts the push over; a push that finds a stamp changed before its
// commit refuses to commit; and hfmerge.json lists every base shard's sha256.

// fileStamp is the cheap identity of a local base file: size, modification time and
// inode. It is "" for a file that is not on this machine as the user's (a Hub base is
// identified by its commit and etags).
func fileStamp(s Source, path string) string {
	ls, ok := s.(*localSource)
	if !ok {
		return ""
	}
	st, err := os.Stat(filepath.Join(ls.dir, path))
	if err != nil {
		return "missing"
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = uint64(sys.Ino)
	}
	return fmt.Sprintf("%d:%d:%d", st.Size(), st.ModTime().UnixNano(), ino)
}

// baseStamps takes the stamp of every base file the plan reads.
func (ps *pusher) baseStamps() map[string]string {
	m := map[string]string{}
	for _, s := range ps.p.Shards {
		if s.Base != "" {
			m[s.Base] = fileStamp(ps.l.Base, s.Base)
		}
	}
	return m
}

// baseDigest starts learning the sha256 of a shard's base file, at the same time as
// the shard is merged: from the listing when it gives one, else by reading a local
// file. The returned function waits for it; "" means unknown (a remote file the
// listing has no digest for, or a shard whose bytes are the base's, whose oid is it).
func (ps *pusher) baseDigest(ctx context.Context, s *mergeplan.Shard) func() (string, error) {
	if s.Base == "" {
		return func() (string, error) { return "", nil }
	}
	if oid, ok := digestOf(ps.l.Base, s.Base); ok {
		return func() (string, error) { return oid, nil }
	}
	if s.Unchanged() || !baseLocal(ps.l.Base, s.Base) {
		return func() (string, error) { return "", nil }
	}
	type result struct {
		sum string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		f, err := ps.l.Base.Open(ctx, s.Base)
		if err != nil {
			ch <- result{"", err}
			return
		}
		defer f.Close()
		h := sha256.New()
		_, err = io.Copy(h, io.NewSectionReader(f, 0, f.Size()))
		if err != nil {
			err = fmt.Errorf("%s: %w", s.Base, err)
		}
		ch <- result{hex.EncodeToString(h.Sum(nil)), err}
	}()
	return func() (string, error) { r := <-ch; return r.sum, r.err }
}

// checkBaseUnchanged refuses to commit when a local base file changed while the push
// ran: its shards may then come from two different models.
func (ps *pusher) checkBaseUnchanged() error {
	for name, was := range ps.stamps {
		if now := fileStamp(ps.l.Base, name); now != was {
			return fmt.Errorf("base file %s changed while the push ran; nothing was committed: run the push again once the base is settled, and it starts over", name)
		}
	}
	return nil
}

// baseFiles lists the base shard identities for hfmerge.json.
func (ps *pusher) baseFiles() (map[string]FileID, error) {
	sizes, err := ps.l.Base.Files(context.Background())
	if err != nil {
		return nil, err
	}
	m := map[string]FileID{}
	for _, s := range ps.p.Shards {
		if s.Base == "" {
			continue
		}
		js, _ := ps.j.get(s.Name, s.Size())
		sum := js.Base
		if sum == "" && s.Unchanged() {
			sum = js.SHA256
		}
		m[s.Base] = FileID{SHA256: sum, Size: sizes[s.Base]}
	}
	return m, nil
}
