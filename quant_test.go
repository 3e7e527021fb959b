package hfmerge

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// fp8Base is a block-FP8 base in three shards with two scales in another shard than
// their weights: q_proj's of layer 0 (touched) and k_proj's of layer 0 (untouched).
func fp8Base(t *testing.T) (base, adapter string, m *fixture.Model) {
	var model *fixture.Model
	base, adapter = model3(t, func(mm *fixture.Model) { model = mm })
	return base, adapter, model
}

func model3(t *testing.T, keep func(*fixture.Model)) (base, adapter string) {
	return model(t, tinySpec(), 1, []string{"self_attn.q_proj", "mlp.down_proj"}, func(m *fixture.Model, a *fixture.Adapter) {
		m.BlockFP8([2]int64{32, 32}, safetensors.BF16, 9)
		m.Split(3)
		m.MoveTensor("model.layers.0.self_attn.q_proj.weight_scale_inv", 2)
		m.MoveTensor("model.layers.0.self_attn.k_proj.weight_scale_inv", 2)
		keep(m)
	})
}

// TestBlockFP8PlanAndMerge: planning a block-FP8 base reads headers only and lists the
// scales, cross-shard ones included; the merge opens the scales' shards and writes a
// plain BF16 model without scales or quantization_config.
func TestBlockFP8PlanAndMerge(t *testing.T) {
	base, adapter, m := fp8Base(t)
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
	r := l.Report(p, 2)
	if r.Quant == nil || len(r.Quant.Scales) != 14 {
		t.Fatalf("report lists %+v", r.Quant)
	}
	var cross []string
	for _, s := range r.Quant.Scales {
		if s.CrossShard {
			cross = append(cross, s.Name)
		}
	}
	for _, want := range []string{"model.layers.0.self_attn.k_proj.weight_scale_inv", "model.layers.0.self_attn.q_proj.weight_scale_inv"} {
		if !slices.Contains(cross, want) {
			t.Errorf("cross-shard scales %v lack %s", cross, want)
		}
	}
	var data int64
	for _, s := range p.Shards {
		data += s.Size() - s.Layout.DataOffset()
	}
	if r.Quant.Bytes["bf16"] != data || r.Quant.Bytes["bf16"] <= r.Quant.BaseBytes {
		t.Errorf("bf16 output %d tensor bytes, plan %d, base %d", r.Quant.Bytes["bf16"], data, r.Quant.BaseBytes)
	}

	out := filepath.Join(t.TempDir(), "out")
	if err := MergeDir(context.Background(), l, p, out, MergeOptions{}); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(out, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(conf, &c); err != nil {
		t.Fatal(err)
	}
	if _, ok := c["quantization_config"]; ok || c["torch_dtype"] != "bfloat16" {
		t.Errorf("config.json: %s", conf)
	}
	idx, err := os.ReadFile(filepath.Join(out, mergeplan.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(idx, []byte("scale_inv")) {
		t.Error("the index names scale tensors")
	}
	// The untouched k_proj, whose scale is in another shard, is its exact
	// dequantization rounded once.
	name := "model.layers.0.self_attn.k_proj.weight"
	var got *fixture.Tensor
	for _, f := range []string{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"} {
		if x, err := fixture.ReadValues(filepath.Join(out, f), name); err == nil {
			got = x
		}
	}
	if got == nil || got.DType != safetensors.BF16 {
		t.Fatalf("%s not found as BF16 in the output: %+v", name, got)
	}
	w, s := m.Tensor(name), m.Tensor(name+"_scale_inv")
	cols := int(w.Shape[1])
	sc := int(s.Shape[1])
	for i, q := range w.Values {
		want := fixture.RoundBF16(q * s.Values[(i/cols/32)*sc+(i%cols)/32])
		if got.Values[i] != want {
			t.Fatalf("%s[%d] = %v, want %v", name, i, got.Values[i], want)
		}
	}
}
