package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

const (
	aliceWrite = "hf_alice_write"
	bobRead    = "hf_bob_read"
)

// pushEnv is a fake Hub holding alice/base, the same base and an adapter on disk, the
// merged model made locally for comparison, and the hfmerge binary.
type pushEnv struct {
	h                    *hubtest.Hub
	bin                  string
	base, adapter, local string
	home                 string // HOME, HF_HOME and TMPDIR live under it
	shards               map[string][]byte
}

func newPushEnv(t *testing.T, spec fixture.LlamaSpec, nShards int, opts ...hubtest.Option) *pushEnv {
	t.Helper()
	e := &pushEnv{bin: buildBinary(t), home: t.TempDir(), shards: map[string][]byte{}}
	m := fixture.Llama(spec)
	m.Split(nShards)
	dir := t.TempDir()
	e.base, e.adapter = filepath.Join(dir, "base"), filepath.Join(dir, "adapter")
	if err := m.Write(e.base); err != nil {
		t.Fatal(err)
	}
	a := fixture.NewAdapter(8, 16, "q_proj", "down_proj")
	r := fixture.NewRand(5)
	for l := 0; l < spec.Layers; l++ {
		for _, p := range []string{"self_attn.q_proj", "mlp.down_proj"} {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], 8, safetensors.F32, r)
		}
	}
	a.Tokenizer = true
	if err := a.Write(e.adapter); err != nil {
		t.Fatal(err)
	}
	e.h = hubtest.New(append([]hubtest.Option{hubtest.WithToken(aliceWrite, "alice", hubtest.ScopeWrite),
		hubtest.WithToken(bobRead, "bob", hubtest.ScopeRead)}, opts...)...).Start(t)
	files := map[string][]byte{}
	entries, _ := os.ReadDir(e.base)
	for _, en := range entries {
		files[en.Name()], _ = os.ReadFile(filepath.Join(e.base, en.Name()))
	}
	if _, err := e.h.Seed("alice/base", files); err != nil {
		t.Fatal(err)
	}
	e.local = filepath.Join(t.TempDir(), "local")
	if out, err := exec.Command(e.bin, "merge", "--base", e.base, "--adapter", e.adapter, "--out", e.local, "--progress", "none").CombinedOutput(); err != nil {
		t.Fatalf("local merge: %v\n%s", err, out)
	}
	entries, _ = os.ReadDir(e.local)
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".safetensors") {
			e.shards[en.Name()], _ = os.ReadFile(filepath.Join(e.local, en.Name()))
		}
	}
	for _, d := range []string{"home", "hf", "tmp"} {
		os.MkdirAll(filepath.Join(e.home, d), 0o755)
	}
	return e
}

func (e *pushEnv) cmd(token string, args ...string) *exec.Cmd {
	c := exec.Command(e.bin, args...)
	c.Env = append(os.Environ(), "HF_ENDPOINT="+e.h.URL(), "HF_TOKEN="+token, "HF_HUB_OFFLINE=",
		"HOME="+filepath.Join(e.home, "home"), "HF_HOME="+filepath.Join(e.home, "hf"),
		"HF_HUB_CACHE="+filepath.Join(e.home, "hf", "hub"), "TMPDIR="+filepath.Join(e.home, "tmp"))
	return c
}

func (e *pushEnv) push(t *testing.T, token string, extra ...string) (int, string, string) {
	t.Helper()
	return e.pushAs(t, token, "alice/merged", extra...)
}

// pushTo pushes with alice's write token to repo.
func (e *pushEnv) pushTo(t *testing.T, repo string, extra ...string) (int, string, string) {
	t.Helper()
	return e.pushAs(t, aliceWrite, repo, extra...)
}

