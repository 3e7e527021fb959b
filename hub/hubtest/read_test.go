package hubtest_test

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestWhoami(t *testing.T) {
	h := newHub(t)
	var who struct {
		Name string `json:"name"`
		Orgs []struct {
			Name string `json:"name"`
		} `json:"orgs"`
		Auth struct {
			AccessToken struct {
				Role string `json:"role"`
			} `json:"accessToken"`
		} `json:"auth"`
	}
	r := do(t, "GET", h.URL()+"/api/whoami-v2", tokW, nil)
	want(t, r, 200)
	decode(t, r, &who)
	if who.Name != "alice" || who.Auth.AccessToken.Role != "write" || len(who.Orgs) != 1 || who.Orgs[0].Name != "acme" {
		t.Fatalf("whoami = %+v", who)
	}
	r = do(t, "GET", h.URL()+"/api/whoami-v2", tokR, nil)
	decode(t, r, &who)
	if who.Auth.AccessToken.Role != "read" {
		t.Fatalf("read token role = %q", who.Auth.AccessToken.Role)
	}
	want(t, do(t, "GET", h.URL()+"/api/whoami-v2", "", nil), 401)
	r = do(t, "GET", h.URL()+"/api/whoami-v2", "hf_nope", nil)
	want(t, r, 401)
	if !strings.Contains(r.Header.Get("X-Error-Message"), "Invalid credentials") {
		t.Fatalf("unknown token: %s", r)
	}
}

func TestCreateRepo(t *testing.T) {
	h := newHub(t)
	u := h.URL() + "/api/repos/create"
	r := doJSON(t, "POST", u, tokW, map[string]any{"name": "m", "type": "model", "private": true})
	want(t, r, 200)
	var out struct{ URL, Name, ID string }
	decode(t, r, &out)
	if out.Name != "alice/m" || out.URL != h.URL()+"/alice/m" || len(out.ID) != 24 {
		t.Fatalf("create = %+v", out)
	}
	r = doJSON(t, "POST", u, tokW, map[string]any{"name": "m"})
	want(t, r, 409)
	decode(t, r, &out)
	if out.URL != h.URL()+"/alice/m" {
		t.Fatalf("409 body has no url: %s", r)
	}
	want(t, doJSON(t, "POST", u, "", map[string]any{"name": "x"}), 401)
	want(t, doJSON(t, "POST", u, tokR, map[string]any{"name": "x"}), 403)
	want(t, doJSON(t, "POST", u, tokBob, map[string]any{"name": "x", "organization": "acme"}), 403)
	want(t, doJSON(t, "POST", u, tokW, map[string]any{"name": "x", "organization": "acme", "visibility": "private"}), 200)
	want(t, doJSON(t, "POST", u, tokW, map[string]any{"name": "d", "type": "dataset"}), 200)

	// The new repo has the Hub's initial commit with .gitattributes, and is private.
	files, err := h.Files("alice/m", "main")
	if err != nil || len(files) != 1 || files[0].Path != ".gitattributes" {
		t.Fatalf("files = %v, %v", files, err)
	}
	wantErr(t, do(t, "GET", h.URL()+"/api/models/alice/m", "", nil), 401, hubtest.CodeRepoNotFound)
	wantErr(t, do(t, "GET", h.URL()+"/api/models/alice/m", tokBob, nil), 404, hubtest.CodeRepoNotFound)
	want(t, do(t, "GET", h.URL()+"/api/models/alice/m", tokR, nil), 200)
	want(t, do(t, "GET", h.URL()+"/api/datasets/alice/d", "", nil), 200)
	want(t, do(t, "GET", h.URL()+"/api/models/acme/x", tokW, nil), 200)
}

