// Package upload publishes files to the Hub: a Target (repo, branch, pull request)
// stated once, LFS objects sent by the basic or multipart transfer from a replayable
// io.ReaderAt (a failed part is read again, never buffered whole), and the commit that
// makes them appear, never retried blindly.
package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/hfmerge/hfmerge/hub"
)

// Options tune uploads.
type Options struct {
	Parallel int               // multipart parts in flight; default 4
	Rounds   int               // batch rounds when presigned URLs expire; default 3
	Progress func(delta int64) // bytes sent; negative when a failed attempt is taken back
}

func (o Options) withDefaults() Options {
	if o.Parallel <= 0 {
		o.Parallel = 4
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Progress == nil {
		o.Progress = func(int64) {}
	}
	return o
}

func put(ctx context.Context, t *Target, obj Object, o Options) (bool, error) {
	o = o.withDefaults()
	var last error
	for round := 0; round < o.Rounds; round++ {
		batch := t.Client.LFSBatchXet
		if t.Xet.effective() == XetOff {
			batch = t.Client.LFSBatch
		}
		acts, err := batch(ctx, t.Repo, t.ref(), []hub.LFSObject{{OID: obj.OID, Size: obj.Size}})
		if err != nil {
			return false, fmt.Errorf("LFS batch for %s: %w", obj.OID, err)
		}
		if len(acts) != 1 || acts[0].OID != obj.OID {
			return false, fmt.Errorf("LFS batch for %s: the reply names other objects", obj.OID)
		}
		a := acts[0]
		if a.Error != nil {
			return false, fmt.Errorf("LFS batch refused %s: %w", obj.OID, a.Error)
		}
		if a.Transfer == "" {
			return false, nil // already stored
		}
		if a.Transfer == "xet" {
			if err := putXet(ctx, t, obj, a, o); err != nil {
				return false, fmt.Errorf("uploading %s through Xet: %w", obj.OID, err)
			}
			return true, nil
		}
		r, done, err := obj.Open(ctx)
		if err != nil {
			return false, err
		}
		switch a.Transfer {
		case "basic":
			err = putPart(ctx, t.Client, a.Upload.Href, a.Upload.Header, r, 0, obj.Size, o)
		case "multipart":
			err = multipart(ctx, t.Client, a, r, obj.Size, o)
		default:
			err = fmt.Errorf("LFS batch offered the %q transfer, which was not asked for", a.Transfer)
		}
		if derr := done(); err == nil {
			err = derr
		}
		if err == nil && a.Verify != nil {
			err = t.Client.Verify(ctx, a.Verify, obj.OID, obj.Size)
		}
		if err == nil {
			return true, nil
		}
		// Storage refuses an expired presigned URL with 403: a new batch round gives
		// fresh ones. Anything else has been retried already.
		if !expired(err) || ctx.Err() != nil {
			return false, err
		}
		last = err
	}
	return false, fmt.Errorf("uploading %s: presigned URLs kept expiring: %w", obj.OID, last)
}

// expired says whether storage refused a presigned URL because it expired.
func expired(err error) bool { return errors.Is(err, hub.ErrURLExpired) }

// putPart sends [off, off+n) of r to a presigned URL. Every attempt reads the section
// again, and takes back from the progress what a failed attempt counted.
func putPart(ctx context.Context, c *hub.Client, href string, header map[string]string, r io.ReaderAt, off, n int64, o Options) error {
	_, err := putPartETag(ctx, c, href, header, r, off, n, o)
	return err
}

func putPartETag(ctx context.Context, c *hub.Client, href string, header map[string]string, r io.ReaderAt, off, n int64, o Options) (string, error) {
	var prev *counter
	body := func() (io.Reader, error) {
		if prev != nil {
			o.Progress(-prev.n.Load())
		}
		prev = &counter{r: io.NewSectionReader(r, off, n), progress: o.Progress}
		return prev, nil
	}
	etag, err := c.PutPart(ctx, href, header, n, body)
	if err != nil && prev != nil {
		o.Progress(-prev.n.Load())
	}
	return etag, err
}

// multipart sends the parts in parallel and completes the upload with their ETags, in
// part order.
func multipart(ctx context.Context, c *hub.Client, a hub.LFSAction, r io.ReaderAt, size int64, o Options) error {
	etags := make([]string, len(a.Parts))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Parallel)
	for i, href := range a.Parts {
		off := int64(i) * a.ChunkSize
		n := min(a.ChunkSize, size-off)
		g.Go(func() error {
			etag, err := putPartETag(gctx, c, href, nil, r, off, n, o)
			if err != nil {
				return fmt.Errorf("part %d of %s: %w", i+1, a.OID, err)
			}
			if etag == "" {
				return fmt.Errorf("part %d of %s: storage answered without an ETag", i+1, a.OID)
			}
			etags[i] = etag
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return c.CompleteMultipart(ctx, a.Completion, a.OID, etags)
}

// counter counts the bytes read through it.
type counter struct {
	r        io.Reader
	n        atomic.Int64
	progress func(int64)
}

func (c *counter) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	c.progress(int64(k))
	return k, err
}
