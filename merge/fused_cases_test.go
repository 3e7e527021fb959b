package merge_test

// The trials of TestFusedKernels: shapes, dtypes, factors and weights, including
// specials and forced rounding ties.

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

const (
	fusedModule = "layer.proj"
	fusedWeight = fusedModule + ".weight"
	fusedOther  = "layer.norm.weight" // untouched
)

// Shapes and ranks the trials cycle through. The list lengths are coprime with each
// other and with the dtype cycles, so that the combinations vary. Columns below 8 have
// no strip for the fused assembly; the others mix whole strips of 8 with remainders.
var (
	fusedRows  = []int{1, 5, 6, 7, 13, 40, 2, 12, 3, 19, 33, 11, 37}
	fusedCols  = []int{1, 3, 7, 8, 15, 16, 17, 63, 64, 65, 99, 5, 24, 33, 47, 96, 100}
	fusedRanks = []int{1, 2, 3, 7, 8, 16, 31, 64, 100, 256}
)

type fusedMode int

const (
	modeRandom       fusedMode = iota // normal weights and factors
	modeSpecials                      // the same with NaN, infinities, zeros, subnormals, near-max values
	modeTies                          // power-of-two factors and weights placed on and near rounding ties
	modeTiesSpecials                  // ties with specials mixed in
)

func (m fusedMode) String() string {
	return [...]string{"random", "specials", "ties", "ties+specials"}[m]
}

func (m fusedMode) specials() bool { return m == modeSpecials || m == modeTiesSpecials }
func (m fusedMode) ties() bool     { return m == modeTies || m == modeTiesSpecials }

// fusedCase is one trial: a single Linear weight W (rows, cols) with one LoRA delta
// s·B·A, A (rank, cols) and B (rows, rank).
type fusedCase struct {
	trial              int
	mode               fusedMode
	rows, cols, rank   int
	base, adapter, out safetensors.DType
	alpha, scale       float64
	jobs               int
	W, A, B            []float64 // exactly what the files store (W decoded, so NaNs are as stored)
	D                  []dd      // the exact delta s·(B·A), by the reference
	other              []float64 // the untouched tensor
	kinds              []string  // what was put in each element of W, for messages
}

func (c *fusedCase) String() string {
	return fmt.Sprintf("trial %d (%s): shape (%d, %d), rank %d, base %s, adapter %s, output %s, alpha %g (scale %g), jobs %d",
		c.trial, c.mode, c.rows, c.cols, c.rank, c.base, c.adapter, c.out, c.alpha, c.scale, c.jobs)
}

func maxFinite(dt safetensors.DType) float64 {
	switch dt {
	case safetensors.BF16:
		return 0x1.fep127
	case safetensors.F16:
		return 65504
	}
	return math.MaxFloat32
}

// representable reports whether v is exactly a value of every dtype given.
func representable(v float64, dts ...safetensors.DType) bool {
	for _, dt := range dts {
		if fixture.Round(dt, v) != v {
			return false
		}
	}
	return true
}

func randSign(r *rand.Rand, v float64) float64 {
	if r.IntN(2) == 0 {
		return -v
	}
	return v
}

func signedZero(r *rand.Rand) float64 { return randSign(r, 0) }

// newFusedCase builds trial i, deterministically.
func newFusedCase(i int) *fusedCase {
	r := rand.New(rand.NewPCG(0xf05ed, uint64(i)))
	c := &fusedCase{
		trial:   i,
		mode:    fusedMode(i / 2 % 4),
		rows:    fusedRows[i%len(fusedRows)],
		cols:    fusedCols[i%len(fusedCols)],
		rank:    fusedRanks[i%len(fusedRanks)],
		base:    baseDTypes[i%3],
		adapter: adapterDTypes[i/3%2],
		jobs:    1 + i%4,
	}
	// Mostly the base's dtype; a quarter each converts to one of the others, so that all
	// nine input and output pairs of the fused kernels run.
	switch i / 6 % 4 {
	case 0, 1:
		c.out = c.base
	case 2:
		c.out = baseDTypes[(i+1)%3]
	case 3:
		c.out = baseDTypes[(i+2)%3]
	}
	if c.mode.ties() {
		c.tieFactors(r)
	} else {
		c.randomFactors(r)
	}
	c.scale = c.alpha / float64(c.rank)
	n := c.rows * c.cols
	c.D = exactValues(make([]float64, n), c.rows, c.cols, []refDelta{c.refDelta()})
	c.W = make([]float64, n)
	c.kinds = make([]string, n)
	if c.mode.ties() {
		c.tieWeights(r)
	} else {
		c.randomWeights(r)
	}
	if c.mode.specials() {
		c.addSpecials(r)
	}
	// The reference must see what the file holds: NaN payloads and all.
	c.W = fixture.Decode(c.base, fixture.Encode(c.base, c.W))
	c.other = fixture.Decode(c.base, fixture.Encode(c.base, append(fixture.NewRand(uint64(i)).Normal(c.cols, 0.1, c.base), math.NaN(), math.Copysign(0, -1))))
	return c
}

