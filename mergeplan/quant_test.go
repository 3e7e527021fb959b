package mergeplan_test

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// fp8Small is a two-shard block-FP8 Llama (hidden 32, intermediate 64) with blocks of
// 16×16, the first layer's q_proj scale moved to the other shard.
func fp8Small(scale safetensors.DType) *fixture.Model {
	m := small(false)
	m.BlockFP8([2]int64{16, 16}, scale, 7)
	m.Split(2)
	m.MoveTensor("model.layers.0.self_attn.q_proj.weight_scale_inv", 1)
	return m
}

func fp8Input(t *testing.T, m *fixture.Model, opts mergeplan.Options) *mergeplan.Input {
	a := fixture.NewAdapter(4, 4)
	lora(m, a, "model.layers.0.self_attn.q_proj", 4)
	lora(m, a, "model.layers.1.mlp.down_proj", 4)
	return input(t, m, a, opts)
}

func TestBlockFP8Plan(t *testing.T) {
	m := fp8Small(safetensors.F8E8M0)
	p := mergeplan.Build(fp8Input(t, m, mergeplan.Options{}))
	if !p.OK() {
		t.Fatalf("problems: %v", p.Problems)
	}
	q := p.Quant
	if q == nil || q.Method != "fp8" || q.Block != [2]int64{16, 16} || q.Mode != "bf16" {
		t.Fatalf("quantization: %+v", q)
	}
	// Every projection of both layers has its scale listed, the moved one as cross-shard.
	if len(q.Scales) != 14 {
		t.Fatalf("%d scales listed, want 14: %+v", len(q.Scales), q.Scales)
	}
	cross := 0
	for _, s := range q.Scales {
		if s.Name != s.Weight+"_scale_inv" || s.DType != "F8_E8M0" {
			t.Errorf("scale %+v", s)
		}
		if s.CrossShard {
			cross++
			if s.Weight != "model.layers.0.self_attn.q_proj.weight" || s.File == s.WeightFile {
				t.Errorf("cross-shard scale %+v", s)
			}
		}
	}
	if cross != 1 {
		t.Errorf("%d cross-shard scales, want 1", cross)
	}
	for _, s := range p.Shards {
		for _, x := range s.Tensors {
			if strings.HasSuffix(x.Name, "_scale_inv") {
				t.Errorf("%s: scale %s is in the output", s.Name, x.Name)
			}
			if w := m.Tensor(x.Name); w.DType == safetensors.F8E4M3 {
				if x.DType != safetensors.BF16 || x.Dequant == nil || x.Dequant.Scale.Name != x.Name+"_scale_inv" {
					t.Errorf("%s: planned as %s with %+v", x.Name, x.DType, x.Dequant)
				}
			}
		}
	}
	// Sizes: the base's FP8 bytes double in bf16 and the scales go; keep is the base;
	// mixed doubles only the two touched weights.
	var fp8, scales, base int64
	for _, x := range m.Tensors {
		n := x.Bytes()
		base += n
		switch {
		case strings.HasSuffix(x.Name, "_scale_inv"):
			scales += n
		case x.DType == safetensors.F8E4M3:
			fp8 += n
		}
	}
	touched := int64(32*32) + int64(32*64)
	touchedScales := int64(2*2) + int64(2*4)
	if q.BaseBytes != base || q.Bytes["bf16"] != base+fp8-scales || q.Bytes["keep"] != base ||
		q.Bytes["mixed"] != base+touched-touchedScales {
		t.Errorf("sizes: base %d, per mode %v; want base %d, bf16 %d, keep %d, mixed %d",
			q.BaseBytes, q.Bytes, base, base+fp8-scales, base, base+touched-touchedScales)
	}
	var conf map[string]any
	if err := json.Unmarshal(p.Config, &conf); err != nil {
		t.Fatal(err)
	}
	if _, ok := conf["quantization_config"]; ok || conf["torch_dtype"] != "bfloat16" || conf["dtype"] != "bfloat16" {
		t.Errorf("config: quantization_config kept or dtype wrong: %v", conf)
	}
}

