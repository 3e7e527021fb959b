package merge_test

import (
	"math"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// edgeModel is one 1×4 BF16 weight with a rank-3 LoRA whose terms cancel.
func edgeModel(w []float64, A, B []float64) (*fixture.Model, *fixture.Adapter) {
	m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
	m.Tensors = []*fixture.Tensor{{Name: "layer.proj.weight", DType: safetensors.BF16, Shape: []int64{1, 4}, Values: w}}
	a := fixture.NewAdapter(3, 3, "proj")
	a.Tensors = []*fixture.Tensor{
		{Name: fixture.Key("layer.proj", "lora_A.weight"), DType: safetensors.F32, Shape: []int64{3, 4}, Values: A},
		{Name: fixture.Key("layer.proj", "lora_B.weight"), DType: safetensors.F32, Shape: []int64{1, 3}, Values: B},
	}
	return m, a
}

// TestCancellation: terms of 2⁶⁶ that cancel hide a delta of 2⁻⁸ + 2⁻³⁰, which a
// float64 sum loses. The error bound sends those elements to the double-double path,
// which must round 1 + 2⁻⁸ + 2⁻³⁰ up to 1 + 2⁻⁷ (it is past the BF16 midpoint 1 + 2⁻⁸).
func TestCancellation(t *testing.T) {
	big, small := math.Ldexp(1, 33), math.Ldexp(1, -8)+math.Ldexp(1, -30)
	negZero := math.Copysign(0, -1)
	A := []float64{
		big, big, 0, 0, // k = 0
		small, -small, 0, 0, // k = 1
		big, big, 0, 0, // k = 2
	}
	B := []float64{big, 1, -big}
	m, a := edgeModel([]float64{1, 1, negZero, 0.5}, A, B)
	res := run(t, m, a, mergeplan.Options{})
	got := res.tensor(t, "layer.proj.weight").Values
	want := []float64{1 + math.Ldexp(1, -7), 1 - math.Ldexp(1, -8), negZero, 0.5}
	for i := range want {
		if got[i] != want[i] || math.Signbit(got[i]) != math.Signbit(want[i]) {
			t.Errorf("element %d = %v, want %v", i, got[i], want[i])
		}
	}
}

// TestBaseNaNPropagates: a non-finite base value stays as it is; only values the merge
// makes non-finite are errors.
func TestBaseNaNPropagates(t *testing.T) {
	m, a := edgeModel([]float64{math.NaN(), math.Inf(-1), 1, 2},
		[]float64{0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0, 0}, []float64{1, 0, 0})
	res := run(t, m, a, mergeplan.Options{})
	got := res.tensor(t, "layer.proj.weight").Values
	if !math.IsNaN(got[0]) || !math.IsInf(got[1], -1) || got[2] != 1.5 || got[3] != 2.5 {
		t.Errorf("got %v", got)
	}
}