func (c *fusedCase) refDelta() refDelta {
	a := &fixture.Tensor{Shape: []int64{int64(c.rank), int64(c.cols)}, Values: c.A}
	b := &fixture.Tensor{Shape: []int64{int64(c.rows), int64(c.rank)}, Values: c.B}
	return linearDelta(c.alpha/float64(c.rank), c.rank, a, b)
}

// randomFactors: A ~ N(0, 0.1²), B ~ N(0, 0.01²), with zero rows and columns (a delta
// exactly zero), rows of large values (deltas as large as the weights), and with
// specials, rows of tiny values (deltas in the output's subnormal range) and zeros and
// subnormals among the factors.
func (c *fusedCase) randomFactors(r *rand.Rand) {
	c.alpha = []float64{16, 32, 7.5, float64(c.rank), 3}[r.IntN(5)]
	s := c.alpha / float64(c.rank)
	norm := func(std float64) float64 { return fixture.Round(c.adapter, r.NormFloat64()*std) }
	c.A = make([]float64, c.rank*c.cols)
	c.B = make([]float64, c.rows*c.rank)
	for i := range c.A {
		c.A[i] = norm(0.1)
	}
	_, emin := format(c.out)
	for o := 0; o < c.rows; o++ {
		row := c.B[o*c.rank : (o+1)*c.rank]
		std := 0.01
		switch r.IntN(10) {
		case 0:
			std = 0
		case 1:
			std = 1
		case 2:
			if c.mode.specials() {
				// |delta| about a quarter of the output's smallest normal.
				std = math.Ldexp(1, emin-2) / (s * math.Sqrt(float64(c.rank)) * 0.1)
			}
		}
		for k := range row {
			row[k] = norm(std)
			if std == 0 {
				row[k] = signedZero(r)
			}
		}
	}
	for j := 0; j < c.cols; j++ {
		if r.IntN(12) == 0 {
			for k := 0; k < c.rank; k++ {
				c.A[k*c.cols+j] = signedZero(r)
			}
		}
	}
	if c.mode.specials() {
		prec, amin := format(c.adapter)
		sub := math.Ldexp(1, amin-int(prec)+1)
		for _, x := range [][]float64{c.A, c.B} {
			for i := range x {
				switch r.IntN(40) {
				case 0:
					x[i] = signedZero(r)
				case 1:
					x[i] = randSign(r, sub*float64(1+r.IntN(5)))
				case 2:
					x[i] = fixture.Round(c.adapter, randSign(r, math.Ldexp(1+r.Float64(), -120)))
				}
			}
		}
	}
}

