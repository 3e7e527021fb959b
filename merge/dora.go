package merge

import (
	"encoding/binary"
	"math"
	"math/bits"
	"unsafe"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// DoRA's numbers are fully specified, so that no kernel changes them: V = W + s·p for
// each delta in turn, p the product chain of the package's kernels (see kernel), then
// the norms and rescale in float64 in a fixed order, then one rounding of each element.
// The fast path computes exactly those values, the product and sum of the first delta
// in a kernel's fused V form (no block of products in memory, R read strip by strip),
// and rounds without a function call per element.

// doraKernel is the kernel's fused form for DoRA's V from this tensor's input, or nil:
// it takes a first delta that is low rank, and no trained rows (which replace W first).
func (m *tensor) doraKernel() func(*fusedArgs) {
	t := m.t
	if m.kern.value == nil || t.DoRA == nil || t.Dequant != nil || len(t.Patches) > 0 || len(t.Deltas) == 0 ||
		t.Deltas[0].Vector || t.Deltas[0].Rank < 1 || m.cols < 8 {
		return nil
	}
	if t.Source.DType == safetensors.F16 && !m.kern.f16 {
		return nil
	}
	return m.kern.value[kind(t.Source.DType)]
}

// doraValues computes V = W + ΔW for rows [r0, r1) into v, in the order fixedValues
// defines, from the source rows raw.
func (m *tensor) doraValues(r0, r1 int, raw []byte, v []float64, acc *scratch) error {
	run := m.doraKernel()
	if run == nil {
		m.dec(v, raw)
		if err := m.dequant(r0, r1, v); err != nil {
			return err
		}
		if err := m.patchRows(r0, r1, v); err != nil {
			return err
		}
		return m.fixedValues(r0, r1, v, 0, acc)
	}
	d := &m.t.Deltas[0]
	f, err := m.delta(0)
	if err != nil {
		return err
	}
	rows, cols, rank, width := r1-r0, m.cols, d.Rank, m.cols&^7
	isz := size(m.t.Source.DType)
	m.valueArgs(r0, r1, f, raw, (*byte)(unsafe.Pointer(&v[0])), cols*8, acc)
	run(acc.args)
	if width < cols {
		n := cols - width
		p := acc.f64(rows * n)
		accumulateCols(p, n, f.L[r0*rank:r1*rank], f.R, rows, cols, rank, width, cols)
		w := acc.base(n)
		for o := 0; o < rows; o++ {
			decodeRow(m.t.Source.DType, w, raw[(o*cols+width)*isz:(o+1)*cols*isz])
			row := v[o*cols+width : (o+1)*cols]
			for j, x := range p[o*n : (o+1)*n] {
				row[j] = w[j] + float64(d.Scale*x)
			}
		}
	}
	return m.fixedValues(r0, r1, v, 1, acc)
}

// columnSums adds V[o, j]² for the rows [r0, r1) in order to part[j], as a sum of
// squares each rounded: by a kernel's sums form where the tensor has one delta, which
// keeps V out of memory, else from doraValues.
func (m *tensor) columnSums(r0, r1 int, raw []byte, part []float64, acc *scratch) error {
	rows, cols := r1-r0, m.cols
	if m.doraKernel() == nil || len(m.t.Deltas) > 1 || m.kern.sums == nil {
		v := acc.values(rows * cols)
		if err := m.doraValues(r0, r1, raw, v, acc); err != nil {
			return err
		}
		for o := 0; o < rows; o++ {
			for j, x := range v[o*cols : (o+1)*cols] {
				part[j] += float64(x * x)
			}
		}
		return nil
	}
	d := &m.t.Deltas[0]
	f, err := m.delta(0)
	if err != nil {
		return err
	}
	rank, width := d.Rank, cols&^7
	m.valueArgs(r0, r1, f, raw, (*byte)(unsafe.Pointer(&part[0])), 0, acc)
	m.kern.sums[kind(m.t.Source.DType)](acc.args)
	if width < cols {
		n := cols - width
		p := acc.f64(rows * n)
		accumulateCols(p, n, f.L[r0*rank:r1*rank], f.R, rows, cols, rank, width, cols)
		w := acc.base(n)
		isz := size(m.t.Source.DType)
		for o := 0; o < rows; o++ {
			decodeRow(m.t.Source.DType, w, raw[(o*cols+width)*isz:(o+1)*cols*isz])
			for j, x := range p[o*n : (o+1)*n] {
				y := w[j] + float64(d.Scale*x)
				part[width+j] += float64(y * y)
			}
		}
	}
	return nil
}

// valueArgs sets acc.args for a kernel's V or sums form on rows [r0, r1), writing out,
// outRow bytes a row.
func (m *tensor) valueArgs(r0, r1 int, f *factors, raw []byte, out *byte, outRow int, acc *scratch) {
	d := &m.t.Deltas[0]
	rows, cols, rank, width := r1-r0, m.cols, d.Rank, m.cols&^7
	L := packRows(acc.packed(rows*rank), f.L[r0*rank:r1*rank], rows, rank, 1)
	if acc.args == nil {
		acc.args = new(fusedArgs)
	}
	isz := size(m.t.Source.DType)
	*acc.args = fusedArgs{
		out: out, in: &raw[0], L: &L[0], R: &f.strips[0],
		rows: rows, rank: rank, width: width, strips: width / 8,
		panel: max(8, 2048/rank&^7),
		inRow: cols * isz, outRow: outRow, inSize: isz, outSize: 8,
		scale: d.Scale,
	}
}

// doraPut rescales V, rows [r0, r1) in v, to the trained magnitudes, per row (Linear) or
// per column over the whole tensor (Conv1D, embeddings), and rounds each element once
// into dst. A zero row stays zero (PEFT would divide by zero).
func (m *tensor) doraPut(r0, r1 int, v []float64, raw, dst []byte, acc *scratch) error {
	cols, osz := m.cols, size(m.t.DType)
	var mag, cs []float64
	if m.t.DoRA.Axis == mergeplan.PerRow {
		f, err := m.delta(0)
		if err != nil {
			return err
		}
		mag = f.mag
	} else {
		var err error
		if cs, err = m.colScale(); err != nil {
			return err
		}
	}
	var norms []float64
	if mag != nil {
		norms = rowNorms(acc.rowBounds(r1-r0), v, cols)
	}
	for o := r0; o < r1; o++ {
		i := (o - r0) * cols
		row := v[i : i+cols]
		if mag != nil {
			s := 1.0
			if n := norms[o-r0]; n != 0 {
				s = mag[o] / n
			}
			cs = acc.base(cols)
			for j := range cs {
				cs[j] = s
			}
		}
		if !m.putRow(dst[i*osz:(i+cols)*osz], row, cs, acc) {
			x := make([]float64, cols) // the values rounded, for the message
			for j := range x {
				x[j] = row[j] * cs[j]
			}
			if err := m.checkFinite(o, dst[i*osz:], raw[i*size(m.t.Source.DType):], x); err != nil {
				return err
			}
		}
	}
	return nil
}

// rowNorms sets n[o] to norm(row o of v), each a chain of additions in column order:
// four rows at a time, whose chains are independent, so that the additions overlap
// instead of waiting on each other.
func rowNorms(n, v []float64, cols int) []float64 {
	o := 0
	for ; o+4 <= len(n); o += 4 {
		a := v[o*cols : (o+1)*cols]
		b := v[(o+1)*cols : (o+2)*cols][:len(a)]
		c := v[(o+2)*cols : (o+3)*cols][:len(a)]
		d := v[(o+3)*cols : (o+4)*cols][:len(a)]
		var sa, sb, sc, sd float64
		for j, x := range a {
			sa += float64(x * x)
			sb += float64(b[j] * b[j])
			sc += float64(c[j] * c[j])
			sd += float64(d[j] * d[j])
		}
		n[o], n[o+1], n[o+2], n[o+3] = math.Sqrt(sa), math.Sqrt(sb), math.Sqrt(sc), math.Sqrt(sd)
	}
	for ; o < len(n); o++ {
		n[o] = norm(v[o*cols : (o+1)*cols])
	}
	return n
}

// roundArgs is a row of DoRA's values for the round kernels (fused_amd64.s, generated
// by roundKernels): for each group of 8, x·scale rounded to the output as putRow's fast
// path does, and a byte of flags with the bits of the elements it cannot round so,
// which putRow then rounds by put. k holds the kernel's constants, each in 8 lanes.
type roundArgs struct {
	dst      *byte
	x, scale *float64
	flags    *uint8
	groups   int
	any      int
	k        [8][8]uint32
}

// roundConstants are roundArgs.k for each output kind (see roundKernels).
var roundConstants = [3][8]uint32{
	{0x8000, 0xffff, 0x7f80},
	{0x7fffffff, 0x387fffff, 0x477fe000, 0x1fff, 0x1000},
	{0x7f800000},
}

// putRow writes x[j]·scale[j] for each j, rounded once to the output dtype as format.put
// does, with NaN as the dtype's default quiet NaN, whose bits, unlike a propagated
// payload's, do not depend on the order of a multiplication's operands. It reports
// whether every element it wrote is finite.
//
// Rounding to float32 first is the correct rounding to a 16-bit format unless the
// float32 lands exactly on one of its rounding boundaries (x on a tie, or rounded onto
// one), or is outside its normal range: those go through put.
func (m *tensor) putRow(dst []byte, x, scale []float64, acc *scratch) bool {
	ok := true
	osz := size(m.t.DType)
	if run := m.roundKernel(); run != nil && len(x) >= 8 {
		n := len(x) &^ 7
		flags := acc.flagBytes(n / 8)
		if acc.round == nil {
			acc.round = new(roundArgs)
		}
		a := acc.round
		a.dst, a.x, a.scale, a.flags, a.groups = &dst[0], &x[0], &scale[0], &flags[0], n/8
		for i, c := range roundConstants[kind(m.t.DType)] {
			a.k[i] = splat8(c)
		}
		run(a)
		if a.any != 0 {
			for g, f := range flags {
				for ; f != 0; f &= f - 1 {
					j := g*8 + bits.TrailingZeros8(f)
					ok = m.putSlow(dst[j*osz:], x[j]*scale[j]) && ok
				}
			}
		}
		dst, x, scale = dst[n*osz:], x[n:], scale[n:]
	}
	switch m.t.DType {
	case safetensors.BF16:
		dst = dst[:2*len(x)]
		scale = scale[:len(x)]
		for i, v := range x {
			v *= scale[i]
			b := math.Float32bits(float32(v))
			if h := (b + 0x8000) >> 16; b&0xffff != 0x8000 && h&0x7f80 != 0x7f80 {
				binary.LittleEndian.PutUint16(dst[2*i:], uint16(h))
				continue
			}
			ok = m.putSlow(dst[2*i:], v) && ok
		}
	case safetensors.F16:
		dst = dst[:2*len(x)]
		scale = scale[:len(x)]
		for i, v := range x {
			v *= scale[i]
			b := math.Float32bits(float32(v))
			// |v| in [2⁻¹⁴, 65504), and not on a tie of F16's 10 mantissa bits.
			if a := b &^ (1 << 31); a >= 0x38800000 && a < 0x477fe000 && b&0x1fff != 0x1000 {
				h := (b>>16)&0x8000 | ((a>>23)-112)<<10 | (a>>13)&0x3ff // rebiased, truncated
				if b&0x1fff > 0x1000 {
					h++ // carries into the exponent where the mantissa overflows
				}
				binary.LittleEndian.PutUint16(dst[2*i:], uint16(h))
				continue
			}
			ok = m.putSlow(dst[2*i:], v) && ok
		}
	case safetensors.F32:
		dst = dst[:4*len(x)]
		scale = scale[:len(x)]
		for i, v := range x {
			v *= scale[i]
			b := math.Float32bits(float32(v))
			if b&0x7f800000 != 0x7f800000 {
				binary.LittleEndian.PutUint32(dst[4*i:], b)
				continue
			}
			ok = m.putSlow(dst[4*i:], v) && ok
		}
	}
	return ok
}

// roundKernel is the kernel's round form for the output, or nil.
func (m *tensor) roundKernel() func(*roundArgs) {
	if m.kern.round == nil || (m.t.DType == safetensors.F16 && !m.kern.f16) {
		return nil
	}
	return m.kern.round[kind(m.t.DType)]
}

// putSlow rounds one value by format.put, NaN as the default quiet NaN, and reports
// whether the result is finite.
func (m *tensor) putSlow(dst []byte, x float64) bool {
	if x != x {
		x = math.NaN() // Go's NaN: positive, quiet, no payload
	}
	m.out.put(dst, x)
	return finite(m.t.DType, dst)
}
