package mergeplan

import (
	"bytes"
	"fmt"
	"strings"
)

// Stacked is one adapter of a stack: its adapter_config.json, its weights' header, and
// the weight its delta is scaled by.
type Stacked struct {
	Config []byte
	File   *File
	Weight float64
}

// AdapterFileOf names adapter k's weights among a plan's input files: AdapterFile for
// the first, so that a single adapter's refs are as they always were.
func AdapterFileOf(k int) string {
	if k == 0 {
		return AdapterFile
	}
	return fmt.Sprintf("%s#%d", AdapterFile, k+1)
}

// BuildStack plans several adapters merged into one base in one pass:
// W + Σ w_k·s_k·B_k·A_k, accumulated wide and rounded once (merging them one after
// another rounds after each, and a model merged twice is worse). Each adapter is
// planned on its own, with its config, patterns and kinds, and the plans are joined
// tensor by tensor. Where the result of stacking is not defined by the adapters' own
// semantics, it is refused, saying why: DoRA on a tensor another adapter changes
// (DoRA renormalises the sum of the weight and its own delta), a full tensor an adapter
// carries (modules_to_save, trained tokens) where another changes it, and adapters that
// change the model's layout (new tensors, a resized vocabulary, an untied head)
// differently. in.AdapterConfig and in.Adapter are ignored.
func BuildStack(in *Input, stack []Stacked) *Plan {
	if len(stack) == 1 && stack[0].Weight == 1 {
		one := *in
		one.AdapterConfig, one.Adapter = stack[0].Config, stack[0].File
		return Build(&one)
	}
	out := &Plan{}
	var plans []*Plan
	for k, a := range stack {
		one := *in
		one.AdapterConfig, one.Adapter = a.Config, a.File
		p := Build(&one)
		label := fmt.Sprintf("adapter %d", k+1)
		for _, x := range p.Problems {
			out.Problems = append(out.Problems, Problem{Subject: label + ": " + x.Subject, Message: x.Message})
		}
		for _, x := range p.Warnings {
			out.Warnings = append(out.Warnings, Problem{Subject: label + ": " + x.Subject, Message: x.Message})
		}
		if a.Weight == 0 {
			out.Problems = append(out.Problems, Problem{Subject: label, Message: "has weight 0: leave it out instead"})
		}
		rename(p, AdapterFileOf(k), a.Weight, label)
		for _, m := range p.Modules {
			m.Note = strings.TrimPrefix(m.Note+"; ", "; ") + fmt.Sprintf("%s, weight %g", label, a.Weight)
			m.Scale *= a.Weight
			out.Modules = append(out.Modules, m)
		}
		plans = append(plans, p)
	}
	if !out.OK() {
		return out
	}
	first := plans[0]
	out.Adapter, out.IndexName, out.Index, out.Config, out.ConfigEdits = first.Adapter, first.IndexName, first.Index, first.Config, first.ConfigEdits
	out.Shards = first.Shards
	for k, p := range plans[1:] {
		label := fmt.Sprintf("adapter %d", k+2)
		if !bytes.Equal(p.Config, first.Config) {
			out.Problems = append(out.Problems, Problem{Subject: label, Message: "changes config.json differently from adapter 1 " +
				"(a resized vocabulary, an untied head): stacking needs adapters that leave the model's layout alike; merge them one at a time"})
			continue
		}
		for i := range p.Shards {
			s, o := &out.Shards[i], &p.Shards[i]
			if !bytes.Equal(s.Layout.Prefix, o.Layout.Prefix) {
				out.Problems = append(out.Problems, Problem{Subject: label + ": " + o.Name, Message: "lays the shard out differently from adapter 1 " +
					"(new tensors, another dtype): stacking needs adapters that leave the model's layout alike; merge them one at a time"})
				continue
			}
			for j := range o.Tensors {
				if err := join(&s.Tensors[j], &o.Tensors[j]); err != "" {
					out.Problems = append(out.Problems, Problem{Subject: label + ": " + o.Tensors[j].Name, Message: err})
				}
			}
		}
	}
	for i := range out.Shards {
		s := &out.Shards[i]
		s.same = s.same && !s.Changed()
	}
	return out
}

// rename points a plan's adapter refs at file and scales its deltas by weight.
func rename(p *Plan, file string, weight float64, label string) {
	fix := func(r *Ref) {
		if r.Adapter() {
			r.File = file
		}
	}
	for i := range p.Shards {
		for j := range p.Shards[i].Tensors {
			t := &p.Shards[i].Tensors[j]
			fix(&t.Source)
			for k := range t.Patches {
				fix(&t.Patches[k].Values)
			}
			for k := range t.Deltas {
				d := &t.Deltas[k]
				fix(&d.A)
				fix(&d.B)
				d.Scale *= weight
			}
			if t.DoRA != nil {
				fix(&t.DoRA.Magnitude)
			}
			if !t.Copy() {
				t.Reason = label + ": " + t.Reason
			}
		}
	}
}

// join adds what another adapter does to a tensor to what the first ones do, or says
// why the sum is not defined.
func join(t, o *Tensor) string {
	if o.Copy() {
		return ""
	}
	if t.Copy() {
		*t = *o
		return ""
	}
	switch {
	case t.DoRA != nil || o.DoRA != nil:
		return "DoRA renormalises the weight plus its own adapter's delta, so another adapter's change to the same tensor has no defined place; merge them one at a time"
	case len(t.Patches) > 0 || len(o.Patches) > 0 || t.Source.Adapter() || o.Source.Adapter():
		return "one adapter carries this tensor (or rows of it) whole, and another changes it: the result depends on their order; merge them one at a time"
	}
	for _, d := range append(append([]Delta(nil), t.Deltas...), o.Deltas...) {
		if d.Expert != nil {
			return "two adapters change the same expert tensor: stacking expert LoRA is not supported yet; merge them one at a time"
		}
	}
	t.Deltas = append(t.Deltas, o.Deltas...)
	t.Reason += "; " + o.Reason
	return ""
}
