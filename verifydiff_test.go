package hfmerge

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/hfmerge/hfmerge/safetensors"
)

func TestULPs(t *testing.T) {
	bf := func(f float32) []byte {
		b := make([]byte, 2)
		binary.LittleEndian.PutUint16(b, uint16(math.Float32bits(f)>>16))
		return b
	}
	f32 := func(f float32) []byte { return binary.LittleEndian.AppendUint32(nil, math.Float32bits(f)) }
	nan := f32(float32(math.NaN()))
	for _, c := range []struct {
		name string
		d    safetensors.DType
		a, b []byte
		want uint64
	}{
		{"bf16 same", safetensors.BF16, bf(1), bf(1), 0},
		{"bf16 next", safetensors.BF16, bf(1), bf(1 + 1.0/128), 1},
		{"bf16 +0 -0", safetensors.BF16, bf(0), bf(float32(math.Copysign(0, -1))), 0},
		// Across zero: the smallest positive and negative subnormals are 2 apart.
		{"bf16 across zero", safetensors.BF16, []byte{1, 0}, []byte{1, 0x80}, 2},
		{"f32 NaN NaN", safetensors.F32, nan, nan, 0},
		{"f32 NaN 1", safetensors.F32, nan, f32(1), ulpNaN},
		{"f32 2 ulp", safetensors.F32, f32(1), binary.LittleEndian.AppendUint32(nil, math.Float32bits(1)+2), 2},
		{"e4m3 next", safetensors.F8E4M3, []byte{0x38}, []byte{0x39}, 1},
		{"e4m3 NaN", safetensors.F8E4M3, []byte{0x7f}, []byte{0x39}, ulpNaN},
		{"i16 -1 1", safetensors.I16, []byte{0xff, 0xff}, []byte{1, 0}, 2},
		{"u8", safetensors.U8, []byte{3}, []byte{250}, 247},
		{"f4 packed", safetensors.F4, []byte{0x12}, []byte{0x13}, ulpNaN},
	} {
		if got := ulps(c.d, c.a, c.b); got != c.want {
			t.Errorf("%s: %d ulp, want %d", c.name, got, c.want)
		}
	}
}

func TestTensorDiffHistogram(t *testing.T) {
	var td TensorDiff
	got := []byte{0, 0x3f, 1, 0x3f, 4, 0x3f, 0xc0, 0x7f}
	want := []byte{0, 0x3f, 0, 0x3f, 0, 0x3f, 0, 0x3f}
	td.add(safetensors.BF16, got, want)
	td.finish()
	if td.Compared != 4 || td.Differing != 3 || td.MaxULP != ulpNaN {
		t.Fatalf("%+v", td)
	}
	wantB := []ULPBucket{{0, 0, 1}, {1, 1, 1}, {4, 7, 1}, {ulpNaN, ulpNaN, 1}}
	if len(td.Histogram) != len(wantB) {
		t.Fatalf("%v", td.Histogram)
	}
	for i, b := range wantB {
		if td.Histogram[i] != b {
			t.Errorf("bucket %d: %+v, want %+v", i, td.Histogram[i], b)
		}
	}
}

func TestClip(t *testing.T) {
	spans := []span{{10, 20}, {25, 27}, {40, 100}}
	got := clip(spans, 12, 60, 4)
	want := []span{{12, 20}, {24, 28}, {40, 60}}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%v, want %v", got, want)
		}
	}
	if got := clip(spans, 20, 25, 1); len(got) != 0 {
		t.Errorf("between spans: %v", got)
	}
}

// TestTensorDiffBitsOnly: +0 against -0 and two NaNs of other payloads are 0 ulp apart
// but other bits: counted apart, not as differing.
func TestTensorDiffBitsOnly(t *testing.T) {
	var td TensorDiff
	// BF16: +0, -0; a NaN 0x7fc1 against 0x7fc0; 1.0 against 1.0.
	got := []byte{0x00, 0x00, 0xc1, 0x7f, 0x80, 0x3f}
	want := []byte{0x00, 0x80, 0xc0, 0x7f, 0x80, 0x3f}
	td.add(safetensors.BF16, got, want)
	if td.Compared != 3 || td.Differing != 0 || td.BitsOnly != 2 || td.MaxULP != 0 {
		t.Errorf("%+v", td)
	}
}
