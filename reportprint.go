package hfmerge

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Print writes the report for a person.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "base:    %s\nadapter: %s", r.Base, r.Adapter)
	if c := r.Config; c != nil {
		fmt.Fprintf(w, " (LoRA r=%d, lora_alpha=%g", c.R, c.Alpha)
		if c.RSLoRA {
			fmt.Fprint(w, ", rsLoRA")
		}
		if c.DoRA {
			fmt.Fprint(w, ", DoRA")
		}
		fmt.Fprintf(w, "; %d modules)", len(r.Modules))
	}
	fmt.Fprintln(w)
	if len(r.Shards) > 0 {
		fmt.Fprintln(w, "\nshards:")
		for _, s := range r.Shards {
			what := fmt.Sprintf("%d changed, %d copied", len(s.Changes), s.Copied)
			if s.Unchanged {
				what = "unchanged: the base's bytes"
			}
			fmt.Fprintf(w, "  %-40s %10s  %s\n", s.Name, human(s.Bytes), what)
			for _, t := range s.Changes {
				fmt.Fprintf(w, "      %-60s %s: %s\n", t.Name, t.DType, t.Reason)
			}
		}
	}
	printQuant(w, r)
	if len(r.Edits) > 0 {
		fmt.Fprintln(w, "\nconfig.json:")
		for _, e := range r.Edits {
			old := e.Old
			if old == nil {
				old = "(absent)"
			}
			if m, ok := old.(map[string]any); ok {
				old = describeObject(e.Key, m)
			}
			var now any = e.New
			if now == nil {
				now = "(removed)"
			}
			fmt.Fprintf(w, "  %s: %v -> %v\n", e.Key, old, now)
		}
	}
	if len(r.Shards) > 0 {
		fmt.Fprintf(w, "\nestimate: peak RAM about %s; %s of shards read\n", human(r.Estimate.PeakRAM), human(r.Estimate.ReadBytes))
		fmt.Fprintf(w, "  merge: %s written to --out\n", human(r.Estimate.OutDisk))
		fmt.Fprintf(w, "  push: %s of shards to merge and upload; at most %s of disk (one merged shard, only while the base is remote)\n",
			human(r.Estimate.ChangedBytes), human(r.Estimate.PushDisk))
		if t := r.Target; t != nil {
			fmt.Fprintf(w, "  push to %s: %s\n", t.Repo, t.Note)
			fmt.Fprintf(w, "    through Xet: about %s sent (the changed tensors and their chunk boundaries, with the base in Xet storage); through LFS: %s\n",
				human(t.XetBytes), human(t.LFSBytes))
		}
	}
	for _, x := range r.Warnings {
		fmt.Fprintf(w, "\nwarning: %s", x)
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintln(w)
	}
	if len(r.Problems) > 0 {
		fmt.Fprintf(w, "\n%d problem(s); nothing can be merged until they are fixed:\n", len(r.Problems))
		for _, x := range r.Problems {
			fmt.Fprintf(w, "  - %s\n", x)
		}
	} else {
		fmt.Fprintln(w, "\nno problems found")
	}
}

// printQuant says what a quantized base's merge reads and what each --quantized mode
// would write.
func printQuant(w io.Writer, r *Report) {
	q := r.Quant
	if q == nil {
		return
	}
	blocks := "" // compressed-tensors and MXFP4 have no weight_block_size
	if q.Block[0] > 0 {
		blocks = fmt.Sprintf(", blocks %dx%d", q.Block[0], q.Block[1])
	}
	fmt.Fprintf(w, "\nquantized base: %s%s, %d scale tensors read; --quantized %s\n", q.Method, blocks, len(q.Scales), q.Mode)
	for _, s := range q.Scales {
		where := s.File
		if s.CrossShard {
			where += " (another shard than its weight's " + s.WeightFile + ")"
		}
		fmt.Fprintf(w, "  %-60s %s in %s\n", s.Name, s.DType, where)
	}
	var sizes []string
	for _, m := range []string{"bf16", "keep", "mixed"} {
		if n, ok := q.Bytes[m]; ok {
			sizes = append(sizes, fmt.Sprintf("%s %s", m, human(n)))
		}
	}
	fmt.Fprintf(w, "  output tensor bytes: base %s; with --quantized %s\n", human(q.BaseBytes), strings.Join(sizes, ", "))
}

// describeObject shows a JSON object of config.json in one line: a
// quantization_config by its method and the fields that say what its tensors hold (a
// person checks these against the model card before publishing without them), any
// other object by its keys.
func describeObject(key string, m map[string]any) string {
	if key != "quantization_config" {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return "{" + strings.Join(keys, ", ") + "}"
	}
	method, _ := m["quant_method"].(string)
	if method == "" {
		method = "no quant_method"
	}
	var parts []string
	add := func(format string, args ...any) { parts = append(parts, fmt.Sprintf(format, args...)) }
	for _, k := range []string{"fmt", "format", "weight_block_size", "scale_fmt", "activation_scheme"} {
		if v, ok := m[k]; ok && v != nil {
			add("%s %s", k, jsonish(v))
		}
	}
	if groups, ok := m["config_groups"].(map[string]any); ok {
		names := make([]string, 0, len(groups))
		for k := range groups {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, g := range names {
			w, _ := groups[g].(map[string]any)
			if w, _ = w["weights"].(map[string]any); w != nil {
				add("%s weights %v %v-bit %v", g, w["type"], w["num_bits"], w["strategy"])
			}
		}
	}
	for _, k := range []string{"modules_to_not_convert", "ignored_layers", "ignore"} {
		if l, ok := m[k].([]any); ok && len(l) > 0 {
			add("%s %d entries", k, len(l))
		}
	}
	if len(parts) == 0 {
		return method
	}
	return method + " (" + strings.Join(parts, ", ") + ")"
}

// jsonish writes a config value as JSON shows it: [128, 128] for a list.
func jsonish(v any) string {
	if l, ok := v.([]any); ok {
		items := make([]string, len(l))
		for i, x := range l {
			items[i] = jsonish(x)
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	return fmt.Sprint(v)
}
