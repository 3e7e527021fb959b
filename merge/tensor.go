package merge

import (
	"fmt"
	"io"
	"sync"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// tensor computes one output tensor of a shard, row block by row block.
type tensor struct {
	t          *mergeplan.Tensor
	off        int64 // where the tensor's bytes start in the output file
	size       int64 // its length in bytes
	rows, cols int
	in         map[string]io.ReaderAt
	dec        decoder
	out        *format
	patch      map[int64]patch // output row → trained row
	factors    *lru[factorKey, *factors]
	packed     *lru[packKey, []float64] // expert lora_B matrices, expert by expert
	kern       kernel
	fused      bool                      // one low-rank delta and nothing else: fusedBlock
	colScale   func() ([]float64, error) // DoRA per-column factors, computed once
	scales     func() ([]float64, error) // a quantized source's block scales, read once
	rqScales   func() ([]float64, error) // the scales a requantization chooses
	rqMu       sync.Mutex
	rqRows     []rqStat // what survived the requantization, row by row
	of         *tensor  // for a scale tensor: the requantized weight it belongs to
	blockRows  int
	slabs      *lru[slabKey, *mxSlab] // an MXFP4 source's experts as stored (mxfp4.go)
	mx         *mxKeep                // an MXFP4 _blocks or _scales requantized (mxkeep.go)
}

type patch struct {
	values mergeplan.Ref
	row    int64
}

type factorKey struct {
	tensor string
	delta  int
}

// factors are one delta's matrices in the layout the kernels use: L is (rows, rank) and
// R is (rank, cols), row-major, in float64 (exact: adapter values are BF16, F16 or F32). By Cauchy–Schwarz, rowNorm[o] ·
// colNorm[j] bounds Σₖ |L[o,k]·R[k,j]|, which bounds the rounding error of the product
// in any summation order.
type factors struct {
	rank, cols int
	L, R       []float64
	strips     []float64 // R packed for the fused kernels (pack)
	rowNorm    []float64 // ‖L[o, :]‖₂
	colNorm    []float64 // ‖R[:, j]‖₂
	maxColNorm float64
	vec        []float64 // a vector delta
	mag        []float64 // DoRA magnitudes (on the entry for delta 0)
}

func (f *factors) l(o, k int) float64 { return f.L[o*f.rank+k] }
func (f *factors) r(k, j int) float64 { return f.R[k*f.cols+j] }

// NonFiniteError reports a merged value that is not a finite number where the base value
// was: an overflow of the output dtype, or NaN or infinity in the adapter.
type NonFiniteError struct {
	Tensor   string
	Row, Col int64
	Value    float64 // the value before rounding to the output dtype
	DType    safetensors.DType
}

func (e *NonFiniteError) Error() string {
	hint := "the adapter's scale or weights are out of range for this dtype (try --dtype fp32, or check the adapter)"
	if e.DType == safetensors.F32 || e.DType == safetensors.F64 {
		// A wider dtype would not help: the adapter holds NaN or infinity, or its scale
		// is absurd.
		hint = "the adapter holds NaN or infinity, or its scale (lora_alpha / r) is far out of range: check the adapter"
	}
	return fmt.Sprintf("merge: tensor %s: element [%d, %d] becomes %g, which is not a finite %s; %s",
		e.Tensor, e.Row, e.Col, e.Value, e.DType, hint)
}

// readRef fills buf with a referenced tensor's bytes from offset off within the tensor.
func readRef(in map[string]io.ReaderAt, ref mergeplan.Ref, off int64, buf []byte) error {
	r, ok := in[ref.File]
	if !ok {
		return fmt.Errorf("merge: no input for %s", ref.File)
	}
	if off < 0 || off+int64(len(buf)) > ref.Len {
		return fmt.Errorf("merge: read of %s outside the tensor", ref.Name)
	}
	if _, err := r.ReadAt(buf, ref.Offset+off); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("merge: reading %s from %s: %w", ref.Name, ref.File, err)
	}
	return nil
}

// decodeRef reads a whole (small) tensor as float64 values.
func decodeRef(in map[string]io.ReaderAt, ref mergeplan.Ref) ([]float64, error) {
	raw := make([]byte, ref.Len)
	if err := readRef(in, ref, 0, raw); err != nil {
		return nil, err
	}
	dec := decoderFor(ref.DType)
	if dec == nil {
		return nil, fmt.Errorf("merge: %s in %s is %s, not a float type", ref.Name, ref.File, ref.DType)
	}
	out := make([]float64, ref.Len/int64(size(ref.DType)))
	dec(out, raw)
	return out, nil
}

// blocks is the number of row blocks; span gives block k's rows.
func (m *tensor) blocks() int { return (m.rows + m.blockRows - 1) / m.blockRows }

func (m *tensor) span(k int) (int, int) {
	r0 := k * m.blockRows
	return r0, min(r0+m.blockRows, m.rows)
}
