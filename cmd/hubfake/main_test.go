package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		{"--down-rate", "fast"},
		{"--token", "hf=alice:fineGrained:nowhere"},
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

func TestLinkAndTokenFlags(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/alice/m/w.safetensors", bytes.Repeat([]byte("x"), 200_000))
	hub, _, _, _ := start(t, "--seed", dir, "--down-rate", "1MB", "--up-rate", "1MiB", "--latency", "30ms",
		"--token", "hf_app=alice:app", "--token", "hf_fg=alice:fineGrained:user/alice=repo.content.read+repo.write,global=discussion.write")
	begin := time.Now()
	code, body := get(t, hub+"/api/whoami-v2", "hf_app")
	if code != 200 || !strings.Contains(body, `"app_token_as_user"`) || strings.Contains(body, "accessToken") {
		t.Fatalf("app whoami: %d %s", code, body)
	}
	if took := time.Since(begin); took < 30*time.Millisecond {
		t.Errorf("a request took %v, under the 30ms latency", took)
	}
	code, body = get(t, hub+"/api/whoami-v2", "hf_fg")
	if code != 200 || !strings.Contains(body, `"role":"fineGrained"`) || !strings.Contains(body, `"repo.write"`) || !strings.Contains(body, `"discussion.write"`) {
		t.Fatalf("fine-grained whoami: %d %s", code, body)
	}
	// 200 KB through a 1 MB/s download link take at least 0.2 s.
	begin = time.Now()
	code, body = get(t, hub+"/alice/m/resolve/main/w.safetensors", "") // the redirect would carry a token to the CDN
	if code != 200 || len(body) != 200_000 {
		t.Fatalf("download: %d, %d bytes", code, len(body))
	}
	if took := time.Since(begin); took < 200*time.Millisecond {
		t.Errorf("200 KB took %v through a 1 MB/s link", took)
	}
}

func TestByteRate(t *testing.T) {
	for in, want := range map[string]int64{"50MB": 50e6, "40MiB": 40 << 20, "1.5GB/s": 1.5e9, "1000": 1000, "0": 0, "10 KB": 10e3} {
		var b byteRate
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("%q: %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"fast", "-1MB", "NaN", "1e30GB"} {
		var b byteRate
		if err := b.Set(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestStatsOnShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"--addr", "127.0.0.1:0", "--token", "hf_w=alice:write"}, pw, io.Discard)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	var hub, stats string
	for sc.Scan() {
		line := sc.Text()
		if u, ok := strings.CutPrefix(line, "hub "); ok {
			hub = u
		}
		if strings.HasPrefix(line, "export ") {
			body := strings.NewReader(`{"name":"m"}`)
			req, _ := http.NewRequest("POST", hub+"/api/repos/create", body)
			req.Header.Set("Authorization", "Bearer hf_w")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			cancel()
		}
		if s, ok := strings.CutPrefix(line, "stats "); ok {
			stats = s
		}
	}
	if c := <-code; c != 0 {
		t.Fatalf("exit %d", c)
	}
	var st map[string]int64
	if err := json.Unmarshal([]byte(stats), &st); err != nil || st["requests"] != 1 || st["bytes_down"] != 0 {
		t.Fatalf("stats line %q: %v", stats, err)
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
