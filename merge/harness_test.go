package merge_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/merge"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// result is a merged model read back: every output tensor's values, and the raw files.
type result struct {
	plan    *mergeplan.Plan
	tensors map[string]*fixture.Tensor
	raw     map[string][]byte // output tensor bytes by name
	files   map[string][]byte
}

func (r *result) tensor(t testing.TB, name string) *fixture.Tensor {
	t.Helper()
	x, ok := r.tensors[name]
	if !ok {
		t.Fatalf("output has no tensor %s", name)
	}
	return x
}

// run writes the model and adapter, plans, and computes every shard twice: once with
// Write and once through ReadAt in random pieces, which must agree.
func run(t testing.TB, m *fixture.Model, a *fixture.Adapter, opts mergeplan.Options) *result {
	t.Helper()
	p, files := plan(t, m, a, opts)
	if !p.OK() {
		t.Fatalf("plan has problems: %v", p.Problems)
	}
	res := &result{plan: p, tensors: map[string]*fixture.Tensor{}, raw: map[string][]byte{}, files: map[string][]byte{}}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range p.Shards {
		s := &p.Shards[i]
		sh, err := merge.New(s, files, merge.Options{Jobs: 3, CacheBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		var whole bytes.Buffer
		n, err := sh.Write(context.Background(), &whole, nil)
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		if n != sh.Size() || int64(whole.Len()) != s.Size() {
			t.Fatalf("%s: wrote %d bytes, size %d, layout %d", s.Name, n, sh.Size(), s.Size())
		}
		// Into a file, where the workers write at their offsets: after 7 bytes that
		// must stay, and with the file's offset left at the end.
		f, err := os.Create(filepath.Join(t.TempDir(), "shard"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("before:"); err != nil {
			t.Fatal(err)
		}
		if n, err := sh.Write(context.Background(), f, nil); err != nil || n != sh.Size() {
			t.Fatalf("%s: writing to a file: %d bytes, %v", s.Name, n, err)
		}
		if _, err := f.WriteString(":after"); err != nil {
			t.Fatal(err)
		}
		f.Close()
		inFile, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		if want := "before:" + whole.String() + ":after"; string(inFile) != want {
			t.Fatalf("%s: the shard written to a file differs from the one written in order", s.Name)
		}
		pieces := make([]byte, sh.Size())
		for off := int64(0); off < sh.Size(); {
			k := min(int64(1+rng.IntN(300_000)), sh.Size()-off)
			if _, err := sh.ReadAt(pieces[off:off+k], off); err != nil {
				t.Fatalf("%s: ReadAt(%d, %d): %v", s.Name, off, k, err)
			}
			off += k
		}
		if !bytes.Equal(pieces, whole.Bytes()) {
			t.Fatalf("%s: ReadAt and Write disagree", s.Name)
		}
		res.files[s.Name] = whole.Bytes()
		h, err := safetensors.ParseHeader(whole.Bytes(), int64(whole.Len()))
		if err != nil {
			t.Fatalf("%s: output does not parse: %v", s.Name, err)
		}
		for _, ti := range h.Tensors {
			b := whole.Bytes()[h.DataOffset+ti.Begin : h.DataOffset+ti.End]
			res.raw[ti.Name] = b
			res.tensors[ti.Name] = &fixture.Tensor{Name: ti.Name, DType: ti.DType, Shape: ti.Shape, Values: fixture.Decode(ti.DType, b)}
		}
	}
	return res
}

// plan writes the inputs to a temp dir and plans the merge.
func plan(t testing.TB, m *fixture.Model, a *fixture.Adapter, opts mergeplan.Options) (*mergeplan.Plan, map[string]io.ReaderAt) {
	t.Helper()
	dir := t.TempDir()
	base, ad := filepath.Join(dir, "base"), filepath.Join(dir, "adapter")
	if err := m.Write(base); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(ad); err != nil {
		t.Fatal(err)
	}
	in, files, closeAll, err := fixture.Open(base, ad, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeAll)
	return mergeplan.Build(in), files
}

var (
	baseDTypes    = []safetensors.DType{safetensors.BF16, safetensors.F16, safetensors.F32}
	adapterDTypes = []safetensors.DType{safetensors.F32, safetensors.BF16}
)
