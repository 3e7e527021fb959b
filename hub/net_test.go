package hub_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// quick returns a client of h with small backoffs and time limits, logging into w.
func quick(t *testing.T, endpoint string, w io.Writer, o hub.Options) *hub.Client {
	t.Helper()
	o.Endpoint = endpoint
	if o.Token == "" {
		o.Token = token
	}
	o.MinBackoff, o.MaxBackoff = time.Millisecond, 5*time.Millisecond
	if o.HeaderTimeout == 0 {
		o.HeaderTimeout = 300 * time.Millisecond
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = 300 * time.Millisecond
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 300 * time.Millisecond
	}
	if w == nil {
		w = io.Discard
	}
	o.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := hub.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// syncBuffer is a log sink safe for the client's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRateLimitHeaderWait(t *testing.T) {
	h, _, _ := setup(t, nil)
	var logs syncBuffer
	c := quick(t, h.URL(), &logs, hub.Options{})
	// RateLimit only, no Retry-After: the IETF draft header the Hub sends.
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Status: http.StatusTooManyRequests, RateLimit: 2 * time.Second})
	h.ResetStats()
	start := time.Now()
	if _, err := c.RepoInfo(context.Background(), repo, "main"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("retried after %v, before the 2 s the RateLimit header asked", took)
	}
	if n := h.Stats().Requests[hubtest.RouteInfo]; n != 2 {
		t.Errorf("%d requests, want 2 (one 429, one success)", n)
	}
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, `msg="rate limited by the Hub; waiting"`) ||
		!strings.Contains(out, "wait=3s") || !strings.Contains(out, "status=429") || !strings.Contains(out, `request="GET http://`) {
		t.Errorf("no log line says the wait:\n%s", out)
	}
	if strings.Count(out, "rate limited") != 1 {
		t.Errorf("want one wait:\n%s", out)
	}
}

func TestPersistent503CostsTheBudget(t *testing.T) {
	h, _, _ := setup(t, nil)
	var logs syncBuffer
	c := quick(t, h.URL(), &logs, hub.Options{Retries: 3})
	ctx := context.Background()
	f, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Status: http.StatusServiceUnavailable, Times: -1})
	for name, read := range map[string]func() error{
		"ReadRange": func() error { _, err := c.ReadRange(ctx, f, 10, 1000); return err },
		"Download":  func() error { _, err := c.Download(ctx, f, 0, io.Discard); return err },
		"RemoteFile": func() error {
			rf := c.Open(ctx, f, hub.OpenOptions{Chunk: 1 << 20, ReadAhead: 1})
			defer rf.Close()
			_, err := rf.ReadAt(make([]byte, 10), 0)
			return err
		},
	} {
		h.ResetStats()
		err := read()
		var he *hub.HTTPError
		if !errors.As(err, &he) || he.Status != http.StatusServiceUnavailable || errors.Is(err, hub.ErrUnreachable) {
			t.Errorf("%s: error %v, want the 503", name, err)
		}
		if n := h.Stats().Requests[hubtest.RouteCDNGet]; n != 4 {
			t.Errorf("%s: %d requests for a persistent 503 with Retries 3, want 4", name, n)
		}
	}
	if !strings.Contains(logs.String(), `msg="request failed; retrying"`) || !strings.Contains(logs.String(), "attempt=3/4") {
		t.Errorf("retries not logged:\n%s", logs.String())
	}
}

func TestDroppedBodyResumesBeyondTheBudget(t *testing.T) {
	h, _, files := setup(t, nil)
	c := quick(t, h.URL(), nil, hub.Options{Retries: 1})
	ctx := context.Background()
	f, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	// Five drops in a row, each after some bytes: more failures than the budget of two
	// attempts, but each brought bytes, so the read goes on.
	h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 30_000, Times: 5})
	got, err := c.ReadRange(ctx, f, 0, f.Size)
	if err != nil || !bytes.Equal(got, files["model.safetensors"]) {
		t.Fatalf("read with drops: %v", err)
	}
	if n := h.Stats().Requests[hubtest.RouteCDNGet]; n != 6 {
		t.Errorf("%d requests, want 6", n)
	}
}

