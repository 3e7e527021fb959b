// Package merge computes merged shards. A merged shard is a pure function of the base
// shard's bytes, the adapter's tensors and the plan, exposed as an io.ReaderAt of known
// size that computes what is read, row block by row block. Writing it to disk, hashing
// it and uploading a part of it are all reads.
//
// Numbers: every output element is W + Σ s·(L·R) rounded once to the output dtype, to
// nearest, ties to even. The product is computed in float64 with a rigorous error bound
// per element (in the fused kernels, per row), and the few elements whose bound reaches
// a rounding boundary are recomputed, in double-double if need be, so each is the
// correctly rounded exact value, whichever kernel ran. Several low-rank deltas on one
// tensor are one product of their summed rank, s_k·L_k side by side and the R_k one
// under the other, with the bound for that rank. DoRA's V = W + ΔW (V += s·p for each
// delta in turn, p the kernels' fused multiply-add chain), norms and rescale are
// computed in float64 in a fixed order, then rounded once; a NaN among them is written
// as the dtype's default NaN. Tensors nothing touches are copied byte for byte.
package merge

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// blockElems is the number of elements a row block aims for: large enough to amortise
// the per-block work, small enough that a few blocks per core stay in a few megabytes.
const blockElems = 1 << 18

// fusedRows is the number of rows the fused kernels compute together.
const fusedRows = 6

// factorBytes caps the adapter matrices kept in memory: a sequential write needs only
// the current tensor's, parallel reads of different parts a few tensors'. The matrices
// of one tensor are always kept while it is computed, whatever their size.
const factorBytes = 16 << 20

// defaultCacheBytes is the default Options.CacheBytes.
const defaultCacheBytes = 16 << 20

// writeBuffer is Write's buffer for copied tensors and computed blocks.
const writeBuffer = 4 << 20

// PeakMemory estimates the memory computing a shard needs beyond the Go runtime's own:
// each job's working memory for one block, the block cache, the adapter matrices (the
// largest tensor's in full, plus the cache of others), and DoRA's column sums. None of
// it grows with the number or size of shards, only with the adapter's largest matrices.
func PeakMemory(s *mergeplan.Shard, opts Options) int64 {
	opts = opts.withDefaults()
	const perElem = 5*8 + 8 // float64 value, base, bound, product; raw bytes; write buffer share
	var largest int64
	for _, t := range s.Tensors {
		var f, rank int64
		rows, cols := t.Rows(), t.Cols()
		for _, d := range t.Deltas {
			rows, cols := d.Rows(&t), t.Cols()
			// L and R, their norms, the transposed copy made while loading, and R
			// packed for the fused kernels; an expert's, the packed rows of lora_B
			// read to pick its columns. Experts of one tensor are computed one by one.
			g := int64(d.Rank)*(rows+cols)*8*3 + (rows+cols)*8
			if d.Expert != nil {
				g += d.B.Rows() * d.B.Cols() * 8
				f = max(f, g)
				continue
			}
			f += g
			rank += int64(d.Rank)
		}
		if rank > 0 && len(t.Deltas) > 1 {
			f += rank*(rows+2*cols)*8 + (rows+cols)*8 // their concatenation (concat)
		}
		if t.DoRA != nil && t.DoRA.Axis == mergeplan.PerCol {
			f += int64(opts.Jobs+1) * t.Cols() * 8
		}
		switch {
		case t.Requant != nil && t.Requant.Of != nil:
			// Two experts requantized, the slabs, each job's run of 32 rows, and the
			// merged tensor's adapter matrices.
			of := t.Requant.Of
			f += int64(opts.Jobs+4)*mxSlabBytes(of.Shape) + int64(opts.Jobs)*32*of.Cols()*perElem + mxPinBytes
			for _, d := range of.Deltas {
				f += int64(d.Rank)*(of.Shape[1]+of.Cols())*8*3 + d.B.Rows()*d.B.Cols()*8
			}
		case t.Dequant != nil && t.Dequant.MXFP4:
			// The slab cache keeps two experts, and each job may be reading another.
			f += int64(opts.Jobs+2) * mxSlabBytes(t.Shape)
		case t.Dequant != nil:
			f += t.Dequant.Scale.Rows() * t.Dequant.Scale.Cols() * 8
		}
		largest = max(largest, f)
	}
	return int64(opts.Jobs)*blockElems*perElem + opts.CacheBytes + factorBytes + largest + writeBuffer
}