// TestQuantizedRefusals: every base hfmerge cannot merge exactly is refused by name,
// with what to do instead.
func TestQuantizedRefusals(t *testing.T) {
	withConfig := func(q map[string]any) *mergeplan.Input {
		m := small(false)
		m.Config["quantization_config"] = q
		return fp8Input(t, m, mergeplan.Options{})
	}
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "bitsandbytes", "load_in_4bit": true})),
		"quantization_config", "bitsandbytes", "original BF16 model")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "gptq", "bits": 4})),
		"quantization_config", "GPTQ", "original BF16 model")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "awq", "bits": 4})),
		"quantization_config", "AWQ", "original BF16 model")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "compressed-tensors", "format": "pack-quantized"})),
		"quantization_config", "pack-quantized", "INT4", "original BF16 model")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "compressed-tensors",
		"config_groups": map[string]any{"group_0": map[string]any{"format": "pack-quantized"}}})),
		"quantization_config", "pack-quantized")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "compressed-tensors", "format": "int-quantized"})),
		"quantization_config", "int-quantized", "float-quantized (FP8) format only")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "compressed-tensors", "format": "float-quantized",
		"config_groups": map[string]any{"g": map[string]any{"weights": map[string]any{"type": "float", "num_bits": 8, "strategy": "block"}}}})),
		"config_groups.g.weights", `strategy "block"`, "not built yet")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "compressed-tensors", "format": "float-quantized",
		"config_groups": map[string]any{"g": map[string]any{"weights": map[string]any{"type": "int", "num_bits": 8, "strategy": "channel"}}}})),
		"config_groups.g.weights", `type "int"`)
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "hqq"})),
		"quantization_config", `"hqq"`, "does not decode")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "fp8", "fmt": "e4m3"})),
		"weight_block_size", "two block sizes")
	expectProblem(t, mergeplan.Build(withConfig(map[string]any{"quant_method": "fp8", "weight_block_size": []any{128, 0}})),
		"weight_block_size", "positive integer")

	// A missing scale.
	m := fp8Small(safetensors.F32)
	m.Tensors = removeTensor(m.Tensors, "model.layers.1.mlp.up_proj.weight_scale_inv")
	m.Split(2)
	expectProblem(t, mergeplan.Build(fp8Input(t, m, mergeplan.Options{})),
		"model.layers.1.mlp.up_proj.weight", "without its scale model.layers.1.mlp.up_proj.weight_scale_inv")
	// A scale of the wrong shape.
	m = fp8Small(safetensors.BF16)
	m.Tensor("model.layers.0.self_attn.k_proj.weight_scale_inv").Shape = []int64{3, 2}
	expectProblem(t, mergeplan.Build(fp8Input(t, m, mergeplan.Options{})),
		"model.layers.0.self_attn.k_proj.weight_scale_inv", "has shape (3, 2)", "in blocks of 16x16", "needs (1, 2)")
	// A block size that does not divide as the config says: the scales are for 16×16
	// blocks, the config claims 8×8.
	m = fp8Small(safetensors.F16)
	m.Config["quantization_config"].(map[string]any)["weight_block_size"] = []int64{8, 8}
	expectProblem(t, mergeplan.Build(fp8Input(t, m, mergeplan.Options{})),
		"_scale_inv", "in blocks of 8x8 (quantization_config.weight_block_size) needs")
	// A scale of a dtype no release uses.
	m = fp8Small(safetensors.F32)
	m.Tensor("model.layers.0.mlp.gate_proj.weight_scale_inv").DType = safetensors.I32
	expectProblem(t, mergeplan.Build(fp8Input(t, m, mergeplan.Options{})),
		"model.layers.0.mlp.gate_proj.weight_scale_inv", "is I32", "F32, BF16, F16 or F8_E8M0")
	// A scale whose weight is not FP8.
	m = fp8Small(safetensors.F32)
	m.Tensors = append(m.Tensors, &fixture.Tensor{Name: "model.norm.weight_scale_inv", DType: safetensors.F32, Shape: []int64{1}})
	m.Split(2)
	expectProblem(t, mergeplan.Build(fp8Input(t, m, mergeplan.Options{})),
		"model.norm.weight_scale_inv", "not an F8_E4M3 weight")
	expectProblem(t, mergeplan.Build(fp8Input(t, fp8Small(safetensors.F32), mergeplan.Options{Quantized: "fp4"})),
		"--quantized", `"fp4"`, "bf16, keep or mixed")
}

