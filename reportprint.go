package hfmerge

import (
	"fmt"
	"io"
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
			if _, ok := old.(map[string]any); ok {
				old = "{...}"
			}
			fmt.Fprintf(w, "  %s: %v -> %v\n", e.Key, old, e.New)
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
	fmt.Fprintf(w, "\nquantized base: %s, blocks %dx%d, %d scale tensors read; --quantized %s\n", q.Method, q.Block[0], q.Block[1], len(q.Scales), q.Mode)
	for _, s := range q.Scales {
		where := s.File
		if s.CrossShard {
			where += " (another shard than its weight's " + s.WeightFile + ")"
		}
		fmt.Fprintf(w, "  %-60s %s in %s\n", s.Name, s.DType, where)
	}
	fmt.Fprintf(w, "  output size: base %s;", human(q.BaseBytes))
	for _, m := range []string{"bf16", "keep", "mixed"} {
		if n, ok := q.Bytes[m]; ok {
			fmt.Fprintf(w, " %s %s", m, human(n))
		}
	}
	fmt.Fprintln(w)
}
