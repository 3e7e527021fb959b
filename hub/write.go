package hub

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// postJSON posts a JSON body and decodes a JSON reply; the request is retried.
func (c *Client) postJSON(ctx context.Context, u *url.URL, contentType string, in, out any, ok ...int) (*http.Response, error) {
	return c.postJSONTimeout(ctx, u, contentType, 0, in, out, ok...)
}

// postJSONTimeout is postJSON for a request the server may work on for long before it
// answers.
func (c *Client) postJSONTimeout(ctx context.Context, u *url.URL, contentType string, headerTimeout time.Duration, in, out any, ok ...int) (*http.Response, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	rq := c.newRequest(http.MethodPost, u, body)
	rq.header.Set("Content-Type", contentType)
	rq.header.Set("Accept", contentType)
	rq.headerTimeout = headerTimeout
	if len(ok) == 0 {
		ok = []int{http.StatusOK}
	}
	var consume func(*http.Response) error
	if out != nil {
		consume = decodeInto(out)
	}
	return c.do(ctx, rq, ok, consume)
}

// CreateRepo creates a model repo; an existing one is fine (existed reports it).
func (c *Client) CreateRepo(ctx context.Context, r Repo, private bool) (url string, existed bool, err error) {
	owner, name, _ := strings.Cut(r.ID, "/")
	in := map[string]any{"name": name, "organization": owner, "type": r.Type, "private": private}
	var out struct {
		URL string `json:"url"`
	}
	resp, err := c.postJSON(ctx, c.apiURL("/api/repos/create", nil), "application/json", in, &out, http.StatusOK, http.StatusConflict)
	if err != nil {
		return "", false, err
	}
	return out.URL, resp.StatusCode == http.StatusConflict, nil
}

// PreuploadFile describes a file to be committed.
type PreuploadFile struct {
	Path   string
	Size   int64
	Sample []byte // the first 512 bytes
}

// PreuploadResult is the Hub's decision on a file.
type PreuploadResult struct {
	Path         string
	UploadMode   string // "lfs" or "regular"
	ShouldIgnore bool
	OID          string // the file's oid at the revision, if it exists there
}

// Preupload asks how each file must be uploaded and what the revision's head is.
func (c *Client) Preupload(ctx context.Context, r Repo, rev string, files []PreuploadFile, createPR bool) ([]PreuploadResult, string, error) {
	type f struct {
		Path   string `json:"path"`
		Size   int64  `json:"size"`
		Sample string `json:"sample"`
	}
	in := struct {
		Files []f `json:"files"`
	}{}
	for _, x := range files {
		in.Files = append(in.Files, f{x.Path, x.Size, base64.StdEncoding.EncodeToString(x.Sample)})
	}
	q := url.Values{}
	if createPR {
		q.Set("create_pr", "1")
	}
	var out struct {
		Files []struct {
			Path         string `json:"path"`
			UploadMode   string `json:"uploadMode"`
			ShouldIgnore bool   `json:"shouldIgnore"`
			OID          string `json:"oid"`
		} `json:"files"`
		CommitOid string `json:"commitOid"`
	}
	if _, err := c.postJSON(ctx, c.apiURL(r.apiPath()+"/preupload/"+escapeRev(rev), q), "application/json", in, &out); err != nil {
		return nil, "", err
	}
	res := make([]PreuploadResult, len(out.Files))
	for i, x := range out.Files {
		res[i] = PreuploadResult{x.Path, x.UploadMode, x.ShouldIgnore, x.OID}
	}
	return res, out.CommitOid, nil
}

// LFSObject is an object to upload.
type LFSObject struct {
	OID  string
	Size int64
}

// Action is where and how to send bytes.
type Action struct {
	Href      string
	Header    map[string]string
	ExpiresAt time.Time
}

// ObjectError is the batch API's refusal of one object.
type ObjectError struct {
	Code    int
	Message string
}

func (e *ObjectError) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Message) }

