package mergeplan_test

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// input builds the planner's input in memory: headers laid out as the files would be.
func input(t *testing.T, m *fixture.Model, a *fixture.Adapter, opts mergeplan.Options) *mergeplan.Input {
	t.Helper()
	if len(m.Shards) == 0 {
		m.Split(1)
	}
	in := &mergeplan.Input{Options: opts}
	wm := map[string]string{}
	for i, names := range m.Shards {
		name := fixture.ShardName(i, len(m.Shards))
		var entries []safetensors.Entry
		for _, n := range names {
			x := m.Tensor(n)
			entries = append(entries, safetensors.Entry{Name: n, DType: x.DType, Shape: x.Shape})
			wm[n] = name
		}
		in.Shards = append(in.Shards, mergeplan.File{Name: name, Header: header(t, entries)})
	}
	if len(m.Shards) > 1 {
		in.Index, _ = json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 1}, "weight_map": wm})
	}
	in.Config, _ = json.Marshal(m.Config)
	if a != nil {
		in.AdapterConfig, _ = json.Marshal(a.Config)
		var entries []safetensors.Entry
		for _, x := range a.Tensors {
			entries = append(entries, safetensors.Entry{Name: x.Name, DType: x.DType, Shape: x.Shape})
		}
		in.Adapter = &mergeplan.File{Name: mergeplan.AdapterFile, Header: header(t, entries)}
	}
	return in
}

