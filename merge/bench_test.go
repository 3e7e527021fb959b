package merge_test

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// BenchmarkShard merges a Llama layer's projections (hidden 1024, MLP 2816) at several
// ranks and reports the output rate.
func BenchmarkShard(b *testing.B) {
	for _, rank := range []int{16, 64} {
		b.Run(fmt.Sprintf("bf16/rank=%d", rank), func(b *testing.B) {
			m := fixture.Llama(fixture.LlamaSpec{Hidden: 1024, Intermediate: 2816, Layers: 1, Vocab: 256, KV: 256, DType: safetensors.BF16, Seed: 1})
			a := fixture.NewAdapter(rank, float64(rank))
			rnd := fixture.NewRand(2)
			for _, p := range projections {
				mod := "model.layers.0." + p
				w := m.Tensor(mod + ".weight")
				a.Linear(mod, w.Shape[0], w.Shape[1], rank, safetensors.F32, rnd)
			}
			p, files := plan(b, m, a, mergeplan.Options{})
			if !p.OK() {
				b.Fatal(p.Problems)
			}
			s := &p.Shards[0]
			b.SetBytes(s.Size())
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sh, err := merge.New(s, files, merge.Options{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := sh.Write(context.Background(), io.Discard, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
