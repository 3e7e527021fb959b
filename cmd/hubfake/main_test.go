package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// start runs hubfake until the test ends and returns its Hub and CDN URLs.
func start(t *testing.T, args ...string) (hub, cdn string, lines []string, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, append([]string{"--addr", "127.0.0.1:0"}, args...), pw, &stderr)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		if u, ok := strings.CutPrefix(line, "hub "); ok {
			hub = u
		}
		if u, ok := strings.CutPrefix(line, "cdn "); ok {
			cdn = u
			break
		}
	}
	if hub == "" || cdn == "" {
		cancel()
		t.Fatalf("hubfake printed %q; stderr %s", lines, stderr.String())
	}
	go io.Copy(io.Discard, pr)
	stopped := false
	stop = func() int {
		if stopped {
			return 0
		}
		stopped = true
		cancel()
		return <-code
	}
	t.Cleanup(func() { stop() })
	return hub, cdn, lines, stop
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSeedStateAndRestart(t *testing.T) {
	seed, state := t.TempDir(), t.TempDir()
	weights := bytes.Repeat([]byte("w"), 3000)
	writeFile(t, filepath.Join(seed, "alice", "base", "model.safetensors"), weights)
	writeFile(t, filepath.Join(seed, "alice", "base", "config.json"), []byte(`{"a":1}`))
	writeFile(t, filepath.Join(seed, "alice", "base", "big.txt"), bytes.Repeat([]byte("t"), 2000))
	writeFile(t, filepath.Join(seed, "datasets", "alice", "d", "data.csv"), []byte("x,y\n"))

	hub, cdn, lines, stop := start(t, "--seed", seed, "--state", state, "--lfs-threshold", "1000", "--token", "hf_w=alice:write")
	if !strings.Contains(strings.Join(lines, "\n"), "seeded alice/base") || hub == cdn {
		t.Fatalf("output = %q", lines)
	}
	if code, body := get(t, hub+"/alice/base/resolve/main/config.json", ""); code != 200 || body != `{"a":1}` {
		t.Fatalf("config.json: %d %q", code, body)
	}
	// LFS by pattern and by size: resolved through the CDN by the default client.
	for _, p := range []string{"model.safetensors", "big.txt"} {
		code, body := get(t, hub+"/alice/base/resolve/main/"+p, "")
		if code != 200 || len(body) < 2000 {
			t.Fatalf("%s: %d, %d bytes", p, code, len(body))
		}
	}
	if code, _ := get(t, hub+"/datasets/alice/d/resolve/main/data.csv", ""); code != 200 {
		t.Fatalf("dataset file: %d", code)
	}
	if code, body := get(t, hub+"/api/whoami-v2", "hf_w"); code != 200 || !strings.Contains(body, `"name":"alice"`) {
		t.Fatalf("whoami: %d %s", code, body)
	}
	_, info := get(t, hub+"/api/models/alice/base", "")
	if code := stop(); code != 0 {
		t.Fatalf("exit status %d", code)
	}

	// Restart with the same state and seed: the repo is there, unchanged (no new commit).
	hub2, _, lines, _ := start(t, "--seed", seed, "--state", state, "--lfs-threshold", "1000")
	if strings.Contains(strings.Join(lines, "\n"), "seeded alice/base") {
		t.Fatalf("identical seed committed again: %q", lines)
	}
	if _, info2 := get(t, hub2+"/api/models/alice/base", ""); info2 != info {
		t.Fatalf("info after restart differs:\n%s\n%s", info, info2)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--token", "nope"},
		{"--token", "hf=admin"},
		{"--org", "=x"},
		{"extra"},
		{"--no-such-flag"},
	} {
		var out, errb bytes.Buffer
		if code := run(t.Context(), args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"--addr", "127.0.0.1:0", "--state", "/dev/null/x", "--seed", "/nonexistent"}, &out, &errb); code != 1 {
		t.Errorf("bad seed dir: exit %d, want 1", code)
	}
}

func TestXet(t *testing.T) {
	hub, _, lines, stop := start(t, "--xet", "--token", "hf_w=alice:write", "--seed", seedOne(t))
	var cas string
	for _, l := range lines {
		if u, ok := strings.CutPrefix(l, "cas "); ok {
			cas = u
		}
	}
	if cas == "" || cas == hub {
		t.Fatalf("no CAS address in %q", lines)
	}
	code, body := get(t, hub+"/api/models/alice/base/xet-write-token/main", "hf_w")
	if code != 200 || !strings.Contains(body, `"casUrl":"`+cas+`"`) || !strings.Contains(body, `"accessToken":"xet_`) {
		t.Fatalf("write token: %d %s", code, body)
	}
	if code, body := get(t, cas+"/v1/chunks/default-merkledb/"+strings.Repeat("0", 64), ""); code != 401 {
		t.Fatalf("CAS without a token: %d %s", code, body)
	}
	if code := stop(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	// Without --xet there is no CAS and the token route is 404.
	hub, _, lines, _ = start(t, "--token", "hf_w=alice:write", "--seed", seedOne(t))
	if strings.Contains(strings.Join(lines, "\n"), "cas ") {
		t.Fatalf("a CAS without --xet: %q", lines)
	}
	if code, _ := get(t, hub+"/api/models/alice/base/xet-write-token/main", "hf_w"); code != 404 {
		t.Fatalf("token route without --xet: %d", code)
	}
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"--cas-addr", "127.0.0.1:0"}, &out, &errb); code != 2 {
		t.Fatalf("--cas-addr without --xet: exit %d", code)
	}
}

func seedOne(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "alice", "base", "config.json"), []byte(`{}`))
	return dir
}
