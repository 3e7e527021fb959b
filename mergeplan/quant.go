package mergeplan

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/safetensors"
)

// QuantMode is the --quantized option: what a merge into a quantized base writes.
type QuantMode string

const (
	// QuantBF16 dequantizes every quantized tensor exactly and writes BF16 (touched ones
	// W + s·ΔW rounded once); scale tensors and quantization_config are dropped.
	QuantBF16 QuantMode = "bf16"
	// QuantKeep copies untouched tensors and requantizes touched ones into the base's
	// format, with scales chosen anew; quantization_config stays.
	QuantKeep QuantMode = "keep"
	// QuantMixed keeps untouched tensors quantized and writes touched ones in BF16,
	// listed in quantization_config.modules_to_not_convert and ignored_layers.
	QuantMixed QuantMode = "mixed"
)

// ScaleSuffix names the block scale of a block-FP8 weight: <weight>_scale_inv;
// CompressedScaleSuffix the scale of a compressed-tensors FP8 weight: <weight>_scale.
const (
	ScaleSuffix           = "_scale_inv"
	CompressedScaleSuffix = "_scale"
)

// activationScales are the compressed-tensors tensors of a quantized module that are not
// about its weight (static activation and KV-cache scales): a BF16 output has no use
// for them; keep and mixed leave them alone except on modules written in BF16.
var activationScales = []string{".input_scale", ".output_scale", ".k_scale", ".v_scale"}

// Dequant says how a quantized source tensor becomes real values: element (i, j) is
// the decoded code times Scale[i / BlockRows, j / BlockCols].
//
// With MXFP4 set, Source is an MXFP4 <param>_blocks and Scale its <param>_scales
// (quant_mxfp4.go): the tensor (E, in, out) is expert by expert the transpose of the
// stored (E, out, in), whose blocks of BlockRows = 32 run along in.
type Dequant struct {
	Scale     Ref // [⌈rows/BlockRows⌉, ⌈cols/BlockCols⌉] of F32, BF16, F16 or F8_E8M0
	BlockRows int64
	BlockCols int64
	MXFP4     bool
}

// Requant is how a merged tensor is quantized again in the base's geometry: blocks of
// BlockRows×BlockCols, each with one scale of ScaleDType (a power of two for
// F8_E8M0), the smallest of that dtype with which no value of the block exceeds the
// format's largest; values rounded to nearest, ties to even.
type Requant struct {
	BlockRows, BlockCols int64
	ScaleDType           safetensors.DType
	// Of, for an MXFP4 base (quant_mxfp4.go), makes this output the <param>_blocks
	// (Scales false) or the <param>_scales (Scales true) of the merged tensor Of, the
	// dequantized P (E, in, out) with its deltas, requantized in MXFP4: Of itself is
	// not an output.
	Of     *Tensor
	Scales bool
}

// Quantization is what the plan found about a quantized base, for reports.
type Quantization struct {
	Method string   `json:"method"`           // quant_method, e.g. "fp8"
	Block  [2]int64 `json:"block,omitempty"`  // weight_block_size
	Mode   string   `json:"mode"`             // the --quantized mode in force
	Scales []Scale  `json:"scales,omitempty"` // every scale tensor used, in name order
	// The output's tensor bytes (headers aside) in each mode, and the base's.
	BaseBytes int64            `json:"base_bytes"`
	Bytes     map[string]int64 `json:"bytes"`
	// keep: the weights requantized; mixed: the modules written in BF16 and named in
	// quantization_config.modules_to_not_convert.
	Requantized  []string `json:"requantized,omitempty"`
	NotConverted []string `json:"not_converted,omitempty"`
}

// Scale is one scale tensor the merge reads, and the weight it belongs to.
type Scale struct {
	Weight      string `json:"weight"`
	Name        string `json:"name"`
	File        string `json:"file"`
	WeightFile  string `json:"weight_file"`
	DType       string `json:"dtype"`
	CrossShard  bool   `json:"cross_shard,omitempty"`
	WeightDType string `json:"weight_dtype"`
}

