package merge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// The block-FP8 reference: W[i, j] = code value · scale[i / b0, j / b1], both decoded by
// the fixture's own arithmetic, then W + s·B·A exactly (reference.go), rounded once to
// BF16.

var scaleDTypes = []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.F16, safetensors.F8E8M0}

// fp8Llama is a small block-FP8 Llama over three shards, with the first layer's q_proj
// scale moved to the last shard (as a scale may sit in another shard than its weight).
func fp8Llama(block [2]int64, scale safetensors.DType, seed uint64) *fixture.Model {
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 192, Intermediate: 320, Layers: 2, Vocab: 96, DType: safetensors.BF16, Seed: seed})
	m.BlockFP8(block, scale, seed+1)
	m.Split(3)
	m.MoveTensor("model.layers.0.self_attn.q_proj.weight_scale_inv", 2)
	return m
}

// fp8Targets are the modules the adapter changes: attention and the dense MLP.
var fp8Targets = []string{"self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.down_proj"}

func fp8Adapter(m *fixture.Model, seed uint64) *fixture.Adapter {
	a := fixture.NewAdapter(8, 16, "q_proj", "v_proj", "gate_proj", "down_proj")
	rnd := fixture.NewRand(seed)
	for l := 0; l < 2; l++ {
		for _, p := range fp8Targets {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.F32, rnd)
		}
	}
	return a
}

// dequantRef is the exact dequantized weight; blockOf maps an element to the scale
// index it uses (the right one, or a deliberately wrong one).
func dequantRef(m *fixture.Model, name string, block [2]int64, blockOf func(i, j, sr, sc int) int) []float64 {
	w, s := m.Tensor(name), m.Tensor(name+"_scale_inv")
	rows, cols := int(w.Shape[0]), int(w.Shape[1])
	sr, sc := int(s.Shape[0]), int(s.Shape[1])
	out := make([]float64, rows*cols)
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			out[i*cols+j] = w.Values[i*cols+j] * s.Values[blockOf(i/int(block[0]), j/int(block[1]), sr, sc)]
		}
	}
	return out
}

func rightBlock(bi, bj, sr, sc int) int { return bi*sc + bj }

// judge is the verdict of the reference on one merged tensor set: every touched element
// within one rounding of the exact value, few differing from the correctly rounded one.
func judge(tl *tally) bool {
	return tl.n > 0 && tl.far == 0 && float64(tl.differ)/float64(tl.n) <= bound(safetensors.BF16, false)
}

func TestBlockFP8ToBF16(t *testing.T) {
	for _, block := range [][2]int64{{64, 32}, {128, 128}} {
		for _, sdt := range scaleDTypes {
			t.Run(fmt.Sprintf("block=%dx%d/scale=%s", block[0], block[1], sdt), func(t *testing.T) {
				m := fp8Llama(block, sdt, 3)
				a := fp8Adapter(m, 4)
				res := run(t, m, a, mergeplan.Options{})
				var tl tally
				for l := 0; l < 2; l++ {
					for _, p := range fp8Targets {
						mod := fmt.Sprintf("model.layers.%d.%s", l, p)
						name := mod + ".weight"
						w := m.Tensor(name)
						got := res.tensor(t, name)
						if got.DType != safetensors.BF16 {
							t.Fatalf("%s: dtype %s, want BF16", name, got.DType)
						}
						A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
						W := dequantRef(m, name, block, rightBlock)
						checkTensor(&tl, safetensors.BF16, got.Values, W, int(w.Shape[0]), int(w.Shape[1]), []refDelta{linearDelta(2, 8, A, B)})
					}
				}
				tl.assert(t, "block FP8 → BF16", safetensors.BF16, false)
				checkUntouchedFP8(t, m, res, block)
			})
		}
	}
}

