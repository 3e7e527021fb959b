package merge_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestFusedCancellation: products whose terms, of 2¹⁶ to 2³⁰ squared, cancel down to
// about 2⁻⁸, so that float64 loses the low bits of the delta and the error bound is
// anything from far below a unit of the output to far above it. Every kernel must
// still give the correctly rounded value, in columns the assembly covers (rows in
// groups of 6 and singles, 24 columns) as in the Go tail (3 more).
func TestFusedCancellation(t *testing.T) {
	const rows, cols, rank = 8, 27, 3
	r := rand.New(rand.NewPCG(11, 12))
	differ := 0
	for trial := 0; trial < 24; trial++ {
		dt := []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32}[trial%3]
		big := math.Ldexp(1, 16+r.IntN(15))
		A := make([]float64, rank*cols) // (r, in): k = 0 and 2 cancel, k = 1 is the delta
		B := make([]float64, rows*rank) // (out, r)
		for j := 0; j < cols; j++ {
			A[j], A[2*cols+j] = big, big
			A[cols+j] = float64(float32(math.Ldexp(1+r.Float64(), -8-r.IntN(6))))
		}
		for o := 0; o < rows; o++ {
			B[o*rank], B[o*rank+1], B[o*rank+2] = big, 1, -big
		}
		W := make([]float64, rows*cols)
		for i := range W {
			W[i] = fixture.Round(dt, 1+r.Float64()/4)
		}
		m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
		m.Tensors = []*fixture.Tensor{{Name: "layer.proj.weight", DType: dt, Shape: []int64{rows, cols}, Values: W}}
		a := fixture.NewAdapter(rank, rank, "proj")
		a.Tensors = []*fixture.Tensor{
			{Name: fixture.Key("layer.proj", "lora_A.weight"), DType: safetensors.F32, Shape: []int64{rank, cols}, Values: A},
			{Name: fixture.Key("layer.proj", "lora_B.weight"), DType: safetensors.F32, Shape: []int64{rows, rank}, Values: B},
		}
		p, files := plan(t, m, a, mergeplan.Options{})
		if !p.OK() {
			t.Fatal(p.Problems)
		}
		want := exactValues(W, rows, cols, []refDelta{linearDelta(1, rank,
			&fixture.Tensor{Shape: []int64{rank, cols}, Values: A}, &fixture.Tensor{Shape: []int64{rows, rank}, Values: B})})
		for _, k := range merge.Kernels() {
			got, gdt := tensorBytes(t, mergeWith(t, p, files, k, 1+trial%3, uint64(trial)), "layer.proj.weight")
			if gdt != dt {
				t.Fatalf("dtype %s, want %s", gdt, dt)
			}
			vals := fixture.Decode(dt, got)
			for i, x := range want {
				w := roundExact(dt, x)
				if math.Float64bits(vals[i]) != math.Float64bits(w) {
					t.Fatalf("trial %d (%s, terms of %g²), kernel %s: element [%d, %d] = %v, want %v (exact %v + %v)",
						trial, dt, big, k, i/cols, i%cols, vals[i], w, x.hi, x.lo)
				}
				if k == merge.KernelGo {
					// Does a float64 chain, as the kernels compute it, lose part of
					// this delta?
					o, j := i/cols, i%cols
					p := math.Copysign(0, -1)
					for q := 0; q < rank; q++ {
						p = math.FMA(B[o*rank+q], A[q*cols+j], p)
					}
					exact := lowRank(1, rank, func(q int) float64 { return B[o*rank+q] }, func(q int) float64 { return A[q*cols+j] })
					if p != exact.hi || exact.lo != 0 {
						differ++
					}
				}
			}
		}
	}
	if differ < rows*cols {
		t.Fatalf("float64 lost part of only %d deltas", differ)
	}
	t.Logf("%d elements whose delta float64 does not hold", differ)
}