// quantConfig is the part of quantization_config a block-FP8 base is read by.
type quantConfig struct {
	method   string
	block    [2]int64 // block FP8; zero for compressed-tensors
	scaleFmt string
	suffix   string // the scale's name after the weight's
	strategy string // compressed-tensors: "channel", "tensor", or "" to go by the scale's shape
}

func (q *quantConfig) compressed() bool { return q.method == "compressed-tensors" }

// CheckQuantMode says why --quantized keep or mixed cannot apply to a base with this
// config.json: they choose what a quantized base's merge writes, and one without
// quantization_config has nothing quantized to keep (bf16, the default, is no choice
// there, so it passes). Silently merging as if it were not given would leave the user
// believing the output was quantized.
func CheckQuantMode(config []byte, mode QuantMode) error {
	if mode != QuantKeep && mode != QuantMixed {
		return nil
	}
	var conf map[string]any
	if len(config) > 0 && json.Unmarshal(config, &conf) != nil {
		return nil // the plan reports the broken config.json
	}
	if q, ok := conf["quantization_config"]; ok && q != nil {
		return nil
	}
	return fmt.Errorf("--quantized %s applies to quantized bases, and this one has no quantization_config in config.json; "+
		"leave --quantized out to merge it as it is", mode)
}

// refusedMethods are quantization formats hfmerge does not decode, with what to do.
var refusedMethods = map[string]string{
	"bitsandbytes": "bitsandbytes (4-bit NF4/FP4 or 8-bit LLM.int8) bases are not supported: merge into the original BF16 model the bitsandbytes one was made from (QLoRA adapters are trained against it)",
	"gptq":         "GPTQ bases are not supported: merge into the original BF16 model, then quantize the result again with GPTQ if you need it",
	"awq":          "AWQ bases are not supported: merge into the original BF16 model, then quantize the result again with AWQ if you need it",
}

// readQuant reads config.json's quantization_config into b.quant, or records why the
// base cannot be merged.
func (b *builder) readQuant(q any) {
	subject := "config.json: quantization_config"
	m, ok := q.(map[string]any)
	if !ok {
		b.problem(subject, "is not a JSON object")
		return
	}
	method, _ := m["quant_method"].(string)
	if why, refused := refusedMethods[strings.ToLower(method)]; refused {
		b.problem(subject, "quant_method is %q: %s", method, why)
		return
	}
	switch method {
	case "fp8":
	case "compressed-tensors":
		formats := compressedFormats(m)
		for _, f := range formats {
			if strings.Contains(f, "pack-quantized") {
				b.problem(subject, "is compressed-tensors %q (packed INT4 or FP4, as Kimi K2's INT4 release): hfmerge does not decode it; "+
					"merge into the original BF16 model, or, when the adapter touches only BF16 modules, ask for in-place support", f)
				return
			}
		}
		for _, f := range formats {
			if f != "float-quantized" {
				b.problem(subject, "is compressed-tensors %q: hfmerge reads its float-quantized (FP8) format only; "+
					"use the original BF16 model as the base", f)
				return
			}
		}
		b.readCompressed(m)
		return
	case "mxfp4":
		b.quant = &quantConfig{method: method}
		return
	default:
		b.problem(subject, "quant_method is %q, a format hfmerge does not decode; use the original (unquantized) model as the base", method)
		return
	}
	qc := &quantConfig{method: method, suffix: ScaleSuffix}
	if f, ok := m["fmt"].(string); ok && f != "e4m3" {
		b.problem(subject+": fmt", "is %q; block-FP8 bases are read in e4m3 only", f)
		return
	}
	if f, ok := m["scale_fmt"].(string); ok {
		qc.scaleFmt = f
	}
	ws, ok := m["weight_block_size"].([]any)
	if !ok || len(ws) != 2 {
		b.problem(subject+": weight_block_size", "is %v: a block-FP8 base needs two block sizes [rows, cols]", m["weight_block_size"])
		return
	}
	for i, v := range ws {
		n, ok := jsonInt(v)
		if !ok || n <= 0 {
			b.problem(subject+": weight_block_size", "is %v: each block size must be a positive integer", ws)
			return
		}
		qc.block[i] = n
	}
	b.quant = qc
}

