package merge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// The MXFP4 reference: fixture.MXFP4Dequant decodes the stored blocks and scales by
// the format's arithmetic (its own E2M1 and E8M0) into gpt-oss's (E, in, out), then
// W + s·ΔW exactly (reference_test.go), rounded once to BF16.

// gpt-oss shaped, small: gate_up_proj (4, 320, 576) in 10 blocks of 32 a stored row,
// down_proj (4, 288, 320) in 9; the row blocks of the merge (448 and 800 rows) cross
// expert boundaries (320 and 288 rows an expert).
const mxH, mxI = 320, 288

func mxfp4Model(seed uint64) *fixture.Model {
	m := fixture.MoE(fixture.MoESpec{Hidden: mxH, Intermediate: mxI, Experts: moeExperts, Layers: 2, Vocab: 64,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: seed})
	m.MXFP4(seed + 1)
	m.Split(2)
	// A scale in another shard than its blocks.
	m.MoveTensor("model.layers.0.mlp.experts.gate_up_proj_scales", 1)
	return m
}

func TestMXFP4ToBF16(t *testing.T) {
	m := mxfp4Model(11)
	a, refs := gateUpDown(1, "0.20.0", true, mxH, mxI, safetensors.BF16, 12) // layer 0 only
	res := run(t, m, a, mergeplan.Options{})

	p0, p1 := "model.layers.0.mlp.experts.", "model.layers.1.mlp.experts."
	shapes := map[string][]int64{"gate_up_proj": {moeExperts, mxH, 2 * mxI}, "down_proj": {moeExperts, mxI, mxH}}
	for _, p := range []string{p0, p1} {
		for param, shape := range shapes {
			got := res.tensor(t, p+param)
			if got.DType != safetensors.BF16 || !slices.Equal(got.Shape, shape) {
				t.Fatalf("%s%s is %s %v, want BF16 %v", p, param, got.DType, got.Shape, shape)
			}
			for _, suffix := range []string{"_blocks", "_scales"} {
				if _, ok := res.tensors[p+param+suffix]; ok {
					t.Errorf("%s%s%s is in the output", p, param, suffix)
				}
			}
		}
	}
	var tl tally
	checkFused(&tl, safetensors.BF16, res.tensor(t, p0+"gate_up_proj").Values, m.MXFP4Dequant(p0+"gate_up_proj", false, false, false),
		moeExperts, mxH, 2*mxI, refs[0][0])
	checkFused(&tl, safetensors.BF16, res.tensor(t, p0+"down_proj").Values, m.MXFP4Dequant(p0+"down_proj", false, false, false),
		moeExperts, mxI, mxH, refs[0][1])
	tl.assert(t, "MXFP4 experts → BF16", safetensors.BF16, false)

	// Layer 1 is untouched: exactly the dequantization, rounded once (every value of
	// the fixture's scales is a BF16 value, so the rounding keeps it).
	for param := range shapes {
		got := res.tensor(t, p1+param).Values
		for i, v := range m.MXFP4Dequant(p1+param, false, false, false) {
			if want := fixture.RoundBF16(v); got[i] != want {
				t.Fatalf("%s%s[%d] = %v, want %v", p1, param, i, got[i], want)
			}
		}
	}
	var bf16 []string
	for _, bt := range m.Tensors {
		if bt.DType == safetensors.BF16 {
			bf16 = append(bf16, bt.Name)
		}
	}
	sameBytes(t, res, m, bf16...) // biases, router, attention, norms, embeddings

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
	if bytes.Contains(res.plan.Index, []byte("_blocks")) || bytes.Contains(res.plan.Index, []byte("_scales")) ||
		!bytes.Contains(res.plan.Index, []byte(`"`+p0+`gate_up_proj"`)) {
		t.Errorf("the index: %s", res.plan.Index)
	}
}

