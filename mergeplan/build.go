package mergeplan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/safetensors"
)

// IndexFile is the name of a sharded model's index.
const IndexFile = "model.safetensors.index.json"

// builder carries the state of one Build.
type builder struct {
	in      *Input
	p       *Plan
	cfg     *AdapterConfig
	scales  *scales
	base    *names
	conf    map[string]any // the base's config.json, numbers kept as written
	index   *indexFile
	adapter map[string]Ref // adapter tensors by key
	used    map[string]bool
	outs    map[string]*Tensor // output tensors that differ from a plain copy
	added   []string           // new tensors not in the base, in the order planned
	embed   string             // the base's input embedding, "" if none found
	head    *headState
	notes   map[string]string // how an adapter key's name was resolved, when not exactly
	untie   bool              // config.json must say tie_word_embeddings: false
	// Expert parameters whose reading waits for the whole adapter (resolveSquare), and
	// the readings the shapes decided elsewhere, with a parameter that showed each.
	square   []squareExpert
	evidence map[bool]string
	quant    *quantConfig    // a block-FP8 base's quantization_config, nil if unquantized
	dropped  map[string]bool // base tensors the output leaves out (block scales)
	// The block scales of a quantized base kept in the output, whose dtype --dtype
	// does not change.
	scaleNames map[string]bool
}

// Build plans the merge. It never fails: everything wrong is in Plan.Problems, so one
// run reports every problem.
func Build(in *Input) *Plan {
	b := &builder{in: in, p: &Plan{}, adapter: map[string]Ref{}, used: map[string]bool{},
		outs: map[string]*Tensor{}, notes: map[string]string{}}
	b.options()
	b.readBase()
	if b.quant != nil && b.p.OK() {
		b.dequantize()
	}
	b.readAdapter()
	if b.cfg != nil && in.Adapter != nil && len(in.Shards) > 0 && b.p.OK() {
		b.plan()
		b.settleQuant()
	}
	if b.p.OK() {
		b.assemble()
	}
	return b.p
}

// problem records a problem once: the same one found again (a refused pattern, for
// every module after the first) adds nothing.
func (b *builder) problem(subject, format string, args ...any) {
	p := Problem{Subject: subject, Message: fmt.Sprintf(format, args...)}
	if !slices.Contains(b.p.Problems, p) {
		b.p.Problems = append(b.p.Problems, p)
	}
}

func (b *builder) warn(subject, format string, args ...any) {
	b.p.Warnings = append(b.p.Warnings, Problem{Subject: subject, Message: fmt.Sprintf(format, args...)})
}

func (b *builder) options() {
	o := &b.in.Options
	if o.DType == "" {
		o.DType = KeepDType
	}
	if o.Tied == "" {
		o.Tied = Untie
	}
	if o.Quantized == "" {
		o.Quantized = QuantBF16
	}
	switch o.Quantized {
	case QuantBF16, QuantKeep, QuantMixed:
	default:
		b.problem("--quantized", "is %q: want bf16, keep or mixed", o.Quantized)
	}
	switch o.DType {
	case KeepDType, ToBF16, ToF16, ToF32:
	default:
		b.problem("--dtype", "is %q: want keep, bf16, fp16 or fp32", o.DType)
	}
	switch o.Tied {
	case Untie, Fold:
	default:
		b.problem("--tied-embeddings", "is %q: want untie or fold", o.Tied)
	}
}

// indexFile is model.safetensors.index.json.
type indexFile struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

func (b *builder) readBase() {
	in := b.in
	if len(in.Shards) == 0 {
		b.problem("base", "has no safetensors weights")
		return
	}
	b.base = newNames(in.Shards)
	if in.Config != nil {
		if err := decodeNumbers(in.Config, &b.conf); err != nil || b.conf == nil {
			b.problem("config.json", "is not a JSON object: %v", err)
		} else if q, ok := b.conf["quantization_config"]; ok && q != nil {
			b.readQuant(q)
		}
	}
	seen := map[string]string{}
	for _, f := range in.Shards {
		for _, t := range f.Header.Tensors {
			if other, dup := seen[t.Name]; dup {
				b.problem(f.Name+": "+t.Name, "is also in %s", other)
			}
			seen[t.Name] = f.Name
		}
	}
	if in.Index == nil {
		if len(in.Shards) > 1 {
			b.problem(IndexFile, "is missing, but the base has %d safetensors files", len(in.Shards))
		}
		return
	}
	b.p.IndexName = IndexFile
	b.index = &indexFile{}
	if err := decodeNumbers(in.Index, b.index); err != nil {
		b.problem(IndexFile, "is not valid: %v", err)
		return
	}
	if len(b.index.WeightMap) == 0 {
		b.problem(IndexFile, "has no weight_map")
		return
	}
	for name, shard := range b.index.WeightMap {
		if have, ok := seen[name]; !ok {
			b.problem(IndexFile, "maps %s to %s, which does not hold it", name, shard)
		} else if have != shard {
			b.problem(IndexFile, "maps %s to %s, but it is in %s", name, shard, have)
		}
	}
	for name, shard := range seen {
		if _, ok := b.index.WeightMap[name]; !ok {
			b.problem(IndexFile, "does not list %s (in %s)", name, shard)
		}
	}
}

