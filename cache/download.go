package cache

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
)

// newDigest returns the hash an etag is a digest of: sha256 for the 64-hex etags of LFS
// files, the git blob sha1 ("blob <size>\0" + content) for the 40-hex etags of regular
// files.
func newDigest(f File) hash.Hash {
	if len(f.ETag) == 64 {
		return sha256.New()
	}
	h := sha1.New()
	h.Write([]byte("blob " + strconv.FormatInt(f.Size, 10) + "\x00"))
	return h
}

// download fetches f into tmp, resuming what an earlier run left there, checks its size
// and digest, syncs it and renames it to final. A partial file stays for the next run
// when the transfer fails; a file that fails the check is removed.
func download(ctx context.Context, tmp, final string, f File, get Getter, prog Progress) error {
	out, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return err
	}
	defer out.Close()
	h := newDigest(f)
	have, err := io.Copy(h, out) // re-hash what an earlier run left
	if err != nil {
		return err
	}
	if have > f.Size {
		if err := out.Truncate(0); err != nil {
			return err
		}
		h, have = newDigest(f), 0
	}
	if _, err := out.Seek(have, io.SeekStart); err != nil {
		return err
	}
	if prog != nil && have > 0 {
		prog.Add(have)
	}
	w := &countingWriter{w: io.MultiWriter(out, h), prog: prog}
	if have < f.Size || f.Size == 0 {
		n, err := get(ctx, have, w)
		have += n
		if err != nil {
			return fmt.Errorf("downloading %s: %w", f.Path, err)
		}
	}
	if have != f.Size {
		return fmt.Errorf("downloading %s: got %d bytes, expected %d", f.Path, have, f.Size)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != f.ETag {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("%w: %s (%s) has digest %s, the Hub says %s; the partial file was removed",
			ErrChecksum, f.Path, f.Repo, sum, f.ETag)
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return syncDir(final)
}

type countingWriter struct {
	w    io.Writer
	prog Progress
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if c.prog != nil {
		c.prog.Add(int64(n))
	}
	return n, err
}

// syncDir makes a rename in path's directory durable, where the filesystem allows.
func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return nil
	}
	defer d.Close()
	d.Sync() // not every filesystem syncs directories; the data itself is synced
	return nil
}
