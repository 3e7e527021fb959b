package merge_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// The expert reference is PEFT's formula written out per element (docs/experts.md):
// lora_A (r·E, in) read as (E, r, in), lora_B (out, r·E) read as (out, r, E), and expert
// e's slice of the parameter (E, d1, d2) is s·Σₖ B[o, k, e]·A[e, k, i] at (o, i) when
// PEFT reads it (E, out, in), and at (i, o) when it reads it (E, in, out).

type expertLoRA struct {
	A, B    *fixture.Tensor
	E, r    int
	s       float64
	inOut   bool
	grouped bool // Unsloth's grouped_by_expert packing of lora_B: column e·r + k
}

// delta is expert e's delta as a matrix of the parameter's (d1, d2) slice.
func (x expertLoRA) delta(e int) refDelta {
	in, width := int(x.A.Shape[1]), int(x.B.Shape[1])
	b := func(o, k int) float64 {
		col := k*x.E + e
		if x.grouped {
			col = e*x.r + k
		}
		return x.B.Values[o*width+col]
	}
	a := func(k, i int) float64 { return x.A.Values[(e*x.r+k)*in+i] }
	if !x.inOut {
		return refDelta{x.s, x.r, b, a}
	}
	return refDelta{x.s, x.r, func(p, k int) float64 { return a(k, p) }, func(k, q int) float64 { return b(q, k) }}
}

// rowsOf restricts a delta to rows [lo, ...) of its matrix.
func rowsOf(d refDelta, lo int) refDelta {
	return refDelta{d.s, d.rank, func(o, k int) float64 { return d.l(lo+o, k) }, d.r}
}

// slice is expert e's (d1, d2) block of a stacked tensor's values.
func slice(v []float64, e, d1, d2 int) []float64 { return v[e*d1*d2 : (e+1)*d1*d2] }

// checkFused checks every expert of a stacked (E, d1, d2) tensor.
func checkFused(tl *tally, dt safetensors.DType, got, W []float64, E, d1, d2 int, x expertLoRA) {
	for e := 0; e < E; e++ {
		checkTensor(tl, dt, slice(got, e, d1, d2), slice(W, e, d1, d2), d1, d2, []refDelta{x.delta(e)})
	}
}

// fails reports whether a tally would fail the exactness assertion.
func fails(tl *tally, dt safetensors.DType) bool {
	return tl.far > 0 || float64(tl.differ)/float64(tl.n) > bound(dt, false)
}

// sameBytes asserts that tensors came through byte for byte.
func sameBytes(t *testing.T, res *result, m *fixture.Model, names ...string) {
	t.Helper()
	if len(names) == 0 {
		t.Fatal("no tensors to compare")
	}
	for _, n := range names {
		w := m.Tensor(n)
		if !bytes.Equal(res.raw[n], fixture.Encode(w.DType, w.Values)) {
			t.Errorf("%s: not byte-identical to the base", n)
		}
	}
}

// untouched lists a model's tensors whose names contain none of the given parts.
func untouched(m *fixture.Model, changed ...string) []string {
	var out []string
next:
	for _, t := range m.Tensors {
		for _, c := range changed {
			if bytes.Contains([]byte(t.Name), []byte(c)) {
				continue next
			}
		}
		out = append(out, t.Name)
	}
	return out
}

const (
	moeHidden, moeInter, moeExperts, moeRank = 48, 40, 4, 3
)