// Options tune how a shard is computed. They never change its bytes.
type Options struct {
	Jobs       int    // goroutines computing a block; default GOMAXPROCS
	CacheBytes int64  // computed blocks kept for repeated reads; default 16 MiB
	Kernel     string // KernelAuto, KernelGo, KernelAVX2 or KernelAVX512; all give the same bytes
}

// Shard is a merged shard computed on demand. It is safe for concurrent use.
type Shard struct {
	plan    *mergeplan.Shard
	prefix  []byte
	size    int64
	tensors []*tensor
	jobs    int
	pool    *sync.Pool
	blocks  *lru[blockKey, []byte]
	ahead   *readAhead
	packed  *lru[packKey, []float64]      // expert lora_B matrices, expert by expert
	slabs   *lru[slabKey, *mxSlab]        // MXFP4 sources' experts, as stored (mxfp4.go)
	mxKeeps map[*mergeplan.Tensor]*mxKeep // MXFP4 tensors requantized (mxkeep.go)
	pinLeft atomic.Int64                  // of mxPinBytes, for their scales
}

type blockKey struct{ tensor, block int }

// New prepares the merged shard described by s. in maps every file the plan's refs name
// (the base shard, mergeplan.AdapterFile) to its contents.
func New(s *mergeplan.Shard, in map[string]io.ReaderAt, opts Options) (*Shard, error) {
	opts = opts.withDefaults()
	sh := &Shard{
		plan:   s,
		prefix: s.Layout.Prefix,
		size:   s.Layout.Size,
		jobs:   opts.Jobs,
		pool:   &sync.Pool{New: func() any { return new(scratch) }},
		blocks: newLRU[blockKey, []byte](opts.CacheBytes),
	}
	factors := newLRU[factorKey, *factors](factorBytes)
	packed := newLRU[packKey, []float64](factorBytes)
	sh.packed, sh.mxKeeps = packed, map[*mergeplan.Tensor]*mxKeep{}
	sh.pinLeft.Store(mxPinBytes)
	sh.slabs = newLRU[slabKey, *mxSlab](2 * largestSlab(s))
	kern, err := kernelFor(opts.Kernel)
	if err != nil {
		return nil, err
	}
	for i := range s.Tensors {
		segs, err := segments(&s.Tensors[i])
		if err != nil {
			return nil, err
		}
		for _, seg := range segs {
			n := s.Layout.Tensors[i].Len()
			if len(segs) > 1 {
				n = seg.t.Rows() * seg.t.Cols() * int64(size(seg.t.DType))
			}
			m, err := sh.newTensor(seg.t, s.Layout.DataOffset()+s.Layout.Tensors[i].Begin+seg.off, n, in, caches{factors, packed}, kern)
			if err != nil {
				return nil, err
			}
			sh.tensors = append(sh.tensors, m)
		}
	}
	// A requantized weight's scales, when in the same shard, come from the weight's own
	// first pass rather than one of their own.
	weights := map[string]*tensor{}
	for _, t := range sh.tensors {
		if t.t.Requant != nil {
			weights[t.t.Name] = t
		}
	}
	for _, t := range sh.tensors {
		if t.t.ScaleOf == nil {
			continue
		}
		if w, ok := weights[t.t.ScaleOf.Name]; ok {
			t.of = w
		}
	}
	sh.ahead = newReadAhead(sh, opts.CacheBytes)
	return sh, nil
}

// newTensor prepares the computation of output tensor t, whose bytes start at off in
// the shard.
// caches are the adapter matrices a shard's tensors share: low-rank factors, and
// expert lora_B matrices laid out expert by expert.
type caches struct {
	factors *lru[factorKey, *factors]
	packed  *lru[packKey, []float64]
}

