package safetensors

// E2M1 is the 4-bit float of MXFP4 (OCP Microscaling): a sign bit, 2 exponent bits
// (bias 1) and 1 mantissa bit, no infinity or NaN: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
// MXFP4 checkpoints pack two codes a byte, the first in the low nibble.

// E2M1Value is the exact value of the E2M1 code in the low 4 bits of c.
func E2M1Value(c byte) float64 { return e2m1Table[c&15] }

// E2M1Table is the value of every E2M1 code.
func E2M1Table() *[16]float64 { return &e2m1Table }

// E2M1Max is the largest E2M1 magnitude.
const E2M1Max = 6.0

var e2m1Table = func() (t [16]float64) {
	for c := range t {
		// As an 8-bit minifloat: the sign moved from bit 3 to bit 7.
		b := byte(c&8)<<4 | byte(c&7)
		t[c] = minifloat(b, 2, 1, 1)
	}
	return t
}()
