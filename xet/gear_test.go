package xet

import "testing"

// TestGearTable: huggingface.js packages/gearhash-jit/test/gearhash.test.ts, whose
// vectors come from the Rust gearhash crate: the raw gear hash over a seeded input with
// a sparse mask, the position and the full 64-bit hash at each of 45 matches. Each hash
// depends on the table entries of its last 64 bytes, so this checks the table itself.
func TestGearTable(t *testing.T) {
	const mask = 0x0000d90003530000
	input := make([]byte, 100_000)
	state := uint64(0xbecd17f) & 0xffffff
	for i := 0; i < len(input); i += 3 {
		state = (state*1111 + 12345) & 0xffffff
		for j := 0; j < 3 && i+j < len(input); j++ {
			input[i+j] = byte(state >> (8 * j))
		}
	}
	want := []struct {
		offset, size int
		hash         uint64
	}{
		{0, 3598, 0x033220f080ac5f77},
		{3598, 3995, 0xd06b22f324ac5f28},
		{7593, 4708, 0xa3a324f81808429c},
		{12301, 484, 0x12a5006aa4a4425b},
		{12785, 1484, 0x0b240413a4a4d5a2},
		{14269, 563, 0xc646022fbc848bc6},
		{14832, 6663, 0x7c7a2296e4a4c325},
		{21495, 1220, 0xbe1f2468f0841b68},
		{22715, 1175, 0xf87e2299e00c57d9},
		{23890, 779, 0x79ca2634d00cd6b9},
		{24669, 2069, 0xcb7a063594081a74},
		{26738, 2623, 0xdccc26b6c0acb733},
		{29361, 596, 0x4fb6201a1c20143e},
		{29957, 622, 0x81e726272020706f},
		{30579, 3834, 0x630622fca084a60a},
		{34413, 2379, 0x177b2240080810b1},
		{36792, 3527, 0x663b261bbc2451ed},
		{40319, 1665, 0xf94f06db94003e2f},
		{41984, 1240, 0xc5ca208c0c24cefc},
		{43224, 1274, 0x8139244f740cba39},
		{44498, 3680, 0x4440044520045a9d},
		{48178, 1487, 0xe00f2049a0a43a58},
		{49665, 4293, 0x366a26940408279d},
		{53958, 1184, 0x3a582683902cb3fe},
		{55142, 383, 0x002d0499e080702e},
		{55525, 1206, 0x34ba041aa4084fbd},
		{56731, 506, 0x0c53045c00a0a228},
		{57237, 8019, 0xf85b202d9c0813a5},
		{65256, 1070, 0x1c862295ac8863ba},
		{66326, 3359, 0x4e4804d7b82805c7},
		{69685, 1744, 0x75b7224cc8209457},
		{71429, 152, 0xb01e26b40c0cf7c0},
		{71581, 11, 0xc66002b7f48c0472},
		{71592, 1209, 0x0a33021dc4007363},
		{72801, 1795, 0xd0cc22ea708c921f},
		{74596, 856, 0x49e3007c9c2c5727},
		{75452, 97, 0xe0b422e3c40c89dc},
		{75549, 1299, 0xbd1806074024536a},
		{76848, 131, 0xd61104147c28928d},
		{76979, 1987, 0x31930627a080ebb0},
		{78966, 11254, 0x4c4400e65c24beff},
		{90220, 868, 0xa92400ca5ca02488},
		{91088, 6279, 0x5a3d0443f0a0d81a},
		{97367, 969, 0x7770042d140c7472},
		{98336, 1664, 0xe508202f55c46d2d},
	}
	var h uint64
	start, k := 0, 0
	for i, b := range input {
		h = h<<1 + gearTable[b]
		if h&mask != 0 {
			continue
		}
		if k >= len(want) {
			t.Fatalf("more matches than the reference's %d", len(want))
		}
		if w := want[k]; w.offset != start || w.size != i+1-start || (k < len(want)-1 && w.hash != h) {
			t.Fatalf("match %d: offset %d size %d hash %#x; want %d %d %#x", k, start, i+1-start, h, w.offset, w.size, w.hash)
		}
		k++
		start, h = i+1, 0
	}
	// The reference's last entry is the tail after the final match.
	if k != len(want)-1 || want[k].offset != start || want[k].size != len(input)-start {
		t.Fatalf("%d matches, tail at %d; want %d and %d", k, start, len(want)-1, want[len(want)-1].offset)
	}
}
