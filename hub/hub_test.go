package hub_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
)

const token = "hf_test_read_token"

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed ^ byte(i>>9)
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// setup starts a fake Hub with a private repo and returns a client for it.
func setup(t *testing.T, logw io.Writer, opts ...hubtest.Option) (*hubtest.Hub, *hub.Client, map[string][]byte) {
	t.Helper()
	h := hubtest.New(append([]hubtest.Option{hubtest.WithToken(token, "alice", hubtest.ScopeRead),
		hubtest.WithLFSThreshold(1000), hubtest.WithTreePageSize(2, 2)}, opts...)...).Start(t)
	files := map[string][]byte{
		"model.safetensors": pattern(300_000, 1),
		"sub/b.safetensors": pattern(5_000, 2),
		"config.json":       []byte(`{"model_type": "llama"}`),
		"README.md":         []byte("# base\n"),
	}
	if _, err := h.Seed("alice/base", files, hubtest.Private()); err != nil {
		t.Fatal(err)
	}
	if logw == nil {
		logw = io.Discard
	}
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: token, UserAgent: "hfmerge/test",
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return h, c, files
}

var repo = hub.Repo{Type: "model", ID: "alice/base"}

func TestListingsAndInfo(t *testing.T) {
	h, c, files := setup(t, nil)
	ctx := context.Background()
	info, err := c.RepoInfo(ctx, repo, "")
	if err != nil {
		t.Fatal(err)
	}
	if head, _ := h.Head("alice/base", "main"); info.SHA != head || !info.Private {
		t.Errorf("info %+v, head %s", info, head)
	}
	entries, err := c.Tree(ctx, repo, info.SHA, "", true)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]hub.Entry{}
	for _, e := range entries {
		got[e.Path] = e
	}
	for p, data := range files {
		e, ok := got[p]
		if !ok {
			t.Errorf("tree lacks %s (pages must be followed)", p)
			continue
		}
		if strings.HasSuffix(p, ".safetensors") != (e.LFS != nil) {
			t.Errorf("%s: LFS %v", p, e.LFS)
		}
		if e.LFS != nil && (e.LFS.OID != sha(data) || e.LFS.Size != int64(len(data))) {
			t.Errorf("%s: lfs %+v", p, e.LFS)
		}
	}
	if h.Stats().Requests[hubtest.RouteTree] < 2 {
		t.Errorf("tree served in %d page(s); the fake pages every 2 entries", h.Stats().Requests[hubtest.RouteTree])
	}
	pi, err := c.PathsInfo(ctx, repo, info.SHA, []string{"config.json", "nope.txt"})
	if err != nil || len(pi) != 1 || pi[0].Path != "config.json" {
		t.Errorf("paths-info %+v %v", pi, err)
	}
	lfs, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil || !lfs.LFS || lfs.ETag != sha(files["model.safetensors"]) || lfs.Size != 300_000 || lfs.Commit != info.SHA || lfs.Location == "" {
		t.Errorf("lfs info %+v %v", lfs, err)
	}
	reg, err := c.FileInfo(ctx, repo, "main", "config.json")
	if err != nil || reg.LFS || len(reg.ETag) != 40 || reg.Size != int64(len(files["config.json"])) {
		t.Errorf("regular info %+v %v", reg, err)
	}
	for _, f := range []*hub.FileInfo{lfs, reg} {
		var buf bytes.Buffer
		if n, err := c.Download(ctx, f, 0, &buf); err != nil || n != f.Size || !bytes.Equal(buf.Bytes(), files[f.Path]) {
			t.Errorf("download %s: %d %v", f.Path, n, err)
		}
		part, err := c.ReadRange(ctx, f, 3, 10)
		if err != nil || !bytes.Equal(part, files[f.Path][3:13]) {
			t.Errorf("range of %s: %v", f.Path, err)
		}
	}
	if n := h.Stats().CDNAuthRejected; n != 0 {
		t.Errorf("the CDN saw the token %d times", n)
	}
}

