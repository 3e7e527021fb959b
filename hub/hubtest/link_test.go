package hubtest_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// TestLinkRates moves bytes both ways through a modelled link and checks that it took
// at least the modelled time. Only a lower bound is asserted: a slow machine may take
// longer, never shorter.
func TestLinkRates(t *testing.T) {
	const down, up = 2 << 20, 1 << 20 // bytes per second
	h := newHub(t, hubtest.WithLink(down, up), hubtest.WithLatency(20*time.Millisecond), hubtest.WithLFSThreshold(100))
	objA, objB := pattern(300_000, 1), pattern(300_000, 2)
	mustSeed(t, h, "alice/m", map[string][]byte{"a.bin": objA, "b.bin": objB})
	h.ResetStats()

	// Two downloads at once share the 2 MB/s: 600 KB take at least 0.29 s.
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range []string{"a.bin", "b.bin"} {
		wg.Go(func() {
			loc := do(t, "HEAD", h.URL()+"/alice/m/resolve/main/"+p, tokW, nil).Header.Get("Location")
			if got := do(t, "GET", loc, "", nil); len(got.body) != 300_000 {
				t.Errorf("%s: %d bytes", p, len(got.body))
			}
		})
	}
	wg.Wait()
	if took, floor := time.Since(start), 600_000*time.Second/down; took < floor {
		t.Errorf("600 KB down took %v, under the %v the link allows", took, floor)
	}

	// An upload of 300 KB at 1 MB/s takes at least 0.29 s.
	obj := pattern(300_000, 3)
	_, br := batch(t, h, "alice/m", tokW, []string{"basic"}, obj)
	start = time.Now()
	want(t, do(t, "PUT", br.Objects[0].Actions.Upload.Href, "", obj), 200)
	if took, floor := time.Since(start), 300_000*time.Second/up; took < floor {
		t.Errorf("300 KB up took %v, under the %v the link allows", took, floor)
	}
	st := h.Stats()
	if st.BytesDown != 600_000 || st.BytesUp != 300_000 {
		t.Errorf("bytes down %d, up %d; want 600000 and 300000", st.BytesDown, st.BytesUp)
	}
	// The latency is added to each request.
	start = time.Now()
	want(t, do(t, "GET", h.URL()+"/api/models/alice/m", tokW, nil), 200)
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Errorf("a request took %v, under the 20ms latency", took)
	}
}

func TestFaultMessageAndRateLimitOnly(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", nil)
	const quota = "You have exceeded your storage quota (100 GB)."
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Status: 403, Message: quota})
	r := do(t, "GET", h.URL()+"/api/models/alice/m", tokW, nil)
	want(t, r, 403)
	if r.Header.Get("X-Error-Message") != quota || !strings.Contains(string(r.body), quota) {
		t.Fatalf("quota reply %s", r)
	}
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Status: 429, RateLimit: 2 * time.Second})
	r = do(t, "GET", h.URL()+"/api/models/alice/m", tokW, nil)
	want(t, r, 429)
	if r.Header.Get("RateLimit") != `"api";r=0;t=2` || r.Header.Get("Retry-After") != "" {
		t.Fatalf("429 headers %v", r.Header)
	}
}