// checkUntouchedFP8: untouched FP8 weights are exactly the dequantization rounded once,
// BF16 tensors are the base's bytes, scales are gone, and config.json and the index say
// so.
func checkUntouchedFP8(t *testing.T, m *fixture.Model, res *result, block [2]int64) {
	t.Helper()
	touched := map[string]bool{}
	for l := 0; l < 2; l++ {
		for _, p := range fp8Targets {
			touched[fmt.Sprintf("model.layers.%d.%s.weight", l, p)] = true
		}
	}
	exact, same := 0, 0
	for _, bt := range m.Tensors {
		switch {
		case strings.HasSuffix(bt.Name, "_scale_inv"):
			if _, ok := res.tensors[bt.Name]; ok {
				t.Errorf("%s is in the output", bt.Name)
			}
		case bt.DType == safetensors.F8E4M3 && !touched[bt.Name]:
			got := res.tensor(t, bt.Name)
			for i, v := range dequantRef(m, bt.Name, block, rightBlock) {
				if want := fixture.RoundBF16(v); got.Values[i] != want {
					t.Fatalf("%s[%d] = %v, want %v, the rounded exact dequantization %v", bt.Name, i, got.Values[i], want, v)
				}
			}
			exact++
		case bt.DType == safetensors.BF16:
			if !bytes.Equal(res.raw[bt.Name], fixture.Encode(bt.DType, bt.Values)) {
				t.Errorf("%s is untouched BF16 but its bytes changed", bt.Name)
			}
			same++
		}
	}
	if exact == 0 || same == 0 {
		t.Fatalf("compared %d untouched FP8 and %d BF16 tensors", exact, same)
	}
	var conf map[string]any
	if err := json.Unmarshal(res.plan.Config, &conf); err != nil {
		t.Fatalf("config.json: %v", err)
	}
	if _, ok := conf["quantization_config"]; ok {
		t.Error("config.json keeps quantization_config")
	}
	if conf["torch_dtype"] != "bfloat16" || conf["dtype"] != "bfloat16" {
		t.Errorf("config.json has torch_dtype %v, dtype %v; want bfloat16", conf["torch_dtype"], conf["dtype"])
	}
	if bytes.Contains(res.plan.Index, []byte("_scale_inv")) {
		t.Error("the index still names scale tensors")
	}
}

// TestFP8ReferenceCatchesWrongMerges shows that the reference rejects the mistakes other
// tools shipped: the scale never applied, the sum rounded back into FP8 (the delta lost
// to three mantissa bits), and the scale grid read transposed.
func TestFP8ReferenceCatchesWrongMerges(t *testing.T) {
	block := [2]int64{64, 32}
	m := fp8Llama(block, safetensors.F32, 5)
	a := fp8Adapter(m, 6)
	wrong := map[string]func(name string, W, delta []float64, cols int) []float64{
		"scale skipped": func(name string, _, delta []float64, _ int) []float64 {
			q := m.Tensor(name).Values
			out := make([]float64, len(q))
			for i := range q {
				out[i] = fixture.RoundBF16(q[i] + delta[i])
			}
			return out
		},
		"delta rounded to FP8": func(name string, W, delta []float64, cols int) []float64 {
			s := m.Tensor(name + "_scale_inv")
			out := make([]float64, len(W))
			for i := range W {
				sc := s.Values[rightBlock(i/cols/int(block[0]), i%cols/int(block[1]), 0, int(s.Shape[1]))]
				q := safetensors.F8Value(safetensors.F8E4M3, safetensors.EncodeF8E4M3((W[i]+delta[i])/sc))
				out[i] = fixture.RoundBF16(q * sc)
			}
			return out
		},
		"block index transposed": func(name string, _, delta []float64, _ int) []float64 {
			W := dequantRef(m, name, block, func(bi, bj, sr, _ int) int { return bj*sr + bi })
			out := make([]float64, len(W))
			for i := range W {
				out[i] = fixture.RoundBF16(W[i] + delta[i])
			}
			return out
		},
	}
	for what, merge := range wrong {
		var tl tally
		for l := 0; l < 2; l++ {
			for _, p := range fp8Targets {
				mod := fmt.Sprintf("model.layers.%d.%s", l, p)
				name := mod + ".weight"
				w := m.Tensor(name)
				rows, cols := int(w.Shape[0]), int(w.Shape[1])
				A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
				d := linearDelta(2, 8, A, B)
				W := dequantRef(m, name, block, rightBlock)
				delta := make([]float64, len(W))
				for i := range delta {
					for k := 0; k < 8; k++ {
						delta[i] += d.s * d.l(i/cols, k) * d.r(k, i%cols)
					}
				}
				checkTensor(&tl, safetensors.BF16, merge(name, W, delta, cols), W, rows, cols, []refDelta{d})
			}
		}
		t.Logf("%s: %d of %d elements differ from the correctly rounded value, %d beyond one rounding", what, tl.differ, tl.n, tl.far)
		if judge(&tl) {
			t.Errorf("the reference accepts a merge with the %s (%d of %d elements differ, %d far)", what, tl.differ, tl.n, tl.far)
		}
	}
	// And it accepts the engine's merge of the same inputs.
	res := run(t, m, a, mergeplan.Options{})
	var tl tally
	for l := 0; l < 2; l++ {
		for _, p := range fp8Targets {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			name := mod + ".weight"
			w := m.Tensor(name)
			A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
			checkTensor(&tl, safetensors.BF16, res.tensor(t, name).Values, dequantRef(m, name, block, rightBlock),
				int(w.Shape[0]), int(w.Shape[1]), []refDelta{linearDelta(2, 8, A, B)})
		}
	}
	if !judge(&tl) {
		t.Errorf("the reference rejects the engine's merge: %d of %d differ, %d far", tl.differ, tl.n, tl.far)
	}
}

