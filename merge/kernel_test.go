package merge

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

// special returns a value that is awkward for a kernel: NaN, infinities, subnormals,
// signed zeros, or large and tiny magnitudes.
func special(r *rand.Rand) float64 {
	switch r.IntN(9) {
	case 0:
		return math.NaN()
	case 1:
		return math.Inf(1 - 2*r.IntN(2))
	case 2:
		return math.Copysign(0, -1)
	case 3:
		return 0
	case 4:
		return math.Float64frombits(uint64(1 + r.IntN(1<<20))) // subnormal
	case 5:
		return -math.SmallestNonzeroFloat64 * float64(1+r.IntN(9))
	case 6:
		return r.NormFloat64() * 1e300
	case 7:
		return r.NormFloat64() * 1e-300
	}
	return r.NormFloat64()
}

// exactDot is Σ l(k)·r(k) rounded once, by math/big: the reference for finite inputs.
func exactDot(n int, l, r func(k int) float64) float64 {
	sum := new(big.Float).SetPrec(2200)
	for k := 0; k < n; k++ {
		p := new(big.Float).SetPrec(2200).SetFloat64(l(k))
		p.Mul(p, new(big.Float).SetPrec(2200).SetFloat64(r(k)))
		sum.Add(sum, p)
	}
	f, _ := sum.Float64()
	return f
}

// TestKernels checks every kernel this CPU can run against the Go kernel bit for bit,
// and the Go kernel against an exact reference within the error bound, on random
// shapes (ranks 1-256, odd row and column counts) with NaN, infinities, subnormals and
// signed zeros mixed in.
func TestKernels(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	ranks := []int{1, 2, 3, 7, 8, 16, 31, 64, 100, 256}
	for trial := 0; trial < 60; trial++ {
		rows, cols, rank := 1+r.IntN(9), 1+r.IntN(70), ranks[trial%len(ranks)]
		if trial%5 == 0 {
			cols = 16*(1+r.IntN(4)) + r.IntN(2)
		}
		withSpecials := trial%3 == 0
		L := make([]float64, rows*rank)
		R := make([]float64, rank*cols)
		for _, x := range [][]float64{L, R} {
			for i := range x {
				x[i] = r.NormFloat64()
				if withSpecials && r.IntN(8) == 0 {
					x[i] = special(r)
				}
			}
		}
		want := make([]float64, rows*cols)
		accumulateGo(want, L, R, rows, cols, rank)
		for _, name := range Kernels() {
			k, err := kernelFor(name)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]float64, rows*cols)
			for i := range got {
				got[i] = 12345 // the kernel must overwrite, not add
			}
			k.product(got, L, R, rows, cols, rank)
			for i := range got {
				if math.Float64bits(got[i]) != math.Float64bits(want[i]) && !(math.IsNaN(got[i]) && math.IsNaN(want[i])) {
					t.Fatalf("%s: rows %d cols %d rank %d: element %d = %v (%x), Go kernel %v (%x)",
						name, rows, cols, rank, i, got[i], math.Float64bits(got[i]), want[i], math.Float64bits(want[i]))
				}
			}
		}
		if withSpecials {
			continue
		}
		for o := 0; o < rows; o++ {
			for j := 0; j < cols; j++ {
				l := func(k int) float64 { return L[o*rank+k] }
				rr := func(k int) float64 { return R[k*cols+j] }
				var abs float64
				for k := 0; k < rank; k++ {
					abs += math.Abs(l(k) * rr(k))
				}
				exact := exactDot(rank, l, rr)
				if d := math.Abs(want[o*cols+j] - exact); d > gamma(rank)*abs {
					t.Fatalf("rank %d: error %g exceeds the bound %g", rank, d, gamma(rank)*abs)
				}
			}
		}
	}
}

func TestKernelSelection(t *testing.T) {
	t.Setenv("HFMERGE_KERNEL", "go")
	if k, err := kernelFor(KernelAuto); err != nil || k.name != KernelGo {
		t.Fatalf("HFMERGE_KERNEL=go: %v", err)
	}
	if _, err := kernelFor("sse9"); err == nil {
		t.Error("an unknown kernel was accepted")
	}
	// HFMERGE_KERNEL selects each kernel this CPU runs.
	for _, name := range Kernels() {
		t.Setenv("HFMERGE_KERNEL", name)
		if k, err := kernelFor(KernelAuto); err != nil || k.name != name {
			t.Errorf("HFMERGE_KERNEL=%s gives %q, %v", name, k.name, err)
		}
	}
	if Kernels()[len(Kernels())-1] != KernelGo {
		t.Errorf("kernels %v do not end with the Go fallback", Kernels())
	}
	t.Logf("this CPU runs %v", Kernels())
}
