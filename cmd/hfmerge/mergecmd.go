package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
)

func mergeCmd(c *cli.Context) error {
	o, err := readOptions(c)
	if err != nil {
		return err
	}
	out := c.String("out")
	if out == "" {
		return usageErr("--out is required")
	}
	log := newLogger(o.logFormat, c.App.ErrWriter)
	l, err := loadSources(c.Context, o, openOS, c.App.ErrWriter)
	if err != nil {
		return err
	}
	defer l.Close()
	p, err := checkedPlan(c, l, o, log)
	if err != nil {
		return err
	}
	if err := checkOut(out, l); err != nil {
		return err
	}
	m := newMeter(o.progress, c.App.ErrWriter, log)
	start := time.Now()
	w := &modelWriter{l: l, p: p, out: out, jobs: o.jobs, meter: m, log: log}
	if err := w.write(c.Context); err != nil {
		if c.Context.Err() != nil {
			return fmt.Errorf("merge stopped (%v); no merged file was written to %s", context.Cause(c.Context), out)
		}
		return err
	}
	var total int64
	for _, s := range p.Shards {
		total += s.Size()
	}
	log.Info("merged", "out", out, "shards", len(p.Shards), "bytes", total, "seconds", time.Since(start).Round(time.Millisecond).Seconds())
	return nil
}

// checkedPlan plans the merge; with problems it prints them and returns an error that
// exits with status 3; warnings are logged.
func checkedPlan(c *cli.Context, l *loaded, o *options, log *slog.Logger) (*mergeplan.Plan, error) {
	p := makePlan(l)
	if !p.OK() {
		r := newReport(l, p, o.jobs)
		fmt.Fprintf(c.App.ErrWriter, "hfmerge: cannot merge: %d problem(s):\n", len(r.Problems))
		for _, x := range r.Problems {
			fmt.Fprintf(c.App.ErrWriter, "  - %s\n", x)
		}
		return nil, &exitError{exitProblems, errReported}
	}
	for _, w := range p.Warnings {
		log.Warn(w.Message, "subject", w.Subject)
	}
	return p, nil
}

// checkOut refuses an output directory that is one of the inputs.
func checkOut(out string, l *loaded) error {
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			return p
		}
		if r, err := filepath.EvalSymlinks(a); err == nil {
			return r
		}
		return a
	}
	o := abs(out)
	for _, in := range []struct {
		flag string
		src  source
	}{{"--base", l.base}, {"--adapter", l.adapter}} {
		if in.src.Dir() != "" && o == abs(in.src.Dir()) {
			return usageErr("--out %s is the %s directory; write the merged model somewhere else", out, in.flag)
		}
	}
	return nil
}

// modelWriter writes a merged model directory. Everything is written into a staging
// directory inside --out first and renamed into place only when every file is complete,
// so a failed or interrupted merge leaves no merged file under its final name.
type modelWriter struct {
	l       *loaded
	p       *mergeplan.Plan
	out     string
	staging string
	jobs    int
	meter   *meter
	log     *slog.Logger
	staged  []string
	syncs   errgroup.Group // flush
	small   []*os.File     // staged small files, flushed after the shards
}

func (w *modelWriter) write(ctx context.Context) (err error) {
	if err := os.MkdirAll(w.out, 0o755); err != nil {
		return err
	}
	copies, err := extraFiles(ctx, w.l, w.p, w.log)
	if err != nil {
		return err
	}
	need := int64(0)
	for _, s := range w.p.Shards {
		need += s.Size()
	}
	for _, c := range copies {
		need += c.size
	}
	if free, ok := freeSpace(w.out); ok && free < need {
		return fmt.Errorf("not enough space in %s: the merged model needs %s, %s is free", w.out, human(need), human(free))
	}
	w.staging, err = os.MkdirTemp(w.out, ".hfmerge-")
	if err != nil {
		return err
	}
	defer func() {
		for _, f := range w.small {
			f.Close()
		}
		if serr := w.syncs.Wait(); serr != nil && err == nil {
			err = serr
		}
		if rmErr := os.RemoveAll(w.staging); rmErr != nil && err == nil {
			err = rmErr
		}
	}()
	// The small files first, flushed to disk at the end: an fsync commits the
	// filesystem's journal, which would hold up the shard being written meanwhile.
	if w.p.Index != nil {
		if err := w.stage(w.p.IndexName, w.p.Index); err != nil {
			return err
		}
	}
	if w.p.Config != nil {
		if err := w.stage("config.json", w.p.Config); err != nil {
			return err
		}
	}
	for _, c := range copies {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := w.copyFile(ctx, c); err != nil {
			return err
		}
	}
	card, err := modelCard(ctx, w.l, w.p, filepath.Base(filepath.Clean(w.out)))
	if err != nil {
		return err
	}
	if err := w.stage("README.md", card); err != nil {
		return err
	}
	var shardBytes int64
	for _, s := range w.p.Shards {
		shardBytes += s.Size()
	}
	w.meter.start("merge", shardBytes)
	for i := range w.p.Shards {
		if err := w.shard(ctx, &w.p.Shards[i]); err != nil {
			w.meter.finish()
			return err
		}
	}
	w.meter.finish()
	for _, f := range w.small {
		w.flush(f, filepath.Base(f.Name()))
	}
	w.small = nil
	if err := w.syncs.Wait(); err != nil {
		return err
	}
	return w.publish(ctx)
}

