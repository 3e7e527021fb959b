package merge

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"sync"

	"github.com/x448/float16"
	"golang.org/x/sync/errgroup"

	"github.com/hfmerge/hfmerge/safetensors"
)

// Requantization (--quantized keep). A touched block-FP8 weight is computed as in bf16
// mode, W + s·ΔW from the exact dequantization, then quantized again in the base's
// geometry. Each block's scale must be known before any of its elements, and the
// scale tensor is its own output tensor (perhaps in another shard), so a first pass
// over the whole weight finds every block's largest magnitude (an upper bound of it:
// the computed value plus its error bound); memory stays a few row blocks. The scale is
// the smallest value of the scale dtype (a power of two for F8_E8M0) with which that
// bound divided by the scale is at most 448: nothing saturates, and the scale is less
// than twice what the block needs. Elements are then rounded to nearest, ties to even;
// where the computed quotient's error interval holds a rounding boundary, the exact
// value decides.

// rqStat is one row's share of the report on what survived the requantization.
type rqStat struct {
	n, changed int
	num, den   float64 // Σ (kept change − delta)², Σ delta²
}

// count adds one element to st: w its dequantized base value, x its exact merged value
// (as computed), q what its requantized code dequantizes to.
func (st *rqStat) count(w, x, q float64) {
	kept, d := q-w, x-w
	st.n++
	if kept != 0 {
		st.changed++
	}
	st.num += (kept - d) * (kept - d)
	st.den += d * d
}

// add adds o's elements to st.
func (st *rqStat) add(o rqStat) {
	st.n += o.n
	st.changed += o.changed
	st.num += o.num
	st.den += o.den
}

// requantStats is the report on tensor, requantized to format, from the shares of its
// rows (or experts) in stats, summed in order so that the figures do not depend on
// the jobs.
func requantStats(tensor, format string, stats []rqStat) RequantStats {
	var sum rqStat
	for _, st := range stats {
		sum.add(st)
	}
	return RequantStats{Tensor: tensor, Format: format, Elements: sum.n, Changed: sum.changed,
		DeltaNorm: math.Sqrt(sum.den), ErrorNorm: math.Sqrt(sum.num)}
}

// RequantStats says how much of the adapter's change survived the requantization of
// one tensor: Changed of Elements dequantize to another value than the base's;
// DeltaNorm is ‖ΔW‖ (Frobenius) and ErrorNorm ‖kept change − ΔW‖.
type RequantStats struct {
	Tensor    string
	Format    string // what it was requantized to: F8_E4M3, MXFP4
	Elements  int
	Changed   int
	DeltaNorm float64
	ErrorNorm float64
}

// DeltaError is the relative error of the delta kept: 0 when it survived whole, 1 when
// it vanished.
func (r RequantStats) DeltaError() float64 {
	if r.DeltaNorm == 0 {
		return 0
	}
	return r.ErrorNorm / r.DeltaNorm
}

func (m *tensor) prepareRequant(jobs int, pool *sync.Pool) {
	m.rqRows = make([]rqStat, m.rows)
	m.rqScales = sync.OnceValues(func() ([]float64, error) { return m.chooseScales(jobs, pool) })
}

