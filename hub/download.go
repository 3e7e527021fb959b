package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Get streams [off, off+n) of a file, or [off, size) when n < 0. An LFS file is read
// from its storage Location without the token; a regular file from its resolve URL
// with it. When a server answers a ranged request with the whole file (200), the bytes
// before off are skipped: the download starts over.
func (c *Client) Get(ctx context.Context, f *FileInfo, off, n int64) (io.ReadCloser, error) {
	if n < 0 {
		n = f.Size - off
	}
	if off < 0 || n < 0 || off+n > f.Size {
		return nil, fmt.Errorf("%s: range [%d, %d) outside a file of %d bytes: %w", f.Path, off, off+n, f.Size, ErrRange)
	}
	if n == 0 {
		return io.NopCloser(http.NoBody), nil
	}
	var u *url.URL
	var err error
	if f.LFS {
		u, err = url.Parse(f.Location)
	} else {
		u = c.resolveURL(f.Repo, f.Commit, f.Path)
		if f.Commit == "" {
			u = c.resolveURL(f.Repo, f.Revision, f.Path)
		}
	}
	if err != nil {
		return nil, err
	}
	for hops := 0; ; hops++ {
		req, err := c.request(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		whole := off == 0 && n == f.Size
		if !whole {
			req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(off+n-1, 10))
		}
		req.Header.Set("Accept-Encoding", "identity")
		resp, err := c.do(req, http.StatusOK, http.StatusPartialContent, http.StatusFound, http.StatusTemporaryRedirect, http.StatusMovedPermanently, http.StatusSeeOther, http.StatusPermanentRedirect)
		if err != nil {
			return nil, err
		}
		switch resp.StatusCode {
		case http.StatusPartialContent:
			return limited(resp.Body, n), nil
		case http.StatusOK:
			if !whole {
				c.log.Debug("range ignored; reading from the start", "file", f.Path, "offset", off)
				if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
					resp.Body.Close()
					return nil, fmt.Errorf("GET %s: skipping to %d: %w", redact(u), off, err)
				}
			}
			return limited(resp.Body, n), nil
		}
		resp.Body.Close()
		next, err := u.Parse(resp.Header.Get("Location"))
		if err != nil || hops >= 5 {
			return nil, fmt.Errorf("GET %s: too many or broken redirects", redact(u))
		}
		u = next // request() drops the token unless this is the Hub's own host
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
// request from where it stopped; the retry budget starts again whenever bytes arrive,
// as huggingface_hub's does.
func (c *Client) Download(ctx context.Context, f *FileInfo, off int64, w io.Writer) (int64, error) {
	var done int64
	failures := 0
	for off+done < f.Size {
		// Storage refuses single ranges over 50 GB: ask in bounded pieces.
		body, err := c.Get(ctx, f, off+done, min(f.Size-off-done, maxRange))
		if err == nil {
			var k int64
			k, err = io.Copy(destination{w}, body)
			body.Close()
			done += k
			if k > 0 {
				failures = 0
			}
		}
		if err == nil {
			continue // the next piece, or done
		}
		var we *writeError
		if errors.As(err, &we) {
			return done, err
		}
		refreshed, rerr := c.refresh(ctx, f, err)
		if rerr != nil {
			return done, rerr
		}
		if !refreshed && !temporary(err) {
			return done, err
		}
		failures++
		if failures > c.retries {
			return done, fmt.Errorf("downloading %s: gave up after %d failures: %w", f.Path, failures, err)
		}
		c.log.Debug("resuming download", "file", f.Path, "at", off+done, "error", redactString(err.Error()))
		if err := sleep(ctx, backoff(c.minWait, c.maxWait, failures-1, nil)); err != nil {
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

// refresh asks for a new Location when storage refused a presigned URL (it expired).
func (c *Client) refresh(ctx context.Context, f *FileInfo, cause error) (bool, error) {
	var he *HTTPError
	if !f.LFS || !errors.As(cause, &he) || he.Status != http.StatusForbidden {
		return false, nil
	}
	rev := f.Commit
	if rev == "" {
		rev = f.Revision
	}
	nf, err := c.FileInfo(ctx, f.Repo, rev, f.Path)
	if err != nil {
		return false, err
	}
	f.Location = nf.Location
	return true, nil
}

// ReadRange returns the n bytes at off, retrying and resuming dropped bodies.
func (c *Client) ReadRange(ctx context.Context, f *FileInfo, off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off+n > f.Size {
		return nil, fmt.Errorf("%s: range [%d, %d) outside a file of %d bytes: %w", f.Path, off, off+n, f.Size, ErrRange)
	}
	buf := make([]byte, 0, n)
	failures := 0
	for int64(len(buf)) < n {
		body, err := c.Get(ctx, f, off+int64(len(buf)), n-int64(len(buf)))
		if err == nil {
			before := len(buf)
			var k int64
			w := &sliceWriter{b: &buf}
			k, err = io.Copy(w, body)
			body.Close()
			if k > 0 && len(buf) > before {
				failures = 0
			}
		}
		if err == nil {
			break
		}
		refreshed, rerr := c.refresh(ctx, f, err)
		if rerr != nil {
			return nil, rerr
		}
		if !refreshed && !temporary(err) {
			return nil, err
		}
		failures++
		if failures > c.retries {
			return nil, fmt.Errorf("reading %s: gave up after %d failures: %w", f.Path, failures, err)
		}
		if err := sleep(ctx, backoff(c.minWait, c.maxWait, failures-1, nil)); err != nil {
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
