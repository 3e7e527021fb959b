package merge_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// FP8 experts in keep and mixed modes. DeepSeek-V3, Kimi-K2, the Qwen3-MoE FP8 releases
// and MiniMax-M2 store each expert's projections as its own 2-D block-FP8 weight with a
// _scale_inv (docs/quantized.md, "FP8 experts"). The reference is the fixture's own
// decoding (dequantRef), the expert delta written out as PEFT defines it (expertLoRA),
// the exact sum in double-double, and for keep the nearest-even E4M3 point decided in
// 256-bit arithmetic (e4m3Nearest).

// fp8ExpertCase is a block-FP8 MoE base with an adapter, and what the reference needs:
// each touched weight's deltas, and the modules mixed mode must name.
type fp8ExpertCase struct {
	m       *fixture.Model
	a       *fixture.Adapter
	block   [2]int64
	deltas  map[string][]refDelta // by weight name
	modules []string              // what mixed names in modules_to_not_convert, sorted
}

// expertNames are the per-expert weight formats of a layout: gate, up, down.
func expertNames(layout fixture.ExpertLayout) [3]string {
	if layout == fixture.MixtralPerExpert {
		return [3]string{"model.layers.%d.block_sparse_moe.experts.%d.w1.weight", "model.layers.%d.block_sparse_moe.experts.%d.w3.weight",
			"model.layers.%d.block_sparse_moe.experts.%d.w2.weight"}
	}
	return [3]string{"model.layers.%d.mlp.experts.%d.gate_proj.weight", "model.layers.%d.mlp.experts.%d.up_proj.weight",
		"model.layers.%d.mlp.experts.%d.down_proj.weight"}
}

func fp8MoE(layout fixture.ExpertLayout, scale safetensors.DType, seed uint64) *fixture.Model {
	m := fixture.MoE(fixture.MoESpec{Hidden: moeHidden, Intermediate: moeInter, Experts: moeExperts, Layers: 2, Vocab: 64,
		Layout: layout, DType: safetensors.BF16, Seed: seed})
	m.BlockFP8([2]int64{16, 16}, scale, seed+1) // 48×40 and 40×48 weights: 3×3 blocks, partial at the edge
	m.Split(3)
	return m
}

// expertLoRACase: expert LoRA (PEFT target_parameters on the fused view Transformers v5
// loads) on both expert parameters of both layers: every expert weight changes.
func expertLoRACase(layout fixture.ExpertLayout, scale safetensors.DType, seed uint64) fp8ExpertCase {
	m := fp8MoE(layout, scale, seed)
	names := expertNames(layout)
	// One expert's scale in another shard than its weight.
	m.MoveTensor(fmt.Sprintf(names[0], 0, 1)+"_scale_inv", 0)
	a, refs := gateUpDown(2, "0.20.0", false, moeHidden, moeInter, safetensors.F32, seed+2)
	c := fp8ExpertCase{m: m, a: a, block: [2]int64{16, 16}, deltas: map[string][]refDelta{}}
	for l, ref := range refs {
		for e := 0; e < moeExperts; e++ {
			c.deltas[fmt.Sprintf(names[0], l, e)] = []refDelta{ref[0].delta(e)}
			c.deltas[fmt.Sprintf(names[1], l, e)] = []refDelta{rowsOf(ref[0].delta(e), moeInter)}
			c.deltas[fmt.Sprintf(names[2], l, e)] = []refDelta{ref[1].delta(e)}
		}
		c.modules = append(c.modules, strings.TrimSuffix(fmt.Sprintf(names[0], l, 0), ".0.gate_proj.weight"))
	}
	if layout == fixture.MixtralPerExpert {
		c.modules = []string{"model.layers.0.block_sparse_moe.experts", "model.layers.1.block_sparse_moe.experts"}
	}
	return c
}

