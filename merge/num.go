package merge

import (
	"encoding/binary"
	"math"

	"github.com/x448/float16"

	"github.com/hfmerge/hfmerge/safetensors"
)

// toOdd64 moves s, whose exact value lies e beyond it, to the odd neighbour when s is
// even: the round-to-odd of s + e.
func toOdd64(s, e float64) float64 {
	bits := math.Float64bits(s)
	if bits&1 == 0 {
		if (e > 0) == (s > 0) {
			bits++
		} else {
			bits--
		}
	}
	return math.Float64frombits(bits)
}

// roundOdd32 rounds x to float32 with round-to-odd, so that a second rounding to a
// narrower format (bf16, fp16) is the correct rounding of x.
func roundOdd32(x float64) float32 {
	f := float32(x)
	if float64(f) == x || math.IsNaN(x) || math.IsInf(x, 0) {
		return f
	}
	bits := math.Float32bits(f)
	if math.IsInf(float64(f), 0) {
		return math.Float32frombits(bits&0x80000000 | 0x7f7fffff) // largest finite, odd
	}
	if bits&1 == 0 {
		if math.Abs(float64(f)) < math.Abs(x) {
			bits++
		} else {
			bits--
		}
	}
	return math.Float32frombits(bits)
}

// bf16Bits rounds a float32 to bfloat16, ties to even.
func bf16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x0040 // keep it a quiet NaN
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

func bf16Value(u uint16) float32 { return math.Float32frombits(uint32(u) << 16) }

// decoder turns little-endian elements of a float dtype into float64 values.
type decoder func(dst []float64, src []byte)

func decoderFor(d safetensors.DType) decoder {
	switch d {
	case safetensors.BF16:
		return func(dst []float64, src []byte) {
			for i := range dst {
				dst[i] = float64(bf16Value(binary.LittleEndian.Uint16(src[2*i:])))
			}
		}
	case safetensors.F16:
		return func(dst []float64, src []byte) {
			for i := range dst {
				dst[i] = float64(float16.Frombits(binary.LittleEndian.Uint16(src[2*i:])).Float32())
			}
		}
	case safetensors.F32:
		return func(dst []float64, src []byte) {
			for i := range dst {
				dst[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:])))
			}
		}
	}
	if tab, ok := safetensors.F8Table(d); ok {
		return func(dst []float64, src []byte) {
			for i := range dst {
				dst[i] = tab[src[i]]
			}
		}
	}
	return nil
}

// format is an output dtype as the rounding step sees it.
type format struct {
	drop       uint    // the float64 mantissa bits below the format's precision
	mask, half uint64  // those bits, and half of them
	quarterExp uint64  // subtracted from a float64's exponent field: a quarter of the format's unit
	minNormal  float64 // below this the format is subnormal
	quantum    float64 // the spacing of its subnormals
	subSlack   float64 // fast's own error on subnormals, beyond relFloor
	maxFinite  float64 // at or above this it overflows: always recomputed exactly
	// relFloor widens every error bound to |x|·relFloor, so that values put by fast are
	// never within half a float32 unit of a rounding boundary (16-bit formats only).
	relFloor float64
	put      func(dst []byte, x float64) // rounds any x once, to nearest, ties to even
	fast     func(dst []byte, x float64) // rounds an x that near has cleared
}

// formatFor describes d.
func formatFor(d safetensors.DType) *format {
	var f *format
	switch d {
	case safetensors.BF16:
		// Subnormal BF16s are float32 subnormals: fast's float32 rounding is off by at
		// most half of 2⁻¹⁴⁹ there.
		f = &format{minNormal: 0x1p-126, maxFinite: 0x1.fep127, relFloor: 0x1p-23, quantum: 0x1p-133, subSlack: 0x1p-149,
			put: func(dst []byte, x float64) {
				binary.LittleEndian.PutUint16(dst, bf16Bits(roundOdd32(x)))
			},
			// x is not within a float32 unit of a tie: rounding to float32 first, then
			// half-up, is the correct rounding.
			fast: func(dst []byte, x float64) {
				binary.LittleEndian.PutUint16(dst, uint16((math.Float32bits(float32(x))+0x8000)>>16))
			}}
		f.setDrop(45)
	case safetensors.F16:
		f = &format{minNormal: 0x1p-14, maxFinite: 65504, relFloor: 0x1p-23, quantum: 0x1p-24,
			put: func(dst []byte, x float64) {
				binary.LittleEndian.PutUint16(dst, float16.Fromfloat32(roundOdd32(x)).Bits())
			},
			fast: func(dst []byte, x float64) {
				binary.LittleEndian.PutUint16(dst, float16.Fromfloat32(float32(x)).Bits())
			}}
		f.setDrop(42)
	case safetensors.F32:
		put := func(dst []byte, x float64) {
			binary.LittleEndian.PutUint32(dst, math.Float32bits(float32(x)))
		}
		f = &format{minNormal: 0x1p-126, maxFinite: math.MaxFloat32, quantum: 0x1p-149, put: put, fast: put}
		f.setDrop(29)
	}
	return f
}

func (f *format) setDrop(drop uint) {
	f.drop = drop
	f.mask = 1<<drop - 1
	f.half = 1 << (drop - 1)
	f.quarterExp = uint64(52-drop+2) << 52
}

// near reports whether the exact value of a computed x, known only to lie within e of
// it, might round differently from x: a rounding boundary (the midpoint between two
// neighbours of the format) is within e, or x is outside the format's normal range.
// Boundaries inside x's binade sit where the dropped mantissa bits are exactly one half;
// the nearest boundary outside it is at least a quarter of a unit away.
//
// Below the smallest normal the format's values are multiples of a fixed quantum, and
// the boundaries halfway between them; an x whose interval reaches zero is near, for
// the sign of a zero result.
func (f *format) near(x, e float64) bool {
	bits := math.Float64bits(x) &^ (1 << 63)
	a := math.Float64frombits(bits)
	if a > 0 && a < f.minNormal {
		n := a / f.quantum // exact: a power of two
		e += max(a*f.relFloor, f.subSlack)
		return e >= a || math.Abs(n-math.Floor(n)-0.5)*f.quantum <= e
	}
	if !(a >= f.minNormal && a < f.maxFinite) {
		return true
	}
	e += a * f.relFloor
	mid := math.Float64frombits(bits&^f.mask | f.half)
	quarter := math.Float64frombits(bits&0x7ff0000000000000 - f.quarterExp)
	return math.Abs(a-mid) <= e || e >= quarter
}

// putExact rounds hi + lo, known exactly, once to the format.
func (f *format) putExact(dst []byte, hi, lo float64) {
	if lo != 0 && !math.IsInf(hi, 0) && !math.IsNaN(hi) {
		hi = toOdd64(hi, lo) // round-to-odd at 53 bits: the rounding to come is then exact
	}
	f.put(dst, hi)
}

// finite reports whether an encoded element is a finite number.
func finite(d safetensors.DType, b []byte) bool {
	switch d {
	case safetensors.BF16:
		return binary.LittleEndian.Uint16(b)&0x7f80 != 0x7f80
	case safetensors.F16:
		return binary.LittleEndian.Uint16(b)&0x7c00 != 0x7c00
	case safetensors.F32:
		return binary.LittleEndian.Uint32(b)&0x7f800000 != 0x7f800000
	case safetensors.F8E4M3, safetensors.F8E5M2, safetensors.F8E8M0:
		v := safetensors.F8Value(d, b[0])
		return !math.IsNaN(v) && !math.IsInf(v, 0)
	}
	return true
}

func size(d safetensors.DType) int { return d.Bits() / 8 }
