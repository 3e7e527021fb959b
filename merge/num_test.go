package merge

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestFastRounding: wherever near clears a value, the fast rounding equals the correct
// one (fixture's, written independently), including values a hair from a tie.
func TestFastRounding(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32} {
		f := formatFor(dt)
		sz := dt.Bits() / 8
		fast, exact := make([]byte, sz), make([]byte, sz)
		cleared := 0
		for i := 0; i < 400_000; i++ {
			x := r.NormFloat64() * math.Pow(2, float64(r.IntN(40)-30))
			if i%2 == 1 {
				// Move x onto the tie above its rounding, then off it by k float64 units.
				q := math.Abs(fixture.Round(dt, x))
				_, e := math.Frexp(q)
				p := map[safetensors.DType]int{safetensors.BF16: 8, safetensors.F16: 11, safetensors.F32: 24}[dt]
				if q < f.minNormal || q >= f.maxFinite/2 {
					continue
				}
				k := r.IntN(5) - 2
				x = math.Float64frombits(uint64(int64(math.Float64bits(q+math.Ldexp(1, e-p)/2)) + int64(k)))
				if want := dt != safetensors.F32 || k == 0; f.near(x, 0) != want {
					t.Fatalf("%s: near(%v) = %v at %d float64 units from a tie", dt, x, !want, k)
				}
			}
			f.put(exact, x)
			if got, want := fixture.Decode(dt, exact)[0], fixture.Round(dt, x); got != want && !(math.IsNaN(got) && math.IsNaN(want)) {
				t.Fatalf("%s: put(%v) = %v, want %v", dt, x, got, want)
			}
			if f.near(x, 0) {
				continue
			}
			cleared++
			f.fast(fast, x)
			if !bytes.Equal(fast, exact) {
				t.Fatalf("%s: fast(%v) = %v, correct rounding %v", dt, x, fixture.Decode(dt, fast)[0], fixture.Decode(dt, exact)[0])
			}
		}
		if cleared < 100_000 {
			t.Errorf("%s: only %d values cleared the fast path", dt, cleared)
		}
	}
}

// TestPutExact: a value given as hi + lo rounds by its exact sum, even when hi alone is
// a tie.
func TestPutExact(t *testing.T) {
	f := formatFor(safetensors.BF16)
	b := make([]byte, 2)
	tie := 1 + math.Ldexp(1, -8) // halfway between 1 and 1 + 2⁻⁷
	for _, c := range []struct {
		lo   float64
		want float64
	}{{0, 1}, {1e-30, 1 + math.Ldexp(1, -7)}, {-1e-30, 1}} {
		f.putExact(b, tie, c.lo)
		if got := fixture.Decode(safetensors.BF16, b)[0]; got != c.want {
			t.Errorf("tie + %g → %v, want %v", c.lo, got, c.want)
		}
	}
}
