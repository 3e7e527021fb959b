package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestMergeDirectory checks the merged directory as a whole: shards, index, config,
// tokenizer files (the adapter's win), model card, and nothing left behind.
func TestMergeDirectory(t *testing.T) {
	base, adapter := inputs(t, func(m *fixture.Model, a *fixture.Adapter) {
		a.Tokenizer = true
		m.Card = "---\nlicense: llama3.1\nlicense_link: https://example.com/license\ntags:\n- text\n---\n# base\n"
		m.Config["_name_or_path"] = "fixture/base" // as save_pretrained records the Hub id it loaded
	})
	os.WriteFile(filepath.Join(base, "training_log.txt"), []byte("not published"), 0o644)
	os.WriteFile(filepath.Join(base, "pytorch_model.bin"), []byte("not copied"), 0o644)
	os.WriteFile(filepath.Join(base, "LICENSE"), []byte("license text"), 0o644)
	out := filepath.Join(t.TempDir(), "merged")
	code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--dtype", "fp32", "--progress", "plain")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	entries, _ := os.ReadDir(out)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"LICENSE", "README.md", "config.json", "generation_config.json", "hfmerge.json", "model-00001-of-00002.safetensors",
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
	for _, w := range []string{"base_model: fixture/base", "license: llama3.1", "license_link: https://example.com/license", "- hfmerge", "- lora"} {
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
	code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", base)
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
		if code, _, stderr := runBin(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d, want %d (%s)", args, code, exitUsage, stderr)
		}
	}
}

func TestPlanJSON(t *testing.T) {
	base, adapter := inputs(t, nil)
	code, stdout, stderr := runBin(t, "plan", "--base", base, "--adapter", adapter, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var r hfmerge.Report
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

// TestMergeStacked: two --adapter flags, one weighted, merge in one pass; hfmerge.json
// names both with their weights, and the card says so. A bad weight's adapter path is
// taken whole.
func TestMergeStacked(t *testing.T) {
	base, adapter := inputs(t, nil)
	out := filepath.Join(t.TempDir(), "stacked")
	code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--adapter", adapter+":0.5", "--out", out, "--progress", "none")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var prov hfmerge.Provenance
	b, _ := os.ReadFile(filepath.Join(out, hfmerge.ProvenanceFile))
	if err := json.Unmarshal(b, &prov); err != nil || len(prov.Adapters) != 2 || prov.Adapters[0].Weight != 1 || prov.Adapters[1].Weight != 0.5 {
		t.Errorf("hfmerge.json: %v\n%s", err, b)
	}
	card, _ := os.ReadFile(filepath.Join(out, "README.md"))
	if !bytes.Contains(card, []byte("(weight 0.5)")) || !bytes.Contains(card, []byte("one pass")) {
		t.Errorf("card:\n%s", card)
	}
	code, _, stderr = runBin(t, "merge", "--base", base, "--adapter", adapter+":heavy", "--out", filepath.Join(t.TempDir(), "x"))
	if code != exitUsage || !strings.Contains(stderr, ":heavy") {
		t.Errorf("an adapter path with a non-numeric suffix: exit %d: %s", code, stderr)
	}
}