// LFSAction is what the batch API says to do with one object.
type LFSAction struct {
	OID        string
	Size       int64
	Transfer   string // "basic", "multipart", or "" when the Hub already has the object
	Upload     *Action
	Verify     *Action
	ChunkSize  int64
	Parts      []string  // presigned part URLs, part 1 first
	Completion string    // multipart completion URL
	Xet        *XetToken // transfer "xet": the CAS, a write token, and its refresh URL
	Error      *ObjectError
}

// LFSBatch asks the LFS batch API how to upload objects, offering the basic and
// multipart transfers only: plain LFS works on Xet-backed repos too.
func (c *Client) LFSBatch(ctx context.Context, r Repo, rev string, objs []LFSObject) ([]LFSAction, error) {
	return c.lfsBatch(ctx, r, rev, objs, false)
}

// LFSBatchXet is LFSBatch offering the "xet" transfer too, as huggingface.js does
// (transfers basic, multipart, xet): a Hub that chooses it answers, for each object to
// upload, the CAS URL and a write token (LFSAction.Xet) instead of storage URLs.
func (c *Client) LFSBatchXet(ctx context.Context, r Repo, rev string, objs []LFSObject) ([]LFSAction, error) {
	return c.lfsBatch(ctx, r, rev, objs, true)
}

func (c *Client) lfsBatch(ctx context.Context, r Repo, rev string, objs []LFSObject, offerXet bool) ([]LFSAction, error) {
	type obj struct {
		OID  string `json:"oid"`
		Size int64  `json:"size"`
	}
	transfers := []string{"basic", "multipart"}
	if offerXet {
		transfers = append(transfers, "xet")
	}
	in := map[string]any{"operation": "upload", "transfers": transfers, "hash_algo": "sha256"}
	if rev != "" {
		in["ref"] = map[string]string{"name": rev}
	}
	var list []obj
	for _, o := range objs {
		list = append(list, obj(o))
	}
	in["objects"] = list
	type action struct {
		Href      string            `json:"href"`
		Header    map[string]string `json:"header"`
		ExpiresIn int64             `json:"expires_in"`
		ExpiresAt string            `json:"expires_at"`
	}
	var out struct {
		Transfer string `json:"transfer"`
		Objects  []struct {
			OID     string `json:"oid"`
			Size    int64  `json:"size"`
			Actions *struct {
				Upload *action `json:"upload"`
				Verify *action `json:"verify"`
			} `json:"actions"`
			Error *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		} `json:"objects"`
	}
	u := c.apiURL("/"+r.filePrefix()+r.ID+".git/info/lfs/objects/batch", nil)
	if _, err := c.postJSON(ctx, u, "application/vnd.git-lfs+json", in, &out); err != nil {
		return nil, err
	}
	now := time.Now()
	conv := func(a *action) *Action {
		if a == nil {
			return nil
		}
		x := &Action{Href: a.Href, Header: a.Header}
		if a.ExpiresIn > 0 {
			x.ExpiresAt = now.Add(time.Duration(a.ExpiresIn) * time.Second)
		} else if t, err := time.Parse(time.RFC3339, a.ExpiresAt); err == nil {
			x.ExpiresAt = t
		}
		return x
	}
	var res []LFSAction
	for _, o := range out.Objects {
		a := LFSAction{OID: o.OID, Size: o.Size}
		if o.Error != nil {
			a.Error = &ObjectError{o.Error.Code, o.Error.Message}
		}
		if o.Actions != nil && o.Actions.Upload != nil && out.Transfer == "xet" {
			if !offerXet {
				return nil, fmt.Errorf("LFS batch: the Hub chose the xet transfer for %s, which was not offered", o.OID)
			}
			x, err := c.xetAction(o.Actions.Upload.Href, o.Actions.Upload.Header)
			if err != nil {
				return nil, fmt.Errorf("LFS batch: the xet action for %s: %w", o.OID, err)
			}
			a.Transfer, a.Xet = "xet", x
		} else if o.Actions != nil && o.Actions.Upload != nil {
			a.Upload, a.Verify = conv(o.Actions.Upload), conv(o.Actions.Verify)
			a.Transfer = "basic"
			if cs, ok := a.Upload.Header["chunk_size"]; ok {
				n, err := strconv.ParseInt(cs, 10, 64)
				if err != nil || n <= 0 {
					return nil, fmt.Errorf("LFS batch: bad chunk_size %q for %s", cs, o.OID)
				}
				a.Transfer, a.ChunkSize, a.Completion = "multipart", n, a.Upload.Href
				var keys []int
				for k := range a.Upload.Header {
					if i, err := strconv.Atoi(k); err == nil {
						keys = append(keys, i)
					}
				}
				sort.Ints(keys)
				for _, k := range keys {
					a.Parts = append(a.Parts, a.Upload.Header[fmt.Sprintf("%05d", k)])
				}
				if want := (o.Size + n - 1) / n; int64(len(a.Parts)) != want {
					return nil, fmt.Errorf("LFS batch: %d part URLs for %s, expected %d", len(a.Parts), o.OID, want)
				}
			}
		}
		res = append(res, a)
	}
	return res, nil
}

