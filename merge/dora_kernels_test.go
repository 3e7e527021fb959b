package merge_test

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// doraCase is one trial of TestDoRAKernels: a Linear weight (per-row norms) or an
// embedding (per-column norms) with a DoRA adapter, and optionally a second delta.
type doraCase struct {
	trial            int
	rows, cols, rank int
	base, out        safetensors.DType
	adapter          safetensors.DType
	embedding        bool
	specials         bool
	second           bool // a second low-rank delta on the tensor
	jobs             int
}

func (c doraCase) String() string {
	return fmt.Sprintf("trial %d: (%d, %d) rank %d, %s → %s, adapter %s, embedding %v, specials %v, two deltas %v, jobs %d",
		c.trial, c.rows, c.cols, c.rank, c.base, c.out, c.adapter, c.embedding, c.specials, c.second, c.jobs)
}

func newDoRACase(i int) doraCase {
	rows := []int{1, 5, 6, 7, 13, 40, 12, 19}
	cols := []int{3, 8, 15, 17, 64, 99, 24, 40, 33}
	ranks := []int{1, 3, 8, 16, 31}
	c := doraCase{
		trial: i, rows: rows[i%len(rows)], cols: cols[i%len(cols)], rank: ranks[i%len(ranks)],
		base: baseDTypes[i%3], adapter: adapterDTypes[i/3%2], embedding: i%2 == 1,
		specials: i%4 == 3, second: i%5 == 2, jobs: 1 + i%3,
	}
	c.out = c.base
	if i%7 == 4 {
		c.out = baseDTypes[(i+1)%3]
	}
	return c
}

// build writes the case's model and adapter, plans, and returns the plan and the
// reference's deltas and magnitudes.
func (c doraCase) build(t *testing.T) (*mergeplan.Plan, map[string]io.ReaderAt, []float64, []refDelta, []float64) {
	t.Helper()
	r := rand.New(rand.NewPCG(0xd02a, uint64(c.trial)))
	mod, name := "layer.proj", "layer.proj.weight"
	if c.embedding {
		mod, name = "model.embed_tokens", "model.embed_tokens.weight"
	}
	W := make([]float64, c.rows*c.cols)
	for i := range W {
		W[i] = fixture.Round(c.base, r.NormFloat64()*0.02)
		if c.specials && r.IntN(12) == 0 {
			// Not NaN: a NaN makes its whole row or column NaN, which the merge refuses.
			W[i] = []float64{math.Inf(-1), math.Inf(1), math.Copysign(0, -1), 0, math.Ldexp(1, -130)}[r.IntN(5)]
		}
	}
	// A zero row or column of W and delta: its norm is zero.
	if c.rows > 3 && !c.embedding {
		for j := 0; j < c.cols; j++ {
			W[2*c.cols+j] = 0
		}
	}
	W = fixture.Decode(c.base, fixture.Encode(c.base, W))
	m := &fixture.Model{Config: map[string]any{"model_type": "llama"}}
	m.Tensors = []*fixture.Tensor{{Name: name, DType: c.base, Shape: []int64{int64(c.rows), int64(c.cols)}, Values: W}}
	targets := []string{mod[len("layer."):]}
	if c.embedding {
		targets = []string{"embed_tokens"}
	}
	if c.second {
		m.Tensors = append(m.Tensors, &fixture.Tensor{Name: "layer.other.weight", DType: c.base, Shape: []int64{int64(c.rows), int64(c.cols)},
			Values: fixture.NewRand(uint64(c.trial)).Normal(c.rows*c.cols, 0.02, c.base)})
		targets = append(targets, "other")
	}
	a := fixture.NewAdapter(c.rank, float64(2*c.rank), targets...)
	a.Config["use_dora"] = true
	norm := func(n int, std float64) []float64 {
		x := make([]float64, n)
		for i := range x {
			x[i] = fixture.Round(c.adapter, r.NormFloat64()*std)
		}
		return x
	}
	var deltas []refDelta
	var magLen int
	if c.embedding {
		A := &fixture.Tensor{Name: fixture.Key(mod, "lora_embedding_A"), DType: c.adapter, Shape: []int64{int64(c.rank), int64(c.rows)}, Values: norm(c.rank*c.rows, 0.1)}
		B := &fixture.Tensor{Name: fixture.Key(mod, "lora_embedding_B"), DType: c.adapter, Shape: []int64{int64(c.cols), int64(c.rank)}, Values: norm(c.cols*c.rank, 0.05)}
		a.Tensors = append(a.Tensors, A, B)
		deltas = append(deltas, transposedDelta(2, c.rank, A, B))
		magLen = c.cols
	} else {
		A := &fixture.Tensor{Name: fixture.Key(mod, "lora_A.weight"), DType: c.adapter, Shape: []int64{int64(c.rank), int64(c.cols)}, Values: norm(c.rank*c.cols, 0.1)}
		B := &fixture.Tensor{Name: fixture.Key(mod, "lora_B.weight"), DType: c.adapter, Shape: []int64{int64(c.rows), int64(c.rank)}, Values: norm(c.rows*c.rank, 0.05)}
		if c.rows > 3 {
			for k := 0; k < c.rank; k++ {
				B.Values[2*c.rank+k] = 0
			}
		}
		a.Tensors = append(a.Tensors, A, B)
		deltas = append(deltas, linearDelta(2, c.rank, A, B))
		magLen = c.rows
	}
	mag := norm(magLen, 0.2)
	mag[0] = 0
	a.Tensors = append(a.Tensors, &fixture.Tensor{Name: fixture.Key(mod, "lora_magnitude_vector"), DType: c.adapter, Shape: []int64{int64(magLen)}, Values: mag})
	if c.second {
		A := &fixture.Tensor{Name: fixture.Key("layer.other", "lora_A.weight"), DType: c.adapter, Shape: []int64{int64(c.rank), int64(c.cols)}, Values: norm(c.rank*c.cols, 0.1)}
		B := &fixture.Tensor{Name: fixture.Key("layer.other", "lora_B.weight"), DType: c.adapter, Shape: []int64{int64(c.rows), int64(c.rank)}, Values: norm(c.rows*c.rank, 0.05)}
		a.Tensors = append(a.Tensors, A, B,
			&fixture.Tensor{Name: fixture.Key("layer.other", "lora_magnitude_vector"), DType: c.adapter, Shape: []int64{int64(c.rows)}, Values: norm(c.rows, 0.2)})
		deltas = append(deltas, linearDelta(-2, c.rank, A, B))
	}
	var opts mergeplan.Options
	if c.out != c.base {
		opts.DType = map[safetensors.DType]mergeplan.DTypeChoice{
			safetensors.BF16: mergeplan.ToBF16, safetensors.F16: mergeplan.ToF16, safetensors.F32: mergeplan.ToF32,
		}[c.out]
	}
	p, files := plan(t, m, a, opts)
	if !p.OK() {
		t.Fatalf("%s: plan has problems: %v", c, p.Problems)
	}
	if c.second {
		// Move the other module's delta onto this tensor, with another scale, and drop
		// its DoRA: as a folded tied embedding or stacked adapters give.
		var t1, t2 *mergeplan.Tensor
		for i := range p.Shards[0].Tensors {
			switch x := &p.Shards[0].Tensors[i]; x.Name {
			case name:
				t1 = x
			case "layer.other.weight":
				t2 = x
			}
		}
		d := t2.Deltas[0]
		d.Scale = -2
		t1.Deltas = append(t1.Deltas, d)
		t2.Deltas, t2.DoRA = nil, nil
	}
	return p, files, W, deltas, mag
}

