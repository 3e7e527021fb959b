package merge

import (
	"encoding/binary"
	"math"
	"math/bits"

	"github.com/x448/float16"

	"github.com/hfmerge/hfmerge/safetensors"
)

// fusedBlock computes rows [r0, r1) of the common tensor: one low-rank delta, no trained
// rows, no DoRA. Each element is W + s·(L·R), computed in float64 with a bound on its
// error, and rounded at once unless the bound reaches a rounding boundary; the elements
// it cannot settle are computed again (settle), exactly if need be.
//
// A kernel with fused forms does the columns it covers (all but the last cols mod 8)
// in one pass that keeps the product out of memory; the Go loop does the rest.
func (m *tensor) fusedBlock(r0, r1 int, raw, dst []byte, acc *scratch) error {
	f, err := m.delta(0)
	if err != nil {
		return err
	}
	width := 0
	run := m.fusedKernel()
	if run != nil {
		width = m.cols &^ 7
	}
	if width > 0 {
		if err := m.fusedAsm(run, f, r0, r1, width, raw, dst, acc); err != nil {
			return err
		}
	}
	if width < m.cols {
		return m.fusedGo(f, r0, r1, width, raw, dst, acc)
	}
	return nil
}

// fusedKernel is the kernel's fused form for this tensor's types, or nil.
func (m *tensor) fusedKernel() func(*fusedArgs) {
	if m.kern.fused == nil || m.t.Deltas[0].Rank < 1 { // the kernels' loops need a rank
		return nil
	}
	in, out := m.t.Source.DType, m.t.DType
	if !m.kern.f16 && (in == safetensors.F16 || out == safetensors.F16) {
		return nil
	}
	return m.kern.fused[kind(in)][kind(out)]
}

// fusedArgs is a row block as the fused kernels read it (fused_amd64.s, which takes the
// offsets of its fields from this declaration). The vectors hold one constant four
// times, so that the kernels can use them as memory operands.
//
// For each element of columns [0, width) a kernel computes p = Σₖ L[o,k]·R[k,j] in a
// chain of fused multiply-adds, L holding s·L, and v = w + p. The error of v is at most
// bound[o] + |v|·2⁻⁵³, where bound[o] covers the product's (see fusedAsm). The
// kernel widens it to e = c1·|v| + bound[o], where
// c1 = relFloor + 2⁻⁵⁰ also covers its own roundings, and writes v rounded to the output
// (format.fast) unless a rounding boundary lies within e of |v|, or |v| is outside the
// output's normal range (for 16-bit outputs the test is another, on v rounded to
// float32: see thr below). Then it sets the element's bit in flags (a byte for each row
// and strip of 8 columns) and any.
type fusedArgs struct {
	out, in    *byte
	L          *float64 // packed by packRows
	R          *float64 // packed by pack
	bound      *float64 // c·rowNorm[o] + tiny for each row (see fusedAsm)
	flags      *uint8
	rows, rank int
	width      int
	strips     int // width / 8
	panel      int // columns of R whose strips stay in the first-level cache
	panel0     int // the kernel's: the columns of the current panel
	panel1     int
	inRow      int // bytes
	outRow     int
	inSize     int
	outSize    int
	any        int

	c1           [4]float64
	half, halfm1 [4]uint64 // the output's rounding boundaries: half a unit of drop bits
	minNormal    [4]uint64 // the bits of the output's smallest normal, less one
	maxFinite    [4]uint64 // the bits of its largest finite value, plus half
	round        [4]uint64 // half of the float32 bits BF16 drops, in each 32-bit lane
	zero         [4]uint64

	tmp [48]float64 // the kernel's: products of a group of rows

	// For 16-bit outputs the test runs on v rounded to float32, x (see epilogue16 in
	// fusedgen_test.go): x's bits without the sign must exceed thr[o] and stay below
	// max32, and its low bits (low32) be more than tol32 from mid32.
	thr                               *uint32
	abs32, max32, low32, mid32, tol32 [8]uint32
}

func kind(d safetensors.DType) int {
	switch d {
	case safetensors.F16:
		return 1
	case safetensors.F32:
		return 2
	}
	return 0
}

func splat[T any](x T) [4]T { return [4]T{x, x, x, x} }

func splat8[T any](x T) [8]T { return [8]T{x, x, x, x, x, x, x, x} }

