package hfmerge

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"

	"github.com/hfmerge/hfmerge/safetensors"
)

// How far apart two tensors are, element by element, in units in the last place (ulp):
// the number of representable values of the dtype between the two, so that a merge
// rounded differently (PEFT's merge_and_unload, a float32 reference) shows as 1 ulp
// where hfmerge's exact rounding and another tool's disagree, whatever the magnitude.

// ulpNaN is the distance of a NaN from a number: no tolerance accepts it.
const ulpNaN = math.MaxUint64

// TensorDiff is what comparing one tensor of a published shard with the expected one
// found.
type TensorDiff struct {
	Name     string `json:"name"`
	DType    string `json:"dtype"`
	Elements int64  `json:"elements"`
	// Compared is how many elements were downloaded and compared; the others lie in
	// bytes known to be identical (Xet chunks with the expected hashes).
	Compared  int64 `json:"compared"`
	Differing int64 `json:"differing"`
	// BitsOnly counts the elements 0 ulp apart in other bits (+0 and -0, NaNs with
	// other payloads): the same values, not the same bytes.
	BitsOnly int64 `json:"bits_only,omitempty"`
	// MaxULP is the largest distance; math.MaxUint64 when a NaN met a number, or the
	// dtype has no order (packed 4- and 6-bit floats: any difference).
	MaxULP    uint64      `json:"max_ulp"`
	Histogram []ULPBucket `json:"histogram,omitempty"`
	// Problem is a difference of name, dtype or shape: the values were not compared.
	Problem string `json:"problem,omitempty"`

	hist [66]int64 // 0, then [2^(k-1), 2^k) for k = 1..64, then NaN/unordered
}

// ULPBucket counts the elements at a distance in [Min, Max] ulp (both math.MaxUint64:
// NaN or unordered).
type ULPBucket struct {
	Min   uint64 `json:"min_ulp"`
	Max   uint64 `json:"max_ulp"`
	Count int64  `json:"count"`
}

func (b ULPBucket) String() string {
	switch {
	case b.Min == ulpNaN:
		return "NaN/unordered"
	case b.Min == b.Max:
		return fmt.Sprintf("%d ulp", b.Min)
	}
	return fmt.Sprintf("%d–%d ulp", b.Min, b.Max)
}

// elementSize is the unit compare reads: the element, or a byte for packed dtypes
// (F4, F6) and dtypes the format does not define.
func elementSize(d safetensors.DType) int64 {
	switch b := d.Bits(); {
	case d == safetensors.C64:
		return 4 // compared as its float32 parts
	case b >= 8 && b%8 == 0:
		return int64(b / 8)
	}
	return 1
}

// add compares got with want, elements of d laid end to end.
func (t *TensorDiff) add(d safetensors.DType, got, want []byte) {
	n := elementSize(d)
	for i := int64(0); i+n <= int64(len(got)); i += n {
		u := ulps(d, got[i:i+n], want[i:i+n])
		t.Compared++
		if u == 0 {
			t.hist[0]++
			if string(got[i:i+n]) != string(want[i:i+n]) {
				t.BitsOnly++
			}
			continue
		}
		t.Differing++
		t.MaxULP = max(t.MaxULP, u)
		if u == ulpNaN {
			t.hist[65]++
		} else {
			t.hist[bits.Len64(u)]++
		}
	}
}

// finish fills Histogram from the counts.
func (t *TensorDiff) finish() {
	t.Histogram = nil
	for k, c := range t.hist {
		if c == 0 {
			continue
		}
		b := ULPBucket{Count: c}
		switch {
		case k == 65:
			b.Min, b.Max = ulpNaN, ulpNaN
		case k > 0:
			b.Min, b.Max = 1<<(k-1), 1<<(k-1)+(1<<(k-1)-1)
		}
		t.Histogram = append(t.Histogram, b)
	}
}

// ulps is the distance between two elements of d.
func ulps(d safetensors.DType, a, b []byte) uint64 {
	if string(a) == string(b) {
		return 0
	}
	switch d {
	case safetensors.F64:
		return floatULPs(binary.LittleEndian.Uint64(a), binary.LittleEndian.Uint64(b), 11, 52)
	case safetensors.F32, safetensors.C64:
		return floatULPs(uint64(binary.LittleEndian.Uint32(a)), uint64(binary.LittleEndian.Uint32(b)), 8, 23)
	case safetensors.F16:
		return floatULPs(uint64(binary.LittleEndian.Uint16(a)), uint64(binary.LittleEndian.Uint16(b)), 5, 10)
	case safetensors.BF16:
		return floatULPs(uint64(binary.LittleEndian.Uint16(a)), uint64(binary.LittleEndian.Uint16(b)), 8, 7)
	case safetensors.F8E5M2:
		return floatULPs(uint64(a[0]), uint64(b[0]), 5, 2)
	case safetensors.F8E4M3:
		// E4M3 (fn) has no infinities: only S.1111.111 is NaN.
		if a[0]&0x7f == 0x7f || b[0]&0x7f == 0x7f {
			return ulpNaN
		}
		return signMagnitude(uint64(a[0]), uint64(b[0]), 8)
	case safetensors.F8E8M0, safetensors.U8, safetensors.BOOL, safetensors.U16, safetensors.U32, safetensors.U64:
		x, y := unsigned(a), unsigned(b)
		return max(x, y) - min(x, y)
	case safetensors.I8, safetensors.I16, safetensors.I32, safetensors.I64:
		w := uint(len(a) * 8)
		x, y := int64(unsigned(a)<<(64-w))>>(64-w), int64(unsigned(b)<<(64-w))>>(64-w)
		if x > y {
			x, y = y, x
		}
		return uint64(y - x)
	}
	return ulpNaN // packed or unknown: no order to measure in
}

func unsigned(b []byte) uint64 {
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// floatULPs measures two IEEE-style floats of the given exponent and mantissa widths;
// two NaNs are 0 apart, a NaN and a number ulpNaN.
func floatULPs(a, b uint64, exp, man uint) uint64 {
	nan := func(x uint64) bool {
		e := x >> man & (1<<exp - 1)
		return e == 1<<exp-1 && x&(1<<man-1) != 0
	}
	switch na, nb := nan(a), nan(b); {
	case na && nb:
		return 0
	case na || nb:
		return ulpNaN
	}
	return signMagnitude(a, b, 1+exp+man)
}

// signMagnitude maps sign-magnitude codes of w bits onto a line where neighbours are 1
// apart (+0 and -0 at the same point) and measures the distance.
func signMagnitude(a, b uint64, w uint) uint64 {
	key := func(x uint64) int64 {
		m := int64(x & (1<<(w-1) - 1))
		if x>>(w-1)&1 == 1 {
			return -m
		}
		return m
	}
	x, y := key(a), key(b)
	if x > y {
		x, y = y, x
	}
	return uint64(y - x)
}