// chooseScales is the first pass: each block's scale.
func (m *tensor) chooseScales(jobs int, pool *sync.Pool) ([]float64, error) {
	q := m.t.Dequant
	br, bc := int(q.BlockRows), int(q.BlockCols)
	sc := (m.cols + bc - 1) / bc
	n := ((m.rows + br - 1) / br) * sc
	parts := make([][]float64, jobs)
	for i := range parts {
		parts[i] = make([]float64, n)
	}
	for g := 0; g < m.blocks(); g += jobs {
		var eg errgroup.Group
		for k := 0; k < min(jobs, m.blocks()-g); k++ {
			eg.Go(func() error {
				acc := pool.Get().(*scratch)
				defer pool.Put(acc)
				r0, r1 := m.span(g + k)
				v, _, e, err := m.values(r0, r1, acc)
				if err != nil {
					return err
				}
				amax := parts[k]
				for i, x := range v {
					if math.IsNaN(x) || math.IsInf(x, 0) {
						return &NonFiniteError{Tensor: m.t.Name, Row: int64(r0 + i/m.cols), Col: int64(i % m.cols), Value: x, DType: m.t.DType}
					}
					b := ((r0+i/m.cols)/br)*sc + (i%m.cols)/bc
					amax[b] = max(amax[b], math.Abs(x)+e[i])
				}
				return nil
			})
		}
		if err := eg.Wait(); err != nil {
			return nil, err
		}
	}
	base, err := m.scales()
	if err != nil {
		return nil, err
	}
	out := make([]float64, n)
	for b := range out {
		var amax float64
		for _, p := range parts {
			amax = max(amax, p[b])
		}
		if amax == 0 {
			out[b] = base[b] // an all-zero block: any scale will do; keep the base's
			continue
		}
		s, err := scaleUp(amax/safetensors.F8E4M3Max, q.Scale.DType)
		if err != nil {
			return nil, fmt.Errorf("merge: %s: block %d: %w", m.t.Name, b, err)
		}
		for s*safetensors.F8E4M3Max < amax { // amax/448 was rounded down
			if s, err = scaleUp(math.Nextafter(s, math.Inf(1)), q.Scale.DType); err != nil {
				return nil, fmt.Errorf("merge: %s: block %d: %w", m.t.Name, b, err)
			}
		}
		out[b] = s
	}
	return out, nil
}

// values computes rows [r0, r1) as the fast path does: v the merged values, w the
// dequantized base, e each value's error bound.
func (m *tensor) values(r0, r1 int, acc *scratch) (v, w, e []float64, err error) {
	raw, err := m.source(r0, r1, acc)
	if err != nil {
		return nil, nil, nil, err
	}
	n := (r1 - r0) * m.cols
	v = acc.values(n)
	m.dec(v, raw)
	if err := m.dequant(r0, r1, v); err != nil {
		return nil, nil, nil, err
	}
	if err := m.patchRows(r0, r1, v); err != nil {
		return nil, nil, nil, err
	}
	w = acc.base(n)
	copy(w, v)
	e = acc.bounds(n)
	clear(e)
	return v, w, e, m.addDeltas(r0, r1, v, e, acc)
}

// scaleUp is the smallest value of dtype d at least x > 0.
func scaleUp(x float64, d safetensors.DType) (float64, error) {
	var s float64
	switch d {
	case safetensors.F32:
		f := float32(x)
		if float64(f) < x {
			f = math.Nextafter32(f, float32(math.Inf(1)))
		}
		s = float64(f)
	case safetensors.BF16:
		b := bf16Bits(roundOdd32(x))
		if float64(bf16Value(b)) < x {
			b++
		}
		s = float64(bf16Value(b))
	case safetensors.F16:
		h := float16.Fromfloat32(roundOdd32(x))
		if float64(h.Float32()) < x {
			h++
		}
		s = float64(h.Float32())
	case safetensors.F8E8M0:
		c, ok := safetensors.EncodeF8E8M0Up(x)
		if !ok {
			return 0, fmt.Errorf("a scale of %g is beyond F8_E8M0", x)
		}
		s = safetensors.F8Value(d, c)
	default:
		return 0, fmt.Errorf("cannot choose %s scales", d)
	}
	if math.IsInf(s, 0) || s == 0 {
		return 0, fmt.Errorf("a scale of %g is beyond %s", x, d)
	}
	return s, nil
}

