package hfmerge

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/mergeplan"
	"github.com/hfmerge/hfmerge/safetensors"
	"github.com/hfmerge/hfmerge/upload"
)

const writeToken = "hf_alicewritetoken0123456789"

// pushEnv is a fake Hub holding alice/base, the same base and an adapter on disk, and
// the shards a local merge of them gives.
type pushEnv struct {
	h             *hubtest.Hub
	base, adapter string
	shards        map[string][]byte
	unchanged     map[string]bool // shards whose bytes are the base's
}

// newPushEnv builds a 4-layer Llama in n shards with LoRA on q_proj of layer 0 and
// down_proj of layer 2, so that some shards change and some are the base's bytes.
func newPushEnv(t *testing.T, n int, opts ...hubtest.Option) *pushEnv {
	t.Helper()
	spec := fixture.LlamaSpec{Hidden: 256, Intermediate: 512, Layers: 4, Vocab: 1000, DType: safetensors.BF16, Seed: 11}
	e := &pushEnv{shards: map[string][]byte{}, unchanged: map[string]bool{}}
	e.base, e.adapter = model(t, spec, n, nil, func(m *fixture.Model, a *fixture.Adapter) {
		r := fixture.NewRand(4)
		for _, mod := range []string{"model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"} {
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.F32, r)
		}
	})
	e.h = hubtest.New(append([]hubtest.Option{hubtest.WithToken(writeToken, "alice", hubtest.ScopeWrite)}, opts...)...).Start(t)
	files := map[string][]byte{}
	entries, _ := os.ReadDir(e.base)
	for _, en := range entries {
		files[en.Name()], _ = os.ReadFile(filepath.Join(e.base, en.Name()))
	}
	if _, err := e.h.Seed("alice/base", files); err != nil {
		t.Fatal(err)
	}
	l := loadDirs(t, &Sources{}, e.base, e.adapter)
	p := l.Plan()
	out := filepath.Join(t.TempDir(), "local")
	if err := MergeDir(t.Context(), l, p, out, MergeOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range p.Shards {
		e.shards[s.Name], _ = os.ReadFile(filepath.Join(out, s.Name))
		e.unchanged[s.Name] = s.Unchanged()
	}
	return e
}