// gateUpDown is an adapter on both expert parameters of every layer, keyed as PEFT
// nests them: gate_up_proj wrapped first (experts.base_layer.lora_*), then down_proj.
func gateUpDown(layers int, version string, inOut bool, h, i int64, dt safetensors.DType, seed uint64) (*fixture.Adapter, [][2]expertLoRA) {
	a := fixture.NewExpertAdapter(moeRank, 6, version, "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	rnd := fixture.NewRand(seed)
	s := 6.0 / moeRank
	var refs [][2]expertLoRA
	for l := 0; l < layers; l++ {
		mod := fixture.ExpertsModule(l)
		// gate_up maps H to 2I and down I to H, whichever way the parameter is stored:
		// (E, 2I, H) read (E, out, in), or gpt-oss's (E, H, 2I) read (E, in, out).
		gA, gB := a.Experts(mod, 1, moeExperts, moeRank, h, 2*i, dt, rnd)
		dA, dB := a.Experts(mod, 0, moeExperts, moeRank, i, h, dt, rnd)
		refs = append(refs, [2]expertLoRA{
			{A: gA, B: gB, E: moeExperts, r: moeRank, s: s, inOut: inOut},
			{A: dA, B: dB, E: moeExperts, r: moeRank, s: s, inOut: inOut},
		})
	}
	return a, refs
}

func TestExpertsFused(t *testing.T) {
	m := fixture.MoE(fixture.MoESpec{Hidden: moeHidden, Intermediate: moeInter, Experts: moeExperts, Layers: 2, Vocab: 64,
		Layout: fixture.Fused, DType: safetensors.BF16, Seed: 1})
	m.Split(2)
	for _, adt := range adapterDTypes {
		t.Run(string(adt), func(t *testing.T) {
			a, refs := gateUpDown(2, "0.19.1", false, moeHidden, moeInter, adt, 2)
			res := run(t, m, a, mergeplan.Options{})
			var tl tally
			for l, ref := range refs {
				p := fmt.Sprintf("model.layers.%d.mlp.experts.", l)
				checkFused(&tl, safetensors.BF16, res.tensor(t, p+"gate_up_proj").Values, m.Tensor(p+"gate_up_proj").Values,
					moeExperts, 2*moeInter, moeHidden, ref[0])
				checkFused(&tl, safetensors.BF16, res.tensor(t, p+"down_proj").Values, m.Tensor(p+"down_proj").Values,
					moeExperts, moeHidden, moeInter, ref[1])
			}
			tl.assert(t, "fused experts", safetensors.BF16, false)
			sameBytes(t, res, m, untouched(m, "mlp.experts.")...)
		})
	}
}

func TestExpertsPerExpert(t *testing.T) {
	for _, layout := range []fixture.ExpertLayout{fixture.PerExpert, fixture.MixtralPerExpert} {
		m := fixture.MoE(fixture.MoESpec{Hidden: moeHidden, Intermediate: moeInter, Experts: moeExperts, Layers: 2, Vocab: 64,
			Layout: layout, DType: safetensors.BF16, Seed: 3})
		m.Split(3)
		gate, up, down, router := "mlp.experts.%d.gate_proj", "mlp.experts.%d.up_proj", "mlp.experts.%d.down_proj", "mlp.gate"
		if layout == fixture.MixtralPerExpert {
			gate, up, down, router = "block_sparse_moe.experts.%d.w1", "block_sparse_moe.experts.%d.w3", "block_sparse_moe.experts.%d.w2", "block_sparse_moe.gate"
		}
		t.Run(map[fixture.ExpertLayout]string{fixture.PerExpert: "qwen", fixture.MixtralPerExpert: "mixtral"}[layout], func(t *testing.T) {
			// Trained under Transformers v5, which fuses the experts at load time: the
			// adapter names mlp.experts.gate_up_proj (E, 2I, H), gate rows first.
			a, refs := gateUpDown(2, "0.20.0", false, moeHidden, moeInter, safetensors.F32, 4)
			res := run(t, m, a, mergeplan.Options{})
			var tl tally
			for l, ref := range refs {
				p := fmt.Sprintf("model.layers.%d.", l)
				for e := 0; e < moeExperts; e++ {
					for _, c := range []struct {
						name string
						d    refDelta
						rows int
					}{
						{fmt.Sprintf(gate, e), ref[0].delta(e), moeInter},
						{fmt.Sprintf(up, e), rowsOf(ref[0].delta(e), moeInter), moeInter},
						{fmt.Sprintf(down, e), ref[1].delta(e), moeHidden},
					} {
						n := p + c.name + ".weight"
						checkTensor(&tl, safetensors.BF16, res.tensor(t, n).Values, m.Tensor(n).Values, c.rows, len(m.Tensor(n).Values)/c.rows, []refDelta{c.d})
					}
				}
			}
			tl.assert(t, "per-expert", safetensors.BF16, false)
			sameBytes(t, res, m, untouched(m, ".experts.")...)
			sameBytes(t, res, m, "model.layers.0."+router+".weight", "model.layers.1.self_attn.q_proj.weight")
		})
	}
}

// TestExpertsInterleaved merges gpt-oss's experts, stored (E, in, out) with gate and up
// columns alternating, and shows that the reference catches the wrong merges other
// tools have shipped: a transposed expert delta, experts swapped, gate and up swapped.
func TestExpertsInterleaved(t *testing.T) {
	const h, i = 32, 32 // down_proj (E, I, H) is square: only the version decides its reading
	m := fixture.MoE(fixture.MoESpec{Hidden: h, Intermediate: i, Experts: moeExperts, Layers: 1, Vocab: 64,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 5})
	a, refs := gateUpDown(1, "0.20.0", true, h, i, safetensors.BF16, 6)
	res := run(t, m, a, mergeplan.Options{})
	p := "model.layers.0.mlp.experts."
	gu, W := res.tensor(t, p+"gate_up_proj").Values, m.Tensor(p+"gate_up_proj").Values
	dn, Wd := res.tensor(t, p+"down_proj").Values, m.Tensor(p+"down_proj").Values
	var tl tally
	checkFused(&tl, safetensors.BF16, gu, W, moeExperts, h, 2*i, refs[0][0])
	checkFused(&tl, safetensors.BF16, dn, Wd, moeExperts, i, h, refs[0][1])
	tl.assert(t, "interleaved experts", safetensors.BF16, false)
	sameBytes(t, res, m, untouched(m, "experts.gate_up_proj", "experts.down_proj")...)
	sameBytes(t, res, m, p+"gate_up_proj_bias", p+"down_proj_bias", "model.layers.0.mlp.router.weight", "model.layers.0.mlp.router.bias")

	// Wrong merges, computed from the reference's own parts and rounded once: each must
	// fail the same check the merge passed.
	wrong := func(what string, W []float64, d1, d2 int, right expertLoRA, delta func(e int) refDelta) {
		t.Helper()
		got := make([]float64, len(W))
		for e := 0; e < moeExperts; e++ {
			for k, x := range exactValues(slice(W, e, d1, d2), d1, d2, []refDelta{delta(e)}) {
				got[e*d1*d2+k] = roundExact(safetensors.BF16, x)
			}
		}
		var tl tally
		checkFused(&tl, safetensors.BF16, got, W, moeExperts, d1, d2, right)
		if !fails(&tl, safetensors.BF16) {
			t.Errorf("%s: the reference does not catch it (%d of %d elements differ)", what, tl.differ, tl.n)
		}
	}
	down, gateUp := refs[0][1], refs[0][0]
	wrong("transposed expert delta", Wd, i, h, down, func(e int) refDelta {
		d := down.delta(e)
		return refDelta{d.s, d.rank, func(o, k int) float64 { return d.r(k, o) }, func(k, j int) float64 { return d.l(j, k) }}
	})
	wrong("experts swapped", W, h, 2*i, gateUp, func(e int) refDelta { return gateUp.delta(e ^ 1) })
	wrong("gate and up swapped", W, h, 2*i, gateUp, func(e int) refDelta {
		d := gateUp.delta(e)
		return refDelta{d.s, d.rank, d.l, func(k, j int) float64 { return d.r(k, j^1) }}
	})
}

// TestExpertsGroupedB reads lora_B as Unsloth packed it before its lora_B_layout marker
// (grouped_by_expert): the same adapter read with PEFT's packing would differ.
func TestExpertsGroupedB(t *testing.T) {
	m := fixture.MoE(fixture.MoESpec{Hidden: moeHidden, Intermediate: moeInter, Experts: moeExperts, Layers: 1, Vocab: 64,
		Layout: fixture.Fused, DType: safetensors.BF16, Seed: 7})
	a, refs := gateUpDown(1, "0.19.1", false, moeHidden, moeInter, safetensors.F32, 8)
	a.Config["lora_B_layout"] = "grouped_by_expert"
	res := run(t, m, a, mergeplan.Options{})
	p := "model.layers.0.mlp.experts."
	got, W := res.tensor(t, p+"gate_up_proj").Values, m.Tensor(p+"gate_up_proj").Values
	grouped := refs[0][0]
	grouped.grouped = true
	var tl, asPEFT tally
	checkFused(&tl, safetensors.BF16, got, W, moeExperts, 2*moeInter, moeHidden, grouped)
	tl.assert(t, "grouped lora_B", safetensors.BF16, false)
	checkFused(&asPEFT, safetensors.BF16, got, W, moeExperts, 2*moeInter, moeHidden, refs[0][0])
	if !fails(&asPEFT, safetensors.BF16) {
		t.Error("the grouped and the rank-major readings agree: the test cannot tell them apart")
	}
}

// TestExpertsLinearLoRA merges a LoRA on per-expert Linear modules, as adapters trained
// under Transformers 4.x have it, and one on attention only: every expert tensor the
// adapter does not name is copied byte for byte.
func TestExpertsLinearLoRA(t *testing.T) {
	m := fixture.MoE(fixture.MoESpec{Hidden: moeHidden, Intermediate: moeInter, Experts: moeExperts, Layers: 2, Vocab: 64,
		Layout: fixture.PerExpert, DType: safetensors.BF16, Seed: 9})
	m.Split(2)
	for _, c := range []struct {
		name    string
		targets []string
	}{
		{"experts", []string{"model.layers.0.mlp.experts.1.gate_proj", "model.layers.1.mlp.experts.3.down_proj"}},
		{"attention", []string{"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := fixture.NewAdapter(8, 16, "gate_proj", "down_proj", "q_proj", "v_proj")
			rnd := fixture.NewRand(10)
			for _, mod := range c.targets {
				w := m.Tensor(mod + ".weight")
				a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.BF16, rnd)
			}
			res := run(t, m, a, mergeplan.Options{})
			var tl tally
			for _, mod := range c.targets {
				w := m.Tensor(mod + ".weight")
				A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
				checkTensor(&tl, safetensors.BF16, res.tensor(t, mod+".weight").Values, w.Values, int(w.Shape[0]), int(w.Shape[1]),
					[]refDelta{linearDelta(2, 8, A, B)})
			}
			tl.assert(t, c.name, safetensors.BF16, false)
			sameBytes(t, res, m, untouched(m, c.targets...)...)
		})
	}
}