// e4m3Nearest is the reference requantization: the F8_E4M3 code nearest to x / s,
// ties to the even code, decided in 256-bit arithmetic among the grid points around
// the quotient (the grid listed from the fixture's own decoder); a quotient beyond
// ±448 has no nearest point here (it would saturate) and reports false.
func e4m3Nearest(x dd, s float64) (byte, bool) {
	z := new(big.Float).SetPrec(256).SetFloat64(x.hi)
	z.Add(z, new(big.Float).SetPrec(256).SetFloat64(x.lo))
	z.Quo(z, new(big.Float).SetPrec(256).SetFloat64(s))
	var sign byte
	if z.Sign() < 0 {
		sign = 0x80
		z.Neg(z)
	}
	if z.Cmp(big.NewFloat(448)) > 0 {
		return 0, false
	}
	zf, _ := z.Float64()
	k := sort.SearchFloat64s(e4m3Grid, zf)
	best, bestDist := -1, new(big.Float)
	for c := max(0, k-2); c < min(len(e4m3Grid), k+2); c++ {
		d := new(big.Float).SetPrec(256).Sub(z, new(big.Float).SetFloat64(e4m3Grid[c]))
		d.Abs(d)
		switch cmp := d.Cmp(bestDist); {
		case best < 0 || cmp < 0, cmp == 0 && c&1 == 0:
			best, bestDist = c, d
		}
	}
	return sign | byte(best), true
}

// e4m3Grid is the non-negative F8_E4M3 values in order: code c has value e4m3Grid[c].
var e4m3Grid = func() []float64 {
	var g []float64
	for c := 0; c < 0x7f; c++ {
		g = append(g, fixture.F8(safetensors.F8E4M3, byte(c)))
	}
	if !sort.Float64sAreSorted(g) {
		panic("E4M3 codes are not in value order")
	}
	return g
}()

func TestBlockFP8Keep(t *testing.T) {
	for _, sdt := range scaleDTypes {
		t.Run("scale="+string(sdt), func(t *testing.T) {
			block := [2]int64{64, 32}
			m := fp8Llama(block, sdt, 11)
			a := fp8Adapter(m, 12)
			res := run(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantKeep})
			touched := map[string]bool{}
			var elements, changed int
			var num, den float64
			for l := 0; l < 2; l++ {
				for _, p := range fp8Targets {
					mod := fmt.Sprintf("model.layers.%d.%s", l, p)
					name := mod + ".weight"
					touched[name], touched[name+"_scale_inv"] = true, true
					w := m.Tensor(name)
					rows, cols := int(w.Shape[0]), int(w.Shape[1])
					got, scale := res.raw[name], res.tensor(t, name+"_scale_inv")
					if res.tensor(t, name).DType != safetensors.F8E4M3 || scale.DType != sdt {
						t.Fatalf("%s is %s with %s scales; want F8_E4M3 with %s", name, res.tensor(t, name).DType, scale.DType, sdt)
					}
					A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
					W := dequantRef(m, name, block, rightBlock)
					exact := exactValues(W, rows, cols, []refDelta{linearDelta(2, 8, A, B)})
					bad, st := keepVerdict(got, scale.Values, exact, W, cols, block)
					if bad != "" {
						t.Fatalf("%s: %s", name, bad)
					}
					elements, changed, num, den = elements+st.n, changed+st.changed, num+st.num, den+st.den
				}
			}
			t.Logf("keep: %d of %d touched elements changed; the delta kept is off by %.3g relative", changed, elements, math.Sqrt(num/den))
			for _, bt := range m.Tensors {
				if touched[bt.Name] {
					continue
				}
				if !bytes.Equal(res.raw[bt.Name], fixture.Encode(bt.DType, bt.Values)) {
					t.Errorf("%s is untouched but its bytes changed", bt.Name)
				}
			}
			if res.plan.Config != nil && !bytes.Contains(res.plan.Config, []byte("quantization_config")) {
				t.Error("config.json loses quantization_config in keep mode")
			}
			got := requantStats(t, m, a)
			if got.Elements != elements || got.Changed != changed || math.Abs(got.DeltaError()-math.Sqrt(num/den)) > 1e-9 {
				t.Errorf("engine reports %+v; reference %d elements, %d changed, error %.6g", got, elements, changed, math.Sqrt(num/den))
			}
		})
	}
}

