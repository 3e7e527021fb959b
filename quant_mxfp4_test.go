package hfmerge

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// TestMXFP4PlanAndMerge: planning a gpt-oss MXFP4 base reads headers only, lists every
// _scales tensor (a cross-shard one flagged) and says how big the output is in each
// mode, the BF16 one being what the merge then writes.
func TestMXFP4PlanAndMerge(t *testing.T) {
	const h, i, E = 64, 96, 4
	m := fixture.MoE(fixture.MoESpec{Hidden: h, Intermediate: i, Experts: E, Layers: 2, Vocab: 64,
		Layout: fixture.Interleaved, DType: safetensors.BF16, Seed: 21})
	m.MXFP4(22)
	m.Split(2)
	m.MoveTensor("model.layers.0.mlp.experts.down_proj_scales", 1)
	a := fixture.NewExpertAdapter(4, 8, "0.20.0", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
	r := fixture.NewRand(23)
	mod := fixture.ExpertsModule(0)
	a.Experts(mod, 1, E, 4, h, 2*i, safetensors.F32, r)
	a.Experts(mod, 0, E, 4, i, h, safetensors.F32, r)
	dir := t.TempDir()
	base, adapter := filepath.Join(dir, "base"), filepath.Join(dir, "adapter")
	if err := m.Write(base); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(adapter); err != nil {
		t.Fatal(err)
	}

	var read atomic.Int64
	var headers int64
	o := &Sources{open: func(path string) (File, error) {
		f, err := openRegular(path)
		if err != nil {
			return nil, err
		}
		var prefix [8]byte
		f.ReadAt(prefix[:], 0)
		n, _ := safetensors.HeaderLen(prefix[:])
		headers += 8 + n
		return &countingFile{f, &read}, nil
	}}
	l := loadDirs(t, o, base, adapter)
	p := l.Plan()
	if !p.OK() {
		t.Fatalf("problems: %v", p.Problems)
	}
	if got := read.Load(); got != headers {
		t.Errorf("planning read %d bytes; the headers are %d bytes", got, headers)
	}
	rep := l.Report(p, 2)
	if rep.Quant == nil || rep.Quant.Method != "mxfp4" || len(rep.Quant.Scales) != 4 {
		t.Fatalf("report lists %+v", rep.Quant)
	}
	for _, s := range rep.Quant.Scales {
		want := s.Name == "model.layers.0.mlp.experts.down_proj_scales"
		if s.CrossShard != want || s.DType != "U8" {
			t.Errorf("scale %+v: cross-shard %v, want %v, dtype U8", s, s.CrossShard, want)
		}
	}
	// Each expert element goes from half a byte and a 32nd of a scale byte to two bytes.
	perLayer := int64(E*h*2*i + E*i*h) // gate_up_proj E·H·2I and down_proj E·I·H
	wantOut := rep.Quant.BaseBytes + 2*(perLayer*2-perLayer/2-perLayer/32)
	// mixed would copy layer 1's pairs, which the adapter leaves alone.
	if want := wantOut - (perLayer*2 - perLayer/2 - perLayer/32); rep.Quant.Bytes["mixed"] != want {
		t.Errorf("plan says the mixed output has %d tensor bytes, want %d", rep.Quant.Bytes["mixed"], want)
	}
	// keep writes the base's bytes (touched experts requantized in place).
	if rep.Quant.Bytes["keep"] != rep.Quant.BaseBytes {
		t.Errorf("plan says the keep output has %d tensor bytes, want the base's %d", rep.Quant.Bytes["keep"], rep.Quant.BaseBytes)
	}
	if rep.Quant.Bytes["bf16"] != wantOut {
		t.Errorf("plan says the BF16 output has %d tensor bytes, want %d (base %d)", rep.Quant.Bytes["bf16"], wantOut, rep.Quant.BaseBytes)
	}
	var data int64
	for _, s := range p.Shards {
		data += s.Size() - s.Layout.DataOffset()
	}
	if data != wantOut {
		t.Errorf("the planned shards hold %d tensor bytes, want %d", data, wantOut)
	}

	out := filepath.Join(t.TempDir(), "out")
	if err := MergeDir(context.Background(), l, p, out, MergeOptions{}); err != nil {
		t.Fatal(err)
	}
	// The untouched layer's experts, read back from the output, are the dequantization.
	for _, param := range []string{"gate_up_proj", "down_proj"} {
		name := fmt.Sprintf("model.layers.1.mlp.experts.%s", param)
		var got *fixture.Tensor
		for _, f := range []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
			if x, err := fixture.ReadValues(filepath.Join(out, f), name); err == nil {
				got = x
			}
		}
		if got == nil || got.DType != safetensors.BF16 {
			t.Fatalf("%s not found as BF16 in the output: %+v", name, got)
		}
		for k, v := range m.MXFP4Dequant(name, false, false, false) {
			if got.Values[k] != v {
				t.Fatalf("%s[%d] = %v, want %v", name, k, got.Values[k], v)
			}
		}
	}
}
