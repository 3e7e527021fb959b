package hubtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"
)

const (
	xtokW = "hf_xet_alice_write"
	xtokR = "hf_xet_alice_read"
	xtokB = "hf_xet_bob_write"
)

func newXetHub(t *testing.T, opts ...Option) *Hub {
	t.Helper()
	base := []Option{WithXet(), WithToken(xtokW, "alice", ScopeWrite), WithToken(xtokR, "alice", ScopeRead),
		WithToken(xtokB, "bob", ScopeWrite)}
	h := New(append(base, opts...)...).Start(t)
	if _, err := h.Seed("alice/model", map[string][]byte{"README.md": []byte("hi\n")}); err != nil {
		t.Fatal(err)
	}
	return h
}

type xreply struct {
	status int
	header http.Header
	body   []byte
}

func (r xreply) String() string { return fmt.Sprintf("%d %q", r.status, r.body) }

func xdo(t *testing.T, method, url, token string, body []byte, hdr ...string) xreply {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return xreply{resp.StatusCode, resp.Header, b}
}

func xwant(t *testing.T, r xreply, status int, contains ...string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("got %s, want status %d", r, status)
	}
	for _, s := range contains {
		if !strings.Contains(string(r.body), s) {
			t.Fatalf("reply %s does not say %q", r, s)
		}
	}
}

// casToken gets a CAS token from the Hub's token route.
func casToken(t *testing.T, h *Hub, hubToken, kind string) string {
	t.Helper()
	r := xdo(t, "GET", h.URL()+"/api/models/alice/model/xet-"+kind+"-token/main", hubToken, nil)
	xwant(t, r, http.StatusOK)
	var out struct {
		AccessToken string `json:"accessToken"`
		Exp         int64  `json:"exp"`
		CasURL      string `json:"casUrl"`
	}
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatal(err)
	}
	if out.AccessToken == "" || out.CasURL != h.CASURL() || out.Exp <= time.Now().Unix() {
		t.Fatalf("token answer %s: want accessToken, casUrl %s and a future exp", r, h.CASURL())
	}
	if r.header.Get("X-Xet-Access-Token") != out.AccessToken || r.header.Get("X-Xet-Cas-Url") != out.CasURL {
		t.Fatalf("token headers %v do not repeat the JSON", r.header)
	}
	return out.AccessToken
}

func postXorb(t *testing.T, h *Hub, tok string, x encXorb) xreply {
	t.Helper()
	return xdo(t, "POST", h.CASURL()+"/v1/xorbs/default/"+x.hash.String(), tok, x.body)
}

func postShard(t *testing.T, h *Hub, tok string, b []byte) xreply {
	t.Helper()
	return xdo(t, "POST", h.CASURL()+"/v1/shards", tok, b)
}

// upload sends data as one file in xorbs of at most perXorb chunks of chunk bytes,
// the schemes cycling through none, LZ4 and BG4.
func uploadXet(t *testing.T, h *Hub, tok string, data []byte, chunk, perXorb int) (encFile, []encXorb) {
	t.Helper()
	pieces := splitFixed(data, chunk)
	var xorbs []encXorb
	var terms []encTerm
	for i := 0; i < len(pieces); i += perXorb {
		x := encodeXorb(t, pieces[i:min(i+perXorb, len(pieces))], byte(len(xorbs)%3))
		xwant(t, postXorb(t, h, tok, x), http.StatusOK, `"was_inserted":true`)
		xorbs = append(xorbs, x)
		terms = append(terms, encTerm{x, 0, len(x.chunks)})
	}
	f := newEncFile(data, terms...)
	xwant(t, postShard(t, h, tok, encodeShard(t, []encFile{f}, xorbs, false)), http.StatusOK, `"result":1`)
	return f, xorbs
}