func (b *builder) readAdapter() {
	in := b.in
	if in.AdapterConfig == nil {
		b.problem(AdapterConfigFile, "is missing: the adapter directory must hold the adapter_config.json PEFT wrote")
	} else {
		cfg, err := ParseAdapterConfig(in.AdapterConfig)
		if err != nil {
			var ce *ConfigError
			if errors.As(err, &ce) {
				subject := AdapterConfigFile
				if ce.Field != "" {
					subject = fmt.Sprintf("%s: field %q", AdapterConfigFile, ce.Field)
				}
				b.problem(subject, "%s", ce.Reason)
			} else {
				b.problem(AdapterConfigFile, "%v", err)
			}
		} else {
			b.cfg = cfg
			b.p.Adapter = cfg
			for _, f := range cfg.Unknown {
				b.warn(AdapterConfigFile+": "+f, "is not a field hfmerge knows; it was ignored")
			}
			if b.scales, err = newScales(cfg); err != nil {
				b.problem(AdapterConfigFile, "%v", err)
				b.cfg = nil
			}
		}
	}
	if in.Adapter == nil {
		b.problem(AdapterFile, "is missing: hfmerge reads adapters in safetensors format (PEFT's default since 0.7)")
		return
	}
	h := in.Adapter.Header
	for i := range h.Tensors {
		t := &h.Tensors[i]
		b.adapter[t.Name] = Ref{File: AdapterFile, Name: t.Name, DType: t.DType, Shape: t.Shape,
			Offset: h.DataOffset + t.Begin, Len: t.Len()}
	}
	if len(h.Tensors) == 0 {
		b.problem(AdapterFile, "holds no tensors")
	}
}

// decodeNumbers unmarshals JSON keeping numbers as json.Number, so that values written
// back come out as they were read.
func decodeNumbers(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

// out returns the output tensor for a base tensor, creating it as a plain copy.
func (b *builder) out(name string) *Tensor {
	if t, ok := b.outs[name]; ok {
		return t
	}
	bt := b.base.byName[name]
	t := &Tensor{Name: name, DType: bt.Ref.DType, Shape: bt.Ref.Shape, Source: bt.Ref}
	b.outs[name] = t
	return t
}

// dominantFloat is the float dtype most of the base's bytes are in: the dtype a new
// tensor gets.
func (b *builder) dominantFloat() safetensors.DType {
	bytes := map[safetensors.DType]int64{}
	for _, bt := range b.base.byName {
		if bt.Ref.DType.Float() {
			bytes[bt.Ref.DType] += bt.Ref.Len
		}
	}
	best := safetensors.BF16
	var most int64 = -1
	for _, d := range []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32} {
		if bytes[d] > most {
			best, most = d, bytes[d]
		}
	}
	return best
}

// tiedConfig reports whether config.json ties the input embedding and the output head,
// and whether it says so explicitly.
func (b *builder) tiedConfig() (tied, explicit bool) {
	v, ok := b.conf["tie_word_embeddings"]
	if !ok {
		// Absent: Transformers' default depends on the model class; a checkpoint with no
		// output head is tied by construction.
		for _, sub := range []string{"text_config"} {
			if m, ok := b.conf[sub].(map[string]any); ok {
				if t, ok := m["tie_word_embeddings"].(bool); ok {
					return t, true
				}
			}
		}
		return false, false
	}
	t, _ := v.(bool)
	return t, true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func shapeString(s []int64) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// ShardNames lists, sorted, the weight files a model's index names, refusing names that
// are not plain files of the model directory. Build reads the index the same way.
func ShardNames(index []byte) ([]string, error) {
	var idx indexFile
	if err := decodeNumbers(index, &idx); err != nil {
		return nil, fmt.Errorf("is not valid JSON: %v", err)
	}
	var names []string
	for _, f := range idx.WeightMap {
		if f == "" || f == "." || f == ".." || strings.ContainsAny(f, `/\`) {
			return nil, fmt.Errorf("names %q, which is not a file in the model directory", f)
		}
		if !slices.Contains(names, f) {
			names = append(names, f)
		}
	}
	slices.Sort(names)
	return names, nil
}
