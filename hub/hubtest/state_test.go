package hubtest_test

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

func TestStateDirSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	h := newHub(t, hubtest.WithStateDir(dir))
	big := pattern(4000, 1)
	mustSeed(t, h, "alice/m", map[string][]byte{"model.safetensors": big, "config.json": []byte("{}")}, hubtest.Private())
	body := ndjson(t, map[string]any{"summary": "api"}, fileOp("README.md", []byte("# hi")))
	want(t, do(t, "POST", commitURL(h, "alice/m", "main"), tokW, body), 200)
	head, _ := h.Head("alice/m", "main")

	h2 := newHub(t, hubtest.WithStateDir(dir))
	if got, _ := h2.Head("alice/m", "main"); got != head {
		t.Fatalf("head after reload = %s, want %s", got, head)
	}
	for p, wantData := range map[string][]byte{"model.safetensors": big, "README.md": []byte("# hi")} {
		got, err := h2.File("alice/m", "main", p)
		if err != nil || !bytes.Equal(got, wantData) {
			t.Fatalf("%s after reload: %v", p, err)
		}
	}
	wantErr(t, do(t, "GET", h2.URL()+"/api/models/alice/m", "", nil), 401, hubtest.CodeRepoNotFound)
	loc := do(t, "HEAD", h2.URL()+"/alice/m/resolve/main/model.safetensors", tokR, nil).Header.Get("Location")
	if r := do(t, "GET", loc, "", nil); sha(r.body) != sha(big) {
		t.Fatal("LFS object not served after reload")
	}
	hist, _ := h2.History("alice/m", "main")
	if len(hist) != 3 {
		t.Fatalf("history after reload = %d commits", len(hist))
	}
}

func TestServe(t *testing.T) {
	h := hubtest.New(hubtest.WithToken(tokW, "alice", hubtest.ScopeWrite))
	mustSeed(t, h, "alice/m", map[string][]byte{"a.txt": []byte("a")})
	hubLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cdnLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.Serve(ctx, hubLn, cdnLn) }()
	// The listeners are open already: the request waits until Serve accepts it.
	r := do(t, "GET", "http://"+hubLn.Addr().String()+"/alice/m/resolve/main/a.txt", "", nil)
	if string(r.body) != "a" {
		t.Fatalf("served %s", r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestDeps keeps the fake independent: it must check the protocol, not our client's
// idea of it, so it imports the standard library only, plus the BLAKE3 and LZ4
// primitives the Xet CAS needs (and what they import).
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	allowed := []string{"lukechampine.com/blake3", "github.com/pierrec/lz4/v4", "github.com/klauspost/cpuid/v2"}
	for _, p := range strings.Fields(string(out)) {
		ok := p == "github.com/hfmerge/hfmerge/hub/hubtest"
		for _, a := range allowed {
			ok = ok || p == a || strings.HasPrefix(p, a+"/")
		}
		if !ok {
			t.Errorf("hubtest imports %s; only the standard library and %v are allowed", p, allowed)
		}
	}
}