func TestErrors(t *testing.T) {
	h, c, _ := setup(t, nil)
	ctx := context.Background()
	anon, _ := hub.New(hub.Options{Endpoint: h.URL()})
	for _, tc := range []struct {
		err  error
		want error
	}{
		{func() error { _, err := c.RepoInfo(ctx, hub.Repo{ID: "alice/none"}, ""); return err }(), hub.ErrRepoNotFound},
		{func() error { _, err := c.RepoInfo(ctx, repo, "nobranch"); return err }(), hub.ErrRevisionNotFound},
		{func() error { _, err := c.FileInfo(ctx, repo, "main", "missing.bin"); return err }(), hub.ErrEntryNotFound},
		// Private and missing look alike without a token: 401 RepoNotFound.
		{func() error { _, err := anon.RepoInfo(ctx, repo, ""); return err }(), hub.ErrRepoNotFound},
	} {
		var he *hub.HTTPError
		if !errors.Is(tc.err, tc.want) || !errors.As(tc.err, &he) || he.Method == "" {
			t.Errorf("error %v, want %v carried by an *HTTPError", tc.err, tc.want)
		}
	}
	off, _ := hub.New(hub.Options{Endpoint: h.URL(), Offline: true})
	before := len(h.Requests())
	if _, err := off.RepoInfo(ctx, repo, ""); !errors.Is(err, hub.ErrOffline) {
		t.Errorf("offline: %v", err)
	}
	if len(h.Requests()) != before {
		t.Error("offline client made a request")
	}
}

// TestFaults: dropped bodies are resumed, a 503 is retried, a 429's Retry-After is
// waited out; the CDN never sees the token, and nothing logged holds it or a signature.
func TestFaults(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	h, c, files := setup(t, lockedWriter{&logs, &mu})
	ctx := context.Background()
	drop := h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 20_000, Times: 3})
	unavailable := h.Fault(hubtest.Fault{Route: hubtest.RouteResolve, Status: 503})
	limited := h.Fault(hubtest.Fault{Route: hubtest.RouteTree, Status: 429, RetryAfter: time.Second})
	start := time.Now()
	if _, err := c.Tree(ctx, repo, "main", "", true); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("429 with Retry-After: 1 was retried after %v", waited)
	}
	f, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := c.Download(ctx, f, 0, &buf); err != nil || !bytes.Equal(buf.Bytes(), files["model.safetensors"]) {
		t.Fatalf("download under faults: %v", err)
	}
	if drop.Fired() != 3 || unavailable.Fired() != 1 || limited.Fired() != 1 {
		t.Errorf("faults fired: drop %d, 503 %d, 429 %d", drop.Fired(), unavailable.Fired(), limited.Fired())
	}
	if n := h.Stats().CDNAuthRejected; n != 0 {
		t.Errorf("the CDN saw the token %d times", n)
	}
	mu.Lock()
	defer mu.Unlock()
	u, _ := url.Parse(f.Location)
	for k, v := range u.Query() {
		if k != "filename" && len(v[0]) > 6 && strings.Contains(logs.String(), v[0]) {
			t.Errorf("a log line holds the value of %s from a presigned URL", k)
		}
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("a log line holds the token:\n%s", logs.String())
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestExpiredURLError(t *testing.T) {
	h, c, files := setup(t, nil)
	ctx := context.Background()
	f, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	loc := f.Location
	// Storage keeps saying "expired": one refresh, then the error, told apart from
	// other 403s.
	h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, ExpiredURL: true, Times: -1})
	h.ResetStats()
	_, err = c.Get(ctx, f, 0, 10)
	var he *hub.HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusForbidden || !errors.Is(err, hub.ErrURLExpired) || !errors.Is(err, hub.ErrForbidden) {
		t.Fatalf("error %v, want 403 ErrURLExpired", err)
	}
	if n := h.Stats().Requests[hubtest.RouteResolve]; n != 1 {
		t.Errorf("%d refreshes of the URL, want 1", n)
	}
	if strings.Contains(err.Error(), f.Location[strings.Index(f.Location, "?")+1:]) {
		t.Errorf("error shows the signed query: %v", err)
	}
	// Expired for real: Download asks for a fresh URL and succeeds, and the caller's
	// FileInfo is left as it was.
	h.ClearFaults()
	h.ExpireURLs()
	var buf bytes.Buffer
	if _, err := c.Download(ctx, f, 0, &buf); err != nil || !bytes.Equal(buf.Bytes(), files["model.safetensors"]) {
		t.Errorf("download after expiry: %v", err)
	}
	if f.Location != loc {
		t.Errorf("Download changed the FileInfo")
	}
}

