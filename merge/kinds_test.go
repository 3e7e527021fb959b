package merge_test

import (
	"bytes"
	"fmt"
	"math"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// refDelta is one low-rank term s·Σₖ l(o,k)·r(k,j) of the reference.
type refDelta struct {
	s    float64
	rank int
	l    func(o, k int) float64
	r    func(k, j int) float64
}

// linearDelta is PEFT's Linear delta: B (out, r) · A (r, in).
func linearDelta(s float64, rank int, A, B *fixture.Tensor) refDelta {
	in := int(A.Shape[1])
	return refDelta{s, rank,
		func(o, k int) float64 { return B.Values[o*rank+k] },
		func(k, j int) float64 { return A.Values[k*in+j] }}
}

// transposedDelta is (B·A)ᵀ: for Conv1D weights stored (in, out) and for embeddings
// (vocab, dim) with A (r, rows) and B (cols, r).
func transposedDelta(s float64, rank int, A, B *fixture.Tensor) refDelta {
	rowsW := int(A.Shape[1])
	return refDelta{s, rank,
		func(o, k int) float64 { return A.Values[k*rowsW+o] },
		func(k, j int) float64 { return B.Values[j*rank+k] }}
}

// exactValues computes the exact W + Σ deltas for every element.
func exactValues(W []float64, rows, cols int, deltas []refDelta) []dd {
	out := make([]dd, len(W))
	for o := 0; o < rows; o++ {
		for j := 0; j < cols; j++ {
			v := dd{W[o*cols+j], 0}
			for _, d := range deltas {
				v = v.add(lowRank(d.s, d.rank, func(k int) float64 { return d.l(o, k) }, func(k int) float64 { return d.r(k, j) }))
			}
			out[o*cols+j] = v
		}
	}
	return out
}

// checkTensor compares a merged tensor with W + Σ deltas.
func checkTensor(tl *tally, dt safetensors.DType, got, W []float64, rows, cols int, deltas []refDelta) {
	exact := exactValues(W, rows, cols, deltas)
	for o := 0; o < rows; o++ {
		for j := 0; j < cols; j++ {
			var slack float64
			for _, d := range deltas {
				slack += accSlack(dt, d.s, d.rank, func(k int) float64 { return d.l(o, k) }, func(k int) float64 { return d.r(k, j) })
			}
			tl.check(dt, got[o*cols+j], exact[o*cols+j], slack)
		}
	}
}

var projections = []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}

func llama(dt safetensors.DType, seed uint64) *fixture.Model {
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 192, Intermediate: 512, Layers: 2, Vocab: 320, DType: dt, Seed: seed})
	m.Split(2)
	return m
}

// linearAdapter puts a LoRA on every projection of every layer.
func linearAdapter(m *fixture.Model, rank int, alpha float64, dt safetensors.DType, seed uint64) *fixture.Adapter {
	a := fixture.NewAdapter(rank, alpha, "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
	rnd := fixture.NewRand(seed)
	for l := 0; l < 2; l++ {
		for _, p := range projections {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], rank, dt, rnd)
		}
	}
	return a
}

func TestLinear(t *testing.T) {
	for _, bdt := range baseDTypes {
		for _, adt := range adapterDTypes {
			t.Run(fmt.Sprintf("base=%s/adapter=%s", bdt, adt), func(t *testing.T) {
				m := llama(bdt, 1)
				a := linearAdapter(m, 16, 32, adt, 2)
				res := run(t, m, a, mergeplan.Options{})
				var tl tally
				for l := 0; l < 2; l++ {
					for _, p := range projections {
						mod := fmt.Sprintf("model.layers.%d.%s", l, p)
						w := m.Tensor(mod + ".weight")
						got := res.tensor(t, mod+".weight")
						if got.DType != bdt {
							t.Fatalf("%s: dtype %s, want %s", got.Name, got.DType, bdt)
						}
						A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
						checkTensor(&tl, bdt, got.Values, w.Values, int(w.Shape[0]), int(w.Shape[1]), []refDelta{linearDelta(2, 16, A, B)})
					}
				}
				tl.assert(t, "linear", bdt, false)
				untouchedIdentical(t, m, res)
			})
		}
	}
}

// untouchedIdentical checks that every tensor the plan does not change is the base's
// bytes.
func untouchedIdentical(t *testing.T, m *fixture.Model, res *result) {
	t.Helper()
	changed := map[string]bool{}
	for _, s := range res.plan.Shards {
		for _, x := range s.Tensors {
			if !x.Copy() {
				changed[x.Name] = true
			}
		}
	}
	n := 0
	for _, bt := range m.Tensors {
		if changed[bt.Name] {
			continue
		}
		if !bytes.Equal(res.raw[bt.Name], fixture.Encode(bt.DType, bt.Values)) {
			t.Errorf("%s is untouched but its bytes changed", bt.Name)
		}
		n++
	}
	if n == 0 {
		t.Errorf("no untouched tensors were compared")
	}
}

func TestScalesRSLoRAAndPatterns(t *testing.T) {
	m := llama(safetensors.BF16, 3)
	a := linearAdapter(m, 16, 32, safetensors.F32, 4)
	// Layer 1's q_proj gets rank 8 by pattern; alpha 7.5 for every o_proj; rsLoRA on.
	mod := "model.layers.1.self_attn.q_proj"
	w := m.Tensor(mod + ".weight")
	var kept []*fixture.Tensor
	for _, x := range a.Tensors {
		if x.Name != fixture.Key(mod, "lora_A.weight") && x.Name != fixture.Key(mod, "lora_B.weight") {
			kept = append(kept, x)
		}
	}
	a.Tensors = kept
	a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.F32, fixture.NewRand(9))
	a.Config["use_rslora"] = true
	a.Config["rank_pattern"] = map[string]any{`layers\.1\.self_attn\.q_proj`: 8}
	a.Config["alpha_pattern"] = map[string]any{"o_proj": 7.5}
	res := run(t, m, a, mergeplan.Options{})
	var tl tally
	for l := 0; l < 2; l++ {
		for _, p := range projections {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			rank, alpha := 16, 32.0
			if l == 1 && p == "self_attn.q_proj" {
				rank = 8
			}
			if p == "self_attn.o_proj" {
				alpha = 7.5
			}
			s := alpha / math.Sqrt(float64(rank))
			w := m.Tensor(mod + ".weight")
			A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
			checkTensor(&tl, safetensors.BF16, res.tensor(t, mod+".weight").Values, w.Values, int(w.Shape[0]), int(w.Shape[1]), []refDelta{linearDelta(s, rank, A, B)})
		}
	}
	tl.assert(t, "rslora+patterns", safetensors.BF16, false)
	for _, mod := range res.plan.Modules {
		if mod.Name == "model.layers.1.self_attn.q_proj" && (mod.Rank != 8 || math.Abs(mod.Scale-32/math.Sqrt(8)) > 1e-12) {
			t.Errorf("q_proj of layer 1: rank %d scale %g, want 8 and %g", mod.Rank, mod.Scale, 32/math.Sqrt(8))
		}
	}
}
