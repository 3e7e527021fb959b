package merge_test

// TestFusedKernels is the kernels' property test: on random shapes, ranks 1-256, odd row
// and column counts, NaN, infinities, subnormals, signed zeros and forced rounding ties,
// every kernel this CPU runs must give the Go kernel's bytes, and the Go kernel must give
// the correctly rounded exact value of every element, by the independent reference of
// reference_test.go.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
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

// mergeWith merges the plan's single shard with the named kernel, by Write and by
// ReadAt in random pieces on a fresh shard, which must agree; it returns the file.
func mergeWith(t *testing.T, p *mergeplan.Plan, files map[string]io.ReaderAt, kernel string, jobs int, seed uint64) []byte {
	t.Helper()
	if len(p.Shards) != 1 {
		t.Fatalf("plan has %d shards, want 1", len(p.Shards))
	}
	s := &p.Shards[0]
	opts := merge.Options{Jobs: jobs, CacheBytes: 1 << 20, Kernel: kernel}
	sh, err := merge.New(s, files, opts)
	if err != nil {
		t.Fatalf("kernel %q: %v", kernel, err)
	}
	var whole bytes.Buffer
	if n, err := sh.Write(context.Background(), &whole, nil); err != nil || n != sh.Size() || n != s.Size() {
		t.Fatalf("kernel %q: wrote %d bytes of %d: %v", kernel, n, s.Size(), err)
	}
	sh2, err := merge.New(s, files, opts)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	pieces := make([]byte, sh2.Size())
	for off := int64(0); off < sh2.Size(); {
		k := min(int64(1+rng.IntN(4096)), sh2.Size()-off)
		if _, err := sh2.ReadAt(pieces[off:off+k], off); err != nil {
			t.Fatalf("kernel %q: ReadAt(%d, %d): %v", kernel, off, k, err)
		}
		off += k
	}
	if !bytes.Equal(pieces, whole.Bytes()) {
		t.Fatalf("kernel %q: ReadAt and Write disagree", kernel)
	}
	return whole.Bytes()
}

// tensorBytes returns a tensor's bytes and dtype in a safetensors file.
func tensorBytes(t *testing.T, file []byte, name string) ([]byte, safetensors.DType) {
	t.Helper()
	h, err := safetensors.ParseHeader(file, int64(len(file)))
	if err != nil {
		t.Fatalf("output does not parse: %v", err)
	}
	for _, ti := range h.Tensors {
		if ti.Name == name {
			return file[h.DataOffset+ti.Begin : h.DataOffset+ti.End], ti.DType
		}
	}
	t.Fatalf("output has no tensor %s", name)
	return nil, ""
}

// fusedStats counts what the trials checked.
type fusedStats struct {
	trials, elements, tieElements int
	ties, tiesAsm                 int // exact ties of the output; in the columns the fused assembly covers
	near, hidden                  int // within 16 float64 units of a tie; within half a unit, so that a float64 sum lands on it
	zeroDelta, negZero            int // exactly zero deltas; -0 weights among them
	nan, inf, subIn, nearMax      int // base elements
	subOut, zeroOut               int // results
	// flagged counts the elements every kernel must send to the exact path: out of the
	// normal range, or within |x|·2⁻⁵³ of a rounding boundary, inside any error bound.
	flagged int
}

