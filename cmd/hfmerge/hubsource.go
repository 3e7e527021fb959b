package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/hfmerge/hfmerge/cache"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/safetensors"
)

// headerProbe is how much of a remote safetensors file the first ranged read asks for;
// the Hub's clients read 100 kB, which holds 97% of headers.
const headerProbe = 100_000

// hubSource is a repo on the Hub at one commit. Files are read from the store (the HF
// cache or a local dir) when they are there, which needs no download; otherwise small
// files and kept files are fetched into the store, and shards that are not kept are
// streamed straight into the merge by ranged reads.
type hubSource struct {
	flag    string
	repo    hub.Repo
	rev     string // as the user gave it; "" means main
	commit  string
	client  *hub.Client // nil when offline
	store   cache.Store
	find    func(path string) (string, bool) // offline lookup by path alone
	dir     func() (string, bool)            // offline: the folder holding the files
	keep    bool                             // fetched files stay in the store
	entries map[string]hub.Entry             // the listing at commit; nil when offline

	mu      sync.Mutex
	fetched map[string]cache.File // fetched by this run, not yet removed
	infos   map[string]*hub.FileInfo
}

// hubSourceOptions are the choices that shape a Hub source.
type hubSourceOptions struct {
	client    *hub.Client // nil: offline
	cacheDir  string
	localDir  string // fetch into this directory instead of the HF cache
	keep      bool
	anonymous bool // no token: a private repo looks missing
}

func newHubSource(ctx context.Context, flag string, repo hub.Repo, rev string, o hubSourceOptions) (*hubSource, error) {
	s := &hubSource{flag: flag, repo: repo, rev: rev, client: o.client, keep: o.keep,
		fetched: map[string]cache.File{}, infos: map[string]*hub.FileInfo{}}
	hc := cache.New(o.cacheDir)
	s.store = hc
	if o.localDir != "" {
		ld := cache.NewLocalDir(o.localDir)
		s.store = ld
		s.find = func(path string) (string, bool) { return ld.Find(s.commit, path) }
		s.dir = func() (string, bool) { return ld.Root(), true }
	} else {
		s.find = func(path string) (string, bool) { return hc.Find(repo.CacheName(), s.commit, path) }
		s.dir = func() (string, bool) { return hc.Snapshot(repo.CacheName(), s.commit) }
	}
	if s.rev == "" {
		s.rev = "main"
	}
	if o.client == nil {
		// Offline: the cache alone says which commit the revision is.
		if o.localDir != "" {
			return s, nil // a local dir keeps one revision; its metadata names the commit
		}
		commit, ok := hc.Commit(repo.CacheName(), s.rev)
		if !ok {
			return nil, fmt.Errorf("%s %s: revision %s is not in the HF cache (%s), and the Hub may not be contacted (offline)",
				flag, repo, s.rev, o.cacheDir)
		}
		s.commit = commit
		return s, nil
	}
	info, err := o.client.RepoInfo(ctx, repo, s.rev)
	if err != nil {
		if errors.Is(err, hub.ErrRepoNotFound) && o.anonymous {
			return nil, fmt.Errorf("%s %s@%s: %w (if it is private or gated, give a token with --token or HF_TOKEN)", flag, repo, s.rev, err)
		}
		return nil, fmt.Errorf("%s %s@%s: %w", flag, repo, s.rev, err)
	}
	s.commit = info.SHA
	entries, err := o.client.Tree(ctx, repo, s.commit, "", true)
	if err != nil {
		return nil, fmt.Errorf("%s %s: listing files at %s: %w", flag, repo, s.commit[:12], err)
	}
	s.entries = map[string]hub.Entry{}
	for _, e := range entries {
		if e.Type == "file" {
			s.entries[e.Path] = e
		}
	}
	return s, nil
}

func (s *hubSource) String() string {
	if s.commit != "" && s.rev != s.commit {
		return fmt.Sprintf("%s@%s (%s)", s.repo, s.rev, s.commit[:min(12, len(s.commit))])
	}
	return fmt.Sprintf("%s@%s", s.repo, s.rev)
}

func (s *hubSource) Dir() string   { return "" }
func (s *hubSource) HubID() string { return s.repo.ID }

