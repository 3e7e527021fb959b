package safetensors

import "math"

// The 8-bit float formats safetensors names, as PyTorch defines them:
//
//   - F8_E4M3 is torch.float8_e4m3fn (OCP FP8 E4M3): sign, 4 exponent bits (bias 7), 3
//     mantissa bits; no infinities, one NaN per sign (S.1111.111), largest finite ±448,
//     subnormals m/8 · 2⁻⁶.
//   - F8_E5M2 is torch.float8_e5m2 (OCP FP8 E5M2): IEEE-style, 5 exponent bits (bias
//     15), 2 mantissa bits, infinities at S.11111.00, NaN above, largest finite ±57344.
//     Its code is the top byte of the IEEE half with the same value.
//   - F8_E8M0 is torch.float8_e8m0fnu (OCP MX scale, UE8M0): unsigned, 8 exponent bits,
//     no mantissa: 2^(b−127), with 0xFF the NaN. There is no zero.
//
// Every value of each is exact in a float64, so decoding is a table lookup.

// F8Value is the exact value of an 8-bit float code of d (F8_E4M3, F8_E5M2 or F8_E8M0).
// It panics for any other dtype.
func F8Value(d DType, code byte) float64 {
	switch d {
	case F8E4M3:
		return e4m3Table[code]
	case F8E5M2:
		return e5m2Table[code]
	case F8E8M0:
		return e8m0Table[code]
	}
	panic("safetensors: F8Value of " + string(d))
}

// F8Table is the value of every code of an 8-bit float dtype, and false for any other
// dtype.
func F8Table(d DType) (*[256]float64, bool) {
	switch d {
	case F8E4M3:
		return &e4m3Table, true
	case F8E5M2:
		return &e5m2Table, true
	case F8E8M0:
		return &e8m0Table, true
	}
	return nil, false
}

// The tables are computed once from the bit layouts and never written again.
var (
	e4m3Table = table(func(b byte) float64 {
		if b&0x7f == 0x7f {
			return math.NaN()
		}
		return minifloat(b, 4, 3, 7)
	})
	e5m2Table = table(func(b byte) float64 {
		if b&0x7c == 0x7c {
			if b&0x03 == 0 {
				if b&0x80 != 0 {
					return math.Inf(-1)
				}
				return math.Inf(1)
			}
			return math.NaN()
		}
		return minifloat(b, 5, 2, 15)
	})
	e8m0Table = table(func(b byte) float64 {
		if b == 0xff {
			return math.NaN()
		}
		return math.Ldexp(1, int(b)-127)
	})
)

func table(f func(byte) float64) [256]float64 {
	var t [256]float64
	for i := range t {
		t[i] = f(byte(i))
	}
	return t
}

// minifloat decodes a finite sign/exponent/mantissa code by building the float64's
// bits: the format's exponent rebiased, its mantissa moved to the top.
func minifloat(b byte, expBits, manBits uint, bias int) float64 {
	sign := uint64(b>>7) << 63
	e := int(b>>manBits) & (1<<expBits - 1)
	m := uint64(b) & (1<<manBits - 1)
	if e == 0 {
		// Subnormal: m · 2^(1 − bias − manBits), exact as a product of small integers
		// and a power of two.
		v := float64(m) * math.Ldexp(1, 1-bias-int(manBits))
		return math.Float64frombits(sign | math.Float64bits(v))
	}
	return math.Float64frombits(sign | uint64(e-bias+1023)<<52 | m<<(52-manBits))
}

// Largest finite values.
const (
	F8E4M3Max = 448.0
	F8E5M2Max = 57344.0
)

// EncodeF8E4M3 rounds x to the nearest F8_E4M3 value, ties to even, saturating: every
// x beyond ±448 (infinities included) becomes ±448, as a quantizer clamping before
// the cast does (the format has no infinity; OCP's saturation mode). NaN becomes
// 0x7F.
func EncodeF8E4M3(x float64) byte {
	if math.IsNaN(x) {
		return 0x7f
	}
	var sign byte
	if math.Signbit(x) {
		sign, x = 0x80, -x
	}
	if x >= F8E4M3Max {
		return sign | 0x7e
	}
	return sign | byte(roundCode(x, 3, 7))
}

// EncodeF8E5M2 rounds x to the nearest F8_E5M2 value, ties to even, with IEEE overflow:
// from 61440 (57344 and half a unit) on, ±infinity, as a cast to torch.float8_e5m2
// does. NaN becomes 0x7F.
func EncodeF8E5M2(x float64) byte {
	if math.IsNaN(x) {
		return 0x7f
	}
	var sign byte
	if math.Signbit(x) {
		sign, x = 0x80, -x
	}
	if x >= 61440 {
		return sign | 0x7c
	}
	return sign | byte(roundCode(x, 2, 15))
}

// roundCode is the code (without sign) of the nearest value to a finite x ≥ 0 below
// the overflow threshold, in a format with manBits mantissa bits and this bias, ties to
// even. Codes are in value order, and a mantissa that rounds up to 2 carries into the
// exponent, so the code is the exponent field times 2^manBits plus the rounded
// significand's excess over 2^manBits.
func roundCode(x float64, manBits uint, bias int) int {
	if x == 0 {
		return 0
	}
	minNormalExp := 1 - bias
	_, e := math.Frexp(x) // x in [2^(e−1), 2^e)
	exp := max(e-1, minNormalExp)
	n := int(math.RoundToEven(math.Ldexp(x, int(manBits)-exp))) // exact scaling
	if exp == minNormalExp && n < 1<<manBits {
		return n // subnormal (or the smallest normal reached by rounding: n = 2^manBits)
	}
	return (exp+bias)<<manBits + n - 1<<manBits
}

// EncodeF8E8M0Up is the smallest F8_E8M0 value ≥ x: the power-of-two scale a block
// needs so that nothing in it saturates (DeepSeek's and Transformers' UE8M0 scales are
// 2^⌈log₂ s⌉). It is false for an x that is not positive and finite or above 2¹²⁷; an x
// below 2⁻¹²⁷ gets 2⁻¹²⁷.
func EncodeF8E8M0Up(x float64) (byte, bool) {
	if !(x > 0) || math.IsInf(x, 0) {
		return 0, false
	}
	frac, e := math.Frexp(x) // x = frac · 2^e, frac in [0.5, 1)
	p := e                   // 2^e ≥ x
	if frac == 0.5 {
		p = e - 1 // x is a power of two
	}
	switch {
	case p > 127:
		return 0, false
	case p < -127:
		p = -127
	}
	return byte(p + 127), true
}
