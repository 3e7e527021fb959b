package main

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestQuantizedOnPlainBase: --quantized keep or mixed on a base without
// quantization_config is a usage error naming the flag, from merge and from plan, and
// writes nothing; --quantized bf16 (the default) merges it as usual.
func TestQuantizedOnPlainBase(t *testing.T) {
	base, adapter := inputs(t, nil)
	for _, mode := range []string{"keep", "mixed"} {
		for _, cmd := range []string{"merge", "plan"} {
			out := filepath.Join(t.TempDir(), "out")
			args := []string{cmd, "--base", base, "--adapter", adapter, "--quantized", mode}
			if cmd == "merge" {
				args = append(args, "--out", out, "--progress", "none")
			}
			code, stdout, stderr := runBin(t, args...)
			if code != exitUsage {
				t.Errorf("%s --quantized %s: exit status %d, want %d; stdout:\n%s\nstderr:\n%s", cmd, mode, code, exitUsage, stdout, stderr)
			}
			for _, w := range []string{"--quantized " + mode, "no quantization_config", base} {
				if !strings.Contains(stderr, w) {
					t.Errorf("%s --quantized %s: stderr does not mention %q:\n%s", cmd, mode, w, stderr)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("%s --quantized %s: %s exists", cmd, mode, out)
			}
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--quantized", "bf16", "--out", out, "--progress", "none"); code != 0 {
		t.Fatalf("--quantized bf16 on a BF16 base: exit status %d:\n%s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "config.json")); err != nil {
		t.Errorf("--quantized bf16 wrote no model: %v", err)
	}
}

// TestPlanQuantizedBase: plan on a block-FP8 base on the Hub reads headers only, lists
// every scale tensor it will read with the one in another shard than its weight marked,
// gives the same per-mode sizes whichever mode it plans, and shows the
// quantization_config bf16 removes by its fields.
func TestPlanQuantizedBase(t *testing.T) {
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 512, Intermediate: 2048, Layers: 2, Vocab: 8000, DType: safetensors.BF16, Seed: 3, Lazy: true})
	m.BlockFP8([2]int64{128, 128}, safetensors.F8E8M0, 4)
	m.Split(3)
	cross := "model.layers.0.self_attn.q_proj.weight_scale_inv"
	for i, names := range m.Shards {
		if slices.Contains(names, "model.layers.0.self_attn.q_proj.weight") {
			m.MoveTensor(cross, (i+1)%len(m.Shards))
		}
	}
	if len(m.Shards) < 2 || shardOf(m, cross) == shardOf(m, "model.layers.0.self_attn.q_proj.weight") {
		t.Fatalf("the fixture has %d shards and %s beside its weight", len(m.Shards), cross)
	}
	dir := t.TempDir()
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	a := fixture.NewAdapter(4, 8, "q_proj")
	w := m.Tensor("model.layers.0.self_attn.q_proj.weight")
	a.Linear("model.layers.0.self_attn.q_proj", w.Shape[0], w.Shape[1], 4, safetensors.F32, fixture.NewRand(4))
	adapter := filepath.Join(t.TempDir(), "adapter")
	if err := a.Write(adapter); err != nil {
		t.Fatal(err)
	}
	h := hubtest.New().Start(t)
	files := map[string][]byte{}
	var total int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		files[e.Name()] = b
		if strings.HasSuffix(e.Name(), ".safetensors") {
			total += int64(len(b))
		}
	}
	if _, err := h.Seed("alice/fp8", files); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HF_ENDPOINT", h.URL())
	t.Setenv("HF_HUB_CACHE", t.TempDir())

	var sizes map[string]int64
	for _, mode := range []string{"bf16", "keep", "mixed"} {
		code, stdout, stderr := runBin(t, "plan", "--base", "alice/fp8", "--adapter", adapter, "--quantized", mode, "--json")
		if code != 0 {
			t.Fatalf("plan --quantized %s: exit %d: %s %s", mode, code, stdout, stderr)
		}
		var r struct {
			Q struct {
				Mode   string           `json:"mode"`
				Bytes  map[string]int64 `json:"bytes"`
				Scales []struct {
					Name       string `json:"name"`
					File       string `json:"file"`
					WeightFile string `json:"weight_file"`
					Cross      bool   `json:"cross_shard"`
				} `json:"scales"`
			} `json:"quantization"`
		}
		if err := json.Unmarshal([]byte(stdout), &r); err != nil {
			t.Fatalf("plan --json: %v\n%s", err, stdout)
		}
		if r.Q.Mode != mode || len(r.Q.Scales) != 14 {
			t.Fatalf("plan --quantized %s: mode %q, %d scales listed, want 14", mode, r.Q.Mode, len(r.Q.Scales))
		}
		n := 0
		for _, s := range r.Q.Scales {
			weight := strings.TrimSuffix(s.Name, "_scale_inv")
			if s.File != shardOf(m, s.Name) || s.WeightFile != shardOf(m, weight) || s.Cross != (s.File != s.WeightFile) {
				t.Errorf("scale %+v: its shard, its weight's %s or the cross-shard mark is wrong", s, shardOf(m, weight))
			}
			if s.Cross {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no scale marked as in another shard, though %s is", cross)
		}
		if sizes == nil {
			sizes = r.Q.Bytes
		} else if !maps.Equal(sizes, r.Q.Bytes) {
			t.Errorf("plan --quantized %s: sizes %v; with bf16: %v", mode, r.Q.Bytes, sizes)
		}
	}
	// bf16 doubles the FP8 weights and drops the scales; keep is the base.
	var fp8, scales, base int64
	for _, x := range m.Tensors {
		base += x.Bytes()
		switch {
		case strings.HasSuffix(x.Name, "_scale_inv"):
			scales += x.Bytes()
		case x.DType == safetensors.F8E4M3:
			fp8 += x.Bytes()
		}
	}
	if sizes["bf16"] != base+fp8-scales || sizes["keep"] != base || sizes["mixed"] != base+w.Bytes()-m.Tensor(cross).Bytes() {
		t.Errorf("sizes %v; want bf16 %d, keep %d, mixed %d", sizes, base+fp8-scales, base, base+w.Bytes()-m.Tensor(cross).Bytes())
	}
	code, stdout, stderr := runBin(t, "plan", "--base", "alice/fp8", "--adapter", adapter)
	if code != 0 {
		t.Fatalf("plan: exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"quantized base: fp8, blocks 128x128, 14 scale tensors read; --quantized bf16",
		cross + " ", "(another shard than its weight's " + shardOf(m, "model.layers.0.self_attn.q_proj.weight") + ")",
		"quantization_config: fp8 (fmt e4m3, weight_block_size [128, 128], scale_fmt ue8m0, activation_scheme dynamic) -> (removed)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("plan output does not say %q:\n%s", want, stdout)
		}
	}
	h.WaitIdle(context.Background())
	served := h.Stats().BytesServed[hubtest.HostCDN]
	// Each plan reads the first 100 kB of each shard (hubsource's headerProbe) and
	// nothing more: the headers.
	if served > int64(4*len(m.Shards)*100_000) {
		t.Errorf("four plans had %d shard bytes served, of %d: more than headers", served, total)
	}
	t.Logf("four plans: %d of %d shard bytes served", served, total)
}

// shardOf is the file the fixture put a tensor in.
func shardOf(m *fixture.Model, name string) string {
	for i, names := range m.Shards {
		if slices.Contains(names, name) {
			return fixture.ShardName(i, len(m.Shards))
		}
	}
	return ""
}

// TestQuantizedRefusedAtCLI: the quantization formats hfmerge does not decode end a
// merge with status 3, naming the format and what to do instead, and write nothing.
func TestQuantizedRefusedAtCLI(t *testing.T) {
	for _, c := range []struct {
		q    map[string]any
		want []string
	}{
		{map[string]any{"quant_method": "bitsandbytes", "load_in_4bit": true}, []string{"quantization_config", "bitsandbytes", "original BF16 model"}},
		{map[string]any{"quant_method": "gptq", "bits": 4}, []string{"GPTQ", "original BF16 model"}},
		{map[string]any{"quant_method": "awq", "bits": 4}, []string{"AWQ", "original BF16 model"}},
		{map[string]any{"quant_method": "compressed-tensors", "format": "pack-quantized"}, []string{"pack-quantized", "INT4", "original BF16 model"}},
	} {
		t.Run(c.q["quant_method"].(string), func(t *testing.T) {
			base, adapter := inputs(t, func(m *fixture.Model, _ *fixture.Adapter) { m.Config["quantization_config"] = c.q })
			out := filepath.Join(t.TempDir(), "out")
			code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--progress", "none")
			if code != exitProblems {
				t.Errorf("exit status %d, want %d:\n%s", code, exitProblems, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, stderr)
				}
			}
			noShards(t, out)
		})
	}
}