func (sh *Shard) newTensor(t *mergeplan.Tensor, off, n int64, in map[string]io.ReaderAt, c caches, kern kernel) (*tensor, error) {
	if t.Requant != nil && t.Requant.Of != nil {
		return sh.newMXOutput(t, off, n, in, c, kern)
	}
	refs := []mergeplan.Ref{t.Source}
	for _, d := range t.Deltas {
		refs = append(refs, d.A, d.B)
	}
	for _, p := range t.Patches {
		refs = append(refs, p.Values)
	}
	if t.DoRA != nil {
		refs = append(refs, t.DoRA.Magnitude)
	}
	if t.Dequant != nil {
		refs = append(refs, t.Dequant.Scale)
	}
	if w := t.ScaleOf; w != nil {
		refs = append(refs, w.Source, w.Dequant.Scale)
		for _, d := range w.Deltas {
			refs = append(refs, d.A, d.B)
		}
	}
	for _, r := range refs {
		if r.File != "" && in[r.File] == nil {
			return nil, fmt.Errorf("merge: %s needs %s, which was not given", t.Name, r.File)
		}
	}
	m := &tensor{
		t:       t,
		off:     off,
		size:    n,
		rows:    int(t.Rows()),
		cols:    int(t.Cols()),
		in:      in,
		factors: c.factors,
		packed:  c.packed,
		kern:    kern,
	}
	if !t.Copy() {
		m.dec, m.out = decoderFor(t.Source.DType), formatFor(t.DType)
		if t.Dequant != nil && t.Dequant.MXFP4 {
			m.dec = func([]float64, []byte) {} // mxfp4 computes the values (dequant)
		}
		if m.dec == nil || (m.out == nil && t.Requant == nil && t.ScaleOf == nil) {
			return nil, fmt.Errorf("merge: %s: cannot compute %s from %s", t.Name, t.DType, t.Source.DType)
		}
		m.blockRows = max(1, blockElems/max(1, m.cols))
		m.patch = map[int64]patch{}
		for _, p := range t.Patches {
			for i, idx := range p.Indices {
				m.patch[idx] = patch{values: p.Values, row: int64(i)}
			}
		}
		if t.DoRA != nil && t.DoRA.Axis == mergeplan.PerCol {
			m.colScale = m.columnScale(sh.jobs, sh.pool)
		}
		if t.Dequant != nil {
			if t.Dequant.MXFP4 {
				m.slabs = sh.slabs // source() reads MXFP4 sources expert by expert when set
			}
			if err := m.prepareDequant(); err != nil {
				return nil, err
			}
		}
		if t.Requant != nil {
			if t.Dequant == nil || len(t.Patches) > 0 || t.DoRA != nil || t.DType != safetensors.F8E4M3 {
				return nil, fmt.Errorf("merge: %s: requantization needs a block-FP8 source merged with low-rank deltas only", t.Name)
			}
			m.prepareRequant(sh.jobs, sh.pool)
		}
		if w := t.ScaleOf; w != nil {
			if w.Requant == nil {
				return nil, fmt.Errorf("merge: %s: the scales of %s, which is not requantized", t.Name, w.Name)
			}
			of, err := sh.newTensor(w, 0, 0, in, c, kern) // expert deltas need c.packed too
			if err != nil {
				return nil, err
			}
			m.of = of
			m.blockRows = m.rows
		}
		if lowRank(t.Deltas) && len(t.Patches) == 0 && t.DoRA == nil && t.Dequant == nil && t.Requant == nil {
			m.fused = true
			// The fused kernels take rows 6 at a time, and the rest one by one,
			// at a third of the speed.
			if m.blockRows > fusedRows {
				m.blockRows -= m.blockRows % fusedRows
			}
		}
	}
	return m, nil
}

func (o Options) withDefaults() Options {
	if o.Jobs <= 0 {
		o.Jobs = runtime.GOMAXPROCS(0)
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = defaultCacheBytes
	}
	return o
}

// Size is the merged shard's size in bytes.
func (s *Shard) Size() int64 { return s.size }

