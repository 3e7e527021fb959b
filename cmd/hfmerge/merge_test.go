package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// countingFile counts the bytes read through it.
type countingFile struct {
	file
	n *atomic.Int64
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.file.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// TestPlanReadsHeadersOnly: planning reads each safetensors file's header and nothing
// else, and finds the same problems merge does.
func TestPlanReadsHeadersOnly(t *testing.T) {
	base, adapter := inputs(t, func(m *fixture.Model, a *fixture.Adapter) {
		a.Linear("model.layers.9.mlp.up_proj", 128, 64, 8, safetensors.F32, fixture.NewRand(5)) // a problem
	})
	var read atomic.Int64
	var headers, total int64
	open := func(path string) (file, error) {
		f, err := openOS(path)
		if err != nil {
			return nil, err
		}
		var prefix [8]byte
		f.ReadAt(prefix[:], 0)
		n, _ := safetensors.HeaderLen(prefix[:])
		headers += 8 + n
		total += f.Size()
		return &countingFile{f, &read}, nil
	}
	l, err := loadSources(context.Background(), &options{base: base, adapter: adapter}, open, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := makePlan(l)
	if p.OK() || !strings.Contains(p.Problems[0].String(), "model.layers.9.mlp.up_proj") {
		t.Fatalf("problems: %v", p.Problems)
	}
	// ReadHeader reads the 8-byte length, then the JSON: exactly the headers.
	if got := read.Load(); got != headers {
		t.Errorf("planning read %d bytes; the headers are %d bytes (files %d bytes)", got, headers, total)
	}
	if headers*10 > total {
		t.Fatalf("fixture headers are too large a share of the files for this test to mean anything")
	}
}

// TestMergeDirectory checks the merged directory as a whole: shards, index, config,
// tokenizer files (the adapter's win), model card, and nothing left behind.
func TestMergeDirectory(t *testing.T) {
	base, adapter := inputs(t, func(m *fixture.Model, a *fixture.Adapter) {
		a.Tokenizer = true
		m.Card = "---\nlicense: llama3.1\nlicense_link: https://example.com/license\ntags:\n- text\n---\n# base\n"
	})
	os.WriteFile(filepath.Join(base, "pytorch_model.bin"), []byte("not copied"), 0o644)
	os.WriteFile(filepath.Join(base, "LICENSE"), []byte("license text"), 0o644)
	out := filepath.Join(t.TempDir(), "merged")
	code, _, stderr := hfmerge(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--dtype", "fp32", "--progress", "plain")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	entries, _ := os.ReadDir(out)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"LICENSE", "README.md", "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
		"model-00002-of-00002.safetensors", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("merged directory holds\n  %v\nwant\n  %v", names, want)
	}
	tok, _ := os.ReadFile(filepath.Join(out, "tokenizer_config.json"))
	if !bytes.Contains(tok, []byte(`"from": "adapter"`)) {
		t.Errorf("tokenizer_config.json is not the adapter's: %s", tok)
	}
	var cfg map[string]any
	data, _ := os.ReadFile(filepath.Join(out, "config.json"))
	if err := json.Unmarshal(data, &cfg); err != nil || cfg["torch_dtype"] != "float32" {
		t.Errorf("config.json torch_dtype = %v (%v)", cfg["torch_dtype"], err)
	}
	var idx struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	data, _ = os.ReadFile(filepath.Join(out, "model.safetensors.index.json"))
	if err := json.Unmarshal(data, &idx); err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, shard := range []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
		f, err := os.Open(filepath.Join(out, shard))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		h, err := safetensors.ReadHeader(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", shard, err)
		}
		for _, x := range h.Tensors {
			if x.DType != safetensors.F32 {
				t.Errorf("%s is %s after --dtype fp32", x.Name, x.DType)
			}
			if idx.WeightMap[x.Name] != shard {
				t.Errorf("index maps %s to %q, it is in %s", x.Name, idx.WeightMap[x.Name], shard)
			}
			sum += x.Len()
		}
	}
	if idx.Metadata["total_size"] != float64(sum) {
		t.Errorf("total_size %v, tensors hold %d bytes", idx.Metadata["total_size"], sum)
	}
	card, _ := os.ReadFile(filepath.Join(out, "README.md"))
	for _, w := range []string{"base_model: fixture/base", "license: llama3.1", "license_link: \"https://example.com/license\"", "- hfmerge", "- lora"} {
		if !bytes.Contains(card, []byte(w)) {
			t.Errorf("model card lacks %q:\n%s", w, card)
		}
	}
	if !strings.Contains(stderr, "shard merged") {
		t.Errorf("--progress plain printed no step lines: %s", stderr)
	}
}

// TestMergeRefusesInputAsOutput protects the inputs from being overwritten.
func TestMergeRefusesInputAsOutput(t *testing.T) {
	base, adapter := inputs(t, nil)
	code, _, stderr := hfmerge(t, "merge", "--base", base, "--adapter", adapter, "--out", base)
	if code != exitUsage || !strings.Contains(stderr, "is the --base directory") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"merge", "--adapter", "x", "--out", "y"},
		{"merge", "--base", "x", "--adapter", "y"},
		{"plan", "--base", "x", "--adapter", "y", "--dtype", "int8"},
		{"plan", "--base", "x", "--adapter", "y", "--tied-embeddings", "maybe"},
		{"plan", "--base", "x", "--adapter", "y", "--jobs", "0"},
		{"plan", "--nope"},
		{"frobnicate"},
	} {
		if code, _, stderr := hfmerge(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d (%s)", args, code, exitUsage, stderr)
		}
	}
}

func TestPlanJSON(t *testing.T) {
	base, adapter := inputs(t, nil)
	code, stdout, stderr := hfmerge(t, "plan", "--base", base, "--adapter", adapter, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	changed := 0
	for _, s := range r.Shards {
		changed += len(s.Changes)
	}
	if changed != 2 || len(r.Modules) != 2 || len(r.Problems) != 0 || r.Estimate.PeakRAM <= 0 || r.TotalBytes <= 0 {
		t.Errorf("plan JSON: %d changed tensors, %d modules, problems %v, estimate %+v", changed, len(r.Modules), r.Problems, r.Estimate)
	}
}
