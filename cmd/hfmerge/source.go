package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// file is an open input file.
type file interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// opener opens input files; tests substitute one that counts the bytes read.
type opener func(path string) (file, error)

type osFile struct {
	*os.File
	size int64
}

func (f *osFile) Size() int64 { return f.size }

func openOS(path string) (file, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return &osFile{f, st.Size()}, nil
}

// loaded is a base model and an adapter read up to their headers.
type loaded struct {
	in         *mergeplan.Input
	files      map[string]io.ReaderAt // by the names the plan uses
	closers    []io.Closer
	problems   []mergeplan.Problem // what stopped the inputs from being read
	baseDir    string
	adapterDir string
	inputBytes int64 // total size of the base's shards
}

func (l *loaded) Close() {
	for _, c := range l.closers {
		c.Close()
	}
}

// loadLocal reads the headers and JSON of a local base model and adapter. Tensor bytes
// are not read. Problems with the files go into problems; an error means the
// directories themselves cannot be used.
func loadLocal(baseDir, adapterDir string, opts mergeplan.Options, open opener) (*loaded, error) {
	for _, d := range []struct{ flag, dir string }{{"--base", baseDir}, {"--adapter", adapterDir}} {
		st, err := os.Stat(d.dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s %s: no such directory (reading from the Hub is not supported in this version)", d.flag, d.dir)
			}
			return nil, fmt.Errorf("%s: %w", d.flag, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%s %s: not a directory", d.flag, d.dir)
		}
	}
	l := &loaded{in: &mergeplan.Input{Options: opts}, files: map[string]io.ReaderAt{}, baseDir: baseDir, adapterDir: adapterDir}
	problem := func(subject, format string, args ...any) {
		l.problems = append(l.problems, mergeplan.Problem{Subject: subject, Message: fmt.Sprintf(format, args...)})
	}
	var err error
	if l.in.Config, err = readOptional(filepath.Join(baseDir, "config.json")); err != nil {
		return nil, err
	}
	if l.in.Index, err = readOptional(filepath.Join(baseDir, mergeplan.IndexFile)); err != nil {
		return nil, err
	}
	shards, err := shardNames(baseDir, l.in.Index)
	if err != nil {
		problem(mergeplan.IndexFile, "%v", err)
	}
	if len(shards) == 0 && err == nil {
		problem("--base "+baseDir, "has neither model.safetensors nor %s; hfmerge reads safetensors weights (convert *.bin weights first)", mergeplan.IndexFile)
	}
	for _, name := range shards {
		f, err := l.header(filepath.Join(baseDir, name), name, open)
		if err != nil {
			problem(name, "%v", err)
			continue
		}
		l.in.Shards = append(l.in.Shards, *f)
		l.inputBytes += f.Header.Size
	}
	if l.in.AdapterConfig, err = readOptional(filepath.Join(adapterDir, mergeplan.AdapterConfigFile)); err != nil {
		return nil, err
	}
	ap := filepath.Join(adapterDir, mergeplan.AdapterFile)
	if _, err := os.Stat(ap); err == nil {
		f, err := l.header(ap, mergeplan.AdapterFile, open)
		if err != nil {
			problem(mergeplan.AdapterFile, "%v", err)
		} else {
			l.in.Adapter = f
		}
	}
	return l, nil
}

// header opens a safetensors file and reads its header.
func (l *loaded) header(path, name string, open opener) (*mergeplan.File, error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	l.closers = append(l.closers, f)
	h, err := safetensors.ReadHeader(f, f.Size())
	if err != nil {
		if errors.Is(err, safetensors.ErrTruncated) {
			return nil, fmt.Errorf("corrupt or truncated (an interrupted download?): %w", err)
		}
		return nil, fmt.Errorf("corrupt: %w", err)
	}
	l.files[name] = f
	return &mergeplan.File{Name: name, Header: h}, nil
}

// shardNames lists the base's weight files: those the index names, or model.safetensors.
func shardNames(dir string, index []byte) ([]string, error) {
	if index == nil {
		if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
			return []string{"model.safetensors"}, nil
		}
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
		if f != filepath.Base(f) || f == ".." || f == "." || strings.ContainsAny(f, `/\`) {
			return nil, fmt.Errorf("names %q, which is not a file in the model directory", f)
		}
		if !slices.Contains(names, f) {
			names = append(names, f)
		}
	}
	slices.Sort(names)
	return names, nil
}

func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
