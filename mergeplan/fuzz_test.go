package mergeplan_test

import (
	"math"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// FuzzParseAdapterConfig feeds arbitrary JSON to the config parser and plans with what
// it accepts. Neither may panic; an accepted config must be one hfmerge can merge.
func FuzzParseAdapterConfig(f *testing.F) {
	for _, s := range []string{
		`{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}`,
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 5.656854249492381, "use_rslora": true, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"layers\\.(?!0)\\d+": 2}}`,
		`{"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ".*\\.(q|v)_proj", "use_dora": true, "bias": "lora_only"}`,
		`{"peft_type": "LORA", "r": 4, "trainable_token_indices": {"embed_tokens": [1, 2]}, "modules_to_save": "lm_head", "layers_to_transform": 0}`,
		`{"peft_type": "LORA", "init_lora_weights": "pissa_niter_16"}`,
		`{"peft_type": "ADALORA", "r": 8}`,
		`{"peft_type": "LORA", "r": 8, "rank_pattern": {"(((a*)*)*)*b": 2}}`,
		`{"peft_type": "LORA", "r": 1e400}`,
		`[1, 2]`, `null`, `{`,
	} {
		f.Add([]byte(s))
	}
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 8, Intermediate: 16, Layers: 2, Vocab: 16, DType: safetensors.BF16, Seed: 1})
	a := fixture.NewAdapter(4, 4)
	for _, mod := range []string{"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"} {
		w := m.Tensor(mod + ".weight")
		a.Linear(mod, w.Shape[0], w.Shape[1], 4, safetensors.F32, fixture.NewRand(2))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := mergeplan.ParseAdapterConfig(data)
		if err != nil {
			return
		}
		if c.PeftType != "LORA" || c.R <= 0 || math.IsNaN(c.Alpha) || math.IsInf(c.Alpha, 0) {
			t.Fatalf("accepted %+v", c)
		}
		in := input(t, m, a, mergeplan.Options{})
		in.AdapterConfig = data
		p := mergeplan.Build(in)
		if p.OK() && len(p.Shards) == 0 {
			t.Fatalf("a plan without problems has no shards")
		}
	})
}