// compressedFormats lists the formats a compressed-tensors config names: the top
// level's and each config group's.
func compressedFormats(m map[string]any) []string {
	var out []string
	if f, ok := m["format"].(string); ok {
		out = append(out, f)
	}
	if groups, ok := m["config_groups"].(map[string]any); ok {
		for _, k := range sortedKeys(groups) {
			if g, ok := groups[k].(map[string]any); ok {
				if f, ok := g["format"].(string); ok && !slices.Contains(out, f) {
					out = append(out, f)
				}
			}
		}
	}
	if len(out) == 0 {
		out = []string{"unnamed"}
	}
	return out
}

func jsonInt(v any) (int64, bool) {
	switch n := v.(type) {
	case interface{ Int64() (int64, error) }:
		i, err := n.Int64()
		return i, err == nil
	case float64:
		return int64(n), float64(int64(n)) == n
	}
	return 0, false
}

var scaleDTypes = []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.F16, safetensors.F8E8M0}

// dequantize plans, for a block-FP8 base, every F8_E4M3 weight's dequantization with its
// <weight>_scale_inv (looked up in every shard), and drops the scale tensors.
func (b *builder) dequantize() {
	q := b.quant
	if q.method == "mxfp4" {
		b.dequantizeMXFP4()
		return
	}
	b.p.Quant = &Quantization{Method: q.method, Block: q.block, Mode: string(b.in.Options.Quantized), Bytes: map[string]int64{}}
	b.dropped = map[string]bool{}
	for _, name := range sortedKeys(b.base.byName) {
		bt := b.base.byName[name]
		ref := bt.Ref
		if weight, ok := strings.CutSuffix(name, q.suffix); ok && strings.HasSuffix(weight, "weight") {
			if w, has := b.base.byName[weight]; !has || !isFP8(w.Ref.DType) {
				b.problem(ref.File+": "+name, "is a weight scale, but %s is not an F8_E4M3 weight of the base", weight)
			}
			b.dropped[name] = true
			continue
		}
		if _, ok := isActivationScale(name); ok && q.compressed() {
			b.dropped[name] = true // kept again by settleQuant where the module stays quantized
			continue
		}
		if strings.HasSuffix(name, ".weight_zero_point") && q.compressed() {
			b.problem(ref.File+": "+name, "is a zero point; hfmerge reads symmetric FP8 weights only")
			continue
		}
		if !isFP8(ref.DType) {
			continue // BF16 norms, embeddings, heads; integers: merged or copied as usual
		}
		subject := ref.File + ": " + name
		if ref.DType != safetensors.F8E4M3 {
			b.problem(subject, "is %s; block-FP8 (quant_method fp8) weights are F8_E4M3", ref.DType)
			continue
		}
		if len(ref.Shape) != 2 {
			// Fused experts (E, out, in) in FP8 are Transformers' in-memory FP8Expert
			// layout; the released FP8 MoE checkpoints store each expert's weights
			// apart (docs/quantized.md, "FP8 experts").
			b.problem(subject, "has shape %s; hfmerge dequantizes 2-D block-FP8 weights only (per-expert FP8 experts are read; fused 3-D FP8 experts are not built)", shapeString(ref.Shape))
			continue
		}
		st, ok := b.base.byName[name+q.suffix]
		if !ok {
			b.problem(subject, "is an F8_E4M3 weight without its scale %s%s in any shard; the base is incomplete", name, q.suffix)
			continue
		}
		sref := st.Ref
		if !slices.Contains(scaleDTypes, sref.DType) {
			b.problem(sref.File+": "+sref.Name, "is %s; a block scale is F32, BF16, F16 or F8_E8M0", sref.DType)
			continue
		}
		br, bc := q.block[0], q.block[1]
		if q.compressed() {
			if br, bc, ok = b.compressedGeometry(ref, sref); !ok {
				continue
			}
		} else if want := []int64{ceilDiv(ref.Shape[0], br), ceilDiv(ref.Shape[1], bc)}; !slices.Equal(sref.Shape, want) {
			b.problem(sref.File+": "+sref.Name, "has shape %s, but %s %s in blocks of %dx%d (quantization_config.weight_block_size) needs %s",
				shapeString(sref.Shape), name, shapeString(ref.Shape), q.block[0], q.block[1], shapeString(want))
			continue
		}
		if q.scaleFmt == "ue8m0" && sref.DType != safetensors.F8E8M0 {
			b.warn(sref.File+": "+sref.Name, "is %s although quantization_config says scale_fmt ue8m0; it is read as stored", sref.DType)
		}
		t := b.out(name)
		t.DType = safetensors.BF16
		t.Dequant = &Dequant{Scale: sref, BlockRows: br, BlockCols: bc}
		t.Reason = "dequantized from FP8"
		b.p.Quant.Scales = append(b.p.Quant.Scales, Scale{Weight: name, Name: sref.Name, File: sref.File, WeightFile: ref.File,
			DType: string(sref.DType), WeightDType: string(ref.DType), CrossShard: sref.File != ref.File})
	}
}