// ReadAt reads the merged bytes at off, computing the row blocks it covers.
func (s *Shard) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("merge: negative offset")
	}
	n := 0
	for len(p) > 0 {
		if off >= s.size {
			return n, io.EOF
		}
		k, err := s.readSome(p, off)
		n += k
		off += int64(k)
		p = p[k:]
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// readSome reads what it can at off from one piece: the header, a copied tensor, or one
// computed block.
func (s *Shard) readSome(p []byte, off int64) (int, error) {
	if off < int64(len(s.prefix)) {
		return copy(p, s.prefix[off:]), nil
	}
	i := sort.Search(len(s.tensors), func(i int) bool {
		t := s.tensors[i]
		return t.off+t.size > off
	})
	t := s.tensors[i]
	rel := off - t.off
	tlen := t.size
	if t.t.Copy() {
		n := int(min(int64(len(p)), tlen-rel))
		if err := readRef(t.in, t.t.Source, rel, p[:n]); err != nil {
			return 0, err
		}
		return n, nil
	}
	blockBytes := int64(t.blockRows) * int64(t.cols*size(t.t.DType))
	key := blockKey{i, int(rel / blockBytes)}
	b, err := s.blocks.get(key, func() ([]byte, int64, error) { return s.computeBlock(key, true) })
	if err != nil {
		return 0, err
	}
	s.ahead.read(s, key)
	return copy(p, b[rel-int64(key.block)*blockBytes:]), nil
}

// computeBlock computes a block, on every job (split) or on one.
func (s *Shard) computeBlock(key blockKey, split bool) ([]byte, int64, error) {
	t := s.tensors[key.tensor]
	r0, r1 := t.span(key.block)
	buf := make([]byte, (r1-r0)*t.cols*size(t.t.DType))
	if !split {
		acc := s.pool.Get().(*scratch)
		defer s.pool.Put(acc)
		return buf, int64(len(buf)), t.block(r0, r1, buf, acc)
	}
	return buf, int64(len(buf)), s.compute(t, r0, r1, buf)
}

// compute fills dst with rows [r0, r1) of t, splitting the rows across the jobs.
func (s *Shard) compute(t *tensor, r0, r1 int, dst []byte) error {
	rowBytes := t.cols * size(t.t.DType)
	parts := min(s.jobs, r1-r0)
	if parts <= 1 {
		acc := s.pool.Get().(*scratch)
		defer s.pool.Put(acc)
		return t.block(r0, r1, dst, acc)
	}
	var eg errgroup.Group
	per := (r1 - r0 + parts - 1) / parts
	if t.fused && per > fusedRows {
		per += fusedRows - 1 - (per-1)%fusedRows // whole groups of rows for the kernels
	}
	for a := r0; a < r1; a += per {
		b := min(a+per, r1)
		eg.Go(func() error {
			acc := s.pool.Get().(*scratch)
			defer s.pool.Put(acc)
			return t.block(a, b, dst[(a-r0)*rowBytes:(b-r0)*rowBytes], acc)
		})
	}
	return eg.Wait()
}

// scratch is one goroutine's working memory, reused across blocks.
type scratch struct {
	v, w, e []float64
	a64     []float64
	raw     []byte
	flags   []uint8
	lp      []float64
	bound   []float64
	thr     []uint32
	args    *fusedArgs
	round   *roundArgs
}

func (s *scratch) values(n int) []float64       { s.v = grow(s.v, n); return s.v[:n] }
func (s *scratch) base(n int) []float64         { s.w = grow(s.w, n); return s.w[:n] }
func (s *scratch) bounds(n int) []float64       { s.e = grow(s.e, n); return s.e[:n] }
func (s *scratch) f64(n int) []float64          { s.a64 = grow(s.a64, n); return s.a64[:n] }
func (s *scratch) bytes(n int) []byte           { s.raw = grow(s.raw, n); return s.raw[:n] }
func (s *scratch) flagBytes(n int) []uint8      { s.flags = grow(s.flags, n); return s.flags[:n] }
func (s *scratch) packed(n int) []float64       { s.lp = grow(s.lp, n); return s.lp[:n] }
func (s *scratch) rowBounds(n int) []float64    { s.bound = grow(s.bound, n); return s.bound[:n] }
func (s *scratch) rowThresholds(n int) []uint32 { s.thr = grow(s.thr, n); return s.thr[:n] }

func grow[T any](x []T, n int) []T {
	if cap(x) < n {
		return make([]T, n)
	}
	return x
}
