package xet

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// logRecorder keeps the messages and attributes a slog.Logger writes.
type logRecorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logRecorder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logRecorder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logRecorder) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestClientRetries(t *testing.T) {
	cas := newTestCAS(t)
	logs := &logRecorder{}
	c := cas.client(ClientOptions{Logger: logs.logger()})
	x := buildXorb(t, splitmix64Data(50000, 1))
	cas.fail(fault{prefix: "POST /v1/xorbs", status: 503})
	cas.fail(fault{prefix: "POST /v1/xorbs", status: 429, header: http.Header{"Retry-After": {"0"}}})
	cas.fail(fault{prefix: "POST /v1/xorbs", status: 408})
	inserted, err := c.UploadXorb(context.Background(), x.hash, x.data)
	if err != nil || !inserted {
		t.Fatalf("inserted %v, err %v", inserted, err)
	}
	if _, posts, _ := cas.stats(); posts != 1 {
		t.Errorf("%d xorb posts reached the handler, want 1", posts)
	}
	for _, s := range []string{"reason=503", "reason=429", "reason=408"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("no retry logged for %s:\n%s", s, logs)
		}
	}
	if strings.Contains(logs.String(), cas.token) {
		t.Errorf("the token reached the log")
	}
	// A 400 fails at once with the server's message; a 501 is not retried either.
	for _, status := range []int{400, 501} {
		before := cas.count()
		cas.fail(fault{prefix: "POST /v1/xorbs", status: status, body: "hash mismatch"})
		_, err = c.UploadXorb(context.Background(), x.hash, x.data)
		var se *StatusError
		if !errors.As(err, &se) || se.Status != status || !strings.Contains(err.Error(), "hash mismatch") {
			t.Errorf("status %d: err %v", status, err)
		}
		if n := cas.count() - before; n != 1 {
			t.Errorf("status %d: %d requests, want 1", status, n)
		}
	}
	// Retries run out.
	for i := 0; i < 6; i++ {
		cas.fail(fault{prefix: "POST /v1/shards", status: 500})
	}
	if _, err := c.UploadShard(context.Background(), []byte("x")); err == nil {
		t.Error("six 500s in a row succeeded")
	}
}

func TestClientDedupQuery(t *testing.T) {
	cas := newTestCAS(t)
	c := cas.client(ClientOptions{})
	var h Hash
	if s, err := c.QueryChunk(context.Background(), h); s != nil || err != nil {
		t.Errorf("unknown chunk: %v %v", s, err)
	}
	cas.fail(fault{prefix: "GET /v1/chunks", status: 429, header: http.Header{"Retry-After": {"100"}}})
	start := cas.count()
	if s, err := c.QueryChunk(context.Background(), h); s != nil || err != nil {
		t.Errorf("rate-limited query: %v %v", s, err)
	}
	if n := cas.count() - start; n != 1 {
		t.Errorf("a rate-limited dedup query was retried (%d requests)", n)
	}
	if !strings.Contains(cas.last(), "/v1/chunks/default-merkledb/") {
		t.Errorf("query path %s", cas.last())
	}
}

// TestClientTokens: the token is renewed before it expires and after a 401, and each
// token goes only to the CAS URL it came with.
func TestClientTokens(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]string{} // server → Authorization headers
	handler := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen[name] = append(seen[name], r.Header.Get("Authorization"))
			mu.Unlock()
			if r.Header.Get("Authorization") == "Bearer stale" {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.WriteHeader(http.StatusNotFound)
		}
	}
	a := httptest.NewServer(handler("a"))
	defer a.Close()
	b := httptest.NewServer(handler("b"))
	defer b.Close()
	now := time.Unix(1_000_000, 0)
	issued := []Token{
		{AccessToken: "t1", Expiry: now.Add(time.Minute), CASURL: a.URL},
		{AccessToken: "t2", Expiry: now.Add(time.Hour), CASURL: b.URL + "/"},
		{AccessToken: "stale", Expiry: now.Add(2 * time.Hour), CASURL: b.URL},
		{AccessToken: "t4", Expiry: now.Add(3 * time.Hour), CASURL: b.URL},
	}
	calls := 0
	src := func(context.Context) (Token, error) { calls++; return issued[calls-1], nil }
	clock := now
	c := NewClient(src, ClientOptions{Now: func() time.Time { return clock }, MinBackoff: time.Millisecond})
	ctx := context.Background()
	var h Hash
	c.XorbExists(ctx, h) // t1 at a
	c.XorbExists(ctx, h) // still t1: 60 s left
	clock = now.Add(31 * time.Second)
	c.XorbExists(ctx, h)       // under 30 s left: t2, at b
	clock = now.Add(time.Hour) // t2 expired: "stale" answers 401, renewed to t4
	if _, err := c.XorbExists(ctx, h); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"a": {"Bearer t1", "Bearer t1"}, "b": {"Bearer t2", "Bearer stale", "Bearer t4"}}
	for k, v := range want {
		if strings.Join(seen[k], ",") != strings.Join(v, ",") {
			t.Errorf("server %s saw %v, want %v", k, seen[k], v)
		}
	}
}

// TestClientNoRedirect: a redirect is not followed, so the token never reaches the
// host it points to.
func TestClientNoRedirect(t *testing.T) {
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the redirect target was called (Authorization %q)", r.Header.Get("Authorization"))
	}))
	defer other.Close()
	cas := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer cas.Close()
	c := NewClient(func(context.Context) (Token, error) {
		return Token{AccessToken: "secret", Expiry: time.Now().Add(time.Hour), CASURL: cas.URL}, nil
	}, ClientOptions{})
	_, err := c.UploadShard(context.Background(), []byte("x"))
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusTemporaryRedirect || strings.Contains(err.Error(), "secret") {
		t.Errorf("err %v", err)
	}
}

func TestClientContext(t *testing.T) {
	cas := newTestCAS(t)
	c := NewClient(cas.tokens, ClientOptions{MinBackoff: time.Hour, MaxBackoff: time.Hour})
	cas.fail(fault{prefix: "POST /v1/shards", status: 503})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			if cas.count() > 0 {
				cancel()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	if _, err := c.UploadShard(ctx, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled during the backoff", err)
	}
}

func TestRetryAfterHeaders(t *testing.T) {
	for _, c := range []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{"Retry-After": {"3"}}, 3100 * time.Millisecond},
		{http.Header{"Ratelimit": {`"api";r=0;t=7`}}, 7100 * time.Millisecond},
		{http.Header{"Ratelimit": {`"api";r=5;t=7`}}, 0},
		{http.Header{"Retry-After": {"soon"}}, 0},
	} {
		if got := parseRetryAfter(c.h); got != c.want {
			t.Errorf("%v: %v, want %v", c.h, got, c.want)
		}
	}
}