// requantStats merges every shard in keep mode and sums what the engine reports.
func requantStats(t *testing.T, m *fixture.Model, a *fixture.Adapter) merge.RequantStats {
	p, files := plan(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantKeep})
	var sum merge.RequantStats
	var num, den float64
	for i := range p.Shards {
		sh, err := merge.New(&p.Shards[i], files, merge.Options{Jobs: 2})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sh.Write(context.Background(), io.Discard, nil); err != nil {
			t.Fatal(err)
		}
		for _, r := range sh.Requantized() {
			sum.Elements += r.Elements
			sum.Changed += r.Changed
			num += r.ErrorNorm * r.ErrorNorm
			den += r.DeltaNorm * r.DeltaNorm
		}
	}
	sum.DeltaNorm, sum.ErrorNorm = math.Sqrt(den), math.Sqrt(num)
	return sum
}

// TestBlockFP8Mixed, for each of the four scale dtypes: untouched weights and scales
// byte-identical, touched weights the correctly rounded BF16 of the exact merge, and
// the config names exactly them.
func TestBlockFP8Mixed(t *testing.T) {
	for _, sdt := range scaleDTypes {
		t.Run("scale="+string(sdt), func(t *testing.T) {
			block := [2]int64{64, 32}
			m := fp8Llama(block, sdt, 21)
			a := fp8Adapter(m, 22)
			res := run(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantMixed})
			touched := map[string]bool{}
			var names []string
			var tl tally
			for l := 0; l < 2; l++ {
				for _, p := range fp8Targets {
					mod := fmt.Sprintf("model.layers.%d.%s", l, p)
					name := mod + ".weight"
					names = append(names, mod)
					touched[name], touched[name+"_scale_inv"] = true, true
					w := m.Tensor(name)
					got := res.tensor(t, name)
					if got.DType != safetensors.BF16 {
						t.Fatalf("%s is %s, want BF16", name, got.DType)
					}
					if _, ok := res.tensors[name+"_scale_inv"]; ok {
						t.Errorf("%s_scale_inv is in the output", name)
					}
					A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
					checkTensor(&tl, safetensors.BF16, got.Values, dequantRef(m, name, block, rightBlock), int(w.Shape[0]), int(w.Shape[1]),
						[]refDelta{linearDelta(2, 8, A, B)})
				}
			}
			tl.assert(t, "mixed", safetensors.BF16, false)
			for _, bt := range m.Tensors {
				if !touched[bt.Name] && !bytes.Equal(res.raw[bt.Name], fixture.Encode(bt.DType, bt.Values)) {
					t.Errorf("%s is untouched but its bytes changed", bt.Name)
				}
			}
			var conf struct {
				Q struct {
					NotConvert []string `json:"modules_to_not_convert"`
					Ignored    []string `json:"ignored_layers"`
				} `json:"quantization_config"`
			}
			if err := json.Unmarshal(res.plan.Config, &conf); err != nil {
				t.Fatal(err)
			}
			slices.Sort(names)
			got := slices.Clone(conf.Q.NotConvert)
			slices.Sort(got)
			if !slices.Equal(got, names) || !slices.Equal(conf.Q.Ignored, conf.Q.NotConvert) {
				t.Errorf("modules_to_not_convert %v, ignored_layers %v; want exactly %v", conf.Q.NotConvert, conf.Q.Ignored, names)
			}
		})
	}
}