func removeTensor(ts []*fixture.Tensor, name string) []*fixture.Tensor {
	var out []*fixture.Tensor
	for _, x := range ts {
		if x.Name != name {
			out = append(out, x)
		}
	}
	return out
}

// TestBlockFP8KeepPlan: keep copies untouched weights and scales, requantizes touched
// weights with their scales recomputed in the base's scale dtype, keeps
// quantization_config, and refuses DoRA.
func TestBlockFP8KeepPlan(t *testing.T) {
	m := fp8Small(safetensors.BF16)
	p := mergeplan.Build(fp8Input(t, m, mergeplan.Options{Quantized: mergeplan.QuantKeep, DType: mergeplan.ToF32}))
	if !p.OK() {
		t.Fatalf("problems: %v", p.Problems)
	}
	touched := map[string]bool{"model.layers.0.self_attn.q_proj.weight": true, "model.layers.1.mlp.down_proj.weight": true}
	n := 0
	for _, s := range p.Shards {
		for _, x := range s.Tensors {
			w, isScale := strings.CutSuffix(x.Name, "_scale_inv")
			switch {
			case touched[x.Name]:
				if x.DType != safetensors.F8E4M3 || x.Requant == nil || x.Requant.ScaleDType != safetensors.BF16 || len(x.Deltas) != 1 {
					t.Errorf("%s planned as %s, %+v", x.Name, x.DType, x.Requant)
				}
				n++
			case isScale && touched[w]:
				if x.ScaleOf == nil || x.ScaleOf.Name != w || x.DType != safetensors.BF16 {
					t.Errorf("%s: scale planned as %s of %v", x.Name, x.DType, x.ScaleOf)
				}
				n++
			case isScale || m.Tensor(x.Name).DType == safetensors.F8E4M3:
				// --dtype fp32 does not touch a quantized weight or its scale.
				if !x.Copy() {
					t.Errorf("untouched %s is not a copy (%s)", x.Name, x.DType)
				}
			}
		}
	}
	if n != 4 {
		t.Errorf("%d requantized tensors and scales planned, want 4", n)
	}
	if p.Config != nil && !strings.Contains(string(p.Config), "quantization_config") {
		t.Error("keep drops quantization_config")
	}
	if got := p.Quant.Requantized; len(got) != 2 {
		t.Errorf("requantized: %v", got)
	}
	// The plan warns, before any merge, that the delta may round away.
	var warned int
	for _, w := range p.Warnings {
		if w.Subject == "--quantized keep" && strings.Contains(w.Message, "requantizes 2 touched weights to F8_E4M3") &&
			strings.Contains(w.Message, "how much survived") {
			warned++
		}
	}
	if warned != 1 {
		t.Errorf("%d warnings that the requantization may lose the delta, want 1: %v", warned, p.Warnings)
	}
	a := fixture.NewAdapter(4, 4)
	lora(m, a, "model.layers.0.self_attn.q_proj", 4)
	a.Config["use_dora"] = true
	a.Add(fixture.Key("model.layers.0.self_attn.q_proj", "lora_magnitude_vector"), safetensors.F32, 1, fixture.NewRand(3), 32)
	expectProblem(t, mergeplan.Build(input(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantKeep})),
		"model.layers.0.self_attn.q_proj.weight", "DoRA", "--quantized bf16")
}