func isFP8(d safetensors.DType) bool { return d == safetensors.F8E4M3 || d == safetensors.F8E5M2 }

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// quantSizes works out the output's tensor bytes in each mode from the plan. The mode
// planned is the layout's sum; the others differ from it only in the quantized weights,
// their scales and (compressed-tensors) activation scales: bf16 writes every quantized
// weight in BF16 (or --dtype) without its scales; keep writes them as the base has them
// (a requantized weight and its new scales have the base's sizes); mixed writes the ones
// mixedBF16 names in BF16 and the rest as the base has them. Tensors the adapter adds,
// and the BF16 tensors --dtype converts, count the same in each.
func (b *builder) quantSizes() {
	q := b.p.Quant
	if q == nil {
		return
	}
	for _, f := range b.in.Shards {
		for _, t := range f.Header.Tensors {
			q.BaseBytes += t.Len()
		}
	}
	var out int64
	planned := map[string]int64{} // the bytes the planned mode writes, by tensor
	for _, s := range b.p.Shards {
		for i, t := range s.Tensors {
			n := s.Layout.Tensors[i].Len()
			out += n
			planned[t.Name] = n
		}
	}
	if b.quant.method == "mxfp4" {
		// out is the size in the mode planned; the others differ by the MXFP4 pairs
		// bf16 dequantizes (all of them), mixed copies (kept) and keep writes as the
		// base has them.
		all, kept := b.mxfp4Growth()
		bf16 := out
		switch b.in.Options.Quantized {
		case QuantMixed:
			bf16 = out + kept
		case QuantKeep:
			bf16 = out + all
		}
		q.Bytes[string(QuantBF16)] = bf16
		q.Bytes[string(QuantMixed)] = bf16 - kept
		q.Bytes[string(QuantKeep)] = bf16 - all
		return
	}
	esz := int64(2) // BF16, or what --dtype makes of it
	if d := b.in.Options.DType.dtype(); d != "" {
		esz = int64(d.Bits() / 8)
	}
	mixed := b.mixedBF16()
	modes := []QuantMode{QuantBF16, QuantKeep, QuantMixed}
	size := map[QuantMode]int64{}
	for _, m := range modes {
		size[m] = out
	}
	for _, name := range sortedKeys(b.base.byName) {
		w := b.base.byName[name].Ref
		if !isFP8(w.DType) || len(w.Shape) != 2 {
			continue
		}
		sc, ok := b.base.byName[name+b.quant.suffix]
		if !ok {
			continue
		}
		quantized := w.Len + sc.Ref.Len
		var acts []string // the module's activation scales in the base
		module := strings.TrimSuffix(name, ".weight")
		if b.quant.compressed() {
			for _, a := range activationScales {
				if at, ok := b.base.byName[module+a]; ok {
					acts = append(acts, at.Ref.Name)
					quantized += at.Ref.Len
				}
			}
		}
		now := planned[name] + planned[name+b.quant.suffix]
		for _, a := range acts {
			now += planned[a]
		}
		dense := w.Shape[0] * w.Shape[1] * esz
		for _, m := range modes {
			bf16 := m == QuantBF16 || (m == QuantMixed && mixed[name])
			if bf16 {
				size[m] += dense - now
			} else {
				size[m] += quantized - now
			}
		}
	}
	for _, m := range modes {
		q.Bytes[string(m)] = size[m]
	}
}

