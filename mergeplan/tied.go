package mergeplan

// headState tracks the output head of a model whose head shares the input embedding's
// weights (tie_word_embeddings), where the checkpoint stores only the embedding.
//
// In training, PEFT applies a LoRA on lm_head to the output side only, and a LoRA or a
// trained copy of embed_tokens to the input side only; the other side keeps using the
// shared base weight. Merging either into the one stored tensor changes both sides. With
// Untie the plan writes the head as its own tensor, so the merged model computes what
// base + adapter computed; with Fold it adds everything into the shared tensor, as PEFT's
// merge_and_unload does.
type headState struct {
	possible     bool    // tied, and the checkpoint has no head tensor
	explicitBoth bool    // config says tied, yet the checkpoint stores both tensors
	t            *Tensor // the head as its own tensor, once the adapter targets it
	own          bool    // the head has its own low-rank delta
	replaced     bool    // the head is replaced by an adapter tensor
	embedKind    string  // how the embedding was replaced, if it was
	untied       bool    // the plan writes the head as its own tensor
}

func (b *builder) newHead() *headState {
	h := &headState{}
	if b.embed == "" {
		return h
	}
	tied, explicit := b.tiedConfig()
	exists := false
	for _, n := range []string{"lm_head.weight", headName(b.embed), "embed_out.weight"} {
		if found, _, _ := b.base.resolve(n); found != "" {
			exists = true
		}
	}
	h.possible = !exists && (tied || !explicit)
	h.explicitBoth = exists && tied && explicit
	return h
}

// pending returns the head's own tensor, creating it from the shared weight.
func (h *headState) pending(b *builder) *Tensor {
	if h.t == nil {
		src := b.sharedSource()
		h.t = &Tensor{Name: headName(b.embed), DType: src.DType, Shape: src.Shape, Source: src,
			New: true, Reason: "output head untied from " + b.embed}
	}
	return h.t
}

// sharedSource is the weight both sides used in training: the base embedding, or the
// adapter's copy of it when that copy is the frozen base layer (saved embedding layers)
// or carries a resized vocabulary, which the resize gave to both sides.
func (b *builder) sharedSource() Ref {
	base := b.base.byName[b.embed].Ref
	e, ok := b.outs[b.embed]
	if ok && e.Source.Adapter() && (b.head.embedKind == "replace-base-layer" || e.Shape[0] != base.Shape[0]) {
		return e.Source
	}
	return base
}

// syncHead points a head created before the embedding's replacement was seen at the
// shared weight.
func (b *builder) syncHead() {
	h := b.head
	if h.t != nil && !h.replaced {
		h.t.Source = b.sharedSource()
		h.t.Shape = h.t.Source.Shape
	}
}

// tie decides, after every operation is known, whether the head must become its own
// tensor.
func (b *builder) tie() {
	h := b.head
	if h.explicitBoth {
		_, embedChanged := b.outs[b.embed]
		headChanged := false
		for _, n := range []string{"lm_head.weight", headName(b.embed)} {
			if _, ok := b.outs[n]; ok {
				headChanged = true
			}
		}
		if embedChanged || headChanged {
			h.untied = false
			b.untie = true
			b.warn("config.json", "ties the input embedding and the output head, but the checkpoint stores both and the adapter changes them; the merged config unties them")
		}
		return
	}
	if !h.possible {
		return
	}
	shared := b.sharedSource()
	e := b.outs[b.embed]
	embedDiverges := e != nil && (len(e.Deltas) > 0 || e.DoRA != nil ||
		(e.Source.Adapter() && e.Source.Name != shared.Name))
	headOwn := h.t != nil && (h.own || h.replaced)
	if !embedDiverges && !headOwn {
		return // both sides still share one weight: keep the tie
	}
	if b.in.Options.Tied == Fold {
		if h.replaced {
			b.problem(b.embed, "--tied-embeddings fold cannot keep the tie: the adapter replaces the output head with its own tensor; use untie")
			return
		}
		if h.t != nil {
			et := b.out(b.embed)
			et.Deltas = append(et.Deltas, h.t.Deltas...)
			if h.t.DoRA != nil {
				if et.DoRA != nil {
					b.problem(b.embed, "has DoRA on both the input embedding and the tied output head")
					return
				}
				et.DoRA = h.t.DoRA
			}
			et.Reason = "merged, with the tied output head's delta folded in"
			for i := range b.p.Modules {
				if b.p.Modules[i].Target == h.t.Name {
					b.p.Modules[i].Target = b.embed
				}
			}
			b.warn(b.embed, "the output head's delta is folded into the shared embedding, so the input side changes too (--tied-embeddings fold)")
		}
		return
	}
	ht := h.pending(b)
	if !h.replaced {
		ht.Source, ht.Shape = shared, shared.Shape
	}
	if e != nil && len(e.Patches) > 0 {
		// PEFT ties trainable tokens of a tied embedding to the head as well.
		ht.Patches = append(append([]RowPatch(nil), e.Patches...), ht.Patches...)
	}
	h.untied = true
	b.untie = true
	b.outs[ht.Name] = ht
}
