// Package mergeplan decides, from file headers and JSON alone, everything a merge will
// do: which base tensor every adapter tensor changes and how, at which scale, in which
// output shard and at which offset, and how the index and config.json change. It reads
// no tensor bytes and does no I/O, so a plan can be made and checked before anything is
// fetched, and its every problem reported at once.
package mergeplan

import (
	"github.com/hfmerge/hfmerge/safetensors"
	"strings"
)

// AdapterFile is the name PEFT gives the adapter's weights.
const AdapterFile = "adapter_model.safetensors"

// File is one safetensors file the planner can use: its name and parsed header.
type File struct {
	Name   string
	Header *safetensors.Header
}

// Input is what the planner reads. The caller fills it from a local directory, the HF
// cache or remote headers; the planner does not care which.
type Input struct {
	Shards        []File // the base model's safetensors files, in index order
	Index         []byte // model.safetensors.index.json, nil for a single-file model
	Config        []byte // the base's config.json, nil if it has none
	AdapterConfig []byte // adapter_config.json; nil means it is missing
	Adapter       *File  // adapter_model.safetensors; nil means it is missing
	Options       Options
}

// DTypeChoice is the --dtype option.
type DTypeChoice string

const (
	KeepDType DTypeChoice = "keep"
	ToBF16    DTypeChoice = "bf16"
	ToF16     DTypeChoice = "fp16"
	ToF32     DTypeChoice = "fp32"
)

// Tied is the --tied-embeddings option: what to do when the adapter changes one side
// of a tied input embedding and output head.
type Tied string

const (
	// Untie writes the head as its own tensor so the merged model computes what base +
	// adapter computed, and sets tie_word_embeddings to false.
	Untie Tied = "untie"
	// Fold adds every change into the shared tensor and keeps the tie, as PEFT's
	// merge_and_unload does.
	Fold Tied = "fold"
)

// ExpertLayout is the reading of a 3-D expert parameter (E, d1, d2) that PEFT's
// versions disagree on, for when the shapes cannot decide it (d1 = d2).
type ExpertLayout string

const (
	// ExpertAuto decides from shapes, the architecture and the adapter's peft_version,
	// and refuses when they do not settle it.
	ExpertAuto ExpertLayout = ""
	// ExpertOutIn reads (E, out, in): expert e's delta is B_e·A_e (PEFT 0.19.1 and later
	// for Transformers' non-transposed experts).
	ExpertOutIn ExpertLayout = "out-in"
	// ExpertInOut reads (E, in, out): expert e's delta is (B_e·A_e)ᵀ (PEFT before 0.19,
	// and gpt-oss's transposed experts).
	ExpertInOut ExpertLayout = "in-out"
)

// Options are the user's choices that change the output.
type Options struct {
	DType DTypeChoice
	Tied  Tied
	// Experts settles square expert parameters whose reading the planner cannot
	// decide; ExpertAuto refuses them instead.
	Experts ExpertLayout
	// Quantized is what a quantized base's merge writes; default QuantBF16.
	Quantized QuantMode
}

// Plan is everything the merge will do.
type Plan struct {
	Adapter     *AdapterConfig
	Shards      []Shard
	IndexName   string // "" when the model is a single file
	Index       []byte // the new index file, nil when IndexName is ""
	Config      []byte // the new config.json, nil when it does not change
	ConfigEdits []ConfigEdit
	Modules     []Module
	Quant       *Quantization // nil unless the base is quantized
	Problems    []Problem     // errors: the merge must not run
	Warnings    []Problem
}

// OK reports whether the plan has no errors.
func (p *Plan) OK() bool { return len(p.Problems) == 0 }

// Shard is one output file and the base file it is computed from.
type Shard struct {
	Name     string
	Base     string // the base shard every base-sourced tensor of this shard comes from
	Metadata map[string]string
	Tensors  []Tensor
	Layout   *safetensors.Layout
	same     bool // see Unchanged
}

// Size is the output file's size in bytes.
func (s *Shard) Size() int64 { return s.Layout.Size }

// Unchanged reports whether the output file is byte for byte its base shard: every
// tensor copied in place, and the same header. Such a shard needs no merge: its bytes,
// and its sha256, are the base file's.
func (s *Shard) Unchanged() bool { return s.same }

// Changed reports whether any tensor of the shard differs from the base.
func (s *Shard) Changed() bool {
	for i := range s.Tensors {
		if !s.Tensors[i].Copy() || s.Tensors[i].New {
			return true
		}
	}
	return false
}

// Ref locates a tensor in an input file.
type Ref struct {
	File   string // a base shard name, or AdapterFile
	Name   string
	DType  safetensors.DType
	Shape  []int64
	Offset int64 // absolute offset of the first byte in File
	Len    int64
}

// Adapter reports whether the tensor comes from an adapter's file (AdapterFileOf).
func (r *Ref) Adapter() bool {
	return r.File == AdapterFile || strings.HasPrefix(r.File, AdapterFile+"#")
}

// Rows and Cols view the tensor as a matrix: the product of all dimensions but the last
// by the last (a vector is one row; a scalar is 1×1). A stack of expert matrices
// (E, d1, d2) is then E·d1 rows of d2, expert e's rows starting at e·d1.
func (r *Ref) Rows() int64 { return rows(r.Shape) }
func (r *Ref) Cols() int64 { return cols(r.Shape) }

func rows(shape []int64) int64 {
	n := int64(1)
	for i := 0; i+1 < len(shape); i++ {
		n *= shape[i]
	}
	return n
}

func cols(shape []int64) int64 {
	if len(shape) == 0 {
		return 1
	}
	return shape[len(shape)-1]
}

