package merge

import (
	"fmt"
	"math"
	"sync"

	"golang.org/x/sync/errgroup"
)

// load reads delta i's matrices from the adapter and lays them out for the kernels.
func (m *tensor) load(i int) (*factors, int64, error) {
	d := m.t.Deltas[i]
	f := &factors{rank: d.Rank, cols: m.cols}
	if d.Vector {
		v, err := decodeRef(m.in, d.B)
		if err != nil {
			return nil, 0, err
		}
		f.vec = v
	} else {
		var L, R []float64
		if d.Expert != nil {
			var err error
			if L, R, err = m.expertLR(&d); err != nil {
				return nil, 0, err
			}
			if len(L) != m.rows*d.Rank || len(R) != d.Rank*m.cols {
				return nil, 0, fmt.Errorf("merge: %s: expert %d's delta is not %d×%d", m.t.Name, d.Expert.Index, m.rows, m.cols)
			}
		} else {
			a, err := decodeRef(m.in, d.A)
			if err != nil {
				return nil, 0, err
			}
			b, err := decodeRef(m.in, d.B)
			if err != nil {
				return nil, 0, err
			}
			if !d.Transposed {
				L, R = b, a // B is (rows, r), A is (r, cols)
			} else {
				L = transpose(a, d.Rank, m.rows) // A is (r, rows)
				R = transpose(b, m.cols, d.Rank) // B is (cols, r)
			}
		}
		// The norms are rounded up a little so that they stay upper bounds.
		f.rowNorm = make([]float64, m.rows)
		for o := range f.rowNorm {
			for _, x := range L[o*d.Rank : (o+1)*d.Rank] {
				f.rowNorm[o] += x * x
			}
			f.rowNorm[o] = math.Sqrt(f.rowNorm[o]) * (1 + 0x1p-40)
		}
		f.colNorm = make([]float64, m.cols)
		for k := 0; k < d.Rank; k++ {
			for j, x := range R[k*m.cols : (k+1)*m.cols] {
				f.colNorm[j] += x * x
			}
		}
		for j, x := range f.colNorm {
			f.colNorm[j] = math.Sqrt(x) * (1 + 0x1p-40)
			f.maxColNorm = max(f.maxColNorm, f.colNorm[j])
		}
		f.L, f.R = L, R
		if m.packs(i) {
			f.strips = pack(R, d.Rank, m.cols)
		}
	}
	if i == 0 && m.t.DoRA != nil {
		mag, err := decodeRef(m.in, m.t.DoRA.Magnitude)
		if err != nil {
			return nil, 0, err
		}
		f.mag = mag
	}
	cost := int64(len(f.L)+len(f.R)+len(f.strips)+len(f.vec)+len(f.mag)+len(f.rowNorm)+len(f.colNorm)) * 8
	return f, cost, nil
}

func (m *tensor) delta(i int) (*factors, error) {
	return m.factors.get(factorKey{m.t.Name, i}, func() (*factors, int64, error) { return m.load(i) })
}

// pack lays out the (r, cols) matrix R strip by strip for the fused kernels: the r rows
// of columns [8i, 8i+8) one after the other, so that a strip is one contiguous run of
// memory rather than r pieces a whole row apart, which fall into the same few
// first-level cache sets and evict each other. Columns past the last whole strip are
// left out.
func pack(R []float64, r, cols int) []float64 {
	width := cols &^ 7
	out := make([]float64, 0, r*width)
	for j0 := 0; j0 < width; j0 += 8 {
		for k := 0; k < r; k++ {
			out = append(out, R[k*cols+j0:k*cols+j0+8]...)
		}
	}
	return out
}

// transpose turns a (rows, cols) row-major matrix into (cols, rows).
func transpose(x []float64, rows, cols int) []float64 {
	out := make([]float64, len(x))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			out[j*rows+i] = x[i*cols+j]
		}
	}
	return out
}