// file describes a repo file for the store; ok is false when the repo has no such file.
func (s *hubSource) file(path string) (cache.File, bool) {
	e, ok := s.entries[path]
	if !ok {
		return cache.File{}, false
	}
	f := cache.File{Repo: s.repo.CacheName(), Commit: s.commit, Path: path, ETag: e.OID, Size: e.Size}
	if e.LFS != nil {
		f.ETag, f.Size = e.LFS.OID, e.LFS.Size
	}
	if s.rev != s.commit {
		f.Ref = s.rev
	}
	return f, true
}

// local returns the path of a file already in the store, with no network.
func (s *hubSource) local(path string) (string, bool) {
	if s.client == nil {
		return s.find(path)
	}
	f, ok := s.file(path)
	if !ok {
		return "", false
	}
	return s.store.Lookup(f)
}

// fetch makes a file present in the store.
func (s *hubSource) fetch(ctx context.Context, path string) (string, error) {
	if p, ok := s.local(path); ok {
		return p, nil
	}
	if s.client == nil {
		return "", fmt.Errorf("%s is not in the cache for %s, and the Hub may not be contacted (offline): %w", path, s, errNotFound)
	}
	f, ok := s.file(path)
	if !ok {
		return "", fmt.Errorf("%s: %w in %s", path, errNotFound, s)
	}
	info, err := s.info(ctx, path)
	if err != nil {
		return "", err
	}
	get := func(ctx context.Context, off int64, w io.Writer) (int64, error) {
		return s.client.Download(ctx, info, off, w)
	}
	p, fetched, err := s.store.Fetch(ctx, f, get, nil)
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

// info asks the Hub where a file's bytes are, once per file.
func (s *hubSource) info(ctx context.Context, path string) (*hub.FileInfo, error) {
	s.mu.Lock()
	info, ok := s.infos[path]
	s.mu.Unlock()
	if ok {
		return info, nil
	}
	info, err := s.client.FileInfo(ctx, s.repo, s.commit, path)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", path, s, err)
	}
	s.mu.Lock()
	s.infos[path] = info
	s.mu.Unlock()
	return info, nil
}

func (s *hubSource) exists(path string) bool {
	if s.client == nil {
		_, ok := s.find(path)
		return ok
	}
	_, ok := s.entries[path]
	return ok
}

func (s *hubSource) Read(ctx context.Context, path string) ([]byte, error) {
	if !s.exists(path) {
		return nil, nil
	}
	p, err := s.fetch(ctx, path)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

func (s *hubSource) Header(ctx context.Context, path string) (*safetensors.Header, error) {
	if p, ok := s.local(path); ok {
		f, err := openOS(p)
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
	if s.client == nil {
		return nil, fmt.Errorf("not in the cache for %s, and the Hub may not be contacted (offline): %w", s, errNotFound)
	}
	f, ok := s.file(path)
	if !ok {
		return nil, errNotFound
	}
	info, err := s.info(ctx, path)
	if err != nil {
		return nil, err
	}
	// Read the first 100 kB; if the header is longer, the rest of it. No tensor bytes.
	first, err := s.client.ReadRange(ctx, info, 0, min(headerProbe, f.Size))
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
		rest, err := s.client.ReadRange(ctx, info, int64(len(first)), 8+n-int64(len(first)))
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

func (s *hubSource) Open(ctx context.Context, path string) (file, error) {
	if p, ok := s.local(path); ok {
		return openOS(p)
	}
	if s.client != nil && !s.keep {
		// Streamed: ranged reads straight into the merge, checked against the file's
		// sha256 as they arrive; nothing is written to disk.
		info, err := s.info(ctx, path)
		if err != nil {
			return nil, err
		}
		return s.client.Open(ctx, info, hub.OpenOptions{Verify: true}), nil
	}
	p, err := s.fetch(ctx, path)
	if err != nil {
		return nil, err
	}
	return openOS(p)
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

func (s *hubSource) Files(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	if s.client == nil {
		dir, ok := s.dir()
		if !ok {
			return out, nil
		}
		files, err := (&localSource{dir: dir, open: openOS}).Files(ctx)
		delete(files, ".cache/")
		return files, err
	}
	for p, e := range s.entries {
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

func (s *hubSource) Copy(ctx context.Context, path string, w io.Writer) error {
	b, err := s.Read(ctx, path)
	if err != nil {
		return err
	}
	if b == nil {
		return fmt.Errorf("%s: %w", path, errNotFound)
	}
	_, err = io.Copy(w, bytes.NewReader(b))
	return err
}

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