// want returns the correctly rounded merged value of element i, and notes its class.
func (c *fusedCase) want(i int, st *fusedStats) (float64, dd) {
	w, d := c.W[i], c.D[i]
	_, emin := format(c.out)
	if _, eb := format(c.base); w != 0 && math.Abs(w) < math.Ldexp(1, eb) {
		st.subIn++
	}
	switch {
	case math.IsNaN(w):
		st.nan++
		st.flagged++
		return w, dd{w, 0}
	case math.IsInf(w, 0):
		st.inf++
		st.flagged++
		return w, dd{w, 0}
	case d.hi == 0 && d.lo == 0:
		// The weight's own value, sign of zero included.
		st.zeroDelta++
		if w == 0 && math.Signbit(w) {
			st.negZero++
		}
		if c.kinds[i] == "near max" {
			st.nearMax++
		}
		v := fixture.Round(c.out, w)
		if math.Abs(v) < math.Ldexp(1, emin) {
			st.flagged++
		}
		return v, dd{w, 0}
	}
	if c.kinds[i] == "near max" {
		st.nearMax++
	}
	x := dd{w, 0}.add(d)
	v := roundExact(c.out, x)
	switch a := math.Abs(x.hi); {
	case a == 0:
		st.zeroOut++
		st.flagged++
	case a < math.Ldexp(1, emin):
		st.subOut++
		st.flagged++
	}
	// Distance to the nearest midpoint of the output.
	if x.hi != 0 {
		u := ulp(c.out, x.hi)
		n := x.hi / u
		mid := (math.Floor(n) + 0.5) * u
		u64 := math.Nextafter(math.Abs(x.hi), math.Inf(1)) - math.Abs(x.hi)
		dist := math.Abs((x.hi - mid) + x.lo)
		switch {
		case x.hi == mid && x.lo == 0:
			st.ties++
			if j := i % c.cols; j < c.cols&^7 {
				st.tiesAsm++
			}
		case x.hi == mid:
			st.hidden++
			st.near++
		case dist <= 16*u64:
			st.near++
		}
		if dist <= math.Abs(x.hi)*0x1p-53 && math.Abs(x.hi) >= math.Ldexp(1, emin) {
			st.flagged++
		}
	}
	return v, x
}

// describe gives everything about element i that a failure report needs.
func (c *fusedCase) describe(i int, x dd) string {
	o, j := i/c.cols, i%c.cols
	where := "Go tail columns"
	if j < c.cols&^7 {
		where = "fused strip columns"
	}
	wb := le(fixture.Encode(c.base, []float64{c.W[i]}))
	return fmt.Sprintf("element %d (row %d, col %d; %s), W (%s) = %v [%s], delta = %v + %v, exact W+delta = %v + %v",
		i, o, j, where, c.kinds[i], c.W[i], wb, c.D[i].hi, c.D[i].lo, x.hi, x.lo)
}

// le prints little-endian bytes as one hexadecimal number.
func le(b []byte) string {
	var s strings.Builder
	for k := len(b) - 1; k >= 0; k-- {
		fmt.Fprintf(&s, "%02x", b[k])
	}
	return "0x" + s.String()
}

