package hubtest_test

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

func TestFaultStatusTimes(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", nil)
	f := h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Times: 2, Status: 503})
	u := h.URL() + "/api/models/alice/m"
	want(t, do(t, "GET", u, "", nil), 503)
	want(t, do(t, "GET", u, "", nil), 503)
	want(t, do(t, "GET", u, "", nil), 200)
	if f.Fired() != 2 {
		t.Fatalf("fired %d, want 2", f.Fired())
	}
	h.WaitIdle(t.Context())
	log := h.RequestsFor(hubtest.RouteInfo)
	if len(log) != 3 || !log[0].Fault || !log[1].Fault || log[2].Fault || log[0].Status != 503 {
		t.Fatalf("log = %+v", log)
	}
	if h.Stats().FaultsFired != 2 {
		t.Fatalf("FaultsFired = %d", h.Stats().FaultsFired)
	}
}

func TestFaultSkipMethodPathForever(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", map[string][]byte{"a": []byte("a"), "b": []byte("b")})
	// Skip the first matching request, then fail every later one, on /resolve/ of "b" only.
	f := h.Fault(hubtest.Fault{Method: "GET", Path: "/alice/m/resolve/main/b", Skip: 1, Times: -1, Status: 500})
	want(t, do(t, "GET", h.URL()+"/alice/m/resolve/main/b", "", nil), 200)
	for range 3 {
		want(t, do(t, "GET", h.URL()+"/alice/m/resolve/main/b", "", nil), 500)
	}
	want(t, do(t, "HEAD", h.URL()+"/alice/m/resolve/main/b", "", nil), 200)
	want(t, do(t, "GET", h.URL()+"/alice/m/resolve/main/a", "", nil), 200)
	f.Remove()
	want(t, do(t, "GET", h.URL()+"/alice/m/resolve/main/b", "", nil), 200)
	if f.Fired() != 3 {
		t.Fatalf("fired %d", f.Fired())
	}
}

func TestFaultRateLimit(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", nil)
	h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 429, RetryAfter: 2500 * time.Millisecond})
	r, _ := batch(t, h, "alice/m", tokW, []string{"basic"}, []byte("x"))
	want(t, r, 429)
	if r.Header.Get("Retry-After") != "3" || !strings.Contains(r.Header.Get("RateLimit"), "r=0;t=3") {
		t.Fatalf("429 headers = %v", r.Header)
	}
	r, _ = batch(t, h, "alice/m", tokW, []string{"basic"}, []byte("x"))
	want(t, r, 200)
}

func TestFaultDropDownload(t *testing.T) {
	h := newHub(t)
	data := pattern(10000, 1)
	mustSeed(t, h, "alice/m", map[string][]byte{"m.safetensors": data})
	loc := do(t, "HEAD", h.URL()+"/alice/m/resolve/main/m.safetensors", "", nil).Header.Get("Location")
	f := h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 1234})

	resp, err := http.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 1234 || resp.StatusCode != 200 {
		t.Fatalf("read %d bytes, err %v (status %d), want 1234 and unexpected EOF", len(got), err, resp.StatusCode)
	}
	// Resume with Range, as a client would.
	r := do(t, "GET", loc, "", nil, "Range", "bytes=1234-")
	want(t, r, 206)
	if sha(append(got, r.body...)) != sha(data) {
		t.Fatal("resumed download differs")
	}
	if f.Fired() != 1 || h.Stats().FileBytes[sha(data)] != 10000 {
		t.Fatalf("fired %d, file bytes %d", f.Fired(), h.Stats().FileBytes[sha(data)])
	}
	// Drop with no body at all: the client gets no reply. (A fresh connection: Go's
	// Transport silently retries an idempotent request once when a reused keep-alive
	// connection closes before any reply, which would hide a single fault.)
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Drop: true})
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if _, err := fresh.Get(h.URL() + "/api/models/alice/m"); err == nil {
		t.Fatal("dropped request got a reply")
	}
}

func TestFaultDropUpload(t *testing.T) {
	h := newHub(t, hubtest.WithMultipartChunkSize(1000))
	mustSeed(t, h, "alice/m", nil)
	obj := pattern(2500, 2)
	_, br := batch(t, h, "alice/m", tokW, []string{"multipart"}, obj)
	up := br.Objects[0].Actions.Upload
	f := h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Drop: true, DropAfterBytes: 300})
	req, _ := http.NewRequest("PUT", up.Header["00001"], strings.NewReader(string(obj[:1000])))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("dropped PUT got status %d", resp.StatusCode)
	}
	if f.Fired() != 1 {
		t.Fatal("fault did not fire")
	}
	// The part was not stored: completion refuses; re-sending it works.
	var parts []map[string]any
	for n, k := range []string{"00001", "00002", "00003"} {
		if n == 0 {
			parts = append(parts, map[string]any{"partNumber": 1, "etag": `"x"`})
			continue
		}
		pr := do(t, "PUT", up.Header[k], "", obj[n*1000:min((n+1)*1000, len(obj))])
		parts = append(parts, map[string]any{"partNumber": n + 1, "etag": pr.Header.Get("ETag")})
	}
	want(t, doJSON(t, "POST", up.Href, "", map[string]any{"oid": sha(obj), "parts": parts}), 400)
	pr := do(t, "PUT", up.Header["00001"], "", obj[:1000])
	parts[0]["etag"] = pr.Header.Get("ETag")
	want(t, doJSON(t, "POST", up.Href, "", map[string]any{"oid": sha(obj), "parts": parts}), 200)
}