// TestCompressedFP8: compressed-tensors FP8, per channel and per tensor, in each mode:
// bf16 and mixed exact to one rounding, keep the nearest-even point of the exact value
// over its scale, untouched tensors byte-identical where the mode keeps them.
func TestCompressedFP8(t *testing.T) {
	for _, strategy := range []string{"channel", "tensor"} {
		for _, mode := range []mergeplan.QuantMode{mergeplan.QuantBF16, mergeplan.QuantKeep, mergeplan.QuantMixed} {
			t.Run(strategy+"/"+string(mode), func(t *testing.T) {
				m := fixture.Llama(fixture.LlamaSpec{Hidden: 192, Intermediate: 320, Layers: 2, Vocab: 96, DType: safetensors.BF16, Seed: 31})
				m.CompressedFP8(strategy, safetensors.BF16, 32)
				m.Split(2)
				a := fp8Adapter(m, 33)
				res := run(t, m, a, mergeplan.Options{Quantized: mode})
				touched := map[string]bool{}
				var tl tally
				for l := 0; l < 2; l++ {
					for _, p := range fp8Targets {
						mod := fmt.Sprintf("model.layers.%d.%s", l, p)
						name := mod + ".weight"
						touched[name], touched[name+"_scale"], touched[mod+".input_scale"] = true, true, true
						w, s := m.Tensor(name), m.Tensor(name+"_scale")
						rows, cols := int(w.Shape[0]), int(w.Shape[1])
						W := make([]float64, len(w.Values))
						for i, q := range w.Values {
							sc := s.Values[0]
							if strategy == "channel" {
								sc = s.Values[i/cols]
							}
							W[i] = q * sc
						}
						A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
						d := []refDelta{linearDelta(2, 8, A, B)}
						if mode != mergeplan.QuantKeep {
							checkTensor(&tl, safetensors.BF16, res.tensor(t, name).Values, W, rows, cols, d)
							continue
						}
						exact := exactValues(W, rows, cols, d)
						scale := res.tensor(t, name+"_scale")
						block := [2]int64{int64(rows), int64(cols)} // one scale for the tensor
						if strategy == "channel" {
							block = [2]int64{1, int64(cols)} // one a row
						}
						if !slices.Equal(scale.Shape, s.Shape) || scale.DType != s.DType {
							t.Fatalf("%s_scale is %s %v, want the base's %s %v", name, scale.DType, scale.Shape, s.DType, s.Shape)
						}
						if bad, _ := keepVerdict(res.raw[name], scale.Values, exact, W, cols, block); bad != "" {
							t.Fatalf("%s: %s", name, bad)
						}
						if _, ok := res.tensors[mod+".input_scale"]; !ok {
							t.Errorf("keep drops %s.input_scale", mod)
						}
					}
				}
				if mode != mergeplan.QuantKeep {
					tl.assert(t, "compressed-tensors "+strategy, safetensors.BF16, false)
				}
				untouchedFP8 := 0
				for _, bt := range m.Tensors {
					_, kept := res.tensors[bt.Name]
					quantized := bt.DType == safetensors.F8E4M3 || strings.HasSuffix(bt.Name, "_scale")
					switch {
					case touched[bt.Name]:
					case mode == mergeplan.QuantBF16 && quantized:
						if bt.DType != safetensors.F8E4M3 {
							if kept {
								t.Errorf("bf16 keeps %s", bt.Name)
							}
							continue
						}
						// An untouched weight: its exact dequantization, rounded once.
						s := m.Tensor(bt.Name + "_scale")
						got := res.tensor(t, bt.Name)
						cols := int(bt.Shape[1])
						for i, q := range bt.Values {
							sc := s.Values[0]
							if strategy == "channel" {
								sc = s.Values[i/cols]
							}
							if want := fixture.RoundBF16(q * sc); got.DType != safetensors.BF16 || got.Values[i] != want {
								t.Fatalf("%s[%d] = %s %v, want BF16 %v, the rounded exact dequantization", bt.Name, i, got.DType, got.Values[i], want)
							}
						}
						untouchedFP8++
					case !kept:
						t.Errorf("%s is missing from the output", bt.Name)
					case !bytes.Equal(res.raw[bt.Name], fixture.Encode(bt.DType, bt.Values)):
						t.Errorf("%s is untouched but its bytes changed", bt.Name)
					}
				}
				var conf struct {
					Q *struct {
						Ignore []string `json:"ignore"`
					} `json:"quantization_config"`
				}
				if err := json.Unmarshal(res.plan.Config, &conf); err != nil && res.plan.Config != nil {
					t.Fatal(err)
				}
				switch mode {
				case mergeplan.QuantBF16:
					if conf.Q != nil {
						t.Error("bf16 keeps quantization_config")
					}
					for name := range res.tensors {
						if strings.HasSuffix(name, "_scale") {
							t.Errorf("bf16 keeps %s", name)
						}
					}
					if untouchedFP8 == 0 {
						t.Error("bf16: no untouched FP8 weight compared")
					}
				case mergeplan.QuantMixed:
					// The base's ignore (lm_head) and exactly the modules written in BF16.
					want := []string{"lm_head"}
					for l := 0; l < 2; l++ {
						for _, p := range fp8Targets {
							want = append(want, fmt.Sprintf("model.layers.%d.%s", l, p))
						}
					}
					var got []string
					if conf.Q != nil {
						got = slices.Clone(conf.Q.Ignore)
					}
					slices.Sort(got)
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Errorf("mixed: quantization_config.ignore is %v, want exactly %v", got, want)
					}
				}
			})
		}
	}
}

