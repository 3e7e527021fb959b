package merge

import "math"

// dd is a double-double: the unevaluated sum hi + lo, about 106 bits. It computes the
// few elements whose rounding the fast path cannot settle.
type dd struct{ hi, lo float64 }

func twoSum(a, b float64) dd {
	s := a + b
	z := s - a
	return dd{s, (a - (s - z)) + (b - z)}
}

func twoProd(a, b float64) dd {
	p := a * b
	return dd{p, math.FMA(a, b, -p)}
}

func (x dd) add(y dd) dd {
	s := twoSum(x.hi, y.hi)
	return twoSum(s.hi, s.lo+x.lo+y.lo)
}

func (x dd) scale(s float64) dd {
	p := twoProd(s, x.hi)
	return twoSum(p.hi, p.lo+s*x.lo)
}

// exact computes element (o, j) of the tensor from its base value w, every delta summed
// in double-double.
func (m *tensor) exact(o, j int, w float64) (dd, error) {
	var delta dd
	for i, d := range m.t.Deltas {
		f, err := m.delta(i)
		if err != nil {
			return dd{}, err
		}
		if d.Vector {
			delta = delta.add(twoProd(d.Scale, f.vec[j]))
			continue
		}
		var sum dd
		for k := 0; k < d.Rank; k++ {
			sum = sum.add(twoProd(f.l(o, k), f.r(k, j)))
		}
		delta = delta.add(sum.scale(d.Scale))
	}
	switch {
	case delta.hi == 0 && delta.lo == 0:
		return dd{w, 0}, nil // keep w's bits, sign of zero included
	case math.IsInf(w, 0) || math.IsNaN(w) || math.IsInf(delta.hi, 0) || math.IsNaN(delta.hi):
		return dd{w + delta.hi, 0}, nil // IEEE rules; the error terms would be NaN
	}
	return dd{w, 0}.add(delta), nil
}