func TestFaultSlowBodyAndDelay(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", map[string][]byte{"a.txt": pattern(100, 3)}, hubtest.AsRegular("a.txt"))
	h.Fault(hubtest.Fault{Route: hubtest.RouteResolve, SlowBody: 20 * time.Millisecond, SlowChunk: 25})
	start := time.Now()
	r := do(t, "GET", h.URL()+"/alice/m/resolve/main/a.txt", "", nil)
	want(t, r, 200)
	if el := time.Since(start); el < 80*time.Millisecond || len(r.body) != 100 {
		t.Fatalf("slow body took %v for %d bytes, want >= 80ms", el, len(r.body))
	}
	h.Fault(hubtest.Fault{Route: hubtest.RouteResolve, Delay: 50 * time.Millisecond, Status: 502})
	start = time.Now()
	want(t, do(t, "GET", h.URL()+"/alice/m/resolve/main/a.txt", "", nil), 502)
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Fatalf("delay %v", el)
	}
}

func TestFaultExpiredURL(t *testing.T) {
	h := newHub(t, hubtest.WithMultipartChunkSize(1000))
	mustSeed(t, h, "alice/m", nil)
	obj := pattern(1500, 4)
	_, br := batch(t, h, "alice/m", tokW, []string{"multipart"}, obj)
	f := h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, ExpiredURL: true})
	r := do(t, "PUT", br.Objects[0].Actions.Upload.Header["00002"], "", obj[1000:])
	want(t, r, 403)
	if !strings.Contains(string(r.body), "<Code>AccessDenied</Code>") || !strings.Contains(string(r.body), "Request has expired") {
		t.Fatalf("body = %s", r.body)
	}
	if f.Fired() != 1 {
		t.Fatal("not fired")
	}
	want(t, do(t, "PUT", br.Objects[0].Actions.Upload.Header["00002"], "", obj[1000:]), 200)
}

func TestFaultApplyThenLose(t *testing.T) {
	h := newHub(t)
	first := mustSeed(t, h, "alice/m", nil)
	h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true, Status: 504})
	body := ndjson(t, map[string]any{"summary": "lost reply"}, fileOp("a.txt", []byte("a")))
	want(t, do(t, "POST", commitURL(h, "alice/m", "main"), tokW, body), 504)
	head, _ := h.Head("alice/m", "main")
	hist, _ := h.History("alice/m", "main")
	if head == first || hist[0].Title != "lost reply" {
		t.Fatal("the commit behind the lost reply was not applied")
	}
	// Without Status, the connection is closed with no reply.
	h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true})
	req, _ := http.NewRequest("POST", commitURL(h, "alice/m", "main"), strings.NewReader(string(
		ndjson(t, map[string]any{"summary": "dropped reply"}, fileOp("b.txt", []byte("b"))))))
	req.Header.Set("Authorization", "Bearer "+tokW)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("got a reply: %d", resp.StatusCode)
	}
	if hist, _ := h.History("alice/m", "main"); hist[0].Title != "dropped reply" {
		t.Fatal("dropped-reply commit not applied")
	}
	// A client that checks the head before retrying sees both commits.
	if n := h.Stats().Commits["alice/m@main"]; n != 2 {
		t.Fatalf("commits = %d", n)
	}
}

// TestRequestLogOverlap shows a test can assert on concurrency from the log.
func TestRequestLogOverlap(t *testing.T) {
	h := newHub(t)
	mustSeed(t, h, "alice/m", nil)
	h.Fault(hubtest.Fault{Route: hubtest.RouteInfo, Times: 2, Delay: 100 * time.Millisecond, Status: 200})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { do(t, "GET", h.URL()+"/api/models/alice/m", "", nil) })
	}
	wg.Wait()
	if err := h.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	log := h.Requests()
	if len(log) != 2 || log[0].Seq != 0 || log[1].Seq != 1 {
		t.Fatalf("log = %+v", log)
	}
	a, b := log[0], log[1]
	if !(a.Start.Before(b.End) && b.Start.Before(a.End)) {
		t.Fatalf("requests did not overlap: %+v", log)
	}
	h.ResetStats()
	if len(h.Requests()) != 0 || len(h.Stats().Requests) != 0 {
		t.Fatal("ResetStats kept counters")
	}
}
