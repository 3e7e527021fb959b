package hfmerge

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestPlanReadsHeadersOnly: planning reads each safetensors file's header and nothing
// else, and finds the same problems merge does.
func TestPlanReadsHeadersOnly(t *testing.T) {
	base, adapter := model(t, tinySpec(), 2, []string{"self_attn.q_proj"}, func(m *fixture.Model, a *fixture.Adapter) {
		a.Linear("model.layers.9.mlp.up_proj", 128, 64, 8, safetensors.F32, fixture.NewRand(5)) // a problem
	})
	var read atomic.Int64
	var headers, total int64
	o := &Sources{open: func(path string) (File, error) {
		f, err := openRegular(path)
		if err != nil {
			return nil, err
		}
		var prefix [8]byte
		f.ReadAt(prefix[:], 0)
		n, _ := safetensors.HeaderLen(prefix[:])
		headers += 8 + n
		total += f.Size()
		return &countingFile{f, &read}, nil
	}}
	l := loadDirs(t, o, base, adapter)
	p := l.Plan()
	if p.OK() || !strings.Contains(p.Problems[0].String(), "model.layers.9.mlp.up_proj") {
		t.Fatalf("problems: %v", p.Problems)
	}
	// ReadHeader reads the 8-byte length, then the JSON: exactly the headers.
	if got := read.Load(); got != headers {
		t.Errorf("planning read %d bytes; the headers are %d bytes (files %d bytes)", got, headers, total)
	}
	if headers*10 > total {
		t.Fatalf("fixture headers are too large a share of the files for this test to mean anything")
	}
}

// TestUnchangedShards: a shard whose tensors the adapter leaves alone is planned as the
// base's own bytes, and the merge indeed writes those bytes; a changed one is not.
func TestUnchangedShards(t *testing.T) {
	spec := tinySpec()
	spec.Layers = 4
	base, adapter := model(t, spec, 4, nil, func(m *fixture.Model, a *fixture.Adapter) {
		w := m.Tensor("model.layers.0.self_attn.q_proj.weight")
		a.Linear("model.layers.0.self_attn.q_proj", w.Shape[0], w.Shape[1], 8, safetensors.F32, fixture.NewRand(3))
	})
	l := loadDirs(t, &Sources{}, base, adapter)
	p := l.Plan()
	if !p.OK() {
		t.Fatal(p.Problems)
	}
	out := t.TempDir() + "/out"
	if err := MergeDir(t.Context(), l, p, out, MergeOptions{}); err != nil {
		t.Fatal(err)
	}
	unchanged := 0
	for _, s := range p.Shards {
		same := fileEqual(t, base+"/"+s.Base, out+"/"+s.Name)
		if s.Unchanged() != same {
			t.Errorf("%s: planned unchanged %v, bytes equal to the base %v", s.Name, s.Unchanged(), same)
		}
		if s.Unchanged() {
			unchanged++
		}
	}
	if unchanged == 0 || unchanged == len(p.Shards) {
		t.Errorf("%d of %d shards unchanged: the test needs both kinds", unchanged, len(p.Shards))
	}
}
