//go:build interop

package interop

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

type commitOut struct {
	Commit struct {
		OID string `json:"oid"`
		URL string `json:"url"`
	} `json:"commit"`
	PullRequestURL string `json:"pullRequestUrl"`
	HookOutput     string `json:"hookOutput"`
}

// TestJSUploadThenDownload uploads a small repo with uploadFiles (a multipart LFS
// file, a basic LFS file, regular files), then reads it back with downloadFile,
// listFiles, fileDownloadInfo and pathsInfo.
func TestJSUploadThenDownload(t *testing.T) {
	requireJS(t)
	h := startHub(t, hubtest.WithMultipartChunkSize(5000))
	var created struct {
		RepoURL string `json:"repoUrl"`
	}
	js(t, h, true, "createRepo", map[string]any{"repo": "alice/merged"}, &created)
	if created.RepoURL != h.URL()+"/alice/merged" {
		t.Fatalf("createRepo = %+v", created)
	}

	files := map[string][]byte{
		"config.json":       []byte(`{"model_type":"llama"}` + "\n"),
		"model.safetensors": pattern(12345, 1), // > chunk size: multipart, 3 parts
		"extra/small.bin":   pattern(700, 2),   // binary sample: LFS, basic transfer
		"extra/notes.txt":   []byte("plain text\n"),
	}
	var out commitOut
	js(t, h, true, "upload", map[string]any{"repo": "alice/merged", "files": writeFiles(t, files), "title": "Add merged model"}, &out)
	head, _ := h.Head("alice/merged", "main")
	if out.Commit.OID != head || out.Commit.URL != h.URL()+"/alice/merged/commit/"+head {
		t.Fatalf("upload = %+v, head %s", out, head)
	}
	for p, data := range files {
		got, err := h.File("alice/merged", "main", p)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s on the fake: %v", p, err)
		}
	}
	infos, _ := h.Files("alice/merged", "main")
	lfs := map[string]bool{}
	for _, f := range infos {
		lfs[f.Path] = f.LFS
	}
	if !lfs["model.safetensors"] || !lfs["extra/small.bin"] || lfs["config.json"] || lfs["extra/notes.txt"] {
		t.Fatalf("LFS choice = %v", lfs)
	}

	// What the client sent: it offers xet, gets basic/multipart, and falls back to LFS.
	waitIdle(t, h)
	h.mu.Lock()
	b := h.batches[0]
	h.mu.Unlock()
	transfers, _ := b["transfers"].([]any)
	if !slices.Contains(transfers, any("xet")) || !slices.Contains(transfers, any("multipart")) || b["hash_algo"] != "sha_256" {
		t.Fatalf("batch request = %v", b)
	}
	st := h.Stats()
	if st.Requests[hubtest.RoutePartPut] != 3 || st.Requests[hubtest.RouteComplete] != 1 || st.Requests[hubtest.RouteUploadPut] != 1 {
		t.Fatalf("upload requests = %v", st.Requests)
	}
	if st.Requests[hubtest.RouteXetToken] != 0 || st.CDNAuthRejected != 0 {
		t.Fatalf("xet token requests %d, CDN requests with a token %d", st.Requests[hubtest.RouteXetToken], st.CDNAuthRejected)
	}

	// Download everything back.
	var dl map[string]*struct {
		Size   int    `json:"size"`
		SHA256 string `json:"sha256"`
	}
	paths := []string{"config.json", "model.safetensors", "extra/small.bin", "extra/notes.txt", "missing.txt"}
	js(t, h, true, "download", map[string]any{"repo": "alice/merged", "paths": paths}, &dl)
	for p, data := range files {
		if dl[p] == nil || dl[p].SHA256 != sha(data) || dl[p].Size != len(data) {
			t.Errorf("downloadFile %s = %+v", p, dl[p])
		}
	}
	if dl["missing.txt"] != nil {
		t.Errorf("missing file downloaded: %+v", dl["missing.txt"])
	}
	waitIdle(t, h)
	if h.Stats().CDNAuthRejected != 0 {
		t.Fatal("the JS client sent its token to the CDN")
	}

	var list struct {
		Entries []struct {
			Type, Path string
			Size       int64
			LFS        *struct{ OID string } `json:"lfs"`
			LastCommit *struct{ ID string }  `json:"lastCommit"`
		} `json:"entries"`
	}
	js(t, h, true, "listFiles", map[string]any{"repo": "alice/merged", "recursive": true, "expand": true}, &list)
	var got []string
	for _, e := range list.Entries {
		got = append(got, e.Path)
		if e.Path == "model.safetensors" && (e.LFS == nil || e.LFS.OID != sha(files[e.Path]) || e.LastCommit == nil || e.LastCommit.ID != head) {
			t.Errorf("listFiles entry = %+v", e)
		}
	}
	want := []string{".gitattributes", "config.json", "extra", "extra/notes.txt", "extra/small.bin", "model.safetensors"}
	if !slices.Equal(got, want) {
		t.Fatalf("listFiles = %v, want %v", got, want)
	}

	var info struct {
		Size int64  `json:"size"`
		ETag string `json:"etag"`
		URL  string `json:"url"`
		Xet  bool   `json:"xet"`
	}
	js(t, h, true, "fileDownloadInfo", map[string]any{"repo": "alice/merged", "path": "model.safetensors"}, &info)
	if strings.Trim(info.ETag, `"`) != sha(files["model.safetensors"]) || info.Size != 12345 || info.Xet {
		t.Fatalf("fileDownloadInfo(LFS) = %+v", info)
	}
	var raw struct{ Text string }
	js(t, h, true, "downloadRaw", map[string]any{"repo": "alice/merged", "path": "model.safetensors"}, &raw)
	if !strings.Contains(raw.Text, "oid sha256:"+sha(files["model.safetensors"])) {
		t.Fatalf("raw pointer = %q", raw.Text)
	}
	var pi struct {
		Entries []struct{ Path string } `json:"entries"`
	}
	js(t, h, true, "pathsInfo", map[string]any{"repo": "alice/merged", "paths": []string{"config.json", "nope", "extra"}, "expand": true}, &pi)
	if len(pi.Entries) != 2 {
		t.Fatalf("pathsInfo = %+v", pi)
	}
	var model map[string]any
	js(t, h, true, "modelInfo", map[string]any{"name": "alice/merged", "additionalFields": []string{"sha"}}, &model)
	if model["sha"] != head {
		t.Fatalf("modelInfo = %v", model)
	}
}

