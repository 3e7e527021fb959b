package merge

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestPutRow: DoRA's rounding, by each kernel's round form and by the Go loop, writes
// exactly what format.put writes (NaN as the default NaN), on values placed on and next
// to every kind of rounding boundary of the output: float32 ties of 16-bit formats,
// values a float64 unit off them, subnormals, the largest finite values and beyond,
// infinities and NaN.
func TestPutRow(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32} {
		fm := formatFor(dt)
		n := 4099 // groups of 8 and a tail
		x := make([]float64, n)
		scale := make([]float64, n)
		for i := range x {
			var v float64
			switch r.IntN(8) {
			case 0: // a tie of the output, and a float64 unit either side
				b := math.Float64bits(r.NormFloat64()*0.05)&^fm.mask | fm.half
				v = math.Float64frombits(b + uint64(r.IntN(3)) - 1)
			case 1: // a float32 that is a tie of the output, and a float32 unit off
				f := math.Float32bits(float32(r.NormFloat64()))
				f = f&^(1<<(fm.drop-29)-1) | 1<<(fm.drop-30)
				v = float64(math.Float32frombits(f + uint32(r.IntN(3)) - 1))
			case 2: // subnormal or tiny
				v = r.NormFloat64() * fm.minNormal * math.Ldexp(1, -r.IntN(12))
			case 3: // near the largest finite value
				v = fm.maxFinite * (1 + (r.Float64()-0.5)*0x1p-6)
			case 4:
				v = []float64{math.Inf(1), math.Inf(-1), math.NaN(), math.Float64frombits(0xfff4000000000001), 0, math.Copysign(0, -1)}[r.IntN(6)]
			default:
				v = r.NormFloat64()
			}
			x[i], scale[i] = v, 1
			if r.IntN(4) == 0 {
				scale[i] = 0.5 // exact: the value is v/2
			}
			if r.IntN(2) == 0 {
				x[i] = -x[i]
			}
		}
		want := make([]byte, n*size(dt))
		for i := range x {
			v := x[i] * scale[i]
			if v != v {
				v = math.NaN()
			}
			fm.put(want[i*size(dt):], v)
		}
		for _, name := range Kernels() {
			k, err := kernelFor(name)
			if err != nil {
				t.Fatal(err)
			}
			m := &tensor{t: &mergeplan.Tensor{DType: dt}, out: fm, kern: k}
			if name != KernelGo && (dt != safetensors.F16 || k.f16) && m.roundKernel() == nil {
				t.Fatalf("%s: no round form for %s", name, dt)
			}
			got := make([]byte, len(want))
			ok := m.putRow(got, x, scale, new(scratch))
			finite := true
			for i := range x {
				finite = finite && isFinite(dt, want[i*size(dt):])
			}
			if ok != finite {
				t.Errorf("%s %s: putRow reports finite %v, want %v", name, dt, ok, finite)
			}
			if !bytes.Equal(got, want) {
				for i := range x {
					g, w := got[i*size(dt):(i+1)*size(dt)], want[i*size(dt):(i+1)*size(dt)]
					if !bytes.Equal(g, w) {
						t.Fatalf("%s %s: element %d, %v·%v (%#x): got %x, want %x", name, dt, i, x[i], scale[i], math.Float64bits(x[i]*scale[i]), g, w)
					}
				}
			}
		}
	}
}

func isFinite(dt safetensors.DType, b []byte) bool { return finite(dt, b) }
