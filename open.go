package hfmerge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/hfmerge/hfmerge/cache"
	"github.com/hfmerge/hfmerge/hub"
)

// Sources says how sources are opened: how the Hub is reached and where its files are
// kept. The zero value opens local directories only.
type Sources struct {
	Client    *hub.Client // nil: offline, the HF cache alone
	Anonymous bool        // the client has no token: a repo that looks missing may be private
	CacheDir  string      // the HF hub cache; "" is cache.Dir()
	LocalDir  string      // read and keep the base in this dir, laid out as `hf download --local-dir` does
	KeepBase  bool        // keep the base files this run downloads (default: stream shards, keep nothing)
	Log       *slog.Logger

	open func(string) (File, error) // how files are opened; tests count the bytes read
}

func (o *Sources) opener() func(string) (File, error) {
	if o.open != nil {
		return o.open
	}
	return openRegular
}

// Base opens a base model: a local directory, or a Hub repo owner/name[@revision].
func (o *Sources) Base(ctx context.Context, spec string) (Source, error) {
	return o.openSource(ctx, "--base", spec, o.KeepBase, o.LocalDir)
}

// Adapter opens an adapter. One fetched from the Hub stays in the cache, as any Hub
// client leaves it: it is small, and the next run needs it again.
func (o *Sources) Adapter(ctx context.Context, spec string) (Source, error) {
	return o.openSource(ctx, "--adapter", spec, true, "")
}

// UsageError is a source or option the user wrote wrongly.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

var repoIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

func validRepoID(id string) bool {
	return repoIDRe.MatchString(id) && !strings.Contains(id, "--") && !strings.Contains(id, "..")
}

// IsLocal says whether a --base or --adapter value names a directory: one that exists,
// or a path that starts like one or has more than one slash. Anything else is a Hub
// repo id.
func IsLocal(v string) bool {
	if strings.HasPrefix(v, ".") || strings.HasPrefix(v, "/") || strings.HasPrefix(v, "~") || filepath.IsAbs(v) {
		return true
	}
	id, _, _ := strings.Cut(v, "@")
	if strings.Count(id, "/") != 1 {
		return true
	}
	_, err := os.Stat(v)
	return err == nil
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[1:])
		}
	}
	return p
}

func (o *Sources) openSource(ctx context.Context, role, v string, keep bool, localDir string) (Source, error) {
	if IsLocal(v) {
		s, err := newLocal(role, expandHome(v), o.opener())
		if errors.Is(err, os.ErrNotExist) {
			return nil, &UsageError{fmt.Errorf("%s %s: no local directory %s, and no Hub repo %s (as a path, it is not taken for a Hub repo id)", role, v, v, v)}
		}
		return s, err
	}
	repo, rev, err := hub.ParseRepo(v)
	if err != nil {
		return nil, &UsageError{fmt.Errorf("%s %s: no local directory %s, and not a Hub repo id (owner/name[@revision]): %v", role, v, v, err)}
	}
	if err := o.probeTypo(ctx, role, v, repo, rev); err != nil {
		return nil, err
	}
	s, err := o.hubSource(ctx, role, repo, rev, keep, localDir)
	if errors.Is(err, hub.ErrRepoNotFound) {
		return nil, &UsageError{fmt.Errorf("%s %s: no local directory %s, and no Hub repo %s (%w)", role, v, v, repo, err)}
	}
	return s, err
}

// probeTypo asks the Hub, without the token, whether a repo id whose owner is a local
// directory (testdata/tiny-lama, with testdata/ here) exists: most likely it is a
// mistyped path, and the token must not go out for a lookup the user did not mean. A
// repo the anonymous lookup cannot see is reported as missing on both sides.
func (o *Sources) probeTypo(ctx context.Context, role, v string, repo hub.Repo, rev string) error {
	owner, _, _ := strings.Cut(repo.ID, "/")
	if st, err := os.Stat(owner); err != nil || !st.IsDir() || o.Client == nil || o.Anonymous {
		return nil
	}
	if rev == "" {
		rev = "main"
	}
	_, err := o.Client.Anonymous().RepoInfo(ctx, repo, rev)
	if errors.Is(err, hub.ErrRepoNotFound) {
		return &UsageError{fmt.Errorf("%s %s: no local directory %s, and no Hub repo %s (%s/ is a local directory, so the Hub was asked without your token; for a private repo of that name, run from another directory)",
			role, v, v, repo, owner)}
	}
	return nil
}