func TestQuota403FailsAtOnce(t *testing.T) {
	h, _, _ := setup(t, nil)
	c := quick(t, h.URL(), nil, hub.Options{})
	const msg = "You have exceeded your storage quota: 100 GB of private storage (free plan). Upgrade to PRO."
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Status: http.StatusForbidden, Message: msg, Times: -1})
	h.ResetStats()
	_, err := c.RepoInfo(context.Background(), repo, "main")
	if err == nil || !strings.Contains(err.Error(), msg) || !errors.Is(err, hub.ErrForbidden) || errors.Is(err, hub.ErrURLExpired) {
		t.Fatalf("error %v, want the 403 with the Hub's message", err)
	}
	if n := h.Stats().Requests[hubtest.RouteInfo]; n != 1 {
		t.Errorf("%d requests for a 403, want 1", n)
	}
}

func TestTokenNeverEchoed(t *testing.T) {
	h, _, _ := setup(t, nil)
	var logs syncBuffer
	c := quick(t, h.URL(), &logs, hub.Options{Retries: 1})
	const other = "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh" // shaped like a token, not ours
	echo := "bad request from Bearer " + token + " (also saw " + other + ")"
	// A 500 is retried (a log line) and then returned (the error).
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Status: http.StatusInternalServerError, Message: echo, Times: -1})
	_, err := c.RepoInfo(context.Background(), repo, "main")
	if err == nil {
		t.Fatal("no error")
	}
	for what, s := range map[string]string{"error": err.Error(), "log": logs.String()} {
		if strings.Contains(s, token) || strings.Contains(s, other) {
			t.Errorf("the %s holds a token: %s", what, s)
		}
		if !strings.Contains(s, "bad request from Bearer [REDACTED]") {
			t.Errorf("the %s lost the rest of the message: %s", what, s)
		}
	}
	if got := hub.Redact("x "+other+" y", ""); got != "x [REDACTED] y" {
		t.Errorf("Redact: %q", got)
	}
}

// silent accepts connections and never answers.
func silent(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestUnreachable(t *testing.T) {
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedAddr := refused.Addr().String()
	refused.Close()
	for name, addr := range map[string]string{"never answers": silent(t), "refused": refusedAddr} {
		t.Run(name, func(t *testing.T) {
			var logs syncBuffer
			c := quick(t, "http://"+addr, &logs, hub.Options{Retries: 2})
			// The guard only keeps a broken client from hanging the test run.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := c.RepoInfo(ctx, repo, "main")
			if !errors.Is(err, hub.ErrUnreachable) || ctx.Err() != nil {
				t.Fatalf("error %v, want ErrUnreachable within the time limits", err)
			}
			if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "gave up after 3 attempts") {
				t.Errorf("error %q does not name %s and the attempts", err, addr)
			}
			var te *hub.TimeoutError
			if name == "never answers" && (!errors.As(err, &te) || te.Phase != "response headers") {
				t.Errorf("error %v, want a response header timeout", err)
			}
			if n := strings.Count(logs.String(), "request failed; retrying"); n != 2 {
				t.Errorf("%d retry lines, want 2:\n%s", n, logs.String())
			}
		})
	}
}

func TestStalledBodies(t *testing.T) {
	h, _, files := setup(t, nil)
	c := quick(t, h.URL(), nil, hub.Options{})
	ctx := context.Background()
	f, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	// Headers, some bytes, then nothing: the read resumes from where the bytes stopped.
	h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Stall: true, StallAfterBytes: 50_000})
	h.ResetStats()
	got, err := c.ReadRange(ctx, f, 0, f.Size)
	if err != nil || !bytes.Equal(got, files["model.safetensors"]) {
		t.Fatalf("read through a stalled body: %v", err)
	}
	reqs := h.RequestsFor(hubtest.RouteCDNGet)
	if len(reqs) != 2 || reqs[1].Range != "bytes=50000-299999" {
		t.Errorf("requests %+v, want a resume at 50000", reqs)
	}
	// A stalled JSON reply is retried too; so is a Hub that never sends headers.
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Stall: true, StallAfterBytes: 10})
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Hang: true})
	h.ResetStats()
	if _, err := c.RepoInfo(ctx, repo, "main"); err != nil {
		t.Fatal(err)
	}
	if n := h.Stats().Requests[hubtest.RouteInfo]; n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
	// RemoteFile chunks: the first request of each stalls once.
	h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Stall: true, Times: 2})
	rf := c.Open(ctx, f, hub.OpenOptions{Chunk: 100_000, ReadAhead: 2})
	defer rf.Close()
	buf := make([]byte, f.Size)
	if _, err := rf.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, files["model.safetensors"]) {
		t.Fatalf("remote file through stalls: %v", err)
	}
}

