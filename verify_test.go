package hfmerge

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
	"github.com/hfmerge/hfmerge/upload"
)

// verifyProjections are the modules the verify tests' adapter changes: tensors of
// 0.5 and 1 MiB, many Xet chunks each.
var verifyProjections = []string{"self_attn.q_proj", "mlp.down_proj"}

// verifyCase is a base, an adapter, their plan and the merge written to a directory.
type verifyCase struct {
	base, adapter string
	l             *Inputs
	p             *mergeplan.Plan
	merged        string // MergeDir's output
}

func newVerifyCase(t *testing.T, c *hub.Client, projections []string, edit func(*fixture.Model, *fixture.Adapter)) *verifyCase {
	t.Helper()
	base, adapter := model(t, xetSpec(), 3, projections, edit)
	vc := &verifyCase{base: base, adapter: adapter}
	vc.l = loadDirs(t, &Sources{Client: c, CacheDir: t.TempDir()}, base, adapter)
	vc.p = vc.l.Plan()
	vc.merged = filepath.Join(t.TempDir(), "merged")
	if err := MergeDir(context.Background(), vc.l, vc.p, vc.merged, MergeOptions{}); err != nil {
		t.Fatal(err)
	}
	return vc
}

func (vc *verifyCase) verify(t *testing.T, c *hub.Client, repo string, tol uint64) *VerifyResult {
	t.Helper()
	res, err := Verify(context.Background(), vc.l, vc.p, VerifyOptions{Client: c, Repo: hub.Repo{Type: "model", ID: repo}, Tolerance: tol})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// copyDir copies the files of a merged model to a new directory.
func copyDir(t testing.TB, dir string) string {
	t.Helper()
	out := t.TempDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// tensorAt finds the shard file holding a tensor and its header.
func tensorAt(t testing.TB, p *mergeplan.Plan, dir, name string) (string, *safetensors.Header, *safetensors.Tensor) {
	t.Helper()
	for _, s := range p.Shards {
		f, err := os.Open(filepath.Join(dir, s.Name))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		h, err := safetensors.ReadHeader(f, st.Size())
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if ti, ok := h.Tensor(name); ok {
			return s.Name, h, ti
		}
	}
	t.Fatalf("no shard holds %s", name)
	return "", nil, nil
}

// alterTensor adds one ulp to the element in the middle of a tensor of a merged model.
func alterTensor(t testing.TB, p *mergeplan.Plan, dir, name string) (shard string, h *safetensors.Header, ti *safetensors.Tensor) {
	t.Helper()
	return alterTensorBy(t, p, dir, name, 1)
}

// alterTensorBy adds ulps to the element in the middle of a BF16 tensor.
func alterTensorBy(t testing.TB, p *mergeplan.Plan, dir, name string, ulps uint16) (shard string, h *safetensors.Header, ti *safetensors.Tensor) {
	t.Helper()
	shard, h, ti = tensorAt(t, p, dir, name)
	path := filepath.Join(dir, shard)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := h.DataOffset + ti.Begin + ti.Len()/2
	binary.LittleEndian.PutUint16(b[at:], binary.LittleEndian.Uint16(b[at:])+ulps)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return shard, h, ti
}

// seedDir publishes the files of dir as a repo of h, through LFS.
func seedDir(t *testing.T, h *hubtest.Hub, repo, dir string) map[string]string {
	t.Helper()
	files := map[string][]byte{}
	oids := map[string]string{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
		oids[e.Name()] = sum(b)
	}
	if _, err := h.Seed(repo, files, hubtest.AsLFS(".never")); err != nil {
		t.Fatal(err)
	}
	return oids
}

func shardOID(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return sum(b)
}

// TestVerifyPushed: verify on hfmerge's own push (through Xet) succeeds having
// downloaded no byte of any shard.
func TestVerifyPushed(t *testing.T) {
	e := newXetEnv(t)
	vc := newVerifyCase(t, e.c, verifyProjections, nil)
	if _, err := Push(context.Background(), vc.l, vc.p, PushOptions{Target: upload.Target{Client: e.c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}},
		DiskBudget: -1, WorkDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	e.h.ResetStats()
	res := vc.verify(t, e.c, "alice/merged", 0)
	if !res.Verified || res.ShardBytes != 0 || len(res.Shards) != len(vc.p.Shards) {
		t.Fatalf("result %+v", res)
	}
	st := e.h.Stats()
	for i, s := range vc.p.Shards {
		if n := st.FileBytes[shardOID(t, vc.merged, s.Name)]; n != 0 {
			t.Errorf("%s: %d bytes downloaded", s.Name, n)
		}
		if sv := res.Shards[i]; !sv.Identical || sv.Name != s.Name {
			t.Errorf("%s not identical: %+v", s.Name, sv)
		}
	}
	if xs := e.h.XetStats(); xs.TransferBytes != 0 || xs.Reconstructions != 0 {
		t.Errorf("Xet reads: %+v", xs)
	}
	var notes []string
	for _, f := range res.Files {
		if !f.OK {
			t.Errorf("%s: %s", f.Name, f.Note)
		}
		notes = append(notes, f.Name+": "+f.Note)
	}
	if len(res.Files) != 3 || !strings.Contains(notes[2], "records these inputs") {
		t.Errorf("files: %v", notes)
	}
}

// TestVerifyAlteredXet: a repo where one element of one tensor was changed, and the
// shard uploaded again through Xet (deduplicated against the right merge, as any Xet
// client does): verify names that tensor, and of that shard downloads its header and
// no more bytes than the tensor has, through Xet's chunk hashes.
//
// Without the right merge on the Hub (fresh), the altered files' own xorbs hold every
// chunk, and the dedup answer for the shard's first chunk lists them all.
func TestVerifyAlteredXet(t *testing.T) {
	for _, fresh := range []bool{false, true} {
		t.Run(map[bool]string{false: "after-push", true: "fresh"}[fresh], func(t *testing.T) { testVerifyAlteredXet(t, fresh) })
	}
}

func testVerifyAlteredXet(t *testing.T, fresh bool) {
	e := newXetEnv(t)
	vc := newVerifyCase(t, e.c, verifyProjections, nil)
	if !fresh {
		if _, err := Push(context.Background(), vc.l, vc.p, PushOptions{Target: upload.Target{Client: e.c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}},
			DiskBudget: -1, WorkDir: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
	}
	bad := copyDir(t, vc.merged)
	const name = "model.layers.1.mlp.down_proj.weight"
	shard, h, ti := alterTensor(t, vc.p, bad, name)
	e.seedXet(t, "alice/altered", bad)

	e.h.ResetStats()
	res := vc.verify(t, e.c, "alice/altered", 0)
	if res.Verified {
		t.Fatalf("an altered repo verified: %+v", res)
	}
	oid := shardOID(t, bad, shard)
	for _, sv := range res.Shards {
		if sv.Name != shard {
			if !sv.OK || !sv.Identical {
				t.Errorf("%s: %+v", sv.Name, sv)
			}
			continue
		}
		if sv.OK || sv.Method != "xet" || len(sv.Tensors) != 1 || sv.Tensors[0].Name != name ||
			sv.Tensors[0].Differing != 1 || sv.Tensors[0].MaxULP != 1 {
			t.Fatalf("%s: %+v", shard, sv)
		}
		served := e.h.Stats().FileBytes[oid]
		bound := h.DataOffset + ti.Len()
		if served > bound || served != sv.Downloaded || served <= h.DataOffset {
			t.Errorf("served %d bytes of %s (counted %d); at most header %d + tensor %d = %d", served, shard, sv.Downloaded, h.DataOffset, ti.Len(), bound)
		}
		t.Logf("%s: %d of %d bytes downloaded (header %d, tensor %d, unknown after Xet %d)", shard, served, sv.Size, h.DataOffset, ti.Len(), sv.Unknown)
	}
	if xs := e.h.XetStats(); xs.TransferBytes != 0 {
		t.Errorf("xorb bytes fetched: %d", xs.TransferBytes)
	}
}

// TestVerifyAlteredLFS: the same alteration stored in LFS only: verify names the
// tensor, having downloaded the shard tensor by tensor (LFS says nothing finer than
// the file's sha256), and the other shards not at all.
func TestVerifyAlteredLFS(t *testing.T) {
	h := hubtest.New(hubtest.WithToken(xetWrite, "alice", hubtest.ScopeWrite)).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: xetWrite, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	vc := newVerifyCase(t, c, verifyProjections, nil)
	bad := copyDir(t, vc.merged)
	const name = "model.layers.0.self_attn.q_proj.weight"
	shard, _, _ := alterTensor(t, vc.p, bad, name)
	oids := seedDir(t, h, "alice/altered", bad)
	h.ResetStats()
	res := vc.verify(t, c, "alice/altered", 0)
	if res.Verified {
		t.Fatal("verified")
	}
	for _, sv := range res.Shards {
		served := h.Stats().FileBytes[oids[sv.Name]]
		if sv.Name != shard {
			if !sv.Identical || served != 0 {
				t.Errorf("%s: %+v, %d bytes served", sv.Name, sv, served)
			}
			continue
		}
		if sv.Method != "ranges" || len(sv.Tensors) != 1 || sv.Tensors[0].Name != name || sv.Tensors[0].Differing != 1 {
			t.Fatalf("%s: %+v", shard, sv)
		}
		if served != sv.Size || sv.Downloaded != sv.Size {
			t.Errorf("served %d of %s's %d bytes (counted %d): the LFS fallback reads header and every tensor once", served, shard, sv.Size, sv.Downloaded)
		}
	}
}

// float32Merge rewrites every merged tensor of dir as a float32 reference computes
// it: W + s·B·A accumulated in float32 in plain k order, rounded once to BF16.
func float32Merge(t *testing.T, vc *verifyCase, dir string, scale float32) int {
	t.Helper()
	adapter := filepath.Join(vc.adapter, mergeplan.AdapterFile)
	n := 0
	for _, s := range vc.p.Shards {
		path := filepath.Join(dir, s.Name)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h, err := safetensors.ParseHeader(b, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		for _, tn := range s.Tensors {
			if tn.Copy() {
				continue
			}
			mod := strings.TrimSuffix(tn.Name, ".weight")
			w, err := fixture.ReadValues(filepath.Join(vc.base, tn.Source.File), tn.Source.Name)
			if err != nil {
				t.Fatal(err)
			}
			A, err := fixture.ReadValues(adapter, fixture.Key(mod, "lora_A.weight"))
			if err != nil {
				t.Fatal(err)
			}
			B, err := fixture.ReadValues(adapter, fixture.Key(mod, "lora_B.weight"))
			if err != nil {
				t.Fatal(err)
			}
			out, in, r := w.Shape[0], w.Shape[1], A.Shape[0]
			if ti, _ := h.Tensor(tn.Name); ti.DType != safetensors.BF16 {
				t.Fatalf("%s is %s", tn.Name, ti.DType)
			}
			vals := make([]byte, 2*out*in)
			for i := range out {
				for j := range in {
					var acc float32
					for k := range r {
						acc += float32(B.Values[i*r+k]) * float32(A.Values[k*in+j])
					}
					binary.LittleEndian.PutUint16(vals[2*(i*in+j):], bf16RNE(float32(w.Values[i*in+j])+scale*acc))
				}
			}
			ti, _ := h.Tensor(tn.Name)
			copy(b[h.DataOffset+ti.Begin:], vals)
			n++
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// bf16RNE rounds a float32 to BF16, to nearest, ties to even (no NaN here).
func bf16RNE(f float32) uint16 {
	b := math.Float32bits(f)
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// TestVerifyTolerance: a merge written by a float32 reference (another rounding, as
// other tools' merges have) fails exact verification, reporting the ulp histogram of
// each tensor, and passes with a tolerance of 1 ulp.
func TestVerifyTolerance(t *testing.T) {
	h := hubtest.New(hubtest.WithToken(xetWrite, "alice", hubtest.ScopeWrite)).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: xetWrite})
	if err != nil {
		t.Fatal(err)
	}
	// lora_alpha 1 with rank 8: deltas an eighth of the fixture's (a trained LoRA's
	// are small beside the weights). With the fixture's default scale of 2 the delta
	// is as large as W, and where the two nearly cancel the float32 reference is 2-3
	// ulp off the tiny result (3 of 4M elements), which the histogram shows.
	vc := newVerifyCase(t, c, verifyProjections, func(_ *fixture.Model, a *fixture.Adapter) { a.Config["lora_alpha"] = 1.0 })
	ref := copyDir(t, vc.merged)
	os.Remove(filepath.Join(ref, ProvenanceFile)) // another tool writes none
	if n := float32Merge(t, vc, ref, 1.0/8); n != 8 {
		t.Fatalf("rewrote %d tensors", n)
	}
	seedDir(t, h, "alice/reference", ref)

	exact := vc.verify(t, c, "alice/reference", 0)
	if exact.Verified {
		t.Fatal("a float32 reference verified as exact")
	}
	var differing, one int64
	for _, sv := range exact.Shards {
		for _, td := range sv.Tensors {
			differing += td.Differing
			if td.MaxULP != 1 || td.Problem != "" {
				t.Errorf("%s: %+v", td.Name, td)
			}
		}
		for _, b := range sv.Histogram {
			if b.Min == 1 && b.Max == 1 {
				one += b.Count
			}
		}
	}
	if differing == 0 || one != differing {
		t.Errorf("%d elements differ, %d by 1 ulp in the histograms", differing, one)
	}
	prov := exact.Files[len(exact.Files)-1]
	if !prov.OK || !strings.Contains(prov.Note, "absent") {
		t.Errorf("hfmerge.json: %+v", prov)
	}
	tol := vc.verify(t, c, "alice/reference", 1)
	if !tol.Verified {
		t.Fatalf("not verified within 1 ulp: %+v", tol)
	}
	t.Logf("float32 reference: %d elements 1 ulp from hfmerge's exact rounding", differing)
}

// TestVerifyOtherAdapter: a merge of another adapter into the same base fails, its
// tensors and its hfmerge.json both saying so.
func TestVerifyOtherAdapter(t *testing.T) {
	h := hubtest.New(hubtest.WithToken(xetWrite, "alice", hubtest.ScopeWrite)).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: xetWrite})
	if err != nil {
		t.Fatal(err)
	}
	vc := newVerifyCase(t, c, verifyProjections, nil)
	if _, err := Push(context.Background(), vc.l, vc.p, PushOptions{Target: upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}},
		DiskBudget: -1, WorkDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	_, other := model(t, xetSpec(), 3, verifyProjections, func(_ *fixture.Model, a *fixture.Adapter) {
		a.Config["lora_alpha"] = 32.0 // the same tensors, another scale
	})
	ol := loadDirs(t, &Sources{Client: c, CacheDir: t.TempDir()}, vc.base, other)
	res, err := Verify(context.Background(), ol, ol.Plan(), VerifyOptions{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}, Tolerance: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verified {
		t.Fatal("verified with another adapter")
	}
	prov := res.Files[len(res.Files)-1]
	if prov.OK || !strings.Contains(prov.Note, "adapter") {
		t.Errorf("hfmerge.json: %+v", prov)
	}
	var named int
	for _, sv := range res.Shards {
		for _, td := range sv.Tensors {
			if td.MaxULP > 1 {
				named++
			}
		}
	}
	if named != 8 {
		t.Errorf("%d tensors beyond 1 ulp, want the 8 the adapter changes", named)
	}
}
