package merge_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// stackRun plans adapters stacked on m with the given weights and merges every shard.
func stackRun(t *testing.T, m *fixture.Model, adapters []*fixture.Adapter, weights []float64) map[string]*fixture.Tensor {
	t.Helper()
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	if err := m.Write(base); err != nil {
		t.Fatal(err)
	}
	var in *mergeplan.Input
	files := map[string]io.ReaderAt{}
	var stack []mergeplan.Stacked
	for k, a := range adapters {
		ad := filepath.Join(dir, fmt.Sprintf("adapter%d", k))
		if err := a.Write(ad); err != nil {
			t.Fatal(err)
		}
		one, f, closeAll, err := fixture.Open(base, ad, mergeplan.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(closeAll)
		if in == nil {
			in = one
			for name, r := range f {
				files[name] = r
			}
		}
		files[mergeplan.AdapterFileOf(k)] = f[mergeplan.AdapterFile]
		stack = append(stack, mergeplan.Stacked{Config: one.AdapterConfig, File: one.Adapter, Weight: weights[k]})
	}
	p := mergeplan.BuildStack(in, stack)
	if !p.OK() {
		t.Fatalf("plan: %v", p.Problems)
	}
	out := map[string]*fixture.Tensor{}
	for i := range p.Shards {
		s := &p.Shards[i]
		sh, err := merge.New(s, files, merge.Options{Jobs: 2})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := sh.Write(context.Background(), &b, nil); err != nil {
			t.Fatal(err)
		}
		h, err := safetensors.ParseHeader(b.Bytes(), int64(b.Len()))
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range h.Tensors {
			raw := b.Bytes()[h.DataOffset+ti.Begin : h.DataOffset+ti.End]
			out[ti.Name] = &fixture.Tensor{Name: ti.Name, DType: ti.DType, Shape: ti.Shape, Values: fixture.Decode(ti.DType, raw)}
		}
	}
	return out
}

// TestStacked: two adapters merged in one pass give W + s₁·B₁A₁ + w₂·s₂·B₂A₂ rounded
// once, against the exact reference; merging them one after the other (each merge
// correctly rounded, as hfmerge's are) rounds twice, and is further from the exact sum.
func TestStacked(t *testing.T) {
	m := llama(safetensors.BF16, 1)
	a1 := linearAdapter(m, 16, 32, safetensors.F32, 2) // scale 2
	a2 := linearAdapter(m, 16, 16, safetensors.F32, 3) // scale 1, weight 0.5
	got := stackRun(t, m, []*fixture.Adapter{a1, a2}, []float64{1, 0.5})
	var stacked, twice tally
	differ := 0
	for l := 0; l < 2; l++ {
		for _, p := range projections {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			rows, cols := int(w.Shape[0]), int(w.Shape[1])
			d1 := linearDelta(2, 16, a1.Tensor(fixture.Key(mod, "lora_A.weight")), a1.Tensor(fixture.Key(mod, "lora_B.weight")))
			d2 := linearDelta(0.5, 16, a2.Tensor(fixture.Key(mod, "lora_A.weight")), a2.Tensor(fixture.Key(mod, "lora_B.weight")))
			g := got[mod+".weight"]
			checkTensor(&stacked, safetensors.BF16, g.Values, w.Values, rows, cols, []refDelta{d1, d2})
			// Two single merges: the first rounded, the second added to that.
			first := exactValues(w.Values, rows, cols, []refDelta{d1})
			mid := make([]float64, len(first))
			for i, x := range first {
				mid[i] = roundExact(safetensors.BF16, x)
			}
			second := exactValues(mid, rows, cols, []refDelta{d2})
			seq := make([]float64, len(second))
			for i, x := range second {
				seq[i] = roundExact(safetensors.BF16, x)
				if seq[i] != g.Values[i] {
					differ++
				}
			}
			checkTensor(&twice, safetensors.BF16, seq, w.Values, rows, cols, []refDelta{d1, d2})
		}
	}
	stacked.assert(t, "stacked, one rounding", safetensors.BF16, false)
	t.Logf("two single merges: %d of %d elements are not the correctly rounded sum (worst %.3g ulp); %d differ from the stacked merge",
		twice.differ, twice.n, twice.worst, differ)
	if twice.differ <= stacked.differ || differ == 0 {
		t.Errorf("two rounds of single merges are no worse than one stacked merge (%d vs %d elements off, %d differ)", twice.differ, stacked.differ, differ)
	}
	// The reference catches a stack that drops the second adapter's weight.
	var wrong tally
	for l := 0; l < 1; l++ {
		mod := fmt.Sprintf("model.layers.%d.self_attn.q_proj", l)
		w := m.Tensor(mod + ".weight")
		d1 := linearDelta(2, 16, a1.Tensor(fixture.Key(mod, "lora_A.weight")), a1.Tensor(fixture.Key(mod, "lora_B.weight")))
		d2 := linearDelta(1, 16, a2.Tensor(fixture.Key(mod, "lora_A.weight")), a2.Tensor(fixture.Key(mod, "lora_B.weight")))
		checkTensor(&wrong, safetensors.BF16, got[mod+".weight"].Values, w.Values, int(w.Shape[0]), int(w.Shape[1]), []refDelta{d1, d2})
	}
	if wrong.far == 0 {
		t.Error("the reference does not notice a weight of 1 where the stack used 0.5")
	}
}

// TestStackRefusals: stacking is refused, naming the tensor, where its result is not
// defined: DoRA on a tensor another adapter changes.
func TestStackRefusals(t *testing.T) {
	m := llama(safetensors.BF16, 1)
	a1 := linearAdapter(m, 8, 16, safetensors.F32, 2)
	a2 := linearAdapter(m, 8, 16, safetensors.F32, 3)
	a2.Config["use_dora"] = true
	rnd := fixture.NewRand(4)
	for l := 0; l < 2; l++ {
		for _, p := range projections {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a2.Add(fixture.Key(mod, "lora_magnitude_vector"), safetensors.F32, 0.1, rnd, w.Shape[0])
		}
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	m.Write(base)
	var in *mergeplan.Input
	var stack []mergeplan.Stacked
	for k, a := range []*fixture.Adapter{a1, a2} {
		ad := filepath.Join(dir, fmt.Sprint(k))
		a.Write(ad)
		one, _, closeAll, err := fixture.Open(base, ad, mergeplan.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(closeAll)
		if in == nil {
			in = one
		}
		stack = append(stack, mergeplan.Stacked{Config: one.AdapterConfig, File: one.Adapter, Weight: 1})
	}
	p := mergeplan.BuildStack(in, stack)
	if p.OK() || !strings.Contains(p.Problems[0].Message, "DoRA") || !strings.HasPrefix(p.Problems[0].Subject, "adapter 2: model.layers.") {
		t.Fatalf("problems: %v", p.Problems)
	}
}
