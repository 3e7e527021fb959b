package mergeplan_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestCatastrophicPattern: a rank_pattern key that backtracks without end is refused
// on its first timeout, once, naming it, however many modules there are: the plan's
// matches share one time budget (the issue asks for a refusal within 5 s; with a
// budget per match, 32 modules × 2 s would take a minute).
func TestCatastrophicPattern(t *testing.T) {
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 32, Intermediate: 64, Layers: 8, Vocab: 40, DType: safetensors.BF16, Seed: 1})
	a := fixture.NewAdapter(8, 16)
	for l := range 8 {
		for _, p := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj"} {
			lora(m, a, fmt.Sprintf("model.layers.%d.%s", l, p), 8)
		}
	}
	const key = `((\w|\.)+)+!`
	a.Config["rank_pattern"] = map[string]any{key: 4}
	start := time.Now()
	p := mergeplan.Build(input(t, m, a, mergeplan.Options{}))
	took := time.Since(start)
	n := 0
	for _, pr := range p.Problems {
		if strings.Contains(pr.String(), strconv.Quote(key)) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d problems name the pattern, want 1: %v", n, p.Problems)
	}
	expectProblem(t, p, "rank_pattern", strconv.Quote(key), "backtracks")
	if took > 5*time.Second {
		t.Errorf("the plan took %v to refuse the pattern", took)
	}
	t.Logf("refused in %v", took)
}

// TestRankTooLarge: an r beyond any rank is reported as too large, not as "want an
// integer" (it is one).
func TestRankTooLarge(t *testing.T) {
	_, err := mergeplan.ParseAdapterConfig([]byte(`{"peft_type": "LORA", "r": 1e12}`))
	if err == nil || !strings.Contains(err.Error(), "too large") || strings.Contains(err.Error(), "want an integer") {
		t.Errorf("r = 1e12: %v", err)
	}
}
