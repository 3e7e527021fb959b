package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
)

// location holds where a file's bytes are read from. A FileInfo is never changed:
// when a presigned Location expires, a refresh asks the Hub for a new FileInfo and
// puts it here, under the lock, for every reader sharing the location.
type location struct {
	mu sync.Mutex
	f  *FileInfo
}

func (l *location) get() *FileInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f
}

// refresh replaces stale with a new FileInfo from the Hub, unless another reader did
// so already. The new one must describe the same bytes.
func (c *Client) refresh(ctx context.Context, l *location, stale *FileInfo) error {
	if l.get() != stale {
		return nil
	}
	rev := stale.Commit
	if rev == "" {
		rev = stale.Revision
	}
	nf, err := c.FileInfo(ctx, stale.Repo, rev, stale.Path)
	if err != nil {
		return fmt.Errorf("refreshing the storage URL of %s: %w", stale.Path, err)
	}
	if nf.ETag != stale.ETag || nf.Size != stale.Size {
		return fmt.Errorf("refreshing the storage URL of %s: the file changed on the Hub (%s, %d bytes; was %s, %d bytes)",
			stale.Path, nf.ETag, nf.Size, stale.ETag, stale.Size)
	}
	l.mu.Lock()
	if l.f == stale {
		l.f = nf
	}
	l.mu.Unlock()
	c.logDebug("refreshed an expired storage URL", "file", stale.Path)
	return nil
}

// Get streams [off, off+n) of a file, or [off, size) when n < 0. An LFS file is read
// from its storage Location without the token; a regular file from its resolve URL
// with it. Opening the stream is retried; reading it is the caller's, and a body that
// stops is not resumed (Download and ReadRange resume).
func (c *Client) Get(ctx context.Context, f *FileInfo, off, n int64) (io.ReadCloser, error) {
	if n < 0 {
		n = f.Size - off
	}
	if err := checkRange(f, off, n); err != nil {
		return nil, err
	}
	l := &location{f: f}
	b := c.budget(&request{method: http.MethodGet, url: c.resolveURL(f.Repo, f.Revision, f.Path)})
	for {
		body, err := c.getOnce(ctx, l, off, n, b)
		if err == nil {
			return body, nil
		}
		if err := b.failed(ctx, err, false); err != nil {
			return nil, err
		}
	}
}

func checkRange(f *FileInfo, off, n int64) error {
	if off < 0 || n < 0 || off+n > f.Size {
		return fmt.Errorf("%s: range [%d, %d) outside a file of %d bytes: %w", f.Path, off, off+n, f.Size, ErrRange)
	}
	return nil
}

// getOnce opens [off, off+n) in one attempt, following redirects by hand. When storage
// says the presigned URL expired, it refreshes the location once and tries again.
// When a server answers a ranged request with the whole file (200), the bytes before
// off are skipped.
func (c *Client) getOnce(ctx context.Context, l *location, off, n int64, b *budget) (io.ReadCloser, error) {
	if n == 0 {
		return io.NopCloser(http.NoBody), nil
	}
	refreshed := false
	for {
		f := l.get()
		body, err := c.getFrom(ctx, f, off, n, b)
		if err == nil || refreshed || !f.LFS || !errors.Is(err, ErrURLExpired) {
			return body, err
		}
		if err := c.refresh(ctx, l, f); err != nil {
			return nil, err
		}
		refreshed = true
	}
}

