package hfmerge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
)

// The small files of a published merge, checked against the plan and the inputs.

// small compares the index, config.json and hfmerge.json.
func (v *verifier) small(ctx context.Context) error {
	if v.p.IndexName != "" {
		fv, err := v.against(ctx, v.p.IndexName, func(b []byte) (bool, string) { return sameWeightMap(b, v.p.Index) })
		if err != nil {
			return err
		}
		v.res.Files = append(v.res.Files, fv)
	}
	cfg := v.p.Config
	if cfg == nil {
		var err error
		if cfg, err = v.l.Base.Read(ctx, "config.json"); err != nil {
			return err
		}
	}
	if cfg != nil {
		fv, err := v.against(ctx, "config.json", func(b []byte) (bool, string) { return sameConfig(b, cfg) })
		if err != nil {
			return err
		}
		v.res.Files = append(v.res.Files, fv)
	}
	fv, err := v.provenance(ctx)
	if err != nil {
		return err
	}
	v.res.Files = append(v.res.Files, fv)
	return nil
}

// against judges a small file of the published repo with same; a missing file fails.
func (v *verifier) against(ctx context.Context, name string, same func([]byte) (bool, string)) (FileVerdict, error) {
	fv := FileVerdict{Name: name}
	b, err := v.read(ctx, name)
	switch {
	case err != nil:
		return fv, err
	case b == nil:
		fv.Note = "missing"
	default:
		fv.OK, fv.Note = same(b)
	}
	return fv, nil
}

// read downloads a small file of the published repo, or nil when it has none.
func (v *verifier) read(ctx context.Context, path string) ([]byte, error) {
	e, ok := v.files[path]
	if !ok {
		return nil, nil
	}
	if e.Size > maxSmallFile {
		return nil, fmt.Errorf("%s of %s: %d bytes is too big for a small file", path, v.o.Repo, e.Size)
	}
	fi, err := v.o.Client.FileInfo(ctx, v.o.Repo, v.commit, path)
	if err != nil {
		return nil, err
	}
	return v.o.Client.ReadRange(ctx, fi, 0, fi.Size)
}

// sameWeightMap compares the weight_map of two indexes; total_size and other metadata
// are not what a loader uses to find tensors.
func sameWeightMap(got, want []byte) (bool, string) {
	var g, w struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(got, &g); err != nil {
		return false, "not JSON: " + err.Error()
	}
	json.Unmarshal(want, &w)
	if maps.Equal(g.WeightMap, w.WeightMap) {
		return true, fmt.Sprintf("weight_map matches (%d tensors)", len(w.WeightMap))
	}
	var diff []string
	for k, s := range w.WeightMap {
		if g.WeightMap[k] != s {
			diff = append(diff, fmt.Sprintf("%s: %q, expected %q", k, g.WeightMap[k], s))
		}
	}
	for k, s := range g.WeightMap {
		if _, ok := w.WeightMap[k]; !ok {
			diff = append(diff, fmt.Sprintf("%s: %q, not expected", k, s))
		}
	}
	slices.Sort(diff)
	return false, fmt.Sprintf("weight_map differs in %d tensors: %s", len(diff), firstFew(diff))
}

// configStamps are config.json keys tools stamp with themselves; they say nothing about
// the model.
var configStamps = []string{"transformers_version", "_name_or_path"}

// sameConfig compares two config.json files as JSON, but for configStamps.
func sameConfig(got, want []byte) (bool, string) {
	var g, w map[string]any
	if err := json.Unmarshal(got, &g); err != nil {
		return false, "not a JSON object: " + err.Error()
	}
	if err := json.Unmarshal(want, &w); err != nil {
		return false, "the expected config is not a JSON object: " + err.Error()
	}
	for _, k := range configStamps {
		delete(g, k)
		delete(w, k)
	}
	var diff []string
	for k := range w {
		if !reflect.DeepEqual(g[k], w[k]) {
			diff = append(diff, k)
		}
	}
	for k := range g {
		if _, ok := w[k]; !ok {
			diff = append(diff, k)
		}
	}
	if len(diff) == 0 {
		return true, "matches"
	}
	slices.Sort(diff)
	return false, "differs in " + firstFew(diff)
}

