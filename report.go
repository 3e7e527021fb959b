package hfmerge

import (
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
)

// Report is what a plan says to a person or a program: every shard and tensor that
// changes and why, config edits, problems, warnings and what the merge will need.
type Report struct {
	Base       string                  `json:"base"`
	Adapter    string                  `json:"adapter"`
	Config     *AdapterSummary         `json:"adapter_config,omitempty"`
	Shards     []ShardReport           `json:"shards"`
	Modules    []mergeplan.Module      `json:"modules"`
	Edits      []mergeplan.ConfigEdit  `json:"config_edits"`
	Quant      *mergeplan.Quantization `json:"quantization,omitempty"` // a quantized base: scales used, size per mode
	Problems   []string                `json:"problems"`
	Warnings   []string                `json:"warnings"`
	Estimate   Estimate                `json:"estimate"`
	TotalBytes int64                   `json:"output_bytes"`
	Target     *PushPreview            `json:"push_target,omitempty"` // plan --repo
}

// AdapterSummary is the adapter's configuration in brief.
type AdapterSummary struct {
	R         int     `json:"r"`
	Alpha     float64 `json:"lora_alpha"`
	RSLoRA    bool    `json:"use_rslora"`
	DoRA      bool    `json:"use_dora"`
	BaseModel string  `json:"base_model_name_or_path"`
}

// ShardReport is one output shard.
type ShardReport struct {
	Name      string          `json:"name"`
	Bytes     int64           `json:"bytes"`
	Copied    int             `json:"copied_tensors"`
	Unchanged bool            `json:"unchanged"` // byte for byte the base's: push sends it only if the Hub lacks it
	Changes   []TensorChanges `json:"changed_tensors"`
}

// TensorChanges is one tensor a merge changes.
type TensorChanges struct {
	Name   string `json:"name"`
	DType  string `json:"dtype"`
	Reason string `json:"reason"`
	Deltas int    `json:"deltas,omitempty"`
	DoRA   bool   `json:"dora,omitempty"`
	New    bool   `json:"new,omitempty"`
}

// Estimate is what a merge of this plan needs.
type Estimate struct {
	PeakRAM   int64 `json:"peak_ram_bytes"`
	OutDisk   int64 `json:"out_disk_bytes"`
	ReadBytes int64 `json:"read_bytes"`
	// PushDisk is the most disk push uses by default: one merged shard, and only while
	// the base is remote (a local base needs none).
	PushDisk int64 `json:"push_disk_bytes"`
	// ChangedBytes is the size of the shards the adapter changes: what push merges.
	ChangedBytes int64 `json:"changed_shard_bytes"`
}

// Report describes a plan.
func (l *Inputs) Report(p *mergeplan.Plan, jobs int) *Report {
	r := &Report{Base: l.Base.String(), Adapter: l.adapterNames(), Modules: p.Modules, Edits: p.ConfigEdits, Quant: p.Quant,
		Problems: []string{}, Warnings: []string{}, Shards: []ShardReport{}}
	if a := p.Adapter; a != nil {
		r.Config = &AdapterSummary{R: a.R, Alpha: a.Alpha, RSLoRA: a.UseRSLoRA, DoRA: a.UseDoRA, BaseModel: a.BaseModel}
	}
	var largest int64
	for _, s := range p.Shards {
		sr := ShardReport{Name: s.Name, Bytes: s.Size(), Unchanged: s.Unchanged(), Changes: []TensorChanges{}}
		for _, t := range s.Tensors {
			if t.Copy() && !t.New {
				sr.Copied++
				continue
			}
			sr.Changes = append(sr.Changes, TensorChanges{Name: t.Name, DType: string(t.DType), Reason: t.Reason,
				Deltas: len(t.Deltas), DoRA: t.DoRA != nil, New: t.New})
		}
		r.Shards = append(r.Shards, sr)
		r.TotalBytes += s.Size()
		if !s.Unchanged() {
			r.Estimate.ChangedBytes += s.Size()
			if !baseLocal(l.Base, s.Base) {
				largest = max(largest, s.Size())
			}
		}
	}
	for _, pr := range p.Problems {
		r.Problems = append(r.Problems, pr.String())
	}
	for _, w := range p.Warnings {
		r.Warnings = append(r.Warnings, w.String())
	}
	r.Estimate.PeakRAM = peakRAM(p, jobs)
	r.Estimate.OutDisk = r.TotalBytes
	r.Estimate.ReadBytes = l.inputBytes
	r.Estimate.PushDisk = largest
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
