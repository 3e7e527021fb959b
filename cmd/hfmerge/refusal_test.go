package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// hfmerge runs the command in-process and returns its exit status and output.
func runBin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"hfmerge"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// inputs writes a small Llama and an adapter with LoRA on q_proj and v_proj, after
// letting edit change them.
func inputs(t *testing.T, edit func(m *fixture.Model, a *fixture.Adapter)) (base, adapter string) {
	t.Helper()
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 64, Intermediate: 128, Layers: 2, Vocab: 96, DType: safetensors.BF16, Seed: 1})
	m.Split(2)
	a := fixture.NewAdapter(8, 16, "q_proj", "v_proj")
	r := fixture.NewRand(2)
	for _, mod := range []string{"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"} {
		w := m.Tensor(mod + ".weight")
		a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.F32, r)
	}
	if edit != nil {
		edit(m, a)
	}
	return writeInputs(t, m, a)
}

// writeInputs writes a generated base and adapter into a temp dir.
func writeInputs(t *testing.T, m *fixture.Model, a *fixture.Adapter) (base, adapter string) {
	t.Helper()
	dir := t.TempDir()
	base, adapter = filepath.Join(dir, "base"), filepath.Join(dir, "adapter")
	if err := m.Write(base); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(adapter); err != nil {
		t.Fatal(err)
	}
	return base, adapter
}

// noShards fails if out holds any safetensors file or a staging directory.
func noShards(t *testing.T, out string) {
	t.Helper()
	entries, err := os.ReadDir(out)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".safetensors") || strings.HasPrefix(e.Name(), ".hfmerge-") {
			t.Errorf("%s was left in --out", e.Name())
		}
	}
}