// TestBlockFP8MixedPlan: mixed writes the touched weights in BF16 without their
// scales, copies the rest, names exactly the touched modules in modules_to_not_convert
// and ignored_layers, and warns where vLLM's fused layers would mix precisions.
func TestBlockFP8MixedPlan(t *testing.T) {
	m := fp8Small(safetensors.F32)
	p := mergeplan.Build(fp8Input(t, m, mergeplan.Options{Quantized: mergeplan.QuantMixed}))
	if !p.OK() {
		t.Fatalf("problems: %v", p.Problems)
	}
	var q map[string]any
	var conf map[string]any
	if err := json.Unmarshal(p.Config, &conf); err != nil {
		t.Fatal(err)
	}
	q, _ = conf["quantization_config"].(map[string]any)
	want := `["model.layers.0.self_attn.q_proj","model.layers.1.mlp.down_proj"]`
	for _, key := range []string{"modules_to_not_convert", "ignored_layers"} {
		got, _ := json.Marshal(q[key])
		if string(got) != want {
			t.Errorf("quantization_config.%s = %s, want %s", key, got, want)
		}
	}
	for _, s := range p.Shards {
		for _, x := range s.Tensors {
			switch x.Name {
			case "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight":
				if x.DType != safetensors.BF16 || x.Dequant == nil {
					t.Errorf("%s planned as %s", x.Name, x.DType)
				}
			case "model.layers.0.self_attn.q_proj.weight_scale_inv", "model.layers.1.mlp.down_proj.weight_scale_inv":
				t.Errorf("%s is in the output", x.Name)
			default:
				if !x.Copy() {
					t.Errorf("untouched %s is not a copy", x.Name)
				}
			}
		}
	}
	found := false
	for _, w := range p.Warnings {
		if strings.Contains(w.String(), "vLLM fuses q_proj, k_proj, v_proj") {
			found = true
		}
	}
	if !found {
		t.Errorf("no warning about vLLM's fused qkv: %v", p.Warnings)
	}
}

func TestCompressedFP8Refusals(t *testing.T) {
	m := small(false)
	m.CompressedFP8("channel", safetensors.BF16, 3)
	m.Tensor("model.layers.0.self_attn.o_proj.weight_scale").Shape = []int64{1, 32}
	m.Split(2)
	expectProblem(t, mergeplan.Build(fp8Input(t, m, mergeplan.Options{})),
		"model.layers.0.self_attn.o_proj.weight_scale", "has shape (1, 32)", "needs (32, 1) per channel")
	m = small(false)
	m.CompressedFP8("tensor", safetensors.F32, 3)
	m.Tensors = append(m.Tensors, &fixture.Tensor{Name: "model.layers.0.mlp.up_proj.weight_zero_point", DType: safetensors.F32, Shape: []int64{1}})
	m.Split(1)
	expectProblem(t, mergeplan.Build(fp8Input(t, m, mergeplan.Options{})),
		"model.layers.0.mlp.up_proj.weight_zero_point", "symmetric FP8 weights only")
}

