package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/hfmerge/hfmerge/cache"
	"github.com/hfmerge/hfmerge/hub"
)

// hubOptions are the flags about reaching the Hub and its cache.
type hubOptions struct {
	token    string
	offline  bool
	cacheDir string
	localDir string
	keepBase bool
}

// isLocal says whether a --base or --adapter value names a directory: one that exists,
// or a path that starts like one. Anything else is a Hub repo id.
func isLocal(v string) bool {
	if strings.HasPrefix(v, ".") || strings.HasPrefix(v, "/") || strings.HasPrefix(v, "~") || filepath.IsAbs(v) {
		return true
	}
	_, err := os.Stat(v)
	return err == nil
}

// newClient makes the Hub client the options ask for; nil when offline.
func newClient(o *options, stderr io.Writer) (c *hub.Client, anonymous bool, err error) {
	if o.hub.offline {
		return nil, false, nil
	}
	token := o.hub.token
	if token == "" {
		token, _ = hub.TokenFromEnv()
	}
	c, err = hub.New(hub.Options{Token: token, UserAgent: "hfmerge/" + version(), Logger: newLogger(o.logFormat, stderr)})
	return c, token == "", err
}

// openSources opens --base and --adapter: local directories, or Hub repos resolved to a
// commit and listed. No file is read yet.
func openSources(ctx context.Context, o *options, open opener, client *hub.Client, anonymous bool) (base, adapter source, err error) {
	cacheDir := o.hub.cacheDir
	if cacheDir == "" {
		cacheDir = cache.Dir()
	}
	open1 := func(flag, v string, keep bool, localDir string) (source, error) {
		if isLocal(v) {
			return newLocal(flag, v, open)
		}
		repo, rev, err := hub.ParseRepo(v)
		if err != nil {
			return nil, usageErr("%s %q is neither a directory nor a Hub repo id (owner/name[@revision]): %v", flag, v, err)
		}
		return newHubSource(ctx, flag, repo, rev, hubSourceOptions{client: client, cacheDir: cacheDir, localDir: localDir, keep: keep, anonymous: anonymous})
	}
	if base, err = open1("--base", o.base, o.hub.keepBase, o.hub.localDir); err != nil {
		return nil, nil, err
	}
	// An adapter fetched from the Hub stays in the cache, as any Hub client leaves it:
	// it is small, and the next run needs it again.
	if adapter, err = open1("--adapter", o.adapter, true, ""); err != nil {
		base.Close()
		return nil, nil, err
	}
	return base, adapter, nil
}

// loadSources opens the --base and --adapter sources and reads their headers.
func loadSources(ctx context.Context, o *options, open opener, stderr io.Writer) (*loaded, error) {
	client, anonymous, err := newClient(o, stderr)
	if err != nil {
		return nil, err
	}
	base, adapter, err := openSources(ctx, o, open, client, anonymous)
	if err != nil {
		return nil, err
	}
	return loadOpened(ctx, base, adapter, o)
}

// loadOpened reads the headers of opened sources.
func loadOpened(ctx context.Context, base, adapter source, o *options) (*loaded, error) {
	l, err := load(ctx, base, adapter, o.plan)
	if err != nil {
		base.Close()
		adapter.Close()
		return nil, fmt.Errorf("reading %s and %s: %w", base, adapter, err)
	}
	return l, nil
}
