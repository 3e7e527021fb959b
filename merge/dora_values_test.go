package merge

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// doraWeight is a computed tensor: a (rows, cols) weight with a rank-r DoRA adapter.
func doraWeight(tb testing.TB, kernel string, dt safetensors.DType, rows, cols int64, rank int) *tensor {
	tb.Helper()
	m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
	rnd := fixture.NewRand(uint64(rows*cols) + uint64(rank))
	m.Tensors = []*fixture.Tensor{{Name: "layer.proj.weight", DType: dt, Shape: []int64{rows, cols},
		Values: rnd.Normal(int(rows*cols), 0.02, dt)}}
	a := fixture.NewAdapter(rank, float64(2*rank), "proj")
	a.Config["use_dora"] = true
	a.Linear("layer.proj", rows, cols, rank, safetensors.F32, rnd)
	a.Add(fixture.Key("layer.proj", "lora_magnitude_vector"), safetensors.F32, 0.2, rnd, rows)
	dir := tb.TempDir()
	if err := m.Write(filepath.Join(dir, "base")); err != nil {
		tb.Fatal(err)
	}
	if err := a.Write(filepath.Join(dir, "adapter")); err != nil {
		tb.Fatal(err)
	}
	in, files, closeAll, err := fixture.Open(filepath.Join(dir, "base"), filepath.Join(dir, "adapter"), mergeplan.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(closeAll)
	p := mergeplan.Build(in)
	if !p.OK() {
		tb.Fatal(p.Problems)
	}
	sh, err := New(&p.Shards[0], files, Options{Jobs: 1, Kernel: kernel})
	if err != nil {
		tb.Fatal(err)
	}
	for _, t := range sh.tensors {
		if t.t.DoRA != nil {
			return t
		}
	}
	tb.Fatal("no DoRA tensor")
	return nil
}

// TestDoRAValues: the fused V forms compute DoRA's V = W + s·(L·R), and the sums forms
// the column sums of V², bit for bit as the Go path does (a block of products, then
// v += s·p, then the squares added row by row), which the output bytes alone could not
// show: a unit of float64 in V or a norm almost never moves a rounding.
func TestDoRAValues(t *testing.T) {
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32} {
		for _, sh := range [][3]int{{13, 99, 16}, {40, 64, 3}, {7, 17, 31}, {6, 8, 1}} {
			rows, cols, rank := sh[0], sh[1], sh[2]
			var want, wantSums []float64
			for _, name := range Kernels() {
				m := doraWeight(t, name, dt, int64(rows), int64(cols), rank)
				if name != KernelGo && (dt != safetensors.F16 || m.kern.f16) && m.doraKernel() == nil {
					t.Fatalf("%s %s: no fused V form", name, dt)
				}
				acc := new(scratch)
				raw, err := m.source(0, rows, acc)
				if err != nil {
					t.Fatal(err)
				}
				v := make([]float64, rows*cols)
				if err := m.doraValues(0, rows, raw, v, acc); err != nil {
					t.Fatal(err)
				}
				sums := make([]float64, cols)
				if err := m.columnSums(0, rows, raw, sums, acc); err != nil {
					t.Fatal(err)
				}
				if want == nil {
					want, wantSums = v, sums
					continue
				}
				for j := range sums {
					if math.Float64bits(sums[j]) != math.Float64bits(wantSums[j]) {
						t.Fatalf("%s %s (%d, %d) rank %d: column sum %d = %v, %s gives %v", name, dt, rows, cols, rank,
							j, sums[j], Kernels()[0], wantSums[j])
					}
				}
				for i := range v {
					if math.Float64bits(v[i]) != math.Float64bits(want[i]) {
						t.Fatalf("%s %s (%d, %d) rank %d: V[%d, %d] = %v, %s gives %v", name, dt, rows, cols, rank,
							i/cols, i%cols, v[i], Kernels()[0], want[i])
					}
				}
			}
			if want == nil {
				t.Fatal("no kernel ran")
			}
		}
	}
}