// PutPart sends size bytes to a presigned URL, without the token, retrying with a body
// rebuilt by body() for each attempt; it returns the ETag the storage answered.
func (c *Client) PutPart(ctx context.Context, href string, header map[string]string, size int64, body func() (io.Reader, error)) (string, error) {
	u, err := url.Parse(href)
	if err != nil {
		return "", err
	}
	rq := c.newRequest(http.MethodPut, u, nil)
	rq.body, rq.size = body, size
	for k, v := range header {
		if _, err := strconv.Atoi(k); err == nil || k == "chunk_size" {
			continue // multipart bookkeeping, not HTTP headers
		}
		rq.header.Set(k, v)
	}
	resp, err := c.do(ctx, rq, []int{http.StatusOK, http.StatusCreated, http.StatusNoContent}, func(resp *http.Response) error {
		_, err := io.Copy(io.Discard, io.LimitReader(resp.Body, errorBodyLimit))
		return err
	})
	if err != nil {
		return "", err
	}
	return resp.Header.Get("ETag"), nil
}

// CompleteMultipart tells storage that every part is there, in order.
func (c *Client) CompleteMultipart(ctx context.Context, href, oid string, etags []string) error {
	u, err := url.Parse(href)
	if err != nil {
		return err
	}
	type part struct {
		PartNumber int    `json:"partNumber"`
		ETag       string `json:"etag"`
	}
	in := struct {
		OID   string `json:"oid"`
		Parts []part `json:"parts"`
	}{OID: oid}
	for i, e := range etags {
		in.Parts = append(in.Parts, part{i + 1, e})
	}
	_, err = c.postJSONTimeout(ctx, u, "application/vnd.git-lfs+json", slowReplyTimeout, in, nil)
	return err
}

// Verify runs a verify action.
func (c *Client) Verify(ctx context.Context, a *Action, oid string, size int64) error {
	u, err := url.Parse(a.Href)
	if err != nil {
		return err
	}
	_, err = c.postJSON(ctx, u, "application/vnd.git-lfs+json", map[string]any{"oid": oid, "size": size}, nil)
	return err
}

// CommitFile is a small file committed inline.
type CommitFile struct {
	Path    string
	Content []byte
}

// CommitLFS is an uploaded LFS object committed under a path.
type CommitLFS struct {
	Path string
	OID  string
	Size int64
}

// CommitRequest is one commit.
type CommitRequest struct {
	Summary, Description, ParentCommit string
	Files                              []CommitFile
	LFSFiles                           []CommitLFS
	Deleted                            []string
}

// CommitResult is what the Hub answers to a commit.
type CommitResult struct {
	OID, URL, PullRequestURL string
}

// ErrCommitUnknown marks a commit whose reply was lost: it may or may not have been
// made. Check the branch head before trying again.
var ErrCommitUnknown = errors.New("hub: the commit's reply was lost; it may have been made")