// TestMXFP4ReferenceCatchesWrongMerges: merges computed exactly but from a wrong
// dequantization (the scale skipped, the nibbles read high first, the stored (out, in)
// read as (in, out)) each fail the check the engine's merge passes.
func TestMXFP4ReferenceCatchesWrongMerges(t *testing.T) {
	m := mxfp4Model(13)
	_, refs := gateUpDown(1, "0.20.0", true, mxH, mxI, safetensors.BF16, 14)
	p := "model.layers.0.mlp.experts."
	cases := []struct {
		param  string
		d1, d2 int
		ref    expertLoRA
	}{{"gate_up_proj", mxH, 2 * mxI, refs[0][0]}, {"down_proj", mxI, mxH, refs[0][1]}}
	for _, wrong := range []struct {
		what                           string
		noScale, highFirst, transposed bool
	}{{"right", false, false, false}, {"scale skipped", true, false, false}, {"nibbles high first", false, true, false},
		{"block index transposed", false, false, true}} {
		var tl tally
		for _, c := range cases {
			right := m.MXFP4Dequant(p+c.param, false, false, false)
			W := m.MXFP4Dequant(p+c.param, wrong.noScale, wrong.highFirst, wrong.transposed)
			got := make([]float64, len(W))
			for e := 0; e < moeExperts; e++ {
				for k, x := range exactValues(slice(W, e, c.d1, c.d2), c.d1, c.d2, []refDelta{c.ref.delta(e)}) {
					got[e*c.d1*c.d2+k] = roundExact(safetensors.BF16, x)
				}
			}
			checkFused(&tl, safetensors.BF16, got, right, moeExperts, c.d1, c.d2, c.ref)
		}
		t.Logf("%s: %d of %d elements differ from the correctly rounded value, %d beyond one rounding", wrong.what, tl.differ, tl.n, tl.far)
		if fails(&tl, safetensors.BF16) != (wrong.what != "right") {
			t.Errorf("%s: the reference's verdict is wrong (%d of %d differ, %d far)", wrong.what, tl.differ, tl.n, tl.far)
		}
	}
}

// TestMXFP4Refusals: a missing or misshapen scale.
func TestMXFP4Refusals(t *testing.T) {
	a, _ := gateUpDown(1, "0.20.0", true, mxH, mxI, safetensors.BF16, 16)
	for _, c := range []struct {
		name string
		edit func(m *fixture.Model)
		opts mergeplan.Options
		want string
	}{
		{"no scales", func(m *fixture.Model) {
			m.Tensors = slices.DeleteFunc(m.Tensors, func(t *fixture.Tensor) bool { return t.Name == "model.layers.1.mlp.experts.down_proj_scales" })
		}, mergeplan.Options{}, "model.layers.1.mlp.experts.down_proj_blocks: is MXFP4 blocks without their scales"},
		{"scales misshapen", func(m *fixture.Model) {
			s := m.Tensor("model.layers.1.mlp.experts.down_proj_scales")
			s.Shape = []int64{s.Shape[0], s.Shape[1] * s.Shape[2]}
		}, mergeplan.Options{}, "the scales of model.layers.1.mlp.experts.down_proj_blocks"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := fixture.MoE(fixture.MoESpec{Hidden: mxH, Intermediate: mxI, Experts: moeExperts, Layers: 2, Vocab: 64,
				Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 15})
			m.MXFP4(16)
			c.edit(m)
			p, _ := plan(t, m, a, c.opts)
			var msgs []string
			for _, pr := range p.Problems {
				msgs = append(msgs, pr.Subject+": "+pr.Message)
			}
			if !strings.Contains(strings.Join(msgs, "\n"), c.want) {
				t.Errorf("problems %q lack %q", msgs, c.want)
			}
		})
	}
}

// TestMXFP4NaNScale: a scale byte 0xFF (E8M0's NaN) stops the merge with its place.
func TestMXFP4NaNScale(t *testing.T) {
	m := fixture.MoE(fixture.MoESpec{Hidden: 64, Intermediate: 64, Experts: moeExperts, Layers: 1, Vocab: 64,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 17})
	m.MXFP4(18)
	s := m.Tensor("model.layers.0.mlp.experts.down_proj_scales")
	s.Values[2*64*2+5*2+1] = 255 // expert 2, row 5, block 1
	a := fixture.NewAdapter(4, 8, "q_proj")
	a.Linear("model.layers.0.self_attn.q_proj", 64, 64, 4, safetensors.F32, fixture.NewRand(19))
	p, files := plan(t, m, a, mergeplan.Options{})
	if !p.OK() {
		t.Fatalf("problems: %v", p.Problems)
	}
	var err error
	for i := range p.Shards {
		sh, e := merge.New(&p.Shards[i], files, merge.Options{Jobs: 2})
		if e != nil {
			t.Fatal(e)
		}
		if _, e := sh.Write(context.Background(), io.Discard, nil); e != nil {
			err = e
		}
	}
	want := "model.layers.0.mlp.experts.down_proj: scale [2, 5, 1] of model.layers.0.mlp.experts.down_proj_scales is 0xFF"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("merge error %v, want %q", err, want)
	}
}

