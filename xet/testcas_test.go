package xet

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCAS is a minimal in-test CAS that checks what arrives with this package's
// parsers. The project's fake CAS is hub/hubtest's, written independently from the
// spec; these tests move to it once it lands.
type testCAS struct {
	t     *testing.T
	srv   *httptest.Server
	token string

	mu         sync.Mutex
	xorbs      map[Hash]*Xorb
	files      map[Hash][]byte
	dedup      map[Hash][]XorbInfo // eligible chunk → xorb listings of its shard
	key        Hash                // HMAC key of dedup answers; zero → raw hashes
	expiry     uint64
	xorbBytes  int64 // bytes of xorb bodies received
	xorbPosts  int
	shardPosts int
	requests   []string
	faults     []fault // consumed in order by matching requests
}

type fault struct {
	prefix string // method and path prefix, e.g. "POST /v1/shards"
	status int
	header http.Header
	body   string
}

func newTestCAS(t *testing.T) *testCAS {
	c := &testCAS{t: t, token: "cas-token-1", xorbs: map[Hash]*Xorb{}, files: map[Hash][]byte{},
		dedup: map[Hash][]XorbInfo{}, expiry: uint64(time.Now().Add(time.Hour).Unix())}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *testCAS) tokens(ctx context.Context) (Token, error) {
	return Token{AccessToken: c.token, Expiry: time.Now().Add(time.Hour), CASURL: c.srv.URL}, nil
}

func (c *testCAS) client(o ClientOptions) *Client {
	o.MinBackoff, o.MaxBackoff = time.Millisecond, 5*time.Millisecond
	return NewClient(c.tokens, o)
}

func (c *testCAS) fail(f fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = append(c.faults, f)
}