// block computes rows [r0, r1) into dst, in the output dtype.
//
// Without DoRA every element is rounded once from W + Σ s·(L·R). The fast path computes
// in float64 with an error bound for each element; where the bound reaches a rounding
// boundary, the element is recomputed in double-double. So every element is the
// correctly rounded value of the exact result, whatever the kernel's summation order.
func (m *tensor) block(r0, r1 int, dst []byte, acc *scratch) error {
	if m.of != nil {
		return m.scaleBlock(r0, r1, dst)
	}
	if m.mx != nil {
		return m.mx.write(m.t.Requant.Scales, r0, r1, m.cols, dst)
	}
	if m.t.Requant != nil {
		v, w, e, err := m.values(r0, r1, acc)
		if err != nil {
			return err
		}
		return m.requantBlock(r0, r1, v, w, e, dst)
	}
	raw, err := m.source(r0, r1, acc)
	if err != nil {
		return err
	}
	if m.fused {
		return m.fusedBlock(r0, r1, raw, dst, acc)
	}
	n := (r1 - r0) * m.cols
	v := acc.values(n)
	osz := size(m.t.DType)
	if m.t.DoRA != nil {
		if err := m.doraValues(r0, r1, raw, v, acc); err != nil {
			return err
		}
		return m.doraPut(r0, r1, v, raw, dst, acc)
	}
	m.dec(v, raw)
	if err := m.dequant(r0, r1, v); err != nil {
		return err
	}
	if err := m.patchRows(r0, r1, v); err != nil {
		return err
	}
	w := acc.base(n)
	copy(w, v)
	e := acc.bounds(n)
	clear(e)
	if err := m.addDeltas(r0, r1, v, e, acc); err != nil {
		return err
	}
	isz := size(m.t.Source.DType)
	for i, x := range v {
		if !m.out.near(x, e[i]) {
			m.out.fast(dst[i*osz:], x) // in the normal range: finite
			continue
		}
		ex, err := m.exact(r0+i/m.cols, i%m.cols, w[i])
		if err != nil {
			return err
		}
		m.out.putExact(dst[i*osz:], ex.hi, ex.lo)
		if !finite(m.t.DType, dst[i*osz:]) && (raw == nil || finite(m.t.Source.DType, raw[i*isz:])) {
			return &NonFiniteError{Tensor: m.t.Name, Row: int64(r0 + i/m.cols), Col: int64(i % m.cols), Value: ex.hi, DType: m.t.DType}
		}
	}
	return nil
}

// patchRows replaces trained rows (trainable tokens).
func (m *tensor) patchRows(r0, r1 int, v []float64) error {
	for o := r0; o < r1; o++ {
		p, ok := m.patch[int64(o)]
		if !ok {
			continue
		}
		rowBytes := int64(m.cols * size(p.values.DType))
		b := make([]byte, rowBytes)
		if err := readRef(m.in, p.values, p.row*rowBytes, b); err != nil {
			return err
		}
		decoderFor(p.values.DType)(v[(o-r0)*m.cols:(o-r0+1)*m.cols], b)
	}
	return nil
}

// addDeltas adds every delta to v by the fast path and accumulates each element's error
// bound in e: the product's rounding, |s|·γ·Σ|L·R| ≤ |s|·γ·‖L[o]‖₂·‖R[:, j]‖₂ plus
// underflow, and the float64 roundings of the scale and the sum.
func (m *tensor) addDeltas(r0, r1 int, v, e []float64, acc *scratch) error {
	cols := m.cols
	for i, d := range m.t.Deltas {
		f, err := m.delta(i)
		if err != nil {
			return err
		}
		s, as := d.Scale, math.Abs(d.Scale)
		if d.Vector {
			for j := range v {
				t := s * f.vec[j]
				v[j] += t
				e[j] += 0x1p-52 * (math.Abs(t) + math.Abs(v[j]))
			}
			continue
		}
		rows := r1 - r0
		a := acc.f64(len(v))
		m.kern.product(a, f.L[r0*d.Rank:r1*d.Rank], f.R, rows, cols, d.Rank)
		g := gamma(d.Rank)
		for o := 0; o < rows; o++ {
			lo := f.rowNorm[r0+o] * g
			for j := 0; j < cols; j++ {
				idx := o*cols + j
				t := s * a[idx]
				v[idx] += t
				e[idx] += as*(lo*f.colNorm[j]+0x1p-1070) + 0x1p-52*(math.Abs(t)+math.Abs(v[idx]))
			}
		}
	}
	return nil
}