// TestMXFP4Mixed: --quantized mixed writes layer 0's MLP, whose gate_up_proj the adapter
// changes, in BF16 (down_proj too: the loader keeps or converts whole MLPs), copies
// layer 1's blocks and scales byte for byte, and names exactly model.layers.0.mlp in
// modules_to_not_convert.
func TestMXFP4Mixed(t *testing.T) {
	m := mxfp4Model(31)
	a := fixture.NewExpertAdapter(moeRank, 6, "0.20.0", "mlp.experts.gate_up_proj")
	rnd := fixture.NewRand(32)
	gA, gB := a.Experts(fixture.ExpertsModule(0), 0, moeExperts, moeRank, mxH, 2*mxI, safetensors.F32, rnd)
	ref := expertLoRA{A: gA, B: gB, E: moeExperts, r: moeRank, s: 6.0 / moeRank, inOut: true}
	res := run(t, m, a, mergeplan.Options{Quantized: mergeplan.QuantMixed})

	p0, p1 := "model.layers.0.mlp.experts.", "model.layers.1.mlp.experts."
	var tl tally
	checkFused(&tl, safetensors.BF16, res.tensor(t, p0+"gate_up_proj").Values, m.MXFP4Dequant(p0+"gate_up_proj", false, false, false),
		moeExperts, mxH, 2*mxI, ref)
	tl.assert(t, "mixed: touched MXFP4 experts in BF16", safetensors.BF16, false)
	down := res.tensor(t, p0+"down_proj")
	if down.DType != safetensors.BF16 || !slices.Equal(down.Values, m.MXFP4Dequant(p0+"down_proj", false, false, false)) {
		t.Errorf("%sdown_proj (%s) is not the exact dequantization in BF16", p0, down.DType)
	}
	for _, n := range []string{p0 + "gate_up_proj_blocks", p0 + "gate_up_proj_scales", p0 + "down_proj_blocks", p0 + "down_proj_scales",
		p1 + "gate_up_proj", p1 + "down_proj"} {
		if _, ok := res.tensors[n]; ok {
			t.Errorf("%s is in the output", n)
		}
	}
	sameBytes(t, res, m, p1+"gate_up_proj_blocks", p1+"gate_up_proj_scales", p1+"down_proj_blocks", p1+"down_proj_scales",
		p0+"gate_up_proj_bias", "model.layers.0.mlp.router.weight")

	var conf map[string]any
	if err := json.Unmarshal(res.plan.Config, &conf); err != nil {
		t.Fatalf("config.json: %v", err)
	}
	q, _ := conf["quantization_config"].(map[string]any)
	want := []any{"model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head", "model.layers.0.mlp"}
	if q == nil || q["quant_method"] != "mxfp4" || fmt.Sprint(q["modules_to_not_convert"]) != fmt.Sprint(want) || q["ignored_layers"] != nil {
		t.Errorf("quantization_config %v, want quant_method mxfp4 and modules_to_not_convert %v", q, want)
	}
	// The plan's size for mixed is what was written, and bf16 is larger by layer 1's
	// experts grown from 17/32 of a byte to 2 bytes an element.
	var data int64
	for _, s := range res.plan.Shards {
		data += s.Size() - s.Layout.DataOffset()
	}
	perLayer := int64(moeExperts * (mxH*2*mxI + mxI*mxH))
	qb := res.plan.Quant.Bytes
	if qb["mixed"] != data || qb["bf16"] != data+perLayer*2-perLayer/2-perLayer/32 {
		t.Errorf("plan sizes %v; wrote %d", qb, data)
	}
}

// BenchmarkMXFP4Dequant writes one layer of gpt-oss-sized-per-expert MXFP4 experts
// (2 experts, H = I = 1440) untouched, dequantized to BF16: bytes/s of output.
func BenchmarkMXFP4Dequant(b *testing.B) {
	m := fixture.MoE(fixture.MoESpec{Hidden: 1440, Intermediate: 1440, Experts: 2, Layers: 1, Vocab: 64,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 41})
	m.MXFP4(42)
	a := fixture.NewAdapter(4, 8, "q_proj")
	a.Linear("model.layers.0.self_attn.q_proj", 1440, 1440, 4, safetensors.F32, fixture.NewRand(43))
	p, files := plan(b, m, a, mergeplan.Options{})
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
