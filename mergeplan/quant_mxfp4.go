package mergeplan

import (
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/safetensors"
)

// MXFP4 (gpt-oss) stores an expert parameter P (E, in, out) as P_blocks, uint8
// (E, out, in/32, 16): for each expert and output row, in/32 blocks of 32 E2M1 codes,
// two a byte, low nibble first; and P_scales, uint8 (E, out, in/32): one E8M0 scale
// 2^(s−127) per block. Transformers' dequantization (convert_moe_packed_tensors)
// yields (E, out, in) and transposes it to the (E, in, out) its GptOssExperts uses,
// named P; docs/quantized.md has the sources.
const (
	MXFP4Blocks = "_blocks"
	MXFP4Scales = "_scales"
	// MXFP4Block is the number of E2M1 codes sharing one scale.
	MXFP4Block = 32
)

// dequantizeMXFP4 plans every P_blocks/P_scales pair of an MXFP4 base as the BF16
// tensor P (E, in, out) the BF16 checkpoint has, computed from them, and drops both.
func (b *builder) dequantizeMXFP4() {
	b.p.Quant = &Quantization{Method: b.quant.method, Block: [2]int64{1, MXFP4Block}, Mode: string(b.in.Options.Quantized), Bytes: map[string]int64{}}
	b.dropped = map[string]bool{}
	for _, name := range sortedKeys(b.base.byName) {
		bt := b.base.byName[name]
		ref := bt.Ref
		subject := ref.File + ": " + name
		if param, ok := strings.CutSuffix(name, MXFP4Scales); ok {
			if _, has := b.base.byName[param+MXFP4Blocks]; !has {
				b.problem(subject, "is an MXFP4 scale, but %s%s is in no shard", param, MXFP4Blocks)
			}
			continue
		}
		param, ok := strings.CutSuffix(name, MXFP4Blocks)
		if !ok {
			continue
		}
		st, ok := b.base.byName[param+MXFP4Scales]
		if !ok {
			b.problem(subject, "is MXFP4 blocks without their scales %s%s in any shard; the base is incomplete", param, MXFP4Scales)
			continue
		}
		sref := st.Ref
		s := ref.Shape
		if ref.DType != safetensors.U8 || len(s) != 4 || s[3] != MXFP4Block/2 {
			b.problem(subject, "is %s %s; MXFP4 blocks are U8 (experts, rows, blocks, 16)", ref.DType, shapeString(s))
			continue
		}
		if sref.DType != safetensors.U8 || !slices.Equal(sref.Shape, s[:3]) {
			b.problem(sref.File+": "+sref.Name, "is %s %s; the scales of %s %s are U8 %s",
				sref.DType, shapeString(sref.Shape), name, shapeString(s), shapeString(s[:3]))
			continue
		}
		if _, has := b.base.byName[param]; has {
			b.problem(subject, "has a BF16 %s beside it in the base; a checkpoint holds one or the other", param)
			continue
		}
		E, out, in := s[0], s[1], s[2]*MXFP4Block
		t := &Tensor{Name: param, DType: safetensors.BF16, Shape: []int64{E, in, out}, Source: ref,
			Dequant: &Dequant{Scale: sref, BlockRows: MXFP4Block, BlockCols: 1, MXFP4: true},
			Reason:  "dequantized from MXFP4"}
		// The blocks' place in its shard is where P goes; adapters find P by name.
		b.outs[name] = t
		b.outs[param] = t
		b.base.byName[param] = &baseTensor{Shard: bt.Shard, T: bt.T, Ref: ref}
		b.base.byCore[core(param)] = append(b.base.byCore[core(param)], param)
		b.dropped[param+MXFP4Scales] = true
		b.p.Quant.Scales = append(b.p.Quant.Scales, Scale{Weight: name, Name: sref.Name, File: sref.File, WeightFile: ref.File,
			DType: string(sref.DType), WeightDType: "MXFP4 (E2M1 pairs in U8)", CrossShard: sref.File != ref.File})
	}
}

// mxModule is the module a mixed MXFP4 merge names in modules_to_not_convert for an
// expert parameter P of <layer>.mlp.experts: the MLP (<layer>.mlp), not the experts.
// Transformers' _replace_with_mxfp4_linear replaces GptOssMLP.forward with the MXFP4
// kernel's (which calls the experts with routing data) for every MLP it does not
// skip, so an MLP whose experts are BF16 must be skipped whole; skipping it skips its
// children (the experts and the BF16 router).
func mxModule(param string) string {
	m, _ := strings.CutSuffix(param, ".experts."+param[strings.LastIndexByte(param, '.')+1:])
	return m
}

// touchedMXFP4 reports whether the adapter changes an MXFP4 tensor.
func touchedMXFP4(t *Tensor) bool {
	return len(t.Deltas) > 0 || len(t.Patches) > 0 || t.DoRA != nil || t.Source.Adapter()
}