func TestModelInfo(t *testing.T) {
	h := newHub(t, hubtest.WithLFSThreshold(100))
	big := pattern(300, 1)
	sha1st := mustSeed(t, h, "alice/m", map[string][]byte{"config.json": []byte(`{"a":1}`), "w.bin": big}, hubtest.WithTag("v1"))
	sha2nd := mustSeed(t, h, "alice/m", map[string][]byte{"README.md": []byte("hi")})

	var info struct {
		ID       string `json:"id"`
		SHA      string `json:"sha"`
		Private  bool   `json:"private"`
		Siblings []struct {
			Rfilename string `json:"rfilename"`
			Size      int64  `json:"size"`
			BlobID    string `json:"blobId"`
			LFS       *struct {
				SHA256      string `json:"sha256"`
				Size        int64  `json:"size"`
				PointerSize int    `json:"pointerSize"`
			} `json:"lfs"`
		} `json:"siblings"`
	}
	r := do(t, "GET", h.URL()+"/api/models/alice/m?blobs=true", "", nil)
	want(t, r, 200)
	decode(t, r, &info)
	if info.ID != "alice/m" || info.SHA != sha2nd || len(info.Siblings) != 4 {
		t.Fatalf("info = %+v", info)
	}
	for _, s := range info.Siblings {
		if s.Rfilename == "w.bin" && (s.LFS == nil || s.LFS.SHA256 != sha(big) || s.LFS.Size != 300 || s.Size != 300) {
			t.Fatalf("w.bin sibling = %+v", s)
		}
		if s.Rfilename == "config.json" && (s.LFS != nil || s.BlobID != gitHash([]byte(`{"a":1}`))) {
			t.Fatalf("config.json sibling = %+v", s)
		}
	}
	for rev, wantSHA := range map[string]string{"main": sha2nd, "v1": sha1st, sha1st: sha1st, "HEAD": sha2nd, "refs%2Fheads%2Fmain": sha2nd} {
		r := do(t, "GET", h.URL()+"/api/models/alice/m/revision/"+rev, "", nil)
		want(t, r, 200)
		decode(t, r, &info)
		if info.SHA != wantSHA {
			t.Errorf("revision %s: sha %s, want %s", rev, info.SHA, wantSHA)
		}
	}
	wantErr(t, do(t, "GET", h.URL()+"/api/models/alice/m/revision/nope", "", nil), 404, hubtest.CodeRevisionNotFound)
	wantErr(t, do(t, "GET", h.URL()+"/api/models/alice/none", "", nil), 401, hubtest.CodeRepoNotFound)

	// expand selects fields; xetEnabled says the repo is plain LFS.
	r = do(t, "GET", h.URL()+"/api/models/alice/m?expand=sha&expand=xetEnabled", "", nil)
	var sel map[string]any
	decode(t, r, &sel)
	if sel["sha"] != sha2nd || sel["xetEnabled"] != false || sel["siblings"] != nil {
		t.Fatalf("expand = %v", sel)
	}
}

type entry struct {
	Type string `json:"type"`
	OID  string `json:"oid"`
	Size int64  `json:"size"`
	Path string `json:"path"`
	LFS  *struct {
		OID         string `json:"oid"`
		Size        int64  `json:"size"`
		PointerSize int    `json:"pointerSize"`
	} `json:"lfs"`
	LastCommit *struct {
		ID    string `json:"id"`
		Title string `json:"title"`
	} `json:"lastCommit"`
}

// listAll follows Link rel="next" and returns every entry and the number of pages.
func listAll(t *testing.T, u, token string) ([]entry, int) {
	t.Helper()
	var all []entry
	pages := 0
	linkRE := regexp.MustCompile(`<([^>]+)>;\s*rel="next"`)
	for u != "" {
		r := do(t, "GET", u, token, nil)
		want(t, r, 200)
		var page []entry
		decode(t, r, &page)
		all = append(all, page...)
		pages++
		u = ""
		if m := linkRE.FindStringSubmatch(r.Header.Get("Link")); m != nil {
			u = m[1]
		}
		if pages > 100 {
			t.Fatal("pagination does not end")
		}
	}
	return all, pages
}

func paths(es []entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Path)
	}
	return out
}

