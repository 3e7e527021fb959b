package hfmerge

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// TestVerifyXetAnswersChecked: Xet's answers only say where to look; they never make a
// repo verify by themselves. The CAS here lies: asked for the reconstruction of the published shard
// (two tensors changed, by 1 and by 5 ulp), it answers with that of another file (only
// the 1-ulp change). Trusted, the walk would vouch for the 5-ulp change and the repo
// would pass under --tolerance 1. The bytes verify downloads plus those it took as
// known must make the sha256 the Hub lists; they do not, so verify compares every
// tensor and fails, naming the 5-ulp one.
func TestVerifyXetAnswersChecked(t *testing.T) {
	e := newXetEnv(t)
	vc := newVerifyCase(t, e.c, verifyProjections, nil)
	// Two merged tensors of one shard.
	var small, large string
	for _, s := range vc.p.Shards {
		var merged []string
		for _, tn := range s.Tensors {
			if !tn.Copy() {
				merged = append(merged, tn.Name)
			}
		}
		if len(merged) >= 2 {
			small, large = merged[0], merged[len(merged)-1]
			break
		}
	}
	if small == "" {
		t.Fatal("no shard with two merged tensors")
	}
	one := copyDir(t, vc.merged)
	shard, _, _ := alterTensorBy(t, vc.p, one, small, 1)
	two := copyDir(t, one)
	if s, _, _ := alterTensorBy(t, vc.p, two, large, 5); s != shard {
		t.Fatalf("%s is in %s, %s in %s", small, shard, large, s)
	}
	e.seedXet(t, "alice/one", one)
	e.seedXet(t, "alice/two", two)
	lies, restore := lyingCAS(t, e, shard, "alice/two", "alice/one")
	res := vc.verify(t, e.c, "alice/two", 1)
	if lies.Load() == 0 {
		t.Fatal("the lying reconstruction was never asked for: the test proves nothing")
	}
	if res.Verified {
		t.Fatalf("verified through a lying CAS: %+v", res)
	}
	for _, sv := range res.Shards {
		if sv.Name != shard {
			continue
		}
		var found bool
		for _, td := range sv.Tensors {
			found = found || td.Name == large && td.MaxULP == 5
		}
		if !found || sv.Method != "ranges" || sv.Unknown != 0 || !strings.Contains(strings.Join(sv.Notes, "; "), "sha256") {
			t.Errorf("%s: %+v", shard, sv)
		}
	}

	// The truthful CAS: the same repo fails the same way, having downloaded less than
	// the shard (the changed chunks only).
	restore()
	res = vc.verify(t, e.c, "alice/two", 1)
	for _, sv := range res.Shards {
		if sv.Name == shard && (sv.OK || sv.Method != "xet" || len(sv.Tensors) != 2 || sv.Downloaded >= sv.Size) {
			t.Errorf("with the truthful CAS, %s: %+v", shard, sv)
		}
	}
	if res.Verified {
		t.Error("verified with a 5-ulp change")
	}
	// And the 1-ulp copy passes under the tolerance through Xet: the bytes vouched for
	// add up to its sha256, and only its changed chunks were downloaded.
	res = vc.verify(t, e.c, "alice/one", 1)
	if !res.Verified {
		t.Fatalf("the 1-ulp copy does not verify within 1 ulp: %+v", res)
	}
	for _, sv := range res.Shards {
		if sv.Name == shard && (sv.Method != "xet" || len(sv.Notes) != 0 || sv.Downloaded >= sv.Size/4) {
			t.Errorf("the 1-ulp copy, %s: %+v", shard, sv)
		}
	}
}