func (e *pushEnv) client(t testing.TB, token string) *hub.Client {
	c, err := hub.New(hub.Options{Endpoint: e.h.URL(), Token: token, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// run is one push's observations.
type run struct {
	res      *PushResult
	err      error
	peakDisk int64          // the most the work dir held at any event
	notes    map[string]int // ShardDone notes per stage
}

// push publishes alice/base + the adapter to repo with the given budget, the base
// remote unless base is a directory, and samples the work dir at every event.
func (e *pushEnv) push(t *testing.T, c *hub.Client, repo, base string, budget int64, pr bool) run {
	t.Helper()
	ctx := context.Background()
	work := t.TempDir()
	src := &Sources{Client: c, CacheDir: t.TempDir()}
	b, err := src.Base(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	a, err := src.Adapter(ctx, e.adapter)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Load(ctx, b, a, mergeplan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := l.Plan()
	var mu sync.Mutex
	r := run{notes: map[string]int{}}
	progress := func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		r.peakDisk = max(r.peakDisk, mergedBytes(work))
		if ev.Type == ShardDone {
			r.notes[string(ev.Stage)+" "+ev.Note]++
		}
	}
	r.res, r.err = Push(ctx, l, p, PushOptions{Target: upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: repo}, PR: pr},
		DiskBudget: budget, WorkDir: work, Progress: progress})
	if left, _ := os.ReadDir(work); r.err == nil && len(left) != 0 {
		t.Errorf("the work dir holds %d entries after a successful push", len(left))
	}
	return r
}

// check verifies repo@main holds exactly the local merge's shards and hfmerge.json.
func (e *pushEnv) check(t *testing.T, repo string) {
	t.Helper()
	for name, want := range e.shards {
		got, err := e.h.File(repo, "main", name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %s differs from the local merge (%v)", repo, name, err)
		}
	}
	b, err := e.h.File(repo, "main", ProvenanceFile)
	if p := readProvenance(b); err != nil || p == nil || (p.Base.Repo != "alice/base" && p.Base.Dir != "base") || len(p.Files) < len(e.shards) {
		t.Errorf("%s: hfmerge.json: %v\n%s", repo, err, b)
	}
}

func (e *pushEnv) largest() int64 {
	var n int64
	for _, b := range e.shards {
		n = max(n, int64(len(b)))
	}
	return n
}

// TestPushSchedule pushes the same merge with the base remote (default budget, and a
// tenth of a shard) and local: each publishes the local merge's bytes in one commit;
// the work dir stays within the budget, and holds nothing at all with a local base or a
// tiny budget; shards whose bytes are the base's are neither merged nor downloaded.
func TestPushSchedule(t *testing.T) {
	for i, c2 := range []struct {
		name     string
		base     string
		budget   int64
		maxDisk  int64
		minDisk  int64
		download bool
	}{
		// budget -10 is a tenth of the largest shard; maxDisk -1 is the default budget.
		{"remote, default budget", "alice/base", -1, -1, 1, true},
		{"remote, a tenth of a shard", "alice/base", -10, 0, 0, true},
		{"local", "", -1, 0, 0, false},
	} {
		t.Run(c2.name, func(t *testing.T) {
			// A Hub of its own: one stores objects by content, and each run must send
			// the shards that change.
			e := newPushEnv(t, 5, hubtest.WithMultipartChunkSize(300_000))
			c := e.client(t, writeToken)
			unchanged := 0
			for _, u := range e.unchanged {
				if u {
					unchanged++
				}
			}
			if unchanged == 0 || unchanged == len(e.shards) {
				t.Fatalf("%d of %d shards unchanged: the test needs both kinds", unchanged, len(e.shards))
			}
			largest := e.largest()
			if c2.base == "" {
				c2.base = e.base
			}
			c2.maxDisk = map[int64]int64{-1: largest + largest/20, 0: 0}[c2.maxDisk]
			repo := "alice/merged" + string(rune('a'+i))
			if c2.budget == -10 {
				c2.budget = largest / 10
			}
			e.h.ResetStats()
			r := e.push(t, c, repo, c2.base, c2.budget, false)
			if r.err != nil {
				t.Fatal(r.err)
			}
			e.check(t, repo)
			e.h.WaitIdle(context.Background())
			st := e.h.Stats()
			if st.Commits[repo+"@main"] != 1 {
				t.Errorf("commits: %v", st.Commits)
			}
			if r.peakDisk > c2.maxDisk || r.peakDisk < c2.minDisk {
				t.Errorf("the work dir held up to %d bytes; want between %d and %d", r.peakDisk, c2.minDisk, c2.maxDisk)
			}
			if r.notes["hash unchanged"] != unchanged || r.res.Unchanged != unchanged {
				t.Errorf("%d shards reported unchanged (%+v); %d are", r.notes["hash unchanged"], r.notes, unchanged)
			}
			// The Hub has the unchanged shards (they are alice/base's): nothing of them
			// is downloaded or sent.
			for name, b := range e.shards {
				oid := sum(b)
				// Its header is read (100 kB) for the plan; nothing more.
				if e.unchanged[name] && (st.FileBytes[oid] > 100_000 || st.ObjectUploads[oid] != 0) {
					t.Errorf("%s is the base's, yet %d bytes of it came down and %d went up", name, st.FileBytes[oid], st.ObjectUploads[oid])
				}
			}
			if r.res.Uploaded+r.res.OnHub != len(e.shards) || r.res.Uploaded != len(e.shards)-unchanged {
				t.Errorf("%d shards uploaded and %d on the Hub; %d change", r.res.Uploaded, r.res.OnHub, len(e.shards)-unchanged)
			}
			if down := r.res.BytesDown; (down > 0) != c2.download {
				t.Errorf("%d bytes of the base came down", down)
			}
			t.Logf("%s: peak disk %d, down %d, up %d, %+v", c2.name, r.peakDisk, r.res.BytesDown, r.res.BytesUp, r.notes)
		})
	}
}

// TestPushFaults: 429 then 503 on the batch, 500 on parts and on a single PUT, dropped
// base downloads and a commit applied with its reply lost still make exactly one
// commit of the right bytes; a rerun is up to date and moves almost nothing.
func TestPushFaults(t *testing.T) {
	e := newPushEnv(t, 3, hubtest.WithMultipartChunkSize(600_000))
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 429, RetryAfter: time.Second})
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 503})
	parts := e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Status: 500, Times: 2})
	drops := e.h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 50_000, Times: 3})
	lost := e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true, Status: 504})
	c := e.client(t, writeToken)
	r := e.push(t, c, "alice/merged", "alice/base", -1, false)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if parts.Fired() != 2 || drops.Fired() != 3 || lost.Fired() != 1 {
		t.Errorf("faults fired: parts %d drops %d lost %d", parts.Fired(), drops.Fired(), lost.Fired())
	}
	if n := e.h.Stats().Commits["alice/merged@main"]; n != 1 {
		t.Errorf("%d commits, want exactly 1", n)
	}
	e.check(t, "alice/merged")
	e.h.ResetStats()
	r = e.push(t, c, "alice/merged", "alice/base", -1, false)
	if r.err != nil || !r.res.UpToDate {
		t.Fatalf("rerun: %+v %v", r.res, r.err)
	}
	e.h.WaitIdle(context.Background())
	st := e.h.Stats()
	if moved := st.BytesDown + st.BytesUp; len(st.Commits) != 0 || moved > 1<<20 {
		t.Errorf("the rerun made %v commits and moved %d bytes", st.Commits, moved)
	}
}