func TestTreePagination(t *testing.T) {
	h := newHub(t, hubtest.WithTreePageSize(3, 2), hubtest.WithLFSThreshold(50))
	first := mustSeed(t, h, "alice/m", map[string][]byte{
		"a.txt": []byte("a"), "b/c.txt": []byte("c"), "b/d/e.txt": []byte("e"), "f.bin": pattern(60, 2),
	}, hubtest.Message("first"))
	second := mustSeed(t, h, "alice/m", map[string][]byte{"b/d/e.txt": []byte("E")}, hubtest.Message("second"))
	base := h.URL() + "/api/models/alice/m/tree/main"

	all, pages := listAll(t, base+"?recursive=true", "")
	wantPaths := []string{".gitattributes", "a.txt", "b", "b/c.txt", "b/d", "b/d/e.txt", "f.bin"}
	if !slices.Equal(paths(all), wantPaths) || pages != 3 {
		t.Fatalf("recursive listing = %v in %d pages, want %v in 3", paths(all), pages, wantPaths)
	}
	for _, e := range all {
		switch e.Path {
		case "f.bin":
			if e.LFS == nil || e.LFS.OID != sha(pattern(60, 2)) || e.Size != 60 || e.Type != "file" {
				t.Errorf("f.bin = %+v", e)
			}
		case "a.txt":
			if e.OID != gitHash([]byte("a")) || e.LFS != nil {
				t.Errorf("a.txt = %+v", e)
			}
		case "b", "b/d":
			if e.Type != "directory" || len(e.OID) != 40 {
				t.Errorf("%s = %+v", e.Path, e)
			}
		}
	}
	top, _ := listAll(t, base, "")
	if !slices.Equal(paths(top), []string{".gitattributes", "a.txt", "b", "f.bin"}) {
		t.Fatalf("top level = %v", paths(top))
	}
	sub, _ := listAll(t, base+"/b", "")
	if !slices.Equal(paths(sub), []string{"b/c.txt", "b/d"}) {
		t.Fatalf("b/ = %v", paths(sub))
	}
	// Python sends the sub path fully escaped.
	if sub2, _ := listAll(t, base+"/b%2Fd", ""); !slices.Equal(paths(sub2), []string{"b/d/e.txt"}) {
		t.Fatalf("b%%2Fd = %v", paths(sub2))
	}
	// expand adds lastCommit: the newest commit that changed the entry.
	exp, pages := listAll(t, base+"?recursive=1&expand=true", "")
	if pages != 4 {
		t.Fatalf("expand pages = %d, want 4 (page size 2)", pages)
	}
	for _, e := range exp {
		wantID := first
		if e.Path == "b" || e.Path == "b/d" || e.Path == "b/d/e.txt" {
			wantID = second
		}
		if e.Path == ".gitattributes" {
			continue
		}
		if e.LastCommit == nil || e.LastCommit.ID != wantID {
			t.Errorf("%s lastCommit = %+v, want %s", e.Path, e.LastCommit, wantID)
		}
	}
	// An old revision lists the old tree.
	old, _ := listAll(t, h.URL()+"/api/models/alice/m/tree/"+first+"/b/d", "")
	if len(old) != 1 || old[0].OID != gitHash([]byte("e")) {
		t.Fatalf("old tree = %+v", old)
	}
	wantErr(t, do(t, "GET", base+"/nope", "", nil), 404, hubtest.CodeEntryNotFound)
	wantErr(t, do(t, "GET", h.URL()+"/api/models/alice/m/tree/nope", "", nil), 404, hubtest.CodeRevisionNotFound)
}

func TestPathsInfo(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", map[string][]byte{"a.txt": []byte("a"), "d/b.safetensors": []byte("bbbb")})
	u := h.URL() + "/api/models/alice/m/paths-info/main"

	r := doJSON(t, "POST", u, "", map[string]any{"paths": []string{"a.txt", "missing", "d", "d/b.safetensors"}, "expand": true})
	want(t, r, 200)
	var es []entry
	decode(t, r, &es)
	if !slices.Equal(paths(es), []string{"a.txt", "d", "d/b.safetensors"}) {
		t.Fatalf("paths-info = %v", paths(es))
	}
	if es[2].LFS == nil || es[2].LFS.OID != sha([]byte("bbbb")) || es[0].LastCommit == nil {
		t.Fatalf("entries = %+v", es)
	}
	// Python's form body.
	form := url.Values{"paths": {"a.txt", "d/b.safetensors"}, "expand": {"False"}}
	r = do(t, "POST", u, "", []byte(form.Encode()), "Content-Type", "application/x-www-form-urlencoded")
	want(t, r, 200)
	es = nil
	decode(t, r, &es)
	if !slices.Equal(paths(es), []string{"a.txt", "d/b.safetensors"}) || es[0].LastCommit != nil {
		t.Fatalf("form paths-info = %+v", es)
	}
}

