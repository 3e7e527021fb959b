package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hfmerge/hfmerge/safetensors"
)

// opener opens input files; tests substitute one that counts the bytes read.
type opener func(path string) (file, error)

type osFile struct {
	*os.File
	size int64
}

func (f *osFile) Size() int64 { return f.size }

func openOS(path string) (file, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", path, errNotFound)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return &osFile{f, st.Size()}, nil
}

// localSource is a model or adapter directory on this machine. Its files are the user's:
// they are only read.
type localSource struct {
	dir  string
	open opener
	hub  string // the Hub id, when the directory is a snapshot in the HF cache
}

func newLocal(flag, dir string, open opener) (*localSource, error) {
	st, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s %s: no such directory", flag, dir)
		}
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s %s: not a directory", flag, dir)
	}
	return &localSource{dir: dir, open: open, hub: cacheRepoID(dir)}, nil
}

func (s *localSource) String() string { return s.dir }
func (s *localSource) Dir() string    { return s.dir }
func (s *localSource) HubID() string  { return s.hub }

func (s *localSource) Read(_ context.Context, path string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

func (s *localSource) Header(_ context.Context, path string) (*safetensors.Header, error) {
	f, err := s.open(filepath.Join(s.dir, path))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := safetensors.ReadHeader(f, f.Size())
	if err != nil {
		return nil, headerError(err)
	}
	return h, nil
}

func (s *localSource) Open(_ context.Context, path string) (file, error) {
	return s.open(filepath.Join(s.dir, path))
}

func (s *localSource) Release(string) error { return nil }

func (s *localSource) Files(context.Context) (map[string]int64, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, e := range entries {
		// Stat follows links: a snapshot in the HF cache is a folder of links to blobs.
		st, err := os.Stat(filepath.Join(s.dir, e.Name()))
		switch {
		case err != nil:
			continue // a dangling link
		case st.Mode().IsRegular():
			out[e.Name()] = st.Size()
		case st.IsDir():
			out[e.Name()+"/"] = -1
		}
	}
	return out, nil
}

func (s *localSource) Copy(_ context.Context, path string, w io.Writer) error {
	in, err := os.Open(filepath.Join(s.dir, path))
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = io.Copy(w, in)
	return err
}

func (s *localSource) Close() error { return nil }

// cacheRepoID recognises a snapshot folder of the HF cache (…/models--org--name/
// snapshots/<commit>) and returns its repo id.
func cacheRepoID(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	for _, part := range strings.Split(filepath.ToSlash(abs), "/") {
		if rest, ok := strings.CutPrefix(part, "models--"); ok {
			if id := strings.Replace(rest, "--", "/", 1); repoID.MatchString(id) {
				return id
			}
		}
	}
	return ""
}
