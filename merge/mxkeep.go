package merge

import (
	"fmt"
	"io"
	"math"
	"math/big"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// Requantization into MXFP4 (--quantized keep on a gpt-oss base). A touched expert
// parameter P (E, in, out) is merged as in bf16 mode, W + s·ΔW from the exact
// dequantization, then written back as P_blocks (E, out, in/32, 16) and P_scales
// (E, out, in/32): the block of stored row (e, c) and group g holds elements
// (e, 32g … 32g+31, c) of P, 32 rows of the merged tensor in one column. A run of 32
// rows therefore holds whole blocks, so each block's scale is chosen from values at
// hand, without a first pass; but one expert's rows scatter over all its stored rows,
// so an expert is computed whole (in row blocks, on every job) into its packed codes
// and scales, in the stored layout, and the output's blocks are copied out of it.
// Both outputs read the same expert results (a small cache of them). The scales,
// written after the blocks in gpt-oss's files, are also kept apart, up to mxPinBytes a
// shard (1/17 of an expert's result: 32 MiB holds 60 gpt-oss-120b gate_up_proj
// experts' scales, or every expert of a smaller model); those of experts beyond it
// are recomputed, a second merge of that expert (as FP8 keep's two passes are), so
// memory stays a few experts' packed bytes plus that budget.
//
// Each block's scale is the smallest power of two 2^(k−127), k in 0…254, with which
// every exact value of the block divided by it is at most 6 (E2M1's largest): nothing
// saturates, and half that scale would. Where the values' error bounds straddle a
// power of two, the exact values decide. An all-zero block keeps the base's scale
// byte. Values are rounded to the nearest E2M1 point {0, 0.5, 1, 1.5, 2, 3, 4, 6},
// ties to the even code (mantissa bit 0); a value that rounds to zero is written +0
// (code 0), whatever its sign; below 2^-127·6 a block's scale is 2^-127 and its values
// round as they fall. docs/quantized.md has the sources.

// mxPinBytes bounds the requantized scales a shard keeps for its _scales outputs.
const mxPinBytes = 32 << 20

// mxKeep requantizes one merged MXFP4 tensor, expert by expert, for its _blocks and
// _scales outputs in one shard.
type mxKeep struct {
	of                       *mergeplan.Tensor
	parts                    []*tensor // per expert, the segment of of computing it
	first                    []int     // expert e's first row in parts[e]
	experts, in, out, groups int
	jobs                     int
	sh                       *Shard
	done                     *lru[int, *mxQuant]
	mu                       sync.Mutex
	stats                    []rqStat // per expert, once computed
	pinned                   [][]byte // per expert, its scales, kept within the shard's budget
}

// mxQuant is one expert requantized, as stored.
type mxQuant struct {
	codes, scales []byte
}

func (q *mxQuant) bytes() int64 { return int64(len(q.codes) + len(q.scales)) }

// newMXOutput prepares t, the _blocks or _scales output of a requantized MXFP4 tensor.
func (sh *Shard) newMXOutput(t *mergeplan.Tensor, off, n int64, in map[string]io.ReaderAt, c caches, kern kernel) (*tensor, error) {
	of := t.Requant.Of
	k, ok := sh.mxKeeps[of]
	if !ok {
		var err error
		if k, err = sh.newMXKeep(of, in, c, kern); err != nil {
			return nil, err
		}
		sh.mxKeeps[of] = k
	}
	want := []int64{int64(k.experts), int64(k.out), int64(k.groups), 16}
	if t.Requant.Scales {
		want = want[:3]
	}
	if fmt.Sprint(t.Shape) != fmt.Sprint(want) {
		return nil, fmt.Errorf("merge: %s: shape %v, want %v for %s %v", t.Name, t.Shape, want, of.Name, of.Shape)
	}
	m := &tensor{t: t, off: off, size: n, rows: int(t.Rows()), cols: int(t.Cols()), in: in, factors: c.factors, kern: kern, mx: k}
	m.blockRows = max(1, blockElems/max(1, m.cols))
	return m, nil
}

func (sh *Shard) newMXKeep(of *mergeplan.Tensor, in map[string]io.ReaderAt, c caches, kern kernel) (*mxKeep, error) {
	if of.Dequant == nil || !of.Dequant.MXFP4 || len(of.Shape) != 3 || of.Shape[1]%32 != 0 || len(of.Patches) > 0 || of.DoRA != nil {
		return nil, fmt.Errorf("merge: %s: MXFP4 requantization needs an MXFP4 expert tensor merged with low-rank deltas only", of.Name)
	}
	E, rows, out := int(of.Shape[0]), int(of.Shape[1]), int(of.Shape[2])
	k := &mxKeep{of: of, experts: E, in: rows, out: out, groups: rows / 32, jobs: sh.jobs, sh: sh,
		parts: make([]*tensor, E), first: make([]int, E), stats: make([]rqStat, E), pinned: make([][]byte, E)}
	perExpert := int64(out) * int64(rows) * 17 / 32 // codes and scales
	k.done = newLRU[int, *mxQuant](2 * perExpert)
	segs, err := segments(of)
	if err != nil {
		return nil, err
	}
	for _, seg := range segs {
		m, err := sh.newTensor(seg.t, 0, 0, in, c, kern)
		if err != nil {
			return nil, err
		}
		r0 := int(seg.off / int64(out*size(of.DType)))
		if r0%rows != 0 || len(seg.t.Shape) != 3 {
			return nil, fmt.Errorf("merge: %s: a segment starts at row %d, inside an expert", of.Name, r0)
		}
		for e := range int(seg.t.Shape[0]) {
			k.parts[r0/rows+e] = m
			k.first[r0/rows+e] = e * rows
		}
	}
	return k, nil
}

// write fills dst with rows [r0, r1) of the _blocks (or _scales) output: bytes copied
// from the experts they fall in.
func (k *mxKeep) write(scales bool, r0, r1, cols int, dst []byte) error {
	per := k.out * k.groups * 16
	if scales {
		per = k.out * k.groups
	}
	a, b := r0*cols, r1*cols
	for a < b {
		e := a / per
		k.mu.Lock()
		src := k.pinned[e]
		k.mu.Unlock()
		if !scales || src == nil {
			q, err := k.expert(e)
			if err != nil {
				return err
			}
			src = q.codes
			if scales {
				src = q.scales
			}
		}
		off := a - e*per
		a += copy(dst[a-r0*cols:b-r0*cols], src[off:])
	}
	return nil
}

func (k *mxKeep) expert(e int) (*mxQuant, error) {
	return k.done.get(e, func() (*mxQuant, int64, error) {
		q, err := k.compute(e)
		if err != nil {
			return nil, 0, err
		}
		return q, q.bytes(), nil
	})
}

// compute merges expert e in runs of whole 32-row groups, on every job, and
// requantizes it.
func (k *mxKeep) compute(e int) (*mxQuant, error) {
	m := k.parts[e]
	br := max(32, m.blockRows-m.blockRows%32)
	q := &mxQuant{codes: make([]byte, k.out*k.groups*16), scales: make([]byte, k.out*k.groups)}
	chunks := (k.in + br - 1) / br
	stats := make([]rqStat, chunks)
	var eg errgroup.Group
	eg.SetLimit(k.jobs)
	for c := range chunks {
		eg.Go(func() error {
			acc := k.sh.pool.Get().(*scratch)
			defer k.sh.pool.Put(acc)
			j0, j1 := c*br, min((c+1)*br, k.in)
			r0 := k.first[e] + j0
			v, w, eb, err := m.values(r0, r0+j1-j0, acc)
			if err != nil {
				return err
			}
			return k.quantize(m, e, j0, j1, v, w, eb, q, &stats[c])
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	var st rqStat
	for _, s := range stats { // in order: the sums do not depend on the jobs
		st.add(s)
	}
	k.mu.Lock()
	k.stats[e] = st
	if n := int64(len(q.scales)); k.pinned[e] == nil {
		if k.sh.pinLeft.Add(-n) >= 0 {
			k.pinned[e] = q.scales
		} else {
			k.sh.pinLeft.Add(n)
		}
	}
	k.mu.Unlock()
	return q, nil
}

// quantize requantizes rows [j0, j1) of expert e (whole 32-row groups): v the merged
// values, w the dequantized base, eb their error bounds.
func (k *mxKeep) quantize(m *tensor, e, j0, j1 int, v, w, eb []float64, q *mxQuant, st *rqStat) error {
	out, g := k.out, k.groups
	slab, err := m.slab(k.first[e] / k.in) // the base's scales, for all-zero blocks
	if err != nil {
		return err
	}
	hi, lo := make([]float64, out), make([]float64, out)
	for j := j0; j < j1; j += 32 {
		gi := j / 32
		clear(hi)
		clear(lo)
		for r := 0; r < 32; r++ {
			o := (j - j0 + r) * out
			for c, x := range v[o : o+out] {
				if math.IsNaN(x) || math.IsInf(x, 0) {
					return fmt.Errorf("merge: %s: element [%d, %d, %d] becomes %g, which MXFP4 cannot hold: the adapter holds NaN or infinity, or its scale is far out of range",
						k.of.Name, e, j+r, c, x)
				}
				a := math.Abs(x)
				hi[c] = max(hi[c], (a+eb[o+c])*(1+0x1p-50))
				lo[c] = max(lo[c], (a-eb[o+c])*(1-0x1p-50))
			}
		}
		for c := 0; c < out; c++ {
			bi := c*g + gi
			if hi[c] == 0 {
				q.scales[bi] = slab.scales[bi] // an all-zero block: any scale will do
				continue
			}
			sHi, okHi := e8m0Needed(hi[c])
			sLo, _ := e8m0Needed(lo[c])
			if okHi && sHi == sLo {
				q.scales[bi] = sHi
				continue
			}
			s, err := k.exactScale(m, e, j, j0, c, sLo, v, w, eb)
			if err != nil {
				return err
			}
			q.scales[bi] = s
		}
		for c := 0; c < out; c++ {
			sc := q.scales[c*g+gi]
			hi[c], lo[c] = math.Ldexp(1, int(sc)-127), math.Ldexp(1, 127-int(sc)) // the scale, its inverse: exact
		}
		for r := 0; r < 32; r++ {
			jj := j + r
			o := (jj - j0) * out
			at, shift := (jj%32)/2, uint(jj%2)*4
			for c := 0; c < out; c++ {
				i := o + c
				bi := c*g + gi
				s := hi[c]
				x := v[i]
				y := x * lo[c]
				slack := eb[i]*lo[c]*(1+0x1p-50) + math.Abs(y)*0x1p-52
				code, clear := e2m1Near(y, slack)
				if !clear {
					ex, err := m.exact(k.first[e]+jj, c, w[i])
					if err != nil {
						return err
					}
					code = e2m1Exact(ex, s)
				}
				q.codes[bi*16+at] |= code << shift
				st.count(w[i], x, e2m1Value(code)*s)
			}
		}
	}
	return nil
}

// e8m0Needed is the smallest E8M0 code k with 6·2^(k−127) ≥ a (0 for a ≤ 6·2^-127),
// and false when a is beyond 6·2^127.
func e8m0Needed(a float64) (byte, bool) {
	if !(a > math.Ldexp(6, -127)) {
		return 0, true
	}
	_, x := math.Frexp(a / 6)
	k := x + 127
	for k > 0 && math.Ldexp(6, k-1-127) >= a {
		k--
	}
	for k <= 254 && math.Ldexp(6, k-127) < a {
		k++
	}
	if k > 254 {
		return 0, false
	}
	return byte(k), true
}

// exactScale decides the scale of the block (expert e, rows j … j+31, column c) from
// its exact values, where their bounds straddle a power of two: the smallest code at
// least from whose 6·2^(code−127) no exact value exceeds.
func (k *mxKeep) exactScale(m *tensor, e, j, j0, c int, from byte, v, w, eb []float64) (byte, error) {
	code := int(from)
	for r := 0; r < 32; r++ {
		i := (j-j0+r)*k.out + c
		if math.Abs(v[i])+eb[i] <= math.Ldexp(6, code-127)*(1-0x1p-50) {
			continue
		}
		ex, err := m.exact(k.first[e]+j+r, c, w[i])
		if err != nil {
			return 0, err
		}
		z := exactAbs(ex)
		for code <= 254 && z.Cmp(new(big.Float).SetFloat64(math.Ldexp(6, code-127))) > 0 {
			code++
		}
		if code > 254 {
			return 0, fmt.Errorf("merge: %s: expert %d, column %d, rows %d…%d: a value of %g is beyond MXFP4's largest, 6·2^127", k.of.Name, e, c, j, j+31, ex.hi)
		}
	}
	return byte(code), nil
}

func exactAbs(x dd) *big.Float {
	z := new(big.Float).SetPrec(256).SetFloat64(x.hi)
	z.Add(z, new(big.Float).SetPrec(256).SetFloat64(x.lo))
	return z.Abs(z)
}

// e2m1Mids are the midpoints between consecutive E2M1 magnitudes, codes 0 … 7.
var e2m1Mids = [7]float64{0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5}

// e2m1Quarters maps ⌊4a⌋ to the E2M1 magnitude code nearest a: the midpoints times 4
// are the integers 1, 3, 5, 7, 10, 14 and 20, so the code is the same over each
// [k, k+1) but at a midpoint k itself.
var e2m1Quarters = [25]byte{0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7}

// e2m1Mag is the E2M1 magnitude code (0 … 7) nearest a ≥ 0, ties to the even code;
// beyond 6, 7 (the caller's scale keeps exact values at most 6).
func e2m1Mag(a float64) byte {
	t := a * 4 // exact
	if !(t < 24) {
		return 7
	}
	k := int(t)
	c := e2m1Quarters[k]
	if t == float64(k) && k > 0 && e2m1Quarters[k-1] != c { // a midpoint: the even code
		c -= c & 1
	}
	return c
}

// e2m1Near is the E2M1 code nearest y (+0 for zero), and whether every value within
// slack of y rounds to it too.
func e2m1Near(y, slack float64) (byte, bool) {
	a := math.Abs(y)
	c := e2m1Mag(a)
	clear := (c == 0 || a-slack > e2m1Mids[c-1]) && (c == 7 || a+slack < e2m1Mids[c])
	if c != 0 && y < 0 {
		c |= 8
	}
	return c, clear && (c&7 != 7 || a+slack <= 6)
}

// e2m1Exact is the E2M1 code nearest (x.hi + x.lo) / s, s a power of two, decided in
// 256-bit arithmetic (the midpoints times s are exact).
func e2m1Exact(x dd, s float64) byte {
	z := exactAbs(x)
	z.Quo(z, new(big.Float).SetFloat64(s))
	c := byte(7)
	for i, mid := range e2m1Mids {
		cmp := z.Cmp(new(big.Float).SetFloat64(mid))
		if cmp < 0 {
			c = byte(i)
			break
		}
		if cmp == 0 {
			c = byte(i + i&1)
			break
		}
	}
	if c != 0 && (x.hi < 0 || (x.hi == 0 && x.lo < 0)) {
		c |= 8
	}
	return c
}

func e2m1Value(c byte) float64 { return safetensors.E2M1Table()[c&15] }

// requantStats is what survived the requantization of the experts computed so far.
func (k *mxKeep) requantStats() RequantStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	return requantStats(k.of.Name, "MXFP4", k.stats)
}