func TestRefsAndCommits(t *testing.T) {
	h := newHub(t, hubtest.WithTreePageSize(2, 2))
	mustSeed(t, h, "alice/m", map[string][]byte{"a": []byte("1")}, hubtest.WithTag("v1"))
	mustSeed(t, h, "alice/m", map[string][]byte{"a": []byte("2")}, hubtest.OnBranch("dev"))
	mustSeed(t, h, "alice/m", map[string][]byte{"a": []byte("3")})
	var refs struct {
		Branches []struct{ Name, Ref, TargetCommit string } `json:"branches"`
		Tags     []struct{ Name string }                    `json:"tags"`
	}
	r := do(t, "GET", h.URL()+"/api/models/alice/m/refs", "", nil)
	want(t, r, 200)
	decode(t, r, &refs)
	if len(refs.Branches) != 2 || refs.Branches[0].Name != "dev" || refs.Branches[1].Ref != "refs/heads/main" || len(refs.Tags) != 1 {
		t.Fatalf("refs = %+v", refs)
	}
	head, _ := h.Head("alice/m", "main")
	if refs.Branches[1].TargetCommit != head {
		t.Fatalf("main target %s, head %s", refs.Branches[1].TargetCommit, head)
	}
	all, pages := listAll(t, h.URL()+"/api/models/alice/m/commits/main", "")
	if len(all) != 3 || pages != 2 { // initial, v1 seed, third seed
		t.Fatalf("commits = %d in %d pages", len(all), pages)
	}
}

func TestResolveRegular(t *testing.T) {
	h := newHub(t)
	data := []byte("hello, regular world\n")
	sha := mustSeed(t, h, "alice/m", map[string][]byte{"dir/hello.txt": data})
	u := h.URL() + "/alice/m/resolve/main/dir/hello.txt"

	r := do(t, "HEAD", u, "", nil, "Accept-Encoding", "identity")
	want(t, r, 200)
	if unquote(r.Header.Get("ETag")) != gitHash(data) || r.Header.Get("X-Repo-Commit") != sha || r.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD headers = %v", r.Header)
	}
	r = do(t, "GET", u, "", nil)
	if !bytes.Equal(r.body, data) {
		t.Fatalf("GET body = %q", r.body)
	}
	r = do(t, "GET", u, "", nil, "Range", "bytes=7-12")
	want(t, r, 206)
	if string(r.body) != "regula" || r.Header.Get("Content-Range") != "bytes 7-12/21" {
		t.Fatalf("range = %q %s", r.body, r.Header.Get("Content-Range"))
	}
	// By commit, and /raw/ for a regular file is the same bytes.
	r = do(t, "GET", h.URL()+"/alice/m/resolve/"+sha+"/dir/hello.txt", "", nil)
	want(t, r, 200)
	r = do(t, "GET", h.URL()+"/alice/m/raw/main/dir/hello.txt", "", nil)
	if !bytes.Equal(r.body, data) {
		t.Fatalf("raw = %q", r.body)
	}
	r = do(t, "GET", h.URL()+"/alice/m/resolve/main/nope.txt", "", nil)
	wantErr(t, r, 404, hubtest.CodeEntryNotFound)
	if r.Header.Get("X-Repo-Commit") != sha {
		t.Fatalf("EntryNotFound without X-Repo-Commit")
	}
	wantErr(t, do(t, "GET", h.URL()+"/alice/m/resolve/nope/dir/hello.txt", "", nil), 404, hubtest.CodeRevisionNotFound)
}

