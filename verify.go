package hfmerge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// Verify proves, or disproves, that a model published on the Hub is the merge of these
// inputs. Each shard's sha256 is computed from the inputs (the virtual shard, no disk;
// a shard whose bytes are the base's takes the base's digest) and compared with the LFS
// oid the Hub lists: when every one matches, not one byte of the published shards is
// downloaded. A shard that differs is examined: its header is read by range and its
// tensors compared with the expected ones, downloading only the bytes not known to be
// identical (through Xet's chunk hashes when the file is stored in Xet, else each
// tensor whole), to say which tensors differ and by how many ulp. The index, config.json
// and the inputs hfmerge.json records are compared too.
func Verify(ctx context.Context, l *Inputs, p *mergeplan.Plan, o VerifyOptions) (*VerifyResult, error) {
	if !p.OK() {
		return nil, &ProblemsError{p.Problems}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	info, err := o.Client.RepoInfo(ctx, o.Repo, o.Revision)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", o.Repo, err)
	}
	entries, err := o.Client.Tree(ctx, o.Repo, info.SHA, "", true)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", o.Repo, err)
	}
	v := &verifier{l: l, p: p, o: o, commit: info.SHA, files: map[string]hub.Entry{},
		res: &VerifyResult{Repo: o.Repo.String(), Revision: o.Revision, Commit: info.SHA, Tolerance: o.Tolerance}}
	if v.res.Revision == "" {
		v.res.Revision = "main"
	}
	for _, e := range entries {
		if e.Type == "file" {
			v.files[e.Path] = e
		}
	}
	if err := v.shards(ctx); err != nil {
		return nil, err
	}
	if err := v.small(ctx); err != nil {
		return nil, err
	}
	v.res.Verified, v.res.Exact = true, true
	for _, s := range v.res.Shards {
		v.res.Verified = v.res.Verified && s.OK
		v.res.Exact = v.res.Exact && s.Identical
	}
	for _, f := range v.res.Files {
		v.res.Verified = v.res.Verified && f.OK
	}
	v.res.Elapsed = time.Since(start)
	return v.res, nil
}

// VerifyOptions say what to verify and how strictly.
type VerifyOptions struct {
	Client   *hub.Client
	Repo     hub.Repo
	Revision string // "" is main
	// Tolerance is the distance in ulp each element of a differing shard may have from
	// the expected value (another tool's rounding); 0 asks for identical tensors.
	Tolerance uint64
	Merge     merge.Options
	Log       *slog.Logger
	Progress  Progress // StageHash: the expected shards computed
}

// VerifyResult is what Verify found.
type VerifyResult struct {
	Repo     string `json:"repo"`
	Revision string `json:"revision"`
	Commit   string `json:"commit"`
	Verified bool   `json:"verified"`
	// Exact: every shard has the expected sha256 (a verdict within the tolerance, or
	// with other headers, is Verified but not Exact).
	Exact     bool           `json:"exact"`
	Tolerance uint64         `json:"tolerance_ulp"`
	Shards    []ShardVerdict `json:"shards"`
	Files     []FileVerdict  `json:"files"` // the index, config.json, hfmerge.json
	// ShardBytes is how many bytes of the published shards were downloaded (headers
	// and ranges of the shards that differ); 0 when every shard matched.
	ShardBytes int64         `json:"shard_bytes_downloaded"`
	Elapsed    time.Duration `json:"-"`
}

// ShardVerdict is one shard's verdict.
type ShardVerdict struct {
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Expected string `json:"expected_sha256"`
	OnHub    string `json:"hub_sha256,omitempty"`
	// Identical: the Hub lists the expected sha256. OK: identical, or every tensor
	// within the tolerance.
	Identical bool `json:"identical"`
	OK        bool `json:"ok"`
	// Method is how a differing shard was examined: "xet" (only the byte ranges whose
	// Xet chunks differ from the expected ones, or are not listed) or "ranges" (every
	// tensor, by range).
	Method     string   `json:"method,omitempty"`
	Unknown    int64    `json:"unknown_bytes,omitempty"` // bytes not known identical before downloading
	Downloaded int64    `json:"downloaded_bytes,omitempty"`
	Problems   []string `json:"problems,omitempty"`
	Notes      []string `json:"notes,omitempty"`
	// Tensors lists the tensors that differ (or could not be compared).
	Tensors []TensorDiff `json:"tensors,omitempty"`
	// Histogram sums the tensors' histograms over every element compared.
	Histogram []ULPBucket `json:"histogram,omitempty"`
	Compared  int64       `json:"compared_elements,omitempty"`
}