func (o *Sources) hubSource(ctx context.Context, role string, repo hub.Repo, rev string, keep bool, localDir string) (*hubSource, error) {
	if rev == "" {
		rev = "main"
	}
	s := &hubSource{role: role, repo: repo, rev: rev, keep: keep, open: o.opener(), fetched: map[string]cache.File{}}
	cacheDir := o.CacheDir
	if cacheDir == "" {
		cacheDir = cache.Dir()
	}
	hc := cache.New(cacheDir)
	if removed := hc.Recover(); len(removed) > 0 && o.Log != nil {
		o.Log.Info("removed what a killed run had fetched into the HF cache", "files", len(removed), "cache", cacheDir)
	}
	if !keep && localDir == "" {
		hc.Transient() // everything this source fetches there is removed when it closes
	}
	var find func(string) (string, bool)
	var dir func() (string, bool)
	if localDir != "" {
		ld := cache.NewLocalDir(localDir)
		s.store = ld
		find = func(path string) (string, bool) { return ld.Find(s.commit, path) }
		dir = func() (string, bool) { return ld.Root(), true }
	} else {
		s.store = hc
		find = func(path string) (string, bool) { return hc.Find(repo.CacheName(), s.commit, path) }
		dir = func() (string, bool) { return hc.Snapshot(repo.CacheName(), s.commit) }
	}
	if o.Client == nil {
		// Offline: the cache alone says which commit the revision is; a local dir keeps
		// one revision, and its metadata names the commit.
		if localDir == "" {
			commit, ok := hc.Commit(repo.CacheName(), rev)
			if !ok {
				return nil, fmt.Errorf("%s %s: revision %s is not in the HF cache (%s), and the Hub may not be contacted (offline)",
					role, repo, rev, cacheDir)
			}
			s.commit = commit
		}
		s.at = &offline{src: s, find: find, dir: dir, why: "the Hub may not be contacted (offline)"}
		return s, nil
	}
	info, err := o.Client.RepoInfo(ctx, repo, rev)
	if errors.Is(err, hub.ErrUnreachable) {
		// As huggingface_hub does: with the Hub out of reach, the cache's snapshot of the
		// revision (a commit, or the ref's last known commit) serves, and the run says so.
		commit, ok := hc.Commit(repo.CacheName(), rev)
		if localDir != "" {
			ok = true
		}
		if !ok {
			return nil, fmt.Errorf("%s %s@%s: %w; and revision %s is not in the HF cache (%s) to fall back on: check the network and HF_ENDPOINT, or fetch it once and run with --offline",
				role, repo, rev, err, rev, cacheDir)
		}
		s.commit = commit
		s.at = &offline{src: s, find: find, dir: dir, why: "the Hub cannot be reached"}
		if o.Log != nil {
			o.Log.Warn("the Hub cannot be reached; using the HF cache's copy", "source", role, "repo", repo.String(), "revision", rev,
				"commit", commit, "error", err.Error())
		}
		return s, nil
	}
	if err != nil {
		if errors.Is(err, hub.ErrRepoNotFound) && o.Anonymous {
			return nil, fmt.Errorf("%s %s@%s: %w (if it is private or gated, give a token with --token or HF_TOKEN)", role, repo, rev, err)
		}
		return nil, fmt.Errorf("%s %s@%s: %w", role, repo, rev, err)
	}
	s.commit = info.SHA
	entries, err := o.Client.Tree(ctx, repo, s.commit, "", true)
	if err != nil {
		return nil, fmt.Errorf("%s %s: listing files at %s: %w", role, repo, s.commit[:12], err)
	}
	on := &online{client: o.Client, src: s, entries: map[string]hub.Entry{}, infos: map[string]*hub.FileInfo{}}
	for _, e := range entries {
		if e.Type == "file" {
			on.entries[e.Path] = e
		}
	}
	s.at = on
	return s, nil
}

// Stack opens adapters given as SRC[:WEIGHT] (weight 1 when none is given; a SRC whose
// last colon is followed by something other than a number keeps it), in order.
func (o *Sources) Stack(ctx context.Context, specs []string) ([]StackedAdapter, error) {
	var stack []StackedAdapter
	for _, spec := range specs {
		spec, weight := splitWeight(spec)
		a, err := o.Adapter(ctx, spec)
		if err != nil {
			for _, s := range stack {
				s.Source.Close()
			}
			return nil, err
		}
		stack = append(stack, StackedAdapter{Source: a, Weight: weight})
	}
	return stack, nil
}

func splitWeight(spec string) (string, float64) {
	if i := strings.LastIndexByte(spec, ':'); i > 0 {
		if w, err := strconv.ParseFloat(spec[i+1:], 64); err == nil && !math.IsNaN(w) && !math.IsInf(w, 0) {
			return spec[:i], w
		}
	}
	return spec, 1
}