func header(t *testing.T, entries []safetensors.Entry) *safetensors.Header {
	t.Helper()
	l, err := safetensors.NewLayout(map[string]string{"format": "pt"}, entries)
	if err != nil {
		t.Fatal(err)
	}
	h, err := l.Header()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func small(tied bool) *fixture.Model {
	return fixture.Llama(fixture.LlamaSpec{Hidden: 32, Intermediate: 64, Layers: 2, Vocab: 40, DType: safetensors.BF16, Tied: tied, Seed: 1})
}

func lora(m *fixture.Model, a *fixture.Adapter, module string, rank int) {
	w := m.Tensor(module + ".weight")
	a.Linear(module, w.Shape[0], w.Shape[1], rank, safetensors.F32, fixture.NewRand(uint64(len(a.Tensors))))
}

func expectProblem(t *testing.T, p *mergeplan.Plan, fragments ...string) {
	t.Helper()
	for _, pr := range p.Problems {
		all := true
		for _, f := range fragments {
			all = all && strings.Contains(pr.String(), f)
		}
		if all {
			return
		}
	}
	t.Errorf("no problem mentions %q; problems: %v", fragments, p.Problems)
}

// target returns the planned output tensor.
func target(t *testing.T, p *mergeplan.Plan, name string) *mergeplan.Tensor {
	t.Helper()
	for i := range p.Shards {
		for j := range p.Shards[i].Tensors {
			if p.Shards[i].Tensors[j].Name == name {
				return &p.Shards[i].Tensors[j]
			}
		}
	}
	t.Fatalf("plan has no tensor %s", name)
	return nil
}

func TestPatternFirstMatch(t *testing.T) {
	m := small(false)
	a := fixture.NewAdapter(8, 16)
	for l := 0; l < 2; l++ {
		for _, p := range []string{"self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj"} {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			rank := 8
			switch {
			case l == 1 && p == "self_attn.q_proj":
				rank = 2
			case p == "self_attn.q_proj":
				rank = 16
			case p == "mlp.up_proj":
				rank = 4
			}
			lora(m, a, mod, rank)
		}
	}
	// JSON key order matters: the first matching key wins, for rank and alpha separately.
	a.Config["rank_pattern"] = json.RawMessage(`{"model\\.layers\\.1\\.self_attn\\.q_proj": 2, "q_proj": 16, "up_proj": 4}`)
	a.Config["alpha_pattern"] = json.RawMessage(`{"layers\\.(?!0\\.)\\d+\\.self_attn\\.k_proj": 3.5, "^layers": 100}`)
	a.Config["use_rslora"] = true
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	got := map[string]mergeplan.Module{}
	for _, mod := range p.Modules {
		got[mod.Name] = mod
	}
	check := func(name string, rank int, alpha float64) {
		t.Helper()
		mod, ok := got[name]
		if !ok {
			t.Errorf("%s not planned", name)
			return
		}
		if mod.Rank != rank || mod.Alpha != alpha || math.Abs(mod.Scale-alpha/math.Sqrt(float64(rank))) > 1e-12 {
			t.Errorf("%s: rank %d alpha %g scale %g, want %d %g %g", name, mod.Rank, mod.Alpha, mod.Scale, rank, alpha, alpha/math.Sqrt(float64(rank)))
		}
	}
	check("model.layers.1.self_attn.q_proj", 2, 16) // the full-name key comes first
	check("model.layers.0.self_attn.q_proj", 16, 16)
	check("model.layers.0.mlp.up_proj", 4, 16)
	check("model.layers.1.self_attn.k_proj", 8, 3.5) // look-ahead: layer 1 matches, layer 0 does not
	check("model.layers.0.self_attn.k_proj", 8, 16)  // "^layers" cannot match a name starting with "model"
	// With "q_proj" first, layer 1's q_proj (rank 2 in the file) gets r = 16: PEFT would
	// fail to load it.
	a.Config["rank_pattern"] = json.RawMessage(`{"q_proj": 16, "model\\.layers\\.1\\.self_attn\\.q_proj": 2, "up_proj": 4}`)
	p = mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	expectProblem(t, p, "model.layers.1.self_attn.q_proj", "rank mismatch", "r = 16")
}

func TestPatternNamedGroupAndBadRegex(t *testing.T) {
	m := small(false)
	a := fixture.NewAdapter(8, 16)
	lora(m, a, "model.layers.0.self_attn.q_proj", 8)
	a.Config["alpha_pattern"] = json.RawMessage(`{"(?P<proj>q)_proj": 2}`)
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !p.OK() || p.Modules[0].Alpha != 2 {
		t.Fatalf("named group pattern: %v %+v", p.Problems, p.Modules)
	}
	a.Config["alpha_pattern"] = json.RawMessage(`{"q_proj(": 2}`)
	p = mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	expectProblem(t, p, "alpha_pattern", "q_proj(", "not a valid regex")
}

func TestUnusedPatternWarns(t *testing.T) {
	m := small(false)
	a := fixture.NewAdapter(8, 16)
	lora(m, a, "model.layers.0.self_attn.q_proj", 8)
	a.Config["rank_pattern"] = map[string]any{"qproj": 4}
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !p.OK() || len(p.Warnings) == 0 || !strings.Contains(p.Warnings[0].Message, `"qproj"`) {
		t.Errorf("problems %v warnings %v", p.Problems, p.Warnings)
	}
}

func TestKeyForms(t *testing.T) {
	m := small(false)
	a := fixture.NewAdapter(4, 4)
	r := fixture.NewRand(3)
	// torch.compile's _orig_mod and a magnitude saved with .weight, as other tools write it.
	a.Add("base_model.model._orig_mod.model.layers.0.self_attn.q_proj.lora_A.weight", safetensors.F32, 0.1, r, 4, 32)
	a.Add("base_model.model._orig_mod.model.layers.0.self_attn.q_proj.lora_B.weight", safetensors.F32, 0.1, r, 32, 4)
	// Keys without PEFT's prefix, as some converters write them.
	a.Add("model.layers.1.mlp.up_proj.lora_A.weight", safetensors.F32, 0.1, r, 4, 32)
	a.Add("model.layers.1.mlp.up_proj.lora_B.weight", safetensors.F32, 0.1, r, 64, 4)
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	if len(target(t, p, "model.layers.0.self_attn.q_proj.weight").Deltas) != 1 || len(target(t, p, "model.layers.1.mlp.up_proj.weight").Deltas) != 1 {
		t.Error("deltas not planned")
	}
	a.Add("base_model.model.model.layers.0.mlp.up_proj.hada_w1_a", safetensors.F32, 0.1, r, 4, 32)
	p = mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	expectProblem(t, p, "hada_w1_a", "not a key PEFT writes")
}

// TestVLMRenames maps adapter keys in a model class's runtime names onto a checkpoint
// stored under other names, in both directions, and refuses ambiguity.
func TestVLMRenames(t *testing.T) {
	rename := func(m *fixture.Model, from, to string) {
		for _, x := range m.Tensors {
			x.Name = strings.Replace(x.Name, from, to, 1)
		}
	}
	for _, c := range []struct{ checkpoint, adapter string }{
		{"language_model.model.", "model.language_model."}, // old checkpoint, new class
		{"model.language_model.", "model."},                // new checkpoint, adapter trained with AutoModelForCausalLM
	} {
		t.Run(c.checkpoint+"<-"+c.adapter, func(t *testing.T) {
			m := small(false)
			rename(m, "model.", c.checkpoint)
			a := fixture.NewAdapter(4, 4)
			r := fixture.NewRand(4)
			mod := c.adapter + "layers.0.self_attn.q_proj"
			a.Linear(mod, 32, 32, 4, safetensors.F32, r)
			p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
			if !p.OK() {
				t.Fatal(p.Problems)
			}
			want := c.checkpoint + "layers.0.self_attn.q_proj.weight"
			if len(target(t, p, want).Deltas) != 1 {
				t.Errorf("%s has no delta", want)
			}
			if p.Modules[0].Note == "" {
				t.Errorf("the rename is not reported")
			}
		})
	}
	// Two towers with the same suffix: the fallback must not guess.
	m := small(false)
	for _, n := range []string{"vision.layers.0.self_attn.q_proj.weight", "audio.layers.0.self_attn.q_proj.weight"} {
		m.Tensors = append(m.Tensors, &fixture.Tensor{Name: "model." + n, DType: safetensors.BF16, Shape: []int64{32, 32}})
	}
	rename(m, "model.layers.", "model.text.layers.")
	a := fixture.NewAdapter(4, 4)
	a.Linear("layers.0.self_attn.q_proj", 32, 32, 4, safetensors.F32, fixture.NewRand(5))
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	expectProblem(t, p, "layers.0.self_attn.q_proj")
}

func TestTiedDetection(t *testing.T) {
	// config says untied, yet the checkpoint has no head: a LoRA on lm_head maps nowhere.
	m := small(true)
	m.Config["tie_word_embeddings"] = false
	a := fixture.NewAdapter(4, 4)
	a.Linear("lm_head", 40, 32, 4, safetensors.F32, fixture.NewRand(6))
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	expectProblem(t, p, "lm_head", "not in the base model")
	// No tie_word_embeddings at all and no head: tied by construction.
	delete(m.Config, "tie_word_embeddings")
	p = mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	head := target(t, p, "lm_head.weight")
	if !head.New || head.Source.Name != "model.embed_tokens.weight" || len(head.Deltas) != 1 {
		t.Errorf("untied head: %+v", head)
	}
	if len(p.ConfigEdits) != 1 || p.ConfigEdits[0].Key != "tie_word_embeddings" || p.ConfigEdits[0].New != false {
		t.Errorf("config edits %+v", p.ConfigEdits)
	}
	// The head goes right after the embedding, in the embedding's shard.
	for _, s := range p.Shards {
		for i, x := range s.Tensors {
			if x.Name == "lm_head.weight" && (i == 0 || s.Tensors[i-1].Name != "model.embed_tokens.weight") {
				t.Errorf("lm_head is not after the embedding in %s", s.Name)
			}
		}
	}
}

func TestAdapterChecks(t *testing.T) {
	m := fixture.GPT2(fixture.GPT2Spec{Hidden: 32, Layers: 1, Vocab: 50, Positions: 16, DType: safetensors.F16, Seed: 7})
	mod := "transformer.h.0.attn.c_attn"
	base := func() *fixture.Adapter {
		a := fixture.NewAdapter(4, 4)
		a.Linear(mod, 96, 32, 4, safetensors.F32, fixture.NewRand(8))
		return a
	}
	a := base()
	a.Add(fixture.Key(mod, "lora_B.bias"), safetensors.F32, 0.1, fixture.NewRand(9), 96)
	expectProblem(t, mergeplan.Build(input(t, m, a, mergeplan.Options{})), "lora_B.bias", "lora_bias is false")
	a.Config["lora_bias"] = true
	if p := mergeplan.Build(input(t, m, a, mergeplan.Options{})); !p.OK() {
		t.Errorf("lora_bias: %v", p.Problems)
	}
	a = base()
	a.Add(fixture.Key(mod, "lora_magnitude_vector"), safetensors.F32, 0.1, fixture.NewRand(9), 96)
	expectProblem(t, mergeplan.Build(input(t, m, a, mergeplan.Options{})), "lora_magnitude_vector", "use_dora is not set")
	a = base()
	a.Config["use_dora"] = true
	expectProblem(t, mergeplan.Build(input(t, m, a, mergeplan.Options{})), mod, "no lora_magnitude_vector")
	a = base()
	a.Tensors = a.Tensors[:1]
	expectProblem(t, mergeplan.Build(input(t, m, a, mergeplan.Options{})), mod, "has no lora_B")
	// The square c_proj is decided by the architecture: Conv1D for GPT-2.
	a = fixture.NewAdapter(4, 4)
	a.Linear("transformer.h.0.attn.c_proj", 32, 32, 4, safetensors.F32, fixture.NewRand(10))
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !target(t, p, "transformer.h.0.attn.c_proj.weight").Deltas[0].Transposed {
		t.Error("GPT-2 c_proj not planned as Conv1D")
	}
	// An unknown architecture follows fan_in_fan_out.
	m.Config["model_type"] = "mystery"
	p = mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if target(t, p, "transformer.h.0.attn.c_proj.weight").Deltas[0].Transposed {
		t.Error("square weight of an unknown architecture without fan_in_fan_out planned as Conv1D")
	}
	a.Config["fan_in_fan_out"] = true
	p = mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	if !target(t, p, "transformer.h.0.attn.c_proj.weight").Deltas[0].Transposed {
		t.Error("fan_in_fan_out ignored for a square weight of an unknown architecture")
	}
}

func TestBaseChecks(t *testing.T) {
	m := small(false)
	m.Split(2)
	a := fixture.NewAdapter(4, 4)
	lora(m, a, "model.layers.0.self_attn.q_proj", 4)
	in := input(t, m, a, mergeplan.Options{})
	in.Index = []byte(`{"metadata": {}, "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}`)
	p := mergeplan.Build(in)
	expectProblem(t, p, "model.safetensors.index.json", "model.norm.weight", "but it is in model-00002-of-00002.safetensors")
	expectProblem(t, p, "model.safetensors.index.json", "does not list")
	in = input(t, m, a, mergeplan.Options{})
	in.Config = []byte(`{"model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes"}}`)
	expectProblem(t, mergeplan.Build(in), "config.json: quantization_config", "bitsandbytes", "original BF16 model")
	in = input(t, m, a, mergeplan.Options{})
	in.Index = nil
	expectProblem(t, mergeplan.Build(in), "model.safetensors.index.json", "is missing")
}

func TestParseAdapterConfig(t *testing.T) {
	c, err := mergeplan.ParseAdapterConfig([]byte(`{"peft_type": "LORA", "r": 16, "lora_alpha": 22.627416997969522,
		"target_modules": "model\\..*\\.(q|v)_proj", "trainable_token_indices": {"embed_tokens": [1, 2]},
		"layers_to_transform": 3, "layers_pattern": "layers", "init_lora_weights": "gaussian",
		"megatron_core": "megatron.core", "use_future_thing": true, "lora_dropout": 0.05}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Alpha != 22.627416997969522 || c.TargetModules.Regex == "" || c.TrainableTokens["embed_tokens"][1] != 2 ||
		c.LayersToTransform[0] != 3 || c.LayersPattern[0] != "layers" || c.InitLoRAWeights != "gaussian" ||
		len(c.Unknown) != 1 || c.Unknown[0] != "use_future_thing" {
		t.Errorf("parsed %+v", c)
	}
	for _, bad := range []struct{ json, field string }{
		{`{"peft_type": "LORA", "lora_alpha": "x"}`, "lora_alpha"},
		{`{"peft_type": "LORA", "r": 1.5}`, `"r"`},
		{`{"peft_type": "LORA", "r": 0}`, `"r"`},
		{`{"peft_type": "LORA", "use_dora": "yes"}`, "use_dora"},
		{`{"peft_type": "LORA", "rank_pattern": {"a": -1}}`, "rank_pattern"},
		{`{"peft_type": "LORA", "bias": "some"}`, "bias"},
		{`{"peft_type": "LORA", "target_parameters": ["experts.gate_up_proj"], "use_dora": true}`, "use_dora"},
		{`{"peft_type": "LORA", "lora_B_layout": "expert_major"}`, "lora_B_layout"},
		{`{"peft_type": "LORA", "lora_bias": true, "use_dora": true}`, "lora_bias"},
		{`["peft_type"]`, "not a JSON object"},
		{`{"r": 8}`, "peft_type"},
	} {
		_, err := mergeplan.ParseAdapterConfig([]byte(bad.json))
		if err == nil || !strings.Contains(err.Error(), bad.field) {
			t.Errorf("%s: error %v, want one naming %s", bad.json, err, bad.field)
		}
	}
}
