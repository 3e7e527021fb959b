package mergeplan

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"

	"github.com/hfmerge/hfmerge/safetensors"
)

// assemble lays out the output shards, the index and config.json. Shards keep the
// base's names and tensor order; an untied head follows the embedding it comes from, so
// that every output shard reads from exactly one base shard; new modules go last.
func (b *builder) assemble() {
	in := b.in
	last := len(in.Shards) - 1
	for i, f := range in.Shards {
		s := Shard{Name: f.Name, Base: f.Name, Metadata: f.Header.Metadata}
		for _, bt := range f.Header.Tensors {
			if b.dropped[bt.Name] {
				continue
			}
			t, ok := b.outs[bt.Name]
			if !ok {
				t = b.out(bt.Name)
			}
			s.Tensors = append(s.Tensors, b.finish(t))
			if bt.Name == b.embed && b.head.untied {
				s.Tensors = append(s.Tensors, b.finish(b.head.t))
			}
		}
		if i == last {
			for _, n := range b.added {
				s.Tensors = append(s.Tensors, b.finish(b.outs[n]))
			}
		}
		entries := make([]safetensors.Entry, len(s.Tensors))
		for j, t := range s.Tensors {
			entries[j] = safetensors.Entry{Name: t.Name, DType: t.DType, Shape: t.Shape}
			if !t.DType.Known() {
				entries[j].Len = t.Source.Len // carried through as opaque bytes
			}
		}
		l, err := safetensors.NewLayout(s.Metadata, entries)
		if err != nil {
			b.problem(f.Name, "cannot lay out the merged shard: %v", err)
			continue
		}
		s.Layout = l
		s.same = !s.Changed() && l.Size == f.Header.Size && sha256.Sum256(l.Prefix) == f.Header.PrefixSHA256
		b.p.Shards = append(b.p.Shards, s)
	}
	if !b.p.OK() {
		return
	}
	b.quantSizes()
	b.writeIndex()
	b.writeConfig()
}

// finish settles a tensor's output dtype and checks that it can be computed.
func (b *builder) finish(t *Tensor) Tensor {
	out := *t
	if target := b.in.Options.DType.dtype(); target != "" && out.DType.Float() && !b.scaleNames[out.Name] {
		out.DType = target
	}
	if !out.Copy() && out.Requant == nil && out.ScaleOf == nil && ((!out.Source.DType.Float() && out.Dequant == nil) || !out.DType.Float()) {
		b.problem(out.Name, "is %s and would need computing; hfmerge computes with BF16, F16 and F32 only", out.Source.DType)
	}
	if !out.Copy() && out.Reason == "" {
		out.Reason = fmt.Sprintf("converted from %s", out.Source.DType)
	}
	return out
}

func (c DTypeChoice) dtype() safetensors.DType {
	switch c {
	case ToBF16:
		return safetensors.BF16
	case ToF16:
		return safetensors.F16
	case ToF32:
		return safetensors.F32
	}
	return ""
}

func (c DTypeChoice) torchName() string {
	switch c {
	case ToBF16:
		return "bfloat16"
	case ToF16:
		return "float16"
	case ToF32:
		return "float32"
	}
	return ""
}

func (b *builder) writeIndex() {
	if b.index == nil {
		return
	}
	meta := map[string]any{}
	for k, v := range b.index.Metadata {
		meta[k] = v
	}
	wm := map[string]string{}
	var size, params int64
	for _, s := range b.p.Shards {
		for _, t := range s.Layout.Tensors {
			wm[t.Name] = s.Name
			size += t.Len()
			params += t.Elements()
		}
	}
	meta["total_size"] = size
	if _, ok := meta["total_parameters"]; ok {
		meta["total_parameters"] = params
	}
	data, err := marshalHF(map[string]any{"metadata": meta, "weight_map": wm})
	if err != nil {
		b.problem(IndexFile, "cannot write: %v", err)
		return
	}
	b.p.Index = data
}

// writeConfig applies the edits the merge makes to config.json.
func (b *builder) writeConfig() {
	if b.conf == nil {
		if b.untie {
			b.warn("config.json", "is missing, so the untied output head cannot be recorded in it")
		}
		return
	}
	set := func(m map[string]any, prefix, key string, v any) {
		old, had := m[key]
		if had && fmt.Sprint(old) == fmt.Sprint(v) {
			return
		}
		m[key] = v
		b.p.ConfigEdits = append(b.p.ConfigEdits, ConfigEdit{Key: prefix + key, Old: old, New: v})
	}
	text, _ := b.conf["text_config"].(map[string]any)
	if b.untie {
		set(b.conf, "", "tie_word_embeddings", false)
		if _, ok := text["tie_word_embeddings"]; ok {
			set(text, "text_config.", "tie_word_embeddings", false)
		}
	}
	if b.embed != "" {
		if e, ok := b.outs[b.embed]; ok && e.Shape[0] != b.base.byName[b.embed].Ref.Shape[0] {
			switch {
			case b.conf["vocab_size"] != nil || text == nil:
				set(b.conf, "", "vocab_size", e.Shape[0])
			default:
				set(text, "text_config.", "vocab_size", e.Shape[0])
			}
		}
	}
	if name := b.in.Options.DType.torchName(); name != "" && b.dtypeChanges() {
		// Transformers v5 writes dtype and older versions read torch_dtype; readers of
		// either kind meet the merged model, so it gets both.
		set(b.conf, "", "dtype", name)
		set(b.conf, "", "torch_dtype", name)
		for _, k := range []string{"torch_dtype", "dtype"} {
			if _, ok := text[k]; ok {
				set(text, "text_config.", k, name)
			}
		}
	}
	if b.quant != nil && b.in.Options.Quantized == QuantBF16 {
		// The output is plain BF16: no loader may look for scales that are gone.
		b.p.ConfigEdits = append(b.p.ConfigEdits, ConfigEdit{Key: "quantization_config", Old: b.conf["quantization_config"], New: nil})
		delete(b.conf, "quantization_config")
		name := b.in.Options.DType.torchName()
		if name == "" {
			name = "bfloat16"
		}
		set(b.conf, "", "dtype", name)
		set(b.conf, "", "torch_dtype", name)
	}
	if b.quant != nil && b.in.Options.Quantized == QuantMixed && len(b.p.Quant.NotConverted) > 0 {
		b.notConvert()
	}
	if len(b.p.ConfigEdits) == 0 {
		return
	}
	data, err := marshalHF(b.conf)
	if err != nil {
		b.problem("config.json", "cannot write: %v", err)
		return
	}
	b.p.Config = data
}

// dtypeChanges reports whether --dtype changes the dtype of any float tensor, or the
// config names another dtype than the one chosen.
func (b *builder) dtypeChanges() bool {
	want := b.in.Options.DType.dtype()
	for _, s := range b.p.Shards {
		for _, t := range s.Tensors {
			if t.Source.DType.Float() && t.Source.DType != want {
				return true
			}
		}
	}
	for _, k := range []string{"dtype", "torch_dtype"} {
		if v, ok := b.conf[k]; ok && v != b.in.Options.DType.torchName() {
			return true
		}
	}
	return false
}

// marshalHF writes JSON the way Transformers writes its config and index files: keys
// sorted, two-space indent, a final newline.
func marshalHF(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