func TestResolveLFS(t *testing.T) {
	h := newHub(t)
	data := pattern(5000, 3)
	commit := mustSeed(t, h, "alice/m", map[string][]byte{"model.safetensors": data})
	u := h.URL() + "/alice/m/resolve/main/model.safetensors"

	for _, method := range []string{"HEAD", "GET"} {
		r := do(t, method, u, tokW, nil)
		want(t, r, 302)
		loc := r.Header.Get("Location")
		if !strings.HasPrefix(loc, h.CDNURL()+"/") || unquote(r.Header.Get("X-Linked-Etag")) != sha(data) ||
			r.Header.Get("X-Linked-Size") != "5000" || r.Header.Get("X-Repo-Commit") != commit {
			t.Fatalf("%s redirect headers = %v", method, r.Header)
		}
		if !strings.Contains(loc, "X-Amz-Signature=") || !strings.Contains(loc, "X-Amz-Expires=") {
			t.Fatalf("Location not signed: %s", loc)
		}
		// The CDN serves it without a token.
		g := do(t, "GET", loc, "", nil)
		want(t, g, 200)
		if sha(g.body) != sha(data) || unquote(g.Header.Get("ETag")) != sha(data) {
			t.Fatalf("CDN body sha %s, etag %s", sha(g.body), g.Header.Get("ETag"))
		}
	}
	// raw is the LFS pointer.
	r := do(t, "GET", h.URL()+"/alice/m/raw/main/model.safetensors", "", nil)
	want(t, r, 200)
	wantPtr := "version https://git-lfs.github.com/spec/v1\noid sha256:" + sha(data) + "\nsize 5000\n"
	if string(r.body) != wantPtr || unquote(r.Header.Get("ETag")) != gitHash([]byte(wantPtr)) {
		t.Fatalf("raw pointer = %q etag %s", r.body, r.Header.Get("ETag"))
	}
	st := h.Stats()
	if st.FileBytes[sha(data)] != 10000 || st.BytesServed[hubtest.HostCDN] != 10000 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestAccessRules(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/priv", map[string][]byte{"a.txt": []byte("a")}, hubtest.Private())
	mustSeed(t, h, "acme/orgpriv", map[string][]byte{"a.txt": []byte("a")}, hubtest.Private())
	mustSeed(t, h, "alice/gated", map[string][]byte{"a.txt": []byte("a")}, hubtest.Gated())

	for _, tc := range []struct {
		url, token string
		status     int
		code       string
	}{
		// Private and missing look the same.
		{"/api/models/alice/priv", "", 401, hubtest.CodeRepoNotFound},
		{"/api/models/alice/missing", "", 401, hubtest.CodeRepoNotFound},
		{"/api/models/alice/priv", tokBob, 404, hubtest.CodeRepoNotFound},
		{"/api/models/alice/missing", tokBob, 404, hubtest.CodeRepoNotFound},
		{"/alice/priv/resolve/main/a.txt", "", 401, hubtest.CodeRepoNotFound},
		{"/alice/priv/resolve/main/a.txt", tokBob, 404, hubtest.CodeRepoNotFound},
		{"/alice/priv/resolve/main/a.txt", tokR, 200, ""},
		{"/acme/orgpriv/resolve/main/a.txt", tokR, 200, ""},
		{"/acme/orgpriv/resolve/main/a.txt", tokBob, 404, hubtest.CodeRepoNotFound},
		{"/api/models/alice/priv/tree/main", tokBob, 404, hubtest.CodeRepoNotFound},
		// Gated: metadata is public, contents are not.
		{"/api/models/alice/gated", "", 200, ""},
		{"/alice/gated/resolve/main/a.txt", "", 401, hubtest.CodeGatedRepo},
		{"/alice/gated/resolve/main/a.txt", tokBob, 403, hubtest.CodeGatedRepo},
		{"/alice/gated/resolve/main/a.txt", tokW, 200, ""},
		// An unknown token is refused even on public repos.
		{"/api/models/alice/gated", "hf_unknown", 401, ""},
	} {
		r := do(t, "GET", h.URL()+tc.url, tc.token, nil)
		if r.StatusCode != tc.status || r.Header.Get("X-Error-Code") != tc.code {
			t.Errorf("GET %s (token %q) = %s, want %d %s", tc.url, tc.token, r, tc.status, tc.code)
		}
	}
	if err := h.GrantAccess("alice/gated", "bob"); err != nil {
		t.Fatal(err)
	}
	want(t, do(t, "GET", h.URL()+"/alice/gated/resolve/main/a.txt", tokBob, nil), 200)
}

func TestCDNRange(t *testing.T) {
	h := newHub(t)
	data := []byte("0123456789")
	mustSeed(t, h, "alice/m", map[string][]byte{"x.bin": data, "empty.bin": {}}, hubtest.AsLFS("x.bin", "empty.bin"))
	loc := func(p string) string {
		r := do(t, "HEAD", h.URL()+"/alice/m/resolve/main/"+p, "", nil)
		want(t, r, 302)
		return r.Header.Get("Location")
	}
	x, empty := loc("x.bin"), loc("empty.bin")
	for _, tc := range []struct {
		url, rng   string
		status     int
		body, crng string
	}{
		{x, "", 200, "0123456789", ""},
		{x, "bytes=0-3", 206, "0123", "bytes 0-3/10"},
		{x, "bytes=5-", 206, "56789", "bytes 5-9/10"},
		{x, "bytes=-3", 206, "789", "bytes 7-9/10"},
		{x, "bytes=-30", 206, "0123456789", "bytes 0-9/10"},
		{x, "bytes=8-100", 206, "89", "bytes 8-9/10"},
		{x, "bytes=9-9", 206, "9", "bytes 9-9/10"},
		{x, "bytes=10-", 416, "", "bytes */10"},
		{x, "bytes=-0", 416, "", "bytes */10"},
		{x, "bytes=5-2", 200, "0123456789", ""},     // invalid: ignored
		{x, "bytes=0-1,3-4", 200, "0123456789", ""}, // several ranges: whole object, as S3
		{x, "items=0-1", 200, "0123456789", ""},     // other unit: ignored
		{empty, "", 200, "", ""},
		{empty, "bytes=0-", 416, "", "bytes */0"},
	} {
		var hdr []string
		if tc.rng != "" {
			hdr = []string{"Range", tc.rng}
		}
		r := do(t, "GET", tc.url, "", nil, hdr...)
		if r.StatusCode != tc.status || string(r.body) != tc.body || r.Header.Get("Content-Range") != tc.crng {
			t.Errorf("Range %q: %d %q %q, want %d %q %q", tc.rng, r.StatusCode, r.body, r.Header.Get("Content-Range"), tc.status, tc.body, tc.crng)
		}
		if r.StatusCode != 416 && r.ContentLength != int64(len(tc.body)) {
			t.Errorf("Range %q: Content-Length %d", tc.rng, r.ContentLength)
		}
	}
}

func TestCDNRejectsAuthorization(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", map[string][]byte{"m.safetensors": pattern(100, 4)})
	loc := do(t, "HEAD", h.URL()+"/alice/m/resolve/main/m.safetensors", tokW, nil).Header.Get("Location")
	r := do(t, "GET", loc, tokW, nil)
	want(t, r, 403)
	if !strings.Contains(string(r.body), "Only one auth mechanism allowed") {
		t.Fatalf("body = %s", r.body)
	}
	want(t, do(t, "GET", loc, "", nil), 200)
	st := h.Stats()
	if st.CDNAuthRejected != 1 {
		t.Fatalf("CDNAuthRejected = %d", st.CDNAuthRejected)
	}
	var authed int
	for _, q := range h.Requests() {
		if q.Host == hubtest.HostCDN && q.Auth {
			authed++
		}
	}
	if authed != 1 {
		t.Fatalf("request log has %d CDN requests with Authorization", authed)
	}
	// Go's http.Client keeps Authorization on redirects to the same host name, whatever
	// the port; Start puts the CDN on another address so a leak shows.
	if hostOf(h.URL()) == hostOf(h.CDNURL()) {
		t.Logf("CDN shares the Hub's host name on this system (%s)", hostOf(h.URL()))
	}
}

func hostOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return ""
	}
	return p.Hostname()
}

