package merge

import (
	"fmt"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// An MXFP4 source (mergeplan.Dequant.MXFP4) is read expert by expert: the tensor's rows
// are (expert, in) and its columns out, while the checkpoint stores each expert as
// (out, in/32, 16) bytes, so one row of the tensor is a column of the stored expert.
// Reading columns one element at a time would be a read per element; instead an
// expert's packed bytes and scales (out·in/2 + out·in/32 bytes, 8.8 MB for gpt-oss-
// 120b's gate_up_proj) are read once into a small cache shared by the row blocks.

// mxSlab is one expert's packed codes and its scales as stored.
type mxSlab struct {
	codes, scales []byte
}

// slabKey is where an expert's codes start: the slab cache is the shard's, shared by
// every MXFP4 tensor and by the segments an expert adapter cuts one into, so that it
// holds a few experts whatever their number.
type slabKey struct {
	file string
	off  int64
}

// largestSlab is the largest expert of the shard's MXFP4 tensors, in bytes.
func largestSlab(s *mergeplan.Shard) int64 {
	var n int64
	for _, t := range s.Tensors {
		if t.Requant != nil && t.Requant.Of != nil {
			n = max(n, mxSlabBytes(t.Requant.Of.Shape))
		}
		if t.Dequant != nil && t.Dequant.MXFP4 {
			n = max(n, mxSlabBytes(t.Shape))
		}
	}
	return n
}

// mxGeometry is the experts' shape: E experts of in rows (the tensor's) and out
// columns; groups = in/32 scale blocks per stored row.
func (m *tensor) mxGeometry() (experts, in, out, groups int) {
	s := m.t.Shape
	return int(s[0]), int(s[1]), int(s[2]), int(s[1]) / 32
}

// mxSlabBytes is the memory one cached expert takes.
func mxSlabBytes(shape []int64) int64 {
	if len(shape) != 3 {
		return 0
	}
	return shape[1]*shape[2]/2 + shape[1]*shape[2]/32
}

// prepareMXFP4 checks the geometry and aligns row blocks to the 32-row scale blocks.
func (m *tensor) prepareMXFP4() error {
	t, q := m.t, m.t.Dequant
	if len(t.Shape) != 3 || t.Shape[1]%32 != 0 || q.BlockRows != 32 {
		return fmt.Errorf("merge: %s: MXFP4 tensor of shape %v, blocks of %d", t.Name, t.Shape, q.BlockRows)
	}
	E, _, out, g := m.mxGeometry()
	if t.Source.Len != int64(E*out*g*16) || q.Scale.Len != int64(E*out*g) {
		return fmt.Errorf("merge: %s: %s is %d bytes and %s %d, want %d and %d for %v",
			t.Name, t.Source.Name, t.Source.Len, q.Scale.Name, q.Scale.Len, E*out*g*16, E*out*g, t.Shape)
	}
	if m.blockRows >= 32 {
		m.blockRows -= m.blockRows % 32
	}
	if m.slabs == nil {
		m.slabs = newLRU[slabKey, *mxSlab](2 * mxSlabBytes(t.Shape))
	}
	return nil
}

// slab reads expert e's codes and scales, refusing the NaN scale 0xFF.
func (m *tensor) slab(e int) (*mxSlab, error) {
	_, _, out, g := m.mxGeometry()
	key := slabKey{m.t.Source.File, m.t.Source.Offset + int64(e*out*g*16)}
	return m.slabs.get(key, func() (*mxSlab, int64, error) {
		s := &mxSlab{codes: make([]byte, out*g*16), scales: make([]byte, out*g)}
		if err := readRef(m.in, m.t.Source, int64(e*len(s.codes)), s.codes); err != nil {
			return nil, 0, err
		}
		if err := readRef(m.in, m.t.Dequant.Scale, int64(e*len(s.scales)), s.scales); err != nil {
			return nil, 0, err
		}
		for i, c := range s.scales {
			if c == 0xff {
				return nil, 0, fmt.Errorf("merge: %s: scale [%d, %d, %d] of %s is 0xFF, E8M0's NaN",
					m.t.Name, e, i/g, i%g, m.t.Dequant.Scale.Name)
			}
		}
		return s, int64(len(s.codes) + len(s.scales)), nil
	})
}

// mxfp4 computes rows [r0, r1) of the dequantized tensor: element (e·in + j, c) is
// code (e, c, j) times 2^(scale(e, c, j/32) − 127), where code (e, c, j) is the low
// nibble of byte j/2 of stored row (e, c) for even j and the high nibble for odd j.
// Each product is exact in float64 (two significant bits times a power of two).
func (m *tensor) mxfp4(r0, r1 int, v []float64) error {
	_, in, out, g := m.mxGeometry()
	codes := safetensors.E2M1Table()
	scales, _ := safetensors.F8Table(safetensors.F8E8M0)
	cur := -1
	var s *mxSlab
	for o := r0; o < r1; o++ {
		e, j := o/in, o%in
		if e != cur {
			var err error
			if s, err = m.slab(e); err != nil {
				return err
			}
			cur = e
		}
		row := v[(o-r0)*out : (o-r0+1)*out]
		gi, bi, shift := j/32, (j%32)/2, uint(j%2)*4
		for c := range row {
			k := c*g + gi
			row[c] = codes[(s.codes[k*16+bi]>>shift)&15] * scales[s.scales[k]]
		}
	}
	return nil
}

// mxSegment is rows [r0, r1) of an MXFP4 tensor, whole experts, as a tensor of its own:
// the experts' stored bytes and scales.
func mxSegment(t *mergeplan.Tensor, r0, r1 int64) (mergeplan.Tensor, error) {
	st := *t
	in, out := t.Shape[1], t.Shape[2]
	if len(t.Shape) != 3 || in%32 != 0 || r0%in != 0 || r1%in != 0 {
		return st, fmt.Errorf("merge: %s: an MXFP4 tensor is split by whole experts only, not at rows %d and %d", t.Name, r0, r1)
	}
	e0, e1 := r0/in, r1/in
	codes, scales := out*in/2, out*in/32 // bytes an expert
	st.Shape = []int64{e1 - e0, in, out}
	st.Source.Shape = []int64{e1 - e0, out, in / 32, 16}
	st.Source.Offset += e0 * codes
	st.Source.Len = (e1 - e0) * codes
	q := *t.Dequant
	q.Scale.Shape = []int64{e1 - e0, out, in / 32}
	q.Scale.Offset += e0 * scales
	q.Scale.Len = (e1 - e0) * scales
	st.Dequant = &q
	return st, nil
}