// mixMXFP4 settles --quantized mixed: an MLP with a touched expert parameter has all its
// MXFP4 parameters written in BF16 (the loader decides per module) and is named in
// modules_to_not_convert; every other MXFP4 pair is copied byte for byte.
func (b *builder) mixMXFP4() {
	bf16 := map[string]bool{}
	for _, name := range sortedKeys(b.outs) {
		if t := b.outs[name]; t.Name == name && t.Dequant != nil && t.Dequant.MXFP4 && touchedMXFP4(t) {
			bf16[mxModule(name)] = true
		}
	}
	for _, name := range sortedKeys(b.outs) {
		t := b.outs[name]
		if t.Name != name || t.Dequant == nil || !t.Dequant.MXFP4 {
			continue
		}
		if bf16[mxModule(name)] {
			if !touchedMXFP4(t) {
				t.Reason = "dequantized from MXFP4 (its MLP is written in BF16)"
			} else {
				t.Reason = "merged, written in BF16 (modules_to_not_convert)"
			}
			continue
		}
		b.copyMXFP4(t)
	}
	b.p.Quant.NotConverted = sortedKeys(bf16)
}

// copyMXFP4 plans the MXFP4 pair of the dequantized t as the base has it, byte for byte.
func (b *builder) copyMXFP4(t *Tensor) {
	blocks, scales := t.Source, t.Dequant.Scale
	b.outs[blocks.Name] = &Tensor{Name: blocks.Name, DType: blocks.DType, Shape: blocks.Shape, Source: blocks}
	delete(b.outs, t.Name)
	delete(b.dropped, scales.Name)
}

// keepMXFP4 settles --quantized keep: untouched pairs are copied byte for byte; a
// touched parameter P is merged as in bf16 mode (the exact dequantization plus the
// deltas) and requantized into its own P_blocks and P_scales, in their places and the
// base's geometry (merge/mxkeep.go says how).
func (b *builder) keepMXFP4() {
	for _, name := range sortedKeys(b.outs) {
		t := b.outs[name]
		if t.Name != name || t.Dequant == nil || !t.Dequant.MXFP4 {
			continue
		}
		if !touchedMXFP4(t) {
			b.copyMXFP4(t)
			continue
		}
		if t.DoRA != nil || len(t.Patches) > 0 || t.Source.Adapter() {
			continue // refused by checkMXFP4
		}
		blocks, scales := t.Source, t.Dequant.Scale
		rq := Requant{BlockRows: MXFP4Block, BlockCols: 1, ScaleDType: safetensors.U8, Of: t}
		b.outs[blocks.Name] = &Tensor{Name: blocks.Name, DType: blocks.DType, Shape: blocks.Shape, Source: blocks,
			Requant: &rq, Reason: "merged and requantized to MXFP4"}
		rs := rq
		rs.Scales = true
		b.outs[scales.Name] = &Tensor{Name: scales.Name, DType: scales.DType, Shape: scales.Shape, Source: scales,
			Requant: &rs, Reason: "E8M0 scales of the requantized " + name}
		delete(b.dropped, scales.Name)
		b.p.Quant.Requantized = append(b.p.Quant.Requantized, name)
		b.warn(name, "is requantized to MXFP4 (--quantized keep): E2M1 has one mantissa bit, so most of a LoRA delta "+
			"usually rounds away; the merge reports how much survived. Check it before publishing, or use --quantized mixed or bf16")
	}
}

// mxfp4Growth is how many bytes dequantizing MXFP4 parameters adds: all of them (what
// bf16 adds to keep), and those of every MLP whose MXFP4 parameters the adapter leaves
// alone (what mixed mode saves against bf16): their dequantized size less their blocks
// and scales.
func (b *builder) mxfp4Growth() (all, kept int64) {
	esz := int64(2) // BF16, or what --dtype makes of it
	if d := b.in.Options.DType.dtype(); d != "" {
		esz = int64(d.Bits() / 8)
	}
	byModule := map[string][]Ref{}
	touched := map[string]bool{}
	for _, name := range sortedKeys(b.base.byName) {
		param, ok := strings.CutSuffix(name, MXFP4Blocks)
		if !ok || b.base.byName[name].Ref.DType != safetensors.U8 {
			continue
		}
		t := b.outs[param] // absent where mixed or keep mode copies the pair
		m := mxModule(param)
		byModule[m] = append(byModule[m], b.base.byName[name].Ref)
		touched[m] = touched[m] || (t != nil && touchedMXFP4(t))
	}
	for m, refs := range byModule {
		for _, src := range refs {
			elems := src.Len * 2                      // two codes a byte
			grown := elems*esz - src.Len - src.Len/16 // one scale byte per 16 code bytes
			all += grown
			if !touched[m] {
				kept += grown
			}
		}
	}
	return all, kept
}

// checkMXFP4 refuses what an MXFP4 tensor cannot be merged with, and settles mixed mode.
func (b *builder) checkMXFP4() {
	for _, name := range sortedKeys(b.outs) {
		t := b.outs[name]
		if t.Dequant == nil || !t.Dequant.MXFP4 || t.Name != name {
			continue
		}
		if t.DoRA != nil || len(t.Patches) > 0 || t.Source.Adapter() {
			b.problem(name, "is an MXFP4 expert tensor; hfmerge merges LoRA (expert LoRA) into it, not DoRA, trained rows or a full replacement")
		}
	}
	switch b.in.Options.Quantized {
	case QuantMixed:
		b.mixMXFP4()
	case QuantKeep:
		b.keepMXFP4()
	}
}
