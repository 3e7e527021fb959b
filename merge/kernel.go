package merge

import "math"

// gamma bounds the error of a float64 dot product of length r, in any summation order
// and with or without fused multiply-adds, relative to the sum of the absolute
// products: γₙ = n·u / (1 − n·u) (Higham, Accuracy and Stability of Numerical
// Algorithms, §3.1), taken at n = r + 1 for margin.
func gamma(r int) float64 {
	n := float64(r + 1)
	return n * 0x1p-53 / (1 - n*0x1p-53)
}

// accumulate computes the low-rank product of a row block,
//
//	acc[o·cols + j] = Σₖ L[o·r + k] · R[k·cols + j]
//
// as a chain of fused multiply-adds in increasing k, starting from -0, in float64. The
// order is fixed so that the result is fully specified, which DoRA needs: its norms see
// every element of a row. Elsewhere the caller bounds the error (see gamma) and
// recomputes exactly what the bound cannot settle, so there the output would not depend
// on the order at all. Starting from -0 keeps a weight whose delta is exactly zero
// bit-identical.
func accumulate(acc, L, R []float64, rows, cols, r int) {
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
