package hfmerge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
)

// model writes a Llama of spec in n shards and an adapter with LoRA of rank 8 on the
// given projections of every layer; edit may change them first.
func model(t testing.TB, spec fixture.LlamaSpec, n int, projections []string, edit func(*fixture.Model, *fixture.Adapter)) (base, adapter string) {
	t.Helper()
	m := fixture.Llama(spec)
	m.Split(n)
	a := fixture.NewAdapter(8, 16, "q_proj", "down_proj")
	r := fixture.NewRand(5)
	for l := 0; l < spec.Layers; l++ {
		for _, p := range projections {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.F32, r)
		}
	}
	a.Tokenizer = true
	if edit != nil {
		edit(m, a)
	}
	return writeInputs(t, m, a)
}

// writeInputs writes a generated base and adapter into a temp dir.
func writeInputs(t testing.TB, m *fixture.Model, a *fixture.Adapter) (base, adapter string) {
	t.Helper()
	dir := t.TempDir()
	base, adapter = filepath.Join(dir, "base"), filepath.Join(dir, "adapter")
	if err := m.Write(base); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(adapter); err != nil {
		t.Fatal(err)
	}
	return base, adapter
}

func tinySpec() fixture.LlamaSpec {
	return fixture.LlamaSpec{Hidden: 64, Intermediate: 128, Layers: 2, Vocab: 96, DType: safetensors.BF16, Seed: 1}
}

// loadDirs opens two local directories with o and reads their headers.
func loadDirs(t testing.TB, o *Sources, base, adapter string) *Inputs {
	t.Helper()
	ctx := context.Background()
	b, err := o.Base(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	a, err := o.Adapter(ctx, adapter)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Load(ctx, b, a, mergeplan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// countingFile counts the bytes read through it.
type countingFile struct {
	File
	n *atomic.Int64
}

func (c *countingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.File.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// dirBytes is the size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func fileEqual(t testing.TB, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(x) == string(y)
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// mergedBytes is what a push's work dir holds in merged shards: its tmp- dirs.
func mergedBytes(work string) int64 {
	dirs, _ := filepath.Glob(filepath.Join(work, "tmp-*"))
	var n int64
	for _, d := range dirs {
		n += dirBytes(d)
	}
	return n
}
