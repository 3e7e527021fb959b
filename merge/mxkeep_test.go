package merge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// The MXFP4 keep reference: the exact merged value x = dequant(W) + s·ΔW in
// double-double (fixture.MXFP4Dequant and exactValues, apart from the engine), and for
// each stored block (e, c, g) of the output, with its scale byte S: every element is
// the E2M1 grid point nearest x / 2^(S−127), ties to the even code, chosen in 256-bit
// arithmetic; |x| / 2^(S−127) ≤ 6 for every element (nothing saturates); and the
// scale is less than twice the largest |x| / 6 (the smallest power of two that fits).

// mxCheck tallies a requantized MXFP4 tensor against the reference.
type mxCheck struct {
	n, wrong, saturated, tooLarge int
	changed                       int
	num, den                      float64 // Σ (kept − delta)², Σ delta²
	first                         string
}

func (c *mxCheck) fail(format string, args ...any) {
	if c.first == "" {
		c.first = fmt.Sprintf(format, args...)
	}
}

func (c *mxCheck) ok() bool { return c.n > 0 && c.wrong == 0 && c.saturated == 0 && c.tooLarge == 0 }

// e2m1Grid is the non-negative E2M1 values by code, from the fixture's own decoder.
var e2m1Grid = func() []float64 {
	g := make([]float64, 8)
	for c := range g {
		g[c] = fixture.E2M1(byte(c))
	}
	if !slices.IsSorted(g) {
		panic("E2M1 codes are not in value order")
	}
	return g
}()

// mxNearest is the value of the E2M1 grid point nearest x / s (ties to the even
// code) times s, and false when |x| / s is beyond 6.
func mxNearest(x dd, s float64) (float64, bool) {
	// Where x.hi / s (exact: s is a power of two) is clearly nearer one grid point than
	// the others, that is the answer; near a midpoint, 256-bit arithmetic decides.
	zf, zl := math.Abs(x.hi/s), math.Abs(x.lo/s)
	if zf <= 6 {
		best, second := -1, math.Inf(1)
		for c, v := range e2m1Grid {
			d := math.Abs(zf - v)
			if best < 0 || d < math.Abs(zf-e2m1Grid[best]) {
				if best >= 0 {
					second = math.Abs(zf - e2m1Grid[best])
				}
				best = c
			} else {
				second = min(second, d)
			}
		}
		if second-math.Abs(zf-e2m1Grid[best]) > 4*zl+0x1p-60 && zf+2*zl < 6 {
			return math.Copysign(e2m1Grid[best]*s, x.hi), true
		}
	}
	z := new(big.Float).SetPrec(256).SetFloat64(x.hi)
	z.Add(z, new(big.Float).SetPrec(256).SetFloat64(x.lo))
	z.Quo(z, new(big.Float).SetPrec(256).SetFloat64(s))
	sign := 1.0
	if z.Sign() < 0 {
		sign = -1
		z.Neg(z)
	}
	if z.Cmp(big.NewFloat(6)) > 0 {
		return 0, false
	}
	best, bestDist := -1, new(big.Float)
	for c, v := range e2m1Grid {
		d := new(big.Float).SetPrec(256).Sub(z, new(big.Float).SetFloat64(v))
		d.Abs(d)
		switch cmp := d.Cmp(bestDist); {
		case best < 0 || cmp < 0, cmp == 0 && c&1 == 0:
			best, bestDist = c, d
		}
	}
	return sign * e2m1Grid[best] * s, true
}