// Tensor is one output tensor: where its values come from and what is done to them, in
// this order: Source, Patches, Deltas, DoRA, then one rounding to DType.
type Tensor struct {
	Name    string
	DType   safetensors.DType
	Shape   []int64
	Source  Ref
	Patches []RowPatch // rows replaced by trained values (trainable tokens)
	Deltas  []Delta    // low-rank updates, summed
	DoRA    *DoRA      // weight-decomposed rescale, after the deltas
	Dequant *Dequant   // how a quantized Source becomes values, before everything else
	// Requant writes the result quantized again (--quantized keep): DType is the
	// base's FP8 dtype, each block's scale chosen from the result.
	Requant *Requant
	// ScaleOf makes this tensor the block scales the requantization of another output
	// tensor chooses (its <weight>_scale_inv); Source is the base's scale.
	ScaleOf *Tensor
	New     bool   // not in the base checkpoint (an untied head, a new module)
	Reason  string // why the tensor changes, for reports
}

// Copy reports whether the output bytes are the source bytes.
func (t *Tensor) Copy() bool {
	return len(t.Patches) == 0 && len(t.Deltas) == 0 && t.DoRA == nil && t.DType == t.Source.DType &&
		t.Requant == nil && t.ScaleOf == nil && t.Dequant == nil
}

// Rows and Cols view the output as a matrix, as Ref does.
func (t *Tensor) Rows() int64 { return rows(t.Shape) }
func (t *Tensor) Cols() int64 { return cols(t.Shape) }

// Delta adds Scale · L · R to the tensor viewed as a matrix. Which stored matrix is L and
// which R depends on the layer: for a Linear weight (out, in), L = B and R = A; for a
// GPT-2 Conv1D weight stored (in, out) and for an embedding (vocab, dim), L = Aᵀ and
// R = Bᵀ (Transposed). Vector deltas (lora_B.bias) add Scale · B elementwise.
//
// An expert delta (Expert not nil) takes one expert's share of a PEFT ParamWrapper's
// packed lora_A (r·E, in) and lora_B (out, r·E): A_e and B_e, whose product, transposed
// when Transposed, is the expert's delta matrix Δ_e; Expert says which rows of Δ_e go
// to which rows of the tensor.
type Delta struct {
	Module     string // the adapter's module path, for messages
	A, B       Ref
	Rank       int
	Scale      float64
	Transposed bool
	Vector     bool
	Expert     *Expert
}

// Expert locates one expert's factors in a ParamWrapper's packed matrices and its delta
// in the output tensor. A_e is rows [Index·r, (Index+1)·r) of lora_A (PEFT's
// reshape(E, r, in)); B_e is the columns k·Count + Index of lora_B for k < r (PEFT's
// reshape(out, r, E)), or [Index·r, (Index+1)·r) when GroupedB (Unsloth's packing
// before its lora_B_layout marker). Rows [Lo, Hi) of Δ_e are added to rows
// [Row, Row+Hi-Lo) of the tensor viewed as a matrix.
type Expert struct {
	Index, Count int
	GroupedB     bool
	Lo, Hi       int64
	Row          int64
}

// Rows is the number of tensor rows the delta changes: all of them unless it is an
// expert's.
func (d *Delta) Rows(t *Tensor) int64 {
	if d.Expert == nil {
		return t.Rows()
	}
	return d.Expert.Hi - d.Expert.Lo
}

// Axis says along which direction DoRA normalises.
type Axis int

const (
	// PerRow normalises each row (Linear: one norm per output channel).
	PerRow Axis = iota
	// PerCol normalises each column over all rows (Conv1D, embeddings); it needs a first
	// pass over the whole tensor.
	PerCol
)

// DoRA rescales V = W + ΔW to Magnitude / ‖V‖ along Axis.
type DoRA struct {
	Magnitude Ref
	Axis      Axis
}

// RowPatch replaces rows Indices[i] of the tensor by row i of Values.
type RowPatch struct {
	Indices []int64
	Values  Ref
}

// Module is one adapter module as the plan understood it, for reports.
type Module struct {
	Name   string  `json:"name"`            // the adapter's module path
	Target string  `json:"target"`          // the output tensor it changes
	Kind   string  `json:"kind"`            // linear, conv1d, embedding, dora-..., lora-bias, replace, tokens, new
	Rank   int     `json:"rank,omitempty"`  // 0 for replacements
	Alpha  float64 `json:"alpha,omitempty"` // 0 for replacements
	Scale  float64 `json:"scale,omitempty"` // alpha/r, or alpha/√r with rsLoRA
	Note   string  `json:"note,omitempty"`  // how the name was resolved, when not exactly
	// For expert LoRA (target_parameters): the parameter PEFT wrapped, the adapter keys
	// of its lora_A and lora_B, the number of experts, how the parameter was read
	// (out-in or in-out) and every output tensor its deltas change.
	Param   string   `json:"param,omitempty"`
	Keys    []string `json:"keys,omitempty"`
	Experts int      `json:"experts,omitempty"`
	Layout  string   `json:"layout,omitempty"`
	Tensors []string `json:"tensors,omitempty"`
}

// ConfigEdit is one change to config.json.
type ConfigEdit struct {
	Key string `json:"key"`
	Old any    `json:"old"`
	New any    `json:"new"`
}

// Problem is something wrong with the inputs, named by the file, tensor or field it
// concerns.
type Problem struct {
	Subject string // a file, "file: tensor", or "adapter_config.json: field"
	Message string
}

func (p Problem) String() string { return p.Subject + ": " + p.Message }