// tieFactors makes factors of signed powers of two, and zeros, with a power-of-two scale,
// so that every delta is exact in float64 or double-double and the weights can be
// placed to put W + delta on a rounding tie of the output, or a few float64 units off
// one (tieWeights). For element (o, j):
//
//   - k = 0 is the main term, 2^h with h = log2 s − b0[o] − a0[j], which places a
//     weight in binade h + prec(out): then the main term is half a unit of the output;
//   - k = 1 is a tail κ[j] + ρ[o] bits below it: from 8 bits below the weight's float64
//     unit to 8 units above it (a near tie, which a float64 sum may round onto the tie);
//   - k ≥ 2 add up to three higher bits within the output's precision.
//
// A few rows are tiny, for ties in and at the edge of the output's subnormal range, and
// a few rows and columns are zero.
func (c *fusedCase) tieFactors(r *rand.Rand) {
	p, emin := format(c.out)
	prec := int(p)
	sig := r.IntN(3) - 1
	c.alpha = math.Ldexp(float64(c.rank), sig)
	L := prec + 4 + sig // b0 + a0 ranges over [L, L+8]: weights in [2^-12, 2^-3)
	pow := func(e int) float64 { return fixture.Round(c.adapter, randSign(r, math.Ldexp(1, -e))) }
	c.A = make([]float64, c.rank*c.cols)
	c.B = make([]float64, c.rows*c.rank)
	for j := 0; j < c.cols; j++ {
		if r.IntN(16) == 0 {
			for k := 0; k < c.rank; k++ {
				c.A[k*c.cols+j] = signedZero(r)
			}
			continue
		}
		a0 := L/2 + r.IntN(5)
		c.A[j] = pow(a0)
		if c.rank > 1 {
			c.A[c.cols+j] = pow(a0 + 52 - prec - 3 + r.IntN(6))
		}
		for k := 2; k < c.rank; k++ {
			c.A[k*c.cols+j] = signedZero(r)
			if r.IntN(2) == 0 {
				c.A[k*c.cols+j] = pow(a0)
			}
		}
	}
	for o := 0; o < c.rows; o++ {
		row := c.B[o*c.rank : (o+1)*c.rank]
		for k := range row {
			row[k] = signedZero(r)
		}
		var b0 int
		switch r.IntN(16) {
		case 0:
			continue // zero row
		case 1, 2:
			// The main term about half the output's subnormal quantum, 2^(emin-prec).
			b0 = sig - (L/2 + 2) - (emin - prec) + r.IntN(3) - 1
		default:
			b0 = L - L/2 + r.IntN(5)
		}
		row[0] = pow(b0)
		if c.rank > 1 && r.IntN(5) < 3 {
			row[1] = pow(b0 + r.IntN(7))
		}
		for n := 0; n < 3 && c.rank > 2; n++ {
			if r.IntN(4) == 0 {
				row[2+r.IntN(c.rank-2)] = pow(b0 - r.IntN(prec-1))
			}
		}
	}
}

// randomWeights: W ~ N(0, 0.02²); in rows whose delta is tiny, values in the output's
// subnormal range so that the results are subnormal too.
func (c *fusedCase) randomWeights(r *rand.Rand) {
	p, emin := format(c.out)
	q := math.Ldexp(1, emin-int(p)+1)
	for i := range c.W {
		d := math.Abs(c.D[i].hi)
		switch {
		case d != 0 && d < math.Ldexp(1, emin):
			c.W[i] = fixture.Round(c.base, randSign(r, q*float64(r.IntN(1<<(p-1)))))
			c.kinds[i] = "subnormal (output)"
		default:
			c.W[i] = fixture.Round(c.base, r.NormFloat64()*0.02)
			c.kinds[i] = "normal"
		}
	}
}

// tieWeights places each weight so that half a unit of the output at W is the highest
// or the lowest set bit of the element's delta: W + delta is then a tie or near one.
func (c *fusedCase) tieWeights(r *rand.Rand) {
	for i := range c.W {
		d := c.D[i]
		if d.hi == 0 {
			c.W[i] = fixture.Round(c.base, r.NormFloat64()*0.02)
			c.kinds[i] = "normal"
			if r.IntN(2) == 0 {
				c.W[i] = signedZero(r)
				c.kinds[i] = "zero"
			}
			continue
		}
		var w float64
		ok := false
		switch u := r.IntN(20); {
		case u < 9:
			w, ok = c.aligned(r, highBit(d))
			c.kinds[i] = "tie (highest bit)"
		case u < 17:
			w, ok = c.aligned(r, lowBit(d))
			c.kinds[i] = "tie (lowest bit)"
		}
		if !ok {
			w = fixture.Round(c.base, r.NormFloat64()*0.02)
			c.kinds[i] = "normal"
		}
		c.W[i] = randSign(r, w)
	}
}

// aligned returns a weight, representable in the base and the output dtypes, whose
// output unit is 2^(bit+1): in binade bit + prec(out), or subnormal when that is below
// the output's normal range.
func (c *fusedCase) aligned(r *rand.Rand, bit int) (float64, bool) {
	p, emin := format(c.out)
	pb, _ := format(c.base)
	e := bit + int(p)
	if e < emin || (e == emin && r.IntN(2) == 0) {
		// Subnormal: the quantum is fixed, so a tie needs bit == emin - p exactly.
		v := math.Ldexp(float64(r.IntN(1<<(p-1))), emin-int(p)+1)
		if !representable(v, c.base) {
			v = 0
		}
		return v, true
	}
	for bits := int(min(p, pb)); bits >= 1; bits-- {
		m := r.Uint64N(1 << (bits - 1))
		v := math.Ldexp(1+float64(m)/float64(uint64(1)<<(bits-1)), e)
		if representable(v, c.base, c.out) && v <= maxFinite(c.out)/4 {
			return v, true
		}
	}
	return 0, false
}

