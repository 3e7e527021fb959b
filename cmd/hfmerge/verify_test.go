package main

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
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
		Exact      bool  `json:"exact"`
		ShardBytes int64 `json:"shard_bytes_downloaded"`
		Shards     []struct {
			Name      string `json:"name"`
			Identical bool   `json:"identical"`
		} `json:"shards"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if !res.Verified || !res.Exact || res.ShardBytes != 0 || len(res.Shards) != 3 {
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
	if code != 0 || !strings.Contains(stdout, "within 1 ulp") || !strings.Contains(stdout, "1 ulp ×1") ||
		!strings.Contains(stdout, "verified within 1 ulp: alice/altered is this merge but for rounding (1 of 3 shards not bit-identical)") {
		t.Fatalf("with --tolerance 1ulp: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if code, _, stderr = e.run(t, bobRead, append(args, "--merged", "alice/altered", "--tolerance", "one")...); code != 2 || !strings.Contains(stderr, "--tolerance") {
		t.Errorf("bad --tolerance: exit %d, %s", code, stderr)
	}
}

// TestVerifyStackedCLI: a push of two stacked adapters verifies with the same two, at
// the commit it made even after the branch moved on (--merged REPO@COMMIT reads that
// commit only), and not with one adapter, another weight, or at the branch's new head.
// Offline, verify refuses as a usage error.
func TestVerifyStackedCLI(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	if code, stdout, stderr := e.push(t, aliceWrite, "--adapter", e.adapter+":0.5"); code != 0 {
		t.Fatalf("push: exit %d\n%s\n%s", code, stdout, stderr)
	}
	stacked, ok := e.h.Head("alice/merged", "main")
	if !ok {
		t.Fatal("no main")
	}
	if code, stdout, stderr := e.push(t, aliceWrite); code != 0 { // main moves on: one adapter
		t.Fatalf("push: exit %d\n%s\n%s", code, stdout, stderr)
	}
	verify := func(merged string, adapters []string, extra ...string) (int, string, string) {
		args := []string{"verify", "--base", "alice/base", "--progress", "none", "--merged", merged}
		for _, a := range adapters {
			args = append(args, "--adapter", a)
		}
		return e.run(t, bobRead, append(args, extra...)...)
	}
	both := []string{e.adapter, e.adapter + ":0.5"}
	code, stdout, stderr := verify("alice/merged@"+stacked, both)
	if code != 0 || !strings.Contains(stdout, "commit "+stacked[:12]) || !strings.Contains(stdout, "verified: ") {
		t.Fatalf("stacked at %s: exit %d\n%s\n%s", stacked, code, stdout, stderr)
	}
	for _, c := range []struct {
		merged   string
		adapters []string
		note     string
	}{
		{"alice/merged", both, "1 adapters, given 2"},                // main is the one-adapter push
		{"alice/merged@" + stacked, both[:1], "2 adapters, given 1"}, // one adapter
		{"alice/merged@" + stacked, []string{e.adapter, e.adapter + ":0.25"}, "weight 0.5, given 0.25"},
	} {
		code, stdout, stderr := verify(c.merged, c.adapters)
		if code != 3 || !strings.Contains(stdout, "NOT verified") || !strings.Contains(stdout, c.note) {
			t.Errorf("%s with %v: exit %d\n%s\n%s", c.merged, c.adapters, code, stdout, stderr)
		}
	}
	code, _, stderr = verify("alice/merged@"+stacked, both, "--offline")
	if code != 2 || !strings.Contains(stderr, "cannot run offline") {
		t.Errorf("offline: exit %d\n%s", code, stderr)
	}
}

// TestVerifyQuantizedCLI: a merge into an MXFP4 expert base with --quantized keep,
// published by another hand (the files of merge --out, seeded), verifies with the same
// mode and fails with another (bf16: other tensors, config and recorded options).
func TestVerifyQuantizedCLI(t *testing.T) {
	base, adapter := mxfp4Inputs(t, 8)
	out := filepath.Join(t.TempDir(), "merged")
	if code, stdout, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--quantized", "keep", "--progress", "none"); code != 0 {
		t.Fatalf("merge: exit %d: %s%s", code, stdout, stderr)
	}
	h := hubtest.New().Start(t)
	files := map[string][]byte{}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		files[e.Name()], _ = os.ReadFile(filepath.Join(out, e.Name()))
	}
	if _, err := h.Seed("alice/keep", files); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HF_ENDPOINT", h.URL())
	t.Setenv("HF_HUB_CACHE", t.TempDir())
	args := []string{"verify", "--base", base, "--adapter", adapter, "--merged", "alice/keep", "--progress", "none"}
	if code, stdout, stderr := runBin(t, append(args, "--quantized", "keep")...); code != 0 || !strings.Contains(stdout, "verified: ") {
		t.Fatalf("keep: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr := runBin(t, append(args, "--quantized", "bf16")...)
	if code != 3 || !strings.Contains(stdout, "config.json                                  DIFFERS") || !strings.Contains(stdout, "options") {
		t.Fatalf("bf16: exit %d\n%s%s", code, stdout, stderr)
	}
}
