// Package cache reads and writes the Hugging Face cache layouts exactly as
// huggingface_hub does, so that its tools, huggingface.js and Transformers reuse what
// hfmerge fetched and hfmerge reuses what they fetched:
//
//   - the hub cache: <root>/models--org--name/{blobs/<etag>, snapshots/<commit>/<path>
//     (relative symlinks into blobs), refs/<revision>}, CACHEDIR.TAG at the root,
//     .no_exist markers, and flock on <root>/.locks/<repo folder>/<etag>.lock;
//   - a local dir, as `hf download --local-dir` writes it: real files, with
//     .cache/huggingface/download/<path>.metadata beside them.
//
// Files are downloaded into a temporary name, checked (byte count, then sha256 for LFS
// files or the git blob sha1 for others) and fsynced before they are renamed into
// place. A file that was there before is never modified, moved or deleted; one this
// process fetched can be removed again with Remove.
package cache

import (
	"os"
	"path/filepath"
	"strings"
)

// Dir is the hub cache directory huggingface_hub would use: HF_HUB_CACHE, then
// HUGGINGFACE_HUB_CACHE, then $HF_HOME/hub, with HF_HOME defaulting to
// $XDG_CACHE_HOME/huggingface and then ~/.cache/huggingface. "~" and $VARS are expanded.
func Dir() string {
	for _, v := range []string{"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"} {
		if d := os.Getenv(v); d != "" {
			return expand(d)
		}
	}
	return filepath.Join(Home(), "hub")
}

// Home is HF_HOME as huggingface_hub resolves it.
func Home() string {
	if d := os.Getenv("HF_HOME"); d != "" {
		return expand(d)
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(expand(d), "huggingface")
	}
	return filepath.Join(expand("~"), ".cache", "huggingface")
}

// expand does what Python's os.path.expanduser(os.path.expandvars(p)) does for the
// forms that occur in these variables.
func expand(p string) string {
	p = os.ExpandEnv(p)
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[1:])
		}
	}
	return p
}