// BenchmarkExperts merges one layer of fused experts (E = 32, hidden 1024, expert MLP
// 384) with expert LoRA of rank 16 per expert, and reports the output rate, to compare
// with BenchmarkShard's dense rate at the same rank.
func BenchmarkExperts(b *testing.B) {
	const E, h, i, r = 32, 1024, 384, 16
	m := fixture.MoE(fixture.MoESpec{Hidden: h, Intermediate: i, Experts: E, Layers: 1, Vocab: 256, Layout: fixture.Fused,
		DType: safetensors.BF16, Seed: 1})
	a := fixture.NewExpertAdapter(r, r, "0.19.1", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	rnd := fixture.NewRand(2)
	a.Experts(fixture.ExpertsModule(0), 1, E, r, h, 2*i, safetensors.F32, rnd)
	a.Experts(fixture.ExpertsModule(0), 0, E, r, i, h, safetensors.F32, rnd)
	p, files := plan(b, m, a, mergeplan.Options{})
	if !p.OK() {
		b.Fatal(p.Problems)
	}
	s := &p.Shards[0]
	b.SetBytes(s.Size())
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		sh, err := merge.New(s, files, merge.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := sh.Write(context.Background(), io.Discard, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// TestExpertsLinearIntoFused merges LoRA on per-expert Linear modules into checkpoints
// that store the experts fused: a Transformers 4.x training (experts.{e}.gate_proj,
// up_proj, down_proj) into a v5-saved Qwen-MoE, and Unsloth's gpt-oss modules
// (experts.gate_up_projs.{e}, down_projs.{e}) into gpt-oss's (E, in, out) experts.
func TestExpertsLinearIntoFused(t *testing.T) {
	const r = 4
	t.Run("qwen", func(t *testing.T) {
		m := fixture.MoE(fixture.MoESpec{Hidden: moeHidden, Intermediate: moeInter, Experts: moeExperts, Layers: 1, Vocab: 64,
			Layout: fixture.Fused, DType: safetensors.BF16, Seed: 11})
		a := fixture.NewAdapter(r, 8, "gate_proj", "up_proj", "down_proj")
		rnd := fixture.NewRand(12)
		p := "model.layers.0.mlp.experts."
		a.Linear(p+"2.gate_proj", moeInter, moeHidden, r, safetensors.F32, rnd)
		a.Linear(p+"2.up_proj", moeInter, moeHidden, r, safetensors.F32, rnd)
		a.Linear(p+"1.down_proj", moeHidden, moeInter, r, safetensors.F32, rnd)
		res := run(t, m, a, mergeplan.Options{})
		lin := func(mod string) refDelta {
			return linearDelta(2, r, a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight")))
		}
		var tl tally
		gu, W := res.tensor(t, p+"gate_up_proj").Values, m.Tensor(p+"gate_up_proj").Values
		ex := slice(gu, 2, 2*moeInter, moeHidden)
		w := slice(W, 2, 2*moeInter, moeHidden)
		checkTensor(&tl, safetensors.BF16, ex[:moeInter*moeHidden], w[:moeInter*moeHidden], moeInter, moeHidden, []refDelta{lin(p + "2.gate_proj")})
		checkTensor(&tl, safetensors.BF16, ex[moeInter*moeHidden:], w[moeInter*moeHidden:], moeInter, moeHidden, []refDelta{lin(p + "2.up_proj")})
		dn, Wd := res.tensor(t, p+"down_proj").Values, m.Tensor(p+"down_proj").Values
		checkTensor(&tl, safetensors.BF16, slice(dn, 1, moeHidden, moeInter), slice(Wd, 1, moeHidden, moeInter), moeHidden, moeInter, []refDelta{lin(p + "1.down_proj")})
		tl.assert(t, "4.x LoRA into fused experts", safetensors.BF16, false)
		for _, e := range []int{0, 1, 3} {
			if !equal(slice(gu, e, 2*moeInter, moeHidden), slice(W, e, 2*moeInter, moeHidden)) {
				t.Errorf("gate_up_proj of expert %d changed", e)
			}
		}
		for _, e := range []int{0, 2, 3} {
			if !equal(slice(dn, e, moeHidden, moeInter), slice(Wd, e, moeHidden, moeInter)) {
				t.Errorf("down_proj of expert %d changed", e)
			}
		}
	})
	t.Run("gpt-oss", func(t *testing.T) {
		const h, i = 32, 24
		m := fixture.MoE(fixture.MoESpec{Hidden: h, Intermediate: i, Experts: moeExperts, Layers: 1, Vocab: 64,
			Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 13})
		a := fixture.NewAdapter(r, 8, "gate_up_projs", "down_projs")
		rnd := fixture.NewRand(14)
		p := "model.layers.0.mlp.experts."
		a.Linear(p+"gate_up_projs.1", 2*i, h, r, safetensors.F32, rnd) // a Linear (2I, H)
		a.Linear(p+"down_projs.3", h, i, r, safetensors.F32, rnd)      // a Linear (H, I)
		res := run(t, m, a, mergeplan.Options{})
		tr := func(mod string) refDelta {
			return transposedDelta(2, r, a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight")))
		}
		var tl tally
		gu, W := res.tensor(t, p+"gate_up_proj").Values, m.Tensor(p+"gate_up_proj").Values
		checkTensor(&tl, safetensors.BF16, slice(gu, 1, h, 2*i), slice(W, 1, h, 2*i), h, 2*i, []refDelta{tr(p + "gate_up_projs.1")})
		dn, Wd := res.tensor(t, p+"down_proj").Values, m.Tensor(p+"down_proj").Values
		checkTensor(&tl, safetensors.BF16, slice(dn, 3, i, h), slice(Wd, 3, i, h), i, h, []refDelta{tr(p + "down_projs.3")})
		tl.assert(t, "Unsloth's gpt-oss LoRA into fused experts", safetensors.BF16, false)
		if !equal(slice(gu, 0, h, 2*i), slice(W, 0, h, 2*i)) || !equal(slice(dn, 2, i, h), slice(Wd, 2, i, h)) {
			t.Error("an expert the adapter does not name changed")
		}
		sameBytes(t, res, m, p+"gate_up_proj_bias", p+"down_proj_bias")
	})
}

func equal(x, y []float64) bool {
	if len(x) != len(y) {
		return false
	}
	for k := range x {
		if x[k] != y[k] {
			return false
		}
	}
	return true
}
