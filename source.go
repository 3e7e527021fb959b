package hfmerge

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

// Source is where a base model or an adapter comes from: a local directory, or a Hub
// repository at one commit, read from the HF cache or a local dir, fetched into it, or
// streamed. OpenSource makes one.
type Source interface {
	// String names the source in messages: a directory, or repo@revision (commit).
	String() string
	// Dir is the local directory, or "" for a Hub repo.
	Dir() string
	// HubID is the Hub repo id, or "" when it is not known.
	HubID() string
	// Read returns a small file whole, or nil when the source has no such file.
	Read(ctx context.Context, path string) ([]byte, error)
	// Header reads a safetensors file's header, and no tensor bytes.
	Header(ctx context.Context, path string) (*safetensors.Header, error)
	// Open gives a file's bytes for merging.
	Open(ctx context.Context, path string) (File, error)
	// Release says the run is done with a file: one fetched only for this run goes.
	Release(path string) error
	// Files lists the top-level files and their sizes; directories end in "/" with
	// size -1.
	Files(ctx context.Context) (map[string]int64, error)
	// Close releases everything and tidies what the run created.
	Close() error
}

// File is an open input file.
type File interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// ErrNotFound marks a file a source does not have.
var ErrNotFound = errors.New("no such file")

// maxSmallFile bounds a small file a source reads whole (configs, indexes, tokenizers):
// an index of a huge model reaches tens of megabytes, nothing else comes near.
const maxSmallFile = 256 << 20

// osFile is a regular file on this machine.
type osFile struct {
	*os.File
	size int64
}

func (f *osFile) Size() int64 { return f.size }

// openRegular opens path for reading, refusing anything that is not a regular file (a
// FIFO would block the run, a device could be read without end).
func openRegular(path string) (File, error) {
	// Stat before opening: opening a FIFO for reading blocks until a writer comes.
	st, err := os.Stat(path)
	if err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, st.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", path, ErrNotFound)
		}
		return nil, err
	}
	st, err = f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, st.Mode().Type())
	}
	return &osFile{f, st.Size()}, nil
}

// readSmall reads a whole small regular file, or returns nil, nil when it does not
// exist.
func readSmall(path string) ([]byte, error) {
	f, err := openRegular(path)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Size() > maxSmallFile {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d a metadata file may have", path, f.Size(), maxSmallFile)
	}
	b := make([]byte, f.Size())
	if _, err := f.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF) && f.Size() == 0) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// headerOf reads the safetensors header of an open file.
func headerOf(f File) (*safetensors.Header, error) {
	h, err := safetensors.ReadHeader(f, f.Size())
	if err != nil {
		return nil, headerError(err)
	}
	return h, nil
}

// headerError describes a header that does not parse, for the plan's problems.
func headerError(err error) error {
	if errors.Is(err, safetensors.ErrTruncated) {
		return fmt.Errorf("corrupt or truncated (an interrupted download?): %w", err)
	}
	return fmt.Errorf("corrupt: %w", err)
}

// localSource is a model or adapter directory on this machine. Its files are the user's:
// they are only read.
type localSource struct {
	dir  string
	open func(path string) (File, error)
	hub  string // the Hub id, when the directory is a snapshot in the HF cache
}

func newLocal(role, dir string, open func(string) (File, error)) (*localSource, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", role, dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s %s: not a directory", role, dir)
	}
	return &localSource{dir: dir, open: open, hub: cacheRepoID(dir)}, nil
}

func (s *localSource) String() string { return s.dir }
func (s *localSource) Dir() string    { return s.dir }
func (s *localSource) HubID() string  { return s.hub }

func (s *localSource) Read(_ context.Context, path string) ([]byte, error) {
	return readSmall(filepath.Join(s.dir, path))
}

func (s *localSource) Header(_ context.Context, path string) (*safetensors.Header, error) {
	f, err := s.open(filepath.Join(s.dir, path))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return headerOf(f)
}

func (s *localSource) Open(_ context.Context, path string) (File, error) {
	return s.open(filepath.Join(s.dir, path))
}

func (s *localSource) Release(string) error { return nil }

func (s *localSource) Files(context.Context) (map[string]int64, error) { return listDir(s.dir) }

func (s *localSource) Close() error { return nil }

// sha256 gives the digest of a file of an HF cache snapshot from the blob its link
// names: an LFS blob is named by its sha256.
func (s *localSource) sha256(path string) (string, bool) {
	if s.hub == "" {
		return "", false
	}
	target, err := os.Readlink(filepath.Join(s.dir, path))
	if err != nil {
		return "", false
	}
	name := filepath.Base(target)
	if len(name) != 64 || strings.Trim(name, "0123456789abcdef") != "" {
		return "", false
	}
	return name, true
}

// listDir lists a directory's regular files (links followed, as a snapshot of the HF
// cache is a folder of links to blobs) and its subdirectories.
func listDir(dir string) (map[string]int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, e := range entries {
		st, err := os.Stat(filepath.Join(dir, e.Name()))
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

// cacheRepoID recognises a snapshot folder of the HF cache (…/models--org--name/
// snapshots/<commit>) and returns its repo id.
func cacheRepoID(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	for _, part := range strings.Split(filepath.ToSlash(abs), "/") {
		if rest, ok := strings.CutPrefix(part, "models--"); ok {
			if id := strings.Replace(rest, "--", "/", 1); validRepoID(id) {
				return id
			}
		}
	}
	return ""
}
