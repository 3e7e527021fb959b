//go:build interop

package interop

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// startXetHub is startHub with Xet storage and its CAS host (on 127.0.0.3 when the
// system allows it, a host of its own).
func startXetHub(t *testing.T, opts ...hubtest.Option) *fakeHub {
	t.Helper()
	fh := startHub(t, append([]hubtest.Option{hubtest.WithXet()}, opts...)...)
	cas := httptest.NewUnstartedServer(fh.CASHandler())
	if ln, err := net.Listen("tcp", "127.0.0.3:0"); err == nil {
		cas.Listener.Close()
		cas.Listener = ln
	}
	cas.Start()
	t.Cleanup(cas.Close)
	fh.SetCASURL(cas.URL)
	return fh
}

type xetHashesOut struct {
	FileHash string   `json:"fileHash"`
	Chunks   []string `json:"chunks"`
	Sizes    []int    `json:"sizes"`
}

type viaOut map[string]struct {
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
	Xet    bool   `json:"xet"`
}

// requireAgreement checks that the CAS recomputed, for a file the JS client uploaded,
// exactly the hashes the client sent (every recorded comparison agrees, and there was
// at least one of each kind) and that the client's own hashing of the local file gives
// the file hash and chunk hashes the CAS stores.
func requireAgreement(t *testing.T, h *fakeHub, local string, data []byte) hubtest.XetFile {
	t.Helper()
	kinds := map[string]int{}
	for _, c := range h.XetChecks() {
		if c.Claimed != c.Computed {
			t.Fatalf("the CAS and the JS client disagree: %+v", c)
		}
		kinds[c.What]++
	}
	for _, k := range []string{"xorb", "chunk", "range", "file", "sha256"} {
		if kinds[k] == 0 {
			t.Fatalf("no %q comparison was made (checks: %v)", k, kinds)
		}
	}
	f, ok := h.XetFileBySHA256(sha(data))
	if !ok || f.Size != int64(len(data)) {
		t.Fatalf("the CAS does not store the %d-byte file: %+v", len(data), f)
	}
	var mine xetHashesOut
	js(t, h, false, "xetHashes", map[string]any{"file": local}, &mine)
	if mine.FileHash != f.Hash || !slices.Equal(mine.Chunks, f.Chunks) {
		t.Fatalf("JS hashes the file to %s with %d chunks; the CAS stores %s with %d chunks", mine.FileHash, len(mine.Chunks), f.Hash, len(f.Chunks))
	}
	return f
}

// TestJSXetUploadDownload: the JavaScript client uploads through Xet (it offers xet in
// the batch, the fake chooses it), commits, lists, and downloads back through Xet
// (reconstruction plus ranged transfer URLs); a second file sharing most of its bytes
// with the first dedups against it through the global dedup API.
func TestJSXetUploadDownload(t *testing.T) {
	requireJS(t)
	h := startXetHub(t)
	js(t, h, true, "createRepo", map[string]any{"repo": "alice/xet"}, nil)

	big := pattern(6<<20, 3) // 6 MiB of incompressible bytes: about 100 chunks
	files := map[string][]byte{"model.safetensors": big, "config.json": []byte(`{"a":1}` + "\n")}
	local := writeFiles(t, files)
	var out commitOut
	js(t, h, true, "upload", map[string]any{"repo": "alice/xet", "files": local, "title": "Xet upload"}, &out)
	waitIdle(t, h)

	h.mu.Lock()
	transfers, _ := h.batches[0]["transfers"].([]any)
	h.mu.Unlock()
	if !slices.Contains(transfers, any("xet")) {
		t.Fatalf("the client did not offer xet: %v", transfers)
	}
	st, xs := h.Stats(), h.XetStats()
	if xs.XorbsAccepted == 0 || xs.ShardsAccepted != 1 || xs.FilesRegistered != 1 || xs.XorbsRejected+xs.ShardsRejected+xs.AuthRejected != 0 {
		t.Fatalf("CAS counters after the upload: %+v", xs)
	}
	if st.Requests[hubtest.RouteUploadPut]+st.Requests[hubtest.RoutePartPut] != 0 || st.UploadedBytes != 0 {
		t.Fatalf("bytes went through LFS too: %v", st.Requests)
	}
	// The batch answer's token sufficed: no refresh with a 1 h token.
	if st.Requests[hubtest.RouteXetToken] != 0 {
		t.Fatalf("%d token refreshes with a fresh token", st.Requests[hubtest.RouteXetToken])
	}
	firstBytes := xs.XorbBytes
	if firstBytes < int64(len(big)) {
		t.Fatalf("xorb bytes %d for %d incompressible bytes", firstBytes, len(big))
	}
	var bigLocal string
	for _, f := range local {
		if f["path"] == "model.safetensors" {
			bigLocal = f["file"]
		}
	}
	xf := requireAgreement(t, h, bigLocal, big)

	// The commit is the usual NDJSON one: the file is an LFS file by sha256.
	got, err := h.File("alice/xet", "main", "model.safetensors")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("the committed file on the fake: %v", err)
	}
	var listed struct {
		Entries []struct {
			Path    string `json:"path"`
			XetHash string `json:"xetHash"`
		} `json:"entries"`
	}
	js(t, h, true, "listFiles", map[string]any{"repo": "alice/xet"}, &listed)
	for _, e := range listed.Entries {
		if e.Path == "model.safetensors" && e.XetHash != xf.Hash {
			t.Fatalf("listFiles xetHash %q, want %s", e.XetHash, xf.Hash)
		}
	}

	// Download through Xet, byte-identical.
	h.ResetStats()
	var via viaOut
	js(t, h, true, "downloadVia", map[string]any{"repo": "alice/xet", "paths": []string{"model.safetensors"}}, &via)
	if d := via["model.safetensors"]; !d.Xet || d.SHA256 != sha(big) || d.Size != len(big) {
		t.Fatalf("download = %+v, want the file through Xet", d)
	}
	waitIdle(t, h)
	xs = h.XetStats()
	if xs.Reconstructions == 0 || xs.TransferBytes == 0 || xs.TokensRead == 0 || xs.AuthRejected != 0 || h.Stats().BytesServed[hubtest.HostCDN] != 0 {
		t.Fatalf("download counters %+v, CDN bytes %d", xs, h.Stats().BytesServed[hubtest.HostCDN])
	}
	// And through the classic path (the redirect to the CDN), as a non-Xet client reads it.
	resp, err := http.Get(h.URL() + "/alice/xet/resolve/main/model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	classic, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(classic, big) {
		t.Fatalf("the LFS-compatible path served %d bytes, not the file", len(classic))
	}

	// Dedup: a file sharing its first 5 MiB with the first one.
	second := append(bytes.Clone(big[:5<<20]), pattern(1<<20, 9)...)
	h.ResetStats()
	local2 := writeFiles(t, map[string][]byte{"model-v2.safetensors": second})
	js(t, h, true, "upload", map[string]any{"repo": "alice/xet", "files": local2, "title": "Second"}, &out)
	waitIdle(t, h)
	xs = h.XetStats()
	if xs.DedupQueries == 0 || xs.DedupHits == 0 {
		t.Fatalf("no global dedup hit: %+v", xs)
	}
	if xs.XorbBytes >= firstBytes || xs.XorbBytes*3 > int64(len(second)) { // about 1 MiB new of 6 MiB
		t.Fatalf("the second upload sent %d xorb bytes (the first %d) for a %d-byte file that shares 5 MiB with the first",
			xs.XorbBytes, firstBytes, len(second))
	}
	t.Logf("xorb bytes: first upload %d, second (dedup) %d, for %d-byte files", firstBytes, xs.XorbBytes, len(second))
	requireAgreement(t, h, local2[0]["file"], second)
	js(t, h, true, "downloadVia", map[string]any{"repo": "alice/xet", "paths": []string{"model-v2.safetensors", "config.json"}}, &via)
	if d := via["model-v2.safetensors"]; !d.Xet || d.SHA256 != sha(second) {
		t.Fatalf("download of the dedup'd file = %+v", d)
	}
	if d := via["config.json"]; d.Xet || d.SHA256 != sha(files["config.json"]) {
		t.Fatalf("a regular file = %+v", d)
	}
}

