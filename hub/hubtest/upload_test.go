package hubtest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

type batchObject struct {
	OID     string `json:"oid"`
	Size    int64  `json:"size"`
	Actions *struct {
		Upload *struct {
			Href      string            `json:"href"`
			Header    map[string]string `json:"header"`
			ExpiresIn int64             `json:"expires_in"`
		} `json:"upload"`
		Verify *struct {
			Href string `json:"href"`
		} `json:"verify"`
	} `json:"actions"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type batchReply struct {
	Transfer string        `json:"transfer"`
	Objects  []batchObject `json:"objects"`
}

// batch posts an LFS upload batch as the JS client does (offering xet too).
func batch(t *testing.T, h *hubtest.Hub, repo, token string, transfers []string, objs ...[]byte) (reply, batchReply) {
	t.Helper()
	var list []map[string]any
	for _, o := range objs {
		list = append(list, map[string]any{"oid": sha(o), "size": len(o)})
	}
	body, _ := json.Marshal(map[string]any{
		"operation": "upload", "transfers": transfers, "hash_algo": "sha_256",
		"ref": map[string]string{"name": "main"}, "objects": list,
	})
	r := do(t, "POST", h.URL()+"/"+repo+".git/info/lfs/objects/batch", token, body,
		"Accept", "application/vnd.git-lfs+json", "Content-Type", "application/vnd.git-lfs+json")
	var br batchReply
	if r.StatusCode == 200 {
		decode(t, r, &br)
	}
	return r, br
}

func TestPreupload(t *testing.T) {
	h := newHub(t, hubtest.WithLFSThreshold(1000))
	head := mustSeed(t, h, "alice/m", map[string][]byte{"config.json": []byte("{}"), "old.safetensors": []byte("weights")})
	r := doJSON(t, "POST", h.URL()+"/api/models/alice/m/preupload/main", tokW, map[string]any{
		"files": []map[string]any{
			{"path": "config.json", "size": 2, "sample": b64([]byte("{}"))},
			{"path": "old.safetensors", "size": 7, "sample": b64([]byte("weights"))},
			{"path": "big.txt", "size": 5000, "sample": b64([]byte("text"))},
			{"path": "bin.dat", "size": 10, "sample": b64([]byte{1, 0, 2})},
			{"path": "notes.log", "size": 3, "sample": b64([]byte("abc"))},
		},
		"gitIgnore": "*.log\n",
	})
	want(t, r, 200)
	var out struct {
		Files []struct {
			Path, UploadMode, OID string
			ShouldIgnore          bool
		} `json:"files"`
		CommitOID string `json:"commitOid"`
	}
	decode(t, r, &out)
	if out.CommitOID != head || len(out.Files) != 5 {
		t.Fatalf("preupload = %+v", out)
	}
	wantModes := map[string]string{"config.json": "regular", "old.safetensors": "lfs", "big.txt": "lfs", "bin.dat": "lfs", "notes.log": "regular"}
	for _, f := range out.Files {
		if f.UploadMode != wantModes[f.Path] {
			t.Errorf("%s: mode %s, want %s", f.Path, f.UploadMode, wantModes[f.Path])
		}
		if (f.Path == "notes.log") != f.ShouldIgnore {
			t.Errorf("%s: shouldIgnore %v", f.Path, f.ShouldIgnore)
		}
	}
	if out.Files[0].OID != gitHash([]byte("{}")) || out.Files[1].OID != sha([]byte("weights")) || out.Files[2].OID != "" {
		t.Fatalf("oids = %+v", out.Files)
	}
	want(t, doJSON(t, "POST", h.URL()+"/api/models/alice/m/preupload/main", tokR, map[string]any{"files": []any{}}), 403)
	wantErr(t, doJSON(t, "POST", h.URL()+"/api/models/alice/m/preupload/nope", tokW, map[string]any{"files": []any{}}), 404, hubtest.CodeRevisionNotFound)
}

func TestUploadBasicFlow(t *testing.T) {
	h := newHub(t, hubtest.WithMultipartChunkSize(1<<20))
	if err := h.CreateRepo("alice/m"); err != nil {
		t.Fatal(err)
	}
	obj := pattern(3000, 6)
	r, br := batch(t, h, "alice/m", tokW, []string{"basic", "multipart", "xet"}, obj)
	want(t, r, 200)
	if br.Transfer != "basic" || len(br.Objects) != 1 || br.Objects[0].Actions == nil || br.Objects[0].Actions.Upload == nil {
		t.Fatalf("batch = %s", r.body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/vnd.git-lfs+json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	up := br.Objects[0].Actions.Upload
	if !strings.HasPrefix(up.Href, h.CDNURL()) || up.Header["chunk_size"] != "" || up.ExpiresIn <= 0 {
		t.Fatalf("upload action = %+v", up)
	}
	// A wrong body is refused and stores nothing.
	want(t, do(t, "PUT", up.Href, "", pattern(3000, 7)), 400)
	put := do(t, "PUT", up.Href, "", obj)
	want(t, put, 200)
	if put.Header.Get("ETag") == "" {
		t.Fatal("PUT without ETag")
	}
	vr := doJSON(t, "POST", br.Objects[0].Actions.Verify.Href, tokW, map[string]any{"oid": sha(obj), "size": len(obj)})
	want(t, vr, 200)
	want(t, doJSON(t, "POST", br.Objects[0].Actions.Verify.Href, tokW, map[string]any{"oid": sha(obj), "size": 1}), 404)

	// Commit it with an inline file, then download both back.
	cfg := []byte(`{"model_type":"llama"}`)
	body := ndjson(t, map[string]any{"summary": "upload", "description": ""}, lfsOp("model.safetensors", obj), fileOp("config.json", cfg))
	cr := do(t, "POST", commitURL(h, "alice/m", "main"), tokW, body, "Content-Type", "application/x-ndjson")
	want(t, cr, 200)
	var out struct {
		Success   bool   `json:"success"`
		CommitOID string `json:"commitOid"`
		CommitURL string `json:"commitUrl"`
		PRURL     string `json:"pullRequestUrl"`
	}
	decode(t, cr, &out)
	head, _ := h.Head("alice/m", "main")
	if !out.Success || out.CommitOID != head || out.CommitURL != h.URL()+"/alice/m/commit/"+head || out.PRURL != "" {
		t.Fatalf("commit reply = %+v (head %s)", out, head)
	}
	loc := do(t, "HEAD", h.URL()+"/alice/m/resolve/main/model.safetensors", tokW, nil).Header.Get("Location")
	if got := do(t, "GET", loc, "", nil); sha(got.body) != sha(obj) {
		t.Fatal("downloaded LFS object differs")
	}
	if got := do(t, "GET", h.URL()+"/alice/m/resolve/main/config.json", tokW, nil); !bytes.Equal(got.body, cfg) {
		t.Fatal("downloaded config differs")
	}
	// .gitattributes already covered *.safetensors: unchanged.
	attrs, _ := h.File("alice/m", "main", ".gitattributes")
	if strings.Count(string(attrs), "model.safetensors") != 0 {
		t.Fatalf(".gitattributes gained a line: %s", attrs)
	}
	// A second batch says the object is stored: no actions.
	_, br = batch(t, h, "alice/m", tokW, []string{"basic"}, obj)
	if br.Objects[0].Actions != nil {
		t.Fatalf("stored object got actions: %+v", br.Objects[0])
	}
	st := h.Stats()
	if st.UploadedBytes != 6000 || st.ObjectUploads[sha(obj)] != 6000 || st.Commits["alice/m@main"] != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if h.PendingUploads() != 0 {
		t.Fatalf("pending uploads = %d", h.PendingUploads())
	}
}

func TestUploadMultipart(t *testing.T) {
	h := newHub(t, hubtest.WithMultipartChunkSize(1000), hubtest.WithVerifyAction(false))
	if err := h.CreateRepo("alice/m"); err != nil {
		t.Fatal(err)
	}
	obj := pattern(3500, 8)
	small := pattern(900, 9)
	r, br := batch(t, h, "alice/m", tokW, []string{"basic", "multipart"}, obj, small)
	want(t, r, 200)
	if br.Transfer != "multipart" || len(br.Objects) != 2 || br.Objects[0].Actions.Verify != nil {
		t.Fatalf("batch = %s", r.body)
	}
	up := br.Objects[0].Actions.Upload
	var keys []string
	for k := range up.Header {
		if k != "chunk_size" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if up.Header["chunk_size"] != "1000" || !slices.Equal(keys, []string{"00001", "00002", "00003", "00004"}) {
		t.Fatalf("multipart header = %v", up.Header)
	}
	if !strings.HasPrefix(up.Href, h.URL()+"/api/complete_multipart?") {
		t.Fatalf("completion href = %s", up.Href)
	}
	// The small object is basic even though multipart was offered.
	if br.Objects[1].Actions.Upload.Header["chunk_size"] != "" {
		t.Fatal("small object got a multipart upload")
	}
	want(t, do(t, "PUT", br.Objects[1].Actions.Upload.Href, "", small), 200)

	// Parts in parallel, as the JS client does.
	etags := make([]string, 4)
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Go(func() {
			n, _ := strconv.Atoi(k)
			part := obj[(n-1)*1000 : min(n*1000, len(obj))]
			pr := do(t, "PUT", up.Header[k], "", part)
			if pr.StatusCode != 200 || pr.Header.Get("ETag") == "" {
				t.Errorf("part %d: %s", n, pr)
			}
			etags[i] = pr.Header.Get("ETag")
		})
	}
	wg.Wait()
	complete := func(parts []map[string]any) reply {
		return doJSON(t, "POST", up.Href, "", map[string]any{"oid": sha(obj), "parts": parts},
			"Accept", "application/vnd.git-lfs+json")
	}
	var parts []map[string]any
	for i, e := range etags {
		parts = append(parts, map[string]any{"partNumber": i + 1, "etag": e})
	}
	bad := slices.Clone(parts)
	bad[2] = map[string]any{"partNumber": 3, "etag": `"nope"`}
	want(t, complete(bad), 400)
	want(t, complete(parts[:3]), 400)
	swapped := []map[string]any{parts[1], parts[0], parts[2], parts[3]}
	want(t, complete(swapped), 400)
	if _, ok := h.Object(sha(obj)); ok {
		t.Fatal("object stored after failed completions")
	}
	want(t, complete(parts), 200)
	if got, ok := h.Object(sha(obj)); !ok || !bytes.Equal(got, obj) {
		t.Fatal("object not stored after completion")
	}
	body := ndjson(t, map[string]any{"summary": "mp"}, lfsOp("big.bin", obj), lfsOp("small.bin", small))
	want(t, do(t, "POST", commitURL(h, "alice/m", "main"), tokW, body), 200)
	got, err := h.File("alice/m", "main", "big.bin")
	if err != nil || sha(got) != sha(obj) {
		t.Fatalf("big.bin at main: %v", err)
	}
	// big.bin and small.bin were not covered by .gitattributes: the commit added them.
	attrs, _ := h.File("alice/m", "main", ".gitattributes")
	if !strings.Contains(string(attrs), "big.bin filter=lfs") && !strings.Contains(string(attrs), "*.bin filter=lfs") {
		t.Fatalf(".gitattributes = %s", attrs)
	}
	if st := h.Stats(); st.ObjectUploads[sha(obj)] != 3500 {
		t.Fatalf("object upload bytes = %d", st.ObjectUploads[sha(obj)])
	}
}

func TestBatchErrors(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", nil)
	obj := []byte("x")
	r, _ := batch(t, h, "alice/m", "", []string{"basic"}, obj)
	want(t, r, 401)
	r, _ = batch(t, h, "alice/m", tokR, []string{"basic"}, obj)
	want(t, r, 403)
	r, _ = batch(t, h, "alice/m", tokBob, []string{"basic"}, obj)
	want(t, r, 403)
	r, _ = batch(t, h, "alice/m", tokW, []string{"xet"}, obj)
	want(t, r, 422)
	r, _ = batch(t, h, "alice/nope", tokW, []string{"basic"}, obj)
	wantErr(t, r, 404, hubtest.CodeRepoNotFound)
	body := []byte(`{"operation":"upload","objects":[{"oid":"XYZ","size":1}]}`)
	r = do(t, "POST", h.URL()+"/alice/m.git/info/lfs/objects/batch", tokW, body)
	want(t, r, 200)
	var br batchReply
	decode(t, r, &br)
	if br.Objects[0].Error == nil || br.Objects[0].Error.Code != 422 {
		t.Fatalf("invalid oid: %s", r.body)
	}
}

func TestCommitRules(t *testing.T) {
	h := newHub(t)
	first := mustSeed(t, h, "alice/m", map[string][]byte{"a.txt": []byte("a"), "d/x": []byte("x"), "d/y": []byte("y")})
	post := func(token, rev string, header map[string]any, ops ...map[string]any) reply {
		return do(t, "POST", commitURL(h, "alice/m", rev), token, ndjson(t, header, ops...), "Content-Type", "application/x-ndjson")
	}
	add := fileOp("b.txt", []byte("b"))
	want(t, post("", "main", map[string]any{"summary": "s"}, add), 401)
	want(t, post(tokR, "main", map[string]any{"summary": "s"}, add), 403)
	want(t, post(tokBob, "main", map[string]any{"summary": "s"}, add), 403)
	want(t, post(tokW, "main", map[string]any{"summary": ""}, add), 400)
	wantErr(t, post(tokW, "nope", map[string]any{"summary": "s"}, add), 404, hubtest.CodeRevisionNotFound)

	// An lfsFile that was never uploaded is refused and changes nothing.
	r := post(tokW, "main", map[string]any{"summary": "s"}, lfsOp("w.safetensors", []byte("never uploaded")))
	want(t, r, 400)
	if head, _ := h.Head("alice/m", "main"); head != first {
		t.Fatal("a refused commit moved main")
	}
	wantErr(t, post(tokW, "main", map[string]any{"summary": "s"}, map[string]any{"key": "deletedFile", "value": map[string]any{"path": "nope"}}), 404, hubtest.CodeEntryNotFound)
	want(t, post(tokW, "main", map[string]any{"summary": "s"}, fileOp("../evil", []byte("x"))), 400)

	// parentCommit: the head (full or short) passes, anything else is 412.
	want(t, post(tokW, "main", map[string]any{"summary": "s", "parentCommit": first}, add), 200)
	r = post(tokW, "main", map[string]any{"summary": "s", "parentCommit": first}, fileOp("c.txt", []byte("c")))
	want(t, r, 412)
	head, _ := h.Head("alice/m", "main")
	want(t, post(tokW, "main", map[string]any{"summary": "s", "parentCommit": head[:7]},
		map[string]any{"key": "deletedFolder", "value": map[string]any{"path": "d/"}},
		map[string]any{"key": "deletedFile", "value": map[string]any{"path": "a.txt"}},
		map[string]any{"key": "file", "value": map[string]any{"path": "./u.txt", "content": "utf8 text", "encoding": "utf-8"}},
	), 200)
	files, _ := h.Files("alice/m", "main")
	var names []string
	for _, f := range files {
		names = append(names, f.Path)
	}
	if !slices.Equal(names, []string{".gitattributes", "b.txt", "u.txt"}) {
		t.Fatalf("files = %v", names)
	}
	hist, _ := h.History("alice/m", "main")
	if len(hist) != 4 || hist[0].Author != "alice" || hist[3].Title != "initial commit" {
		t.Fatalf("history = %+v", hist)
	}
	if st := h.Stats(); st.Commits["alice/m@main"] != 2 {
		t.Fatalf("commits counted = %v", st.Commits)
	}
}

func TestCommitInlineLimit(t *testing.T) {
	h := newHub(t, hubtest.WithMaxRegularSize(10))
	mustSeed(t, h, "alice/m", map[string][]byte{"big.txt": pattern(100, 1)}, hubtest.AsRegular("big.txt")) // Seed may
	body := ndjson(t, map[string]any{"summary": "s"}, fileOp("x.txt", pattern(11, 1)))
	want(t, do(t, "POST", commitURL(h, "alice/m", "main"), tokW, body), 400)
}

func TestPullRequests(t *testing.T) {
	h := newHub(t)
	base := mustSeed(t, h, "alice/m", map[string][]byte{"a.txt": []byte("a")})
	body := ndjson(t, map[string]any{"summary": "pr"}, fileOp("a.txt", []byte("changed")))
	r := do(t, "POST", commitURL(h, "alice/m", "main")+"?create_pr=1", tokW, body)
	want(t, r, 200)
	var out struct {
		CommitOID string `json:"commitOid"`
		PRURL     string `json:"pullRequestUrl"`
	}
	decode(t, r, &out)
	if out.PRURL != h.URL()+"/alice/m/discussions/1" {
		t.Fatalf("pullRequestUrl = %q", out.PRURL)
	}
	if head, _ := h.Head("alice/m", "main"); head != base {
		t.Fatal("create_pr moved main")
	}
	if prs := h.PullRequests("alice/m"); prs[1] != out.CommitOID {
		t.Fatalf("PRs = %v", prs)
	}
	// The PR ref resolves (revision percent-encoded as clients send it).
	g := do(t, "GET", h.URL()+"/alice/m/resolve/refs%2Fpr%2F1/a.txt", "", nil)
	if string(g.body) != "changed" || g.Header.Get("X-Repo-Commit") != out.CommitOID {
		t.Fatalf("refs/pr/1: %s", g)
	}
	// Committing to refs/pr/1 adds to the PR.
	body = ndjson(t, map[string]any{"summary": "more"}, fileOp("b.txt", []byte("b")))
	r = do(t, "POST", commitURL(h, "alice/m", "refs%2Fpr%2F1"), tokW, body)
	want(t, r, 200)
	out.PRURL = ""
	decode(t, r, &out)
	if out.PRURL != "" || h.PullRequests("alice/m")[1] != out.CommitOID {
		t.Fatalf("commit to PR: %+v", out)
	}
	// A second PR based on an older parent.
	body = ndjson(t, map[string]any{"summary": "pr2", "parentCommit": base}, fileOp("c.txt", []byte("c")))
	r = do(t, "POST", commitURL(h, "alice/m", "main")+"?create_pr=1", tokW, body)
	decode(t, r, &out)
	hist, _ := h.History("alice/m", "refs/pr/2")
	if !strings.HasSuffix(out.PRURL, "/discussions/2") || hist[1].ID != base {
		t.Fatalf("second PR: %+v, history %+v", out, hist)
	}
	if st := h.Stats(); st.Commits["alice/m@refs/pr/1"] != 2 || st.Commits["alice/m@refs/pr/2"] != 1 {
		t.Fatalf("commits = %v", st.Commits)
	}
	var refs struct {
		PRs []struct{ Name, Ref string } `json:"pullRequests"`
	}
	decode(t, do(t, "GET", h.URL()+"/api/models/alice/m/refs?include_prs=1", "", nil), &refs)
	if len(refs.PRs) != 2 || refs.PRs[1].Ref != "refs/pr/2" {
		t.Fatalf("refs = %+v", refs)
	}
}

// TestConcurrentUploads runs many flows at once; -race checks the locking.
func TestConcurrentUploads(t *testing.T) {
	h := newHub(t, hubtest.WithMultipartChunkSize(500))
	mustSeed(t, h, "alice/m", nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			obj := pattern(1200+i, byte(i))
			_, br := batch(t, h, "alice/m", tokW, []string{"basic", "multipart"}, obj)
			up := br.Objects[0].Actions.Upload
			var parts []map[string]any
			for n := 1; n <= 3; n++ {
				pr := do(t, "PUT", up.Header[fmt.Sprintf("%05d", n)], "", obj[(n-1)*500:min(n*500, len(obj))])
				parts = append(parts, map[string]any{"partNumber": n, "etag": pr.Header.Get("ETag")})
			}
			want(t, doJSON(t, "POST", up.Href, "", map[string]any{"oid": sha(obj), "parts": parts}), 200)
			for {
				head, _ := h.Head("alice/m", "main")
				body := ndjson(t, map[string]any{"summary": "c", "parentCommit": head}, lfsOp(fmt.Sprintf("f%d.bin", i), obj))
				r := do(t, "POST", commitURL(h, "alice/m", "main"), tokW, body)
				if r.StatusCode == 200 {
					break
				}
				if r.StatusCode != 412 {
					t.Errorf("commit: %s", r)
					return
				}
			}
		})
	}
	wg.Wait()
	files, _ := h.Files("alice/m", "main")
	if len(files) != 9 {
		t.Fatalf("files = %d, want 9", len(files))
	}
}

func TestBatchDownload(t *testing.T) {
	h := newHub(t)
	obj := pattern(700, 11)
	mustSeed(t, h, "alice/m", map[string][]byte{"w.safetensors": obj}, hubtest.Private())
	body, _ := json.Marshal(map[string]any{"operation": "download", "objects": []map[string]any{
		{"oid": sha(obj), "size": len(obj)}, {"oid": sha([]byte("none")), "size": 4},
	}})
	u := h.URL() + "/alice/m.git/info/lfs/objects/batch"
	wantErr(t, do(t, "POST", u, "", body), 401, hubtest.CodeRepoNotFound)
	r := do(t, "POST", u, tokR, body)
	want(t, r, 200)
	var out struct {
		Objects []struct {
			Actions *struct {
				Download struct{ Href string } `json:"download"`
			} `json:"actions"`
			Error *struct{ Code int } `json:"error"`
		} `json:"objects"`
	}
	decode(t, r, &out)
	if out.Objects[0].Actions == nil || out.Objects[1].Error == nil || out.Objects[1].Error.Code != 404 {
		t.Fatalf("download batch = %s", r.body)
	}
	if g := do(t, "GET", out.Objects[0].Actions.Download.Href, "", nil); !bytes.Equal(g.body, obj) {
		t.Fatal("download action served other bytes")
	}
}