func (e *pushEnv) pushAs(t *testing.T, token, repo string, extra ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", repo, "--progress", "plain"}, extra...)
	c := e.cmd(token, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkPublished checks the head of alice/merged@rev: every merged shard as made
// locally, index, config, tokenizer, model card and hfmerge.json.
func (e *pushEnv) checkPublished(t *testing.T, rev string) {
	t.Helper()
	e.checkPublishedTo(t, "alice/merged", rev)
}

func (e *pushEnv) checkPublishedTo(t *testing.T, repo, rev string) {
	t.Helper()
	files, err := e.h.Files(repo, rev)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range files {
		have[f.Path] = true
	}
	for _, n := range []string{"model.safetensors.index.json", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md", hfmerge.ProvenanceFile} {
		if !have[n] {
			t.Errorf("%s@%s lacks %s", repo, rev, n)
		}
	}
	for name, want := range e.shards {
		got, err := e.h.File(repo, rev, name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s differs from the local merge (%v)", name, err)
		}
	}
	card, _ := e.h.File(repo, rev, "README.md")
	if !bytes.Contains(card, []byte("base_model: alice/base")) {
		t.Errorf("model card:\n%s", card)
	}
	tok, _ := e.h.File(repo, rev, "tokenizer_config.json")
	if !bytes.Contains(tok, []byte(`"from": "adapter"`)) {
		t.Errorf("tokenizer is not the adapter's")
	}
	var prov hfmerge.Provenance
	b, _ := e.h.File(repo, rev, hfmerge.ProvenanceFile)
	if err := json.Unmarshal(b, &prov); err != nil || prov.Base.Repo != "alice/base" || len(prov.Base.Commit) != 40 || prov.Adapter.Digest == "" {
		t.Errorf("hfmerge.json: %v\n%s", err, b)
	}
	for name, data := range e.shards {
		if f := prov.Files[name]; f.SHA256 != sum(data) || f.Size != int64(len(data)) {
			t.Errorf("hfmerge.json records %s as %+v", name, f)
		}
	}
}

func smallSpec() fixture.LlamaSpec {
	return fixture.LlamaSpec{Hidden: 256, Intermediate: 512, Layers: 4, Vocab: 1000, DType: safetensors.BF16, Seed: 11}
}

// TestPush: one new commit with every file; faults on the way (429 then 503 on the
// batch, 500 on two part PUTs and on a single PUT, dropped base downloads, the commit
// applied and its reply lost) change nothing; a rerun makes no commit and moves < 1 MB.
func TestPush(t *testing.T) {
	// Shards are 1.89 to 1.96 MB: the smallest goes by a single PUT, the others by parts.
	e := newPushEnv(t, smallSpec(), 3, hubtest.WithMultipartChunkSize(1_900_000))
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 429, RetryAfter: time.Second})
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteBatch, Status: 503})
	parts := e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Status: 500, Times: 2})
	put := e.h.Fault(hubtest.Fault{Route: hubtest.RouteUploadPut, Status: 500})
	drops := e.h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Drop: true, DropAfterBytes: 50_000, Times: 3})
	lost := e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, ApplyThenLose: true, Status: 504})
	code, stdout, stderr := e.push(t, aliceWrite)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "/commit/") {
		t.Errorf("stdout does not give the commit URL: %s", stdout)
	}
	if parts.Fired() != 2 || put.Fired() != 1 || drops.Fired() != 3 || lost.Fired() != 1 {
		t.Errorf("faults fired: parts %d put %d drops %d lost %d", parts.Fired(), put.Fired(), drops.Fired(), lost.Fired())
	}
	if n := e.h.Stats().Commits["alice/merged@main"]; n != 1 {
		t.Errorf("%d commits, want exactly 1", n)
	}
	if n := e.h.Stats().CDNAuthRejected; n != 0 {
		t.Errorf("the CDN saw the token %d times", n)
	}
	e.checkPublished(t, "main")

	e.h.ResetStats()
	code, stdout, stderr = e.push(t, aliceWrite)
	if code != 0 || !strings.Contains(stdout, "up to date") {
		t.Fatalf("rerun: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.h.WaitIdle(context.Background())
	st := e.h.Stats()
	moved := st.BytesServed[hubtest.HostHub] + st.BytesServed[hubtest.HostCDN] + st.UploadedBytes
	if len(st.Commits) != 0 || moved > 1<<20 {
		t.Errorf("rerun made %v commits and moved %d bytes", st.Commits, moved)
	}
	t.Logf("rerun after success moved %d bytes", moved)
}

// TestPushAccess: a read-only token, or a repo of another owner, fails before any shard
// is merged, saying what is missing.
func TestPushAccess(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	code, _, stderr := e.push(t, bobRead)
	if code != 1 || !strings.Contains(stderr, "write") || strings.Contains(stderr, "shard merged") {
		t.Errorf("read token: exit %d: %s", code, stderr)
	}
	c := e.cmd(aliceWrite, "push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "carol/merged", "--progress", "plain")
	out, err := c.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "carol") || strings.Contains(string(out), "shard merged") {
		t.Errorf("other owner: %v: %s", err, out)
	}
	e.h.WaitIdle(context.Background())
	if st := e.h.Stats(); st.UploadedBytes != 0 || st.Requests[hubtest.RouteCreateRepo] != 0 {
		t.Errorf("something was created or uploaded: %+v", st)
	}
}

// TestPushPR opens a pull request and leaves the branch alone.
func TestPushPR(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	if code, _, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatal(stderr)
	}
	head, _ := e.h.Head("alice/merged", "main")
	code, stdout, stderr := e.push(t, aliceWrite, "--pr", "--dtype", "fp32")
	if code != 0 || !strings.Contains(stdout, "opened pull request") || !strings.Contains(stdout, "/discussions/") {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	if now, _ := e.h.Head("alice/merged", "main"); now != head {
		t.Error("the branch moved")
	}
	prs := e.h.PullRequests("alice/merged")
	if len(prs) != 1 {
		t.Fatalf("pull requests: %v", prs)
	}
	for n := range prs {
		cfg, err := e.h.File("alice/merged", fmt.Sprintf("refs/pr/%d", n), "config.json")
		if err != nil || !bytes.Contains(cfg, []byte(`"torch_dtype": "float32"`)) {
			t.Errorf("the PR's config.json: %v %s", err, cfg)
		}
	}
}

// diskUse is the bytes of regular files under dirs.
func diskUse(dirs ...string) int64 {
	var n int64
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.Type().IsRegular() {
				if info, err := de.Info(); err == nil {
					n += info.Size()
				}
			}
			return nil
		})
	}
	return n
}

