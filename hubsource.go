package hfmerge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hfmerge/hfmerge/cache"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/safetensors"
)

// headerProbe is how much of a remote safetensors file the first ranged read asks for;
// the Hub's clients read 100 kB, which holds 97% of headers.
const headerProbe = 100_000

// hubSource is a repo on the Hub at one commit. It is composed of two parts decided
// once when it is opened: a catalog, which knows the repo's files at the commit (the
// Hub's listing, or offline the store's snapshot), and a store, the HF cache or a local
// dir where files are found and fetched into. Files in the store are read where they
// are; otherwise small files and kept files are fetched into it, and shards that are
// not kept are streamed into the merge by ranged reads.
type hubSource struct {
	role   string
	repo   hub.Repo
	rev    string // as the user gave it; "" means main
	commit string
	at     catalog
	store  cache.Store
	keep   bool // fetched files stay in the store
	open   func(string) (File, error)

	mu      sync.Mutex
	fetched map[string]cache.File // fetched by this run, not yet removed
	got     atomic.Int64          // bytes received from the Hub
}

func (s *hubSource) received() int64 { return s.got.Load() }

// storeRoot is the directory files are fetched into.
func (s *hubSource) storeRoot() string {
	if r, ok := s.store.(interface{ Root() string }); ok {
		return r.Root()
	}
	return ""
}

// isLocal says whether reading the file costs no download: it is in the store, or it
// will be fetched into it and kept there.
func (s *hubSource) isLocal(path string) bool {
	if _, ok := s.at.local(path); ok {
		return true
	}
	return s.keep
}

// catalog is what a Hub source knows of its repo's files at the commit.
type catalog interface {
	// file describes a repo file for the store; false when the repo has no such file.
	file(path string) (cache.File, bool)
	// local is the path of a file already in the store, found with no network.
	local(path string) (string, bool)
	// files lists the top-level files and directories, as Source.Files does.
	files() (map[string]int64, error)
	// remote is the file on the Hub, for ranged reads and downloads.
	remote(ctx context.Context, path string) (remote, error)
	// missing explains a file the catalog does not have; it wraps ErrNotFound.
	missing(path string) error
}

// remote is one file on the Hub.
type remote interface {
	readRange(ctx context.Context, off, n int64) ([]byte, error)
	download(ctx context.Context, off int64, w io.Writer) (int64, error)
	stream(ctx context.Context) File
}

func (s *hubSource) String() string {
	short := s.commit[:min(12, len(s.commit))]
	if s.commit != "" && s.rev != s.commit {
		return fmt.Sprintf("%s@%s (%s)", s.repo, s.rev, short)
	}
	return fmt.Sprintf("%s@%s", s.repo, s.rev)
}

func (s *hubSource) Dir() string   { return "" }
func (s *hubSource) HubID() string { return s.repo.ID }

// fetch makes a file present in the store.
func (s *hubSource) fetch(ctx context.Context, path string) (string, error) {
	if p, ok := s.at.local(path); ok {
		return p, nil
	}
	f, ok := s.at.file(path)
	if !ok {
		return "", s.at.missing(path)
	}
	r, err := s.at.remote(ctx, path)
	if err != nil {
		return "", err
	}
	p, fetched, err := s.store.Fetch(ctx, f, r.download, nil)
	if err != nil {
		return "", fmt.Errorf("%s from %s: %w", path, s, err)
	}
	if fetched {
		s.mu.Lock()
		s.fetched[path] = f
		s.mu.Unlock()
	}
	return p, nil
}

func (s *hubSource) Read(ctx context.Context, path string) ([]byte, error) {
	if _, ok := s.at.file(path); !ok {
		return nil, nil
	}
	if f, _ := s.at.file(path); f.Size > maxSmallFile {
		return nil, fmt.Errorf("%s in %s: %d bytes, more than the %d a metadata file may have", path, s, f.Size, maxSmallFile)
	}
	p, err := s.fetch(ctx, path)
	if err != nil {
		return nil, err
	}
	return readSmall(p)
}

func (s *hubSource) Header(ctx context.Context, path string) (*safetensors.Header, error) {
	if p, ok := s.at.local(path); ok {
		f, err := s.open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return headerOf(f)
	}
	f, ok := s.at.file(path)
	if !ok {
		return nil, s.at.missing(path)
	}
	r, err := s.at.remote(ctx, path)
	if err != nil {
		return nil, err
	}
	// Read the first 100 kB; if the header is longer, the rest of it. No tensor bytes.
	first, err := r.readRange(ctx, 0, min(headerProbe, f.Size))
	if err != nil {
		return nil, fmt.Errorf("reading the header of %s: %w", path, err)
	}
	n, err := safetensors.HeaderLen(first)
	if err != nil {
		return nil, headerError(err)
	}
	if 8+n > int64(len(first)) {
		if 8+n > f.Size {
			return nil, headerError(&safetensors.FormatError{Reason: "header longer than the file", Err: safetensors.ErrTruncated})
		}
		rest, err := r.readRange(ctx, int64(len(first)), 8+n-int64(len(first)))
		if err != nil {
			return nil, fmt.Errorf("reading the header of %s: %w", path, err)
		}
		first = append(first, rest...)
	}
	h, err := safetensors.ParseHeader(first, f.Size)
	if err != nil {
		return nil, headerError(err)
	}
	return h, nil
}

func (s *hubSource) Open(ctx context.Context, path string) (File, error) {
	if p, ok := s.at.local(path); ok {
		return s.open(p)
	}
	if !s.keep {
		// Streamed: ranged reads straight into the merge, checked against the file's
		// sha256 as they arrive; nothing is written to disk.
		r, err := s.at.remote(ctx, path)
		if err != nil {
			return nil, err
		}
		return r.stream(ctx), nil
	}
	p, err := s.fetch(ctx, path)
	if err != nil {
		return nil, err
	}
	return s.open(p)
}