func TestFaultHangAndStall(t *testing.T) {
	h := newHub(t)
	obj := pattern(100_000, 4)
	mustSeed(t, h, "alice/m", map[string][]byte{"w.safetensors": obj})
	loc := do(t, "HEAD", h.URL()+"/alice/m/resolve/main/w.safetensors", tokW, nil).Header.Get("Location")

	// Hang: no headers before the client gives up.
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", h.URL()+"/api/models/alice/m", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a hung request answered %d", resp.StatusCode)
	}

	// Stall: headers and the first 1000 bytes arrive, then nothing.
	h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Stall: true, StallAfterBytes: 1000})
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	req, _ = http.NewRequestWithContext(ctx2, "GET", loc, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := make([]byte, 1000)
	if _, err := io.ReadFull(resp.Body, got); err != nil || !bytes.Equal(got, obj[:1000]) {
		t.Fatalf("first bytes: %v", err)
	}
	more := make(chan error, 1)
	go func() { _, err := resp.Body.Read(make([]byte, 10)); more <- err }()
	select {
	case err := <-more:
		t.Fatalf("the stalled body went on: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	cancel2()
	<-more
}

func TestTokenKinds(t *testing.T) {
	h := newHub(t,
		hubtest.WithAppToken("hf_app", "alice"),
		hubtest.WithFineGrainedToken("hf_fg", "alice", hubtest.FineGrained{
			Global: []string{"discussion.write"},
			Scoped: []hubtest.Scoped{
				{EntityType: "user", Entity: "alice", Permissions: []string{"repo.content.read", hubtest.PermRepoWrite}},
				{EntityType: "org", Entity: "acme", Permissions: []string{"repo.content.read"}},
			},
		}))
	mustSeed(t, h, "alice/m", nil)
	mustSeed(t, h, "acme/m", nil)

	var app struct {
		Name string         `json:"name"`
		Auth map[string]any `json:"auth"`
	}
	decode(t, do(t, "GET", h.URL()+"/api/whoami-v2", "hf_app", nil), &app)
	if app.Name != "alice" || app.Auth["type"] != "app_token_as_user" || app.Auth["accessToken"] != nil {
		t.Fatalf("app whoami %+v", app)
	}
	var fg struct {
		Auth struct {
			Type        string `json:"type"`
			AccessToken struct {
				Role        string `json:"role"`
				FineGrained struct {
					Global []string `json:"global"`
					Scoped []struct {
						Entity struct {
							ID   string `json:"_id"`
							Type string `json:"type"`
							Name string `json:"name"`
						} `json:"entity"`
						Permissions []string `json:"permissions"`
					} `json:"scoped"`
				} `json:"fineGrained"`
			} `json:"accessToken"`
		} `json:"auth"`
	}
	decode(t, do(t, "GET", h.URL()+"/api/whoami-v2", "hf_fg", nil), &fg)
	at := fg.Auth.AccessToken
	if fg.Auth.Type != "access_token" || at.Role != "fineGrained" || len(at.FineGrained.Scoped) != 2 ||
		at.FineGrained.Scoped[1].Entity.Type != "org" || at.FineGrained.Scoped[1].Entity.Name != "acme" ||
		at.FineGrained.Scoped[1].Entity.ID == "" || at.FineGrained.Global[0] != "discussion.write" {
		t.Fatalf("fine-grained whoami %+v", fg)
	}

	// The fine-grained token writes to alice's repos, not to acme's: preupload, batch
	// and commit all refuse with 403; the app token writes to both.
	obj := []byte("x")
	for _, tc := range []struct {
		token, repo string
		status      int
	}{{"hf_fg", "alice/m", 200}, {"hf_fg", "acme/m", 403}, {"hf_app", "acme/m", 200}, {tokR, "alice/m", 403}} {
		pre := doJSON(t, "POST", h.URL()+"/api/models/"+tc.repo+"/preupload/main", tc.token,
			map[string]any{"files": []map[string]any{{"path": "a.txt", "size": 1, "sample": "eA=="}}})
		r, _ := batch(t, h, tc.repo, tc.token, []string{"basic"}, obj)
		body := ndjson(t, map[string]any{"summary": "x"}, fileOp("a.txt", obj))
		cr := do(t, "POST", commitURL(h, tc.repo, "main"), tc.token, body, "Content-Type", "application/x-ndjson")
		for name, got := range map[string]reply{"preupload": pre, "batch": r, "commit": cr} {
			if got.StatusCode != tc.status {
				t.Errorf("%s with %s on %s: %s, want %d", name, tc.token, tc.repo, got, tc.status)
			}
		}
		if tc.status == 403 && tc.token == "hf_fg" && !strings.Contains(cr.Header.Get("X-Error-Message"), "repo.write on the org acme") {
			t.Errorf("refusal says %q", cr.Header.Get("X-Error-Message"))
		}
	}
	// Creating a repo follows the same rule.
	want(t, doJSON(t, "POST", h.URL()+"/api/repos/create", "hf_fg", map[string]any{"name": "new", "organization": "acme"}), 403)
	want(t, doJSON(t, "POST", h.URL()+"/api/repos/create", "hf_fg", map[string]any{"name": "new"}), 200)
}
