package hfmerge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
)

// MergeOptions tune MergeDir.
type MergeOptions struct {
	Merge    merge.Options
	Force    bool // write into a directory that already holds files
	Log      *slog.Logger
	Progress Progress

	disk disk // the filesystem; tests fake its free space
}

// ErrNotEmpty marks an output directory that already holds files: old and new shards
// must never mix.
var ErrNotEmpty = errors.New("the output directory is not empty")

// MergeDir writes the merged model into dir: every shard, the index, config.json, the
// tokenizer and other files the model needs, a model card and hfmerge.json.
// Everything is written into a staging directory inside dir first and renamed into place
// only when every file is complete and durable, so a failed or interrupted merge leaves
// no merged file under its final name.
func MergeDir(ctx context.Context, l *Inputs, p *mergeplan.Plan, dir string, o MergeOptions) error {
	if !p.OK() {
		return &ProblemsError{p.Problems}
	}
	if err := checkOut(dir, l); err != nil {
		return err
	}
	if err := checkEmpty(dir, o.Force); err != nil {
		return err
	}
	if err := checkKeepSpace(ctx, l, p, o.disk); err != nil {
		return err
	}
	prov, err := newProvenance(l, l.in.Options)
	if err != nil {
		return err
	}
	w := &dirWriter{l: l, p: p, out: dir, o: o}
	return w.write(ctx, prov)
}

// checkEmpty refuses a directory with files in it, other than what an earlier merge
// that was stopped left in its staging directories.
func checkEmpty(dir string, force bool) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) || force {
		return nil
	}
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), stagingPrefix) {
			names = append(names, e.Name())
		}
	}
	if len(names) > 0 {
		more := ""
		if len(names) > 3 {
			names, more = names[:3], ", …"
		}
		return &UsageError{fmt.Errorf("--out %s holds %s%s: %w; write into a new directory, or give --force to replace what is there",
			dir, strings.Join(names, ", "), more, ErrNotEmpty)}
	}
	return nil
}

// stagingPrefix names the staging directories MergeDir makes inside the output.
const stagingPrefix = ".hfmerge-"

// dirWriter writes a merged model directory.
type dirWriter struct {
	l       *Inputs
	p       *mergeplan.Plan
	out     string
	o       MergeOptions
	staging string
	staged  []string
	syncs   errgroup.Group // flush
	small   []*os.File     // staged small files, flushed after the shards
}

func (w *dirWriter) write(ctx context.Context, prov *Provenance) (err error) {
	if err := os.MkdirAll(w.out, 0o755); err != nil {
		return err
	}
	w.cleanStale()
	extras, err := w.l.extras(ctx, w.p, filepath.Base(filepath.Clean(w.out)), w.out, w.o.Log)
	if err != nil {
		return err
	}
	var need, shardBytes int64
	for _, s := range w.p.Shards {
		shardBytes += s.Size()
	}
	need = shardBytes
	for _, e := range extras {
		need += int64(len(e.data))
	}
	if free, ok := w.o.disk.free(w.out); ok && free < need {
		return fmt.Errorf("not enough space in %s: the merged model needs %s, %s is free", w.out, human(need), human(free))
	}
	w.staging, err = os.MkdirTemp(w.out, stagingPrefix)
	if err != nil {
		return err
	}
	lock, err := lockDir(w.staging)
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
		lock()
		if rmErr := os.RemoveAll(w.staging); rmErr != nil && err == nil {
			err = rmErr
		}
	}()
	// The small files first, flushed to disk at the end: an fsync commits the
	// filesystem's journal, which would hold up the shard being written meanwhile.
	for _, e := range extras {
		if err := w.stage(e.name, e.data); err != nil {
			return err
		}
		prov.Files[e.name] = smallFileID(e.data)
	}
	w.o.Progress.emit(Event{Type: Begin, Stage: StageMerge, Bytes: shardBytes})
	for i := range w.p.Shards {
		if err := w.shard(ctx, &w.p.Shards[i]); err != nil {
			return err
		}
		s := &w.p.Shards[i]
		prov.Files[s.Name] = FileID{Size: s.Size()}
	}
	w.o.Progress.emit(Event{Type: End, Stage: StageMerge})
	if err := w.stage(ProvenanceFile, prov.encode()); err != nil {
		return err
	}
	for _, f := range w.small {
		w.flush(f, filepath.Base(f.Name()))
	}
	w.small = nil
	if err := w.syncs.Wait(); err != nil {
		return err
	}
	return w.publish(ctx)
}