// TestJSReuploadAndPR re-uploads unchanged files (no bytes move), then opens a PR and
// deletes a file.
func TestJSReuploadAndPR(t *testing.T) {
	requireJS(t)
	h := startHub(t, hubtest.WithMultipartChunkSize(5000))
	files := map[string][]byte{"model.safetensors": pattern(9000, 3), "config.json": []byte("{}\n")}
	list := writeFiles(t, files)
	js(t, h, true, "createRepo", map[string]any{"repo": "alice/m"}, nil)
	var first commitOut
	js(t, h, true, "upload", map[string]any{"repo": "alice/m", "files": list}, &first)
	waitIdle(t, h)
	parts := countRoute(h, hubtest.RoutePartPut)

	// @huggingface/hub 2.17.5 does not drop unchanged files (older versions compared
	// preupload oids): it runs the batch again, gets no actions for the stored object,
	// sends no bytes, and commits the same tree again.
	var again commitOut
	js(t, h, true, "upload", map[string]any{"repo": "alice/m", "files": list}, &again)
	waitIdle(t, h)
	if countRoute(h, hubtest.RoutePartPut) != parts || countRoute(h, hubtest.RouteUploadPut) != 0 {
		t.Fatalf("re-upload of identical files sent bytes again: %v", h.Stats().Requests)
	}
	hist, _ := h.History("alice/m", "main")
	if again.Commit.OID != hist[0].ID || hist[1].ID != first.Commit.OID {
		t.Fatalf("re-upload: %+v, history %+v", again, hist)
	}
	for p, data := range files {
		if got, _ := h.File("alice/m", "main", p); !bytes.Equal(got, data) {
			t.Fatalf("%s changed", p)
		}
	}

	// A PR with a changed weight file: a new object, main untouched.
	changed := writeFiles(t, map[string][]byte{"model.safetensors": pattern(9000, 4)})
	var pr commitOut
	js(t, h, true, "upload", map[string]any{"repo": "alice/m", "files": changed, "isPullRequest": true, "title": "PR"}, &pr)
	if pr.PullRequestURL != h.URL()+"/alice/m/discussions/1" {
		t.Fatalf("pullRequestUrl = %q", pr.PullRequestURL)
	}
	if head, _ := h.Head("alice/m", "main"); head != again.Commit.OID {
		t.Fatal("the PR moved main")
	}
	if got, _ := h.File("alice/m", "refs/pr/1", "model.safetensors"); sha(got) != sha(pattern(9000, 4)) {
		t.Fatal("PR content differs")
	}
	var dl map[string]*struct{ SHA256 string }
	js(t, h, true, "download", map[string]any{"repo": "alice/m", "paths": []string{"model.safetensors"}, "revision": "refs/pr/1"}, &dl)
	if dl["model.safetensors"] == nil || dl["model.safetensors"].SHA256 != sha(pattern(9000, 4)) {
		t.Fatalf("download at refs/pr/1 = %+v", dl)
	}

	js(t, h, true, "deleteFile", map[string]any{"repo": "alice/m", "path": "config.json"}, nil)
	if _, err := h.File("alice/m", "main", "config.json"); err == nil {
		t.Fatal("deleteFile left the file")
	}
}

// TestJSAuth checks private repos and tokens through the client.
func TestJSAuth(t *testing.T) {
	requireJS(t)
	h := startHub(t)
	if _, err := h.Seed("alice/secret", map[string][]byte{"a.txt": []byte("a")}, hubtest.Private()); err != nil {
		t.Fatal(err)
	}
	var who struct {
		Name string `json:"name"`
		Auth struct {
			AccessToken struct{ Role string } `json:"accessToken"`
		} `json:"auth"`
	}
	js(t, h, true, "whoami", nil, &who)
	if who.Name != "alice" || who.Auth.AccessToken.Role != "write" {
		t.Fatalf("whoAmI = %+v", who)
	}
	if err := jsErr(t, h, false, "download", map[string]any{"repo": "alice/secret", "paths": []string{"a.txt"}}, nil); err == nil {
		t.Fatal("anonymous download of a private repo succeeded")
	}
	var dl map[string]*struct{ Size int }
	js(t, h, true, "download", map[string]any{"repo": "alice/secret", "paths": []string{"a.txt"}}, &dl)
	if dl["a.txt"] == nil || dl["a.txt"].Size != 1 {
		t.Fatalf("download with token = %+v", dl)
	}
	var ex struct{ Exists bool }
	js(t, h, true, "fileExists", map[string]any{"repo": "alice/secret", "path": "nope"}, &ex)
	if ex.Exists {
		t.Fatal("fileExists(nope) = true")
	}
	js(t, h, true, "fileExists", map[string]any{"repo": "alice/secret", "path": "a.txt"}, &ex)
	if !ex.Exists {
		t.Fatal("fileExists(a.txt) = false")
	}
}