// requantBlock writes rows [r0, r1) of merged values v (bounds e, base w) as F8_E4M3
// codes, and records what survived.
func (m *tensor) requantBlock(r0, r1 int, v, w, e []float64, dst []byte) error {
	scales, err := m.rqScales()
	if err != nil {
		return err
	}
	q := m.t.Dequant
	br, bc := int(q.BlockRows), int(q.BlockCols)
	sc := (m.cols + bc - 1) / bc
	for o := r0; o < r1; o++ {
		var st rqStat
		srow := scales[(o/br)*sc : (o/br+1)*sc]
		for j := 0; j < m.cols; j++ {
			i := (o-r0)*m.cols + j
			x := v[i]
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return &NonFiniteError{Tensor: m.t.Name, Row: int64(o), Col: int64(j), Value: x, DType: m.t.DType}
			}
			s := srow[j/bc]
			y := x / s
			slack := e[i]/s + math.Abs(y)*0x1p-52
			c := safetensors.EncodeF8E4M3(y - slack)
			if c != safetensors.EncodeF8E4M3(y+slack) {
				ex, err := m.exact(o, j, w[i])
				if err != nil {
					return err
				}
				c = roundE4M3(ex, s)
			}
			dst[i] = c
			st.count(w[i], x, safetensors.F8Value(safetensors.F8E4M3, c)*s)
		}
		m.rqMu.Lock()
		m.rqRows[o] = st
		m.rqMu.Unlock()
	}
	return nil
}

// roundE4M3 rounds (x.hi + x.lo) / s to F8_E4M3, to nearest, ties to even,
// saturating, deciding with 256-bit arithmetic.
func roundE4M3(x dd, s float64) byte {
	z := new(big.Float).SetPrec(256).SetFloat64(x.hi)
	z.Add(z, new(big.Float).SetPrec(256).SetFloat64(x.lo))
	z.Quo(z, new(big.Float).SetPrec(256).SetFloat64(s))
	var sign byte
	if z.Sign() < 0 {
		sign = 0x80
		z.Neg(z)
	}
	// The largest positive code whose value is at most z, then the nearer of it and
	// the next one up.
	lo, hi := 0, 0x7e
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if new(big.Float).SetFloat64(safetensors.F8Value(safetensors.F8E4M3, byte(mid))).Cmp(z) <= 0 {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	c := lo
	if c < 0x7e {
		a, b := safetensors.F8Value(safetensors.F8E4M3, byte(c)), safetensors.F8Value(safetensors.F8E4M3, byte(c+1))
		switch new(big.Float).SetFloat64((a + b) / 2).Cmp(z) { // the midpoint is exact
		case -1:
			c++
		case 0:
			if c&1 == 1 {
				c++
			}
		}
	}
	return sign | byte(c)
}

// scaleBlock writes rows [r0, r1) of the requantized weight's scales.
func (m *tensor) scaleBlock(r0, r1 int, dst []byte) error {
	s, err := m.of.rqScales()
	if err != nil {
		return err
	}
	d := m.t.DType
	sz := size(d)
	for i, x := range s[r0*m.cols : r1*m.cols] {
		b := dst[i*sz:]
		switch d {
		case safetensors.F32:
			binary.LittleEndian.PutUint32(b, math.Float32bits(float32(x)))
		case safetensors.BF16:
			binary.LittleEndian.PutUint16(b, uint16(math.Float32bits(float32(x))>>16))
		case safetensors.F16:
			binary.LittleEndian.PutUint16(b, float16.Fromfloat32(float32(x)).Bits())
		case safetensors.F8E8M0:
			c, _ := safetensors.EncodeF8E8M0Up(x)
			b[0] = c
		default:
			return fmt.Errorf("merge: %s: cannot write %s scales", m.t.Name, d)
		}
	}
	return nil
}

// Requantized reports, for each tensor of the shard requantized so far, how much of
// the delta survived. Rows not yet computed are left out.
func (s *Shard) Requantized() []RequantStats {
	var out []RequantStats
	for _, t := range s.tensors {
		if t.mx != nil && !t.t.Requant.Scales {
			out = append(out, t.mx.requantStats())
		}
		if t.t.Requant == nil || t.mx != nil {
			continue
		}
		t.rqMu.Lock()
		out = append(out, requantStats(t.t.Name, string(t.t.DType), t.rqRows))
		t.rqMu.Unlock()
	}
	return out
}