// compressible makes n bytes that LZ4 shrinks (so the schemes are really exercised).
func compressible(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 3
	for i := range b {
		if i%16 == 0 {
			x = x*1664525 + 1013904223
		}
		b[i] = byte(x>>24) + byte(i%16)
	}
	return b
}

func TestXetHashVectors(t *testing.T) {
	// huggingface.js packages/xetchunk-wasm/tests/index.test.ts ("verified against Rust").
	h1, _ := parseXetHash("118bbac5c38b2bca9c2b7ae8307786de066696b91b2b5ccb7dbbd4608c966882")
	h2, _ := parseXetHash("7884d4de4bcc904767362a91e97eb6c2b6bc5f3a61b640d0cad8bb1129ff0827")
	key, _ := parseXetHash("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
	if got := hmacHash(key, h1).String(); got != "1e1f5ae2bae99fe030647a14a8c5fe6cdce57826387a7552236dfbebed533e04" {
		t.Errorf("hmac = %s", got)
	}
	if got := rangeHash([]xetHash{h1, h2}).String(); got != "82d580dd3896919ef870af78b2c7bd21e67e79777922bbc8cef1fc21630c308c" {
		t.Errorf("verification hash = %s", got)
	}
	if got := fileHash(nil); !got.isZero() {
		t.Errorf("empty file hash = %s, want zero", got)
	}
	// Same file, xorbHash and fileHash vectors; the chunk boundaries (max-size chunks
	// on this periodic data) are those huggingface.js's chunker gives.
	makeData := func(n, a, b int) []byte {
		d := make([]byte, n)
		for i := range d {
			d[i] = byte(i*a + b)
		}
		return d
	}
	for _, tc := range []struct {
		n, a, b    int
		xorb, file string
	}{
		{200000, 7, 13, "f0755d96ee199d4f01e83da9fe2c38353de7fd38fb79a320a7d50be510026f74", "d88d9e0b760f32c90b7c6592b4cb85251c01bb797371e3c637087b96ac578723"},
		{1000000, 13, 37, "7be289d851485c40dcde52dbcf37a7823a5ef0bfcdf1ca1c5a32ad9594c71571", "041a50f3639f4a080a89237025d643e2a3e22935ca5d7dbc1a38f5c1e859f859"},
	} {
		var leaves []xetLeaf
		for _, c := range splitFixed(makeData(tc.n, tc.a, tc.b), 131072) {
			leaves = append(leaves, xetLeaf{chunkHash(c), uint64(len(c))})
		}
		if got := merkleRoot(leaves).String(); got != tc.xorb {
			t.Errorf("%d bytes: xorb hash %s, want %s", tc.n, got, tc.xorb)
		}
		if got := fileHash(leaves).String(); got != tc.file {
			t.Errorf("%d bytes: file hash %s, want %s", tc.n, got, tc.file)
		}
	}
	// A deliberately wrong tree (a binary one) must miss the vector.
	var level []xetLeaf
	for _, c := range splitFixed(makeData(1000000, 13, 37), 131072) {
		level = append(level, xetLeaf{chunkHash(c), uint64(len(c))})
	}
	for len(level) > 1 {
		var next []xetLeaf
		for i := 0; i < len(level); i += 2 {
			next = append(next, mergeNode(level[i:min(i+2, len(level))]))
		}
		level = next
	}
	if level[0].hash.String() == "7be289d851485c40dcde52dbcf37a7823a5ef0bfcdf1ca1c5a32ad9594c71571" {
		t.Error("a binary tree gives the reference xorb hash: the vector cannot tell trees apart")
	}
}

func TestXetStringForm(t *testing.T) {
	// spec api.md example: bytes 0..31 print as 0706050403020100 0f0e0d0c0b0a0908 ...
	// (the spec's string drops the "10" of the third group: it has 62 digits).
	var x xetHash
	for i := range x {
		x[i] = byte(i)
	}
	if got := x.String(); got != "07060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918" {
		t.Fatalf("string form %s", got)
	}
	back, err := parseXetHash(x.String())
	if err != nil || back != x {
		t.Fatalf("round trip: %v %v", back, err)
	}
}

func TestXetUploadCommitDownload(t *testing.T) {
	h := newXetHub(t)
	tok := casToken(t, h, xtokW, "write")
	data := compressible(700_000, 1)
	f, xorbs := uploadXet(t, h, tok, data, 50_000, 5) // 14 chunks in 3 xorbs

	st := h.XetStats()
	if st.XorbsAccepted != 3 || st.ShardsAccepted != 1 || st.FilesRegistered != 1 || st.XorbsRejected+st.ShardsRejected != 0 {
		t.Fatalf("stats %+v", st)
	}
	var sent int64
	for _, x := range xorbs {
		sent += int64(len(x.body))
	}
	if st.XorbBytes != sent || sent >= int64(len(data)) {
		t.Fatalf("XorbBytes %d, want the %d bytes sent (less than the %d raw: compression works)", st.XorbBytes, sent, len(data))
	}
	for _, c := range h.XetChecks() {
		if c.Claimed != c.Computed {
			t.Fatalf("accepted upload with a failed check %+v", c)
		}
	}

	// Committable by sha256, listed with xetHash, readable through LFS and Xet.
	body := fmt.Sprintf(`{"key":"header","value":{"summary":"add"}}`+"\n"+
		`{"key":"lfsFile","value":{"path":"w.bin","algo":"sha256","oid":%q,"size":%d}}`+"\n", f.sha256, len(data))
	xwant(t, xdo(t, "POST", h.URL()+"/api/models/alice/model/commit/main", xtokW, []byte(body)), http.StatusOK)
	r := xdo(t, "GET", h.URL()+"/api/models/alice/model/tree/main", xtokR, nil)
	xwant(t, r, http.StatusOK, `"xetHash":"`+f.hash.String()+`"`)

	r = xdo(t, "GET", h.URL()+"/alice/model/resolve/main/w.bin", xtokR, nil)
	xwant(t, r, http.StatusFound)
	if r.header.Get("X-Xet-Hash") != f.hash.String() || !strings.Contains(r.header.Get("Link"), `rel="xet-auth"`) ||
		!strings.Contains(r.header.Get("Link"), h.CASURL()+"/v1/reconstructions/"+f.hash.String()) {
		t.Fatalf("resolve headers %v", r.header)
	}
	lfs := xdo(t, "GET", r.header.Get("Location"), "", nil)
	xwant(t, lfs, http.StatusOK)
	if !bytes.Equal(lfs.body, data) {
		t.Fatal("the LFS path does not serve the reassembled bytes")
	}
	info := xdo(t, "GET", h.URL()+"/alice/model/resolve/main/w.bin", xtokR, nil, "Accept", xetFileInfoType+", */*", "Range", "bytes=0-0")
	xwant(t, info, http.StatusOK, `"hash":"`+f.hash.String()+`"`)
	if info.header.Get("Content-Type") != xetFileInfoType || info.header.Get("X-Linked-Size") != fmt.Sprint(len(data)) {
		t.Fatalf("file info headers %v", info.header)
	}

	read := casToken(t, h, xtokR, "read")
	for _, v := range []string{"v1", "v2"} {
		got := reconstructXet(t, h, read, v, f.hash.String(), "")
		if !bytes.Equal(got, data) {
			t.Fatalf("%s reconstruction gives %d bytes, not the file", v, len(got))
		}
		got = reconstructXet(t, h, read, v, f.hash.String(), "bytes=123456-654320")
		if !bytes.Equal(got, data[123456:654321]) {
			t.Fatalf("%s range reconstruction gives %d bytes, not the range", v, len(got))
		}
	}
	r = xdo(t, "GET", h.CASURL()+"/v2/reconstructions/"+f.hash.String(), read, nil, "Range", "bytes=700000-")
	xwant(t, r, http.StatusRequestedRangeNotSatisfiable)
	if h.XetStats().TransferBytes == 0 || h.XetStats().Reconstructions != 5 {
		t.Fatalf("download counters %+v", h.XetStats())
	}
}

// reconstructXet downloads a file (or a range) as a client does: reconstruction,
// then the signed transfer URLs with the ranges they name.
func reconstructXet(t *testing.T, h *Hub, tok, version, id, rng string) []byte {
	t.Helper()
	var hdr []string
	if rng != "" {
		hdr = []string{"Range", rng}
	}
	r := xdo(t, "GET", h.CASURL()+"/"+version+"/reconstructions/"+id, tok, nil, hdr...)
	xwant(t, r, http.StatusOK)
	var rec struct {
		Offset int64 `json:"offset_into_first_range"`
		Terms  []struct {
			Hash     string     `json:"hash"`
			Unpacked int64      `json:"unpacked_length"`
			Range    reconRange `json:"range"`
		} `json:"terms"`
		FetchInfo map[string][]reconFetchV1 `json:"fetch_info"`
		Xorbs     map[string][]reconFetchV2 `json:"xorbs"`
	}
	if err := json.Unmarshal(r.body, &rec); err != nil {
		t.Fatal(err)
	}
	chunks := map[string]map[int64][]byte{} // xorb -> chunk index -> data
	store := func(xorb string, first int64, b []byte) {
		if chunks[xorb] == nil {
			chunks[xorb] = map[int64][]byte{}
		}
		cs, _, err := parseXorb(b)
		if err != nil {
			t.Fatalf("fetched xorb bytes do not parse: %v", err)
		}
		_, datas, _ := parseXorb(b)
		for i := range cs {
			chunks[xorb][first+int64(i)] = datas[i]
		}
	}
	for xorb, entries := range rec.FetchInfo {
		for _, e := range entries {
			if xdo(t, "GET", e.URL, "", nil).status != http.StatusForbidden {
				t.Fatal("a transfer URL answered without its Range")
			}
			b := xdo(t, "GET", e.URL, "", nil, "Range", fmt.Sprintf("bytes=%d-%d", e.URLRange.Start, e.URLRange.End))
			xwant(t, b, http.StatusPartialContent)
			store(xorb, e.Range.Start, b.body)
		}
	}
	for xorb, entries := range rec.Xorbs {
		for _, e := range entries {
			var parts []string
			for _, rg := range e.Ranges {
				parts = append(parts, fmt.Sprintf("%d-%d", rg.Bytes.Start, rg.Bytes.End))
			}
			b := xdo(t, "GET", e.URL, "", nil, "Range", "bytes="+strings.Join(parts, ","))
			xwant(t, b, http.StatusPartialContent)
			if len(e.Ranges) == 1 {
				store(xorb, e.Ranges[0].Chunks.Start, b.body)
				continue
			}
			_, params, err := mime.ParseMediaType(b.header.Get("Content-Type"))
			if err != nil {
				t.Fatal(err)
			}
			mr := multipart.NewReader(bytes.NewReader(b.body), params["boundary"])
			for _, rg := range e.Ranges {
				p, err := mr.NextPart()
				if err != nil {
					t.Fatal(err)
				}
				pb, _ := io.ReadAll(p)
				store(xorb, rg.Chunks.Start, pb)
			}
		}
	}
	var out []byte
	for _, tm := range rec.Terms {
		var n int64
		for i := tm.Range.Start; i < tm.Range.End; i++ {
			c, ok := chunks[tm.Hash][i]
			if !ok {
				t.Fatalf("term %s [%d,%d): chunk %d was not fetched", tm.Hash, tm.Range.Start, tm.Range.End, i)
			}
			out = append(out, c...)
			n += int64(len(c))
		}
		if n != tm.Unpacked {
			t.Fatalf("term unpacked_length %d, chunks hold %d", tm.Unpacked, n)
		}
	}
	out = out[rec.Offset:]
	if rng != "" {
		var a, b int64
		fmt.Sscanf(rng, "bytes=%d-%d", &a, &b)
		out = out[:min(int64(len(out)), b-a+1)]
	}
	return out
}

func TestXetTokens(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	h := newXetHub(t, WithClock(clock), WithXetTokenLifetime(30*time.Second))
	xwant(t, xdo(t, "GET", h.URL()+"/api/models/alice/model/xet-write-token/main", xtokR, nil), http.StatusForbidden)
	xwant(t, xdo(t, "GET", h.URL()+"/api/models/alice/model/xet-write-token/main", xtokB, nil), http.StatusForbidden)
	xwant(t, xdo(t, "GET", h.URL()+"/api/models/alice/model/xet-write-token/main", "", nil), http.StatusUnauthorized)
	xwant(t, xdo(t, "GET", h.URL()+"/api/models/alice/model/xet-read-token/nope", xtokR, nil), http.StatusNotFound)
	xwant(t, xdo(t, "GET", h.URL()+"/api/models/alice/model/xet-write-token/None?create_pr=1", xtokW, nil), http.StatusOK)

	read := casToken(t, h, xtokR, "read")
	x := encodeXorb(t, [][]byte{[]byte("hello xet")}, schemeNone)
	xwant(t, postXorb(t, h, read, x), http.StatusForbidden, "read token")
	xwant(t, postXorb(t, h, xtokW, x), http.StatusUnauthorized, "Hub token")
	xwant(t, postXorb(t, h, "", x), http.StatusUnauthorized, "missing")
	write := casToken(t, h, xtokW, "write")
	xwant(t, postXorb(t, h, write, x), http.StatusOK)
	now = now.Add(31 * time.Second)
	xwant(t, postXorb(t, h, write, x), http.StatusUnauthorized, "expired")
	if st := h.XetStats(); st.AuthRejected != 4 || st.HubTokenRejected != 1 || st.TokensWrite != 2 || st.TokensRead != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A file uploaded for alice/model is not readable with a token of another repo.
	if _, err := h.Seed("bob/other", map[string][]byte{"a": []byte("b")}); err != nil {
		t.Fatal(err)
	}
	write = casToken(t, h, xtokW, "write")
	f, _ := uploadXet(t, h, write, compressible(10_000, 4), 4_000, 10)
	r := xdo(t, "GET", h.URL()+"/api/models/bob/other/xet-read-token/main", xtokB, nil)
	xwant(t, r, http.StatusOK)
	var bt struct{ AccessToken string }
	json.Unmarshal(r.body, &bt)
	xwant(t, xdo(t, "GET", h.CASURL()+"/v2/reconstructions/"+f.hash.String(), bt.AccessToken, nil), http.StatusNotFound)
	xwant(t, xdo(t, "GET", h.CASURL()+"/v2/reconstructions/"+f.hash.String(), casToken(t, h, xtokR, "read"), nil), http.StatusOK)
}

func TestXetOffByDefault(t *testing.T) {
	h := New(WithToken(xtokW, "alice", ScopeWrite)).Start(t)
	if _, err := h.Seed("alice/model", map[string][]byte{"a": []byte("b")}); err != nil {
		t.Fatal(err)
	}
	xwant(t, xdo(t, "GET", h.URL()+"/api/models/alice/model/xet-write-token/main", xtokW, nil), http.StatusNotFound)
	batch := `{"operation":"upload","transfers":["basic","multipart","xet"],"objects":[{"oid":"` + sha256Hex([]byte("x")) + `","size":1}]}`
	r := xdo(t, "POST", h.URL()+"/alice/model.git/info/lfs/objects/batch", xtokW, []byte(batch), "Content-Type", lfsMediaType)
	xwant(t, r, http.StatusOK, `"transfer":"basic"`)
	xwant(t, xdo(t, "GET", h.URL()+"/api/models/alice/model", xtokW, nil), http.StatusOK, `"xetEnabled":false`)
	if h.CASURL() != "" {
		t.Fatal("a CAS without WithXet")
	}
}

func TestXetBatch(t *testing.T) {
	h := newXetHub(t)
	data := compressible(5000, 5)
	batch := fmt.Sprintf(`{"operation":"upload","transfers":["basic","multipart","xet"],"hash_algo":"sha_256","ref":{"name":"main"},"objects":[{"oid":%q,"size":%d}]}`, sha256Hex(data), len(data))
	r := xdo(t, "POST", h.URL()+"/alice/model.git/info/lfs/objects/batch", xtokW, []byte(batch), "Content-Type", lfsMediaType)
	xwant(t, r, http.StatusOK, `"transfer":"xet"`)
	var out struct {
		Objects []struct {
			Actions struct {
				Upload struct {
					Href   string            `json:"href"`
					Header map[string]string `json:"header"`
				} `json:"upload"`
			} `json:"actions"`
		} `json:"objects"`
	}
	json.Unmarshal(r.body, &out)
	up := out.Objects[0].Actions.Upload
	if up.Header["X-Xet-Cas-Url"] != h.CASURL() || up.Header["X-Xet-Access-Token"] == "" || up.Header["X-Xet-Token-Expiration"] == "" ||
		up.Header["X-Xet-Session-Id"] == "" || up.Href != h.URL()+"/api/models/alice/model/xet-write-token/main" {
		t.Fatalf("xet upload action %+v", up)
	}
	f, _ := uploadXet(t, h, up.Header["X-Xet-Access-Token"], data, 1000, 3)
	// Now the object is stored: the batch says so (no actions), as for LFS objects.
	r = xdo(t, "POST", h.URL()+"/alice/model.git/info/lfs/objects/batch", xtokW, []byte(batch), "Content-Type", lfsMediaType)
	xwant(t, r, http.StatusOK)
	if strings.Contains(string(r.body), "actions") {
		t.Fatalf("stored object got actions: %s", r.body)
	}
	if got, ok := h.XetFileBySHA256(f.sha256); !ok || got.Hash != f.hash.String() || got.Size != int64(len(data)) || len(got.Chunks) != 5 {
		t.Fatalf("XetFileBySHA256 = %+v %v", got, ok)
	}
}

func TestXetGlobalDedup(t *testing.T) {
	for _, zero := range []bool{false, true} {
		t.Run(fmt.Sprintf("zero key %v", zero), func(t *testing.T) {
			var opts []Option
			if zero {
				opts = append(opts, WithXetZeroDedupKey())
			}
			h := newXetHub(t, opts...)
			tok := casToken(t, h, xtokW, "write")
			data := compressible(200_000, 6)
			_, xorbs := uploadXet(t, h, tok, data, 20_000, 4) // 10 chunks, 3 xorbs in one shard
			first := xorbs[0].chunks[0].hash
			read := casToken(t, h, xtokR, "read")
			r := xdo(t, "GET", h.CASURL()+"/v1/chunks/default-merkledb/"+first.String(), read, nil)
			xwant(t, r, http.StatusOK)
			s, err := parseShard(r.body)
			if err != nil {
				t.Fatalf("the dedup answer does not parse as a shard: %v", err)
			}
			foot := r.body[len(r.body)-shardFooterSize:]
			var key xetHash
			copy(key[:], foot[72:104])
			expiry := int64(le64(foot[112:]))
			if zero != key.isZero() || expiry <= time.Now().Unix() {
				t.Fatalf("key %s expiry %d", key, expiry)
			}
			if len(s.files) != 0 || len(s.xorbs) != 3 {
				t.Fatalf("answer lists %d files and %d xorbs, want 0 and the 3 of the upload", len(s.files), len(s.xorbs))
			}
			found := 0
			for _, x := range s.xorbs {
				for _, c := range x.chunks {
					for _, ex := range xorbs {
						for _, ec := range ex.chunks {
							if c.hash == hmacHash(key, ec.hash) {
								found++
							}
						}
					}
				}
			}
			if found != 10 {
				t.Fatalf("%d of 10 chunks match under the answer's key", found)
			}
			if zero == false && s.xorbs[0].chunks[0].hash == first {
				t.Fatal("a non-zero key left a raw hash")
			}
			// A chunk that is not eligible (not first, hash not 0 mod 1024) is not answered.
			other := xorbs[1].chunks[1].hash
			if !dedupEligible(other) {
				xwant(t, xdo(t, "GET", h.CASURL()+"/v1/chunks/default/"+other.String(), read, nil), http.StatusNotFound)
			}
			if st := h.XetStats(); st.DedupQueries != 2-boolInt(dedupEligible(other)) || st.DedupHits != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestXetNarrowDedup(t *testing.T) {
	h := newXetHub(t, WithXetNarrowDedup(), WithXetDedupKeyExpiry(-time.Hour))
	tok := casToken(t, h, xtokW, "write")
	_, xorbs := uploadXet(t, h, tok, compressible(200_000, 6), 20_000, 4)
	r := xdo(t, "GET", h.CASURL()+"/v1/chunks/default/"+xorbs[0].chunks[0].hash.String(), tok, nil)
	xwant(t, r, http.StatusOK)
	s, err := parseShard(r.body)
	if err != nil || len(s.xorbs) != 1 || s.xorbs[0].hash != xorbs[0].hash {
		t.Fatalf("narrow answer: %v, %d xorbs, want only %s", err, len(s.xorbs), xorbs[0].hash)
	}
	if exp := int64(le64(r.body[len(r.body)-shardFooterSize+112:])); exp >= time.Now().Unix() {
		t.Fatalf("key expiry %d is not in the past", exp)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func le64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func TestXetStateDir(t *testing.T) {
	dir := t.TempDir()
	h := newXetHub(t, WithStateDir(dir))
	tok := casToken(t, h, xtokW, "write")
	data := compressible(120_000, 11)
	f, xorbs := uploadXet(t, h, tok, data, 30_000, 2)
	body := fmt.Sprintf(`{"key":"header","value":{"summary":"add"}}`+"\n"+
		`{"key":"lfsFile","value":{"path":"w.bin","algo":"sha256","oid":%q,"size":%d}}`+"\n", f.sha256, len(data))
	xwant(t, xdo(t, "POST", h.URL()+"/api/models/alice/model/commit/main", xtokW, []byte(body)), http.StatusOK)
	h.Close()

	h2 := New(WithXet(), WithStateDir(dir), WithToken(xtokW, "alice", ScopeWrite), WithToken(xtokR, "alice", ScopeRead)).Start(t)
	if got, ok := h2.XetFileBySHA256(f.sha256); !ok || got.Hash != f.hash.String() {
		t.Fatalf("after restart: %+v %v", got, ok)
	}
	if len(h2.XetXorbs()) != len(xorbs) || h2.XetStats() != (XetStats{}) {
		t.Fatalf("after restart: xorbs %v, stats %+v", h2.XetXorbs(), h2.XetStats())
	}
	xwant(t, xdo(t, "GET", h2.URL()+"/api/models/alice/model/tree/main", xtokR, nil), http.StatusOK, `"xetHash":"`+f.hash.String()+`"`)
	if got := reconstructXet(t, h2, casToken(t, h2, xtokR, "read"), "v2", f.hash.String(), ""); !bytes.Equal(got, data) {
		t.Fatal("reconstruction after restart differs")
	}
	r := xdo(t, "GET", h2.CASURL()+"/v1/chunks/default/"+xorbs[0].chunks[0].hash.String(), casToken(t, h2, xtokR, "read"), nil)
	xwant(t, r, http.StatusOK)
}
