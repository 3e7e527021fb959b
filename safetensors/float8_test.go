package safetensors

import (
	"math"
	"testing"

	"github.com/x448/float16"
)

// e4m3Ref is the OCP E4M3 value of a code, from the definition in arithmetic, not bits.
func e4m3Ref(b byte) float64 {
	s := 1.0
	if b&0x80 != 0 {
		s = -1
	}
	e, m := int(b>>3)&15, float64(b&7)
	switch {
	case e == 15 && m == 7:
		return math.NaN()
	case e == 0:
		return s * m / 8 * math.Pow(2, -6)
	}
	return s * (1 + m/8) * math.Pow(2, float64(e-7))
}

func same(a, b float64) bool {
	return a == b && math.Signbit(a) == math.Signbit(b) || math.IsNaN(a) && math.IsNaN(b)
}

func TestF8E4M3EveryCode(t *testing.T) {
	nan := 0
	for c := 0; c < 256; c++ {
		got, want := F8Value(F8E4M3, byte(c)), e4m3Ref(byte(c))
		if !same(got, want) {
			t.Errorf("E4M3 code %#02x: %v, want %v", c, got, want)
		}
		if math.IsNaN(got) {
			nan++
			continue
		}
		if back := EncodeF8E4M3(got); back != byte(c) {
			t.Errorf("E4M3 code %#02x (%v) encodes back to %#02x", c, got, back)
		}
	}
	if nan != 2 {
		t.Errorf("E4M3 has %d NaN codes, want 2 (0x7f, 0xff)", nan)
	}
	for c, v := range map[byte]float64{0x7e: 448, 0xfe: -448, 0x01: 0x1p-9, 0x08: 0x1p-6, 0x38: 1, 0x80: math.Copysign(0, -1)} {
		if got := F8Value(F8E4M3, c); !same(got, v) {
			t.Errorf("E4M3 code %#02x = %v, want %v", c, got, v)
		}
	}
}

// TestF8E5M2EveryCode checks each code against the IEEE half whose top byte it is.
func TestF8E5M2EveryCode(t *testing.T) {
	for c := 0; c < 256; c++ {
		got := F8Value(F8E5M2, byte(c))
		want := float64(float16.Frombits(uint16(c) << 8).Float32())
		if !same(got, want) {
			t.Errorf("E5M2 code %#02x: %v, want %v", c, got, want)
		}
		if math.IsNaN(got) {
			continue
		}
		if back := EncodeF8E5M2(got); back != byte(c) {
			t.Errorf("E5M2 code %#02x (%v) encodes back to %#02x", c, got, back)
		}
	}
	if F8Value(F8E5M2, 0x7b) != F8E5M2Max {
		t.Errorf("largest finite E5M2 is %v", F8Value(F8E5M2, 0x7b))
	}
}

func TestF8E8M0EveryCode(t *testing.T) {
	for c := 0; c < 256; c++ {
		got := F8Value(F8E8M0, byte(c))
		if c == 255 {
			if !math.IsNaN(got) {
				t.Errorf("E8M0 0xff = %v, want NaN", got)
			}
			continue
		}
		if want := math.Pow(2, float64(c-127)); got != want {
			t.Errorf("E8M0 code %#02x: %v, want %v", c, got, want)
		}
		if back, ok := EncodeF8E8M0Up(got); !ok || back != byte(c) {
			t.Errorf("E8M0 code %#02x (%v) encodes back to %#02x, %v", c, got, back, ok)
		}
		if c < 254 {
			// Just above a power of two, the next one up.
			if up, ok := EncodeF8E8M0Up(got * (1 + 0x1p-52)); !ok || up != byte(c+1) {
				t.Errorf("E8M0 just above %v: %#02x, %v; want %#02x", got, up, ok, c+1)
			}
		}
	}
	for _, x := range []float64{0, -1, math.Inf(1), math.NaN(), 0x1p128} {
		if _, ok := EncodeF8E8M0Up(x); ok {
			t.Errorf("EncodeF8E8M0Up(%v) succeeded", x)
		}
	}
	if c, ok := EncodeF8E8M0Up(0x1p-140); !ok || c != 0 {
		t.Errorf("EncodeF8E8M0Up(2^-140) = %#02x, %v; want the smallest scale 0x00", c, ok)
	}
}

// TestF8Rounding checks nearest-even rounding between every pair of neighbours: just
// below the midpoint goes down, just above goes up, the midpoint to the even code; and
// saturation or overflow beyond the largest value.
func TestF8Rounding(t *testing.T) {
	for _, f := range []struct {
		d   DType
		enc func(float64) byte
		top byte // largest finite positive code
	}{{F8E4M3, EncodeF8E4M3, 0x7e}, {F8E5M2, EncodeF8E5M2, 0x7b}} {
		for c := byte(0); c < f.top; c++ {
			lo, hi := F8Value(f.d, c), F8Value(f.d, c+1)
			mid := (lo + hi) / 2 // exact in float64
			even := c
			if c&1 == 1 {
				even = c + 1
			}
			for _, s := range []float64{1, -1} {
				sign := byte(0)
				if s < 0 {
					sign = 0x80
				}
				check := func(x float64, want byte) {
					if got := f.enc(s * x); got != sign|want {
						t.Errorf("%s: %v encodes to %#02x, want %#02x", f.d, s*x, got, sign|want)
					}
				}
				check(math.Nextafter(mid, lo), c)
				check(math.Nextafter(mid, hi), c+1)
				check(mid, even)
			}
		}
	}
	if c := EncodeF8E4M3(1e9); c != 0x7e {
		t.Errorf("E4M3 1e9 = %#02x, want saturation to 0x7e", c)
	}
	if c := EncodeF8E4M3(math.Inf(-1)); c != 0xfe {
		t.Errorf("E4M3 -Inf = %#02x, want saturation to 0xfe", c)
	}
	if c := EncodeF8E5M2(61439); c != 0x7b {
		t.Errorf("E5M2 61439 = %#02x, want 0x7b", c)
	}
	if c := EncodeF8E5M2(61440); c != 0x7c {
		t.Errorf("E5M2 61440 = %#02x, want infinity 0x7c", c)
	}
	if EncodeF8E4M3(math.NaN()) != 0x7f || EncodeF8E5M2(math.NaN()) != 0x7f {
		t.Error("NaN does not encode to 0x7f")
	}
}
