package merge

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// BenchmarkKernels computes one row block of a Llama projection (256 K elements of a
// hidden-2048 model, read beforehand) on one core with each kernel this CPU runs, and
// reports the block's input and output bytes per second, the product's GFLOP/s
// (2·rank per element) and the fastest single block (min-ns/op: on a shared machine
// the mean mostly measures the neighbours). The cases: plain LoRA of rank 16, 32 and
// 64; two deltas of rank 16 (one chain of rank 32, to compare with rank=32); and DoRA
// of rank 16 (V, norms, rescale and rounding, to compare with rank=16).
func BenchmarkKernels(b *testing.B) {
	type bcase struct {
		name  string
		ranks []int
		dora  bool
	}
	cases := []bcase{{"rank=16", []int{16}, false}, {"rank=32", []int{32}, false}, {"rank=64", []int{64}, false},
		{"rank=16+16", []int{16, 16}, false}, {"dora/rank=16", []int{16}, true}}
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32} {
		for _, c := range cases {
			for _, name := range Kernels() {
				b.Run(fmt.Sprintf("%s/%s/%s", name, dt, c.name), func(b *testing.B) {
					m := benchTensor(b, name, dt, 5632, 2048, c.ranks, c.dora)
					r0, r1 := m.span(0)
					dst := make([]byte, (r1-r0)*m.cols*size(dt))
					acc := new(scratch)
					raw, err := m.source(r0, r1, acc)
					if err != nil {
						b.Fatal(err)
					}
					raw = append([]byte(nil), raw...)
					run := func() error {
						if !c.dora {
							return m.fusedBlock(r0, r1, raw, dst, acc)
						}
						v := acc.values((r1 - r0) * m.cols)
						if err := m.doraValues(r0, r1, raw, v, acc); err != nil {
							return err
						}
						return m.doraPut(r0, r1, v, raw, dst, acc)
					}
					if err := run(); err != nil { // load the factors
						b.Fatal(err)
					}
					elems := (r1 - r0) * m.cols
					b.SetBytes(int64(len(raw) + len(dst)))
					best := time.Duration(1 << 62)
					for b.Loop() {
						t := time.Now()
						if err := run(); err != nil {
							b.Fatal(err)
						}
						best = min(best, time.Since(t))
					}
					rank := 0
					for _, r := range c.ranks {
						rank += r
					}
					b.ReportMetric(float64(2*rank*elems)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
					b.ReportMetric(float64(best.Nanoseconds()), "min-ns/op")
				})
			}
		}
	}
}

// oneWeight is the merged shard of a model with one (rows, cols) weight, normal with a
// deviation of 0.02, and a rank-r LoRA (scale 1) on it.
func oneWeight(tb testing.TB, dt safetensors.DType, rows, cols int64, rank int, opts Options) *Shard {
	tb.Helper()
	return weights(tb, dt, rows, cols, []int{rank}, false, opts)
}

// weights is the merged shard of a model with a (rows, cols) weight, normal with a
// deviation of 0.02, and a LoRA (or DoRA) delta for each rank given, all on it: the
// first from the adapter's module for the weight, the others moved onto it from modules
// of weights of the same shape, as a folded tied embedding or stacked adapters give.
func weights(tb testing.TB, dt safetensors.DType, rows, cols int64, ranks []int, dora bool, opts Options) *Shard {
	tb.Helper()
	m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
	rnd := fixture.NewRand(1)
	a := fixture.NewAdapter(ranks[0], float64(ranks[0]))
	a.Config["use_dora"] = dora
	pattern := map[string]any{}
	var targets []string
	for i, r := range ranks {
		mod := fmt.Sprintf("layer%d.proj", i)
		m.Tensors = append(m.Tensors, &fixture.Tensor{Name: mod + ".weight", DType: dt, Shape: []int64{rows, cols},
			Values: rnd.Normal(int(rows*cols), 0.02, dt)})
		a.Linear(mod, rows, cols, r, safetensors.F32, rnd)
		if dora {
			a.Add(fixture.Key(mod, "lora_magnitude_vector"), safetensors.F32, 0.2, rnd, rows)
		}
		pattern[mod] = r
		targets = append(targets, mod)
	}
	a.Config["target_modules"] = targets
	a.Config["rank_pattern"] = pattern
	dir := tb.TempDir()
	if err := m.Write(filepath.Join(dir, "base")); err != nil {
		tb.Fatal(err)
	}
	if err := a.Write(filepath.Join(dir, "adapter")); err != nil {
		tb.Fatal(err)
	}
	in, files, closeAll, err := fixture.Open(filepath.Join(dir, "base"), filepath.Join(dir, "adapter"), mergeplan.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(closeAll)
	p := mergeplan.Build(in)
	if !p.OK() {
		tb.Fatal(p.Problems)
	}
	var ts []*mergeplan.Tensor
	for _, s := range p.Shards {
		for i := range s.Tensors {
			ts = append(ts, &s.Tensors[i])
		}
	}
	if len(p.Shards) != 1 || len(ts) != len(ranks) {
		tb.Fatalf("plan has %d shards, %d tensors", len(p.Shards), len(ts))
	}
	for _, t := range ts[1:] {
		ts[0].Deltas = append(ts[0].Deltas, t.Deltas...)
		t.Deltas, t.DoRA = nil, nil
	}
	sh, err := New(&p.Shards[0], files, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return sh
}

// benchTensor prepares a (rows, cols) weight with a delta of each rank for the named
// kernel.
func benchTensor(b *testing.B, kernel string, dt safetensors.DType, rows, cols int64, ranks []int, dora bool) *tensor {
	b.Helper()
	sh := weights(b, dt, rows, cols, ranks, dora, Options{Jobs: 1, Kernel: kernel})
	t := sh.tensors[0]
	if t.t.Copy() || len(t.t.Deltas) != len(ranks) {
		b.Fatal("the first tensor does not have every delta")
	}
	return t
}