// FileVerdict is the verdict on one small file.
type FileVerdict struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	Note string `json:"note"`
}

type verifier struct {
	l      *Inputs
	p      *mergeplan.Plan
	o      VerifyOptions
	commit string
	files  map[string]hub.Entry
	res    *VerifyResult
	xet    *xetLocalizer
	noXet  bool // the Hub gave no read token: LFS ranges only
}

func (v *verifier) shards(ctx context.Context) error {
	var total int64
	for _, s := range v.p.Shards {
		total += s.Size()
	}
	v.o.Progress.emit(Event{Type: Begin, Stage: StageHash, Bytes: total})
	defer v.o.Progress.emit(Event{Type: End, Stage: StageHash})
	for i := range v.p.Shards {
		s := &v.p.Shards[i]
		sv := ShardVerdict{Name: s.Name, Size: s.Size()}
		e, ok := v.files[s.Name]
		var err error
		if sv.Expected, err = v.expectedSHA(ctx, s); err != nil {
			return err
		}
		switch {
		case !ok:
			sv.Problems = append(sv.Problems, "not in the repo")
		case e.LFS == nil:
			sv.Problems = append(sv.Problems, "not an LFS file: the Hub lists no sha256 for it")
		default:
			sv.OnHub = e.LFS.OID
			sv.Identical = e.LFS.OID == sv.Expected && e.LFS.Size == s.Size()
			sv.OK = sv.Identical
		}
		if ok && e.LFS != nil && !sv.Identical {
			if err := v.examine(ctx, s, e, &sv); err != nil {
				return fmt.Errorf("examining %s of %s: %w", s.Name, v.o.Repo, err)
			}
			v.res.ShardBytes += sv.Downloaded
		}
		v.res.Shards = append(v.res.Shards, sv)
		v.o.Progress.emit(Event{Type: ShardDone, Stage: StageHash, Shard: s.Name, Bytes: s.Size()})
	}
	// In name order: the verdict is the same run after run.
	for _, path := range slices.Sorted(maps.Keys(v.files)) {
		if weightFile(path) && !slices.ContainsFunc(v.p.Shards, func(s mergeplan.Shard) bool { return s.Name == path }) && path != v.p.IndexName {
			v.res.Shards = append(v.res.Shards, ShardVerdict{Name: path, Size: v.files[path].Size, Problems: []string{"a weight file the merge does not have"}})
		}
	}
	return nil
}

