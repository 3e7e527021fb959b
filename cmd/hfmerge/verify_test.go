package main

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/safetensors"
)

// TestVerifyCLI: verify on a push by the CLI exits 0 having downloaded no shard byte;
// on a copy with one element of one tensor changed by 1 ulp it exits 3 naming that
// tensor, and 0 under --tolerance 1ulp.
func TestVerifyCLI(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 3)
	if code, stdout, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatalf("push: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.h.ResetStats()
	args := []string{"verify", "--base", "alice/base", "--adapter", e.adapter, "--progress", "none"}
	code, stdout, stderr := e.run(t, bobRead, append(args, "--merged", "alice/merged", "--json")...)
	if code != 0 {
		t.Fatalf("verify: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var res struct {
		Verified   bool  `json:"verified"`
		ShardBytes int64 `json:"shard_bytes_downloaded"`
		Shards     []struct {
			Name      string `json:"name"`
			Identical bool   `json:"identical"`
		} `json:"shards"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if !res.Verified || res.ShardBytes != 0 || len(res.Shards) != 3 {
		t.Fatalf("%s", stdout)
	}
	st := e.h.Stats()
	for name, b := range e.shards {
		if n := st.FileBytes[sum(b)]; n != 0 {
			t.Errorf("%s: %d bytes downloaded", name, n)
		}
	}

	// A copy of the merge with one tensor changed, published by another tool (no
	// hfmerge.json).
	const tensor = "model.layers.1.self_attn.q_proj.weight"
	files := map[string][]byte{}
	entries, _ := os.ReadDir(e.local)
	for _, en := range entries {
		if en.Name() != "hfmerge.json" {
			files[en.Name()], _ = os.ReadFile(filepath.Join(e.local, en.Name()))
		}
	}
	altered := ""
	for name, b := range files {
		if !strings.HasSuffix(name, ".safetensors") {
			continue
		}
		h, err := safetensors.ParseHeader(b, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		if ti, ok := h.Tensor(tensor); ok {
			at := h.DataOffset + ti.Begin + 2*7
			binary.LittleEndian.PutUint16(b[at:], binary.LittleEndian.Uint16(b[at:])+1)
			altered = name
		}
	}
	if _, err := e.h.Seed("alice/altered", files); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = e.run(t, bobRead, append(args, "--merged", "alice/altered@main")...)
	if code != 3 || !strings.Contains(stdout, tensor+": 1 of ") || !strings.Contains(stdout, "NOT verified") ||
		!strings.Contains(stdout, altered+" ") || !strings.Contains(stdout, "hfmerge.json") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	t.Logf("verify of the altered copy:\n%s", stdout)
	code, stdout, stderr = e.run(t, bobRead, append(args, "--merged", "alice/altered", "--tolerance", "1ulp")...)
	if code != 0 || !strings.Contains(stdout, "within 1 ulp") || !strings.Contains(stdout, "1 ulp ×1") {
		t.Fatalf("with --tolerance 1ulp: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if code, _, stderr = e.run(t, bobRead, append(args, "--merged", "alice/altered", "--tolerance", "one")...); code != 2 || !strings.Contains(stderr, "--tolerance") {
		t.Errorf("bad --tolerance: exit %d, %s", code, stderr)
	}
}
