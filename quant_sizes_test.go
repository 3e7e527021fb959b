package hfmerge

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestQuantSizesMatchMerge: planned in any of the three --quantized modes (and with
// --dtype fp32), a quantized base reports the same tensor bytes for each mode, and the
// merge in each mode writes exactly the figure the plan gave for it, counted from the
// headers of the shards MergeDir wrote. The MXFP4 base has one layer's experts touched
// and the other's left alone, so mixed differs from both keep and bf16; the block-FP8
// MoE has one expert and an attention projection touched.
func TestQuantSizesMatchMerge(t *testing.T) {
	const h, i, E = 64, 64, 2
	mxfp4 := func(t *testing.T) (string, string) {
		m := fixture.MoE(fixture.MoESpec{Hidden: h, Intermediate: i, Experts: E, Layers: 2, Vocab: 64,
			Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 31})
		m.MXFP4(32)
		m.Split(2)
		m.MoveTensor("model.layers.0.mlp.experts.down_proj_scales", 1)
		a := fixture.NewExpertAdapter(4, 8, "0.20.0", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
		r := fixture.NewRand(33)
		mod := fixture.ExpertsModule(0)
		a.Experts(mod, 1, E, 4, h, 2*i, safetensors.F32, r)
		a.Experts(mod, 0, E, 4, i, h, safetensors.F32, r)
		return writeInputs(t, m, a)
	}
	fp8 := func(t *testing.T) (string, string) {
		m := fixture.MoE(fixture.MoESpec{Hidden: 32, Intermediate: 32, Experts: 3, Layers: 2, Vocab: 40,
			Layout: fixture.PerExpert, DType: safetensors.BF16, Seed: 35})
		m.BlockFP8([2]int64{16, 16}, safetensors.F8E8M0, 36)
		m.Split(2)
		a := fixture.NewAdapter(4, 8, "up_proj", "q_proj")
		r := fixture.NewRand(37)
		for _, mod := range []string{"model.layers.1.mlp.experts.2.up_proj", "model.layers.0.self_attn.q_proj"} {
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], 4, safetensors.F32, r)
		}
		return writeInputs(t, m, a)
	}
	for what, inputs := range map[string]func(*testing.T) (string, string){"mxfp4": mxfp4, "block fp8 experts": fp8} {
		t.Run(what, func(t *testing.T) {
			base, adapter := inputs(t)
			for _, dt := range []mergeplan.DTypeChoice{"", mergeplan.ToF32} {
				var first map[string]int64
				for _, mode := range []mergeplan.QuantMode{mergeplan.QuantBF16, mergeplan.QuantKeep, mergeplan.QuantMixed} {
					l := loadDirsWith(t, base, adapter, mergeplan.Options{Quantized: mode, DType: dt})
					p := l.Plan()
					if !p.OK() {
						t.Fatalf("%s --dtype %q: %v", mode, dt, p.Problems)
					}
					sizes := l.Report(p, 2).Quant.Bytes
					if first == nil {
						first = sizes
						if sizes["bf16"] <= sizes["mixed"] || sizes["mixed"] <= sizes["keep"] {
							t.Errorf("--dtype %q: sizes %v, want bf16 > mixed > keep", dt, sizes)
						}
					} else if !maps.Equal(first, sizes) {
						t.Errorf("planned %s --dtype %q: sizes %v; planned bf16: %v", mode, dt, sizes, first)
					}
					out := filepath.Join(t.TempDir(), "out")
					if err := MergeDir(context.Background(), l, p, out, MergeOptions{}); err != nil {
						t.Fatalf("%s --dtype %q: %v", mode, dt, err)
					}
					if got := writtenTensorBytes(t, out); got != sizes[string(mode)] {
						t.Errorf("%s --dtype %q: the merge wrote %d tensor bytes, the plan said %d", mode, dt, got, sizes[string(mode)])
					}
				}
			}
		})
	}
}

// loadDirsWith opens two local directories and reads their headers with opts.
func loadDirsWith(t *testing.T, base, adapter string, opts mergeplan.Options) *Inputs {
	t.Helper()
	ctx := context.Background()
	var o Sources
	b, err := o.Base(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	a, err := o.Adapter(ctx, adapter)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Load(ctx, b, a, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// writtenTensorBytes sums the tensor bytes the .safetensors files in dir declare, after
// checking each file is as long as its header says.
func writtenTensorBytes(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".safetensors") {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		hd, err := safetensors.ReadHeader(f, fi.Size())
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		if hd.Size != fi.Size() {
			t.Errorf("%s is %d bytes, its header says %d", e.Name(), fi.Size(), hd.Size)
		}
		for _, x := range hd.Tensors {
			n += x.Len()
		}
	}
	return n
}