func (c *testCAS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c.mu.Lock()
	defer c.mu.Unlock()
	op := r.Method + " " + r.URL.Path
	c.requests = append(c.requests, op)
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && (len(r.TransferEncoding) > 0 || len(body) > 0) {
		http.Error(w, "a body on "+r.Method, http.StatusBadRequest)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+c.token {
		http.Error(w, "bad token", http.StatusUnauthorized)
		return
	}
	for i, f := range c.faults {
		if strings.HasPrefix(op, f.prefix) {
			c.faults = append(c.faults[:i], c.faults[i+1:]...)
			for k, v := range f.header {
				w.Header()[k] = v
			}
			http.Error(w, f.body, f.status)
			return
		}
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.Method == http.MethodPost && len(parts) == 4 && parts[1] == "xorbs":
		c.xorbBytes += int64(len(body))
		c.xorbPosts++
		x, err := ParseXorb(body)
		if err != nil || x.Hash.String() != parts[3] {
			http.Error(w, fmt.Sprintf("bad xorb: %v (hash %v)", err, x), http.StatusBadRequest)
			return
		}
		_, had := c.xorbs[x.Hash]
		c.xorbs[x.Hash] = x
		fmt.Fprintf(w, `{"was_inserted":%v}`, !had)
	case r.Method == http.MethodHead && len(parts) == 4 && parts[1] == "xorbs":
		h, _ := ParseHash(parts[3])
		if c.xorbs[h] == nil {
			w.WriteHeader(http.StatusNotFound)
		}
	case r.Method == http.MethodPost && r.URL.Path == "/v1/shards":
		c.shardPosts++
		existed, err := c.register(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res := 1
		if existed {
			res = 0
		}
		fmt.Fprintf(w, `{"result":%d}`, res)
	case r.Method == http.MethodGet && len(parts) == 4 && parts[1] == "chunks":
		h, _ := ParseHash(parts[3])
		listing, ok := c.dedup[h]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Write(c.answer(listing))
	default:
		http.Error(w, "no such route "+op, http.StatusNotFound)
	}
}

// register checks an uploaded shard as the CAS must: no footer, every term in a
// stored xorb, every file's bytes rebuilt and its hash, verification and sha256
// right; then it indexes the shard's eligible chunks for global dedup.
func (c *testCAS) register(body []byte) (existed bool, err error) {
	s, err := ParseShard(body)
	if err != nil {
		return false, err
	}
	if s.Footer != nil {
		return false, fmt.Errorf("upload shard has a footer")
	}
	existed = true
	for _, f := range s.Files {
		var data []byte
		var leaves []Chunk
		for i, t := range f.Terms {
			x := c.xorbs[t.Xorb]
			if x == nil {
				return false, fmt.Errorf("file %s: term %d: xorb %s not uploaded", f.Hash, i, t.Xorb)
			}
			if int(t.End) > len(x.Chunks) {
				return false, fmt.Errorf("file %s: term %d past the xorb's end", f.Hash, i)
			}
			var hashes []Hash
			var n int
			for _, ch := range x.Chunks[t.Start:t.End] {
				data = append(data, ch.Data...)
				leaves = append(leaves, Chunk{ch.Hash, uint64(len(ch.Data))})
				hashes = append(hashes, ch.Hash)
				n += len(ch.Data)
			}
			if uint32(n) != t.Bytes || VerificationHash(hashes) != f.Verification[i] {
				return false, fmt.Errorf("file %s: term %d: bytes or verification hash wrong", f.Hash, i)
			}
		}
		if FileHash(leaves) != f.Hash {
			return false, fmt.Errorf("file %s: reconstruction has hash %s", f.Hash, FileHash(leaves))
		}
		if f.SHA256 == nil || sha256Of(data) != *f.SHA256 {
			return false, fmt.Errorf("file %s: sha256 wrong", f.Hash)
		}
		if _, had := c.files[f.Hash]; !had {
			existed = false
		}
		c.files[f.Hash] = data
	}
	for _, x := range s.Xorbs {
		if c.xorbs[x.Hash] == nil {
			return false, fmt.Errorf("xorb %s listed but not uploaded", x.Hash)
		}
		for _, ch := range x.Chunks {
			if ch.Flags&ChunkFlagGlobalDedup != 0 || globalDedupEligible(ch.Hash) {
				c.dedup[ch.Hash] = s.Xorbs
			}
		}
	}
	return existed, nil
}

// answer is a dedup answer: the xorb listings, chunk hashes HMAC'd with the key, and
// a footer with the key and its expiry.
func (c *testCAS) answer(listing []XorbInfo) []byte {
	out := make([]XorbInfo, len(listing))
	for i, x := range listing {
		out[i] = x
		out[i].Chunks = append([]XorbChunkInfo(nil), x.Chunks...)
		if !c.key.IsZero() {
			for j := range out[i].Chunks {
				out[i].Chunks[j].Hash = HMAC(out[i].Chunks[j].Hash, c.key)
			}
		}
	}
	b, err := (&Shard{Xorbs: out}).MarshalUpload()
	if err != nil {
		c.t.Error(err)
	}
	binary.LittleEndian.PutUint64(b[40:], shardFooterLen)
	foot := make([]byte, shardFooterLen)
	binary.LittleEndian.PutUint64(foot[0:], footerVersion)
	binary.LittleEndian.PutUint64(foot[8:], shardHeaderLen)
	copy(foot[72:], c.key[:])
	binary.LittleEndian.PutUint64(foot[104:], uint64(time.Now().Unix()))
	binary.LittleEndian.PutUint64(foot[112:], c.expiry)
	binary.LittleEndian.PutUint64(foot[192:], uint64(len(b)))
	return append(b, foot...)
}

func (c *testCAS) stats() (xorbBytes int64, xorbPosts, shardPosts int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.xorbBytes, c.xorbPosts, c.shardPosts
}

func (c *testCAS) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.requests)
}

func (c *testCAS) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requests[len(c.requests)-1]
}

func (c *testCAS) file(h Hash) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.files[h])
}
