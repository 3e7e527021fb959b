package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// fp8KeepInputs is a small block-FP8 Llama with a LoRA of lora_alpha alpha on layer 0's
// q_proj.
func fp8KeepInputs(t *testing.T, alpha float64) (base, adapter string) {
	t.Helper()
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 128, Intermediate: 256, Layers: 1, Vocab: 96, DType: safetensors.BF16, Seed: 71})
	m.BlockFP8([2]int64{32, 32}, safetensors.F8E8M0, 72)
	m.Split(2)
	a := fixture.NewAdapter(4, alpha, "q_proj")
	w := m.Tensor("model.layers.0.self_attn.q_proj.weight")
	a.Linear("model.layers.0.self_attn.q_proj", w.Shape[0], w.Shape[1], 4, safetensors.F32, fixture.NewRand(73))
	return writeInputs(t, m, a)
}

// TestFP8KeepMessages: plan --quantized keep on a block-FP8 base warns, before anything
// is merged, that the delta may round away and that the merge reports how much
// survived; merge logs that report for the tensor in words and figures, and a delta far
// below the grid's step (lora_alpha 1e-4) is reported with a warning that it was lost.
func TestFP8KeepMessages(t *testing.T) {
	const q = "tensor=model.layers.0.self_attn.q_proj.weight "
	base, adapter := fp8KeepInputs(t, 8)
	code, stdout, stderr := runBin(t, "plan", "--base", base, "--adapter", adapter, "--quantized", "keep")
	if code != 0 {
		t.Fatalf("plan: exit %d: %s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "warning: --quantized keep: requantizes 1 touched weights to F8_E4M3") ||
		!strings.Contains(stdout, "how much survived") {
		t.Errorf("plan does not warn that the delta may round away:\n%s%s", stdout, stderr)
	}

	for _, c := range []struct {
		alpha float64
		level string
		words []string
	}{
		{8, "level=INFO", []string{"of its elements changed value; the change kept is", "changed_share=", "delta_error="}},
		{1e-4, "level=WARN", []string{"lost to the F8_E4M3 grid", "consider --quantized bf16 or mixed", "delta_error="}},
	} {
		base, adapter := fp8KeepInputs(t, c.alpha)
		out := filepath.Join(t.TempDir(), "merged")
		code, stdout, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--quantized", "keep", "--progress", "none")
		if code != 0 {
			t.Fatalf("merge (lora_alpha %g): exit %d: %s%s", c.alpha, code, stdout, stderr)
		}
		var line string
		for _, l := range strings.Split(stdout+stderr, "\n") {
			if strings.Contains(l, `msg="requantized`) && strings.Contains(l, q) {
				line = l
			}
		}
		if !strings.Contains(line, c.level) {
			t.Errorf("lora_alpha %g: the survival report %q is not at %s:\n%s%s", c.alpha, line, c.level, stdout, stderr)
		}
		for _, w := range c.words {
			if !strings.Contains(line, w) {
				t.Errorf("lora_alpha %g: the survival report %q lacks %q", c.alpha, line, w)
			}
		}
	}
}
