package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// mxfp4Inputs writes a small gpt-oss-like MXFP4 base (2 layers of 4 experts, blocks and
// scales in two shards) and an expert LoRA on layer 0's gate_up_proj, of the given
// lora_alpha (rank 4).
func mxfp4Inputs(t *testing.T, alpha float64) (base, adapter string) {
	t.Helper()
	m := fixture.MoE(fixture.MoESpec{Hidden: 64, Intermediate: 64, Experts: 4, Layers: 2, Vocab: 96,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 61})
	m.MXFP4(62)
	m.Split(2)
	a := fixture.NewExpertAdapter(4, alpha, "0.20.0", "mlp.experts.gate_up_proj")
	a.Experts(fixture.ExpertsModule(0), 0, 4, 4, 64, 128, safetensors.F32, fixture.NewRand(63))
	return writeInputs(t, m, a)
}

// TestMXFP4KeepCLI: plan --quantized keep on an MXFP4 base warns that the delta mostly
// rounds away and gives keep's size; merge --quantized keep writes the requantized
// _blocks and _scales (U8, no BF16 expert tensor), keeps quantization_config, and
// logs how much of the delta survived, with the tensor's name.
func TestMXFP4KeepCLI(t *testing.T) {
	base, adapter := mxfp4Inputs(t, 8)
	code, stdout, stderr := runBin(t, "plan", "--base", base, "--adapter", adapter, "--quantized", "keep")
	if code != 0 {
		t.Fatalf("plan: exit %d: %s%s", code, stdout, stderr)
	}
	for _, want := range []string{"E2M1 has one mantissa bit", "model.layers.0.mlp.experts.gate_up_proj", "keep "} {
		if !strings.Contains(stdout+stderr, want) {
			t.Errorf("plan output lacks %q:\n%s%s", want, stdout, stderr)
		}
	}

	out := filepath.Join(t.TempDir(), "merged")
	code, stdout, stderr = runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--quantized", "keep", "--progress", "none")
	if code != 0 {
		t.Fatalf("merge: exit %d: %s%s", code, stdout, stderr)
	}
	var line string
	for _, l := range strings.Split(stdout+stderr, "\n") {
		if strings.Contains(l, "requantized") && strings.Contains(l, "tensor=model.layers.0.mlp.experts.gate_up_proj ") {
			line = l
		}
	}
	for _, want := range []string{"format=MXFP4", "elements=32768", "changed=", "changed_share=", "delta_error="} {
		if !strings.Contains(line, want) {
			t.Errorf("no survival report with %q in the log; got line %q of:\n%s%s", want, line, stdout, stderr)
		}
	}

	dtypes := map[string]safetensors.DType{}
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
			dtypes[x.Name] = x.DType
		}
	}
	p := "model.layers.0.mlp.experts.gate_up_proj"
	if dtypes[p+"_blocks"] != safetensors.U8 || dtypes[p+"_scales"] != safetensors.U8 {
		t.Errorf("%s_blocks is %q and _scales %q, want U8", p, dtypes[p+"_blocks"], dtypes[p+"_scales"])
	}
	if _, ok := dtypes[p]; ok {
		t.Errorf("%s (dequantized) is in the output", p)
	}
	var cfg map[string]any
	data, _ := os.ReadFile(filepath.Join(out, "config.json"))
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	if q, _ := cfg["quantization_config"].(map[string]any); q == nil || q["quant_method"] != "mxfp4" {
		t.Errorf("config.json quantization_config = %v", cfg["quantization_config"])
	}
}

// TestMXFP4KeepLostWarning: an adapter whose change is far below the E2M1 grid's step
// (lora_alpha 0.008: a delta about 1e-5 against steps of 2e-3) is lost in keep mode,
// and merge says so with a warning naming the tensor.
func TestMXFP4KeepLostWarning(t *testing.T) {
	base, adapter := mxfp4Inputs(t, 0.008)
	out := filepath.Join(t.TempDir(), "merged")
	code, stdout, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--quantized", "keep", "--progress", "none")
	if code != 0 {
		t.Fatalf("merge: exit %d: %s%s", code, stdout, stderr)
	}
	var found bool
	for _, l := range strings.Split(stdout+stderr, "\n") {
		found = found || strings.Contains(l, "level=WARN") && strings.Contains(l, "lost to the MXFP4 grid") &&
			strings.Contains(l, "tensor=model.layers.0.mlp.experts.gate_up_proj ")
	}
	if !found {
		t.Errorf("no warning that the delta was lost:\n%s%s", stdout, stderr)
	}
}
