package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// jsonLimit caps a listing or info response: index files of huge models reach tens of
// megabytes, listings less.
const jsonLimit = 256 << 20

func (c *Client) getJSON(ctx context.Context, u *url.URL, v any) (http.Header, error) {
	rq := c.newRequest(http.MethodGet, u, nil)
	rq.header.Set("Accept", "application/json")
	resp, err := c.do(ctx, rq, []int{http.StatusOK}, decodeInto(v))
	if err != nil {
		return nil, err
	}
	return resp.Header, nil
}

// decodeInto decodes a JSON reply of bounded size into v.
func decodeInto(v any) func(*http.Response) error {
	return func(resp *http.Response) error {
		return json.NewDecoder(io.LimitReader(resp.Body, jsonLimit)).Decode(v)
	}
}

// RepoInfo is what the Hub says about a repo at a revision.
type RepoInfo struct {
	ID       string
	SHA      string // the commit the revision names
	Private  bool
	Gated    bool
	Siblings []string
	Xet      bool // xetEnabled: the repo's files are stored in Xet
}

// RepoInfo resolves a revision ("" is main) to its commit.
func (c *Client) RepoInfo(ctx context.Context, r Repo, rev string) (*RepoInfo, error) {
	var raw struct {
		ID       string `json:"id"`
		SHA      string `json:"sha"`
		Private  bool   `json:"private"`
		Gated    any    `json:"gated"`
		Xet      bool   `json:"xetEnabled"`
		Siblings []struct {
			RFilename string `json:"rfilename"`
		} `json:"siblings"`
	}
	u := c.apiURL(r.apiPath()+"/revision/"+escapeRev(rev), nil)
	if _, err := c.getJSON(ctx, u, &raw); err != nil {
		return nil, err
	}
	if len(raw.SHA) != 40 {
		return nil, fmt.Errorf("GET %s: the reply names no commit", redact(u))
	}
	info := &RepoInfo{ID: raw.ID, SHA: raw.SHA, Private: raw.Private, Xet: raw.Xet}
	if g, ok := raw.Gated.(bool); ok {
		info.Gated = g
	} else if s, ok := raw.Gated.(string); ok && s != "" {
		info.Gated = true
	}
	for _, s := range raw.Siblings {
		info.Siblings = append(info.Siblings, s.RFilename)
	}
	return info, nil
}

// Entry is a file or directory of a listing.
type Entry struct {
	Type    string // "file" or "directory"
	Path    string
	Size    int64
	OID     string   // git blob sha1
	LFS     *LFSInfo // nil for a regular file
	XetHash string
}

// LFSInfo describes the content of an LFS file.
type LFSInfo struct {
	OID  string // sha256
	Size int64
}

type rawEntry struct {
	Type    string `json:"type"`
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	OID     string `json:"oid"`
	XetHash string `json:"xetHash"`
	LFS     *struct {
		OID  string `json:"oid"`
		Size int64  `json:"size"`
	} `json:"lfs"`
}

func (e rawEntry) entry() (Entry, error) {
	if err := ValidPath(e.Path); err != nil {
		return Entry{}, err
	}
	out := Entry{Type: e.Type, Path: e.Path, Size: e.Size, OID: e.OID, XetHash: e.XetHash}
	if e.LFS != nil {
		out.LFS = &LFSInfo{OID: e.LFS.OID, Size: e.LFS.Size}
	}
	return out, nil
}

var nextLink = regexp.MustCompile(`<([^>]+)>;\s*rel="next"`)

// Tree lists a revision's files (and directories) under path, every page of it. Every
// path is checked with ValidPath: a listing that names "../x" is refused whole.
func (c *Client) Tree(ctx context.Context, r Repo, rev, path string, recursive bool) ([]Entry, error) {
	p := r.apiPath() + "/tree/" + escapeRev(rev)
	if path != "" {
		p += "/" + escapePath(path)
	}
	q := url.Values{}
	if recursive {
		q.Set("recursive", "true")
	}
	u := c.apiURL(p, q)
	var out []Entry
	for pages := 0; u != nil; pages++ {
		if pages > 100_000 {
			return nil, fmt.Errorf("GET %s: too many pages", redact(u))
		}
		var page []rawEntry
		h, err := c.getJSON(ctx, u, &page)
		if err != nil {
			return nil, err
		}
		for _, e := range page {
			en, err := e.entry()
			if err != nil {
				return nil, fmt.Errorf("listing %s at %s: %w", r, rev, err)
			}
			out = append(out, en)
		}
		u = nil
		if m := nextLink.FindStringSubmatch(h.Get("Link")); m != nil {
			next, err := c.endpoint.Parse(m[1])
			if err != nil || !c.sameHost(next) {
				return nil, fmt.Errorf("listing %s: next page %q is not on %s", r, m[1], c.endpoint.Host)
			}
			u = next
		}
	}
	return out, nil
}

