package merge

import (
	"encoding/binary"
	"math"

	"github.com/x448/float16"

	"github.com/hfmerge/hfmerge/safetensors"
)

// fused computes rows [r0, r1) of the common tensor — one low-rank delta, no trained
// rows, no DoRA — row by row in three tight loops: decode W, add s·(L·R) while checking
// each element's error bound against the rounding boundaries, and round. The bound is
// the product's, |s|·γ·‖L[o]‖₂·‖R[:, j]‖₂, plus the two float64 roundings (of s·acc and
// of the sum) and underflow; the elements it cannot settle are recomputed exactly.
func (m *tensor) fusedBlock(r0, r1 int, raw, dst []byte, acc *scratch) error {
	d := &m.t.Deltas[0]
	f, err := m.delta(0)
	if err != nil {
		return err
	}
	rows, cols := r1-r0, m.cols
	a := acc.f64(rows * cols)
	m.kern(a, f.L[r0*d.Rank:r1*d.Rank], f.R, rows, cols, d.Rank)
	s := d.Scale
	g := math.Abs(s) * gamma(d.Rank)
	tiny := math.Abs(s) * float64(d.Rank) * 0x1p-1070
	fm := m.out
	isz, osz := size(m.t.Source.DType), size(m.t.DType)
	w := acc.base(cols)
	x := acc.values(cols)
	var flagged []int
	for o := 0; o < rows; o++ {
		decodeRow(m.t.Source.DType, w, raw[o*cols*isz:(o+1)*cols*isz])
		eo := g * f.rowNorm[r0+o]
		p := a[o*cols : (o+1)*cols]
		colNorm := f.colNorm[:cols]
		flagged = flagged[:0]
		for j := range x {
			t := s * p[j]
			v := w[j] + t
			x[j] = v
			e := eo*colNorm[j] + tiny + (math.Abs(t)+math.Abs(v))*0x1p-52
			// format.near, written out so that it compiles into this loop.
			bits := math.Float64bits(v) &^ (1 << 63)
			av := math.Float64frombits(bits)
			if av >= fm.minNormal && av < fm.maxFinite {
				e += av * fm.relFloor
				// Branch-free distance: the sign of dm is random, and a branch on it
				// would be mispredicted half the time.
				dm := math.Abs(av - math.Float64frombits(bits&^fm.mask|fm.half))
				if dm > e && e < math.Float64frombits(bits&0x7ff0000000000000-fm.quarterExp) {
					continue
				}
			}
			flagged = append(flagged, j)
		}
		out := dst[o*cols*osz : (o+1)*cols*osz]
		encodeRow(m.t.DType, out, x)
		for _, j := range flagged {
			ex, err := m.exact(r0+o, j, w[j])
			if err != nil {
				return err
			}
			fm.putExact(out[j*osz:], ex.hi, ex.lo)
			if !finite(m.t.DType, out[j*osz:]) && finite(m.t.Source.DType, raw[(o*cols+j)*isz:]) {
				return &NonFiniteError{Tensor: m.t.Name, Row: int64(r0 + o), Col: int64(j), Value: ex.hi, DType: m.t.DType}
			}
		}
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