// TestQuantSizesAgree: planned in any of the three modes, a quantized base reports the
// same tensor bytes for each mode, and the planned mode's figure is its layout's sum:
// block FP8 with an expert touched (mixed writes all experts of that layer in BF16),
// and compressed-tensors with its activation scales.
func TestQuantSizesAgree(t *testing.T) {
	moe := func() *fixture.Model {
		m := fixture.MoE(fixture.MoESpec{Hidden: 32, Intermediate: 24, Experts: 3, Layers: 2, Vocab: 40,
			Layout: fixture.PerExpert, DType: safetensors.BF16, Seed: 5})
		m.BlockFP8([2]int64{16, 16}, safetensors.F8E8M0, 6)
		m.Split(2)
		return m
	}
	compressed := func() *fixture.Model {
		m := small(false)
		m.CompressedFP8("channel", safetensors.BF16, 3)
		m.Split(2)
		return m
	}
	for what, c := range map[string]struct {
		m       func() *fixture.Model
		modules []string
	}{
		"fp8 experts":        {moe, []string{"model.layers.1.mlp.experts.2.up_proj", "model.layers.0.self_attn.q_proj"}},
		"compressed-tensors": {compressed, []string{"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"}},
	} {
		t.Run(what, func(t *testing.T) {
			first := map[mergeplan.DTypeChoice]map[string]int64{}
			for _, mode := range []mergeplan.QuantMode{mergeplan.QuantBF16, mergeplan.QuantKeep, mergeplan.QuantMixed} {
				for _, dt := range []mergeplan.DTypeChoice{"", mergeplan.ToF32} {
					m := c.m()
					a := fixture.NewAdapter(4, 4)
					for _, mod := range c.modules {
						lora(m, a, mod, 4)
					}
					p := mergeplan.Build(input(t, m, a, mergeplan.Options{Quantized: mode, DType: dt}))
					if !p.OK() {
						t.Fatalf("%s: %v", mode, p.Problems)
					}
					var sum int64
					for _, s := range p.Shards {
						for _, x := range s.Layout.Tensors {
							sum += x.Len()
						}
					}
					if got := p.Quant.Bytes[string(mode)]; got != sum {
						t.Errorf("planned %s --dtype %q: the plan says %d bytes, its layout holds %d", mode, dt, got, sum)
					}
					if first[dt] == nil {
						first[dt] = p.Quant.Bytes
						if f := first[dt]; f["bf16"] <= f["mixed"] || f["mixed"] <= f["keep"] {
							t.Errorf("sizes %v: want bf16 > mixed > keep", f)
						}
					} else if !maps.Equal(first[dt], p.Quant.Bytes) {
						t.Errorf("planned %s --dtype %q: sizes %v; planned bf16: %v", mode, dt, p.Quant.Bytes, first[dt])
					}
				}
			}
		})
	}
}

// TestQuantizedAdapterRefusals: DoRA on a quantized base is merged in bf16 only, keep
// refuses a full trained copy of a quantized weight, and a fused 3-D FP8 expert tensor
// is refused by name.
func TestQuantizedAdapterRefusals(t *testing.T) {
	for _, mode := range []mergeplan.QuantMode{mergeplan.QuantKeep, mergeplan.QuantMixed} {
		m := fp8Small(safetensors.F32)
		a := fixture.NewAdapter(4, 4)
		lora(m, a, "model.layers.1.mlp.down_proj", 4)
		a.Config["use_dora"] = true
		a.Add(fixture.Key("model.layers.1.mlp.down_proj", "lora_magnitude_vector"), safetensors.F32, 1, fixture.NewRand(3), 32)
		expectProblem(t, mergeplan.Build(input(t, m, a, mergeplan.Options{Quantized: mode})),
			"model.layers.1.mlp.down_proj.weight", "DoRA", "--quantized bf16 only")
		if p := mergeplan.Build(input(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantBF16})); !p.OK() {
			t.Errorf("DoRA in bf16: %v", p.Problems)
		}
	}
	// A full trained copy of a quantized weight: keep cannot requantize it.
	m0 := fp8Small(safetensors.F32)
	a0 := fixture.NewAdapter(4, 4)
	lora(m0, a0, "model.layers.0.self_attn.q_proj", 4)
	a0.Config["modules_to_save"] = []string{"down_proj"}
	a0.Add("base_model.model.model.layers.1.mlp.down_proj.weight", safetensors.BF16, 0.02, fixture.NewRand(4), 32, 64)
	expectProblem(t, mergeplan.Build(input(t, m0, a0, mergeplan.Options{Quantized: mergeplan.QuantKeep})),
		"model.layers.1.mlp.down_proj.weight", "trained copy", "keep cannot requantize a replacement, use bf16 or mixed")
	if p := mergeplan.Build(input(t, m0, a0, mergeplan.Options{Quantized: mergeplan.QuantMixed})); !p.OK() {
		t.Errorf("a trained copy in mixed: %v", p.Problems)
	}
	// Transformers v5's FP8Experts layout: gate_up_proj (E, 2I, H) in F8_E4M3 with
	// gate_up_proj_scale_inv (E, ⌈2I/b⌉, ⌈H/b⌉).
	m := fixture.MoE(fixture.MoESpec{Hidden: 32, Intermediate: 16, Experts: 2, Layers: 1, Vocab: 40,
		Layout: fixture.Fused, DType: safetensors.BF16, Seed: 5})
	m.BlockFP8([2]int64{16, 16}, safetensors.F32, 6)
	gu := m.Tensor("model.layers.0.mlp.experts.gate_up_proj")
	gu.DType = safetensors.F8E4M3
	for i := range gu.Values {
		gu.Values[i] = 1
	}
	m.Tensors = append(m.Tensors, &fixture.Tensor{Name: "model.layers.0.mlp.experts.gate_up_proj_scale_inv", DType: safetensors.F32,
		Shape: []int64{2, 2, 2}, Values: make([]float64, 8)})
	m.Split(1)
	a := fixture.NewAdapter(4, 4)
	lora(m, a, "model.layers.0.self_attn.q_proj", 4)
	expectProblem(t, mergeplan.Build(input(t, m, a, mergeplan.Options{})),
		"model.layers.0.mlp.experts.gate_up_proj", "has shape (2, 32, 32)", "2-D block-FP8 weights only", "fused 3-D FP8 experts are not built")
}