// TestPushQuota: a 403 whose message says the storage quota is exceeded fails the push
// at once, with the Hub's message, and is not retried.
func TestPushQuota(t *testing.T) {
	e := newPushEnv(t, 2)
	msg := "Your storage quota is exceeded (100 GB private storage)"
	f := e.h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 403, Message: msg, Times: -1})
	r := e.push(t, e.client(t, writeToken), "alice/merged", e.base, -1, false)
	if r.err == nil || !strings.Contains(r.err.Error(), msg) {
		t.Fatalf("push: %v", r.err)
	}
	if f.Fired() != 1 {
		t.Errorf("the 403 was asked %d times; want once, with no retry", f.Fired())
	}
	if n := e.h.Stats().Commits["alice/merged@main"]; n != 0 {
		t.Errorf("%d commits", n)
	}
}

// TestPushRateLimit: a 429 with RateLimit "api";r=0;t=2 on the batch call waits about
// two seconds, once, and the push goes on.
func TestPushRateLimit(t *testing.T) {
	e := newPushEnv(t, 2)
	f := e.h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 429, RateLimit: 2 * time.Second})
	start := time.Now()
	r := e.push(t, e.client(t, writeToken), "alice/merged", e.base, -1, false)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if took := time.Since(start); f.Fired() != 1 || took < 2*time.Second {
		t.Errorf("the 429 fired %d times and the push took %v; want once and at least 2 s", f.Fired(), took)
	}
	e.check(t, "alice/merged")
}

// TestPushPersistent503: a range read that always gets 503 costs the client's attempts
// (Retries+1) per request, never retries stacked on retries, and fails the push.
func TestPushPersistent503(t *testing.T) {
	e := newPushEnv(t, 2)
	c, err := hub.New(hub.Options{Endpoint: e.h.URL(), Token: writeToken, Retries: 2, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	src := &Sources{Client: c, CacheDir: t.TempDir()}
	b, err := src.Base(ctx, "alice/base")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := src.Adapter(ctx, e.adapter)
	l, err := Load(ctx, b, a, mergeplan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e.h.ResetStats()
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Status: 503, Times: -1})
	_, err = Push(ctx, l, l.Plan(), PushOptions{Target: upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}},
		DiskBudget: -1, WorkDir: t.TempDir()})
	if err == nil {
		t.Fatal("the push succeeded with every download failing")
	}
	e.h.WaitIdle(ctx)
	// The schedule stops at the first failure; each ranged request costs 3 attempts,
	// and at most the read-ahead's few requests were in flight.
	gets := e.h.Stats().Requests[hubtest.RouteCDNGet]
	if gets%3 != 0 || gets > 3*8 {
		t.Errorf("%d CDN requests: not a multiple of the 3 attempts, or far more requests than the read-ahead makes", gets)
	}
	t.Logf("%d CDN requests; %v", gets, err)
}

