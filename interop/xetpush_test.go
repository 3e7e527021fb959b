//go:build interop

package interop

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
	"github.com/hfmerge/hfmerge/upload"
	"github.com/hfmerge/hfmerge/xet"
)

// xetModel writes a Llama of 3 shards (about 23 MB) and an adapter with LoRA on the
// given projections; it returns the two directories and the base's files.
func xetModel(t *testing.T, projections ...string) (base, adapter string, files map[string][]byte) {
	t.Helper()
	spec := fixture.LlamaSpec{Hidden: 512, Intermediate: 1024, Layers: 4, Vocab: 2048, DType: safetensors.BF16, Seed: 3}
	m := fixture.Llama(spec)
	m.Split(3)
	a := fixture.NewAdapter(8, 16, "q_proj", "v_proj")
	r := fixture.NewRand(5)
	for l := 0; l < spec.Layers; l++ {
		for _, p := range projections {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.F32, r)
		}
	}
	dir := t.TempDir()
	base, adapter = filepath.Join(dir, "base"), filepath.Join(dir, "adapter")
	if err := m.Write(base); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(adapter); err != nil {
		t.Fatal(err)
	}
	files = map[string][]byte{}
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		files[e.Name()], _ = os.ReadFile(filepath.Join(base, e.Name()))
	}
	return base, adapter, files
}

// TestXetPushOverJSBase: the JavaScript client uploads a base through Xet; hfmerge
// pushes a merge of it (LoRA on q_proj and v_proj) through Xet, sending in xorbs at
// most 1.15x the changed tensors' bytes plus 1 MB per shard; the JavaScript client
// downloads the merged shards through Xet, byte-identical to hfmerge merge's output;
// and its own chunking of those files gives the chunk and file hashes the CAS stores
// for hfmerge's upload.
func TestXetPushOverJSBase(t *testing.T) {
	requireJS(t)
	h := startXetHub(t)
	baseDir, adapter, files := xetModel(t, "self_attn.q_proj", "self_attn.v_proj")
	js(t, h, true, "createRepo", map[string]any{"repo": "alice/base"}, nil)
	var out commitOut
	js(t, h, true, "upload", map[string]any{"repo": "alice/base", "files": writeFiles(t, files), "title": "base through Xet"}, &out)
	waitIdle(t, h)
	if st := h.XetStats(); st.FilesRegistered != 3 || h.Stats().UploadedBytes != 0 {
		t.Fatalf("the JS client's base upload: %+v, LFS bytes %d", st, h.Stats().UploadedBytes)
	}

	bin := buildHfmerge(t)
	home := t.TempDir()
	local := filepath.Join(t.TempDir(), "merged")
	c := exec.Command(bin, "merge", "--base", baseDir, "--adapter", adapter, "--out", local, "--progress", "none")
	if o, err := c.CombinedOutput(); err != nil {
		t.Fatalf("merge: %v\n%s", err, o)
	}
	h.ResetStats()
	c = exec.Command(bin, "push", "--base", "alice/base", "--adapter", adapter, "--repo", "alice/merged", "--progress", "none", "--xet", "on")
	c.Env = append(os.Environ(), "HF_ENDPOINT="+h.URL(), "HF_TOKEN="+token, "HF_HOME="+home, "HF_HUB_CACHE="+filepath.Join(home, "hub"), "HF_HUB_DISABLE_XET=")
	o, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("push: %v\n%s", err, o)
	}
	waitIdle(t, h)

	var changed, shardBytes int64
	var shards []string
	entries, _ := os.ReadDir(local)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".safetensors") {
			shards = append(shards, e.Name())
			b, _ := os.ReadFile(filepath.Join(local, e.Name()))
			shardBytes += int64(len(b))
			changed += changedIn(t, filepath.Join(baseDir, e.Name()), filepath.Join(local, e.Name()))
		}
	}
	xs := h.XetStats()
	bound := int64(1.15*float64(changed)) + int64(len(shards))<<20
	if xs.XorbBytes == 0 || xs.XorbBytes > bound || xs.XorbsRejected+xs.ShardsRejected != 0 || h.Stats().UploadedBytes != 0 {
		t.Fatalf("push sent %d xorb bytes (bound %d for %d changed bytes), LFS %d; CAS %+v", xs.XorbBytes, bound, changed, h.Stats().UploadedBytes, xs)
	}
	t.Logf("push over the JS client's base: %d xorb bytes for %d changed tensor bytes, %d shard bytes (what LFS sends)", xs.XorbBytes, changed, shardBytes)

	var via viaOut
	js(t, h, true, "downloadVia", map[string]any{"repo": "alice/merged", "paths": shards}, &via)
	for _, name := range shards {
		want, _ := os.ReadFile(filepath.Join(local, name))
		if d := via[name]; !d.Xet || d.SHA256 != sha(want) || d.Size != len(want) {
			t.Errorf("JS download of %s = %+v, want %s through Xet", name, d, sha(want))
		}
		f, ok := h.XetFileBySHA256(sha(want))
		if !ok {
			t.Fatalf("the CAS does not store %s", name)
		}
		var mine xetHashesOut
		js(t, h, false, "xetHashes", map[string]any{"file": filepath.Join(local, name)}, &mine)
		sizes, hashes := goChunks(t, want)
		if !slices.Equal(hashes, f.Chunks) || fileHashOf(t, hashes, sizes) != f.Hash {
			t.Errorf("%s: the CAS stores other chunks than hfmerge's chunker makes of the file", name)
		}
		compareChunkings(t, name, sizes, hashes, mine)
	}
}