// TestJSXetManyXorbs uploads a file larger than one xorb (64 MiB): several xorbs in
// one shard, and a download whose reconstruction spans them.
func TestJSXetManyXorbs(t *testing.T) {
	requireJS(t)
	h := startXetHub(t)
	js(t, h, true, "createRepo", map[string]any{"repo": "alice/large"}, nil)
	data := pattern(70<<20, 5)
	local := writeFiles(t, map[string][]byte{"shard.safetensors": data})
	js(t, h, true, "upload", map[string]any{"repo": "alice/large", "files": local, "title": "Large"}, nil)
	waitIdle(t, h)
	if xs := h.XetStats(); xs.XorbsAccepted < 2 || xs.ShardsAccepted != 1 {
		t.Fatalf("counters %+v, want at least 2 xorbs in one shard", xs)
	}
	xf := requireAgreement(t, h, local[0]["file"], data)
	xorbs := map[string]bool{}
	for _, tm := range xf.Terms {
		xorbs[tm.Xorb] = true
	}
	if len(xorbs) < 2 {
		t.Fatalf("the file's %d terms use %d xorbs", len(xf.Terms), len(xorbs))
	}
	var via viaOut
	js(t, h, true, "downloadVia", map[string]any{"repo": "alice/large", "paths": []string{"shard.safetensors"}}, &via)
	if d := via["shard.safetensors"]; !d.Xet || d.SHA256 != sha(data) {
		t.Fatalf("download = %+v", d)
	}
}

// TestJSXetTokenRefreshAndPR: with CAS tokens shorter-lived than the client's 60 s
// safety margin, it refreshes through the batch action's href before every CAS call;
// and an upload that opens a pull request goes through Xet too.
func TestJSXetTokenRefreshAndPR(t *testing.T) {
	requireJS(t)
	h := startXetHub(t, hubtest.WithXetTokenLifetime(20*time.Second))
	js(t, h, true, "createRepo", map[string]any{"repo": "alice/pr"}, nil)
	data := pattern(300_000, 7)
	var out commitOut
	js(t, h, true, "upload", map[string]any{"repo": "alice/pr", "files": writeFiles(t, map[string][]byte{"w.safetensors": data}),
		"title": "PR", "isPullRequest": true}, &out)
	waitIdle(t, h)
	if out.PullRequestURL != h.URL()+"/alice/pr/discussions/1" {
		t.Fatalf("upload = %+v", out)
	}
	refreshes := h.RequestsFor(hubtest.RouteXetToken)
	if len(refreshes) == 0 || h.XetStats().ShardsAccepted != 1 {
		t.Fatalf("%d token refreshes, counters %+v", len(refreshes), h.XetStats())
	}
	for _, r := range refreshes {
		if r.Path != "/api/models/alice/pr/xet-write-token/main" || r.Status != http.StatusOK {
			t.Fatalf("refresh %s -> %d", r.Path, r.Status)
		}
	}
	var via viaOut
	js(t, h, true, "downloadVia", map[string]any{"repo": "alice/pr", "paths": []string{"w.safetensors"}, "revision": "refs/pr/1"}, &via)
	if d := via["w.safetensors"]; !d.Xet || d.SHA256 != sha(data) {
		t.Fatalf("download from the PR = %+v", d)
	}
}
