package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

const hubToken = "hf_cli_test"

// hubBase seeds a fake Hub with a two-shard Llama (as alice/base, private) and writes the
// same model and an adapter locally.
func hubBase(t *testing.T, opts ...hubtest.Option) (h *hubtest.Hub, base, adapter, commit string) {
	t.Helper()
	base, adapter = inputs(t, nil)
	h = hubtest.New(append([]hubtest.Option{hubtest.WithToken(hubToken, "alice", hubtest.ScopeRead)}, opts...)...).Start(t)
	files := map[string][]byte{}
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(base, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	commit, err := h.Seed("alice/base", files, hubtest.Private())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("HF_ENDPOINT", h.URL())
	t.Setenv("HF_TOKEN", hubToken)
	t.Setenv("HF_HUB_OFFLINE", "")
	t.Setenv("HF_HUB_CACHE", filepath.Join(t.TempDir(), "hub-cache"))
	return h, base, adapter, commit
}

// sameModel compares two merged directories file by file; the model cards name their
// bases differently and are left out.
func sameModel(t *testing.T, a, b string) {
	t.Helper()
	names := func(dir string) []string {
		es, _ := os.ReadDir(dir)
		var out []string
		for _, e := range es {
			// A Hub repo also has .gitattributes, which the merged model keeps.
			if e.Name() != ".gitattributes" {
				out = append(out, e.Name())
			}
		}
		return out
	}
	na, nb := names(a), names(b)
	if strings.Join(na, " ") != strings.Join(nb, " ") {
		t.Fatalf("%s holds %v, %s holds %v", a, na, b, nb)
	}
	for _, n := range na {
		e := struct{ name string }{n}
		if e.name == "README.md" || e.name == hfmerge.ProvenanceFile {
			continue // they name the inputs, which differ in kind
		}
		x, _ := os.ReadFile(filepath.Join(a, e.name))
		y, err := os.ReadFile(filepath.Join(b, e.name))
		if err != nil || !bytes.Equal(x, y) {
			t.Errorf("%s differs (%v)", e.name, err)
		}
	}
}

// files lists every regular file under dir.
func filesUnder(dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestHubMerge merges a base streamed from the fake Hub, under dropped bodies, a 503 on
// resolve and a 429 with Retry-After on the listing, and gets the bytes a merge of a
// local copy gives. The CDN never sees the token, and nothing stays in the cache.
func TestHubMerge(t *testing.T) {
	h, base, adapter, _ := hubBase(t)
	local := filepath.Join(t.TempDir(), "local")
	if code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", local, "--progress", "none"); code != 0 {
		t.Fatal(stderr)
	}
	drop := h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 3000, Times: 3})
	unavailable := h.Fault(hubtest.Fault{Route: hubtest.RouteResolve, Status: 503})
	limited := h.Fault(hubtest.Fault{Route: hubtest.RouteTree, Status: 429, RetryAfter: time.Second})
	remote := filepath.Join(t.TempDir(), "remote")
	code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", remote, "--progress", "none")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sameModel(t, local, remote)
	if drop.Fired() != 3 || unavailable.Fired() != 1 || limited.Fired() != 1 {
		t.Errorf("faults fired: drops %d, 503 %d, 429 %d", drop.Fired(), unavailable.Fired(), limited.Fired())
	}
	if n := h.Stats().CDNAuthRejected; n != 0 {
		t.Errorf("the CDN saw the token %d times", n)
	}
	if card, _ := os.ReadFile(filepath.Join(remote, "README.md")); !bytes.Contains(card, []byte("base_model: alice/base")) {
		t.Errorf("model card does not name the Hub base:\n%s", card)
	}
	if left := filesUnder(filepath.Join(os.Getenv("HF_HUB_CACHE"), "models--alice--base")); len(left) > 0 {
		t.Errorf("streaming left files in the cache: %v", left)
	}
}