// TestDoRAKernels: DoRA's V, norms, rescale and rounding give the same bytes with every
// kernel (the fused V forms against the Go path, which computes V a block of products at
// a time), on Linear and embedding weights, with Go tail columns, NaN, infinities, zero
// rows and magnitudes, other output dtypes and a second delta; and the values are
// within the DoRA bound of the independent reference.
func TestDoRAKernels(t *testing.T) {
	kernels := merge.Kernels()
	var tl [3]tally // by output dtype
	specialNaN := 0
	for i := 0; i < 36; i++ {
		c := newDoRACase(i)
		p, fs, W, deltas, mag := c.build(t)
		name := "layer.proj.weight"
		if c.embedding {
			name = "model.embed_tokens.weight"
		}
		var ref []byte
		for _, k := range kernels {
			got, dt := tensorBytes(t, mergeWith(t, p, fs, k, c.jobs, uint64(i)), name)
			if dt != c.out {
				t.Fatalf("%s: output %s", c, dt)
			}
			if ref == nil {
				ref = got
				continue
			}
			if !bytes.Equal(got, ref) {
				n, first := 0, -1
				sz := size(c.out)
				for e := 0; e < len(got)/sz; e++ {
					if !bytes.Equal(got[e*sz:(e+1)*sz], ref[e*sz:(e+1)*sz]) {
						if n++; first < 0 {
							first = e
						}
					}
				}
				t.Errorf("%s: kernel %s differs from %s in %d elements, first [%d, %d]: %s, not %s", c, k, kernels[0], n,
					first/c.cols, first%c.cols, le(got[first*sz:(first+1)*sz]), le(ref[first*sz:(first+1)*sz]))
			}
		}
		vals := fixture.Decode(c.out, ref)
		if c.specials {
			// An infinity's row (per-row norms) or column has the norm ∞: the
			// infinity becomes ∞·0, NaN, and the rest zero.
			nan := 0
			for e, v := range vals {
				if math.IsInf(v, 0) {
					t.Errorf("%s: element %d is %v", c, e, v)
				}
				if math.IsNaN(v) {
					nan++
				}
			}
			specialNaN += nan
			continue
		}
		exact := doraRef(W, c.rows, c.cols, deltas, mag, !c.embedding)
		for e, v := range vals {
			tl[kindIndex(c.out)].check(c.out, v, exact[e], 0)
		}
	}
	for k, dt := range baseDTypes {
		tl[k].assert(t, "dora kernels "+string(dt), dt, true)
	}
	if specialNaN < 10 {
		t.Errorf("only %d NaN results from infinite weights", specialNaN)
	}
}

func kindIndex(dt safetensors.DType) int {
	for i, d := range baseDTypes {
		if d == dt {
			return i
		}
	}
	panic(dt)
}