func TestRemoteFile(t *testing.T) {
	h, c, files := setup(t, nil)
	ctx := context.Background()
	f, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 1000, Times: 2})
	r := c.Open(ctx, f, hub.OpenOptions{Chunk: 32 << 10, ReadAhead: 3, Verify: true})
	defer r.Close()
	want := files["model.safetensors"]
	got := make([]byte, len(want))
	// Readers a little out of order, as merge workers are: four at once, in rounds of
	// 40 kB, so that none falls further behind than the pipeline lets a worker (readers
	// left to drift apart by more than the read-ahead find their chunks dropped, and
	// fetch them again).
	for round := int64(0); round < int64(len(want)); round += 40_000 {
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for w := 0; w < 4; w++ {
			off := round + int64(w*10_000)
			if off >= int64(len(want)) {
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := min(10_000, int64(len(want))-off)
				if _, err := r.ReadAt(got[off:off+n], off); err != nil && err != io.EOF {
					errs[w] = err
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("remote file bytes differ")
	}
	if r.Served() < int64(len(want)) || r.Served() > 2*int64(len(want)) {
		t.Errorf("served %d bytes for a file of %d", r.Served(), len(want))
	}
	// A corrupted object fails the read that completes the hash.
	bad := pattern(len(want), 9)
	if !h.CorruptObject(sha(want), bad) {
		t.Fatal("could not corrupt the object")
	}
	r2 := c.Open(ctx, f, hub.OpenOptions{Chunk: 64 << 10, Verify: true})
	defer r2.Close()
	_, err = io.ReadAll(io.NewSectionReader(r2, 0, r2.Size()))
	if !errors.Is(err, hub.ErrChecksum) || !strings.Contains(err.Error(), "model.safetensors") {
		t.Errorf("corrupt object: %v, want ErrChecksum naming the file", err)
	}
}

// TestMaliciousListing: a listing that names paths outside the repo is refused.
func TestMaliciousListing(t *testing.T) {
	for _, p := range []string{"../x", "/etc/x", "a/../../x", `C:\x`, ".git/config"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `[{"type":"file","path":"config.json","size":2,"oid":"aa"},{"type":"file","path":`+jsonString(p)+`,"size":2,"oid":"bb"}]`)
		}))
		c, _ := hub.New(hub.Options{Endpoint: srv.URL})
		_, err := c.Tree(context.Background(), repo, "main", "", true)
		if !errors.Is(err, hub.ErrBadPath) {
			t.Errorf("listing with %q: %v", p, err)
		}
		srv.Close()
	}
}

func jsonString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func TestParseRepo(t *testing.T) {
	for in, want := range map[string]string{"a/b": "a/b@", "a/b@dev": "a/b@dev", "datasets/a/b@refs/pr/1": "datasets/a/b@refs/pr/1"} {
		r, rev, err := hub.ParseRepo(in)
		if err != nil || r.String()+"@"+rev != want {
			t.Errorf("%s: %v %q %v", in, r, rev, err)
		}
	}
	for _, bad := range []string{"a", "a/b/c", "../b", "a/b@", "a--x/b", ""} {
		if _, _, err := hub.ParseRepo(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if r, _, _ := hub.ParseRepo("a/b"); r.CacheName() != "models--a--b" {
		t.Errorf("cache name %s", r.CacheName())
	}
}

func TestTokenFromEnv(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "token"), []byte("hf_file\r\n"), 0o600)
	t.Setenv("HF_HOME", dir)
	t.Setenv("HF_TOKEN_PATH", "")
	os.Unsetenv("HF_TOKEN_PATH")
	t.Setenv("HF_TOKEN", "")
	t.Setenv("HUGGING_FACE_HUB_TOKEN", "hf_legacy")
	if tok, src := hub.TokenFromEnv(); tok != "hf_legacy" || src != "HUGGING_FACE_HUB_TOKEN" {
		t.Errorf("%q from %q", tok, src)
	}
	t.Setenv("HF_TOKEN", " hf_env ")
	if tok, _ := hub.TokenFromEnv(); tok != "hf_env" {
		t.Errorf("%q", tok)
	}
	t.Setenv("HF_TOKEN", "")
	t.Setenv("HUGGING_FACE_HUB_TOKEN", "")
	if tok, src := hub.TokenFromEnv(); tok != "hf_file" || src != filepath.Join(dir, "token") {
		t.Errorf("%q from %q", tok, src)
	}
}