// fileHashOf is the Xet file hash of chunks given as hash strings and sizes.
func fileHashOf(t *testing.T, hashes []string, sizes []int) string {
	t.Helper()
	cs := make([]xet.Chunk, len(hashes))
	for i, h := range hashes {
		x, err := xet.ParseHash(h)
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = xet.Chunk{Hash: x, Size: uint64(sizes[i])}
	}
	return xet.FileHash(cs).String()
}

// goChunks is hfmerge's chunking of data: sizes and hash strings.
func goChunks(t *testing.T, data []byte) ([]int, []string) {
	t.Helper()
	var sizes []int
	var hashes []string
	cr := xet.NewChunkReader(bytes.NewReader(data))
	for {
		c, err := cr.Next()
		if err == io.EOF {
			return sizes, hashes
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(c))
		hashes = append(hashes, xet.ChunkHash(c).String())
	}
}

// compareChunkings checks hfmerge's chunking of a file against the JavaScript
// client's: a chunk both make (same offset and length) has the same hash in both, and
// they cut differently only where the JavaScript client made a chunk shorter than the
// 8 KiB minimum, which xet-core's chunker does not (docs/xet.md, "chunker"): from such a
// chunk's start to the next boundary they share. With no such chunk the file hashes
// agree too.
func compareChunkings(t *testing.T, name string, sizes []int, hashes []string, js xetHashesOut) {
	t.Helper()
	type cut struct{ off, size int }
	goAt, jsAt := map[cut]string{}, map[cut]string{}
	goB, jsB := map[int]bool{}, map[int]bool{}
	off := 0
	for i, n := range sizes {
		goAt[cut{off, n}] = hashes[i]
		off += n
		goB[off] = true
	}
	off = 0
	var short []int // offsets where the JS client cut a chunk under the minimum
	for i, n := range js.Sizes {
		jsAt[cut{off, n}] = js.Chunks[i]
		if n < xet.MinChunk && i != len(js.Sizes)-1 {
			short = append(short, off)
		}
		off += n
		jsB[off] = true
	}
	shared, explained := 0, 0
	for c, hg := range goAt {
		if hj, ok := jsAt[c]; ok {
			shared++
			if hj != hg {
				t.Errorf("%s: the chunk at %d (%d bytes) hashes to %s in hfmerge, %s in JS", name, c.off, c.size, hg, hj)
			}
		}
	}
	// Every boundary only one client has lies after a JS short chunk's start and
	// before the next boundary both have.
	common := []int{0}
	for b := range goB {
		if jsB[b] {
			common = append(common, b)
		}
	}
	slices.Sort(common)
	for _, set := range []map[int]bool{goB, jsB} {
		for b := range set {
			if goB[b] && jsB[b] {
				continue
			}
			i, _ := slices.BinarySearch(common, b)
			lo := common[i-1]
			if !slices.ContainsFunc(short, func(s int) bool { return s >= lo && s < b }) {
				t.Errorf("%s: a boundary at %d that only one client cuts, with no JS chunk under 8 KiB since the shared boundary at %d", name, b, lo)
			}
			explained++
		}
	}
	if len(short) == 0 && fileHashOf(t, hashes, sizes) != js.FileHash {
		t.Errorf("%s: the same chunks, but file hash %s in hfmerge, %s in JS", name, fileHashOf(t, hashes, sizes), js.FileHash)
	}
	t.Logf("%s: %d chunks shared of %d (hfmerge) and %d (JS); %d JS chunks under 8 KiB explain the %d other boundaries", name, shared, len(sizes), len(js.Sizes), len(short), explained)
}