// Commit makes one commit, or opens a pull request with it. It is never retried: a lost
// reply must not become two commits; it returns ErrCommitUnknown then.
func (c *Client) Commit(ctx context.Context, r Repo, rev string, in CommitRequest, createPR bool) (*CommitResult, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	line := func(key string, v any) { enc.Encode(map[string]any{"key": key, "value": v}) }
	h := map[string]any{"summary": in.Summary, "description": in.Description}
	if in.ParentCommit != "" {
		h["parentCommit"] = in.ParentCommit
	}
	line("header", h)
	for _, f := range in.LFSFiles {
		if err := ValidPath(f.Path); err != nil {
			return nil, err
		}
		line("lfsFile", map[string]any{"path": f.Path, "algo": "sha256", "oid": f.OID, "size": f.Size})
	}
	for _, f := range in.Files {
		if err := ValidPath(f.Path); err != nil {
			return nil, err
		}
		line("file", map[string]any{"path": f.Path, "content": base64.StdEncoding.EncodeToString(f.Content), "encoding": "base64"})
	}
	for _, p := range in.Deleted {
		line("deletedFile", map[string]any{"path": p})
	}
	q := url.Values{}
	if createPR {
		q.Set("create_pr", "1")
	}
	u := c.apiURL(r.apiPath()+"/commit/"+escapeRev(rev), q)
	rq := c.newRequest(http.MethodPost, u, b.Bytes())
	rq.header.Set("Content-Type", "application/x-ndjson")
	rq.headerTimeout = slowReplyTimeout
	resp, err := c.once(ctx, rq)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		CommitOid      string `json:"commitOid"`
		CommitURL      string `json:"commitUrl"`
		PullRequestURL string `json:"pullRequestUrl"`
	}
	if err := decodeInto(&out)(resp); err != nil {
		return nil, fmt.Errorf("%s: %w (%v)", rq, ErrCommitUnknown, err)
	}
	return &CommitResult{OID: out.CommitOid, URL: out.CommitURL, PullRequestURL: out.PullRequestURL}, nil
}

// once sends a request exactly once. A network failure, a timeout or a gateway error
// leaves its effect unknown.
func (c *Client) once(ctx context.Context, rq *request) (*http.Response, error) {
	resp, err := c.send(ctx, rq)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, ErrOffline) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrCommitUnknown, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated:
		return resp, nil
	case resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusGatewayTimeout || resp.StatusCode == http.StatusServiceUnavailable:
		defer resp.Body.Close()
		return nil, fmt.Errorf("%w: %w", ErrCommitUnknown, responseError(resp, c.token))
	}
	defer resp.Body.Close()
	return nil, responseError(resp, c.token)
}

// BranchHead is the commit a branch points to.
func (c *Client) BranchHead(ctx context.Context, r Repo, branch string) (string, error) {
	info, err := c.RepoInfo(ctx, r, branch)
	if err != nil {
		return "", err
	}
	return info.SHA, nil
}

// PullRequest is an open pull request's ref.
type PullRequest struct {
	Number int
	Ref    string // refs/pr/N
	Commit string
}

// PullRequests lists the repo's pull request refs.
func (c *Client) PullRequests(ctx context.Context, r Repo) ([]PullRequest, error) {
	var raw struct {
		PullRequests []struct {
			Name         string `json:"name"`
			Ref          string `json:"ref"`
			TargetCommit string `json:"targetCommit"`
		} `json:"pullRequests"`
	}
	if _, err := c.getJSON(ctx, c.apiURL(r.apiPath()+"/refs", url.Values{"include_prs": {"1"}}), &raw); err != nil {
		return nil, err
	}
	var out []PullRequest
	for _, p := range raw.PullRequests {
		n, err := strconv.Atoi(p.Name)
		if err != nil {
			continue
		}
		out = append(out, PullRequest{Number: n, Ref: p.Ref, Commit: p.TargetCommit})
	}
	return out, nil
}

// RepoURL is the repo's page on the Hub.
func (c *Client) RepoURL(r Repo) string {
	return c.endpoint.String() + "/" + r.filePrefix() + r.ID
}