// checkMXKeep checks the stored pair (blocks, scales) of a parameter (E, in, out) with
// exact values x and dequantized base W.
func checkMXKeep(c *mxCheck, name string, blocks, scales []byte, x []dd, W []float64, E, in, out int) {
	g := in / 32
	if len(blocks) != E*out*g*16 || len(scales) != E*out*g {
		c.wrong++
		c.fail("%s: %d block bytes and %d scales, want %d and %d", name, len(blocks), len(scales), E*out*g*16, E*out*g)
		return
	}
	amax := make([]float64, len(scales))
	for e := 0; e < E; e++ {
		for j := 0; j < in; j++ {
			for col := 0; col < out; col++ {
				i := (e*in+j)*out + col
				b := (e*out+col)*g + j/32
				s := fixture.E8M0(scales[b])
				code := blocks[b*16+(j%32)/2]
				if j%2 == 1 {
					code >>= 4
				}
				got := fixture.E2M1(code&15) * s
				amax[b] = max(amax[b], math.Abs(x[i].hi))
				c.n++
				want, ok := mxNearest(x[i], s)
				switch {
				case !ok:
					c.saturated++
					c.fail("%s[%d, %d, %d]: %v / %v saturates", name, e, j, col, x[i].hi, s)
				case got != want:
					c.wrong++
					c.fail("%s[%d, %d, %d]: %v, want %v (exact %v, scale %v)", name, e, j, col, got, want, x[i].hi, s)
				}
				kept, d := got-W[i], x[i].hi-W[i]
				if kept != 0 {
					c.changed++
				}
				c.num += (kept - d) * (kept - d)
				c.den += d * d
			}
		}
	}
	for b, a := range amax {
		if s := fixture.E8M0(scales[b]); a > 0 && s >= 2*a/6 {
			c.tooLarge++
			c.fail("%s block %d: scale %v is twice or more the %v its largest value %v needs", name, b, s, a/6, a)
		}
	}
}

// mxQuantize is the reference's own requantization of values v (E, in, out), for
// building wrong merges: per block the smallest power-of-two scale that fits, codes
// nearest, ties to even.
func mxQuantize(v []float64, E, in, out int) (blocks, scales []byte) {
	g := in / 32
	blocks, scales = make([]byte, E*out*g*16), make([]byte, E*out*g)
	for e := 0; e < E; e++ {
		for col := 0; col < out; col++ {
			for gi := 0; gi < g; gi++ {
				var a float64
				for j := gi * 32; j < gi*32+32; j++ {
					a = max(a, math.Abs(v[(e*in+j)*out+col]))
				}
				k := 0
				for k < 254 && fixture.E8M0(byte(k))*6 < a {
					k++
				}
				b := (e*out+col)*g + gi
				scales[b] = byte(k)
				for j := gi * 32; j < gi*32+32; j++ {
					x := v[(e*in+j)*out+col]
					q, _ := mxNearest(dd{x, 0}, fixture.E8M0(byte(k)))
					code := byte(slices.Index(e2m1Grid, math.Abs(q/fixture.E8M0(byte(k)))))
					if q < 0 {
						code |= 8
					}
					blocks[b*16+(j%32)/2] |= code << (uint(j%2) * 4)
				}
			}
		}
	}
	return blocks, scales
}

// mxCase is one touched parameter of layer 0 with its shape and delta.
type mxCase struct {
	param   string
	in, out int
	ref     expertLoRA
}

func mxCases(refs [][2]expertLoRA) []mxCase {
	return []mxCase{{"gate_up_proj", mxH, 2 * mxI, refs[0][0]}, {"down_proj", mxI, mxH, refs[0][1]}}
}

// exactMX is the exact merge of a parameter from a (right or wrong) dequantization W.
func exactMX(W []float64, c mxCase) []dd {
	x := make([]dd, len(W))
	for e := 0; e < moeExperts; e++ {
		copy(x[e*c.in*c.out:], exactValues(slice(W, e, c.in, c.out), c.in, c.out, []refDelta{c.ref.delta(e)}))
	}
	return x
}

