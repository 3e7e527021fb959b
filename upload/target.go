package upload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"

	"github.com/hfmerge/hfmerge/hub"
)

// Target is where a push publishes, stated once: a repo's branch, or a pull request
// against it.
type Target struct {
	Client *hub.Client
	Repo   hub.Repo
	Branch string  // "" is main
	PR     bool    // open a pull request against Branch instead of committing to it
	Xet    XetMode // whether uploads may go through Xet storage (StartXet, the batch)
	// MaxFiles is the most files a commit carries (0: 100, as the Hub advises); a larger
	// one is made through a pull request of several commits, merged at the end.
	MaxFiles int

	// XetTransport, when set, carries the requests to the Xet CAS (tests use it to
	// alter what is sent); nil is the xet client's own.
	XetTransport http.RoundTripper
}

func (t *Target) branch() string {
	if t.Branch == "" {
		return "main"
	}
	return t.Branch
}

// String names the target: owner/name@branch, or "a pull request to owner/name@branch".
func (t *Target) String() string {
	s := t.Repo.String() + "@" + t.branch()
	if t.PR {
		return "a pull request to " + s
	}
	return s
}

// ref is the ref the LFS batch call names: none for a pull request, which needs no
// write access to the branch.
func (t *Target) ref() string {
	if t.PR {
		return ""
	}
	return t.branch()
}

// Object is an LFS object: its sha256, its size, and how to read it. Open is called
// only when the Hub lacks the object, and may be called again for another attempt; the
// returned close function is called when the upload is done with the reader.
type Object struct {
	OID  string
	Size int64
	Open func(ctx context.Context) (io.ReaderAt, func() error, error)
}

// BytesObject is an object held in memory.
func BytesObject(b []byte) Object {
	s := sha256.Sum256(b)
	return Object{OID: hex.EncodeToString(s[:]), Size: int64(len(b)),
		Open: func(context.Context) (io.ReaderAt, func() error, error) {
			return bytes.NewReader(b), func() error { return nil }, nil
		}}
}

// Put makes sure the Hub stores the object. It returns false when the Hub had it
// already and nothing was sent.
func (t *Target) Put(ctx context.Context, obj Object, o Options) (bool, error) {
	return put(ctx, t, obj, o)
}

// Missing asks the Hub which of the objects it lacks, with one batch call; nothing is
// sent.
func (t *Target) Missing(ctx context.Context, objs []hub.LFSObject) (map[string]bool, error) {
	acts, err := t.Client.LFSBatch(ctx, t.Repo, t.ref(), objs)
	if err != nil {
		return nil, fmt.Errorf("LFS batch: %w", err)
	}
	out := map[string]bool{}
	for _, a := range acts {
		if a.Error != nil {
			return nil, fmt.Errorf("LFS batch refused %s: %w", a.OID, a.Error)
		}
		out[a.OID] = a.Transfer != ""
	}
	return out, nil
}
