package hubtest_test

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// Tokens every test hub knows: alice (write, read), bob (write); alice is in org acme.
const (
	tokW   = "hf_alice_write"
	tokR   = "hf_alice_read"
	tokBob = "hf_bob_write"
)

func newHub(t *testing.T, opts ...hubtest.Option) *hubtest.Hub {
	t.Helper()
	base := []hubtest.Option{
		hubtest.WithToken(tokW, "alice", hubtest.ScopeWrite),
		hubtest.WithToken(tokR, "alice", hubtest.ScopeRead),
		hubtest.WithToken(tokBob, "bob", hubtest.ScopeWrite),
		hubtest.WithOrg("acme", "alice"),
	}
	return hubtest.New(append(base, opts...)...).Start(t)
}

// client never follows redirects, so tests see the Hub's 302s and send each request
// exactly where they mean to.
func client() *http.Client {
	return &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type reply struct {
	*http.Response
	body []byte
}

func (r reply) String() string {
	return fmt.Sprintf("%d %s %q", r.StatusCode, r.Header.Get("X-Error-Code"), r.body)
}

// do sends one request; hdr holds header name/value pairs.
func do(t *testing.T, method, url, token string, body []byte, hdr ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body, req.ContentLength = nil, 0
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return reply{resp, b}
}

func doJSON(t *testing.T, method, url, token string, in any, hdr ...string) reply {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, method, url, token, b, append([]string{"Content-Type", "application/json"}, hdr...)...)
}

func decode(t *testing.T, r reply, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r, err)
	}
}

func want(t *testing.T, r reply, status int) {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("%s %s: got %s, want status %d", r.Request.Method, r.Request.URL, r, status)
	}
}

func wantErr(t *testing.T, r reply, status int, code string) {
	t.Helper()
	want(t, r, status)
	if got := r.Header.Get("X-Error-Code"); got != code {
		t.Fatalf("%s: X-Error-Code = %q, want %q", r.Request.URL, got, code)
	}
	if code != "" && r.Header.Get("X-Error-Message") == "" {
		t.Fatalf("%s: no X-Error-Message", r.Request.URL)
	}
}

// gitHash is `git hash-object`, computed here independently of the fake.
func gitHash(data []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(data))
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))
}

func sha(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func unquote(s string) string { return strings.Trim(strings.TrimPrefix(s, "W/"), `"`) }

// pattern makes n deterministic, non-repeating-looking bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

func mustSeed(t *testing.T, h *hubtest.Hub, repo string, files map[string][]byte, opts ...hubtest.SeedOption) string {
	t.Helper()
	sha, err := h.Seed(repo, files, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return sha
}

// ndjson builds a commit body.
func ndjson(t *testing.T, header map[string]any, ops ...map[string]any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.Encode(map[string]any{"key": "header", "value": header})
	for _, op := range ops {
		enc.Encode(op)
	}
	return buf.Bytes()
}

func fileOp(path string, data []byte) map[string]any {
	return map[string]any{"key": "file", "value": map[string]any{"path": path, "content": b64(data), "encoding": "base64"}}
}

func lfsOp(path string, data []byte) map[string]any {
	return map[string]any{"key": "lfsFile", "value": map[string]any{"path": path, "algo": "sha256", "oid": sha(data), "size": len(data)}}
}

func commitURL(h *hubtest.Hub, repo, rev string) string {
	return h.URL() + "/api/models/" + repo + "/commit/" + rev
}