// mixedBF16 names the quantized weights --quantized mixed writes in BF16: those the
// adapter changes, and every expert of an experts module (expertsModule) one of whose
// experts it changes.
func (b *builder) mixedBF16() map[string]bool {
	out := map[string]bool{}
	experts := map[string]bool{}
	for name, t := range b.outs {
		if bt, ok := b.base.byName[name]; ok && isFP8(bt.Ref.DType) && changes(t) {
			out[name] = true
			if em, ok := expertsModule(name); ok {
				experts[em] = true
			}
		}
	}
	for name := range b.outs {
		if bt, ok := b.base.byName[name]; ok && isFP8(bt.Ref.DType) {
			if em, ok := expertsModule(name); ok && experts[em] {
				out[name] = true
			}
		}
	}
	return out
}

// changes reports whether the adapter changes an output tensor.
func changes(t *Tensor) bool {
	return len(t.Deltas) > 0 || len(t.Patches) > 0 || t.DoRA != nil || t.Source.Adapter()
}

// settleQuant decides, once the adapter is planned, what --quantized keep and mixed do
// with each quantized weight: untouched ones (and their scales) are copied as they are;
// touched ones are requantized with new scales (keep) or written in BF16 without their
// scale (mixed). bf16 needs nothing more.
func (b *builder) settleQuant() {
	mode := b.in.Options.Quantized
	if b.quant != nil && b.quant.method == "mxfp4" {
		b.checkMXFP4()
		return
	}
	if b.quant == nil || mode == QuantBF16 {
		return
	}
	var bf16 map[string]bool
	if mode == QuantMixed {
		bf16 = b.mixedBF16()
	}
	for _, name := range sortedKeys(b.outs) {
		t := b.outs[name]
		bt, inBase := b.base.byName[name]
		if !inBase || !isFP8(bt.Ref.DType) {
			continue
		}
		scale := name + b.quant.suffix
		module := strings.TrimSuffix(name, ".weight")
		touched := changes(t)
		if em, isExpert := expertsModule(name); isExpert && bf16[name] {
			// mixed: the experts of one module are all BF16 or none (expertsModule).
			module = em
			if !touched {
				t.Reason = "dequantized exactly, written in BF16 with the other experts of " + em + " (modules_to_not_convert)"
				continue // Dequant stays; its scale and activation scales stay dropped
			}
		}
		if !touched || mode == QuantKeep {
			// The module stays quantized: its activation scales stay too.
			for _, s := range activationScales {
				delete(b.dropped, module+s)
			}
		}
		if !touched {
			t.DType, t.Dequant, t.Reason = bt.Ref.DType, nil, ""
			delete(b.dropped, scale)
			continue
		}
		if t.DoRA != nil {
			b.problem(name, "has a DoRA adapter; DoRA on a quantized base is merged with --quantized bf16 only")
			continue
		}
		switch mode {
		case QuantKeep:
			if t.Source.Adapter() {
				b.problem(name, "is replaced by the adapter's trained copy; --quantized keep cannot requantize a replacement, use bf16 or mixed")
				continue
			}
			q := t.Dequant
			t.DType = bt.Ref.DType
			t.Requant = &Requant{BlockRows: q.BlockRows, BlockCols: q.BlockCols, ScaleDType: q.Scale.DType}
			t.Reason = "merged and requantized to " + string(t.DType)
			st := b.out(scale)
			st.ScaleOf = t
			st.Reason = "scales of the requantized " + name
			delete(b.dropped, scale)
			b.p.Quant.Requantized = append(b.p.Quant.Requantized, name)
		case QuantMixed:
			t.Reason = "merged, written in BF16 (modules_to_not_convert)"
			if !slices.Contains(b.p.Quant.NotConverted, module) {
				b.p.Quant.NotConverted = append(b.p.Quant.NotConverted, module)
			}
		}
	}
	if n := len(b.p.Quant.Requantized); mode == QuantKeep && n > 0 {
		// One warning, not one a tensor: a DeepSeek-size adapter touches thousands.
		b.warn("--quantized keep", "requantizes %d touched weights to F8_E4M3: with three mantissa bits a change smaller than "+
			"half a step of the grid (about 1/16 of the value, more for values far below their block's largest) rounds away, "+
			"so a small LoRA delta may partly vanish; merge and push log, per tensor, how much survived (a warning where "+
			"most was lost). Check it before publishing, or use --quantized mixed or bf16", n)
	}
	if mode == QuantMixed {
		b.fusedWarning()
		for _, m := range b.p.Quant.NotConverted {
			if strings.HasSuffix(m, ".experts") && !strings.HasSuffix(m, ".mlp.experts") {
				b.warn(m, "is written in BF16 and named so in ignored_layers, but vLLM may know this layer by another name "+
					"(its minimax_m2.py loads block_sparse_moe.experts as model.layers.N.mlp.experts) and then loads the BF16 "+
					"experts as FP8; Transformers reads modules_to_not_convert by the checkpoint's names. For vLLM, check, or use --quantized bf16")
			}
		}
	}
	// Untouched BF16 scales keep their dtype whatever --dtype says: they belong to
	// quantized weights.
	b.scaleNames = map[string]bool{}
	for _, s := range b.p.Quant.Scales {
		b.scaleNames[s.Name] = true
	}
}