// highBit and lowBit are the exponents of the highest and lowest set bits of x.
func highBit(x dd) int {
	_, e := math.Frexp(x.hi)
	return e - 1
}

func lowBit(x dd) int {
	v := x.hi
	if x.lo != 0 {
		v = x.lo
	}
	frac, e := math.Frexp(math.Abs(v))
	m := uint64(math.Ldexp(frac, 53))
	tz := 0
	for m&1 == 0 {
		m >>= 1
		tz++
	}
	return e - 53 + tz
}

// addSpecials puts NaNs (several payloads), infinities, signed zeros, the base's
// subnormals and values near the largest finite value of both dtypes into about one
// element in eight. The delta stays finite; a near-max value goes only where the delta
// is too small to move it, so that nothing overflows.
func (c *fusedCase) addSpecials(r *rand.Rand) {
	pb, eb := format(c.base)
	sub := math.Ldexp(1, eb-int(pb)+1) // the base's smallest subnormal
	po, _ := format(c.out)
	pm := int(min(pb, po))
	top := min(maxFinite(c.base), maxFinite(c.out))
	_, te := math.Frexp(top)
	topQ := math.Ldexp(1, te-1-pm+1)
	top = math.Floor(top/topQ) * topQ // representable in both
	nans := []uint64{0x7ff8000000000000, 0xfff8000000000000, 0x7ffc000000000000, 0x7ff4000000000000, 0xfffe000000000000}
	for i := range c.W {
		if r.IntN(8) != 0 {
			continue
		}
		switch k := r.IntN(10); k {
		case 0:
			c.W[i], c.kinds[i] = math.Float64frombits(nans[r.IntN(len(nans))]), "NaN"
		case 1:
			c.W[i], c.kinds[i] = math.Inf(1), "+Inf"
		case 2:
			c.W[i], c.kinds[i] = math.Inf(-1), "-Inf"
		case 3, 4:
			c.W[i], c.kinds[i] = signedZero(r), "zero"
		case 5:
			c.W[i], c.kinds[i] = randSign(r, sub), "subnormal (smallest)"
		case 6:
			c.W[i], c.kinds[i] = randSign(r, sub*float64(2+r.IntN(6))), "subnormal (few ulps)"
		case 7:
			c.W[i], c.kinds[i] = randSign(r, math.Ldexp(1, eb)-sub*float64(1+r.IntN(3))), "subnormal (largest)"
		default:
			v := top - topQ*float64(r.IntN(4))
			if math.Abs(c.D[i].hi) < ulp(c.out, v)/8 && representable(v, c.base, c.out) {
				c.W[i], c.kinds[i] = randSign(r, v), "near max"
			}
		}
	}
}

// fixtures writes the case as a model and an adapter.
func (c *fusedCase) fixtures() (*fixture.Model, *fixture.Adapter, mergeplan.Options) {
	m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
	m.Tensors = []*fixture.Tensor{
		{Name: fusedOther, DType: c.base, Shape: []int64{int64(len(c.other))}, Values: c.other},
		{Name: fusedWeight, DType: c.base, Shape: []int64{int64(c.rows), int64(c.cols)}, Values: c.W},
	}
	a := fixture.NewAdapter(c.rank, c.alpha, "proj")
	a.Tensors = []*fixture.Tensor{
		{Name: fixture.Key(fusedModule, "lora_A.weight"), DType: c.adapter, Shape: []int64{int64(c.rank), int64(c.cols)}, Values: c.A},
		{Name: fixture.Key(fusedModule, "lora_B.weight"), DType: c.adapter, Shape: []int64{int64(c.rows), int64(c.rank)}, Values: c.B},
	}
	var opts mergeplan.Options
	if c.out != c.base {
		opts.DType = map[safetensors.DType]mergeplan.DTypeChoice{
			safetensors.BF16: mergeplan.ToBF16, safetensors.F16: mergeplan.ToF16, safetensors.F32: mergeplan.ToF32,
		}[c.out]
	}
	return m, a, opts
}