// TestExpiredURLsDuringRemoteRead refreshes the storage URL while chunk goroutines
// read it; run under -race.
func TestExpiredURLsDuringRemoteRead(t *testing.T) {
	h, _, files := setup(t, nil)
	c := quick(t, h.URL(), nil, hub.Options{})
	ctx := context.Background()
	f, err := c.FileInfo(ctx, repo, "main", "model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	want := files["model.safetensors"]
	h.ResetStats()
	// Two CDN requests, far apart, find their URL expired; each refresh replaces the
	// location while other chunks are being read from it. (Faults on neighbouring
	// requests could hit one chunk's retry too, which a real expiry never does: a
	// refreshed URL is fresh.)
	first := h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, ExpiredURL: true, Skip: 3})
	second := h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, ExpiredURL: true, Skip: 60})
	rf := c.Open(ctx, f, hub.OpenOptions{Chunk: 4096, ReadAhead: 8, Verify: true})
	defer rf.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := range 4 {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for off := int64(r * 4096); off < f.Size; off += 4 * 4096 {
				n, err := rf.ReadAt(buf[:min(4096, f.Size-off)], off)
				if err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
					errs <- errors.New("wrong bytes")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// One refresh per expiry at most: a chunk that found the URL expired after
	// another had refreshed it takes the fresh one without asking again.
	if n := h.Stats().Requests[hubtest.RouteResolve]; n < 1 || n > 2 || first.Fired() != 1 || second.Fired() != 1 {
		t.Errorf("%d refreshes of the storage URL for %d+%d expiries", n, first.Fired(), second.Fired())
	}
}

func TestWhoAmITokens(t *testing.T) {
	fg := func(scoped ...hubtest.Scoped) hubtest.FineGrained { return hubtest.FineGrained{Scoped: scoped} }
	h := hubtest.New(
		hubtest.WithOrg("acme", "alice"),
		hubtest.WithToken("hf_read", "alice", hubtest.ScopeRead),
		hubtest.WithToken("hf_write", "alice", hubtest.ScopeWrite),
		hubtest.WithAppToken("hf_app", "alice"),
		hubtest.WithFineGrainedToken("hf_fg_user", "alice", fg(hubtest.Scoped{EntityType: "user", Entity: "alice", Permissions: []string{"repo.content.read", hubtest.PermRepoWrite}})),
		hubtest.WithFineGrainedToken("hf_fg_read", "alice", fg(hubtest.Scoped{EntityType: "user", Entity: "alice", Permissions: []string{"repo.content.read"}},
			hubtest.Scoped{EntityType: "org", Entity: "acme", Permissions: []string{"repo.content.read"}})),
		hubtest.WithFineGrainedToken("hf_fg_repo", "alice", fg(hubtest.Scoped{EntityType: "model", Entity: "acme/one", Permissions: []string{hubtest.PermRepoWrite}})),
		hubtest.WithFineGrainedToken("hf_fg_global", "alice", hubtest.FineGrained{Global: []string{hubtest.PermRepoWrite}}),
	).Start(t)
	ctx := context.Background()
	cases := []struct {
		token, repo string
		early       bool   // CanWrite allows
		hub         bool   // the Hub lets it create and commit
		why         string // part of the refusal
	}{
		{"hf_read", "alice/m", false, false, "read token"},
		{"hf_write", "alice/m", true, true, ""},
		{"hf_write", "acme/m", true, true, ""},
		{"hf_write", "bob/m", false, false, "namespace bob"},
		{"hf_app", "alice/m", true, true, ""},
		{"hf_app", "bob/m", true, false, ""}, // whoami cannot tell: the Hub decides
		{"hf_fg_user", "alice/m", true, true, ""},
		{"hf_fg_user", "acme/m", false, false, "lacks the repo.write permission for the org acme"},
		{"hf_fg_read", "alice/m", false, false, "lacks the repo.write permission for the user alice"},
		{"hf_fg_read", "acme/m", false, false, "it has repo.content.read there"},
		{"hf_fg_repo", "acme/one", true, true, ""},
		{"hf_fg_repo", "acme/two", false, false, "for the org acme"},
		{"hf_fg_global", "acme/m", true, true, ""},
	}
	for _, tc := range cases {
		c := quick(t, h.URL(), nil, hub.Options{Token: tc.token})
		w, err := c.WhoAmI(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := hub.Repo{Type: "model", ID: tc.repo}
		ok, why := w.CanWrite(r)
		if ok != tc.early || !strings.Contains(why, tc.why) {
			t.Errorf("%s on %s: CanWrite %v %q, want %v %q", tc.token, tc.repo, ok, why, tc.early, tc.why)
		}
		if tc.token == "hf_app" && (w.TokenRole != "" || w.AuthType != "app_token_as_user") {
			t.Errorf("app token: %+v", w)
		}
		_, _, err = c.CreateRepo(ctx, r, false)
		if (err == nil) != tc.hub {
			t.Errorf("%s creating %s: %v, want allowed=%v", tc.token, tc.repo, err, tc.hub)
		}
		if tc.repo == "acme/two" {
			// Created by another token, it is still not this one's to write.
			cw := quick(t, h.URL(), nil, hub.Options{Token: "hf_write"})
			if _, _, err := cw.CreateRepo(ctx, r, false); err != nil {
				t.Fatal(err)
			}
		}
		_, err = c.Commit(ctx, r, "main", hub.CommitRequest{Summary: "x", Files: []hub.CommitFile{{Path: "a.txt", Content: []byte("a")}}}, false)
		if (err == nil) != tc.hub || (err != nil && !errors.Is(err, hub.ErrForbidden) && !errors.Is(err, hub.ErrRepoNotFound)) {
			t.Errorf("%s committing to %s: %v, want allowed=%v", tc.token, tc.repo, err, tc.hub)
		}
	}
}

func TestUploadRefusals(t *testing.T) {
	h := hubtest.New(hubtest.WithToken("hf_w", "alice", hubtest.ScopeWrite)).Start(t)
	if err := h.CreateRepo("alice/m"); err != nil {
		t.Fatal(err)
	}
	c := quick(t, h.URL(), nil, hub.Options{Token: "hf_w"})
	ctx := context.Background()
	obj := []byte(strings.Repeat("weights ", 1000))
	r := hub.Repo{Type: "model", ID: "alice/m"}
	acts, err := c.LFSBatch(ctx, r, "main", []hub.LFSObject{{OID: sha(obj), Size: int64(len(obj))}})
	if err != nil || len(acts) != 1 || acts[0].Upload == nil {
		t.Fatalf("batch: %v %+v", err, acts)
	}
	put := func() error {
		_, err := c.PutPart(ctx, acts[0].Upload.Href, acts[0].Upload.Header, int64(len(obj)),
			func() (io.Reader, error) { return bytes.NewReader(obj), nil })
		return err
	}
	// A quota refusal on the PUT: once, with its message, and not an expiry.
	const quota = "storage quota exceeded for alice: 100 GB of private storage"
	h.Fault(hubtest.Fault{Route: hubtest.RouteUploadPut, Status: http.StatusForbidden, Message: quota, Times: -1})
	h.ResetStats()
	err = put()
	if err == nil || !strings.Contains(err.Error(), quota) || errors.Is(err, hub.ErrURLExpired) || !errors.Is(err, hub.ErrForbidden) {
		t.Errorf("quota PUT: %v", err)
	}
	if n := h.Stats().Requests[hubtest.RouteUploadPut]; n != 1 {
		t.Errorf("%d PUTs for a 403, want 1", n)
	}
	// An expired URL is told apart, so the uploader asks for fresh ones.
	h.ClearFaults()
	h.ExpireURLs()
	if err := put(); !errors.Is(err, hub.ErrURLExpired) {
		t.Errorf("expired PUT: %v, want ErrURLExpired", err)
	}
	// A 500 is retried with a fresh body each time, and the upload lands.
	h.Fault(hubtest.Fault{Route: hubtest.RouteUploadPut, Status: http.StatusInternalServerError, Times: 2})
	acts, err = c.LFSBatch(ctx, r, "main", []hub.LFSObject{{OID: sha(obj), Size: int64(len(obj))}})
	if err != nil {
		t.Fatal(err)
	}
	h.ResetStats()
	if err := put(); err != nil {
		t.Fatalf("PUT after 500s: %v", err)
	}
	if n := h.Stats().Requests[hubtest.RouteUploadPut]; n != 3 {
		t.Errorf("%d PUTs, want 3", n)
	}
}
