package merge_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

func gpt2(dt safetensors.DType, seed uint64) *fixture.Model {
	m := fixture.GPT2(fixture.GPT2Spec{Hidden: 128, Layers: 2, Vocab: 300, Positions: 64, DType: dt, Seed: seed})
	m.Split(2)
	return m
}

var gpt2Modules = []string{"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}

// conv1DAdapter targets every Conv1D of GPT-2. Its weights are stored (in, out); the
// adapter's A is (r, in) and B (out, r) as for a Linear. attn.c_proj is square, so only
// the architecture tells its orientation.
func conv1DAdapter(m *fixture.Model, rank int, dt safetensors.DType, seed uint64) *fixture.Adapter {
	a := fixture.NewAdapter(rank, float64(rank), "c_attn", "c_proj", "c_fc")
	a.Config["fan_in_fan_out"] = true
	rnd := fixture.NewRand(seed)
	for l := 0; l < 2; l++ {
		for _, p := range gpt2Modules {
			mod := fmt.Sprintf("transformer.h.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[1], w.Shape[0], rank, dt, rnd)
		}
	}
	return a
}

func TestConv1D(t *testing.T) {
	for _, bdt := range baseDTypes {
		for _, adt := range adapterDTypes {
			t.Run(fmt.Sprintf("base=%s/adapter=%s", bdt, adt), func(t *testing.T) {
				m := gpt2(bdt, 5)
				a := conv1DAdapter(m, 8, adt, 6)
				res := run(t, m, a, mergeplan.Options{})
				var tl tally
				for l := 0; l < 2; l++ {
					for _, p := range gpt2Modules {
						mod := fmt.Sprintf("transformer.h.%d.%s", l, p)
						w := m.Tensor(mod + ".weight")
						A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
						checkTensor(&tl, bdt, res.tensor(t, mod+".weight").Values, w.Values, int(w.Shape[0]), int(w.Shape[1]),
							[]refDelta{transposedDelta(1, 8, A, B)})
					}
				}
				tl.assert(t, "conv1d", bdt, false)
				untouchedIdentical(t, m, res)
			})
		}
	}
}

func TestEmbedding(t *testing.T) {
	for _, bdt := range baseDTypes {
		for _, adt := range adapterDTypes {
			t.Run(fmt.Sprintf("base=%s/adapter=%s", bdt, adt), func(t *testing.T) {
				m := llama(bdt, 7)
				a := fixture.NewAdapter(16, 8, "embed_tokens")
				e := m.Tensor("model.embed_tokens.weight")
				a.Embedding("model.embed_tokens", e.Shape[0], e.Shape[1], 16, adt, fixture.NewRand(8))
				res := run(t, m, a, mergeplan.Options{})
				var tl tally
				A, B := a.Tensor(fixture.Key("model.embed_tokens", "lora_embedding_A")), a.Tensor(fixture.Key("model.embed_tokens", "lora_embedding_B"))
				checkTensor(&tl, bdt, res.tensor(t, e.Name).Values, e.Values, int(e.Shape[0]), int(e.Shape[1]), []refDelta{transposedDelta(0.5, 16, A, B)})
				tl.assert(t, "embedding", bdt, false)
				untouchedIdentical(t, m, res)
			})
		}
	}
}

// doraRef computes DoRA's merged values: V = W + ΔW exactly, then each row (perRow) or
// column rescaled to the magnitude; a zero row or column stays zero.
func doraRef(W []float64, rows, cols int, d []refDelta, mag []float64, perRow bool) []dd {
	ex := exactValues(W, rows, cols, d)
	V := make([]float64, len(ex))
	for i, x := range ex {
		V[i] = x.hi + x.lo
	}
	var scale func(i int) float64
	if perRow {
		n := make([]float64, rows)
		for o := 0; o < rows; o++ {
			var s dd
			for j := 0; j < cols; j++ {
				s = s.add(mul(V[o*cols+j], V[o*cols+j]))
			}
			n[o] = math.Sqrt(s.hi + s.lo)
		}
		scale = func(i int) float64 { return safeDiv(mag[i/cols], n[i/cols]) }
	} else {
		n := make([]float64, cols)
		for j := 0; j < cols; j++ {
			var s dd
			for o := 0; o < rows; o++ {
				s = s.add(mul(V[o*cols+j], V[o*cols+j]))
			}
			n[j] = math.Sqrt(s.hi + s.lo)
		}
		scale = func(i int) float64 { return safeDiv(mag[i%cols], n[i%cols]) }
	}
	out := make([]dd, len(V))
	for i := range V {
		out[i] = mul(scale(i), V[i])
	}
	return out
}

func safeDiv(m, n float64) float64 {
	if n == 0 {
		return 1
	}
	return m / n
}

func TestDoRA(t *testing.T) {
	for _, bdt := range baseDTypes {
		for _, adt := range adapterDTypes {
			t.Run(fmt.Sprintf("base=%s/adapter=%s", bdt, adt), func(t *testing.T) {
				rnd := fixture.NewRand(11)
				// Linear (per-row norms) and embedding (per-column norms) on Llama.
				m := llama(bdt, 10)
				a := fixture.NewAdapter(8, 16, "q_proj", "down_proj", "embed_tokens")
				a.Config["use_dora"] = true
				type doraCase struct {
					module string
					perRow bool
					delta  func() refDelta
				}
				var cases []doraCase
				for _, mod := range []string{"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"} {
					w := m.Tensor(mod + ".weight")
					a.Linear(mod, w.Shape[0], w.Shape[1], 8, adt, rnd)
					a.Add(fixture.Key(mod, "lora_magnitude_vector"), adt, 0.2, rnd, w.Shape[0])
					cases = append(cases, doraCase{mod, true, func() refDelta {
						return linearDelta(2, 8, a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight")))
					}})
				}
				e := m.Tensor("model.embed_tokens.weight")
				a.Embedding("model.embed_tokens", e.Shape[0], e.Shape[1], 8, adt, rnd)
				a.Add(fixture.Key("model.embed_tokens", "lora_magnitude_vector"), adt, 0.3, rnd, e.Shape[1])
				cases = append(cases, doraCase{"model.embed_tokens", false, func() refDelta {
					return transposedDelta(2, 8, a.Tensor(fixture.Key("model.embed_tokens", "lora_embedding_A")), a.Tensor(fixture.Key("model.embed_tokens", "lora_embedding_B")))
				}})
				res := run(t, m, a, mergeplan.Options{})
				var tl tally
				for _, c := range cases {
					w := m.Tensor(c.module + ".weight")
					mag := a.Tensor(fixture.Key(c.module, "lora_magnitude_vector")).Values
					exact := doraRef(w.Values, int(w.Shape[0]), int(w.Shape[1]), []refDelta{c.delta()}, mag, c.perRow)
					got := res.tensor(t, c.module+".weight").Values
					for i := range got {
						tl.check(bdt, got[i], exact[i], 0)
					}
				}
				// Conv1D (per-column norms: the output channel is the column) on GPT-2.
				g := gpt2(bdt, 12)
				ga := fixture.NewAdapter(8, 8, "c_attn")
				ga.Config["use_dora"] = true
				mod := "transformer.h.1.attn.c_attn"
				w := g.Tensor(mod + ".weight")
				ga.Linear(mod, w.Shape[1], w.Shape[0], 8, adt, rnd)
				ga.Add(fixture.Key(mod, "lora_magnitude_vector"), adt, 0.2, rnd, w.Shape[1])
				gres := run(t, g, ga, mergeplan.Options{})
				exact := doraRef(w.Values, int(w.Shape[0]), int(w.Shape[1]),
					[]refDelta{transposedDelta(1, 8, ga.Tensor(fixture.Key(mod, "lora_A.weight")), ga.Tensor(fixture.Key(mod, "lora_B.weight")))},
					ga.Tensor(fixture.Key(mod, "lora_magnitude_vector")).Values, false)
				for i, x := range gres.tensor(t, mod+".weight").Values {
					tl.check(bdt, x, exact[i], 0)
				}
				tl.assert(t, "dora", bdt, true)
				untouchedIdentical(t, m, res)
			})
		}
	}
}

func TestLoRABias(t *testing.T) {
	for _, bdt := range baseDTypes {
		t.Run(string(bdt), func(t *testing.T) {
			m := gpt2(bdt, 13)
			a := conv1DAdapter(m, 4, safetensors.F32, 14)
			a.Config["lora_bias"] = true
			rnd := fixture.NewRand(15)
			mod := "transformer.h.0.attn.c_attn"
			b := m.Tensor(mod + ".bias")
			lb := a.Add(fixture.Key(mod, "lora_B.bias"), safetensors.F32, 0.05, rnd, b.Shape[0])
			res := run(t, m, a, mergeplan.Options{})
			var tl tally
			got := res.tensor(t, mod+".bias").Values
			for i := range got {
				tl.check(bdt, got[i], dd{b.Values[i], 0}.add(mul(1, lb.Values[i])), 0)
			}
			tl.assert(t, "lora_bias", bdt, false)
			other := "transformer.h.1.attn.c_attn.bias"
			if !bytes.Equal(res.raw[other], fixture.Encode(bdt, m.Tensor(other).Values)) {
				t.Errorf("%s has no lora_B.bias but changed", other)
			}
		})
	}
}

// TestReplacements covers full tensors saved by PEFT: modules_to_save copies (with a
// resized vocabulary), trained biases, and trainable-token rows, and that replacements
// come before deltas on the same tensor.
func TestReplacements(t *testing.T) {
	for _, bdt := range baseDTypes {
		t.Run(string(bdt), func(t *testing.T) {
			m := llama(bdt, 16)
			rnd := fixture.NewRand(17)
			a := linearAdapter(m, 8, 8, safetensors.F32, 18)
			a.Config["modules_to_save"] = []string{"embed_tokens", "lm_head"}
			e := m.Tensor("model.embed_tokens.weight")
			V, D := e.Shape[0]+8, e.Shape[1]
			newEmbed := a.Add("base_model.model.model.embed_tokens.weight", safetensors.F32, 0.02, rnd, V, D)
			newHead := a.Add("base_model.model.lm_head.weight", safetensors.F32, 0.02, rnd, V, D)
			norm := a.Add("base_model.model.model.norm.weight", safetensors.BF16, 0.1, rnd, D)
			res := run(t, m, a, mergeplan.Options{})
			for _, c := range []struct {
				name string
				want *fixture.Tensor
			}{{e.Name, newEmbed}, {"lm_head.weight", newHead}, {"model.norm.weight", norm}} {
				got := res.tensor(t, c.name)
				if got.DType != bdt || fmt.Sprint(got.Shape) != fmt.Sprint(c.want.Shape) {
					t.Fatalf("%s: %s %v, want %s %v", c.name, got.DType, got.Shape, bdt, c.want.Shape)
				}
				var tl tally
				for i, x := range got.Values {
					tl.check(bdt, x, dd{c.want.Values[i], 0}, 0)
				}
				tl.assert(t, c.name, bdt, false)
			}
			var cfg map[string]any
			if err := json.Unmarshal(res.plan.Config, &cfg); err != nil {
				t.Fatalf("config: %v", err)
			}
			if cfg["vocab_size"] != float64(V) {
				t.Errorf("vocab_size = %v, want %d", cfg["vocab_size"], V)
			}
		})
	}
}

func TestTrainableTokens(t *testing.T) {
	m := llama(safetensors.BF16, 19)
	rnd := fixture.NewRand(20)
	a := linearAdapter(m, 8, 8, safetensors.F32, 21)
	ids := []int64{3, 7, 100}
	a.Config["trainable_token_indices"] = ids
	e := m.Tensor("model.embed_tokens.weight")
	rows := a.Add("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta", safetensors.F32, 0.05, rnd, int64(len(ids)), e.Shape[1])
	res := run(t, m, a, mergeplan.Options{})
	got := res.tensor(t, e.Name).Values
	D := int(e.Shape[1])
	var tl tally
	for o := 0; o < int(e.Shape[0]); o++ {
		src := e.Values[o*D : (o+1)*D]
		for i, id := range ids {
			if int64(o) == id {
				src = rows.Values[i*D : (i+1)*D]
			}
		}
		for j := 0; j < D; j++ {
			tl.check(safetensors.BF16, got[o*D+j], dd{src[j], 0}, 0)
		}
	}
	tl.assert(t, "trainable tokens", safetensors.BF16, false)
	if tl.n != len(got) {
		t.Fatalf("compared %d of %d", tl.n, len(got))
	}
}

// TestTiedHead covers a LoRA on lm_head of a tied model: untie writes lm_head = E + ΔW and
// leaves the embedding alone; fold adds ΔW into the shared embedding.
func TestTiedHead(t *testing.T) {
	for _, mode := range []mergeplan.Tied{mergeplan.Untie, mergeplan.Fold} {
		t.Run(string(mode), func(t *testing.T) {
			m := fixture.Llama(fixture.LlamaSpec{Hidden: 128, Intermediate: 256, Layers: 1, Vocab: 200, DType: safetensors.BF16, Tied: true, Seed: 22})
			a := fixture.NewAdapter(8, 16, "lm_head", "q_proj")
			e := m.Tensor("model.embed_tokens.weight")
			rnd := fixture.NewRand(23)
			a.Linear("lm_head", e.Shape[0], e.Shape[1], 8, safetensors.F32, rnd)
			q := m.Tensor("model.layers.0.self_attn.q_proj.weight")
			a.Linear("model.layers.0.self_attn.q_proj", q.Shape[0], q.Shape[1], 8, safetensors.F32, rnd)
			res := run(t, m, a, mergeplan.Options{Tied: mode})
			d := linearDelta(2, 8, a.Tensor(fixture.Key("lm_head", "lora_A.weight")), a.Tensor(fixture.Key("lm_head", "lora_B.weight")))
			var tl tally
			target := "lm_head.weight"
			if mode == mergeplan.Fold {
				target = e.Name
				if _, ok := res.tensors["lm_head.weight"]; ok {
					t.Errorf("fold wrote an lm_head tensor")
				}
			} else if !bytes.Equal(res.raw[e.Name], fixture.Encode(e.DType, e.Values)) {
				t.Errorf("untie changed the input embedding")
			}
			checkTensor(&tl, safetensors.BF16, res.tensor(t, target).Values, e.Values, int(e.Shape[0]), int(e.Shape[1]), []refDelta{d})
			tl.assert(t, "tied head "+string(mode), safetensors.BF16, false)
			var cfg map[string]any
			if res.plan.Config != nil {
				if err := json.Unmarshal(res.plan.Config, &cfg); err != nil {
					t.Fatal(err)
				}
			}
			switch mode {
			case mergeplan.Untie:
				if cfg["tie_word_embeddings"] != false {
					t.Errorf("untie: tie_word_embeddings = %v, want false", cfg["tie_word_embeddings"])
				}
			case mergeplan.Fold:
				if res.plan.Config != nil {
					t.Errorf("fold changed config.json: %v", res.plan.ConfigEdits)
				}
			}
		})
	}
}

// TestTiedEmbeddingDelta: a LoRA on the input embedding of a tied model changes only the
// input side in training, so untie keeps the head at the base embedding.
func TestTiedEmbeddingDelta(t *testing.T) {
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 64, Intermediate: 128, Layers: 1, Vocab: 100, DType: safetensors.F16, Tied: true, Seed: 24})
	a := fixture.NewAdapter(4, 4, "embed_tokens")
	e := m.Tensor("model.embed_tokens.weight")
	a.Embedding("model.embed_tokens", e.Shape[0], e.Shape[1], 4, safetensors.F32, fixture.NewRand(25))
	res := run(t, m, a, mergeplan.Options{})
	if !bytes.Equal(res.raw["lm_head.weight"], fixture.Encode(e.DType, e.Values)) {
		t.Errorf("untied head is not the base embedding")
	}
	if bytes.Equal(res.raw[e.Name], fixture.Encode(e.DType, e.Values)) {
		t.Errorf("embedding did not change")
	}
}

func TestDTypeConversion(t *testing.T) {
	for _, c := range []struct {
		from safetensors.DType
		to   mergeplan.DTypeChoice
		want safetensors.DType
	}{
		{safetensors.BF16, mergeplan.ToF32, safetensors.F32},
		{safetensors.F32, mergeplan.ToF16, safetensors.F16},
		{safetensors.F32, mergeplan.ToBF16, safetensors.BF16},
		{safetensors.F16, mergeplan.ToBF16, safetensors.BF16},
	} {
		t.Run(fmt.Sprintf("%s-to-%s", c.from, c.to), func(t *testing.T) {
			m := llama(c.from, 26)
			a := linearAdapter(m, 8, 16, safetensors.BF16, 27)
			res := run(t, m, a, mergeplan.Options{DType: c.to})
			var tl tally
			for _, bt := range m.Tensors {
				got := res.tensor(t, bt.Name)
				if got.DType != c.want {
					t.Fatalf("%s is %s, want %s", bt.Name, got.DType, c.want)
				}
				mod, _ := cutWeight(bt.Name)
				A := a.Tensor(fixture.Key(mod, "lora_A.weight"))
				if A == nil {
					for i, x := range got.Values {
						tl.check(c.want, x, dd{bt.Values[i], 0}, 0)
					}
					continue
				}
				checkTensor(&tl, c.want, got.Values, bt.Values, int(bt.Shape[0]), int(bt.Shape[1]),
					[]refDelta{linearDelta(2, 8, A, a.Tensor(fixture.Key(mod, "lora_B.weight")))})
			}
			tl.assert(t, "conversion", c.want, false)
			var cfg map[string]any
			if err := json.Unmarshal(res.plan.Config, &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg["torch_dtype"] != map[mergeplan.DTypeChoice]string{mergeplan.ToF32: "float32", mergeplan.ToF16: "float16", mergeplan.ToBF16: "bfloat16"}[c.to] {
				t.Errorf("torch_dtype = %v", cfg["torch_dtype"])
			}
		})
	}
}

func cutWeight(name string) (string, bool) {
	if len(name) > 7 && name[len(name)-7:] == ".weight" {
		return name[:len(name)-7], true
	}
	return name, false
}

// TestNonFinite: a merge whose values overflow the output dtype fails, naming the tensor.
func TestNonFinite(t *testing.T) {
	m := llama(safetensors.F16, 28)
	a := linearAdapter(m, 8, 8, safetensors.F32, 29)
	a.Config["lora_alpha"] = 8e7 // scale 1e7: deltas far beyond fp16's 65504
	p, files := plan(t, m, a, mergeplan.Options{})
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	var nf *merge.NonFiniteError
	for i := range p.Shards {
		sh, err := merge.New(&p.Shards[i], files, merge.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sh.WriteTo(&bytes.Buffer{}); errors.As(err, &nf) {
			break
		}
	}
	if nf == nil {
		t.Fatal("no NonFiniteError")
	}
	if nf.DType != safetensors.F16 || !math.IsInf(fixture.RoundF16(nf.Value), 0) {
		t.Errorf("error %v: want an F16 overflow", nf)
	}
	t.Log(nf)
}