// TestHubKeepBase: two processes fetching the same base into one cache at once both
// succeed and download each blob once; a later run with HF_HUB_OFFLINE reads the kept
// cache with no request at all.
func TestHubKeepBase(t *testing.T) {
	h, base, adapter, commit := hubBase(t)
	bin := buildBinary(t)
	local := filepath.Join(t.TempDir(), "local")
	if code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", local, "--progress", "none"); code != 0 {
		t.Fatal(stderr)
	}
	var wg sync.WaitGroup
	outs := []string{filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")}
	errs := make([]error, 2)
	logs := make([][]byte, 2)
	for i, out := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			logs[i], errs[i] = exec.Command(bin, "merge", "--base", "alice/base", "--adapter", adapter, "--out", out, "--keep-base", "--progress", "none").CombinedOutput()
		}()
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil {
			t.Fatalf("process %d: %v\n%s", i, errs[i], logs[i])
		}
		sameModel(t, local, outs[i])
	}
	h.WaitIdle(context.Background())
	st := h.Stats()
	for _, name := range []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
		data, _ := os.ReadFile(filepath.Join(base, name))
		sum := sha256.Sum256(data)
		if got := st.FileBytes[hex.EncodeToString(sum[:])]; got < int64(len(data)) || got > int64(len(data))+200_000 {
			t.Errorf("%s (%d bytes) was served %d bytes: want one download (plus header probes)", name, len(data), got)
		}
	}
	cacheDir := os.Getenv("HF_HUB_CACHE")
	if ref, _ := os.ReadFile(filepath.Join(cacheDir, "models--alice--base", "refs", "main")); string(ref) != commit {
		t.Errorf("refs/main = %q, want %s", ref, commit)
	}
	// Online, a base the cache holds whole is read in place: no shard byte is served.
	h.ResetStats()
	if code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", filepath.Join(t.TempDir(), "again"), "--progress", "none"); code != 0 {
		t.Fatal(stderr)
	}
	h.WaitIdle(context.Background())
	if n := h.Stats().Requests[hubtest.RouteCDNGet]; n != 0 {
		t.Errorf("with the base in the cache, the CDN was asked %d times", n)
	}
	before := len(h.Requests())
	t.Setenv("HF_HUB_OFFLINE", "1")
	offline := filepath.Join(t.TempDir(), "offline")
	if code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", offline, "--progress", "none"); code != 0 {
		t.Fatalf("offline: %s", stderr)
	}
	sameModel(t, local, offline)
	if n := len(h.Requests()) - before; n != 0 {
		t.Errorf("the offline run made %d requests", n)
	}
	// Offline, a file the cache lacks is an error naming it.
	os.Remove(filepath.Join(cacheDir, "models--alice--base", "snapshots", commit, "model-00002-of-00002.safetensors"))
	code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", filepath.Join(t.TempDir(), "x"), "--progress", "none")
	if code == 0 || !strings.Contains(stderr, "model-00002-of-00002.safetensors") || !strings.Contains(stderr, "offline") {
		t.Errorf("offline with a file missing: exit %d: %s", code, stderr)
	}
}

// TestHubChecksum: a shard whose bytes do not match its sha256 fails the merge with a
// message naming it, streamed or fetched, and leaves nothing under its name in the cache.
func TestHubChecksum(t *testing.T) {
	h, base, adapter, _ := hubBase(t)
	name := "model-00002-of-00002.safetensors"
	data, _ := os.ReadFile(filepath.Join(base, name))
	sum := sha256.Sum256(data)
	oid := hex.EncodeToString(sum[:])
	bad := bytes.Clone(data)
	for i := len(bad) - 100; i < len(bad); i++ {
		bad[i] ^= 0xff
	}
	if !h.CorruptObject(oid, bad) {
		t.Fatal("could not corrupt the shard")
	}
	for _, keep := range []bool{false, true} {
		args := []string{"merge", "--base", "alice/base", "--adapter", adapter, "--out", filepath.Join(t.TempDir(), "out"), "--progress", "none"}
		if keep {
			args = append(args, "--keep-base")
		}
		code, _, stderr := runBin(t, args...)
		if code != 1 || !strings.Contains(stderr, name) || !strings.Contains(stderr, "sha256") && !strings.Contains(stderr, "digest") {
			t.Errorf("keep=%v: exit %d: %s", keep, code, stderr)
		}
		for _, f := range filesUnder(os.Getenv("HF_HUB_CACHE")) {
			if (strings.Contains(f, oid) && !strings.HasSuffix(f, ".lock")) || strings.HasSuffix(f, name) {
				t.Errorf("keep=%v: %s left in the cache", keep, f)
			}
		}
	}
}