// TestBlockFP8Experts: expert LoRA (target_parameters on the fused view Transformers
// v5 loads) merged into a DeepSeek-style base whose experts are per-expert block-FP8
// weights, in bf16 mode: each expert's rows exact to one rounding of dequant(W) + Δ_e.
func TestBlockFP8Experts(t *testing.T) {
	block := [2]int64{16, 16}
	m := fixture.MoE(fixture.MoESpec{Hidden: moeHidden, Intermediate: moeInter, Experts: moeExperts, Layers: 2, Vocab: 64,
		Layout: fixture.PerExpert, DType: safetensors.BF16, Seed: 41})
	m.BlockFP8(block, safetensors.F8E8M0, 42)
	m.Split(3)
	a, refs := gateUpDown(2, "0.20.0", false, moeHidden, moeInter, safetensors.F32, 43)
	res := run(t, m, a, mergeplan.Options{})
	var tl tally
	n := 0
	for l, ref := range refs {
		p := fmt.Sprintf("model.layers.%d.mlp.experts.", l)
		for e := 0; e < moeExperts; e++ {
			for _, c := range []struct {
				name string
				d    refDelta
				rows int
			}{
				{fmt.Sprintf("%d.gate_proj", e), ref[0].delta(e), moeInter},
				{fmt.Sprintf("%d.up_proj", e), rowsOf(ref[0].delta(e), moeInter), moeInter},
				{fmt.Sprintf("%d.down_proj", e), ref[1].delta(e), moeHidden},
			} {
				name := p + c.name + ".weight"
				if m.Tensor(name).DType != safetensors.F8E4M3 {
					t.Fatalf("%s is not FP8 in the base", name)
				}
				got := res.tensor(t, name)
				W := dequantRef(m, name, block, rightBlock)
				checkTensor(&tl, safetensors.BF16, got.Values, W, c.rows, len(W)/c.rows, []refDelta{c.d})
				n++
			}
		}
	}
	if n != 2*moeExperts*3 {
		t.Fatalf("checked %d expert weights", n)
	}
	tl.assert(t, "block-FP8 experts", safetensors.BF16, false)
}

// TestBlockFP8DoRA: DoRA on a block-FP8 base (bf16 mode) normalises the dequantized
// weight plus the delta: the engine's bytes are the reference's, whichever kernel runs
// (the fused DoRA kernels decode raw sources and know no scales, so a dequantized
// tensor must not take them).
func TestBlockFP8DoRA(t *testing.T) {
	block := [2]int64{64, 32}
	m := fp8Llama(block, safetensors.F32, 3)
	a := fp8Adapter(m, 4)
	a.Config["use_dora"] = true
	rnd := fixture.NewRand(9)
	for l := 0; l < 2; l++ {
		for _, p := range fp8Targets {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			a.Add(fixture.Key(mod, "lora_magnitude_vector"), safetensors.F32, 0.3, rnd, m.Tensor(mod + ".weight").Shape[0])
		}
	}
	res := run(t, m, a, mergeplan.Options{})
	var tl tally
	for l := 0; l < 2; l++ {
		for _, p := range fp8Targets {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			name := mod + ".weight"
			w := m.Tensor(name)
			A, B := a.Tensor(fixture.Key(mod, "lora_A.weight")), a.Tensor(fixture.Key(mod, "lora_B.weight"))
			W := dequantRef(m, name, block, rightBlock)
			mag := a.Tensor(fixture.Key(mod, "lora_magnitude_vector")).Values
			exact := doraRef(W, int(w.Shape[0]), int(w.Shape[1]), []refDelta{linearDelta(2, 8, A, B)}, mag, true)
			got := res.tensor(t, name).Values
			for i := range got {
				tl.check(safetensors.BF16, got[i], exact[i], 0)
			}
		}
	}
	tl.assert(t, "DoRA on block FP8", safetensors.BF16, true)
}
