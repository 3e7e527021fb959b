package merge

import "math"

// accumulate32 computes the low-rank product of a row block in float32:
//
//	acc[o·cols + j] ≈ Σₖ L[o·r + k] · R[k·cols + j]
//
// Any summation order and any mix of fused and unfused operations is allowed: the
// caller bounds the error (see bound32) and recomputes exactly what the bound cannot
// settle, so the output does not depend on how this was computed.
func accumulate32(acc, L, R []float32, rows, cols, r int) {
	for o := 0; o < rows; o++ {
		row := acc[o*cols : (o+1)*cols]
		clear(row)
		for k := 0; k < r; k++ {
			l := L[o*r+k]
			if l == 0 {
				continue
			}
			rk := R[k*cols : (k+1)*cols]
			for j, x := range rk {
				row[j] += l * x
			}
		}
	}
}

// gamma32 and gamma64 bound the relative error of a float32 or float64 sum of r products
// in any order, fused or not: (2r+2)·u, counting two roundings per term.
func gamma32(r int) float64 { return float64(2*r+2) * 0x1p-24 }
func gamma64(r int) float64 { return float64(2*r+2) * 0x1p-53 }

// accumulateFixed computes the same product in float64 as a chain of fused
// multiply-adds in increasing k, starting from -0. Its result is fully specified, which
// DoRA needs: its norms see every element of a row, so they must not depend on the
// kernel. Starting from -0 keeps a weight whose delta is exactly zero bit-identical.
func accumulateFixed(acc, L, R []float64, rows, cols, r int) {
	negZero := math.Copysign(0, -1)
	for o := 0; o < rows; o++ {
		row := acc[o*cols : (o+1)*cols]
		for j := range row {
			row[j] = negZero
		}
		for k := 0; k < r; k++ {
			l := L[o*r+k]
			rk := R[k*cols : (k+1)*cols]
			for j, x := range rk {
				row[j] = math.FMA(l, x, row[j])
			}
		}
	}
}
