package merge

import (
	"fmt"
	"sync"
)

// prepareDequant checks a block-quantized source's geometry, lines the row blocks up
// with the scale blocks (a row block is a whole number of scale rows, or, where rows
// are so wide that one scale row is more than a block, a divisor of one, so that memory
// stays bounded; alignment only saves work, it is not needed for the values), and arranges for the scales to be read once, when first
// needed: they are small, ⌈rows/b⌉·⌈cols/b⌉ values.
func (m *tensor) prepareDequant() error {
	q := m.t.Dequant
	if q.MXFP4 {
		return m.prepareMXFP4()
	}
	if q.BlockRows <= 0 || q.BlockCols <= 0 {
		return fmt.Errorf("merge: %s: block size %dx%d", m.t.Name, q.BlockRows, q.BlockCols)
	}
	sr := (int64(m.rows) + q.BlockRows - 1) / q.BlockRows
	sc := (int64(m.cols) + q.BlockCols - 1) / q.BlockCols
	if q.Scale.Rows() != sr || q.Scale.Cols() != sc {
		return fmt.Errorf("merge: %s: scale %s is %dx%d, want %dx%d", m.t.Name, q.Scale.Name, q.Scale.Rows(), q.Scale.Cols(), sr, sc)
	}
	if decoderFor(q.Scale.DType) == nil {
		return fmt.Errorf("merge: %s: scale %s is %s, not a float type", m.t.Name, q.Scale.Name, q.Scale.DType)
	}
	if b := int(q.BlockRows); m.blockRows >= b {
		m.blockRows -= m.blockRows % b
	} else {
		// A divisor of b not below half the block, if there is one (a per-tensor
		// scale's b is every row, which may have no useful divisor: then any).
		for d := m.blockRows; d >= max(1, m.blockRows/2); d-- {
			if b%d == 0 {
				m.blockRows = d
				break
			}
		}
	}
	ref := q.Scale
	m.scales = sync.OnceValues(func() ([]float64, error) { return decodeRef(m.in, ref) })
	return nil
}

// dequant multiplies the decoded codes of rows [r0, r1) by their blocks' scales. Each
// product is exact in float64: an FP8 code has at most 4 significant bits and a scale
// (F32, BF16, F16 or a power of two) at most 24.
func (m *tensor) dequant(r0, r1 int, v []float64) error {
	q := m.t.Dequant
	if q == nil {
		return nil
	}
	if q.MXFP4 {
		return m.mxfp4(r0, r1, v)
	}
	s, err := m.scales()
	if err != nil {
		return err
	}
	br, bc := int(q.BlockRows), int(q.BlockCols)
	sc := (m.cols + bc - 1) / bc
	for o := r0; o < r1; o++ {
		row := v[(o-r0)*m.cols : (o-r0+1)*m.cols]
		srow := s[(o/br)*sc : (o/br+1)*sc]
		for j := range row {
			row[j] *= srow[j/bc]
		}
	}
	return nil
}
