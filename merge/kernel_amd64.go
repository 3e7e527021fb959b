//go:build amd64 && !purego

package merge

import "golang.org/x/sys/cpu"

func hasAVX2() bool { return cpu.X86.HasAVX2 && cpu.X86.HasFMA }

// hasAVX512: the AVX-512 kernels use AVX-512F in their products and AVX2 elsewhere. (cpu
// reports AVX-512F only where the OS saves the registers.)
func hasAVX512() bool { return hasAVX2() && cpu.X86.HasAVX512F }

func hasF16C() bool { return cpu.X86.HasF16C }

// accumulateAVX2 runs the assembly kernel on the columns it covers (multiples of 16)
// and the Go kernel on the rest.
func accumulateAVX2(acc, L, R []float64, rows, cols, r int) {
	w := cols &^ 15
	if w > 0 && rows > 0 && r > 0 {
		_ = acc[rows*cols-1]
		_ = L[rows*r-1]
		_ = R[r*cols-1]
		avx2Block(&acc[0], &L[0], &R[0], rows, cols, r, w)
	} else {
		w = 0
	}
	if w < cols {
		accumulateCols(acc[w:], cols, L, R, rows, cols, r, w, cols)
	}
}

// avx2Block computes columns [0, width) of rows [0, rows); width is a multiple of 16.
// It works on strips of 16 columns, two rows at a time, so that a strip of R stays in
// the first-level cache while every row passes over it.
//
//go:noescape
func avx2Block(acc, L, R *float64, rows, cols, r, width int)