func firstFew(s []string) string {
	if len(s) > 5 {
		return fmt.Sprintf("%s and %d more", joinComma(s[:5]), len(s)-5)
	}
	return joinComma(s)
}

func joinComma(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(x)
	}
	return b.String()
}

// provenance compares the inputs hfmerge.json records with these inputs.
func (v *verifier) provenance(ctx context.Context) (FileVerdict, error) {
	fv := FileVerdict{Name: ProvenanceFile}
	b, err := v.read(ctx, ProvenanceFile)
	if err != nil {
		return fv, err
	}
	if b == nil {
		fv.OK, fv.Note = true, "absent: the repo was not published by hfmerge (or by an hfmerge without provenance); judged by its bytes alone"
		return fv, nil
	}
	got := readProvenance(b)
	if got == nil {
		fv.Note = "present but not hfmerge provenance"
		return fv, nil
	}
	want, err := newProvenance(v.l, v.l.in.Options)
	if err != nil {
		return fv, err
	}
	if got.Inputs == want.Inputs {
		fv.OK, fv.Note = true, "records these inputs ("+want.Inputs[:16]+")"
		return fv, nil
	}
	var diff, notes []string
	compare := func(what string, g, w SourceID, decisive bool) {
		switch same, comparable := sameSource(g, w); {
		case same:
		case comparable && decisive:
			diff = append(diff, fmt.Sprintf("%s %s, given %s", what, idString(g), idString(w)))
		default:
			notes = append(notes, fmt.Sprintf("%s recorded as %s, given %s (the bytes decide)", what, idString(g), idString(w)))
		}
	}
	// A local base is identified by its files' metadata, which another copy of the same
	// model does not share; only Hub commits identify a base for certain.
	compare("base", got.Base, want.Base, got.Base.Repo != "" && want.Base.Repo != "")
	ga, wa := got.Adapters, want.Adapters
	if len(ga) == 0 {
		ga = []WeightedID{{got.Adapter, 1}}
	}
	if len(wa) == 0 {
		wa = []WeightedID{{want.Adapter, 1}}
	}
	if len(ga) != len(wa) {
		diff = append(diff, fmt.Sprintf("%d adapters, given %d", len(ga), len(wa)))
	} else {
		for k := range ga {
			name := "adapter"
			if len(ga) > 1 {
				name = fmt.Sprintf("adapter %d", k+1)
			}
			compare(name, ga[k].SourceID, wa[k].SourceID, true)
			if ga[k].Weight != wa[k].Weight {
				diff = append(diff, fmt.Sprintf("%s weight %g, given %g", name, ga[k].Weight, wa[k].Weight))
			}
		}
	}
	if !maps.Equal(got.Options, want.Options) {
		diff = append(diff, fmt.Sprintf("options %v, given %v", got.Options, want.Options))
	}
	if len(diff) > 0 {
		fv.Note = "records other inputs: " + joinComma(diff)
		return fv, nil
	}
	fv.OK, fv.Note = true, fmt.Sprintf("records these inputs, made by %s (this is %s)", got.Tool, want.Tool)
	if len(notes) > 0 {
		fv.Note += "; " + joinComma(notes)
	}
	return fv, nil
}

// sameSource says whether two identities name the same content, and whether they can
// be compared at all: Hub repos by repo and commit (not the revision's name), local
// directories by digest; a Hub repo and a directory cannot be.
func sameSource(a, b SourceID) (same, comparable bool) {
	switch {
	case a.Repo != "" && b.Repo != "":
		return a.Repo == b.Repo && a.Commit == b.Commit, true
	case a.Repo == "" && b.Repo == "":
		return a.Digest == b.Digest, true
	}
	return false, false
}

func idString(id SourceID) string {
	switch {
	case id.Repo != "":
		return id.Repo + "@" + id.Commit
	case id.Dir != "":
		return id.Dir + " (" + id.Digest[:min(12, len(id.Digest))] + ")"
	}
	return "?"
}
