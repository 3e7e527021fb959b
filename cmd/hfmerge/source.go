package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// source is where a base model or an adapter comes from: a local directory, or a Hub
// repository at a commit, read from the HF cache, fetched into it, or streamed.
type source interface {
	// String names the source in messages: a directory or repo@revision.
	String() string
	// Dir is the local directory, or "" for a Hub repo.
	Dir() string
	// HubID is the Hub repo id, or "" when it is not known.
	HubID() string
	// Read returns a small file whole, or nil when the file does not exist.
	Read(ctx context.Context, path string) ([]byte, error)
	// Header reads a safetensors file's header, and no tensor bytes.
	Header(ctx context.Context, path string) (*safetensors.Header, error)
	// Open gives a file's bytes for merging.
	Open(ctx context.Context, path string) (file, error)
	// Release says the merge is done with a file: one fetched only for this run goes.
	Release(path string) error
	// Files lists the top-level files and their sizes, for copying into the merged model.
	Files(ctx context.Context) (map[string]int64, error)
	// Copy writes a file's bytes to w.
	Copy(ctx context.Context, path string, w io.Writer) error
	// Close releases everything and tidies what the run created.
	Close() error
}

// file is an open input file.
type file interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// errNotFound marks a file a source does not have.
var errNotFound = errors.New("no such file")

// loaded is a base model and an adapter read up to their headers.
type loaded struct {
	in         *mergeplan.Input
	base       source
	adapter    source
	problems   []mergeplan.Problem // what stopped the inputs from being read
	inputBytes int64               // total size of the base's shards
	adapterF   file                // the adapter's weights, opened once for every shard
}

func (l *loaded) Close() {
	if l.adapterF != nil {
		l.adapterF.Close()
	}
	l.base.Close()
	l.adapter.Close()
}

// load reads the JSON files and safetensors headers of a base model and an adapter.
// Tensor bytes are not read. Problems with the files go into problems; an error means
// the sources themselves cannot be used.
func load(ctx context.Context, base, adapter source, opts mergeplan.Options) (*loaded, error) {
	l := &loaded{in: &mergeplan.Input{Options: opts}, base: base, adapter: adapter}
	problem := func(subject, format string, args ...any) {
		l.problems = append(l.problems, mergeplan.Problem{Subject: subject, Message: fmt.Sprintf(format, args...)})
	}
	var err error
	if l.in.Config, err = base.Read(ctx, "config.json"); err != nil {
		return nil, err
	}
	if l.in.Index, err = base.Read(ctx, mergeplan.IndexFile); err != nil {
		return nil, err
	}
	shards, err := shardNames(l.in.Index)
	if err != nil {
		problem(mergeplan.IndexFile, "%v", err)
	}
	if l.in.Index == nil {
		shards = []string{"model.safetensors"}
	}
	for _, name := range shards {
		h, err := base.Header(ctx, name)
		if errors.Is(err, errNotFound) && l.in.Index == nil {
			problem("--base "+base.String(), "has neither model.safetensors nor %s; hfmerge reads safetensors weights (convert *.bin weights first)", mergeplan.IndexFile)
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			problem(name, "%v", err)
			continue
		}
		l.in.Shards = append(l.in.Shards, mergeplan.File{Name: name, Header: h})
		l.inputBytes += h.Size
	}
	if l.in.AdapterConfig, err = adapter.Read(ctx, mergeplan.AdapterConfigFile); err != nil {
		return nil, err
	}
	h, err := adapter.Header(ctx, mergeplan.AdapterFile)
	switch {
	case errors.Is(err, errNotFound):
	case err != nil:
		if ctx.Err() != nil {
			return nil, err
		}
		problem(mergeplan.AdapterFile, "%v", err)
	default:
		l.in.Adapter = &mergeplan.File{Name: mergeplan.AdapterFile, Header: h}
	}
	return l, nil
}

// headerError describes a header that does not parse, for the plan's problems.
func headerError(err error) error {
	if errors.Is(err, safetensors.ErrTruncated) {
		return fmt.Errorf("corrupt or truncated (an interrupted download?): %w", err)
	}
	return fmt.Errorf("corrupt: %w", err)
}

// inputs opens the files one output shard reads: its base shard and the adapter.
// done releases the base shard.
func (l *loaded) inputs(ctx context.Context, s *mergeplan.Shard) (map[string]io.ReaderAt, func() error, error) {
	if l.adapterF == nil {
		f, err := l.adapter.Open(ctx, mergeplan.AdapterFile)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", mergeplan.AdapterFile, err)
		}
		l.adapterF = f
	}
	in := map[string]io.ReaderAt{mergeplan.AdapterFile: l.adapterF}
	var opened []string
	var files []file
	done := func() error {
		var first error
		for i, f := range files {
			f.Close()
			if err := l.base.Release(opened[i]); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for _, t := range s.Tensors {
		refs := []mergeplan.Ref{t.Source}
		for _, p := range t.Patches {
			refs = append(refs, p.Values)
		}
		for _, r := range refs {
			if r.File == "" || r.Adapter() || in[r.File] != nil {
				continue
			}
			f, err := l.base.Open(ctx, r.File)
			if err != nil {
				done()
				return nil, nil, err // sources name the file
			}
			in[r.File] = f
			opened = append(opened, r.File)
			files = append(files, f)
		}
	}
	return in, done, nil
}

// shardNames lists the weight files an index names.
func shardNames(index []byte) ([]string, error) {
	if index == nil {
		return nil, nil
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(index, &idx); err != nil {
		return nil, fmt.Errorf("is not valid JSON: %v", err)
	}
	var names []string
	for _, f := range idx.WeightMap {
		if f == "" || f == "." || f == ".." || strings.ContainsAny(f, `/\`) {
			return nil, fmt.Errorf("names %q, which is not a file in the model directory", f)
		}
		if !slices.Contains(names, f) {
			names = append(names, f)
		}
	}
	slices.Sort(names)
	return names, nil
}