// expertsModule is the module holding the per-expert weight name: for
// model.layers.3.mlp.experts.17.gate_proj.weight (DeepSeek-V3, Qwen3-MoE) or
// model.layers.3.block_sparse_moe.experts.17.w1.weight (MiniMax-M2), the module up to
// "experts". Loaders hold these experts as one layer whose weights share one precision:
// vLLM's FusedMoE is skipped as a whole when any ignored_layers entry holding "experts"
// contains its prefix (quant_utils.is_layer_skipped), and Transformers v5 fuses them into
// one module. So mixed writes them all in BF16 and names the experts module.
func expertsModule(name string) (string, bool) {
	parts := strings.Split(name, ".")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == "experts" && parts[i+1] != "" && strings.Trim(parts[i+1], "0123456789") == "" {
			return strings.Join(parts[:i+1], "."), true
		}
	}
	return "", false
}

// fusedGroups are the projections vLLM loads as one fused layer, which must all have
// the same precision (its is_layer_skipped raises "Detected some but not all shards
// of ... are quantized").
var fusedGroups = [][]string{{"q_proj", "k_proj", "v_proj"}, {"gate_proj", "up_proj"}}

// fusedWarning warns, once per group, when mixed mode writes some but not all
// projections of a fused group in BF16.
func (b *builder) fusedWarning() {
	bf16 := map[string]bool{}
	for _, m := range b.p.Quant.NotConverted {
		bf16[m] = true
	}
	warned := map[string]bool{}
	for _, m := range b.p.Quant.NotConverted {
		k := strings.LastIndex(m, ".")
		if k < 0 {
			continue
		}
		parent, leafName := m[:k], m[k+1:]
		for _, g := range fusedGroups {
			id := parent + "." + strings.Join(g, "+")
			if !slices.Contains(g, leafName) || warned[id] {
				continue
			}
			for _, other := range g {
				bt, ok := b.base.byName[parent+"."+other+".weight"]
				if ok && isFP8(bt.Ref.DType) && !bf16[parent+"."+other] {
					warned[id] = true
					b.warn(m, "is written in BF16 but %s.%s stays FP8: vLLM fuses %s into one layer and refuses mixed precision "+
						"in it; Transformers loads it (or use --quantized bf16, or train the adapter on all of them)",
						parent, other, strings.Join(g, ", "))
					break
				}
			}
		}
	}
}

