package hfmerge

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

func shardsOfSizes(sizes ...int64) []mergeplan.Shard {
	out := make([]mergeplan.Shard, len(sizes))
	for i, n := range sizes {
		out[i] = mergeplan.Shard{Name: fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(sizes)), Layout: &safetensors.Layout{Size: n}}
	}
	return out
}

// names lists each share's shard names.
func names(shards []mergeplan.Shard, parts [][]int) [][]string {
	out := make([][]string, len(parts))
	for k, idx := range parts {
		out[k] = []string{}
		for _, i := range idx {
			out[k] = append(out[k], shards[i].Name)
		}
	}
	return out
}

func loads(shards []mergeplan.Shard, parts [][]int) []int64 {
	out := make([]int64, len(parts))
	for k, idx := range parts {
		for _, i := range idx {
			out[k] += shards[i].Size()
		}
	}
	return out
}

// best is the smallest possible largest share, by trying every assignment.
func best(sizes []int64, n int) int64 {
	load := make([]int64, n)
	var rec func(i int) int64
	rec = func(i int) int64 {
		if i == len(sizes) {
			return slices.Max(load)
		}
		m := int64(1 << 62)
		for k := range n {
			load[k] += sizes[i]
			m = min(m, rec(i+1))
			load[k] -= sizes[i]
		}
		return m
	}
	return rec(0)
}

// TestPartition: every shard in exactly one share; balanced by bytes (each share within
// one shard of the mean, the largest within 4/3 of the best possible); the same result
// whatever order the shards come in; more shares than shards leaves some empty.
func TestPartition(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	for trial := range 200 {
		count := 1 + rng.IntN(9)
		n := 1 + rng.IntN(5)
		sizes := make([]int64, count)
		for i := range sizes {
			sizes[i] = 1 + rng.Int64N(1000)
			if rng.IntN(4) == 0 && i > 0 {
				sizes[i] = sizes[i-1] // ties
			}
		}
		shards := shardsOfSizes(sizes...)
		parts := Partition(shards, n)
		if len(parts) != n {
			t.Fatalf("trial %d: %d shares, want %d", trial, len(parts), n)
		}
		seen := map[int]int{}
		for _, idx := range parts {
			if !slices.IsSorted(idx) {
				t.Errorf("trial %d: share not in plan order: %v", trial, idx)
			}
			for _, i := range idx {
				seen[i]++
			}
		}
		for i := range shards {
			if seen[i] != 1 {
				t.Fatalf("trial %d: shard %d is in %d shares", trial, i, seen[i])
			}
		}
		l := loads(shards, parts)
		var total int64
		for _, s := range sizes {
			total += s
		}
		for k, x := range l {
			// Greedy into the least loaded: when a share got its last shard it was the
			// least loaded, at most the mean.
			if x > total/int64(n)+slices.Max(sizes) {
				t.Errorf("trial %d: share %d holds %d bytes, more than the mean %d plus the largest shard %d", trial, k+1, x, total/int64(n), slices.Max(sizes))
			}
		}
		if opt := best(sizes, n); 3*slices.Max(l) > 4*opt {
			t.Errorf("trial %d: sizes %v in %d: largest share %d, best possible %d", trial, sizes, n, slices.Max(l), opt)
		}
		// Another order of the same shards (as another machine might list them):
		// the same names in the same shares.
		perm := slices.Clone(shards)
		rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		a, b := names(shards, parts), names(perm, Partition(perm, n))
		for k := range a {
			x, y := slices.Clone(a[k]), slices.Clone(b[k])
			slices.Sort(x)
			slices.Sort(y)
			if !slices.Equal(x, y) {
				t.Fatalf("trial %d: share %d is %v, or %v with the shards in another order", trial, k+1, x, y)
			}
		}
	}
}

func TestPartitionExamples(t *testing.T) {
	for _, tc := range []struct {
		sizes []int64
		n     int
		want  string
	}{
		// Largest first into the least loaded: 10→1, 9→2, 8→3, 7→3 (it holds 8),
		// 6→2 (9), 5→1 (10), 4→1 (all hold 15: the lowest numbered).
		{[]int64{10, 9, 8, 7, 6, 5, 4}, 3, "[1 6 7] [2 5] [3 4]"},
		// Equal sizes: in name order, round the shares.
		{[]int64{5, 5, 5, 5}, 2, "[1 3] [2 4]"},
		// More shares than shards: the last ones are empty.
		{[]int64{3, 2, 1}, 5, "[1] [2] [3] [] []"},
		{[]int64{7}, 1, "[1]"},
	} {
		shards := shardsOfSizes(tc.sizes...)
		var got []string
		for _, idx := range Partition(shards, tc.n) {
			nums := []string{}
			for _, i := range idx {
				nums = append(nums, fmt.Sprint(i+1))
			}
			got = append(got, "["+strings.Join(nums, " ")+"]")
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("Partition(%v, %d) = %s, want %s", tc.sizes, tc.n, g, tc.want)
		}
	}
}

func TestParseShare(t *testing.T) {
	for in, want := range map[string]string{"1/3": "1/3", "3/3": "3/3", " 2/4 ": "2/4", "1/1": "1/1"} {
		s, err := ParseShare(in)
		if err != nil || s.String() != want {
			t.Errorf("ParseShare(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for in, why := range map[string]string{"0/3": "0-based", "4/3": "from 1 to N", "3": "not i/N", "a/b": "whole numbers", "1/0": "N must be"} {
		if _, err := ParseShare(in); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseShare(%q): %v, want an error saying %q", in, err, why)
		}
	}
	for in, want := range map[string]string{"0/3": "1/3", "2/3": "3/3", "0/1": "1/1"} {
		s, err := ParseShareIndex(in)
		if err != nil || s.String() != want {
			t.Errorf("ParseShareIndex(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for _, in := range []string{"3/3", "-1/3", "x/3", "1"} {
		if s, err := ParseShareIndex(in); err == nil {
			t.Errorf("ParseShareIndex(%q) = %v, want an error", in, s)
		}
	}
	for _, p := range []string{"shares/2-of-3.json", "shares/10-of-12.json"} {
		if s, ok := parseManifestPath(p); !ok || s.manifestPath() != p {
			t.Errorf("parseManifestPath(%q) = %v, %v", p, s, ok)
		}
	}
	for _, p := range []string{"shares/0-of-3.json", "shares/2-of-3/x.safetensors", "shares/02-of-3.json", "x/1-of-1.json"} {
		if _, ok := parseManifestPath(p); ok {
			t.Errorf("parseManifestPath(%q) accepted", p)
		}
	}
}