// PathsInfo describes the given paths at a revision; paths that do not exist are left
// out.
func (c *Client) PathsInfo(ctx context.Context, r Repo, rev string, paths []string) ([]Entry, error) {
	u := c.apiURL(r.apiPath()+"/paths-info/"+escapeRev(rev), nil)
	form := url.Values{"paths": paths}
	rq := c.newRequest(http.MethodPost, u, []byte(form.Encode()))
	rq.header.Set("Content-Type", "application/x-www-form-urlencoded")
	var raw []rawEntry
	if _, err := c.do(ctx, rq, []int{http.StatusOK}, decodeInto(&raw)); err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(raw))
	for _, e := range raw {
		en, err := e.entry()
		if err != nil {
			return nil, err
		}
		out = append(out, en)
	}
	return out, nil
}

// FileInfo is what a HEAD of a file's resolve URL says, without following its redirect.
// It is a value: nothing in this package changes one after FileInfo returned it (an
// expired Location is replaced by a new FileInfo where it is used), so one may be shared
// by goroutines.
type FileInfo struct {
	Repo     Repo
	Revision string
	Path     string
	Commit   string // X-Repo-Commit
	ETag     string // sha256 for an LFS file, git blob sha1 for a regular one
	Size     int64
	LFS      bool   // the Hub redirected to storage
	Location string // where an LFS file's bytes are (absolute); "" for a regular file
}

// resolveURL is the file's /resolve/ URL.
func (c *Client) resolveURL(r Repo, rev, path string) *url.URL {
	return c.apiURL("/"+r.filePrefix()+r.ID+"/resolve/"+escapeRev(rev)+"/"+escapePath(path), nil)
}

// normalizeETag removes the weak marker and quotes.
func normalizeETag(s string) string {
	return strings.Trim(strings.TrimPrefix(strings.TrimSpace(s), "W/"), `"`)
}

// FileInfo asks where a file's bytes are and what they are.
func (c *Client) FileInfo(ctx context.Context, r Repo, rev, path string) (*FileInfo, error) {
	if err := ValidPath(path); err != nil {
		return nil, err
	}
	u := c.resolveURL(r, rev, path)
	rq := c.newRequest(http.MethodHead, u, nil)
	rq.header.Set("Accept-Encoding", "identity")
	resp, err := c.do(ctx, rq, []int{http.StatusOK, http.StatusFound, http.StatusTemporaryRedirect, http.StatusMovedPermanently,
		http.StatusSeeOther, http.StatusPermanentRedirect}, nil)
	if err != nil {
		return nil, err
	}
	f := &FileInfo{Repo: r, Revision: rev, Path: path, Commit: resp.Header.Get("X-Repo-Commit")}
	if linked := resp.Header.Get("X-Linked-Etag"); linked != "" {
		f.ETag = normalizeETag(linked)
		f.LFS = resp.StatusCode != http.StatusOK
	} else {
		f.ETag = normalizeETag(resp.Header.Get("ETag"))
	}
	size := resp.Header.Get("X-Linked-Size")
	if size == "" {
		size = resp.Header.Get("Content-Length")
	}
	if f.Size, err = strconv.ParseInt(size, 10, 64); err != nil {
		return nil, fmt.Errorf("HEAD %s: no file size in the reply", redact(u))
	}
	if resp.StatusCode != http.StatusOK {
		loc, err := u.Parse(resp.Header.Get("Location"))
		if err != nil || loc.Host == "" {
			return nil, fmt.Errorf("HEAD %s: redirect without a usable Location", redact(u))
		}
		if c.sameHost(loc) && !f.LFS {
			// A renamed repo: the Hub points at the new name on its own host.
			return nil, fmt.Errorf("HEAD %s: the repo moved to %s; use its new name", redact(u), loc.Path)
		}
		f.Location = loc.String()
	}
	return f, nil
}