// Release removes a file this run fetched, unless it is kept. The merge holds the file
// open until then, so removing it never pulls bytes from under a reader.
func (s *hubSource) Release(path string) error {
	if s.keep {
		return nil
	}
	s.mu.Lock()
	f, ok := s.fetched[path]
	delete(s.fetched, path)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return s.store.Remove(f)
}

func (s *hubSource) Files(context.Context) (map[string]int64, error) { return s.at.files() }

// Close removes what this run fetched and did not keep, and the folders it left empty.
func (s *hubSource) Close() error {
	var errs []error
	if !s.keep {
		s.mu.Lock()
		for _, f := range s.fetched {
			errs = append(errs, s.store.Remove(f))
		}
		s.fetched = map[string]cache.File{}
		s.mu.Unlock()
	}
	errs = append(errs, s.store.Tidy())
	return errors.Join(errs...)
}

// sha256 is the content digest the listing gives an LFS file, with no read.
func (s *hubSource) sha256(path string) (string, bool) {
	f, ok := s.at.file(path)
	if !ok || len(f.ETag) != 64 {
		return "", false
	}
	return f.ETag, true
}

// online is the catalog of a repo listed on the Hub.
type online struct {
	client  *hub.Client
	src     *hubSource
	entries map[string]hub.Entry

	mu    sync.Mutex
	infos map[string]*hub.FileInfo
}

func (c *online) file(path string) (cache.File, bool) {
	e, ok := c.entries[path]
	if !ok {
		return cache.File{}, false
	}
	s := c.src
	f := cache.File{Repo: s.repo.CacheName(), Commit: s.commit, Path: path, ETag: e.OID, Size: e.Size}
	if e.LFS != nil {
		f.ETag, f.Size = e.LFS.OID, e.LFS.Size
	}
	if s.rev != s.commit {
		f.Ref = s.rev
	}
	return f, true
}

func (c *online) missing(path string) error {
	return fmt.Errorf("%s: %w in %s", path, ErrNotFound, c.src)
}

func (c *online) local(path string) (string, bool) {
	f, ok := c.file(path)
	if !ok {
		return "", false
	}
	return c.src.store.Lookup(f)
}

func (c *online) files() (map[string]int64, error) {
	out := map[string]int64{}
	for p, e := range c.entries {
		if i := strings.IndexByte(p, '/'); i >= 0 {
			out[p[:i+1]] = -1
			continue
		}
		size := e.Size
		if e.LFS != nil {
			size = e.LFS.Size
		}
		out[p] = size
	}
	return out, nil
}

// remote asks the Hub where a file's bytes are, once per file.
func (c *online) remote(ctx context.Context, path string) (remote, error) {
	c.mu.Lock()
	info, ok := c.infos[path]
	c.mu.Unlock()
	if !ok {
		var err error
		if info, err = c.client.FileInfo(ctx, c.src.repo, c.src.commit, path); err != nil {
			return nil, fmt.Errorf("%s in %s: %w", path, c.src, err)
		}
		c.mu.Lock()
		c.infos[path] = info
		c.mu.Unlock()
	}
	return &hubFile{c.client, info, &c.src.got}, nil
}

// hubFile is a file on the Hub read through the client.
type hubFile struct {
	c    *hub.Client
	info *hub.FileInfo
	got  *atomic.Int64
}

func (f *hubFile) readRange(ctx context.Context, off, n int64) ([]byte, error) {
	b, err := f.c.ReadRange(ctx, f.info, off, n)
	f.got.Add(int64(len(b)))
	return b, err
}

func (f *hubFile) download(ctx context.Context, off int64, w io.Writer) (int64, error) {
	n, err := f.c.Download(ctx, f.info, off, w)
	f.got.Add(n)
	return n, err
}

func (f *hubFile) stream(ctx context.Context) File {
	return &streamed{f.c.Open(ctx, f.info, hub.OpenOptions{Verify: true}), f.got}
}

// streamed is a remote file read by ranges, counting what it received when closed.
type streamed struct {
	*hub.RemoteFile
	got *atomic.Int64
}

func (s *streamed) Close() error {
	s.got.Add(s.Served())
	return s.RemoteFile.Close()
}

// offline is the catalog of a repo known only from the store: a snapshot of the HF
// cache, or a local dir's metadata. Nothing touches the network.
type offline struct {
	src  *hubSource
	find func(path string) (string, bool)
	dir  func() (string, bool)
	why  string // why the Hub is not asked, for messages
}

func (c *offline) file(path string) (cache.File, bool) {
	p, ok := c.find(path)
	if !ok {
		return cache.File{}, false
	}
	size := int64(-1)
	if f, err := c.src.open(p); err == nil {
		size = f.Size()
		f.Close()
	}
	return cache.File{Repo: c.src.repo.CacheName(), Commit: c.src.commit, Path: path, Size: size}, true
}

func (c *offline) missing(path string) error {
	return fmt.Errorf("%s is not in the cache for %s, and %s: %w", path, c.src, c.why, ErrNotFound)
}

func (c *offline) local(path string) (string, bool) { return c.find(path) }

func (c *offline) files() (map[string]int64, error) {
	dir, ok := c.dir()
	if !ok {
		return map[string]int64{}, nil
	}
	files, err := listDir(dir)
	delete(files, ".cache/")
	return files, err
}

func (c *offline) remote(context.Context, string) (remote, error) {
	return nil, fmt.Errorf("not in the cache for %s, and %s: %w", c.src, c.why, ErrNotFound)
}