// changedIn counts the bytes of the tensors whose bytes differ between a base shard
// and the merged one (the merge keeps names, dtypes and shapes here).
func changedIn(t *testing.T, base, merged string) int64 {
	t.Helper()
	read := func(p string) (*safetensors.Header, []byte) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		hd, err := safetensors.ParseHeader(b, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		return hd, b
	}
	bh, bb := read(base)
	mh, mb := read(merged)
	var n int64
	for _, mt := range mh.Tensors {
		bt, ok := bh.Tensor(mt.Name)
		if !ok || !bytes.Equal(bb[bh.DataOffset+bt.Begin:bh.DataOffset+bt.End], mb[mh.DataOffset+mt.Begin:mh.DataOffset+mt.End]) {
			n += mt.Len()
		}
	}
	return n
}

// TestXetSameFileBothClients: the same file uploaded by the JavaScript client and by
// hfmerge's Xet client (each to its own CAS). Where both chunk it alike (2 MiB of
// pseudo-random bytes in which the JS client cuts no chunk under 8 KiB) the file hash,
// every chunk hash and the xorb hash agree; on a model shard they cut differently only
// after the JS client's chunks under 8 KiB, and every chunk both make has the same hash.
func TestXetSameFileBothClients(t *testing.T) {
	requireJS(t)
	_, _, files := xetModel(t)
	for _, c := range []struct {
		name string
		data []byte
		same bool
	}{{"pattern.bin", pattern(2<<20, 22), true}, {"model-00001-of-00003.safetensors", files["model-00001-of-00003.safetensors"], false}} {
		t.Run(c.name, func(t *testing.T) {
			hj := startXetHub(t)
			js(t, hj, true, "createRepo", map[string]any{"repo": "alice/js"}, nil)
			var out commitOut
			local := writeFiles(t, map[string][]byte{c.name: c.data})
			js(t, hj, true, "upload", map[string]any{"repo": "alice/js", "files": local, "title": "js"}, &out)
			waitIdle(t, hj)
			hg := startXetHub(t)
			ctx := context.Background()
			cl, err := hub.New(hub.Options{Endpoint: hg.URL(), Token: token})
			if err != nil {
				t.Fatal(err)
			}
			tg := &upload.Target{Client: cl, Repo: hub.Repo{Type: "model", ID: "alice/go"}, Xet: upload.XetOn}
			if _, _, err := cl.CreateRepo(ctx, tg.Repo, false); err != nil {
				t.Fatal(err)
			}
			x, err := tg.StartXet(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := x.Upload(ctx, bytes.NewReader(c.data)); err != nil {
				t.Fatal(err)
			}
			if _, err := x.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			fj, ok1 := hj.XetFileBySHA256(sha(c.data))
			fg, ok2 := hg.XetFileBySHA256(sha(c.data))
			if !ok1 || !ok2 {
				t.Fatalf("stored: JS %v, hfmerge %v", ok1, ok2)
			}
			var mine xetHashesOut
			js(t, hj, false, "xetHashes", map[string]any{"file": local[0]["file"]}, &mine)
			if !slices.Equal(mine.Chunks, fj.Chunks) || mine.FileHash != fj.Hash {
				t.Fatal("the JS client's hashing of the file is not what it uploaded")
			}
			sizes, hashes := goChunks(t, c.data)
			if !slices.Equal(hashes, fg.Chunks) || fileHashOf(t, hashes, sizes) != fg.Hash {
				t.Fatal("hfmerge's chunking of the file is not what it uploaded")
			}
			compareChunkings(t, c.name, sizes, hashes, mine)
			if c.same {
				if fj.Hash != fg.Hash || !slices.Equal(fj.Chunks, fg.Chunks) || len(fj.Terms) != 1 || len(fg.Terms) != 1 || fj.Terms[0] != fg.Terms[0] {
					t.Fatalf("JS: %s, %d chunks, terms %+v\nhfmerge: %s, %d chunks, terms %+v", fj.Hash, len(fj.Chunks), fj.Terms, fg.Hash, len(fg.Chunks), fg.Terms)
				}
				if xj, xg := hj.XetXorbs(), hg.XetXorbs(); !slices.Equal(xj, xg) {
					t.Fatalf("xorbs: JS %v, hfmerge %v", xj, xg)
				}
				t.Logf("%s: file %s, %d chunks, xorb %s in both", c.name, fg.Hash, len(fg.Chunks), fg.Terms[0].Xorb)
			}
		})
	}
}
