package safetensors

import (
	"math"
	"testing"
)

// TestE2M1EveryCode checks all 16 codes against the values MXFP4's dequantizers use
// (Transformers' FP4_VALUES, indexed by the 4-bit code): positive codes 0..7, then the
// same magnitudes negated, -0 included.
func TestE2M1EveryCode(t *testing.T) {
	want := [16]float64{0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6}
	for c := 0; c < 16; c++ {
		got := E2M1Value(byte(c))
		if got != want[c] || math.Signbit(got) != (c >= 8) {
			t.Errorf("E2M1 code %#x = %v, want %v (sign %v)", c, got, want[c], c >= 8)
		}
		// Only the low nibble counts: a packed byte's high half is the next code.
		if hi := E2M1Value(byte(c) | 0xa0); hi != got || math.Signbit(hi) != math.Signbit(got) {
			t.Errorf("E2M1Value(%#x) = %v, want the low nibble's %v", byte(c)|0xa0, hi, got)
		}
		if math.Abs(got) > E2M1Max {
			t.Errorf("E2M1 code %#x = %v beyond E2M1Max", c, got)
		}
	}
	if E2M1Table()[7] != E2M1Max {
		t.Errorf("largest E2M1 value %v, want %v", E2M1Table()[7], E2M1Max)
	}
}
