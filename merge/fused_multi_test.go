package merge_test

import (
	"bytes"
	"io"
	"math"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
)

const fusedWeight2 = "layer.proj2.weight"

// splitPlan plans trial c's merge with its delta split in two along the rank: s·B₁·A₁
// from module proj and (−s)·(−B₂)·A₂ from module proj2, both moved onto proj's weight,
// as the planner does for a tied embedding folded together, and as stacked adapters
// will. The exact sum is the trial's own delta, so its ties stay ties; the second
// delta's scale differs in sign, so a chain that took one delta's scale for another
// would be caught.
func splitPlan(t *testing.T, c *fusedCase, r1 int) (*mergeplan.Plan, map[string]io.ReaderAt) {
	t.Helper()
	m, _, popts := c.fixtures()
	m.Tensors = append(m.Tensors, &fixture.Tensor{Name: fusedWeight2, DType: c.base, Shape: []int64{int64(c.rows), int64(c.cols)},
		Values: fixture.NewRand(uint64(c.trial)).Normal(c.rows*c.cols, 0.02, c.base)})
	r2 := c.rank - r1
	a := fixture.NewAdapter(r1, c.alpha, "proj", "proj2")
	a.Config["rank_pattern"] = map[string]any{"proj2": r2}
	A1, A2 := c.A[:r1*c.cols], c.A[r1*c.cols:]
	B1, B2 := make([]float64, c.rows*r1), make([]float64, c.rows*r2)
	for o := 0; o < c.rows; o++ {
		copy(B1[o*r1:], c.B[o*c.rank:o*c.rank+r1])
		for k := 0; k < r2; k++ {
			B2[o*r2+k] = -c.B[o*c.rank+r1+k]
		}
	}
	a.Tensors = []*fixture.Tensor{
		{Name: fixture.Key("layer.proj", "lora_A.weight"), DType: c.adapter, Shape: []int64{int64(r1), int64(c.cols)}, Values: A1},
		{Name: fixture.Key("layer.proj", "lora_B.weight"), DType: c.adapter, Shape: []int64{int64(c.rows), int64(r1)}, Values: B1},
		{Name: fixture.Key("layer.proj2", "lora_A.weight"), DType: c.adapter, Shape: []int64{int64(r2), int64(c.cols)}, Values: A2},
		{Name: fixture.Key("layer.proj2", "lora_B.weight"), DType: c.adapter, Shape: []int64{int64(c.rows), int64(r2)}, Values: B2},
	}
	p, files := plan(t, m, a, popts)
	if !p.OK() {
		t.Fatalf("%s: plan has problems: %v", c, p.Problems)
	}
	tensors := map[string]*mergeplan.Tensor{}
	for i := range p.Shards[0].Tensors {
		x := &p.Shards[0].Tensors[i]
		tensors[x.Name] = x
	}
	t1, t2 := tensors[fusedWeight], tensors[fusedWeight2]
	if t1 == nil || t2 == nil || len(t1.Deltas) != 1 || len(t2.Deltas) != 1 || t1.Deltas[0].Rank != r1 || t2.Deltas[0].Rank != r2 {
		t.Fatalf("%s: the plan does not have one delta of rank %d and one of %d", c, r1, r2)
	}
	d2 := t2.Deltas[0]
	t1.Deltas[0].Scale, d2.Scale = c.scale, -c.scale
	t1.Deltas = append(t1.Deltas, d2)
	t2.Deltas = nil
	return p, files
}

// TestFusedMultiDelta: a tensor with two deltas takes the fused path as one chain of
// their summed rank, and every kernel still gives the correctly rounded value of every
// element, by the reference, on the trials of TestFusedKernels (ties, specials, every
// type pair, Go tail columns).
func TestFusedMultiDelta(t *testing.T) {
	kernels := merge.Kernels()
	checked, ties := 0, 0
	for i := 0; i < 40; i++ {
		c := newFusedCase(i)
		if c.rank < 2 {
			continue
		}
		r1 := 1 + i%(c.rank-1)
		p, files := splitPlan(t, c, r1)
		var ref []byte
		for _, k := range kernels {
			file := mergeWith(t, p, files, k, c.jobs, uint64(i))
			got, dt := tensorBytes(t, file, fusedWeight)
			if dt != c.out {
				t.Fatalf("%s: output %s", c, dt)
			}
			sz := size(c.out)
			bad := 0
			var st fusedStats
			for e := range c.W {
				want, x := c.want(e, &st)
				g := got[e*sz : (e+1)*sz]
				ok := bytes.Equal(g, fixture.Encode(c.out, []float64{want}))
				if math.IsNaN(want) {
					ok = math.IsNaN(fixture.Decode(c.out, g)[0])
				}
				if !ok {
					if bad++; bad <= 4 {
						t.Errorf("%s, split %d+%d: kernel %s: %s: got %v [%s], want %v",
							c, r1, c.rank-r1, k, c.describe(e, x), fixture.Decode(c.out, g)[0], le(g), want)
					}
				}
			}
			if k == merge.KernelGo {
				checked += len(c.W)
				ties += st.ties
			}
			if ref == nil {
				ref = got
			} else if !bytes.Equal(ref, got) {
				t.Errorf("%s: kernel %s gives other bytes than %s", c, k, kernels[0])
			}
		}
	}
	t.Logf("%d elements of split deltas, %d exact ties", checked, ties)
	if checked < 5000 || ties < 100 {
		t.Errorf("only %d elements and %d ties checked", checked, ties)
	}
}