// fixedValues adds deltas from, from+1, ... to v by the fully specified float64 path, for
// DoRA: v += s·p for each in turn, p as a kernel computes it. (The conversions keep the
// compiler from fusing the multiply and the add, which would change the bits.)
func (m *tensor) fixedValues(r0, r1 int, v []float64, from int, acc *scratch) error {
	for i := from; i < len(m.t.Deltas); i++ {
		d := &m.t.Deltas[i]
		f, err := m.delta(i)
		if err != nil {
			return err
		}
		if d.Vector {
			for j := range v {
				v[j] += float64(d.Scale * f.vec[j])
			}
			continue
		}
		a := acc.f64(len(v))
		m.kern.product(a, f.L[r0*d.Rank:r1*d.Rank], f.R, r1-r0, m.cols, d.Rank)
		for j, x := range a {
			v[j] += float64(d.Scale * x)
		}
	}
	return nil
}

func norm(x []float64) float64 {
	var s float64
	for _, v := range x {
		s += float64(v * v)
	}
	return math.Sqrt(s)
}

// source reads rows [r0, r1) of the source tensor into scratch memory.
func (m *tensor) source(r0, r1 int, acc *scratch) ([]byte, error) {
	if m.slabs != nil {
		return nil, nil // an MXFP4 source is read expert by expert (mxfp4.go)
	}
	inSize := int64(size(m.t.Source.DType))
	raw := acc.bytes((r1 - r0) * m.cols * int(inSize))
	return raw, readRef(m.in, m.t.Source, int64(r0)*int64(m.cols)*inSize, raw)
}

// checkFinite fails on a non-finite output element whose source element was finite.
func (m *tensor) checkFinite(r0 int, out, raw []byte, v []float64) error {
	os, is := size(m.t.DType), size(m.t.Source.DType)
	for i := range v {
		if finite(m.t.DType, out[i*os:]) || !finite(m.t.Source.DType, raw[i*is:]) {
			continue
		}
		return &NonFiniteError{Tensor: m.t.Name, Row: int64(r0 + i/m.cols), Col: int64(i % m.cols), Value: v[i], DType: m.t.DType}
	}
	return nil
}

// columnScale is DoRA's per-column rescale, m[j] / ‖V[:, j]‖, which needs every row.
// Blocks are computed in parallel, a group of jobs at a time, and their partial sums are
// added in block order, so the result does not depend on the number of jobs.
func (m *tensor) columnScale(jobs int, pool *sync.Pool) func() ([]float64, error) {
	return sync.OnceValues(func() ([]float64, error) {
		f, err := m.delta(0)
		if err != nil {
			return nil, err
		}
		sums := make([]float64, m.cols)
		parts := make([][]float64, jobs)
		for i := range parts {
			parts[i] = make([]float64, m.cols)
		}
		for g := 0; g < m.blocks(); g += jobs {
			n := min(jobs, m.blocks()-g)
			var eg errgroup.Group
			for k := 0; k < n; k++ {
				eg.Go(func() error {
					acc := pool.Get().(*scratch)
					defer pool.Put(acc)
					r0, r1 := m.span(g + k)
					raw, err := m.source(r0, r1, acc)
					if err != nil {
						return err
					}
					part := parts[k]
					clear(part)
					return m.columnSums(r0, r1, raw, part, acc)
				})
			}
			if err := eg.Wait(); err != nil {
				return nil, err
			}
			for k := 0; k < n; k++ {
				for j, x := range parts[k] {
					sums[j] += x
				}
			}
		}
		for j := range sums {
			n := math.Sqrt(sums[j])
			if n == 0 {
				sums[j] = 1
				continue
			}
			sums[j] = f.mag[j] / n
		}
		return sums, nil
	})
}