// notConvert lists the modules mixed mode writes in BF16 in quantization_config, under
// both names loaders read: modules_to_not_convert (Transformers' FP8 quantizer; vLLM's
// Fp8Config when ignored_layers is empty) and ignored_layers (vLLM's Fp8Config).
func (b *builder) notConvert() {
	q, _ := b.conf["quantization_config"].(map[string]any)
	if q == nil {
		return
	}
	keys := []string{"modules_to_not_convert", "ignored_layers"}
	if b.quant.method == "mxfp4" {
		keys = []string{"modules_to_not_convert"} // Transformers' Mxfp4HfQuantizer's list
	}
	if b.quant.compressed() {
		keys = []string{"ignore"} // compressed-tensors' list of modules left unquantized
	}
	for _, key := range keys {
		old := q[key]
		var list []any
		if prev, ok := old.([]any); ok {
			list = append(list, prev...)
		}
		for _, m := range b.p.Quant.NotConverted {
			if !slices.Contains(list, any(m)) {
				list = append(list, m)
			}
		}
		q[key] = list
		b.p.ConfigEdits = append(b.p.ConfigEdits, ConfigEdit{Key: "quantization_config." + key, Old: old, New: list})
	}
}

// readCompressed reads a compressed-tensors float-quantized config: every config group's
// weights must be 8-bit symmetric floats per tensor or per channel.
func (b *builder) readCompressed(m map[string]any) {
	subject := "config.json: quantization_config"
	qc := &quantConfig{method: "compressed-tensors", suffix: CompressedScaleSuffix}
	groups, _ := m["config_groups"].(map[string]any)
	for _, k := range sortedKeys(groups) {
		g, _ := groups[k].(map[string]any)
		w, _ := g["weights"].(map[string]any)
		if w == nil {
			continue
		}
		gs := fmt.Sprintf("%s: config_groups.%s.weights", subject, k)
		if t, _ := w["type"].(string); t != "float" {
			b.problem(gs, "has type %q; hfmerge reads FP8 (type float) weights of compressed-tensors", t)
			return
		}
		if n, ok := jsonInt(w["num_bits"]); !ok || n != 8 {
			b.problem(gs, "has num_bits %v; hfmerge reads 8-bit float weights", w["num_bits"])
			return
		}
		if sym, ok := w["symmetric"].(bool); ok && !sym {
			b.problem(gs, "is asymmetric (a zero point); hfmerge reads symmetric FP8 weights only")
			return
		}
		switch s, _ := w["strategy"].(string); s {
		case "channel", "tensor":
			if qc.strategy != "" && qc.strategy != s {
				qc.strategy = "mixed"
			} else {
				qc.strategy = s
			}
		default:
			b.problem(gs, "has strategy %q; hfmerge reads per-tensor and per-channel FP8 weights (block and group are not built yet)", s)
			return
		}
	}
	if qc.strategy == "mixed" {
		qc.strategy = "" // each weight's scale shape says which
	}
	b.quant = qc
}

// compressedGeometry is the block a compressed-tensors scale of this shape covers: a
// whole row per channel ([out, 1]), the whole weight per tensor ([1] or a scalar).
func (b *builder) compressedGeometry(ref, sref Ref) (rows, cols int64, ok bool) {
	out, in := ref.Shape[0], ref.Shape[1]
	channel := slices.Equal(sref.Shape, []int64{out, 1})
	tensor := len(sref.Shape) == 0 || slices.Equal(sref.Shape, []int64{1})
	switch s := b.quant.strategy; {
	case channel && s != "tensor":
		return 1, in, true
	case tensor && s != "channel":
		return out, in, true
	}
	want := "(" + fmt.Sprint(out) + ", 1) per channel or (1) per tensor"
	if b.quant.strategy != "" {
		want = map[string]string{"channel": fmt.Sprintf("(%d, 1) per channel", out), "tensor": "(1) per tensor"}[b.quant.strategy]
	}
	b.problem(sref.File+": "+sref.Name, "has shape %s; %s %s needs %s", shapeString(sref.Shape), ref.Name, shapeString(ref.Shape), want)
	return 0, 0, false
}

// isActivationScale reports whether a compressed-tensors tensor is an activation or
// KV-cache scale, and of which module.
func isActivationScale(name string) (module string, ok bool) {
	for _, s := range activationScales {
		if m, ok := strings.CutSuffix(name, s); ok {
			return m, true
		}
	}
	return "", false
}