// TestPushTokens: app tokens and fine-grained tokens scoped to the user publish; a read
// token and a fine-grained token without repo.write fail before any shard is read,
// naming what is missing.
func TestPushTokens(t *testing.T) {
	const app, fgOK, fgNo, read = "hf_appalice0123456789abcd", "hf_fgalice0123456789abcd", "hf_fgnowrite0123456789ab", "hf_readbob0123456789abcd"
	e := newPushEnv(t, 2,
		hubtest.WithAppToken(app, "alice"),
		hubtest.WithFineGrainedToken(fgOK, "alice", hubtest.FineGrained{Scoped: []hubtest.Scoped{{EntityType: "user", Entity: "alice", Permissions: []string{"repo.content.read", hubtest.PermRepoWrite}}}}),
		hubtest.WithFineGrainedToken(fgNo, "alice", hubtest.FineGrained{Scoped: []hubtest.Scoped{{EntityType: "user", Entity: "alice", Permissions: []string{"repo.content.read"}}}}),
		hubtest.WithToken(read, "alice", hubtest.ScopeRead))
	for i, tok := range []string{app, fgOK} {
		repo := "alice/merged" + string(rune('a'+i))
		c := e.client(t, tok)
		if err := CheckAccess(context.Background(), upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: repo}}); err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
		if r := e.push(t, c, repo, "alice/base", -1, false); r.err != nil {
			t.Fatalf("token %d: %v", i, r.err)
		}
		e.check(t, repo)
	}
	for _, x := range []struct{ tok, want string }{{read, "write"}, {fgNo, "repo.write"}} {
		e.h.ResetStats()
		err := CheckAccess(context.Background(), upload.Target{Client: e.client(t, x.tok), Repo: hub.Repo{Type: "model", ID: "alice/refused"}})
		if err == nil || !strings.Contains(err.Error(), x.want) {
			t.Errorf("token %s: %v; want a refusal naming %q", x.tok[:8], err, x.want)
		}
		if st := e.h.Stats(); st.Requests[hubtest.RouteCDNGet] != 0 || st.UploadedBytes != 0 {
			t.Errorf("token %s: something moved before the refusal: %+v", x.tok[:8], st.Requests)
		}
	}
}

