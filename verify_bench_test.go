package hfmerge

import (
	"context"
	"testing"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
	"github.com/hfmerge/hfmerge/upload"
)

// BenchmarkVerify measures verify on a ~170 MB model pushed through Xet: "pushed" is
// the correct push (sha256 of every shard, nothing downloaded), "altered" a copy with
// one element changed and uploaded again through Xet (the differing shard chunked and
// only its changed chunks downloaded). It reports the shard bytes downloaded.
//
//	go test -run XXX -bench Verify -benchtime 3x .
func BenchmarkVerify(b *testing.B) {
	e := newXetEnv(b)
	spec := fixture.LlamaSpec{Hidden: 1024, Intermediate: 4096, Layers: 4, Vocab: 8192, DType: safetensors.BF16, Seed: 3}
	base, adapter := model(b, spec, 4, verifyProjections, nil)
	l := loadDirs(b, &Sources{Client: e.c, CacheDir: b.TempDir()}, base, adapter)
	p := l.Plan()
	ctx := context.Background()
	if _, err := Push(ctx, l, p, PushOptions{Target: upload.Target{Client: e.c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}},
		DiskBudget: -1, WorkDir: b.TempDir()}); err != nil {
		b.Fatal(err)
	}
	merged := b.TempDir() + "/merged"
	if err := MergeDir(ctx, l, p, merged, MergeOptions{}); err != nil {
		b.Fatal(err)
	}
	bad := copyDir(b, merged)
	alterTensor(b, p, bad, "model.layers.2.mlp.down_proj.weight")
	e.seedXet(b, "alice/altered", bad)
	var total int64
	for _, s := range p.Shards {
		total += s.Size()
	}
	for _, c := range []struct{ name, repo string }{{"pushed", "alice/merged"}, {"altered", "alice/altered"}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(total)
			var down int64
			for b.Loop() {
				res, err := Verify(ctx, l, p, VerifyOptions{Client: e.c, Repo: hub.Repo{Type: "model", ID: c.repo}})
				if err != nil {
					b.Fatal(err)
				}
				down = res.ShardBytes
			}
			b.ReportMetric(float64(down), "shard-bytes-down")
		})
	}
}