// shard computes one merged shard into the staging directory.
func (w *modelWriter) shard(ctx context.Context, s *mergeplan.Shard) error {
	start := time.Now()
	in, done, err := w.l.inputs(ctx, s)
	if err != nil {
		return err
	}
	defer done()
	sh, err := merge.New(s, in, merge.Options{Jobs: w.jobs})
	if err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(w.staging, s.Name))
	if err != nil {
		return err
	}
	w.staged = append(w.staged, s.Name)
	if err := preallocate(f, s.Size()); err != nil {
		f.Close()
		return err
	}
	wb := startWriteback(f)
	n, err := sh.Write(ctx, f, func(n int64) {
		w.meter.add(n)
		wb.add(n)
	})
	wb.stop()
	if err == nil && n != s.Size() {
		err = fmt.Errorf("wrote %d bytes, expected %d", n, s.Size())
	}
	if err == nil {
		w.flush(f, s.Name)
	} else {
		f.Close()
	}
	if err != nil {
		var nf *merge.NonFiniteError
		if errors.As(err, &nf) || errors.Is(err, context.Canceled) {
			return err
		}
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	w.meter.step("shard merged", "shard", s.Name, "bytes", s.Size(), "seconds", time.Since(start).Round(time.Millisecond).Seconds())
	return nil
}

// stage writes a small file into the staging directory.
func (w *modelWriter) stage(name string, data []byte) error {
	path := filepath.Join(w.staging, name)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w.staged = append(w.staged, name)
	if _, err = f.Write(data); err != nil {
		f.Close()
		return err
	}
	w.small = append(w.small, f)
	return nil
}

// flush makes a staged file durable and closes it, on a goroutine of its own: publish
// waits for all of them, so that a file is renamed into place only once its bytes are
// on disk, and the disk meanwhile writes while the next shard is computed.
func (w *modelWriter) flush(f *os.File, name string) {
	w.syncs.Go(func() error {
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

func (w *modelWriter) copyFile(ctx context.Context, c extraFile) error {
	f, err := os.Create(filepath.Join(w.staging, c.name))
	if err != nil {
		return err
	}
	w.staged = append(w.staged, c.name)
	if err := c.from.Copy(ctx, c.name, f); err != nil {
		f.Close()
		return err
	}
	w.small = append(w.small, f)
	return nil
}

// publish renames every staged file into the output directory.
func (w *modelWriter) publish(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, name := range w.staged {
		if err := os.Rename(filepath.Join(w.staging, name), filepath.Join(w.out, name)); err != nil {
			return err
		}
	}
	if d, err := os.Open(w.out); err == nil {
		d.Sync() // make the renames durable; not every filesystem supports it
		d.Close()
	}
	return nil
}

// extraFile is a file copied as it is into the merged model.
type extraFile struct {
	name string
	from source
	size int64
}

// weightExts are weight formats: copying the base's would put unmerged weights beside
// the merged ones.
var weightExts = []string{".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack",
	".gguf", ".onnx", ".ot", ".tflite", ".pkl", ".npz", ".mlmodel"}

// extraFiles lists the base's other files to copy, with the adapter's tokenizer files
// taking the place of the base's: a trainer that added tokens saves its tokenizer there.
func extraFiles(ctx context.Context, l *loaded, p *mergeplan.Plan, log *slog.Logger) ([]extraFile, error) {
	skip := map[string]bool{"README.md": true, mergeplan.IndexFile: true, "config.json": p.Config != nil, ProvenanceFile: true}
	for _, s := range p.Shards {
		skip[s.Name] = true
	}
	var out []extraFile
	fromAdapter := map[string]bool{}
	ad, err := l.adapter.Files(ctx)
	if err != nil {
		return nil, err
	}
	for _, name := range sortedNames(ad) {
		if ad[name] >= 0 && isTokenizerFile(name) {
			fromAdapter[name] = true
			out = append(out, extraFile{name, l.adapter, ad[name]})
		}
	}
	files, err := l.base.Files(ctx)
	if err != nil {
		return nil, err
	}
	var skipped []string
	for _, name := range sortedNames(files) {
		switch {
		case skip[name] || fromAdapter[name]:
			continue
		case files[name] < 0, strings.HasPrefix(name, ".") && name != ".gitattributes",
			slices.Contains(weightExts, filepath.Ext(name)), strings.HasSuffix(name, ".index.json"):
			skipped = append(skipped, name)
			continue
		}
		out = append(out, extraFile{name, l.base, files[name]})
	}
	if len(skipped) > 0 {
		log.Info("not copied from the base", "files", strings.Join(skipped, ", "))
	}
	return out, nil
}

func sortedNames(m map[string]int64) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// isTokenizerFile reports whether a file belongs to the tokenizer or processor.
func isTokenizerFile(name string) bool {
	switch name {
	case "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
		"spiece.model", "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
		"preprocessor_config.json", "processor_config.json":
		return true
	}
	return strings.HasPrefix(name, "tokenizer") || strings.HasSuffix(name, ".tiktoken")
}