// fusedAsm runs a fused kernel on columns [0, width) and settles what it flags.
func (m *tensor) fusedAsm(run func(*fusedArgs), f *factors, r0, r1, width int, raw, dst []byte, acc *scratch) error {
	d := &m.t.Deltas[0]
	rows, strips := r1-r0, width/8
	flags := acc.flagBytes(rows * strips)
	clear(flags) // the kernel writes only the rows it flags
	L := packRows(acc.packed(rows*d.Rank), f.L[r0*d.Rank:r1*d.Rank], rows, d.Rank, d.Scale)
	// The kernels take p = Σₖ fl(s·L[o,k])·R[k,j] for s·P: rounding s·L costs at most
	// 2⁻⁵³·|s|·Σ|L·R|, and the chain γ·|s|·Σ|L·R|·(1 + 2⁻⁵³) (see gamma), both within
	// |s|·maxColNorm·(γ + 2⁻⁵¹)·rowNorm; tiny covers underflow, of s·L too.
	as := math.Abs(d.Scale)
	c := as * f.maxColNorm * (gamma(d.Rank) + 0x1p-51)
	tiny := as*float64(d.Rank+1)*0x1p-1000 + float64(d.Rank+1)*0x1p-1074*f.maxColNorm
	bound := acc.rowBounds(rows)
	for o := range bound {
		bound[o] = c*f.rowNorm[r0+o] + tiny
	}
	fm := m.out
	if acc.args == nil {
		acc.args = new(fusedArgs)
	}
	a := acc.args
	*a = fusedArgs{
		out: &dst[0], in: &raw[0], L: &L[0], R: &f.strips[0],
		bound: &bound[0], flags: &flags[0],
		rows: rows, rank: d.Rank, width: width, strips: strips,
		// R's strips for 16 KiB, half the first-level data cache of current cores.
		panel: max(8, 2048/d.Rank&^7),
		inRow: m.cols * size(m.t.Source.DType), outRow: m.cols * size(m.t.DType),
		inSize: size(m.t.Source.DType), outSize: size(m.t.DType),
		c1:   splat(fm.relFloor + 0x1p-50),
		half: splat(fm.half), halfm1: splat(fm.half - 1),
		minNormal: splat(math.Float64bits(fm.minNormal) - 1),
		maxFinite: splat(math.Float64bits(fm.maxFinite) + fm.half),
		round:     splat(uint64(0x0000800000008000)),
	}
	if size(m.t.DType) == 2 {
		drop := fm.drop - 29 // the float32 bits below the output's precision
		thr := acc.rowThresholds(rows)
		minNormal := math.Float32bits(float32(fm.minNormal))
		for o, b := range bound {
			// |x| ≥ 2²⁴·bound, rounded up, keeps the bound within a unit of x.
			t := float32(b * 0x1p24)
			if float64(t) < b*0x1p24 {
				t = math.Nextafter32(t, float32(math.Inf(1)))
			}
			thr[o] = max(math.Float32bits(t), minNormal) - 1
		}
		a.thr = &thr[0]
		a.abs32 = splat8(uint32(0x7fffffff))
		a.max32 = splat8(math.Float32bits(float32(fm.maxFinite)) + 1)
		a.low32 = splat8(uint32(1)<<drop - 1)
		a.mid32 = splat8(uint32(1) << (drop - 1))
		a.tol32 = splat8(uint32(2))
	}
	run(a)
	if a.any == 0 {
		return nil
	}
	for i := 0; i < len(flags); i++ {
		// A block has a few flags in tens of thousands of bytes: skip 8 at a time.
		if i%8 == 0 && i+8 <= len(flags) && binary.LittleEndian.Uint64(flags[i:]) == 0 {
			i += 7
			continue
		}
		for word := flags[i]; word != 0; word &= word - 1 {
			o, j := i/strips, i%strips*8+bits.TrailingZeros8(word)
			if err := m.settle(f, r0, o, j, raw, dst); err != nil {
				return err
			}
		}
	}
	return nil
}

// packRows lays s·L's rows out for the fused kernels: in groups of 6, the 6 values of
// each k together, then the last rows (rows mod 6) as they are. With the scale in L,
// the kernels add the product to W as it is.
func packRows(dst, L []float64, rows, r int, s float64) []float64 {
	g := rows / 6 * 6
	for o := 0; o < g; o += 6 {
		out := dst[o*r : (o+6)*r]
		for k := 0; k < r; k++ {
			for i := 0; i < 6; i++ {
				out[k*6+i] = s * L[(o+i)*r+k]
			}
		}
	}
	for i, x := range L[g*r : rows*r] {
		dst[g*r+i] = s * x
	}
	return dst[:rows*r]
}