// perModuleCase: ordinary LoRA (target_modules) on two experts of layer 0 and on layer
// 1's q_proj: layer 1's experts stay untouched.
func perModuleCase(scale safetensors.DType, seed uint64) fp8ExpertCase {
	const r = 4
	m := fp8MoE(fixture.PerExpert, scale, seed)
	m.MoveTensor("model.layers.0.mlp.experts.2.gate_proj.weight_scale_inv", 2)
	a := fixture.NewAdapter(r, 8, "gate_proj", "up_proj", "down_proj", "q_proj")
	rnd := fixture.NewRand(seed + 2)
	c := fp8ExpertCase{m: m, a: a, block: [2]int64{16, 16}, deltas: map[string][]refDelta{},
		modules: []string{"model.layers.0.mlp.experts", "model.layers.1.self_attn.q_proj"}}
	for _, mod := range []string{"model.layers.0.mlp.experts.2.gate_proj", "model.layers.0.mlp.experts.2.up_proj",
		"model.layers.0.mlp.experts.1.down_proj", "model.layers.1.self_attn.q_proj"} {
		w := m.Tensor(mod + ".weight")
		a.Linear(mod, w.Shape[0], w.Shape[1], r, safetensors.F32, rnd)
		c.deltas[mod+".weight"] = []refDelta{linearDelta(2, r, a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight")))}
	}
	return c
}

// rsLoRAPatternCase: rsLoRA with a rank pattern and an alpha pattern on two experts of
// layer 1: expert 0's gate_proj at rank 2 by pattern, every down_proj at alpha 3.
func rsLoRAPatternCase(scale safetensors.DType, seed uint64) fp8ExpertCase {
	m := fp8MoE(fixture.PerExpert, scale, seed)
	a := fixture.NewAdapter(4, 8, "gate_proj", "down_proj")
	a.Config["use_rslora"] = true
	a.Config["rank_pattern"] = map[string]any{`experts\.0\.gate_proj`: 2}
	a.Config["alpha_pattern"] = map[string]any{"down_proj": 3}
	rnd := fixture.NewRand(seed + 2)
	c := fp8ExpertCase{m: m, a: a, block: [2]int64{16, 16}, deltas: map[string][]refDelta{},
		modules: []string{"model.layers.1.mlp.experts"}}
	for _, x := range []struct {
		mod   string
		r     int
		alpha float64
	}{{"model.layers.1.mlp.experts.0.gate_proj", 2, 8}, {"model.layers.1.mlp.experts.3.down_proj", 4, 3}} {
		w := m.Tensor(x.mod + ".weight")
		a.Linear(x.mod, w.Shape[0], w.Shape[1], x.r, safetensors.F32, rnd)
		c.deltas[x.mod+".weight"] = []refDelta{linearDelta(x.alpha/math.Sqrt(float64(x.r)), x.r,
			a.Tensor(fixture.Key(x.mod, "lora_A.weight")), a.Tensor(fixture.Key(x.mod, "lora_B.weight")))}
	}
	return c
}

func fp8ExpertCases() map[string]fp8ExpertCase {
	return map[string]fp8ExpertCase{
		"deepseek/expert-lora/ue8m0":  expertLoRACase(fixture.PerExpert, safetensors.F8E8M0, 51),
		"deepseek/expert-lora/f32":    expertLoRACase(fixture.PerExpert, safetensors.F32, 52),
		"minimax/expert-lora/bf16":    expertLoRACase(fixture.MixtralPerExpert, safetensors.BF16, 53),
		"qwen3/per-module/f16":        perModuleCase(safetensors.F16, 54),
		"qwen3/rslora-patterns/ue8m0": rsLoRAPatternCase(safetensors.F8E8M0, 55),
	}
}

// keepVerdict checks one requantized weight against the reference: each code the
// nearest-even E4M3 point of exact/scale, no block saturating, no block's scale more
// than twice what its largest exact magnitude needs. It returns what is wrong ("" when
// nothing) and the share of the delta kept, as the engine reports it.
func keepVerdict(codes []byte, scales []float64, exact []dd, W []float64, cols int, block [2]int64) (string, rqTally) {
	sc := (cols + int(block[1]) - 1) / int(block[1])
	amax := make([]float64, len(scales))
	var st rqTally
	for i, x := range exact {
		b := (i/cols/int(block[0]))*sc + (i%cols)/int(block[1])
		amax[b] = max(amax[b], math.Abs(x.hi))
		want, ok := e4m3Nearest(x, scales[b])
		if !ok {
			return fmt.Sprintf("element %d: %v / scale %v saturates", i, x.hi, scales[b]), st
		}
		if codes[i] != want {
			return fmt.Sprintf("element %d: code %#02x, want %#02x (exact %v / scale %v)", i, codes[i], want, x.hi, scales[b]), st
		}
		kept, d := fixture.F8(safetensors.F8E4M3, codes[i])*scales[b]-W[i], x.hi-W[i]
		st.n++
		if kept != 0 {
			st.changed++
		}
		st.num += (kept - d) * (kept - d)
		st.den += d * d
	}
	for b, s := range scales {
		if amax[b] > 0 && s > 2*amax[b]/safetensors.F8E4M3Max {
			return fmt.Sprintf("block %d: scale %v is more than twice the %v its largest value %v needs", b, s, amax[b]/safetensors.F8E4M3Max, amax[b]), st
		}
	}
	return "", st
}

type rqTally struct {
	n, changed int
	num, den   float64
}

func TestFP8ExpertsKeep(t *testing.T) {
	for what, c := range fp8ExpertCases() {
		t.Run(what, func(t *testing.T) {
			res := run(t, c.m, c.a, mergeplan.Options{Quantized: mergeplan.QuantKeep})
			var sum rqTally
			for _, name := range sortedNames(c.deltas) {
				w := c.m.Tensor(name)
				rows, cols := int(w.Shape[0]), int(w.Shape[1])
				got, scale := res.tensor(t, name), res.tensor(t, name+"_scale_inv")
				sdt := c.m.Tensor(name + "_scale_inv").DType
				if got.DType != safetensors.F8E4M3 || scale.DType != sdt || !slices.Equal(scale.Shape, c.m.Tensor(name+"_scale_inv").Shape) {
					t.Fatalf("%s is %s with %s %v scales; want F8_E4M3 with the base's %s scales", name, got.DType, scale.DType, scale.Shape, sdt)
				}
				W := dequantRef(c.m, name, c.block, rightBlock)
				exact := exactValues(W, rows, cols, c.deltas[name])
				bad, st := keepVerdict(res.raw[name], scale.Values, exact, W, cols, c.block)
				if bad != "" {
					t.Fatalf("%s: %s", name, bad)
				}
				if sdt == safetensors.F8E8M0 {
					for _, s := range scale.Values {
						if math.Exp2(math.Round(math.Log2(s))) != s {
							t.Fatalf("%s: UE8M0 scale %v is not a power of two", name, s)
						}
					}
				}
				sum.n, sum.changed, sum.num, sum.den = sum.n+st.n, sum.changed+st.changed, sum.num+st.num, sum.den+st.den
			}
			t.Logf("keep: %d of %d touched expert elements changed; the delta kept is off by %.3g relative", sum.changed, sum.n, math.Sqrt(sum.num/sum.den))
			// Untouched weights and scales: byte for byte.
			n := 0
			for _, bt := range c.m.Tensors {
				w, _ := strings.CutSuffix(bt.Name, "_scale_inv")
				if c.deltas[w] != nil {
					continue
				}
				if !bytes.Equal(res.raw[bt.Name], fixture.Encode(bt.DType, bt.Values)) {
					t.Errorf("%s is untouched but its bytes changed", bt.Name)
				}
				n++
			}
			if n == 0 {
				t.Fatal("no untouched tensors compared")
			}
			got := requantStats(t, c.m, c.a)
			if got.Elements != sum.n || got.Changed != sum.changed || math.Abs(got.DeltaError()-math.Sqrt(sum.num/sum.den)) > 1e-9 {
				t.Errorf("engine reports %+v; reference %d elements, %d changed, error %.6g", got, sum.n, sum.changed, math.Sqrt(sum.num/sum.den))
			}
			// A nil Config is the base's config.json, published as it is.
			if res.plan.Config != nil && !bytes.Contains(res.plan.Config, []byte(`"weight_block_size"`)) {
				t.Error("keep drops quantization_config")
			}
		})
	}
}

func TestFP8ExpertsMixed(t *testing.T) {
	for what, c := range fp8ExpertCases() {
		t.Run(what, func(t *testing.T) {
			res := run(t, c.m, c.a, mergeplan.Options{Quantized: mergeplan.QuantMixed})
			var conf struct {
				Q map[string]any `json:"quantization_config"`
			}
			if err := json.Unmarshal(res.plan.Config, &conf); err != nil {
				t.Fatal(err)
			}
			if conf.Q["quant_method"] != "fp8" {
				t.Fatalf("quantization_config: %v", conf.Q)
			}
			var named []string
			for _, key := range []string{"modules_to_not_convert", "ignored_layers"} {
				list, _ := conf.Q[key].([]any)
				var got []string
				for _, v := range list {
					got = append(got, fmt.Sprint(v))
				}
				slices.Sort(got)
				if !slices.Equal(got, c.modules) {
					t.Errorf("quantization_config.%s = %v, want %v", key, got, c.modules)
				}
				named = got
			}
			under := func(name string) bool {
				return slices.ContainsFunc(named, func(m string) bool { return strings.HasPrefix(name, m+".") })
			}
			var tl tally
			bf16, exact, same := 0, 0, 0
			for _, bt := range c.m.Tensors {
				w, isScale := strings.CutSuffix(bt.Name, "_scale_inv")
				_, present := res.tensors[bt.Name]
				switch {
				case isScale && under(w):
					if present {
						t.Errorf("%s is in the output, but %s is written in BF16", bt.Name, w)
					}
				case bt.DType == safetensors.F8E4M3 && under(bt.Name):
					// The config names exactly the tensors written in BF16: these, and
					// (below) no other quantized weight.
					got := res.tensor(t, bt.Name)
					if got.DType != safetensors.BF16 {
						t.Fatalf("%s is %s, but the config names it as BF16", bt.Name, got.DType)
					}
					rows := int(bt.Shape[0])
					W := dequantRef(c.m, bt.Name, c.block, rightBlock)
					if d := c.deltas[bt.Name]; d != nil {
						checkTensor(&tl, safetensors.BF16, got.Values, W, rows, len(W)/rows, d)
						bf16++
						continue
					}
					// An untouched expert beside touched ones: its exact dequantization.
					for i, v := range W {
						if got.Values[i] != fixture.RoundBF16(v) {
							t.Fatalf("%s[%d] = %v, want %v, the exact dequantization rounded once", bt.Name, i, got.Values[i], fixture.RoundBF16(v))
						}
					}
					exact++
				default:
					if c.deltas[bt.Name] != nil {
						t.Fatalf("%s is changed by the adapter but not named in the config", bt.Name)
					}
					if !bytes.Equal(res.raw[bt.Name], fixture.Encode(bt.DType, bt.Values)) {
						t.Errorf("%s is untouched but its bytes changed", bt.Name)
					}
					same++
				}
			}
			tl.assert(t, "mixed FP8 experts", safetensors.BF16, false)
			if bf16 != len(c.deltas) || same == 0 {
				t.Fatalf("compared %d touched (want %d), %d exact untouched, %d byte-identical tensors", bf16, len(c.deltas), exact, same)
			}
			// The plan's mixed size is what was written.
			var total int64
			for _, x := range res.tensors {
				total += x.Bytes()
			}
			if got := res.plan.Quant.Bytes["mixed"]; got != total {
				t.Errorf("plan says mixed writes %d tensor bytes; it wrote %d", got, total)
			}
		})
	}
}

// TestFP8ExpertsReferenceCatchesWrongMerges: on the expert weights, the reference
// rejects the three wrong merges (the scale skipped, the sum rounded to FP8 before the
// output, the block grid transposed), and one more that experts invite: another
// expert's delta. The keep verdict rejects the engine's codes read with the scales'
// block grid transposed, scales four times too large, and the base's codes and scales
// copied as they were.
func TestFP8ExpertsReferenceCatchesWrongMerges(t *testing.T) {
	c := expertLoRACase(fixture.PerExpert, safetensors.F32, 61)
	m := c.m
	wrong := map[string]func(name string, W, delta []float64, cols int) []float64{
		"scale skipped": func(name string, _, delta []float64, _ int) []float64 {
			q := m.Tensor(name).Values
			out := make([]float64, len(q))
			for i := range q {
				out[i] = fixture.RoundBF16(q[i] + delta[i])
			}
			return out
		},
		"sum rounded to FP8": func(name string, W, delta []float64, cols int) []float64 {
			s := m.Tensor(name + "_scale_inv")
			out := make([]float64, len(W))
			for i := range W {
				sc := s.Values[rightBlock(i/cols/int(c.block[0]), i%cols/int(c.block[1]), 0, int(s.Shape[1]))]
				q := safetensors.F8Value(safetensors.F8E4M3, safetensors.EncodeF8E4M3((W[i]+delta[i])/sc))
				out[i] = fixture.RoundBF16(q * sc)
			}
			return out
		},
		"block index transposed": func(name string, _, delta []float64, _ int) []float64 {
			W := dequantRef(m, name, c.block, func(bi, bj, sr, _ int) int { return (bj*sr + bi) % (sr * int(m.Tensor(name + "_scale_inv").Shape[1])) })
			out := make([]float64, len(W))
			for i := range W {
				out[i] = fixture.RoundBF16(W[i] + delta[i])
			}
			return out
		},
		"another expert's delta": func(name string, W, _ []float64, cols int) []float64 {
			other := strings.Replace(name, ".experts.1.", ".experts.2.", 1) // the targets are expert 1's
			d := deltaValues(c.deltas[other][0], len(W)/cols, cols)
			out := make([]float64, len(W))
			for i := range W {
				out[i] = fixture.RoundBF16(W[i] + d[i])
			}
			return out
		},
	}
	targets := []string{"model.layers.0.mlp.experts.1.gate_proj.weight", "model.layers.1.mlp.experts.1.up_proj.weight",
		"model.layers.0.mlp.experts.1.down_proj.weight"}
	for what, merge := range wrong {
		var tl tally
		for _, name := range targets {
			w := m.Tensor(name)
			rows, cols := int(w.Shape[0]), int(w.Shape[1])
			W := dequantRef(m, name, c.block, rightBlock)
			checkTensor(&tl, safetensors.BF16, merge(name, W, deltaValues(c.deltas[name][0], rows, cols), cols), W, rows, cols, c.deltas[name])
		}
		t.Logf("%s: %d of %d elements differ from the correctly rounded value, %d beyond one rounding", what, tl.differ, tl.n, tl.far)
		if judge(&tl) {
			t.Errorf("the reference accepts a merge with the %s", what)
		}
	}
	// keep: the engine's codes and scales pass; the base's scales, or the engine's
	// scales read with the block grid transposed, do not.
	res := run(t, m, c.a, mergeplan.Options{Quantized: mergeplan.QuantKeep})
	for _, name := range targets {
		w := m.Tensor(name)
		rows, cols := int(w.Shape[0]), int(w.Shape[1])
		W := dequantRef(m, name, c.block, rightBlock)
		exact := exactValues(W, rows, cols, c.deltas[name])
		scales := res.tensor(t, name+"_scale_inv")
		if bad, _ := keepVerdict(res.raw[name], scales.Values, exact, W, cols, c.block); bad != "" {
			t.Errorf("%s: the keep verdict rejects the engine's requantization: %s", name, bad)
		}
		// The base's codes and scales, as a tool that forgets to requantize ships them.
		base := m.Tensor(name + "_scale_inv").Values
		if bad, _ := keepVerdict(fixture.Encode(w.DType, w.Values), base, exact, W, cols, c.block); bad == "" {
			t.Errorf("%s: the keep verdict accepts the base's codes and scales", name)
		}
		// Scales four times too large (codes rounded to them).
		sc := int(scales.Shape[1])
		big, codes := make([]float64, len(scales.Values)), make([]byte, len(W))
		for b, s := range scales.Values {
			big[b] = 4 * s
		}
		for i, x := range exact {
			codes[i], _ = e4m3Nearest(x, big[(i/cols/int(c.block[0]))*sc+(i%cols)/int(c.block[1])])
		}
		if bad, _ := keepVerdict(codes, big, exact, W, cols, c.block); bad == "" {
			t.Errorf("%s: the keep verdict accepts scales four times too large", name)
		}
		sr := int(scales.Shape[0])
		tr := make([]float64, len(scales.Values))
		for bi := 0; bi < sr; bi++ {
			for bj := 0; bj < sc; bj++ {
				tr[bi*sc+bj] = scales.Values[(bj*sr+bi)%len(tr)]
			}
		}
		if bad, _ := keepVerdict(res.raw[name], tr, exact, W, cols, c.block); bad == "" {
			t.Errorf("%s: the keep verdict accepts the scales' block grid transposed", name)
		}
	}
}

// deltaValues is a delta's values in float64, for the wrong merges.
func deltaValues(d refDelta, rows, cols int) []float64 {
	out := make([]float64, rows*cols)
	for i := range out {
		for k := 0; k < d.rank; k++ {
			out[i] += d.s * d.l(i/cols, k) * d.r(k, i%cols)
		}
	}
	return out
}

func sortedNames[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