// sampleDisk runs cmd while sampling disk use, and returns the peak.
func sampleDisk(t *testing.T, c *exec.Cmd, dirs ...string) int64 {
	t.Helper()
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			peak.Store(max(peak.Load(), diskUse(dirs...)))
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	out, err := c.CombinedOutput()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return peak.Load()
}

// TestPushDisk measures the transient disk of HOME, HF_HOME, the work dir and TMPDIR
// during a push: at most 1.1 × the largest shard by default (the base streamed, or kept
// in the cache with --keep-base, which is not counted), under 64 MB with a budget below
// one shard.
func TestPushDisk(t *testing.T) {
	spec := fixture.LlamaSpec{Hidden: 512, Intermediate: 1536, Layers: 8, Vocab: 4000, DType: safetensors.BF16, Seed: 12, Lazy: true}
	// Slow uploads keep each merged shard on disk long enough to be seen.
	e := newPushEnv(t, spec, 4, hubtest.WithMultipartChunkSize(4<<20))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 30 * time.Millisecond, Times: -1})
	var largest int64
	for _, b := range e.shards {
		largest = max(largest, int64(len(b)))
	}
	measured := []string{filepath.Join(e.home, "home"), filepath.Join(e.home, "hf"), filepath.Join(e.home, "tmp")}
	for i, c := range []struct {
		name  string
		extra []string
		limit int64
		dirs  []string
	}{
		{"default", nil, largest + largest/10, measured},
		{"keep-base", []string{"--keep-base", "--cache-dir", filepath.Join(e.home, "kept")}, largest + largest/10, measured},
		{"budget below a shard", []string{"--disk-budget", "1MB"}, 64 << 20, measured},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", fmt.Sprintf("alice/merged%d", i), "--progress", "plain"}, c.extra...)
			peak := sampleDisk(t, e.cmd(aliceWrite, args...), c.dirs...)
			t.Logf("%s: peak transient disk %d bytes; largest shard %d", c.name, peak, largest)
			if peak > c.limit {
				t.Errorf("peak disk %d > %d", peak, c.limit)
			}
			if c.name == "default" && peak < largest/2 {
				t.Errorf("peak %d: the sampler never saw a merged shard on disk", peak)
			}
			got, err := e.h.File(fmt.Sprintf("alice/merged%d", i), "main", "model-00002-of-00004.safetensors")
			if err != nil || !bytes.Equal(got, e.shards["model-00002-of-00004.safetensors"]) {
				t.Errorf("published shard differs: %v", err)
			}
		})
	}
}

// TestPushOverlap: whatever the disk budget (one shard, or a tenth of one, where
// nothing is written at all), base shards are fetched while earlier shards upload: the
// push keeps both links busy.
func TestPushOverlap(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithMultipartChunkSize(128<<10))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 40 * time.Millisecond, Times: -1})
	var largest int64
	for _, b := range e.shards {
		largest = max(largest, int64(len(b)))
	}
	// The Hub keeps objects by content: the two runs publish different dtypes so that
	// both upload.
	if n := overlaps(t, e, "alice/single", fmt.Sprint(largest+largest/20)); n == 0 {
		t.Errorf("with a budget of one shard, no base download overlapped an upload")
	}
	if n := overlaps(t, e, "alice/merged", fmt.Sprint(largest/10), "--dtype", "fp32"); n == 0 {
		t.Errorf("with a budget of a tenth of a shard, no base download overlapped an upload")
	}
}

