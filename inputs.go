package hfmerge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
)

// Inputs are a base model and an adapter read up to their headers: everything a plan
// needs, and the sources to read tensor bytes from when the merge runs.
type Inputs struct {
	Base Source
	// Adapter is the first adapter (usually the only one); Stack is every adapter with
	// the weight its delta is scaled by, Stack[0].Source being Adapter.
	Adapter Source
	Stack   []StackedAdapter
	// Problems stopped the inputs from being read whole; the plan reports them.
	Problems   []mergeplan.Problem
	in         mergeplan.Input
	inputBytes int64 // total size of the base's shards

	stacked []mergeplan.Stacked

	mu       sync.Mutex
	adapterF []File // the adapters' weights, opened once for every shard
}

// StackedAdapter is one adapter of several merged in one pass, and its weight.
type StackedAdapter struct {
	Source Source
	Weight float64
}

// Load reads the JSON files and safetensors headers of a base model and an adapter.
// Tensor bytes are not read. Problems with the files are recorded for the plan; an error
// means the sources themselves cannot be used. Load takes over both sources: Close closes
// them.
func Load(ctx context.Context, base, adapter Source, opts mergeplan.Options) (*Inputs, error) {
	return LoadStack(ctx, base, []StackedAdapter{{adapter, 1}}, opts)
}

// LoadStack is Load for several adapters merged in one pass, W + Σ wₖ·sₖ·Bₖ·Aₖ, rounded
// once.
func LoadStack(ctx context.Context, base Source, stack []StackedAdapter, opts mergeplan.Options) (*Inputs, error) {
	if len(stack) == 0 {
		return nil, &UsageError{fmt.Errorf("no adapter given")}
	}
	l := &Inputs{Base: base, Adapter: stack[0].Source, Stack: stack, in: mergeplan.Input{Options: opts}}
	if err := l.load(ctx); err != nil {
		l.Close()
		return nil, fmt.Errorf("reading %s and %s: %w", base, l.adapterNames(), err)
	}
	if err := mergeplan.CheckQuantMode(l.in.Config, opts.Quantized); err != nil {
		l.Close()
		return nil, &UsageError{fmt.Errorf("--base %s: %w", base, err)}
	}
	return l, nil
}

// adapterNames lists the adapters for messages.
func (l *Inputs) adapterNames() string {
	var names []string
	for _, a := range l.Stack {
		names = append(names, a.Source.String())
	}
	return strings.Join(names, " + ")
}

func (l *Inputs) load(ctx context.Context) error {
	problem := func(subject, format string, args ...any) {
		l.Problems = append(l.Problems, mergeplan.Problem{Subject: subject, Message: fmt.Sprintf(format, args...)})
	}
	var err error
	if l.in.Config, err = l.Base.Read(ctx, "config.json"); err != nil {
		return err
	}
	if l.in.Index, err = l.Base.Read(ctx, mergeplan.IndexFile); err != nil {
		return err
	}
	shards := []string{"model.safetensors"}
	if l.in.Index != nil {
		if shards, err = mergeplan.ShardNames(l.in.Index); err != nil {
			problem(mergeplan.IndexFile, "%v", err)
		}
	}
	for _, name := range shards {
		h, err := l.Base.Header(ctx, name)
		if errors.Is(err, ErrNotFound) && l.in.Index == nil {
			problem("--base "+l.Base.String(), "has neither model.safetensors nor %s; hfmerge reads safetensors weights (convert *.bin weights first)", mergeplan.IndexFile)
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			problem(name, "%v", err)
			continue
		}
		l.in.Shards = append(l.in.Shards, mergeplan.File{Name: name, Header: h})
		l.inputBytes += h.Size
	}
	for k, a := range l.Stack {
		st := mergeplan.Stacked{Weight: a.Weight}
		if st.Config, err = a.Source.Read(ctx, mergeplan.AdapterConfigFile); err != nil {
			return err
		}
		h, err := a.Source.Header(ctx, mergeplan.AdapterFile)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			if ctx.Err() != nil {
				return err
			}
			problem(mergeplan.AdapterFileOf(k), "%v", err)
		default:
			st.File = &mergeplan.File{Name: mergeplan.AdapterFile, Header: h}
		}
		l.stacked = append(l.stacked, st)
	}
	l.in.AdapterConfig, l.in.Adapter = l.stacked[0].Config, l.stacked[0].File
	return nil
}