// cleanStale removes staging directories of merges that were killed: no process holds
// their lock.
func (w *dirWriter) cleanStale() {
	entries, _ := os.ReadDir(w.out)
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), stagingPrefix) {
			continue
		}
		p := filepath.Join(w.out, e.Name())
		if unlock, err := tryLockDir(p); err == nil {
			os.RemoveAll(p)
			unlock()
		}
	}
}

// shard computes one merged shard into the staging directory.
func (w *dirWriter) shard(ctx context.Context, s *mergeplan.Shard) error {
	start := time.Now()
	v, err := w.l.openShard(ctx, s, w.o.Merge)
	if err != nil {
		return err
	}
	defer v.Close()
	f, err := os.Create(filepath.Join(w.staging, s.Name))
	if err != nil {
		return err
	}
	w.staged = append(w.staged, s.Name)
	if err := w.o.disk.preallocate(f, s.Size()); err != nil {
		f.Close()
		return err
	}
	wb := startWriteback(f)
	prog := w.o.Progress.advance(StageMerge)
	n, err := v.Write(ctx, f, func(n int64) {
		if prog != nil {
			prog(n)
		}
		wb.add(n)
	})
	wb.stop()
	if err == nil && n != s.Size() {
		err = fmt.Errorf("wrote %d bytes, expected %d", n, s.Size())
	}
	if err != nil {
		f.Close()
		var nf *merge.NonFiniteError
		if errors.As(err, &nf) || errors.Is(err, context.Canceled) {
			return err
		}
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	w.flush(f, s.Name)
	logRequantized(w.o.Log, v.Requantized())
	w.o.Progress.emit(Event{Type: ShardDone, Stage: StageMerge, Shard: s.Name, Bytes: s.Size(), Note: "merged", Elapsed: time.Since(start)})
	return nil
}

// stage writes a small file into the staging directory.
func (w *dirWriter) stage(name string, data []byte) error {
	f, err := os.Create(filepath.Join(w.staging, name))
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
func (w *dirWriter) flush(f *os.File, name string) {
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

// publish renames every staged file into the output directory.
func (w *dirWriter) publish(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, name := range w.staged {
		if err := os.Rename(filepath.Join(w.staging, name), filepath.Join(w.out, name)); err != nil {
			return err
		}
	}
	// With --force, weight files of the earlier model that the new one does not have
	// go, as a push deletes them in its commit: old and new shards never mix.
	mine := map[string]bool{}
	for _, name := range w.staged {
		mine[name] = true
	}
	entries, _ := os.ReadDir(w.out)
	for _, e := range entries {
		if e.Type().IsRegular() && weightFile(e.Name()) && !mine[e.Name()] {
			if err := os.Remove(filepath.Join(w.out, e.Name())); err != nil {
				return err
			}
			if w.o.Log != nil {
				w.o.Log.Info("removed a weight file of the earlier model", "file", e.Name())
			}
		}
	}
	if d, err := os.Open(w.out); err == nil {
		d.Sync() // make the renames durable; not every filesystem supports it
		d.Close()
	}
	return nil
}

// logRequantized tells how much of the delta survived each requantized tensor
// (--quantized keep): with FP8's three mantissa bits a LoRA delta can vanish, with
// MXFP4's one it mostly does, and the user must see that before publishing.
func logRequantized(log *slog.Logger, stats []merge.RequantStats) {
	if log == nil {
		return
	}
	for _, r := range stats {
		share := float64(r.Changed) / float64(max(r.Elements, 1))
		// What the attributes mean, in words: changed_share is the share of the tensor's
		// elements whose stored value moved; delta_error is ‖kept − ΔW‖ / ‖ΔW‖.
		level, msg := slog.LevelInfo, fmt.Sprintf("requantized: %.1f%% of its elements changed value; the change kept is %.1f%% off the adapter's",
			100*share, 100*r.DeltaError())
		if r.DeltaError() > 0.5 {
			level, msg = slog.LevelWarn, fmt.Sprintf("requantized: most of the adapter's change to this tensor was lost to the %s grid "+
				"(%.1f%% of its elements changed value; the change kept is %.0f%% off the adapter's); consider --quantized bf16 or mixed",
				r.Format, 100*share, 100*r.DeltaError())
		}
		log.Log(context.Background(), level, msg, "tensor", r.Tensor, "format", r.Format, "elements", r.Elements, "changed", r.Changed,
			"changed_share", share, "delta_error", r.DeltaError())
	}
}
