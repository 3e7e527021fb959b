package mergeplan_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// moe is a one-layer MoE base of 4 experts; square makes its gate_up_proj (E, 2I, H)
// square (2I = H).
func moe(layout fixture.ExpertLayout, square bool) *fixture.Model {
	h, i := 24, 8
	if square {
		h = 16
	}
	return fixture.MoE(fixture.MoESpec{Hidden: h, Intermediate: i, Experts: 4, Layers: 1, Vocab: 32, Layout: layout,
		DType: safetensors.BF16, Seed: 1})
}

// experts adds gate_up_proj and down_proj LoRA (r = 2) for a base with hidden h and
// intermediate i, nested as PEFT nests them.
func expertsAdapter(version string, h, i int64) *fixture.Adapter {
	a := fixture.NewExpertAdapter(2, 4, version, "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	r := fixture.NewRand(2)
	a.Experts(fixture.ExpertsModule(0), 1, 4, 2, h, 2*i, safetensors.F32, r)
	a.Experts(fixture.ExpertsModule(0), 0, 4, 2, i, h, safetensors.F32, r)
	return a
}

func module(t *testing.T, p *mergeplan.Plan, param string) mergeplan.Module {
	t.Helper()
	for _, m := range p.Modules {
		if m.Param == param {
			return m
		}
	}
	t.Fatalf("no module for %s in %+v", param, p.Modules)
	return mergeplan.Module{}
}

// TestExpertPlan checks what the plan says about an expert merge, from headers alone:
// which tensors change, from which keys, read which way.
func TestExpertPlan(t *testing.T) {
	p := mergeplan.Build(input(t, moe(fixture.PerExpert, false), expertsAdapter("0.19.1", 24, 8), mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	gu := module(t, p, "gate_up_proj")
	if gu.Kind != "expert" || gu.Experts != 4 || gu.Layout != "out-in, per-expert" || len(gu.Tensors) != 8 ||
		!strings.HasSuffix(gu.Keys[0], "mlp.experts.base_layer.lora_A.weight") || gu.Scale != 2 {
		t.Errorf("gate_up_proj: %+v", gu)
	}
	dn := module(t, p, "down_proj")
	if len(dn.Tensors) != 4 || dn.Tensors[3] != "model.layers.0.mlp.experts.3.down_proj.weight" ||
		!strings.HasSuffix(dn.Keys[1], "mlp.experts.lora_B.weight") {
		t.Errorf("down_proj: %+v", dn)
	}
	up := target(t, p, "model.layers.0.mlp.experts.2.up_proj.weight")
	if len(up.Deltas) != 1 || up.Deltas[0].Expert.Index != 2 || up.Deltas[0].Expert.Lo != 8 || up.Deltas[0].Expert.Hi != 16 ||
		!strings.Contains(up.Reason, "rows 8–16 of expert 2's gate_up_proj delta") {
		t.Errorf("up_proj of expert 2: %+v, %q", up.Deltas, up.Reason)
	}
	if g := target(t, p, "model.layers.0.mlp.gate.weight"); !g.Copy() {
		t.Error("the router changes")
	}
}

// TestExpertNesting: the keys PEFT nests (experts.base_layer.lora_* for the parameter
// wrapped first) are mapped by PEFT's wrapping order, not the config's list order, and
// the shapes overrule an order that does not fit them.
func TestExpertNesting(t *testing.T) {
	m := moe(fixture.Fused, false)
	a := expertsAdapter("0.19.1", 24, 8)
	a.Config["target_parameters"] = []string{"mlp.experts.down_proj", "mlp.experts.gate_up_proj"}
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	if gu := module(t, p, "gate_up_proj"); !strings.Contains(gu.Keys[0], "base_layer") || gu.Note != "" {
		t.Errorf("gate_up_proj: %+v", gu)
	}
	// Keys nested the other way round (as PEFT would for an already parametrized
	// module): the shapes decide, and the plan says so.
	b := fixture.NewExpertAdapter(2, 4, "0.19.1", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	r := fixture.NewRand(2)
	b.Experts(fixture.ExpertsModule(0), 0, 4, 2, 24, 16, safetensors.F32, r)
	b.Experts(fixture.ExpertsModule(0), 1, 4, 2, 8, 24, safetensors.F32, r)
	p = mergeplan.Build(input(t, m, b, mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	if gu := module(t, p, "gate_up_proj"); strings.Contains(gu.Keys[0], "base_layer") || !strings.Contains(gu.Note, "shapes fit gate_up_proj") {
		t.Errorf("gate_up_proj: %+v", gu)
	}
}

// TestExpertRefusals: what the planner cannot prove, it refuses, naming the tensor.
func TestExpertRefusals(t *testing.T) {
	// Square (E, 2I, H) with 2I = H on Transformers v5's experts, from a PEFT before
	// 0.19.1, with no other expert parameter to show how PEFT read them: both readings
	// fit, and the adapter does not say which PEFT took.
	gateUpOnly := func(v string) *fixture.Adapter {
		a := fixture.NewExpertAdapter(2, 4, v, "mlp.experts.gate_up_proj")
		a.Experts(fixture.ExpertsModule(0), 0, 4, 2, 16, 16, safetensors.F32, fixture.NewRand(2))
		if v == "" {
			delete(a.Config, "peft_version")
		}
		return a
	}
	for _, v := range []string{"0.18.1", "0.19.1.dev0@abc", ""} {
		p := mergeplan.Build(input(t, moe(fixture.Fused, true), gateUpOnly(v), mergeplan.Options{}))
		expectProblem(t, p, "base_model.model.model.layers.0.mlp.experts.lora_A.weight",
			"model.layers.0.mlp.experts.gate_up_proj is (E=4, 16, 16), square", "(E, out, in)", "(E, in, out)", "peft_version")
		// The option settles it.
		for _, o := range []mergeplan.ExpertLayout{mergeplan.ExpertOutIn, mergeplan.ExpertInOut} {
			p = mergeplan.Build(input(t, moe(fixture.Fused, true), gateUpOnly(v), mergeplan.Options{Experts: o}))
			if !p.OK() {
				t.Fatalf("%s with %s: %v", v, o, p.Problems)
			}
			d := target(t, p, "model.layers.0.mlp.experts.gate_up_proj").Deltas[0]
			if d.Transposed != (o == mergeplan.ExpertInOut) {
				t.Errorf("%s: Transposed %v", o, d.Transposed)
			}
		}
		// So does down_proj (E, H, I), which is not square: its shapes show how PEFT
		// read this model's experts.
		p = mergeplan.Build(input(t, moe(fixture.Fused, true), expertsAdapter(v, 16, 8), mergeplan.Options{}))
		if !p.OK() || target(t, p, "model.layers.0.mlp.experts.gate_up_proj").Deltas[0].Transposed ||
			!strings.Contains(module(t, p, "gate_up_proj").Note, "as the shapes of model.layers.0.mlp.experts.down_proj show") {
			t.Errorf("%s with down_proj: %v %+v", v, p.Problems, p.Modules)
		}
	}
	// 0.19.1 and later read v5's experts (E, out, in).
	p := mergeplan.Build(input(t, moe(fixture.Fused, true), gateUpOnly("0.20.1.dev0@5d602fd"), mergeplan.Options{}))
	if !p.OK() || target(t, p, "model.layers.0.mlp.experts.gate_up_proj").Deltas[0].Transposed {
		t.Errorf("0.20.1.dev0: %v", p.Problems)
	}

	// lora_A's rows are not a multiple of the base's expert count.
	a := fixture.NewExpertAdapter(2, 4, "0.19.1", "mlp.experts.down_proj")
	a.Add(fixture.Key(fixture.ExpertsModule(0), "lora_A.weight"), safetensors.F32, 0.1, fixture.NewRand(1), 9, 8)
	a.Add(fixture.Key(fixture.ExpertsModule(0), "lora_B.weight"), safetensors.F32, 0.1, fixture.NewRand(1), 24, 9)
	p = mergeplan.Build(input(t, moe(fixture.Fused, false), a, mergeplan.Options{}))
	expectProblem(t, p, "base_model.model.model.layers.0.mlp.experts.lora_A.weight", "has 9 rows", "4 experts, which must divide r·E")

	// A fused target on a base without expert tensors (a dense model).
	dense := fixture.Llama(fixture.LlamaSpec{Hidden: 24, Intermediate: 8, Layers: 1, Vocab: 32, DType: safetensors.BF16})
	p = mergeplan.Build(input(t, dense, expertsAdapter("0.19.1", 24, 8), mergeplan.Options{}))
	expectProblem(t, p, "model.layers.0.mlp.experts", "targets model.layers.0.mlp.experts.gate_up_proj",
		"no expert tensors in the base", "model.layers.0.mlp.experts.{e}.gate_proj.weight")

	// A rank that does not agree with the config.
	a = expertsAdapter("0.19.1", 24, 8)
	a.Config["rank_pattern"] = map[string]any{"down_proj": 4}
	p = mergeplan.Build(input(t, moe(fixture.Fused, false), a, mergeplan.Options{}))
	expectProblem(t, p, "rank mismatch", "r = 4 for model.layers.0.mlp.experts.down_proj")
}

// TestExpertReadingGPTOSS: gpt-oss's experts are is_transposed, and whether PEFT read a
// square down_proj (E, I, H) as (E, in, out) depends on PEFT's version and on whether
// Transformers' patch ran, which the adapter does not record; the non-square
// gate_up_proj of the same adapter shows it, whichever way it went.
func TestExpertReadingGPTOSS(t *testing.T) {
	m := fixture.MoE(fixture.MoESpec{Hidden: 8, Intermediate: 8, Experts: 4, Layers: 1, Vocab: 32, Layout: fixture.Interleaved,
		DType: safetensors.BF16, Seed: 1})
	for _, inOut := range []bool{true, false} {
		a := fixture.NewExpertAdapter(2, 4, "0.19.0", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
		r := fixture.NewRand(2)
		if inOut { // gate_up_proj (E, H, 2I) read (E, in, out): lora_A (r·E, H), lora_B (2I, r·E)
			a.Experts(fixture.ExpertsModule(0), 1, 4, 2, 8, 16, safetensors.F32, r)
		} else { // read (E, out, in), as PEFT 0.19.0 did: lora_A (r·E, 2I), lora_B (H, r·E)
			a.Experts(fixture.ExpertsModule(0), 1, 4, 2, 16, 8, safetensors.F32, r)
		}
		a.Experts(fixture.ExpertsModule(0), 0, 4, 2, 8, 8, safetensors.F32, r)
		p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
		if !p.OK() {
			t.Fatalf("in-out %v: %v", inOut, p.Problems)
		}
		for _, n := range []string{"gate_up_proj", "down_proj"} {
			if d := target(t, p, "model.layers.0.mlp.experts."+n).Deltas[0]; d.Transposed != inOut {
				t.Errorf("%s read in-out %v, want %v", n, d.Transposed, inOut)
			}
		}
	}
	// down_proj alone: nothing shows the reading, in any version.
	for _, v := range []string{"0.18.1", "0.19.0", "0.20.0"} {
		a := fixture.NewExpertAdapter(2, 4, v, "mlp.experts.down_proj")
		a.Experts(fixture.ExpertsModule(0), 0, 4, 2, 8, 8, safetensors.F32, fixture.NewRand(2))
		p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
		expectProblem(t, p, "model.layers.0.mlp.experts.down_proj is (E=4, 8, 8), square", strconv.Quote(v))
	}
}

func TestExpertConfig(t *testing.T) {
	c, err := mergeplan.ParseAdapterConfig([]byte(`{"peft_type": "LORA", "target_parameters": ["mlp.experts.down_proj"],
		"peft_version": "0.19.1", "lora_B_layout": "grouped_by_expert"}`))
	if err != nil || c.PeftVersion != "0.19.1" || c.LoRABLayout != mergeplan.GroupedByExpert || len(c.Unknown) != 0 {
		t.Errorf("%+v, %v", c, err)
	}
}

// TestV5Config: a Transformers v5 config names its dtype as dtype only; a merge that
// changes the dtype writes both dtype and torch_dtype, for readers of either version,
// and the index's metadata.total_parameters stays right.
func TestV5Config(t *testing.T) {
	m := moe(fixture.Fused, false)
	m.Split(2)
	in := input(t, m, expertsAdapter("0.19.1", 24, 8), mergeplan.Options{DType: mergeplan.ToF32})
	in.Index = []byte(strings.Replace(string(in.Index), `"total_size":1`, `"total_size":1,"total_parameters":7`, 1))
	p := mergeplan.Build(in)
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	var params int64
	for _, x := range m.Tensors {
		params += x.Elements()
	}
	for _, want := range []string{`"dtype": "float32"`, `"torch_dtype": "float32"`} {
		if !strings.Contains(string(p.Config), want) {
			t.Errorf("config.json lacks %s: %s", want, p.Config)
		}
	}
	if !strings.Contains(string(p.Index), `"total_parameters": `+itoa(params)) {
		t.Errorf("index: %s, want total_parameters %d", p.Index[:200], params)
	}
	// Keeping the dtype leaves the config alone.
	p = mergeplan.Build(input(t, m, expertsAdapter("0.19.1", 24, 8), mergeplan.Options{}))
	if p.Config != nil {
		t.Errorf("config.json changes: %s", p.Config)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestExpertVLMPrefix: a v5 VLM class names its language model model.language_model.*,
// while Kimi-K2.5-style checkpoints store language_model.model.*; expert parameters are
// found through the same renames, fused or per expert, and the plan says so.
func TestExpertVLMPrefix(t *testing.T) {
	for _, layout := range []fixture.ExpertLayout{fixture.Fused, fixture.PerExpert} {
		m := moe(layout, false)
		for _, x := range m.Tensors {
			x.Name = strings.Replace(x.Name, "model.", "language_model.model.", 1)
		}
		a := fixture.NewExpertAdapter(2, 4, "0.19.1", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
		r := fixture.NewRand(2)
		mod := "model.language_model.layers.0.mlp.experts"
		a.Experts(mod, 1, 4, 2, 24, 16, safetensors.F32, r)
		a.Experts(mod, 0, 4, 2, 8, 24, safetensors.F32, r)
		p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
		if !p.OK() {
			t.Fatal(p.Problems)
		}
		want, n := "language_model.model.layers.0.mlp.experts.gate_up_proj", 4 // one delta per expert
		if layout == fixture.PerExpert {
			want, n = "language_model.model.layers.0.mlp.experts.3.up_proj.weight", 1
		}
		if len(target(t, p, want).Deltas) != n {
			t.Errorf("%s: deltas %+v", want, target(t, p, want).Deltas)
		}
		if gu := module(t, p, "gate_up_proj"); layout == fixture.Fused && !strings.Contains(gu.Note, "renamed") {
			t.Errorf("the rename is not reported: %+v", gu)
		}
	}
}

// TestExpertConvertedAdapter: PEFT 0.19 and later convert a 4.x per-expert adapter when
// they load it into a v5 model (transformers_weight_conversion.py): gate and up become
// one gate_up_proj target of twice the rank, with rank_pattern and alpha_pattern
// entries ".*\.gate_up_proj" keeping alpha/r. Saved that way, it plans with the
// pattern's rank for gate_up_proj and the config's for down_proj.
func TestExpertConvertedAdapter(t *testing.T) {
	a := fixture.NewExpertAdapter(2, 4, "0.19.1", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	a.Config["rank_pattern"] = map[string]any{`.*\.gate_up_proj`: 4}
	a.Config["alpha_pattern"] = map[string]any{`.*\.gate_up_proj`: 8}
	r := fixture.NewRand(2)
	a.Experts(fixture.ExpertsModule(0), 1, 4, 4, 24, 16, safetensors.F32, r)
	a.Experts(fixture.ExpertsModule(0), 0, 4, 2, 8, 24, safetensors.F32, r)
	p := mergeplan.Build(input(t, moe(fixture.PerExpert, false), a, mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	if gu, dn := module(t, p, "gate_up_proj"), module(t, p, "down_proj"); gu.Rank != 4 || gu.Scale != 2 || dn.Rank != 2 || dn.Scale != 2 {
		t.Errorf("gate_up_proj r=%d s=%g, down_proj r=%d s=%g", gu.Rank, gu.Scale, dn.Rank, dn.Scale)
	}
	if len(p.Warnings) != 0 {
		t.Errorf("warnings: %v", p.Warnings)
	}
}

// TestExpertMissingParam: target_parameters may name a parameter this model's experts do
// not have; PEFT wraps only the ones they have, so the keys nest one level less.
func TestExpertMissingParam(t *testing.T) {
	a := fixture.NewExpertAdapter(2, 4, "0.19.1", "mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.experts.up_proj")
	r := fixture.NewRand(2)
	a.Experts(fixture.ExpertsModule(0), 1, 4, 2, 24, 16, safetensors.F32, r)
	a.Experts(fixture.ExpertsModule(0), 0, 4, 2, 8, 24, safetensors.F32, r)
	p := mergeplan.Build(input(t, moe(fixture.Fused, false), a, mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	if gu := module(t, p, "gate_up_proj"); !strings.Contains(gu.Keys[0], "base_layer") || gu.Note != "" {
		t.Errorf("gate_up_proj: %+v", gu)
	}
}
