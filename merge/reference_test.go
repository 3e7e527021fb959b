package merge_test

// An independent reference for merged values: the exact value of W + s·B·A in
// double-double arithmetic (about 106 bits), rounded once with math/big, and checks that
// compare the engine's output with it. Nothing here uses package merge's arithmetic.

import (
	"math"
	"math/big"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// dd is an unevaluated sum hi + lo with |lo| ≤ ulp(hi)/2.
type dd struct{ hi, lo float64 }

func twoSum(a, b float64) (float64, float64) {
	s := a + b
	z := s - a
	return s, (a - (s - z)) + (b - z)
}

func (x dd) add(y dd) dd {
	s, e := twoSum(x.hi, y.hi)
	e += x.lo + y.lo
	hi, lo := twoSum(s, e)
	return dd{hi, lo}
}

func mul(a, b float64) dd {
	p := a * b
	return dd{p, math.FMA(a, b, -p)}
}

func (x dd) scale(s float64) dd {
	p := mul(s, x.hi)
	p.lo += s * x.lo
	hi, lo := twoSum(p.hi, p.lo)
	return dd{hi, lo}
}

// lowRank is s·Σₖ l(k)·r(k), exactly enough.
func lowRank(s float64, rank int, l, r func(k int) float64) dd {
	var acc dd
	for k := 0; k < rank; k++ {
		acc = acc.add(mul(l(k), r(k)))
	}
	return acc.scale(s)
}

// format describes an output dtype for rounding: significant bits, minimum normal
// exponent.
func format(dt safetensors.DType) (prec uint, emin int) {
	switch dt {
	case safetensors.BF16:
		return 8, -126
	case safetensors.F16:
		return 11, -14
	case safetensors.F32:
		return 24, -126
	}
	panic("no format for " + string(dt))
}

// roundExact rounds hi + lo (exactly) to dt, ties to even.
func roundExact(dt safetensors.DType, x dd) float64 {
	if x.hi == 0 || math.IsInf(x.hi, 0) || math.IsNaN(x.hi) {
		return fixture.Round(dt, x.hi)
	}
	r := fixture.Round(dt, x.hi)
	if x.lo == 0 || math.IsInf(r, 0) {
		return r
	}
	// hi rounds to r unless hi + lo is on the other side of the midpoint nearest hi.
	u := ulp(dt, r)
	mid := r + math.Copysign(u/2, x.hi-r)
	if frac, _ := math.Frexp(math.Abs(r)); frac != 0.5 && math.Abs(x.hi-mid) > 2*math.Abs(x.lo) {
		return r
	}
	prec, emin := format(dt)
	_, e := math.Frexp(math.Abs(x.hi))
	if e-1 < emin {
		// Subnormal: the quantum is fixed, and lo decides a tie of hi.
		q := math.Ldexp(1, emin-int(prec)+1)
		n, l := x.hi/q, x.lo/q // exact: scaling by a power of two
		f := math.Floor(n)
		switch frac := n - f; {
		case frac > 0.5, frac == 0.5 && l > 0:
			f++
		}
		return math.Copysign(f*q, x.hi)
	}
	z := new(big.Float).SetPrec(256).SetFloat64(x.hi)
	z.Add(z, new(big.Float).SetPrec(256).SetFloat64(x.lo))
	z.SetMode(big.ToNearestEven)
	z.SetPrec(prec)
	f, _ := z.Float64()
	return fixture.Round(dt, f) // handles overflow to infinity
}

// ulp is the spacing of dt at x.
func ulp(dt safetensors.DType, x float64) float64 {
	prec, emin := format(dt)
	_, e := math.Frexp(math.Abs(x))
	return math.Ldexp(1, max(e-1, emin)-int(prec)+1)
}

// tally compares engine outputs with exact values.
type tally struct {
	n, differ, far int
	worst          float64 // largest |got - exact| in ulps
}

// check records one element: got is the engine's value, exact the exact result and
// slack an error bound for float32 accumulation, beyond which an element is "far".
func (t *tally) check(dt safetensors.DType, got float64, exact dd, slack float64) {
	t.n++
	want := roundExact(dt, exact)
	if got == want || (math.IsNaN(got) && math.IsNaN(want)) {
		return
	}
	t.differ++
	dist := math.Abs(got-exact.hi) / ulp(dt, want)
	t.worst = max(t.worst, dist)
	if math.Abs(got-want) > ulp(dt, want)*1.0000001 && math.Abs(got-exact.hi) > slack+ulp(dt, want) {
		t.far++
	}
}

// bound is the share of elements allowed to differ from the correctly rounded value.
func bound(dt safetensors.DType, dora bool) float64 {
	switch {
	case dora:
		return 1e-3
	case dt == safetensors.F16:
		return 5e-4
	}
	return 1e-4
}

func (t *tally) assert(tb testing.TB, what string, dt safetensors.DType, dora bool) {
	tb.Helper()
	if t.n == 0 {
		tb.Fatalf("%s: no elements compared", what)
	}
	rate := float64(t.differ) / float64(t.n)
	tb.Logf("%s: %d elements, %d differ from the correctly rounded value (%.2g), worst %.3g ulp", what, t.n, t.differ, rate, t.worst)
	if t.far > 0 {
		tb.Errorf("%s: %d elements are more than one rounding from the exact value", what, t.far)
	}
	if rate > bound(dt, dora) {
		tb.Errorf("%s: %.3g of elements differ from the correctly rounded value; allowed %g", what, rate, bound(dt, dora))
	}
}

// accSlack bounds the error of a float32 fused multiply-add chain of rank terms:
// rank · 2⁻²⁴ · Σ|terms| · |s|, and the float64 chain's far smaller one.
func accSlack(dt safetensors.DType, s float64, rank int, l, r func(k int) float64) float64 {
	var sum float64
	for k := 0; k < rank; k++ {
		sum += math.Abs(l(k) * r(k))
	}
	u := math.Ldexp(1, -24)
	if dt == safetensors.F32 {
		u = math.Ldexp(1, -53)
	}
	return float64(rank+2) * u * sum * math.Abs(s)
}
