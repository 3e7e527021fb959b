package merge

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// BenchmarkKernels computes one row block of a Llama projection (256 K elements of a
// hidden-2048 model, read beforehand) on one core with each kernel this CPU runs, and
// reports the block's input and output bytes per second and the product's GFLOP/s
// (2·rank per element).
func BenchmarkKernels(b *testing.B) {
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32} {
		for _, rank := range []int{16, 64} {
			for _, name := range Kernels() {
				b.Run(fmt.Sprintf("%s/%s/rank=%d", name, dt, rank), func(b *testing.B) {
					m := benchTensor(b, name, dt, 5632, 2048, rank)
					r0, r1 := m.span(0)
					dst := make([]byte, (r1-r0)*m.cols*size(dt))
					acc := new(scratch)
					raw, err := m.source(r0, r1, acc)
					if err != nil {
						b.Fatal(err)
					}
					raw = append([]byte(nil), raw...)
					if err := m.fusedBlock(r0, r1, raw, dst, acc); err != nil { // load the factors
						b.Fatal(err)
					}
					elems := (r1 - r0) * m.cols
					b.SetBytes(int64(len(raw) + len(dst)))
					for b.Loop() {
						if err := m.fusedBlock(r0, r1, raw, dst, acc); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(2*rank*elems)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				})
			}
		}
	}
}

// oneWeight is the merged shard of a model with one (rows, cols) weight, normal with a
// deviation of 0.02, and a rank-r LoRA (scale 1) on it.
func oneWeight(tb testing.TB, dt safetensors.DType, rows, cols int64, rank int, opts Options) *Shard {
	tb.Helper()
	m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
	rnd := fixture.NewRand(1)
	m.Tensors = []*fixture.Tensor{{Name: "layer.proj.weight", DType: dt, Shape: []int64{rows, cols},
		Values: rnd.Normal(int(rows*cols), 0.02, dt)}}
	a := fixture.NewAdapter(rank, float64(rank), "proj")
	a.Linear("layer.proj", rows, cols, rank, safetensors.F32, rnd)
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
	sh, err := New(&p.Shards[0], files, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return sh
}

// benchTensor prepares a (rows, cols) weight with a rank-r LoRA for the named kernel.
func benchTensor(b *testing.B, kernel string, dt safetensors.DType, rows, cols int64, rank int) *tensor {
	b.Helper()
	sh := oneWeight(b, dt, rows, cols, rank, Options{Jobs: 1, Kernel: kernel})
	for _, t := range sh.tensors {
		if !t.t.Copy() {
			return t
		}
	}
	b.Fatal("no computed tensor")
	return nil
}