func (c *Client) getFrom(ctx context.Context, f *FileInfo, off, n int64, b *budget) (io.ReadCloser, error) {
	var u *url.URL
	var err error
	if f.LFS {
		if u, err = url.Parse(f.Location); err != nil {
			return nil, fmt.Errorf("%s: bad storage location: %w", f.Path, err)
		}
	} else {
		rev := f.Commit
		if rev == "" {
			rev = f.Revision
		}
		u = c.resolveURL(f.Repo, rev, f.Path)
	}
	whole := off == 0 && n == f.Size
	for hops := 0; ; hops++ {
		rq := c.newRequest(http.MethodGet, u, nil)
		if !whole {
			rq.header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(off+n-1, 10))
		}
		rq.header.Set("Accept-Encoding", "identity")
		b.rq = rq
		resp, err := c.send(ctx, rq)
		if err != nil {
			return nil, err
		}
		b.reached = true
		resp, err = c.check(resp, http.StatusOK, http.StatusPartialContent, http.StatusFound, http.StatusTemporaryRedirect,
			http.StatusMovedPermanently, http.StatusSeeOther, http.StatusPermanentRedirect)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusPartialContent:
			return limited(resp.Body, n), nil
		case http.StatusOK:
			if !whole {
				c.logDebug("range ignored; reading from the start", "file", f.Path, "offset", off)
				if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
					resp.Body.Close()
					return nil, fmt.Errorf("%s: skipping to %d: %w", rq, off, err)
				}
			}
			return limited(resp.Body, n), nil
		}
		resp.Body.Close()
		next, err := u.Parse(resp.Header.Get("Location"))
		if err != nil || hops >= 5 {
			return nil, fmt.Errorf("%s: too many or broken redirects", rq)
		}
		u = next // newRequest drops the token unless this is the Hub's own host
	}
}

// limited reads at most n bytes and reports a short body as io.ErrUnexpectedEOF.
func limited(rc io.ReadCloser, n int64) io.ReadCloser {
	return &limitedBody{rc: rc, left: n}
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.rc.Read(p)
	l.left -= int64(n)
	if err == io.EOF && l.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if l.left == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

func (l *limitedBody) Close() error { return l.rc.Close() }

// Download writes [off, size) of a file to w. A body cut short is resumed with a Range
// request from where it stopped. All attempts share one budget of Options.Retries+1,
// which starts over whenever bytes arrive, as huggingface_hub's does.
func (c *Client) Download(ctx context.Context, f *FileInfo, off int64, w io.Writer) (int64, error) {
	if err := checkRange(f, off, f.Size-off); err != nil {
		return 0, err
	}
	l := &location{f: f}
	var done int64
	b := c.budget(&request{method: http.MethodGet, url: c.resolveURL(f.Repo, f.Revision, f.Path)})
	for off+done < f.Size {
		// Storage refuses single ranges over 50 GB: ask in bounded pieces.
		body, err := c.getOnce(ctx, l, off+done, min(f.Size-off-done, maxRange), b)
		var k int64
		if err == nil {
			k, err = io.Copy(destination{w}, body)
			body.Close()
			done += k
		}
		if err == nil {
			continue // the next piece, or done
		}
		if k > 0 {
			c.logDebug("download interrupted; resuming", "file", f.Path, "at", off+done, "error", err)
		}
		if err := b.failed(ctx, fmt.Errorf("downloading %s at %d: %w", f.Path, off+done, err), k > 0); err != nil {
			return done, err
		}
	}
	return done, nil
}

// maxRange bounds one ranged GET.
const maxRange = 32 << 30

// writeError marks a failure of the destination, which retrying the source cannot mend.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// destination marks the errors of the writer Download writes to.
type destination struct{ w io.Writer }

func (d destination) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	if err != nil {
		err = &writeError{err}
	}
	return n, err
}

// ReadRange returns the n bytes at off, resuming a dropped body from where it stopped
// within one budget of attempts.
func (c *Client) ReadRange(ctx context.Context, f *FileInfo, off, n int64) ([]byte, error) {
	return c.readRange(ctx, &location{f: f}, off, n)
}

func (c *Client) readRange(ctx context.Context, l *location, off, n int64) ([]byte, error) {
	f := l.get()
	if err := checkRange(f, off, n); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, n)
	b := c.budget(&request{method: http.MethodGet, url: c.resolveURL(f.Repo, f.Revision, f.Path)})
	for int64(len(buf)) < n {
		before := len(buf)
		body, err := c.getOnce(ctx, l, off+int64(len(buf)), n-int64(len(buf)), b)
		if err == nil {
			_, err = io.Copy(&sliceWriter{b: &buf}, body)
			body.Close()
		}
		if err == nil {
			break
		}
		if err := b.failed(ctx, fmt.Errorf("reading %s at %d: %w", f.Path, off+int64(len(buf)), err), len(buf) > before); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

type sliceWriter struct{ b *[]byte }

func (s *sliceWriter) Write(p []byte) (int, error) {
	*s.b = append(*s.b, p...)
	return len(p), nil
}
