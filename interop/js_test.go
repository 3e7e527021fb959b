//go:build interop

package interop

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

const token = "hf_interop_write"

// fakeHub is a hubtest.Hub served on two hosts, with the bodies of LFS batch requests
// kept so the tests can say what the JS client offers.
type fakeHub struct {
	*hubtest.Hub
	mu      sync.Mutex
	batches []map[string]any
}

func startHub(t *testing.T, opts ...hubtest.Option) *fakeHub {
	t.Helper()
	fh := &fakeHub{Hub: hubtest.New(append([]hubtest.Option{hubtest.WithToken(token, "alice", hubtest.ScopeWrite)}, opts...)...)}
	inner := fh.Handler()
	hub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/info/lfs/objects/batch") {
			body, _ := io.ReadAll(r.Body)
			var m map[string]any
			json.Unmarshal(body, &m)
			fh.mu.Lock()
			fh.batches = append(fh.batches, m)
			fh.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		inner.ServeHTTP(w, r)
	}))
	cdn := httptest.NewUnstartedServer(fh.CDNHandler())
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err == nil {
		cdn.Listener.Close()
		cdn.Listener = ln
	}
	cdn.Start()
	t.Cleanup(func() { hub.Close(); cdn.Close() })
	fh.SetURLs(hub.URL, cdn.URL)
	return fh
}

// requireJS fails (not skips) when the interop tag is set but the tools are missing.
func requireJS(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("interop tests need Node.js 20+ on PATH (node not found: %v)", err)
	}
	if _, err := os.Stat(filepath.Join("node_modules", "@huggingface", "hub", "package.json")); err != nil {
		t.Fatalf("@huggingface/hub is not installed in interop/node_modules: run `bash interop/setup.sh` first (%v)", err)
	}
}

// js runs one hub.mjs command and decodes its JSON answer into out.
func js(t *testing.T, h *fakeHub, withToken bool, cmd string, args, out any) {
	t.Helper()
	if err := jsErr(t, h, withToken, cmd, args, out); err != nil {
		t.Fatal(err)
	}
}

func jsErr(t *testing.T, h *fakeHub, withToken bool, cmd string, args, out any) error {
	t.Helper()
	in, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	c := exec.CommandContext(t.Context(), "node", "hub.mjs", cmd, string(in))
	tok := ""
	if withToken {
		tok = token
	}
	c.Env = append(os.Environ(), "HUB_URL="+h.URL(), "HF_ENDPOINT="+h.URL(), "HF_TOKEN="+tok, "HF_HUB_DISABLE_TELEMETRY=1")
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return &jsError{cmd: cmd, err: err, stderr: stderr.String()}
	}
	if out != nil {
		// The client logs progress ("Downloading ...") on stdout too: the answer is the
		// last line.
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), out); err != nil {
			t.Fatalf("node hub.mjs %s: bad output %q: %v", cmd, stdout.String(), err)
		}
	}
	return nil
}

type jsError struct {
	cmd    string
	err    error
	stderr string
}

func (e *jsError) Error() string {
	return "node hub.mjs " + e.cmd + ": " + e.err.Error() + "\n" + e.stderr
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// pattern makes n deterministic bytes that do not look like text.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 7
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

func writeFiles(t *testing.T, files map[string][]byte) []map[string]string {
	t.Helper()
	dir := t.TempDir()
	var list []map[string]string
	for p, data := range files {
		local := filepath.Join(dir, strings.ReplaceAll(p, "/", "_"))
		if err := os.WriteFile(local, data, 0o644); err != nil {
			t.Fatal(err)
		}
		list = append(list, map[string]string{"path": p, "file": local})
	}
	return list
}

func countRoute(h *fakeHub, r hubtest.Route) int { return h.Stats().Requests[r] }

func waitIdle(t *testing.T, h *fakeHub) {
	t.Helper()
	if err := h.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
}