// Plan plans the merge, or reports why the inputs could not be read. It reads nothing.
func (l *Inputs) Plan() *mergeplan.Plan {
	if len(l.Problems) == 0 {
		in := l.in
		return mergeplan.BuildStack(&in, l.stacked)
	}
	p := &mergeplan.Plan{Problems: l.Problems}
	if l.in.AdapterConfig != nil {
		if _, err := mergeplan.ParseAdapterConfig(l.in.AdapterConfig); err != nil {
			p.Problems = append(p.Problems, mergeplan.Problem{Subject: mergeplan.AdapterConfigFile, Message: err.Error()})
		}
	}
	return p
}

// Close closes the sources and what was opened from them.
func (l *Inputs) Close() error {
	l.mu.Lock()
	for _, f := range l.adapterF {
		f.Close()
	}
	l.adapterF = nil
	l.mu.Unlock()
	errs := []error{l.Base.Close()}
	for _, a := range l.Stack {
		errs = append(errs, a.Source.Close())
	}
	return errors.Join(errs...)
}

// baseFiles lists the base files an output shard reads. It is the one place that
// decides it.
func baseFiles(s *mergeplan.Shard) []string {
	var names []string
	seen := map[string]bool{}
	for _, t := range s.Tensors {
		refs := []mergeplan.Ref{t.Source}
		for _, p := range t.Patches {
			refs = append(refs, p.Values)
		}
		if t.Dequant != nil {
			refs = append(refs, t.Dequant.Scale) // possibly in another shard
		}
		if w := t.ScaleOf; w != nil {
			refs = append(refs, w.Source, w.Dequant.Scale) // the weight the scales are chosen for
		}
		if t.Requant != nil && t.Requant.Of != nil {
			// An MXFP4 _blocks or _scales output is computed from both of the pair,
			// which may sit in different shards.
			refs = append(refs, t.Requant.Of.Source, t.Requant.Of.Dequant.Scale)
		}
		for _, r := range refs {
			if r.File == "" || r.Adapter() || seen[r.File] {
				continue
			}
			seen[r.File] = true
			names = append(names, r.File)
		}
	}
	return names
}

// virtual is a merged shard being read, and the inputs it holds open.
type virtual struct {
	*merge.Shard
	done func() error
}

// Close releases the base files the shard read.
func (v *virtual) Close() error { return v.done() }

// openShard opens the inputs of one output shard and returns the merged shard as a
// virtual file: "open the inputs, merge" exists here only.
func (l *Inputs) openShard(ctx context.Context, s *mergeplan.Shard, opts merge.Options) (*virtual, error) {
	l.mu.Lock()
	for k := len(l.adapterF); k < len(l.Stack); k++ {
		f, err := l.Stack[k].Source.Open(ctx, mergeplan.AdapterFile)
		if err != nil {
			l.mu.Unlock()
			return nil, fmt.Errorf("%s of %s: %w", mergeplan.AdapterFile, l.Stack[k].Source, err)
		}
		l.adapterF = append(l.adapterF, f)
	}
	in := map[string]io.ReaderAt{}
	for k, f := range l.adapterF {
		in[mergeplan.AdapterFileOf(k)] = f
	}
	l.mu.Unlock()
	var files []File
	var names []string
	done := func() error {
		var first error
		for i, f := range files {
			f.Close()
			if err := l.Base.Release(names[i]); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for _, name := range baseFiles(s) {
		f, err := l.Base.Open(ctx, name)
		if err != nil {
			done()
			return nil, err // sources name the file
		}
		in[name] = f
		files = append(files, f)
		names = append(names, name)
	}
	sh, err := merge.New(s, in, opts)
	if err != nil {
		done()
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	return &virtual{Shard: sh, done: done}, nil
}