// TestMXFP4Keep: --quantized keep on a gpt-oss MXFP4 base with an expert LoRA on layer
// 0's gate_up_proj and down_proj: every other tensor (layer 1's blocks and scales, the
// biases, the router, attention) byte-identical; layer 0's pairs the reference's
// requantization of the exact merge, in the stored layout; quantization_config kept;
// and the engine's report of what survived the reference's count.
func TestMXFP4Keep(t *testing.T) {
	m := mxfp4Model(51)
	a, refs := gateUpDown(1, "0.20.0", true, mxH, mxI, safetensors.F32, 52)
	res := run(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantKeep})
	p0 := "model.layers.0.mlp.experts."
	var c mxCheck
	for _, mc := range mxCases(refs) {
		name := p0 + mc.param
		W := m.MXFP4Dequant(name, false, false, false)
		for _, n := range []string{name, name + "_blocks", name + "_scales"} {
			if _, ok := res.tensors[n]; ok != (n != name) {
				t.Errorf("output has %s: %v", n, ok)
			}
		}
		checkMXKeep(&c, name, res.raw[name+"_blocks"], res.raw[name+"_scales"], exactMX(W, mc), W, moeExperts, mc.in, mc.out)
	}
	t.Logf("keep: %d of %d touched elements changed; the delta kept is off by %.3g relative", c.changed, c.n, math.Sqrt(c.num/c.den))
	if !c.ok() {
		t.Fatalf("the reference rejects the engine's requantization: %d of %d wrong, %d saturated, %d scales too large; first: %s",
			c.wrong, c.n, c.saturated, c.tooLarge, c.first)
	}
	if c.changed == 0 {
		t.Fatal("no element changed: the test shows nothing about the rounding of the delta")
	}
	sameBytes(t, res, m, untouched(m, "layers.0.mlp.experts.gate_up_proj_blocks", "layers.0.mlp.experts.gate_up_proj_scales",
		"layers.0.mlp.experts.down_proj_blocks", "layers.0.mlp.experts.down_proj_scales")...)

	// config.json is the base's (a nil Config: copied as it is), quantization_config
	// and all.
	for _, e := range res.plan.ConfigEdits {
		t.Errorf("config.json edited: %s %v → %v", e.Key, e.Old, e.New)
	}
	if res.plan.Config != nil {
		var conf map[string]any
		if err := json.Unmarshal(res.plan.Config, &conf); err != nil {
			t.Fatalf("config.json: %v", err)
		}
		want, _ := json.Marshal(m.Config["quantization_config"])
		var wantQ any
		json.Unmarshal(want, &wantQ)
		if !reflect.DeepEqual(conf["quantization_config"], wantQ) {
			t.Errorf("quantization_config %v, want the base's %v", conf["quantization_config"], wantQ)
		}
	}
	if strings.Contains(string(res.plan.Index), `"`+p0+`gate_up_proj"`) || !strings.Contains(string(res.plan.Index), p0+"gate_up_proj_scales") {
		t.Errorf("the index: %s", res.plan.Index)
	}
	if got := res.plan.Quant.Requantized; !slices.Equal(got, []string{p0 + "down_proj", p0 + "gate_up_proj"}) {
		t.Errorf("plan: requantized %v", got)
	}
	var warned bool
	for _, w := range res.plan.Warnings {
		warned = warned || strings.Contains(w.Message, "E2M1 has one mantissa bit")
	}
	if !warned {
		t.Errorf("the plan does not warn that the delta mostly rounds away: %v", res.plan.Warnings)
	}
	// Keep writes the base's bytes; bf16 and mixed grow every / layer 0's experts from
	// 17/32 of a byte to 2 bytes an element.
	var data int64
	for _, s := range res.plan.Shards {
		data += s.Size() - s.Layout.DataOffset()
	}
	perLayer := int64(moeExperts * (mxH*2*mxI + mxI*mxH))
	grown := perLayer*2 - perLayer/2 - perLayer/32
	if qb := res.plan.Quant.Bytes; qb["keep"] != data || qb["bf16"] != data+2*grown || qb["mixed"] != data+grown {
		t.Errorf("plan sizes %v; wrote %d", qb, data)
	}

	got := requantStats(t, m, a)
	if got.Elements != c.n || got.Changed != c.changed || math.Abs(got.DeltaError()-math.Sqrt(c.num/c.den)) > 1e-9 {
		t.Errorf("engine reports %+v; reference %d elements, %d changed, error %.6g", got, c.n, c.changed, math.Sqrt(c.num/c.den))
	}
}