func TestSignedURLs(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	h := newHub(t, hubtest.WithClock(clock), hubtest.WithURLExpiry(time.Minute))
	mustSeed(t, h, "alice/m", map[string][]byte{"m.safetensors": pattern(100, 5)})
	loc := do(t, "HEAD", h.URL()+"/alice/m/resolve/main/m.safetensors", "", nil).Header.Get("Location")
	want(t, do(t, "GET", loc, "", nil), 200)

	tampered := strings.Replace(loc, "X-Amz-Expires=", "X-Amz-Expires=9", 1)
	r := do(t, "GET", tampered, "", nil)
	want(t, r, 403)
	if !strings.Contains(string(r.body), "SignatureDoesNotMatch") {
		t.Fatalf("tampered: %s", r.body)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	r = do(t, "GET", loc, "", nil)
	want(t, r, 403)
	if !strings.Contains(string(r.body), "Request has expired") {
		t.Fatalf("expired: %s", r.body)
	}
	// A fresh URL works; ExpireURLs kills it.
	loc = do(t, "HEAD", h.URL()+"/alice/m/resolve/main/m.safetensors", "", nil).Header.Get("Location")
	want(t, do(t, "GET", loc, "", nil), 200)
	h.ExpireURLs()
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	want(t, do(t, "GET", loc, "", nil), 403)
}

func TestUnknownRoutes(t *testing.T) {
	h := newHub(t)
	want(t, do(t, "GET", h.URL()+"/api/nothing", "", nil), 404)
	want(t, do(t, "GET", h.CDNURL()+"/elsewhere", "", nil), 404)
	want(t, do(t, "DELETE", h.URL()+"/api/whoami-v2", "", nil), 405)
	if h.Stats().Requests[hubtest.RouteUnknown] != 2 {
		t.Fatalf("unknown requests = %d", h.Stats().Requests[hubtest.RouteUnknown])
	}
}
