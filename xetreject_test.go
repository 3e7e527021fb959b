package hfmerge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/upload"
)

// alter is a transport to the CAS that changes what hfmerge sends, as a broken
// network, disk or client would: each test corrupts one kind of request.
type alter struct {
	mu   sync.Mutex
	f    func(r *http.Request, body []byte) (*http.Request, []byte, *http.Response)
	done bool // f applies once
}

func (a *alter) RoundTrip(r *http.Request) (*http.Response, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.done && r.Method == http.MethodPost {
		body, _ := io.ReadAll(r.Body)
		r2, b2, resp := a.f(r, body)
		if r2 != nil {
			a.done = true
			if resp != nil {
				return resp, nil
			}
			r2 = r2.Clone(r2.Context())
			r2.Body, r2.ContentLength = io.NopCloser(bytes.NewReader(b2)), int64(len(b2))
			return http.DefaultTransport.RoundTrip(r2)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	return http.DefaultTransport.RoundTrip(r)
}

func isXorbPost(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/v1/xorbs/") }

// storedSHA is a sha256 as a shard's metadata extension stores it: each 8-byte group
// reversed (docs/xet.md).
func storedSHA(hexSHA string) []byte {
	b, _ := hex.DecodeString(hexSHA)
	for i := 0; i < 32; i += 8 {
		for j, k := i, i+7; j < k; j, k = j+1, k-1 {
			b[j], b[k] = b[k], b[j]
		}
	}
	return b
}

// TestPushXetRejected: the fake CAS refuses a corrupted xorb, a xorb under a wrong
// hash, a shard that references a xorb never uploaded, and a shard whose sha256 is not
// the file's; each push fails with an error that names the shard or the request and
// says why, and nothing is committed.
func TestPushXetRejected(t *testing.T) {
	baseDir, adapter := model(t, xetSpec(), 2, []string{"self_attn.q_proj", "self_attn.v_proj"}, nil)
	want := filepath.Join(t.TempDir(), "out")
	{
		l := loadDirs(t, &Sources{}, baseDir, adapter)
		if err := MergeDir(context.Background(), l, l.Plan(), want, MergeOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var shas [][]byte
	entries, _ := os.ReadDir(want)
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".safetensors") {
			b, _ := os.ReadFile(filepath.Join(want, en.Name()))
			s := sha256.Sum256(b)
			shas = append(shas, storedSHA(hex.EncodeToString(s[:])))
		}
	}
	for _, c := range []struct {
		name string
		f    func(r *http.Request, body []byte) (*http.Request, []byte, *http.Response)
		want []string
	}{
		{"corrupt xorb", func(r *http.Request, body []byte) (*http.Request, []byte, *http.Response) {
			if !isXorbPost(r) {
				return nil, nil, nil
			}
			b := bytes.Clone(body)
			b[len(b)/2] ^= 0xff
			return r, b, nil
		}, []string{"POST /v1/xorbs/default/", "400"}},
		{"wrong xorb hash", func(r *http.Request, body []byte) (*http.Request, []byte, *http.Response) {
			if !isXorbPost(r) {
				return nil, nil, nil
			}
			r2 := r.Clone(r.Context())
			u := *r.URL
			p := []byte(u.Path)
			if p[len(p)-1] == '0' {
				p[len(p)-1] = '1'
			} else {
				p[len(p)-1] = '0'
			}
			u.Path = string(p)
			r2.URL = &u
			return r2, body, nil
		}, []string{"xorb hash mismatch", "400"}},
		{"missing xorb", func(r *http.Request, body []byte) (*http.Request, []byte, *http.Response) {
			if !isXorbPost(r) {
				return nil, nil, nil
			}
			// The xorb is never sent; the client is told it was stored.
			return r, nil, &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(strings.NewReader(`{"was_inserted":true}`)), Request: r}
		}, []string{"POST /v1/shards", "never uploaded"}},
		{"wrong sha256", func(r *http.Request, body []byte) (*http.Request, []byte, *http.Response) {
			if r.URL.Path != "/v1/shards" {
				return nil, nil, nil
			}
			b := bytes.Clone(body)
			for _, s := range shas {
				if i := bytes.Index(b, s); i >= 0 {
					b[i] ^= 1
					return r, b, nil
				}
			}
			t.Error("no sha256 found in the shard")
			return nil, nil, nil
		}, []string{"POST /v1/shards", "sha256"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			e := newXetEnv(t)
			l := loadDirs(t, &Sources{}, baseDir, adapter)
			a := &alter{f: c.f}
			_, err := Push(ctx, l, l.Plan(), PushOptions{Target: upload.Target{Client: e.c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}, XetTransport: a},
				DiskBudget: -1, WorkDir: t.TempDir()})
			if err == nil {
				t.Fatal("the push succeeded")
			}
			if !a.done {
				t.Fatalf("nothing was altered; the push failed with %v", err)
			}
			for _, w := range append(c.want, "Xet", "nothing was committed") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			st := e.h.XetStats()
			if st.XorbsRejected+st.ShardsRejected != 1 {
				t.Errorf("CAS stats %+v: want one rejection", st)
			}
			if n := e.h.Stats().Commits["alice/merged@main"]; n != 0 {
				t.Errorf("%d commits", n)
			}
			t.Logf("%s: %v", c.name, err)
		})
	}
}