func TestRefusals(t *testing.T) {
	q := "model.layers.0.self_attn.q_proj"
	cases := []struct {
		name string
		edit func(m *fixture.Model, a *fixture.Adapter)
		// after runs on the written directories, for damage the fixture cannot describe.
		after func(t *testing.T, base, adapter string)
		code  int
		want  []string
	}{
		{"unmapped tensor", func(m *fixture.Model, a *fixture.Adapter) {
			a.Linear("model.layers.7.self_attn.q_proj", 64, 64, 8, safetensors.F32, fixture.NewRand(3))
		}, nil, 3, []string{"model.layers.7.self_attn.q_proj", "not in the base model"}},
		{"shape mismatch", func(m *fixture.Model, a *fixture.Adapter) {
			a.Tensor(fixture.Key(q, "lora_B.weight")).Shape = []int64{48, 8}
			a.Tensor(fixture.Key(q, "lora_B.weight")).Values = make([]float64, 48*8)
		}, nil, 3, []string{q, "do", "fit", "model.layers.0.self_attn.q_proj.weight"}},
		{"rank mismatch", func(m *fixture.Model, a *fixture.Adapter) {
			a.Config["r"] = 16
		}, nil, 3, []string{q, "rank mismatch", "r = 16"}},
		{"rank pattern mismatch", func(m *fixture.Model, a *fixture.Adapter) {
			a.Config["rank_pattern"] = map[string]any{"q_proj": 4}
		}, nil, 3, []string{q, "rank mismatch", "r = 4"}},
		{"non-LoRA type", func(m *fixture.Model, a *fixture.Adapter) {
			a.Config["peft_type"] = "LOHA"
		}, nil, 3, []string{"adapter_config.json", "peft_type", "LOHA", "LORA adapters only"}},
		{"PiSSA", func(m *fixture.Model, a *fixture.Adapter) { a.Config["init_lora_weights"] = "pissa_niter_4" }, nil, 3,
			[]string{"init_lora_weights", "pissa_niter_4", "convert"}},
		{"OLoRA", func(m *fixture.Model, a *fixture.Adapter) { a.Config["init_lora_weights"] = "olora" }, nil, 3, []string{"init_lora_weights", "olora"}},
		{"CorDA", func(m *fixture.Model, a *fixture.Adapter) { a.Config["init_lora_weights"] = "corda" }, nil, 3, []string{"init_lora_weights", "corda"}},
		{"LoRA-GA", func(m *fixture.Model, a *fixture.Adapter) { a.Config["init_lora_weights"] = "lora_ga" }, nil, 3, []string{"init_lora_weights", "lora_ga"}},
		{"LoftQ", func(m *fixture.Model, a *fixture.Adapter) { a.Config["init_lora_weights"] = "loftq" }, nil, 3, []string{"init_lora_weights", "loftq"}},
		{"aLoRA", func(m *fixture.Model, a *fixture.Adapter) { a.Config["alora_invocation_tokens"] = []int{5, 6} }, nil, 3, []string{"alora_invocation_tokens", "aLoRA"}},
		{"Arrow", func(m *fixture.Model, a *fixture.Adapter) { a.Config["arrow_config"] = map[string]any{"top_k": 3} }, nil, 3, []string{"arrow_config", "Arrow"}},
		{"QALoRA", func(m *fixture.Model, a *fixture.Adapter) { a.Config["use_qalora"] = true }, nil, 3, []string{"use_qalora", "QA-LoRA"}},
		{"Megatron", func(m *fixture.Model, a *fixture.Adapter) { a.Config["megatron_config"] = map[string]any{"tp": 2} }, nil, 3, []string{"megatron_config", "Megatron"}},
		{"layer replication", func(m *fixture.Model, a *fixture.Adapter) { a.Config["layer_replication"] = [][]int{{0, 2}, {1, 2}} }, nil, 3, []string{"layer_replication"}},
		{"missing adapter_config.json", nil, func(t *testing.T, base, adapter string) {
			os.Remove(filepath.Join(adapter, "adapter_config.json"))
		}, 3, []string{"adapter_config.json", "missing"}},
		{"invalid adapter_config.json", nil, func(t *testing.T, base, adapter string) {
			os.WriteFile(filepath.Join(adapter, "adapter_config.json"), []byte(`{"peft_type": "LORA", "r": "sixteen"}`), 0o644)
		}, 3, []string{"adapter_config.json", `"r"`, "integer"}},
		{"adapter_config.json not JSON", nil, func(t *testing.T, base, adapter string) {
			os.WriteFile(filepath.Join(adapter, "adapter_config.json"), []byte(`{"peft_type": "LORA",`), 0o644)
		}, 3, []string{"adapter_config.json", "not a JSON object"}},
		{"truncated shard", nil, func(t *testing.T, base, adapter string) {
			p := filepath.Join(base, "model-00002-of-00002.safetensors")
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-100)
		}, 3, []string{"model-00002-of-00002.safetensors", "truncated"}},
		{"corrupt shard header", nil, func(t *testing.T, base, adapter string) {
			p := filepath.Join(base, "model-00001-of-00002.safetensors")
			b, _ := os.ReadFile(p)
			copy(b[8:], `{"a":`)
			os.WriteFile(p, b, 0o644)
		}, 3, []string{"model-00001-of-00002.safetensors", "corrupt"}},
		{"non-finite value", func(m *fixture.Model, a *fixture.Adapter) {
			for _, x := range m.Tensors {
				x.DType = safetensors.F16
				x.Values = fixture.NewRand(4).Normal(int(x.Elements()), 0.02, safetensors.F16)
			}
			a.Config["lora_alpha"] = 1e9
		}, nil, 1, []string{"not a finite F16", "model.layers."}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, adapter := inputs(t, c.edit)
			if c.after != nil {
				c.after(t, base, adapter)
			}
			out := filepath.Join(t.TempDir(), "out")
			code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--progress", "none")
			if code != c.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", code, c.code, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, stderr)
				}
			}
			noShards(t, out)
			if c.code == 3 {
				// plan finds the same problem without reading tensor bytes.
				pcode, pout, _ := runBin(t, "plan", "--base", base, "--adapter", adapter)
				if pcode != 3 {
					t.Errorf("plan: exit status %d, want 3", pcode)
				}
				for _, w := range c.want {
					if !strings.Contains(pout, w) {
						t.Errorf("plan output does not mention %q:\n%s", w, pout)
					}
				}
			}
		})
	}
}