// TestMXFP4KeepReferenceCatchesWrongMerges: requantizations of merges that skip the
// scale, round the delta to MXFP4 before adding it, or read the stored blocks with the
// block index transposed each fail the check the engine's output passes.
func TestMXFP4KeepReferenceCatchesWrongMerges(t *testing.T) {
	m := mxfp4Model(53)
	_, refs := gateUpDown(1, "0.20.0", true, mxH, mxI, safetensors.F32, 54)
	p := "model.layers.0.mlp.experts."
	wrong := map[string]func(mc mxCase, W []float64, delta []float64) []float64{
		"scale skipped": func(mc mxCase, _, delta []float64) []float64 {
			W := m.MXFP4Dequant(p+mc.param, true, false, false)
			for i := range W {
				W[i] += delta[i]
			}
			return W
		},
		"delta rounded to MXFP4 before adding": func(mc mxCase, W, delta []float64) []float64 {
			// The delta quantized on its own (its own block scales), then added.
			db, ds := mxQuantize(delta, moeExperts, mc.in, mc.out)
			out := make([]float64, len(W))
			g := mc.in / 32
			for e := 0; e < moeExperts; e++ {
				for j := 0; j < mc.in; j++ {
					for col := 0; col < mc.out; col++ {
						i := (e*mc.in+j)*mc.out + col
						b := (e*mc.out+col)*g + j/32
						code := db[b*16+(j%32)/2] >> (uint(j%2) * 4)
						out[i] = W[i] + fixture.E2M1(code&15)*fixture.E8M0(ds[b])
					}
				}
			}
			return out
		},
		"block index transposed": func(mc mxCase, _, delta []float64) []float64 {
			W := m.MXFP4Dequant(p+mc.param, false, false, true)
			for i := range W {
				W[i] += delta[i]
			}
			return W
		},
	}
	for what, merge := range wrong {
		var c mxCheck
		for _, mc := range mxCases(refs) {
			W := m.MXFP4Dequant(p+mc.param, false, false, false)
			x := exactMX(W, mc)
			delta := make([]float64, len(W))
			for i := range delta {
				delta[i] = x[i].hi - W[i]
			}
			b, s := mxQuantize(merge(mc, W, delta), moeExperts, mc.in, mc.out)
			checkMXKeep(&c, p+mc.param, b, s, x, W, moeExperts, mc.in, mc.out)
		}
		t.Logf("%s: %d of %d elements wrong, %d saturated, %d scales too large", what, c.wrong, c.n, c.saturated, c.tooLarge)
		if c.ok() {
			t.Errorf("the reference accepts a merge with the %s", what)
		}
	}
	// And the reference's own requantization of the right merge passes it (the check
	// is not merely strict).
	var c mxCheck
	for _, mc := range mxCases(refs) {
		W := m.MXFP4Dequant(p+mc.param, false, false, false)
		x := exactMX(W, mc)
		v := make([]float64, len(x))
		for i := range x {
			v[i] = x[i].hi
		}
		b, s := mxQuantize(v, moeExperts, mc.in, mc.out)
		checkMXKeep(&c, p+mc.param, b, s, x, W, moeExperts, mc.in, mc.out)
	}
	if !c.ok() {
		t.Errorf("the reference rejects its own requantization of the right merge: %s", c.first)
	}
}

// BenchmarkMXFP4Keep merges an expert LoRA into one layer of MXFP4 experts of
// gpt-oss's per-expert size (2 experts, H = I = 1440) and requantizes them: bytes/s of
// output.
func BenchmarkMXFP4Keep(b *testing.B) {
	m := fixture.MoE(fixture.MoESpec{Hidden: 1440, Intermediate: 1440, Experts: 2, Layers: 1, Vocab: 64,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 71})
	m.MXFP4(72)
	a := fixture.NewExpertAdapter(16, 32, "0.20.0", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	r := fixture.NewRand(73)
	a.Experts(fixture.ExpertsModule(0), 1, 2, 16, 1440, 2880, safetensors.F32, r)
	a.Experts(fixture.ExpertsModule(0), 0, 2, 16, 1440, 1440, safetensors.F32, r)
	p, files := plan(b, m, a, mergeplan.Options{Quantized: mergeplan.QuantKeep})
	if !p.OK() {
		b.Fatal(p.Problems)
	}
	var size int64
	for i := range p.Shards {
		size += p.Shards[i].Size()
	}
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		for i := range p.Shards {
			sh, err := merge.New(&p.Shards[i], files, merge.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := sh.Write(context.Background(), io.Discard, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
}