// overlaps pushes with a disk budget and counts base downloads that ran during uploads.
func overlaps(t *testing.T, e *pushEnv, repo, budget string, extra ...string) int {
	t.Helper()
	e.h.ResetStats()
	if code, _, stderr := e.push(t, aliceWrite, append([]string{"--repo", repo, "--disk-budget", budget}, extra...)...); code != 0 {
		t.Fatal(stderr)
	}
	e.h.WaitIdle(context.Background())
	var gets, puts []hubtest.Request
	for _, r := range e.h.Requests() {
		switch r.Route {
		case hubtest.RouteCDNGet:
			gets = append(gets, r)
		case hubtest.RoutePartPut, hubtest.RouteUploadPut:
			puts = append(puts, r)
		}
	}
	n := 0
	for _, g := range gets {
		for _, p := range puts {
			if g.Start.Before(p.End) && p.Start.Before(g.End) {
				n++
			}
		}
	}
	t.Logf("budget %s: %d GETs, %d PUTs, %d overlaps", budget, len(gets), len(puts), n)
	if len(puts) == 0 {
		t.Fatalf("budget %s: nothing was uploaded, so nothing could overlap", budget)
	}
	return n
}

// TestPushResume: SIGKILL in the middle of a push; the rerun finishes, and what it
// uploads is the shards the first run had not.
func TestPushResume(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithMultipartChunkSize(128<<10))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 20 * time.Millisecond, Times: -1})
	c := e.cmd(aliceWrite, "push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "plain")
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	killed := false
	for sc.Scan() {
		if !killed && strings.Contains(sc.Text(), "shard uploaded") {
			c.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	c.Wait()
	if !killed {
		t.Fatal("the push finished before it could be killed")
	}
	e.h.WaitIdle(context.Background())
	var missing int64
	for _, b := range e.shards {
		if _, ok := e.h.Object(sum(b)); !ok {
			missing += int64(len(b))
		}
	}
	if missing == 0 {
		t.Fatal("every shard was uploaded before the kill")
	}
	if n := e.h.Stats().Commits["alice/merged@main"]; n != 0 {
		t.Fatalf("the killed run committed")
	}
	e.h.ResetStats()
	if code, _, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatal(stderr)
	}
	e.h.WaitIdle(context.Background())
	st := e.h.Stats()
	var shardBytes int64
	for _, b := range e.shards {
		shardBytes += st.ObjectUploads[sum(b)]
	}
	if shardBytes != missing {
		t.Errorf("the rerun uploaded %d shard bytes; %d were missing", shardBytes, missing)
	}
	if st.Commits["alice/merged@main"] != 1 {
		t.Errorf("commits: %v", st.Commits)
	}
	e.checkPublished(t, "main")
}

// TestPushTerm: SIGTERM stops a push: exit status 143, no merged shard left in the work
// dir, a journal that parses, and no commit.
func TestPushTerm(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithMultipartChunkSize(128<<10))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 20 * time.Millisecond, Times: -1})
	c := e.cmd(aliceWrite, "push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "plain")
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	sent := false
	var log []string
	for sc.Scan() {
		log = append(log, sc.Text())
		if !sent && strings.Contains(sc.Text(), "shard uploaded") {
			c.Process.Signal(syscall.SIGTERM)
			sent = true
		}
	}
	err := c.Wait()
	ee, ok := err.(*exec.ExitError)
	if !sent || !ok || ee.ExitCode() != 143 {
		t.Fatalf("exit %v after SIGTERM (sent %v):\n%s", err, sent, strings.Join(log, "\n"))
	}
	work := filepath.Join(e.home, "hf", "hfmerge")
	journals, _ := filepath.Glob(filepath.Join(work, "journal-*.json"))
	if len(journals) != 1 {
		t.Fatalf("journals: %v", journals)
	}
	var j struct{ Shards map[string]any }
	if b, _ := os.ReadFile(journals[0]); json.Unmarshal(b, &j) != nil || len(j.Shards) == 0 {
		t.Errorf("journal does not parse or is empty")
	}
	if tmp, _ := filepath.Glob(filepath.Join(work, "tmp-*", "*")); len(tmp) != 0 {
		t.Errorf("merged shards left: %v", tmp)
	}
	if n := e.h.Stats().Commits["alice/merged@main"]; n != 0 {
		t.Errorf("%d commits after SIGTERM", n)
	}
}