// TestHubPlanReadsHeaders: plan on a Hub base reads headers by Range and no more.
func TestHubPlanReadsHeaders(t *testing.T) {
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 256, Intermediate: 1024, Layers: 4, Vocab: 2000, DType: safetensors.BF16, Seed: 3, Lazy: true})
	m.Split(2)
	dir := t.TempDir()
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	a := fixture.NewAdapter(4, 8, "q_proj")
	w := m.Tensor("model.layers.0.self_attn.q_proj.weight")
	a.Linear("model.layers.0.self_attn.q_proj", w.Shape[0], w.Shape[1], 4, safetensors.F32, fixture.NewRand(4))
	adapter := filepath.Join(t.TempDir(), "adapter")
	a.Write(adapter)
	h := hubtest.New().Start(t)
	files := map[string][]byte{}
	var total int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		files[e.Name()] = b
		if strings.HasSuffix(e.Name(), ".safetensors") {
			total += int64(len(b))
		}
	}
	if _, err := h.Seed("alice/big", files); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HF_ENDPOINT", h.URL())
	t.Setenv("HF_HUB_CACHE", t.TempDir())
	code, stdout, stderr := runBin(t, "plan", "--base", "alice/big", "--adapter", adapter)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	h.WaitIdle(context.Background())
	served := h.Stats().BytesServed[hubtest.HostCDN]
	if served > 2*100_000 || served*20 > total {
		t.Errorf("plan had %d shard bytes served, of %d", served, total)
	}
	t.Logf("plan: %d of %d shard bytes served", served, total)
}

// TestHubMaliciousListing: a listing that names a path outside the repo is refused,
// and nothing is written outside the cache.
func TestHubMaliciousListing(t *testing.T) {
	for _, evil := range []string{"../x", "/etc/x", "a/../../x"} {
		t.Run(evil, func(t *testing.T) {
			h, _, adapter, _ := hubBase(t)
			inner := h.Handler()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !strings.Contains(r.URL.Path, "/tree/") {
					inner.ServeHTTP(w, r)
					return
				}
				rec := httptest.NewRecorder()
				inner.ServeHTTP(rec, r)
				body := bytes.Replace(rec.Body.Bytes(), []byte(`[`), []byte(fmt.Sprintf(`[{"type":"file","path":%q,"size":3,"oid":"%040d"},`, evil, 1)), 1)
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.Header().Del("Content-Length")
				w.WriteHeader(rec.Code)
				w.Write(body)
			}))
			defer srv.Close()
			t.Setenv("HF_ENDPOINT", srv.URL)
			parent := t.TempDir()
			t.Setenv("HF_HUB_CACHE", filepath.Join(parent, "cache"))
			code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", filepath.Join(parent, "out"), "--keep-base", "--progress", "none")
			if code == 0 || !strings.Contains(stderr, evil) {
				t.Errorf("exit %d: %s", code, stderr)
			}
			for _, f := range filesUnder(parent) {
				rel, _ := filepath.Rel(parent, f)
				if !strings.HasPrefix(rel, "cache"+string(filepath.Separator)) {
					t.Errorf("written outside the cache: %s", rel)
				}
			}
		})
	}
}

// TestHubLocalDir: --local-dir keeps the base as hf download --local-dir lays it out,
// and a later offline run reads it there.
func TestHubLocalDir(t *testing.T) {
	h, base, adapter, commit := hubBase(t)
	dir := filepath.Join(t.TempDir(), "llama")
	first := filepath.Join(t.TempDir(), "first")
	if code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", first, "--local-dir", dir, "--keep-base", "--progress", "none"); code != 0 {
		t.Fatal(stderr)
	}
	for _, name := range []string{"model-00001-of-00002.safetensors", "config.json"} {
		want, _ := os.ReadFile(filepath.Join(base, name))
		if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s in the local dir: %v", name, err)
		}
		meta, _ := os.ReadFile(filepath.Join(dir, ".cache", "huggingface", "download", name+".metadata"))
		if !strings.HasPrefix(string(meta), commit+"\n") {
			t.Errorf("%s metadata: %q", name, meta)
		}
	}
	if left := filesUnder(os.Getenv("HF_HUB_CACHE")); len(left) > 0 {
		t.Errorf("--local-dir wrote into the HF cache: %v", left)
	}
	before := len(h.Requests())
	t.Setenv("HF_HUB_OFFLINE", "1")
	second := filepath.Join(t.TempDir(), "second")
	if code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", second, "--local-dir", dir, "--progress", "none"); code != 0 {
		t.Fatal(stderr)
	}
	sameModel(t, first, second)
	if n := len(h.Requests()) - before; n != 0 {
		t.Errorf("offline run made %d requests", n)
	}
}