// expectedSHA is the sha256 the shard must have, decided as the push decides it.
func (v *verifier) expectedSHA(ctx context.Context, s *mergeplan.Shard) (string, error) {
	if s.Unchanged() {
		if oid, ok := digestOf(v.l.Base, s.Base); ok {
			v.o.Progress.emit(Event{Type: Advance, Stage: StageHash, Bytes: s.Size()})
			return oid, nil
		}
	}
	r, done, err := v.expected(ctx, s)
	if err != nil {
		return "", err
	}
	defer done()
	h := sha256.New()
	w := io.Writer(h)
	if adv := v.o.Progress.advance(StageHash); adv != nil {
		w = io.MultiWriter(h, progressWriter(adv))
	}
	if _, err := io.Copy(w, io.NewSectionReader(r, 0, s.Size())); err != nil {
		return "", fmt.Errorf("%s: %w", s.Name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// expected opens the bytes the shard must have: the base file's, or the merged shard
// computed on demand.
func (v *verifier) expected(ctx context.Context, s *mergeplan.Shard) (io.ReaderAt, func() error, error) {
	if s.Unchanged() {
		f, err := v.l.Base.Open(ctx, s.Base)
		if err != nil {
			return nil, nil, err
		}
		return f, func() error { f.Close(); return v.l.Base.Release(s.Base) }, nil
	}
	vs, err := v.l.openShard(ctx, s, v.o.Merge)
	if err != nil {
		return nil, nil, err
	}
	return vs, vs.Close, nil
}

// published reads ranges of a published file, counting what it downloads.
type published struct {
	c    *hub.Client
	f    *hub.FileInfo
	down *int64
}

func (r *published) read(ctx context.Context, off, n int64) ([]byte, error) {
	b, err := r.c.ReadRange(ctx, r.f, off, n)
	*r.down += int64(len(b))
	return b, err
}

// examine compares a differing shard with the expected one, tensor by tensor.
func (v *verifier) examine(ctx context.Context, s *mergeplan.Shard, e hub.Entry, sv *ShardVerdict) error {
	fi, err := v.o.Client.FileInfo(ctx, v.o.Repo, v.commit, s.Name)
	if err != nil {
		return err
	}
	rm := &published{c: v.o.Client, f: fi, down: &sv.Downloaded}
	got, err := v.hubHeader(ctx, rm, e.Size)
	if err != nil {
		sv.Problems = append(sv.Problems, fmt.Sprintf("its safetensors header cannot be read: %v", err))
		return nil
	}
	exp, done, err := v.expected(ctx, s)
	if err != nil {
		return err
	}
	defer done()
	want, err := safetensors.ReadHeader(exp, s.Size())
	if err != nil {
		return err
	}
	sameHeader := got.PrefixSHA256 == want.PrefixSHA256
	if !sameHeader {
		sv.Notes = append(sv.Notes, "its header is not byte for byte the expected one (tensor order, offsets or metadata differ)")
		if !maps.Equal(got.Metadata, want.Metadata) {
			sv.Notes = append(sv.Notes, fmt.Sprintf("metadata %v, expected %v", got.Metadata, want.Metadata))
		}
	}
	// Which bytes of the Hub's file are to be compared: those Xet cannot vouch for,
	// or every tensor's.
	var spans []span
	sv.Method = "ranges"
	if sameHeader && e.XetHash != "" && e.Size == s.Size() {
		if spans, err = v.localize(ctx, exp, s.Size(), e.XetHash); err != nil {
			v.o.Log.Info("cannot localize the difference through Xet; comparing every tensor", "shard", s.Name, "err", err)
			sv.Notes = append(sv.Notes, "Xet could not localize the difference ("+err.Error()+"); every tensor compared")
		} else if spans != nil {
			sv.Method = "xet"
			for _, sp := range spans {
				sv.Unknown += sp.end - sp.off
			}
		}
	}
	var sum *fileSum
	if sv.Method == "xet" && v.o.Tolerance > 0 {
		// Only a tolerance lets a shard whose sha256 differs pass; then the bytes Xet
		// vouched for must be proven: with those downloaded, they must make the sha256
		// the Hub lists. (Without a tolerance a differing sha256 always fails.)
		sum = newFileSum(exp)
	}
	cr, err := v.compareTensors(ctx, rm, exp, got, want, sv.Method == "xet", spans, sum)
	if err != nil {
		return err
	}
	if sv.Method == "xet" && !cr.bad {
		// The shard passes so far on what Xet left to compare, yet its sha256 is not
		// the expected one. Without a tolerance that is a contradiction: every byte
		// compared was the expected one, so the file Xet's answers describe is the
		// expected file, and they are wrong. With one, the bytes must add up.
		oid := sv.Expected
		if sum != nil {
			if oid, err = sum.finish(ctx, e.Size); err != nil {
				return err
			}
		}
		if oid != e.LFS.OID {
			v.o.Log.Info("the Xet chunk listings do not add up to the shard's sha256; comparing every tensor", "shard", s.Name)
			sv.Notes = append(sv.Notes, fmt.Sprintf("the bytes Xet's answers vouched for, with those downloaded, have sha256 %s, not the listed %s: every tensor compared", oid, e.LFS.OID))
			sv.Method, sv.Unknown = "ranges", 0
			if cr, err = v.compareTensors(ctx, rm, exp, got, want, false, nil, nil); err != nil {
				return err
			}
		}
	}
	sv.Tensors, sv.Histogram, sv.Compared = cr.tensors, cr.hist.Histogram, cr.hist.Compared
	bad := cr.bad
	if !bad && len(sv.Tensors) == 0 && sameHeader {
		// Same header, same tensors, yet another sha256: only bytes outside every
		// tensor can differ (padding the format does not have): not a merge of these.
		sv.Problems = append(sv.Problems, "the bytes differ outside every tensor")
		bad = true
	}
	sv.OK = !bad
	return nil
}

// compared is what comparing a shard's tensors found.
type compared struct {
	tensors []TensorDiff // those that differ or could not be compared
	hist    TensorDiff   // the sum over every element compared
	bad     bool         // some tensor differs beyond the tolerance, or in structure
}

// compareTensors compares the published shard's tensors with the expected ones: with
// localized, only their parts inside spans (the rest is known identical), else every
// tensor whole. sum, if any, is fed every byte downloaded, in file order.
func (v *verifier) compareTensors(ctx context.Context, rm *published, exp io.ReaderAt, got, want *safetensors.Header,
	localized bool, spans []span, sum *fileSum) (compared, error) {
	var c compared
	for _, wt := range want.Tensors {
		gt, ok := got.Tensor(wt.Name)
		td := TensorDiff{Name: wt.Name, DType: string(wt.DType), Elements: wt.Elements()}
		switch {
		case !ok:
			td.Problem = "missing from the published shard"
		case gt.DType != wt.DType:
			td.Problem = fmt.Sprintf("dtype %s, expected %s", gt.DType, wt.DType)
		case !slices.Equal(gt.Shape, wt.Shape):
			td.Problem = fmt.Sprintf("shape %v, expected %v", gt.Shape, wt.Shape)
		}
		if td.Problem != "" {
			c.bad = true
			c.tensors = append(c.tensors, td)
			continue
		}
		a, b := got.DataOffset+gt.Begin, got.DataOffset+gt.End
		ranges := []span{{a, b}}
		if localized {
			ranges = clip(spans, a, b, elementSize(wt.DType))
		}
		shift := want.DataOffset + wt.Begin - a
		for _, r := range ranges {
			if err := v.compare(ctx, rm, exp, r, shift, wt.DType, &td, sum); err != nil {
				return c, fmt.Errorf("tensor %s: %w", wt.Name, err)
			}
		}
		for k, n := range td.hist {
			c.hist.hist[k] += n
		}
		c.hist.Compared += td.Compared
		if td.Differing > 0 || td.BitsOnly > 0 {
			td.finish()
			c.tensors = append(c.tensors, td)
			// Without a tolerance, identical means the same bits, not only the same values.
			if td.MaxULP > v.o.Tolerance || v.o.Tolerance == 0 {
				c.bad = true
			}
		}
	}
	for _, gt := range got.Tensors {
		if _, ok := want.Tensor(gt.Name); !ok {
			c.bad = true
			c.tensors = append(c.tensors, TensorDiff{Name: gt.Name, DType: string(gt.DType), Elements: gt.Elements(), Problem: "not in the expected shard"})
		}
	}
	c.hist.finish()
	return c, nil
}

// hubHeader reads a published shard's header: 8 bytes of length, then the JSON.
func (v *verifier) hubHeader(ctx context.Context, rm *published, size int64) (*safetensors.Header, error) {
	prefix, err := rm.read(ctx, 0, min(8, size))
	if err != nil {
		return nil, err
	}
	n, err := safetensors.HeaderLen(prefix)
	if err != nil {
		return nil, err
	}
	if 8+n > size {
		return nil, fmt.Errorf("a header of %d bytes in a file of %d", n, size)
	}
	rest, err := rm.read(ctx, 8, n)
	if err != nil {
		return nil, err
	}
	return safetensors.ParseHeader(append(prefix, rest...), size)
}

// localize asks Xet which byte ranges of the Hub's file may differ; nil spans and no
// error when the Hub has no Xet storage for the repo.
func (v *verifier) localize(ctx context.Context, exp io.ReaderAt, size int64, xetHash string) ([]span, error) {
	if v.noXet {
		return nil, nil
	}
	if v.xet == nil {
		x, err := newXetLocalizer(ctx, v.o.Client, v.o.Repo, v.commit, v.o.Log)
		if errors.Is(err, hub.ErrNoXet) {
			v.noXet = true
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		v.xet = x
	}
	chunks, err := chunkFile(ctx, exp, size)
	if err != nil {
		return nil, err
	}
	spans, err := v.xet.unknown(ctx, xetHash, chunks, size)
	if spans == nil && err == nil {
		spans = []span{} // everything known identical: nothing to download
	}
	return spans, err
}

// compareBlock is how much of a tensor is downloaded and compared at once.
const compareBlock = 1 << 20

// compare downloads the range r of the Hub's file and compares it with the expected
// bytes shift further on, a block at a time.
func (v *verifier) compare(ctx context.Context, rm *published, exp io.ReaderAt, r span, shift int64, d safetensors.DType, td *TensorDiff, sum *fileSum) error {
	want := make([]byte, min(compareBlock, r.end-r.off))
	for off := r.off; off < r.end; off += compareBlock {
		n := min(compareBlock, r.end-off)
		got, err := rm.read(ctx, off, n)
		if err != nil {
			return err
		}
		if sum != nil {
			if err := sum.add(ctx, off, got); err != nil {
				return err
			}
		}
		if _, err := exp.ReadAt(want[:n], off+shift); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		td.add(d, got, want[:n])
	}
	return nil
}
