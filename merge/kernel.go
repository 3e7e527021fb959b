package merge

import (
	"fmt"
	"math"
	"os"
)

// gamma bounds the error of a float64 dot product of length r, in any summation order
// and with or without fused multiply-adds, relative to the sum of the absolute
// products: γₙ = n·u / (1 − n·u) (Higham, Accuracy and Stability of Numerical
// Algorithms, §3.1), taken at n = r + 1 for margin.
func gamma(r int) float64 {
	n := float64(r + 1)
	return n * 0x1p-53 / (1 - n*0x1p-53)
}

// A kernel computes the low-rank product of a row block,
//
//	acc[o·cols + j] = Σₖ L[o·r + k] · R[k·cols + j]
//
// as a chain of fused multiply-adds in increasing k, starting from -0, in float64. The
// order is fixed so that the result is fully specified and every kernel gives the same
// bits, which DoRA needs: its norms see every element of a row. (Elsewhere the caller
// bounds the error, see gamma, and recomputes exactly what the bound cannot settle.)
// Starting from -0 keeps a weight whose delta is exactly zero bit-identical.
//
// fused, where a kernel has it, computes a whole row block of the common case (low-rank
// deltas, nothing else) in one pass over cache-sized tiles: product, sum, error bound
// and rounding, without a block-sized array of products; see fusedArgs. value computes
// DoRA's V = W + s·(L·R) the same way, in the fixed order above, into float64.
type kernel struct {
	name    string
	product func(acc, L, R []float64, rows, cols, r int)
	fused   *[3][3]func(*fusedArgs) // by input and output kind
	value   *[3]func(*fusedArgs)    // DoRA's V in float64, by input kind
	sums    *[3]func(*fusedArgs)    // DoRA's column sums of V², by input kind
	round   *[3]func(*roundArgs)    // DoRA's rescaled values rounded, by output kind
	f16     bool                    // the fused forms for F16 can run
}

// Kernel names, for Options.Kernel and HFMERGE_KERNEL.
const (
	KernelAuto   = ""       // the fastest this CPU runs
	KernelGo     = "go"     // portable Go, the reference
	KernelAVX2   = "avx2"   // amd64 with AVX2 and FMA
	KernelAVX512 = "avx512" // amd64 with AVX-512F as well (and the OS saving its registers)
)

// Kernels lists the kernels this CPU can run, fastest first.
func Kernels() []string {
	switch {
	case hasAVX512():
		return []string{KernelAVX512, KernelAVX2, KernelGo}
	case hasAVX2():
		return []string{KernelAVX2, KernelGo}
	}
	return []string{KernelGo}
}

// kernelFor returns the named kernel; KernelAuto takes HFMERGE_KERNEL from the
// environment, else the fastest.
func kernelFor(name string) (kernel, error) {
	if name == KernelAuto {
		name = os.Getenv("HFMERGE_KERNEL")
	}
	switch name {
	case KernelAuto:
		name = Kernels()[0]
	case KernelAVX2:
		if !hasAVX2() {
			return kernel{}, fmt.Errorf("merge: this CPU cannot run the %s kernel", name)
		}
	case KernelAVX512:
		if !hasAVX512() {
			return kernel{}, fmt.Errorf("merge: this CPU cannot run the %s kernel", name)
		}
	case KernelGo:
	default:
		return kernel{}, fmt.Errorf("merge: no kernel %q (have %v)", name, Kernels())
	}
	switch name {
	case KernelAVX2:
		return kernel{name: name, product: accumulateAVX2, fused: &fusedAVX2, value: &fusedVAVX2, sums: &fusedSAVX2, round: &roundAVX2, f16: hasF16C()}, nil
	case KernelAVX512:
		return kernel{name: name, product: accumulateAVX2, fused: &fusedAVX512, value: &fusedVAVX512, sums: &fusedSAVX512, round: &roundAVX2, f16: hasF16C()}, nil
	}
	return kernel{name: name, product: accumulateGo}, nil
}

// accumulateGo is the portable kernel.
func accumulateGo(acc, L, R []float64, rows, cols, r int) {
	accumulateCols(acc, cols, L, R, rows, cols, r, 0, cols)
}

// accumulateCols computes columns [j0, j1) of every row into acc, whose rows are stride
// apart and start at column j0.
func accumulateCols(acc []float64, stride int, L, R []float64, rows, cols, r, j0, j1 int) {
	negZero := math.Copysign(0, -1)
	for o := 0; o < rows; o++ {
		row := acc[o*stride : o*stride+j1-j0]
		for j := range row {
			row[j] = negZero
		}
		for k := 0; k < r; k++ {
			l := L[o*r+k]
			rk := R[k*cols+j0 : k*cols+j1]
			for j, x := range rk {
				row[j] = math.FMA(l, x, row[j])
			}
		}
	}
}
