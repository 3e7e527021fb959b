package hfmerge

import (
	"context"
	"fmt"
	"io"
)

// header is a source that can read the first bytes of a file cheaply: a Hub source
// reads them with one ranged request, where Open would start the read-ahead of a
// streamed file (megabytes) for what the Xet hint needs (one chunk, 128 KiB at most).
type header interface {
	head(ctx context.Context, path string, n int64) ([]byte, error)
}

func (s *hubSource) head(ctx context.Context, path string, n int64) ([]byte, error) {
	if p, ok := s.at.local(path); ok {
		f, err := s.open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return readHead(f, n)
	}
	files, err := s.at.files()
	if err != nil {
		return nil, err
	}
	size, ok := files[path]
	if !ok {
		return nil, s.at.missing(path)
	}
	r, err := s.at.remote(ctx, path)
	if err != nil {
		return nil, err
	}
	return r.readRange(ctx, 0, min(n, size))
}

// headOf reads the first n bytes of a source's file (fewer if it is shorter).
func headOf(ctx context.Context, s Source, path string, n int64) ([]byte, error) {
	if h, ok := s.(header); ok {
		return h.head(ctx, path, n)
	}
	f, err := s.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer s.Release(path)
	defer f.Close()
	return readHead(f, n)
}

func readHead(f File, n int64) ([]byte, error) {
	b := make([]byte, min(n, f.Size()))
	if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("reading its first %d bytes: %w", len(b), err)
	}
	return b, nil
}