// fusedGo computes columns [j0, cols) in Go: the portable kernel, and the last columns,
// which a fused kernel does not cover. Its bound is the product's for each element,
// |s|·γ·‖L[o]‖₂·‖R[:, j]‖₂, plus the two float64 roundings (of s·acc and of the sum) and
// underflow.
func (m *tensor) fusedGo(f *factors, r0, r1, j0 int, raw, dst []byte, acc *scratch) error {
	d := &m.t.Deltas[0]
	rows, cols, n := r1-r0, m.cols, m.cols-j0
	a := acc.f64(rows * n)
	L := f.L[r0*d.Rank : r1*d.Rank]
	if j0 == 0 {
		m.kern.product(a, L, f.R, rows, cols, d.Rank)
	} else {
		accumulateCols(a, n, L, f.R, rows, cols, d.Rank, j0, cols)
	}
	s := d.Scale
	g := math.Abs(s) * gamma(d.Rank)
	tiny := math.Abs(s) * float64(d.Rank) * 0x1p-1070
	fm := m.out
	isz, osz := size(m.t.Source.DType), size(m.t.DType)
	w := acc.base(n)
	x := acc.values(n)
	colNorm := f.colNorm[j0:cols]
	var flagged []int
	for o := 0; o < rows; o++ {
		decodeRow(m.t.Source.DType, w, raw[(o*cols+j0)*isz:(o+1)*cols*isz])
		eo := g * f.rowNorm[r0+o]
		p := a[o*n : (o+1)*n]
		flagged = flagged[:0]
		for j := range x {
			t := s * p[j]
			v := w[j] + t
			x[j] = v
			e := eo*colNorm[j] + tiny + (math.Abs(t)+math.Abs(v))*0x1p-52
			// format.near, written out so that it compiles into this loop.
			b := math.Float64bits(v) &^ (1 << 63)
			av := math.Float64frombits(b)
			if av >= fm.minNormal && av < fm.maxFinite {
				e += av * fm.relFloor
				// Branch-free distance: the sign of dm is random, and a branch on it
				// would be mispredicted half the time.
				dm := math.Abs(av - math.Float64frombits(b&^fm.mask|fm.half))
				if dm > e && e < math.Float64frombits(b&0x7ff0000000000000-fm.quarterExp) {
					continue
				}
			}
			flagged = append(flagged, j0+j)
		}
		encodeRow(m.t.DType, dst[(o*cols+j0)*osz:(o+1)*cols*osz], x)
		for _, j := range flagged {
			if err := m.settle(nil, r0, o, j, raw, dst); err != nil {
				return err
			}
		}
	}
	return nil
}

// settle computes element (o, j) of the block at row r0 again and writes it: exactly,
// in double-double; or, given the factors f, first as the Go kernel does, with the
// tighter bound of its own element, which settles most of what the fused kernels'
// coarser test for 16-bit outputs leaves, at a fraction of the exact cost.
func (m *tensor) settle(f *factors, r0, o, j int, raw, dst []byte) error {
	isz, osz := size(m.t.Source.DType), size(m.t.DType)
	i := o*m.cols + j
	var w [1]float64
	decodeRow(m.t.Source.DType, w[:], raw[i*isz:])
	if f != nil {
		d := &m.t.Deltas[0]
		p := math.Copysign(0, -1)
		for k := 0; k < d.Rank; k++ {
			p = math.FMA(f.l(r0+o, k), f.r(k, j), p)
		}
		t := d.Scale * p
		v := w[0] + t
		e := math.Abs(d.Scale)*(gamma(d.Rank)*f.rowNorm[r0+o]*f.colNorm[j]+float64(d.Rank)*0x1p-1070) +
			(math.Abs(t)+math.Abs(v))*0x1p-52
		if !m.out.near(v, e) {
			m.out.fast(dst[i*osz:], v) // in the normal range: finite
			return nil
		}
	}
	ex, err := m.exact(r0+o, j, w[0])
	if err != nil {
		return err
	}
	m.out.putExact(dst[i*osz:], ex.hi, ex.lo)
	if !finite(m.t.DType, dst[i*osz:]) && finite(m.t.Source.DType, raw[i*isz:]) {
		return &NonFiniteError{Tensor: m.t.Name, Row: int64(r0 + o), Col: int64(j), Value: ex.hi, DType: m.t.DType}
	}
	return nil
}

// decodeRow reads little-endian elements of a float dtype.
func decodeRow(dt safetensors.DType, dst []float64, b []byte) {
	switch dt {
	case safetensors.BF16:
		b = b[:2*len(dst)]
		for i := range dst {
			dst[i] = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16))
		}
	case safetensors.F16:
		b = b[:2*len(dst)]
		for i := range dst {
			dst[i] = float64(float16.Frombits(binary.LittleEndian.Uint16(b[2*i:])).Float32())
		}
	case safetensors.F32:
		b = b[:4*len(dst)]
		for i := range dst {
			dst[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
		}
	}
}

// encodeRow rounds values the error bound has cleared (see format.fast); elements it
// has not are written again after they are recomputed.
func encodeRow(dt safetensors.DType, dst []byte, x []float64) {
	switch dt {
	case safetensors.BF16:
		dst = dst[:2*len(x)]
		for i, v := range x {
			binary.LittleEndian.PutUint16(dst[2*i:], uint16((math.Float32bits(float32(v))+0x8000)>>16))
		}
	case safetensors.F16:
		dst = dst[:2*len(x)]
		for i, v := range x {
			binary.LittleEndian.PutUint16(dst[2*i:], float16.Fromfloat32(float32(v)).Bits())
		}
	case safetensors.F32:
		dst = dst[:4*len(x)]
		for i, v := range x {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(float32(v)))
		}
	}
}