// lyingCAS puts a proxy in front of the fake CAS that answers the reconstruction of
// shard in repo truth with that of shard in repo lie; restore removes it.
func lyingCAS(t *testing.T, e *xetEnv, shard, truth, lie string) (lies *atomic.Int64, restore func()) {
	t.Helper()
	xetHash := func(repo string) string {
		entries, err := e.c.Tree(context.Background(), hub.Repo{Type: "model", ID: repo}, "main", "", true)
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range entries {
			if en.Path == shard && en.XetHash != "" {
				return en.XetHash
			}
		}
		t.Fatalf("%s of %s has no xetHash", shard, repo)
		return ""
	}
	lieP, truthP := "/v1/reconstructions/"+xetHash(lie), "/v1/reconstructions/"+xetHash(truth)
	cas, err := url.Parse(e.h.CASURL())
	if err != nil {
		t.Fatal(err)
	}
	// The fake CAS lets a token read only its repo's files: the lie is fetched with a
	// token for its repo and served in place of the truth.
	tok, err := e.c.XetReadToken(context.Background(), hub.Repo{Type: "model", ID: lie}, "main")
	if err != nil {
		t.Fatal(err)
	}
	lies = &atomic.Int64{}
	proxy := httputil.NewSingleHostReverseProxy(cas)
	rewrite := proxy.Director
	proxy.Director = func(r *http.Request) {
		if r.URL.Path == truthP {
			r.URL.Path = lieP
			r.Header.Set("Authorization", "Bearer "+tok.AccessToken)
			lies.Add(1)
		}
		rewrite(r)
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	e.h.SetCASURL(srv.URL)
	return lies, func() { e.h.SetCASURL(cas.String()) }
}

// TestVerifyXetContradiction: without a tolerance, a CAS that answers for an altered
// shard with the reconstruction of the right one vouches for every chunk; the sha256
// still differs, so the answers are wrong: verify says so and compares every tensor,
// naming the altered one, rather than claiming a difference outside every tensor.
func TestVerifyXetContradiction(t *testing.T) {
	e := newXetEnv(t)
	vc := newVerifyCase(t, e.c, verifyProjections, nil)
	e.seedXet(t, "alice/right", vc.merged)
	bad := copyDir(t, vc.merged)
	const name = "model.layers.1.mlp.down_proj.weight"
	shard, _, _ := alterTensor(t, vc.p, bad, name)
	e.seedXet(t, "alice/altered", bad)
	lies, _ := lyingCAS(t, e, shard, "alice/altered", "alice/right")
	res := vc.verify(t, e.c, "alice/altered", 0)
	if lies.Load() == 0 {
		t.Fatal("the lying reconstruction was never asked for: the test proves nothing")
	}
	if res.Verified {
		t.Fatal("verified")
	}
	for _, sv := range res.Shards {
		if sv.Name != shard {
			continue
		}
		if sv.Method != "ranges" || len(sv.Problems) != 0 || len(sv.Tensors) != 1 || sv.Tensors[0].Name != name ||
			!strings.Contains(strings.Join(sv.Notes, "; "), "sha256") {
			t.Errorf("%s: %+v", shard, sv)
		}
	}
}

// TestVerifyExtraWeightFiles: weight files the merge does not have fail the repo, each
// named, in name order after the merge's shards (the JSON verdict is the same run after
// run); the merge's own files are untouched.
func TestVerifyExtraWeightFiles(t *testing.T) {
	h := hubtest.New(hubtest.WithToken(xetWrite, "alice", hubtest.ScopeWrite)).Start(t)
	c, err := hub.New(hub.Options{Endpoint: h.URL(), Token: xetWrite})
	if err != nil {
		t.Fatal(err)
	}
	vc := newVerifyCase(t, c, verifyProjections, nil)
	dir := copyDir(t, vc.merged)
	extra := []string{"a.safetensors", "b.gguf", "c.safetensors", "pytorch_model.bin", "z-00001-of-00002.safetensors", "zz.safetensors"}
	for i := len(extra) - 1; i >= 0; i-- {
		if err := os.WriteFile(filepath.Join(dir, extra[i]), []byte("not this merge"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	seedDir(t, h, "alice/extra", dir)
	res := vc.verify(t, c, "alice/extra", 0)
	if res.Verified || len(res.Shards) != len(vc.p.Shards)+len(extra) {
		t.Fatalf("verified %v with %d shard verdicts", res.Verified, len(res.Shards))
	}
	var got []string
	for i, sv := range res.Shards {
		if i < len(vc.p.Shards) {
			if !sv.Identical || sv.Name != vc.p.Shards[i].Name {
				t.Errorf("%s: %+v", sv.Name, sv)
			}
			continue
		}
		if sv.OK || len(sv.Problems) != 1 {
			t.Errorf("%s: %+v", sv.Name, sv)
		}
		got = append(got, sv.Name)
	}
	if !slices.Equal(got, extra) {
		t.Errorf("extra weight files %v, want %v in this order", got, extra)
	}
}

// TestVerifyXetWaitsLogged: what the CAS client waits for or skips reaches verify's log
// (here the dedup index declining every question), and the shard is still examined,
// through the ranges no answer vouched for.
func TestVerifyXetWaitsLogged(t *testing.T) {
	e := newXetEnv(t)
	vc := newVerifyCase(t, e.c, verifyProjections, nil)
	bad := copyDir(t, vc.merged)
	const name = "model.layers.1.mlp.down_proj.weight"
	shard, _, _ := alterTensor(t, vc.p, bad, name)
	e.seedXet(t, "alice/altered", bad)
	f := e.h.Fault(hubtest.Fault{Route: hubtest.RouteXetDedup, Status: http.StatusTooManyRequests, Times: -1})
	var log strings.Builder
	res, err := Verify(context.Background(), vc.l, vc.p, VerifyOptions{Client: e.c, Repo: hub.Repo{Type: "model", ID: "alice/altered"},
		Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if f.Fired() == 0 || !strings.Contains(log.String(), "rate-limited") {
		t.Errorf("%d dedup questions declined; log:\n%s", f.Fired(), log.String())
	}
	for _, sv := range res.Shards {
		if sv.Name == shard && (sv.OK || len(sv.Tensors) != 1 || sv.Tensors[0].Name != name) {
			t.Errorf("%s: %+v", shard, sv)
		}
	}
}
