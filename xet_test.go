package hfmerge

import (
	"bytes"
	"context"
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

const xetWrite = "hf_xet_alice_write"

// xetEnv is a fake Hub with Xet storage and a client of alice's.
type xetEnv struct {
	h *hubtest.Hub
	c *hub.Client
}

func newXetEnv(t testing.TB, opts ...hubtest.Option) *xetEnv {
	t.Helper()
	h := hubtest.New(append([]hubtest.Option{hubtest.WithToken(xetWrite, "alice", hubtest.ScopeWrite), hubtest.WithXet()}, opts...)...).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: xetWrite, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &xetEnv{h: h, c: c}
}

// seedXet publishes the files of dir as repo through hfmerge's own Xet client: the
// safetensors files through a Xet session, the rest inline; one commit.
func (e *xetEnv) seedXet(t testing.TB, repo, dir string) {
	t.Helper()
	ctx := context.Background()
	tg := &upload.Target{Client: e.c, Repo: hub.Repo{Type: "model", ID: repo}, Xet: upload.XetOn}
	if _, _, err := e.c.CreateRepo(ctx, tg.Repo, false); err != nil {
		t.Fatal(err)
	}
	x, err := tg.StartXet(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := upload.Commit{Summary: "base", Marker: hub.CommitFile{Path: ".seed", Content: []byte("seed")}}
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		b, err := os.ReadFile(filepath.Join(dir, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(en.Name(), ".safetensors") {
			c.Files = append(c.Files, hub.CommitFile{Path: en.Name(), Content: b})
			continue
		}
		res, err := x.Upload(ctx, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		c.LFS = append(c.LFS, hub.CommitLFS{Path: en.Name(), OID: res.SHA256, Size: res.Size})
	}
	if _, err := x.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Commit(ctx, c); err != nil {
		t.Fatal(err)
	}
}

// xetSpec is a Llama whose shards are some MB each, so that the per-shard allowance of
// the byte bound does not hide what was sent.
func xetSpec() fixture.LlamaSpec {
	return fixture.LlamaSpec{Hidden: 512, Intermediate: 1024, Layers: 4, Vocab: 2048, DType: safetensors.BF16, Seed: 3}
}

// changedBytes is the size of the tensors a merge changes, counted from the plan
// without XetExpected's rules.
func changedBytes(p *mergeplan.Plan) int64 {
	var n int64
	for _, s := range p.Shards {
		for j, tn := range s.Tensors {
			if !tn.Copy() || tn.New {
				n += s.Layout.Tensors[j].Len()
			}
		}
	}
	return n
}

func shardBytes(p *mergeplan.Plan) int64 {
	var n int64
	for _, s := range p.Shards {
		n += s.Size()
	}
	return n
}

// TestPushXet: with the base in the CAS, a push through Xet sends in xorb bodies at
// most 1.15x the bytes of the tensors the merge changed plus 1 MB per shard, and the
// published shards are byte-identical to MergeDir's. The same push with Xet off goes
// through LFS and sends every shard byte, the figure it is compared with.
func TestPushXet(t *testing.T) {
	for _, c := range []struct {
		name        string
		projections []string
		local       bool
	}{
		{"qv", []string{"self_attn.q_proj", "self_attn.v_proj"}, false},
		{"all-linear", []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
			"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}, false},
		{"qv-local-base", []string{"self_attn.q_proj", "self_attn.v_proj"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			e := newXetEnv(t)
			baseDir, adapter := model(t, xetSpec(), 3, c.projections, nil)
			e.seedXet(t, "alice/base", baseDir)
			base := "alice/base"
			if c.local {
				base = baseDir
			}
			src := &Sources{Client: e.c, CacheDir: t.TempDir()}
			l := loadDirs(t, src, base, adapter)
			p := l.Plan()
			want := filepath.Join(t.TempDir(), "out")
			if err := MergeDir(ctx, l, p, want, MergeOptions{}); err != nil {
				t.Fatal(err)
			}

			e.h.ResetStats()
			res, err := Push(ctx, l, p, PushOptions{Target: upload.Target{Client: e.c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}},
				DiskBudget: -1, WorkDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			st := e.h.XetStats()
			changed, shards := changedBytes(p), shardBytes(p)
			bound := int64(1.15*float64(changed)) + int64(len(p.Shards))<<20
			if !res.Xet || res.XetSent != st.XorbBytes || st.XorbsRejected+st.ShardsRejected != 0 {
				t.Fatalf("result %+v, CAS %+v", res, st)
			}
			if st.XorbBytes > bound {
				t.Errorf("sent %d xorb bytes; the merge changed %d bytes of tensors, bound %d", st.XorbBytes, changed, bound)
			}
			if e.h.Stats().Requests[hubtest.RouteUploadPut]+e.h.Stats().Requests[hubtest.RoutePartPut] != 0 {
				t.Errorf("a shard went through LFS: %v", e.h.Stats().Requests)
			}
			for _, s := range p.Shards {
				got, err := e.h.File("alice/merged", "main", s.Name)
				if err != nil {
					t.Fatal(err)
				}
				wantB, _ := os.ReadFile(filepath.Join(want, s.Name))
				if !bytes.Equal(got, wantB) {
					t.Errorf("%s as published differs from the local merge", s.Name)
				}
			}

			// The same push through LFS (--xet off), on a Hub that has the base, for the figure.
			plain := hubtest.New(hubtest.WithToken(xetWrite, "alice", hubtest.ScopeWrite)).Start(t)
			files := map[string][]byte{}
			entries, _ := os.ReadDir(baseDir)
			for _, en := range entries {
				files[en.Name()], _ = os.ReadFile(filepath.Join(baseDir, en.Name()))
			}
			if _, err := plain.Seed("alice/base", files); err != nil {
				t.Fatal(err)
			}
			pc, err := hub.New(hub.Options{Endpoint: plain.URL(), Token: xetWrite})
			if err != nil {
				t.Fatal(err)
			}
			pl := loadDirs(t, &Sources{Client: pc, CacheDir: t.TempDir()}, base, adapter)
			lfs, err := Push(ctx, pl, pl.Plan(), PushOptions{Target: upload.Target{Client: pc, Repo: hub.Repo{Type: "model", ID: "alice/merged"}, Xet: upload.XetOff},
				DiskBudget: -1, WorkDir: t.TempDir()})
			if err != nil || lfs.Xet || lfs.BytesUp < shards {
				t.Fatalf("LFS push: %+v, %v", lfs, err)
			}
			t.Logf("%s: %d shards, %d shard bytes, %d changed tensor bytes; Xet sent %d xorb bytes (expected %d, bound %d), LFS sent %d bytes",
				c.name, len(p.Shards), shards, changed, st.XorbBytes, res.XetExpected, bound, lfs.BytesUp)
		})
	}
}