// TestMixedExpertsPlan: mixed names the experts module of a layer whose experts the
// adapter touches, writes all of its experts in BF16 and no other layer's, and warns
// where vLLM's name for the layer may differ from the checkpoint's (MiniMax-M2).
func TestMixedExpertsPlan(t *testing.T) {
	for _, layout := range []fixture.ExpertLayout{fixture.PerExpert, fixture.MixtralPerExpert} {
		m := fixture.MoE(fixture.MoESpec{Hidden: 32, Intermediate: 24, Experts: 3, Layers: 2, Vocab: 40,
			Layout: layout, DType: safetensors.BF16, Seed: 5})
		m.BlockFP8([2]int64{16, 16}, safetensors.F32, 6)
		m.Split(2)
		experts, one := "model.layers.1.mlp.experts", "model.layers.1.mlp.experts.2.up_proj"
		if layout == fixture.MixtralPerExpert {
			experts, one = "model.layers.1.block_sparse_moe.experts", "model.layers.1.block_sparse_moe.experts.2.w3"
		}
		a := fixture.NewAdapter(4, 4)
		lora(m, a, one, 4)
		p := mergeplan.Build(input(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantMixed}))
		if !p.OK() {
			t.Fatalf("problems: %v", p.Problems)
		}
		if got := p.Quant.NotConverted; len(got) != 1 || got[0] != experts {
			t.Errorf("mixed names %v, want [%s]", got, experts)
		}
		for _, s := range p.Shards {
			for _, x := range s.Tensors {
				fp8 := m.Tensor(x.Name).DType == safetensors.F8E4M3
				inModule := strings.HasPrefix(x.Name, experts+".")
				switch {
				case fp8 && inModule && (x.DType != safetensors.BF16 || x.Dequant == nil):
					t.Errorf("%s is planned as %s, but its experts module is written in BF16", x.Name, x.DType)
				case fp8 && !inModule && !x.Copy():
					t.Errorf("%s is not a copy", x.Name)
				case strings.HasSuffix(x.Name, "_scale_inv") && inModule:
					t.Errorf("%s is in the output", x.Name)
				}
			}
		}
		warned := false
		for _, w := range p.Warnings {
			warned = warned || strings.Contains(w.String(), "vLLM may know this layer by another name")
		}
		if warned != (layout == fixture.MixtralPerExpert) {
			t.Errorf("%s: the vLLM naming warning is %v: %v", experts, warned, p.Warnings)
		}
	}
}
