package merge

import (
	"encoding/binary"
	"math"
	"math/bits"

	"github.com/x448/float16"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// fusedBlock computes rows [r0, r1) of the common tensor: low-rank deltas, no trained
// rows, no DoRA. Each element is W + Σ s·(L·R), computed in float64 with a bound on its
// error, and rounded at once unless the bound reaches a rounding boundary; the elements
// it cannot settle are computed again (settle), exactly if need be. Several deltas are
// one product of their summed rank (see chain).
//
// A kernel with fused forms does the columns it covers (all but the last cols mod 8)
// in one pass that keeps the product out of memory; the Go loop does the rest.
func (m *tensor) fusedBlock(r0, r1 int, raw, dst []byte, acc *scratch) error {
	c, err := m.chain()
	if err != nil {
		return err
	}
	width := 0
	run := m.fusedKernel()
	if run != nil {
		width = m.cols &^ 7
	}
	if width > 0 {
		if err := m.fusedAsm(run, c, r0, r1, width, raw, dst, acc); err != nil {
			return err
		}
	}
	if width < m.cols {
		return m.fusedGo(c, r0, r1, width, raw, dst, acc)
	}
	return nil
}

// lowRank reports whether every delta is a low-rank product (none a vector), so that
// they can be one chain.
func lowRank(ds []mergeplan.Delta) bool {
	for _, d := range ds {
		if d.Vector {
			return false
		}
	}
	return len(ds) > 0
}

// rank is the summed rank of the tensor's deltas.
func (m *tensor) rank() int {
	r := 0
	for _, d := range m.t.Deltas {
		r += d.Rank
	}
	return r
}

// packs reports whether delta i's R is packed into strips as it is loaded: for a fused
// kernel that takes the delta as it is, the only delta of a fused tensor or the first of
// a DoRA tensor (see doraKernel). Several deltas are packed as one (concat).
func (m *tensor) packs(i int) bool {
	if i != 0 {
		return false
	}
	if m.fused {
		return len(m.t.Deltas) == 1 && m.fusedKernel() != nil
	}
	return m.doraKernel() != nil
}

// fusedKernel is the kernel's fused form for this tensor's types, or nil.
func (m *tensor) fusedKernel() func(*fusedArgs) {
	if m.kern.fused == nil || m.rank() < 1 { // the kernels' loops need a rank
		return nil
	}
	in, out := m.t.Source.DType, m.t.DType
	if !m.kern.f16 && (in == safetensors.F16 || out == safetensors.F16) {
		return nil
	}
	return m.kern.fused[kind(in)][kind(out)]
}

// chain is the product the fused path computes, Σₖ L[o,k]·R[k,j] scaled: one delta's
// factors and scale, or several low-rank deltas concatenated along the rank, s_k·L_k
// side by side in L (rounded: pre is that relative error, 2⁻⁵³) and the R_k one under
// the other in R, with scale 1. Either way f's norms bound Σ|L·R| for the product as
// computed, so one bound, for the summed rank, covers every delta.
type chain struct {
	f     *factors
	scale float64
	pre   float64
}

// concatDelta is the factor cache's key for a tensor's concatenated deltas.
const concatDelta = -1

func (m *tensor) chain() (chain, error) {
	if len(m.t.Deltas) == 1 {
		f, err := m.delta(0)
		return chain{f: f, scale: m.t.Deltas[0].Scale}, err
	}
	f, err := m.factors.get(factorKey{m.t.Name, concatDelta}, m.concat)
	return chain{f: f, scale: 1, pre: 0x1p-53}, err
}

// concat lays the deltas out as one of summed rank (see chain).
func (m *tensor) concat() (*factors, int64, error) {
	rank, rows, cols := m.rank(), m.rows, m.cols
	c := &factors{rank: rank, cols: cols, L: make([]float64, rows*rank), R: make([]float64, 0, rank*cols)}
	off := 0
	for i, d := range m.t.Deltas {
		f, err := m.delta(i)
		if err != nil {
			return nil, 0, err
		}
		for o := 0; o < rows; o++ {
			for k, x := range f.L[o*d.Rank : (o+1)*d.Rank] {
				c.L[o*rank+off+k] = d.Scale * x
			}
		}
		c.R = append(c.R, f.R[:d.Rank*cols]...)
		off += d.Rank
	}
	// The norms of the rounded s·L bound those of the exact ones: the margin of
	// (1 + 2⁻⁴⁰) is far above a rounding's 2⁻⁵³.
	c.rowNorm = make([]float64, rows)
	for o := range c.rowNorm {
		var n float64
		for _, x := range c.L[o*rank : (o+1)*rank] {
			n += x * x
		}
		c.rowNorm[o] = math.Sqrt(n) * (1 + 0x1p-40)
	}
	c.colNorm = make([]float64, cols)
	for k := 0; k < rank; k++ {
		for j, x := range c.R[k*cols : (k+1)*cols] {
			c.colNorm[j] += x * x
		}
	}
	for j, x := range c.colNorm {
		c.colNorm[j] = math.Sqrt(x) * (1 + 0x1p-40)
		c.maxColNorm = max(c.maxColNorm, c.colNorm[j])
	}
	if m.fusedKernel() != nil {
		c.strips = pack(c.R, rank, cols)
	}
	return c, int64(len(c.L)+len(c.R)+len(c.strips)+rows+cols) * 8, nil
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

	scale float64 // for DoRA's V (the F64 outputs), whose L is unscaled

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
func (m *tensor) fusedAsm(run func(*fusedArgs), c chain, r0, r1, width int, raw, dst []byte, acc *scratch) error {
	f, rank := c.f, c.f.rank
	rows, strips := r1-r0, width/8
	flags := acc.flagBytes(rows * strips)
	clear(flags) // the kernel writes only the rows it flags
	L := packRows(acc.packed(rows*rank), f.L[r0*rank:r1*rank], rows, rank, c.scale)
	// The kernels take p = Σₖ fl(s·L[o,k])·R[k,j] for s·P: rounding s·L costs at most
	// 2⁻⁵³·|s|·Σ|L·R|, and the chain γ·|s|·Σ|L·R|·(1 + 2⁻⁵³) (see gamma), both within
	// |s|·maxColNorm·(γ + 2⁻⁵¹)·rowNorm; tiny covers underflow, of s·L too. A chain of
	// concatenated deltas (scale 1) has rounded its s·L already, at the same cost.
	as := math.Abs(c.scale)
	cb := as * f.maxColNorm * (gamma(rank) + 0x1p-51)
	tiny := as*float64(rank+1)*0x1p-1000 + float64(rank+1)*0x1p-1074*f.maxColNorm
	bound := acc.rowBounds(rows)
	for o := range bound {
		bound[o] = cb*f.rowNorm[r0+o] + tiny
	}
	fm := m.out
	if acc.args == nil {
		acc.args = new(fusedArgs)
	}
	a := acc.args
	*a = fusedArgs{
		out: &dst[0], in: &raw[0], L: &L[0], R: &f.strips[0],
		bound: &bound[0], flags: &flags[0],
		rows: rows, rank: rank, width: width, strips: strips,
		// R's strips for 16 KiB, half the first-level data cache of current cores.
		panel: max(8, 2048/rank&^7),
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
			if err := m.settle(&c, r0, o, j, raw, dst); err != nil {
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
// |s|·γ·‖L[o]‖₂·‖R[:, j]‖₂ (see chain.bounds), plus the two float64 roundings (of s·acc
// and of the sum) and underflow.
func (m *tensor) fusedGo(c chain, r0, r1, j0 int, raw, dst []byte, acc *scratch) error {
	f, rank := c.f, c.f.rank
	rows, cols, n := r1-r0, m.cols, m.cols-j0
	a := acc.f64(rows * n)
	L := f.L[r0*rank : r1*rank]
	if j0 == 0 {
		m.kern.product(a, L, f.R, rows, cols, rank)
	} else {
		accumulateCols(a, n, L, f.R, rows, cols, rank, j0, cols)
	}
	s := c.scale
	g, under, tiny := c.bounds()
	fm := m.out
	isz, osz := size(m.t.Source.DType), size(m.t.DType)
	w := acc.base(n)
	x := acc.values(n)
	colNorm := f.colNorm[j0:cols]
	var flagged []int
	for o := 0; o < rows; o++ {
		decodeRow(m.t.Source.DType, w, raw[(o*cols+j0)*isz:(o+1)*cols*isz])
		eo := g*f.rowNorm[r0+o] + under
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

// bounds gives the terms of the bound on the error of s·p, p = Σₖ L[o,k]·R[k,j] as a
// chain of fused multiply-adds computes it: g·rowNorm[o]·colNorm[j] + under·colNorm[j]
// + tiny. g is |s|·γ, and where L holds rounded s_k·L_k, 2·pre more, with under for
// their underflow; tiny is the chain's underflow.
func (c chain) bounds() (g, under, tiny float64) {
	as, rank := math.Abs(c.scale), c.f.rank
	g = as * (gamma(rank) + 2*c.pre)
	if c.pre != 0 {
		under = as * float64(rank) * 0x1p-1074
	}
	return g, under, as * float64(rank) * 0x1p-1070
}

// settle computes element (o, j) of the block at row r0 again and writes it: exactly,
// in double-double; or, given the chain c, first as the Go kernel does, with the
// tighter bound of its own element, which settles most of what the fused kernels'
// coarser test for 16-bit outputs leaves, at a fraction of the exact cost.
func (m *tensor) settle(c *chain, r0, o, j int, raw, dst []byte) error {
	isz, osz := size(m.t.Source.DType), size(m.t.DType)
	i := o*m.cols + j
	var w [1]float64
	decodeRow(m.t.Source.DType, w[:], raw[i*isz:])
	if c != nil {
		f := c.f
		p := math.Copysign(0, -1)
		for k := 0; k < f.rank; k++ {
			p = math.FMA(f.l(r0+o, k), f.r(k, j), p)
		}
		t := c.scale * p
		v := w[0] + t
		g, under, tiny := c.bounds()
		e := (g*f.rowNorm[r0+o]+under)*f.colNorm[j] + tiny + (math.Abs(t)+math.Abs(v))*0x1p-52
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