func TestFusedKernels(t *testing.T) {
	const trials = 52
	kernels := merge.Kernels()
	if !slices.Contains(kernels, merge.KernelGo) {
		t.Fatalf("kernels %v lack the Go reference", kernels)
	}
	t.Logf("kernels: %v", kernels)
	var st fusedStats
	for i := 0; i < trials; i++ {
		c := newFusedCase(i)
		m, a, popts := c.fixtures()
		p, files := plan(t, m, a, popts)
		if !p.OK() {
			t.Fatalf("%s: plan has problems: %v", c, p.Problems)
		}
		if len(p.Modules) != 1 || p.Modules[0].Scale != c.scale || p.Modules[0].Rank != c.rank {
			t.Fatalf("%s: plan modules %+v, want rank %d scale %g", c, p.Modules, c.rank, c.scale)
		}
		out := map[string][]byte{}
		for _, k := range kernels {
			out[k] = mergeWith(t, p, files, k, c.jobs, uint64(i))
		}
		ref := out[merge.KernelGo]
		got, dt := tensorBytes(t, ref, fusedWeight)
		if dt != c.out || len(got) != len(c.W)*size(c.out) {
			t.Fatalf("%s: output is %s, %d bytes", c, dt, len(got))
		}
		sz := size(c.out)

		// 2. The Go kernel against the reference.
		st.trials++
		before := st
		bad := 0
		for e := range c.W {
			st.elements++
			if c.mode.ties() {
				st.tieElements++
			}
			want, x := c.want(e, &st)
			g := got[e*sz : (e+1)*sz]
			wb := fixture.Encode(c.out, []float64{want})
			ok := bytes.Equal(g, wb)
			if math.IsNaN(want) {
				ok = math.IsNaN(fixture.Decode(c.out, g)[0])
			}
			if !ok {
				if bad++; bad <= 8 {
					t.Errorf("%s: kernel go: %s: got %v [%s], want %v [%s]",
						c, c.describe(e, x), fixture.Decode(c.out, g)[0], le(g), want, le(wb))
				}
			}
		}
		if bad > 8 {
			t.Errorf("%s: kernel go: %d elements differ from the correctly rounded value", c, bad)
		}
		if c.mode.ties() && len(c.W) >= 40 && st.ties == before.ties {
			t.Errorf("%s: no element landed on a rounding tie", c)
		}

		// 1. Every kernel against the Go kernel, byte for byte.
		for _, k := range kernels {
			if k == merge.KernelGo || bytes.Equal(out[k], ref) {
				continue
			}
			kb, _ := tensorBytes(t, out[k], fusedWeight)
			n := 0
			for e := range c.W {
				gb, rb := kb[e*sz:(e+1)*sz], got[e*sz:(e+1)*sz]
				if bytes.Equal(gb, rb) {
					continue
				}
				if n++; n <= 8 {
					_, x := c.want(e, &fusedStats{})
					t.Errorf("%s: kernel %s differs from go at %s: %s gives %v [%s], go %v [%s]",
						c, k, c.describe(e, x), k, fixture.Decode(c.out, gb)[0], le(gb), fixture.Decode(c.out, rb)[0], le(rb))
				}
			}
			if n == 0 {
				t.Errorf("%s: kernel %s: the file differs from go's outside %s", c, k, fusedWeight)
			} else if n > 8 {
				t.Errorf("%s: kernel %s: %d elements differ from go", c, k, n)
			}
		}

		// 3. The untouched tensor is the base's bytes.
		if c.out == c.base {
			ob, _ := tensorBytes(t, ref, fusedOther)
			if !bytes.Equal(ob, fixture.Encode(c.base, c.other)) {
				t.Errorf("%s: %s is untouched but its bytes changed", c, fusedOther)
			}
		}
	}
	t.Logf("%d trials, %d elements (%d in tie trials): %d exact ties (%d in fused strip columns), %d near ties (%d below half a float64 unit), "+
		"%d elements certain to take the exact path; base NaN %d, Inf %d, subnormal %d, near max %d; zero deltas %d (-0 weights %d); subnormal results %d, zero results %d",
		st.trials, st.elements, st.tieElements, st.ties, st.tiesAsm, st.near, st.hidden, st.flagged, st.nan, st.inf, st.subIn, st.nearMax,
		st.zeroDelta, st.negZero, st.subOut, st.zeroOut)
	// The test must keep testing what it is for.
	check := func(what string, n, least int) {
		if n < least {
			t.Errorf("only %d %s; the trials should give at least %d", n, what, least)
		}
	}
	check("exact ties", st.ties, st.tieElements/10)
	check("near ties", st.near, 100)
	check("near ties below half a float64 unit", st.hidden, 10)
	check("NaN weights", st.nan, 10)
	check("infinite weights", st.inf, 10)
	check("subnormal weights", st.subIn, 10)
	check("near-max weights", st.nearMax, 5)
	check("-0 weights with a zero delta", st.negZero, 5)
	check("subnormal results", st.subOut, 10)
	if slices.Contains(kernels, merge.KernelAVX2) {
		check("exact ties in fused strip columns", st.tiesAsm, 100)
	}
}

func size(dt safetensors.DType) int { return dt.Bits() / 8 }

// TestFusedKernelEnv: HFMERGE_KERNEL selects the kernel when Options.Kernel is empty,
// and every choice gives the same bytes.
func TestFusedKernelEnv(t *testing.T) {
	c := newFusedCase(27) // specials; 99 columns: fused strips and a Go tail
	m, a, popts := c.fixtures()
	p, files := plan(t, m, a, popts)
	t.Setenv("HFMERGE_KERNEL", "")
	auto := mergeWith(t, p, files, merge.KernelAuto, 2, 1)
	t.Setenv("HFMERGE_KERNEL", "go")
	env := mergeWith(t, p, files, merge.KernelAuto, 2, 1)
	explicit := mergeWith(t, p, files, merge.KernelGo, 2, 1)
	if !bytes.Equal(env, auto) || !bytes.Equal(env, explicit) {
		t.Errorf("%s: HFMERGE_KERNEL=go, the default kernel and Kernel go give different bytes", c)
	}
	// The variable is read: an unknown name is refused, and an explicit kernel wins.
	t.Setenv("HFMERGE_KERNEL", "no-such-kernel")
	if _, err := merge.New(&p.Shards[0], files, merge.Options{}); err == nil {
		t.Error("HFMERGE_KERNEL=no-such-kernel was accepted")
	}
	if _, err := merge.New(&p.Shards[0], files, merge.Options{Kernel: merge.KernelGo}); err != nil {
		t.Errorf("Kernel go with HFMERGE_KERNEL=no-such-kernel: %v", err)
	}
}
