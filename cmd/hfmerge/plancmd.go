package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
)

func planCmd(c *cli.Context) error {
	o, err := readOptions(c)
	if err != nil {
		return err
	}
	l, err := loadSources(c.Context, o, openOS, c.App.ErrWriter)
	if err != nil {
		return err
	}
	defer l.Close()
	p := makePlan(l)
	r := newReport(l, p, o.jobs)
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		r.print(c.App.Writer)
	}
	if !p.OK() {
		return &exitError{exitProblems, errReported}
	}
	return nil
}

// makePlan plans the merge, or reports why the inputs could not be read.
func makePlan(l *loaded) *mergeplan.Plan {
	if len(l.problems) == 0 {
		return mergeplan.Build(l.in)
	}
	p := &mergeplan.Plan{Problems: l.problems}
	if l.in.AdapterConfig != nil {
		if _, err := mergeplan.ParseAdapterConfig(l.in.AdapterConfig); err != nil {
			p.Problems = append(p.Problems, mergeplan.Problem{Subject: mergeplan.AdapterConfigFile, Message: err.Error()})
		}
	}
	return p
}

// report is what plan prints.
type report struct {
	Base       string                 `json:"base"`
	Adapter    string                 `json:"adapter"`
	Config     *adapterSummary        `json:"adapter_config,omitempty"`
	Shards     []shardReport          `json:"shards"`
	Modules    []mergeplan.Module     `json:"modules"`
	Edits      []mergeplan.ConfigEdit `json:"config_edits"`
	Problems   []string               `json:"problems"`
	Warnings   []string               `json:"warnings"`
	Estimate   estimate               `json:"estimate"`
	TotalBytes int64                  `json:"output_bytes"`
}

type adapterSummary struct {
	R         int     `json:"r"`
	Alpha     float64 `json:"lora_alpha"`
	RSLoRA    bool    `json:"use_rslora"`
	DoRA      bool    `json:"use_dora"`
	BaseModel string  `json:"base_model_name_or_path"`
}

type shardReport struct {
	Name    string          `json:"name"`
	Bytes   int64           `json:"bytes"`
	Copied  int             `json:"copied_tensors"`
	Changes []tensorChanges `json:"changed_tensors"`
}

type tensorChanges struct {
	Name   string `json:"name"`
	DType  string `json:"dtype"`
	Reason string `json:"reason"`
	Deltas int    `json:"deltas,omitempty"`
	DoRA   bool   `json:"dora,omitempty"`
	New    bool   `json:"new,omitempty"`
}

// estimate is what a merge of this plan needs.
type estimate struct {
	PeakRAM   int64 `json:"peak_ram_bytes"`
	OutDisk   int64 `json:"out_disk_bytes"`
	ReadBytes int64 `json:"read_bytes"`
	// PushDisk is the transient disk push needs by default: the largest merged shard,
	// which is uploaded and deleted before the next one is written. With --disk-budget
	// below it, push needs no disk but merges each shard twice.
	PushDisk int64 `json:"push_disk_bytes"`
}

func newReport(l *loaded, p *mergeplan.Plan, jobs int) *report {
	r := &report{Base: l.base.String(), Adapter: l.adapter.String(), Modules: p.Modules, Edits: p.ConfigEdits,
		Problems: []string{}, Warnings: []string{}}
	if a := p.Adapter; a != nil {
		r.Config = &adapterSummary{R: a.R, Alpha: a.Alpha, RSLoRA: a.UseRSLoRA, DoRA: a.UseDoRA, BaseModel: a.BaseModel}
	}
	for _, s := range p.Shards {
		sr := shardReport{Name: s.Name, Bytes: s.Size(), Changes: []tensorChanges{}}
		for _, t := range s.Tensors {
			if t.Copy() && !t.New {
				sr.Copied++
				continue
			}
			sr.Changes = append(sr.Changes, tensorChanges{Name: t.Name, DType: string(t.DType), Reason: t.Reason,
				Deltas: len(t.Deltas), DoRA: t.DoRA != nil, New: t.New})
		}
		r.Shards = append(r.Shards, sr)
		r.TotalBytes += s.Size()
	}
	for _, pr := range p.Problems {
		r.Problems = append(r.Problems, pr.String())
	}
	for _, w := range p.Warnings {
		r.Warnings = append(r.Warnings, w.String())
	}
	var largest int64
	for _, s := range p.Shards {
		largest = max(largest, s.Size())
	}
	r.Estimate = estimate{PeakRAM: peakRAM(p, jobs), OutDisk: r.TotalBytes, ReadBytes: l.inputBytes, PushDisk: largest}
	return r
}

// peakRAM estimates a merge's resident memory: the Go runtime and the largest need of
// any one shard, since shards are merged one after another.
func peakRAM(p *mergeplan.Plan, jobs int) int64 {
	const runtimeBase = 24 << 20
	var most int64
	for i := range p.Shards {
		most = max(most, merge.PeakMemory(&p.Shards[i], merge.Options{Jobs: jobs}))
	}
	return runtimeBase + most
}

func (r *report) print(w io.Writer) {
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
			fmt.Fprintf(w, "  %-40s %10s  %d changed, %d copied\n", s.Name, human(s.Bytes), len(s.Changes), s.Copied)
			for _, t := range s.Changes {
				fmt.Fprintf(w, "      %-60s %s: %s\n", t.Name, t.DType, t.Reason)
			}
		}
	}
	if len(r.Edits) > 0 {
		fmt.Fprintln(w, "\nconfig.json:")
		for _, e := range r.Edits {
			fmt.Fprintf(w, "  %s: %v -> %v\n", e.Key, nilString(e.Old), e.New)
		}
	}
	if len(r.Shards) > 0 {
		fmt.Fprintf(w, "\nestimate: peak RAM about %s; %s of shards read\n", human(r.Estimate.PeakRAM), human(r.Estimate.ReadBytes))
		fmt.Fprintf(w, "  merge: %s written to --out\n", human(r.Estimate.OutDisk))
		fmt.Fprintf(w, "  push: %s of transient disk (one merged shard at a time), or none with --disk-budget below it (each shard merged twice)\n",
			human(r.Estimate.PushDisk))
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

func nilString(v any) any {
	if v == nil {
		return "(absent)"
	}
	return v
}

// human prints a byte count with a binary-free, decimal unit as the Hub shows sizes.
func human(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	f := float64(n)
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + " " + units[i]
}
