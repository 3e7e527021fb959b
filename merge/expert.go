package merge

import (
	"fmt"
	"slices"

	"github.com/hfmerge/hfmerge/mergeplan"
)

// segment is a run of rows of an output tensor that the same deltas change, computed
// as a tensor of its own: a stack of experts (E, d1, d2) is E segments of d1 rows, each
// with one expert's delta, so that each goes the common path of one low-rank delta.
type segment struct {
	off int64 // bytes from the start of the output tensor
	t   *mergeplan.Tensor
}

// segments splits t where its expert deltas start and end. A tensor whose deltas all
// cover it whole is one segment, t itself.
func segments(t *mergeplan.Tensor) ([]segment, error) {
	rows := t.Rows()
	cuts := []int64{0, rows}
	for i := range t.Deltas {
		d := &t.Deltas[i]
		if x := d.Expert; x != nil && (x.Row != 0 || x.Hi-x.Lo != rows) {
			if x.Lo < 0 || x.Hi <= x.Lo || x.Row < 0 || x.Row+x.Hi-x.Lo > rows {
				return nil, fmt.Errorf("merge: %s: expert %d's rows [%d, %d) do not fit at row %d of %d", t.Name, x.Index, x.Lo, x.Hi, x.Row, rows)
			}
			cuts = append(cuts, x.Row, x.Row+x.Hi-x.Lo)
		}
	}
	if len(cuts) == 2 {
		return []segment{{0, t}}, nil
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	cols := t.Cols()
	isz, osz := int64(size(t.Source.DType)), int64(size(t.DType))
	mx := t.Dequant != nil && t.Dequant.MXFP4
	if isz == 0 || osz == 0 || len(t.Patches) > 0 || t.DoRA != nil || (t.Dequant != nil && !mx) {
		return nil, fmt.Errorf("merge: %s: expert deltas need a float tensor without trained rows, DoRA or block scales", t.Name)
	}
	var out []segment
	for k := 0; k+1 < len(cuts); k++ {
		r0, r1 := cuts[k], cuts[k+1]
		st := *t
		st.Shape = []int64{r1 - r0, cols}
		st.Source.Shape = st.Shape
		st.Source.Offset += r0 * cols * isz
		st.Source.Len = (r1 - r0) * cols * isz
		if mx {
			var err error
			if st, err = mxSegment(t, r0, r1); err != nil {
				return nil, err
			}
		}
		st.Deltas = nil
		experts := map[int]bool{}
		for _, d := range t.Deltas {
			x := d.Expert
			if x == nil || d.Vector {
				return nil, fmt.Errorf("merge: %s: a whole-tensor delta (%s) cannot be added to a tensor split by experts", t.Name, d.Module)
			}
			if x.Row > r0 || x.Row+x.Hi-x.Lo < r1 {
				continue
			}
			cx := *x
			cx.Lo += r0 - x.Row
			cx.Hi = cx.Lo + r1 - r0
			cx.Row = 0
			d.Expert = &cx
			st.Deltas = append(st.Deltas, d)
			experts[x.Index] = true
		}
		// A segment's name keys its matrices in the cache, so it must be its own.
		st.Name = fmt.Sprintf("%s[rows %d:%d]", t.Name, r0, r1)
		if len(experts) == 1 && (r1-r0)*int64(t.Shape[0]) == rows {
			for e := range experts {
				st.Name = fmt.Sprintf("%s[expert %d]", t.Name, e)
			}
		}
		out = append(out, segment{off: r0 * cols * osz, t: &st})
	}
	return out, nil
}

// packKey names a packed lora_B in the adapter file.
type packKey struct {
	file string
	off  int64
}

// expertMajor reads a ParamWrapper's lora_B (out, r·E) once for all its experts and
// lays it out expert by expert: expert e's (out, r) matrix B_e, row-major, at
// e·out·r. Every expert of a tensor needs the whole of lora_B's rows to pick its
// columns from, so reading it for each would read it E times.
func (m *tensor) expertMajor(d *mergeplan.Delta) ([]float64, error) {
	return m.packed.get(packKey{d.B.File, d.B.Offset}, func() ([]float64, int64, error) {
		b, err := decodeRef(m.in, d.B)
		if err != nil {
			return nil, 0, err
		}
		x, r := d.Expert, d.Rank
		E, out, width := x.Count, int(d.B.Rows()), int(d.B.Cols())
		if width != r*E {
			return nil, 0, fmt.Errorf("merge: %s: lora_B %v is not (out, %d·%d)", d.Module, d.B.Shape, r, E)
		}
		p := make([]float64, len(b))
		for e := 0; e < E; e++ {
			for o := 0; o < out; o++ {
				for k := 0; k < r; k++ {
					col := k*E + e
					if x.GroupedB {
						col = e*r + k
					}
					p[(e*out+o)*r+k] = b[o*width+col]
				}
			}
		}
		return p, int64(len(p)) * 8, nil
	})
}

// expertFactors reads expert e's factors out of a ParamWrapper's packed matrices:
// A_e, rows [e·r, (e+1)·r) of lora_A, as an (r, in) matrix; and B_e, the columns of
// lora_B that PEFT's reshape(out, r, E) gives expert e (or Unsloth's grouped packing),
// as an (n, r) matrix of lora_B's rows [b0, b0+n), the only ones the tensor needs.
func (m *tensor) expertFactors(d *mergeplan.Delta, b0, n int64) (a, b []float64, err error) {
	x, r := d.Expert, int64(d.Rank)
	E := int64(x.Count)
	inA, out := d.A.Cols(), d.B.Rows()
	if d.A.Rows() != r*E || d.B.Cols() != r*E || x.Index < 0 || int64(x.Index) >= E || b0 < 0 || b0+n > out {
		return nil, nil, fmt.Errorf("merge: %s: expert %d of %d at rank %d does not fit lora_A %v and lora_B %v", d.Module, x.Index, E, r, d.A.Shape, d.B.Shape)
	}
	asz := int64(size(d.A.DType))
	raw := make([]byte, r*inA*asz)
	if err := readRef(m.in, d.A, int64(x.Index)*r*inA*asz, raw); err != nil {
		return nil, nil, err
	}
	a = make([]float64, r*inA)
	decoderFor(d.A.DType)(a, raw)
	p, err := m.expertMajor(d)
	if err != nil {
		return nil, nil, err
	}
	e := int64(x.Index)
	return a, p[(e*out+b0)*r : (e*out+b0+n)*r], nil
}

// expertLR lays an expert delta out as L (rows, r) and R (r, cols) for rows [Lo, Hi)
// of Δ_e: B_e·A_e, or its transpose A_eᵀ·B_eᵀ.
func (m *tensor) expertLR(d *mergeplan.Delta) (L, R []float64, err error) {
	x, r := d.Expert, d.Rank
	if !d.Transposed {
		a, b, err := m.expertFactors(d, x.Lo, x.Hi-x.Lo)
		if err != nil {
			return nil, nil, err
		}
		return b, a, nil
	}
	a, b, err := m.expertFactors(d, 0, d.B.Rows())
	if err != nil {
		return nil, nil, err
	}
	inA := int(d.A.Cols())
	L = transpose(a, r, inA)[int(x.Lo)*r : int(x.Hi)*r] // (in, r), the rows this tensor takes
	R = transpose(b, int(d.B.Rows()), r)                // (r, out)
	return L, R, nil
}
