package merge

import "testing"

// TestE2M1MagTable: the table lookup is the definition (nearest midpoint, ties to the
// even code) on a fine grid, at every midpoint and just beside it.
func TestE2M1MagTable(t *testing.T) {
	slow := func(a float64) byte {
		for i, mid := range e2m1Mids {
			switch {
			case a < mid:
				return byte(i)
			case a == mid:
				return byte(i + i&1)
			}
		}
		return 7
	}
	for i := 0; i <= 7000; i++ {
		a := float64(i) / 1000
		for _, x := range []float64{a, a / 4, a + 1e-9, a - 1e-9} {
			if x >= 0 && e2m1Mag(x) != slow(x) {
				t.Fatalf("%v: %d, want %d", x, e2m1Mag(x), slow(x))
			}
		}
	}
	for _, m := range e2m1Mids {
		if e2m1Mag(m) != slow(m) {
			t.Fatalf("mid %v", m)
		}
	}
}