// TestPushLocked: a second push of the same merge to the same target, while the first
// holds the work dir, fails at once saying so.
func TestPushLocked(t *testing.T) {
	e := newPushEnv(t, 2)
	work := t.TempDir()
	c := e.client(t, writeToken)
	ctx := context.Background()
	src := &Sources{Client: c}
	open := func() *Inputs {
		b, _ := src.Base(ctx, e.base)
		a, _ := src.Adapter(ctx, e.adapter)
		l, err := Load(ctx, b, a, mergeplan.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	target := upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}}
	// Hold the first push once it holds the work dir: its first progress event waits
	// until the second push has been turned away.
	holding, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	first := make(chan error, 1)
	go func() {
		l := open()
		_, err := Push(ctx, l, l.Plan(), PushOptions{Target: target, DiskBudget: -1, WorkDir: work,
			Progress: func(Event) { once.Do(func() { close(holding); <-release }) }})
		first <- err
	}()
	<-holding
	l := open()
	_, err := Push(ctx, l, l.Plan(), PushOptions{Target: target, DiskBudget: -1, WorkDir: work})
	if err == nil || !strings.Contains(err.Error(), "another hfmerge") {
		t.Errorf("second push: %v", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	e.check(t, "alice/merged")
}

// TestPushPRIdempotent: a second --pr run with the same inputs finds the open pull
// request and opens no new one.
func TestPushPRIdempotent(t *testing.T) {
	e := newPushEnv(t, 2)
	c := e.client(t, writeToken)
	if err := e.h.CreateRepo("alice/merged"); err != nil {
		t.Fatal(err)
	}
	r := e.push(t, c, "alice/merged", e.base, -1, true)
	if r.err != nil || r.res.Commit.PullRequestURL == "" {
		t.Fatalf("first: %+v %v", r.res, r.err)
	}
	again := e.push(t, c, "alice/merged", e.base, -1, true)
	if again.err != nil || !again.res.UpToDate || again.res.Commit.PullRequestURL != r.res.Commit.PullRequestURL {
		t.Fatalf("second: %+v %v (first %s)", again.res, again.err, r.res.Commit.PullRequestURL)
	}
	if n := len(e.h.PullRequests("alice/merged")); n != 1 {
		t.Errorf("%d pull requests", n)
	}
}

// TestPushNoSpace: a remote base with an explicit budget larger than the (faked) free
// space is refused before anything moves.
func TestPushNoSpace(t *testing.T) {
	e := newPushEnv(t, 2)
	c := e.client(t, writeToken)
	ctx := context.Background()
	src := &Sources{Client: c, CacheDir: t.TempDir()}
	b, _ := src.Base(ctx, "alice/base")
	a, _ := src.Adapter(ctx, e.adapter)
	l, err := Load(ctx, b, a, mergeplan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Push(ctx, l, l.Plan(), PushOptions{Target: upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}},
		DiskBudget: 10 << 20, WorkDir: t.TempDir(), disk: disk{freeSpace: func(string) (int64, bool) { return 1 << 20, true }}})
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "free") {
		t.Errorf("push: %v", err)
	}
}

// TestPushManyFiles: a model with more files than a commit may carry is published
// through a pull request of several commits, merged at the end: main changes once.
func TestPushManyFiles(t *testing.T) {
	e := newPushEnv(t, 5)
	c := e.client(t, writeToken)
	ctx := context.Background()
	src := &Sources{Client: c}
	b, _ := src.Base(ctx, e.base)
	a, _ := src.Adapter(ctx, e.adapter)
	l, err := Load(ctx, b, a, mergeplan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := e.h.CreateRepo("alice/merged"); err != nil {
		t.Fatal(err)
	}
	e.h.ResetStats()
	target := upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: "alice/merged"}, MaxFiles: 4}
	if _, err := Push(ctx, l, l.Plan(), PushOptions{Target: target, DiskBudget: -1, WorkDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	st := e.h.Stats()
	if st.Commits["alice/merged@main"] != 1 || st.Commits["alice/merged@refs/pr/1"] < 2 {
		t.Errorf("commits: %v; want main changed once, through several commits to a pull request", st.Commits)
	}
	e.check(t, "alice/merged")
}

// TestCheckSizes: a shard over the Hub's 500 GB limit is refused before anything moves,
// naming it and saying what to do; one over the recommended 200 GB is a warning.
func TestCheckSizes(t *testing.T) {
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	p := &mergeplan.Plan{Shards: []mergeplan.Shard{{Name: "big.safetensors", Layout: &safetensors.Layout{Size: 300e9}}}}
	if err := checkSizes(p, log); err != nil || !strings.Contains(logged.String(), "200 GB") {
		t.Errorf("300 GB: %v; log %q", err, logged.String())
	}
	p.Shards = append(p.Shards, mergeplan.Shard{Name: "huge.safetensors", Layout: &safetensors.Layout{Size: 600e9}})
	if err := checkSizes(p, log); err == nil || !strings.Contains(err.Error(), "huge.safetensors") || !strings.Contains(err.Error(), "max_shard_size") {
		t.Errorf("600 GB: %v", err)
	}
}