// TestRangeIgnored: a server that answers a ranged GET with the whole file still gives
// the bytes asked for: the download starts over and skips what it had.
func TestRangeIgnored(t *testing.T) {
	data := pattern(10_000, 3)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"abc"`)
		w.Header().Set("X-Repo-Commit", strings.Repeat("a", 40))
		w.Header().Set("Content-Length", "10000")
		if r.Method == http.MethodHead {
			return
		}
		w.Write(data) // Range ignored
	}))
	defer srv.Close()
	c, _ := hub.New(hub.Options{Endpoint: srv.URL})
	f, err := c.FileInfo(context.Background(), repo, "main", "x.bin")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if n, err := c.Download(context.Background(), f, 4000, &buf); err != nil || n != 6000 || !bytes.Equal(buf.Bytes(), data[4000:]) {
		t.Errorf("download from 4000: %d %v", n, err)
	}
	if b, err := c.ReadRange(context.Background(), f, 10, 20); err != nil || !bytes.Equal(b, data[10:30]) {
		t.Errorf("range: %v", err)
	}
}

// TestCreateBranch: a branch starts at the default branch's head; creating it again is
// no error and reports that it existed.
func TestCreateBranch(t *testing.T) {
	h := hubtest.New(hubtest.WithToken("hf_w_tokenxyz", "alice", hubtest.ScopeWrite)).Start(t)
	head, err := h.Seed("alice/m", map[string][]byte{"a.txt": []byte("a")})
	if err != nil {
		t.Fatal(err)
	}
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: "hf_w_tokenxyz", Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := hub.Repo{ID: "alice/m", Type: "model"}
	for i, want := range []bool{true, false} {
		made, err := c.CreateBranch(context.Background(), r, "dev", "")
		if err != nil || made != want {
			t.Fatalf("call %d: created %v, err %v", i, made, err)
		}
	}
	if got, _ := h.Head("alice/m", "dev"); got != head {
		t.Errorf("dev is at %s, want main's head %s", got, head)
	}
	if _, err := c.CreateBranch(context.Background(), hub.Repo{ID: "alice/none", Type: "model"}, "dev", ""); !errors.Is(err, hub.ErrRepoNotFound) {
		t.Errorf("missing repo: %v", err)
	}
}

// TestDeleteBranch: a branch (with a slash in its name) goes; deleting it again is no
// error and reports that it was not there; the default branch cannot be deleted.
func TestDeleteBranch(t *testing.T) {
	h := hubtest.New(hubtest.WithToken("hf_w_tokenxyz", "alice", hubtest.ScopeWrite)).Start(t)
	if _, err := h.Seed("alice/m", map[string][]byte{"a.txt": []byte("a")}); err != nil {
		t.Fatal(err)
	}
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: "hf_w_tokenxyz", Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := hub.Repo{ID: "alice/m", Type: "model"}
	ctx := context.Background()
	if _, err := c.CreateBranch(ctx, r, "hfmerge/run1", ""); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false} {
		deleted, err := c.DeleteBranch(ctx, r, "hfmerge/run1")
		if err != nil || deleted != want {
			t.Fatalf("call %d: deleted %v, err %v", i, deleted, err)
		}
	}
	if _, ok := h.Head("alice/m", "hfmerge/run1"); ok {
		t.Error("the branch is still there")
	}
	if _, err := c.DeleteBranch(ctx, r, "main"); err == nil {
		t.Error("deleting main: no error")
	}
	if _, ok := h.Head("alice/m", "main"); !ok {
		t.Error("main is gone")
	}
}
