package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// retrain rewrites the adapter in place with the same shapes and other values (a
// retrained adapter), and makes e.shards the local merge of the new adapter into base.
func (e *pushEnv) retrain(t *testing.T, spec fixture.LlamaSpec, seed uint64, base string) {
	t.Helper()
	m := fixture.Llama(spec)
	a := fixture.NewAdapter(8, 16, "q_proj", "down_proj")
	r := fixture.NewRand(seed)
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
	e.localMerge(t, base)
}

// localMerge makes e.shards the local merge of the adapter into base.
func (e *pushEnv) localMerge(t *testing.T, base string) {
	t.Helper()
	e.local = filepath.Join(t.TempDir(), "local")
	if out, err := exec.Command(e.bin, "merge", "--base", base, "--adapter", e.adapter, "--out", e.local, "--progress", "none").CombinedOutput(); err != nil {
		t.Fatalf("local merge: %v\n%s", err, out)
	}
	e.shards = map[string][]byte{}
	entries, _ := os.ReadDir(e.local)
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".safetensors") {
			e.shards[en.Name()], _ = os.ReadFile(filepath.Join(e.local, en.Name()))
		}
	}
}

// run runs the binary with the Hub's environment and returns its exit status and output.
func (e *pushEnv) run(t *testing.T, token string, args ...string) (int, string, string) {
	t.Helper()
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

// pushLocal pushes the local base (not alice/base) to repo.
func (e *pushEnv) pushLocal(t *testing.T, repo string, extra ...string) (int, string, string) {
	t.Helper()
	return e.run(t, aliceWrite, append([]string{"push", "--base", e.base, "--adapter", e.adapter, "--repo", repo, "--progress", "plain"}, extra...)...)
}

// samePublished checks that every shard at repo@main is the local merge's, and that
// the repo has no other shard.
func (e *pushEnv) samePublished(t *testing.T, repo string) {
	t.Helper()
	files, err := e.h.Files(repo, "main")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f.Path, ".safetensors") {
			n++
			if _, ok := e.shards[f.Path]; !ok {
				t.Errorf("%s holds %s, which the local merge has not", repo, f.Path)
			}
		}
	}
	if n != len(e.shards) {
		t.Errorf("%s holds %d shards; the local merge has %d", repo, n, len(e.shards))
	}
	for name, want := range e.shards {
		got, err := e.h.File(repo, "main", name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s:%s differs from the local merge (%v)", repo, name, err)
		}
	}
}

// killAfter starts a push and SIGKILLs it once n shards are uploaded.
func (e *pushEnv) killAfter(t *testing.T, n int, args ...string) {
	t.Helper()
	c := e.cmd(aliceWrite, args...)
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	seen, killed := 0, false
	var log []string
	for sc.Scan() {
		log = append(log, sc.Text())
		if strings.Contains(sc.Text(), "shard uploaded") {
			seen++
		}
		if !killed && seen >= n {
			c.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	c.Wait()
	if !killed {
		t.Fatalf("the push ended before %d shards were uploaded:\n%s", n, strings.Join(log, "\n"))
	}
}

// TestPushRetrainedAdapter: an adapter retrained with the same shapes, or a local base
// replaced in place by a same-shaped model, is a new merge: a new commit whose shards
// are the new local merge's.
func TestPushRetrainedAdapter(t *testing.T) {
	spec := smallSpec()
	e := newPushEnv(t, spec, 2)
	if code, _, stderr := e.pushLocal(t, "alice/merged"); code != 0 {
		t.Fatal(stderr)
	}
	e.retrain(t, spec, 77, e.base)
	code, stdout, stderr := e.pushLocal(t, "alice/merged")
	if code != 0 || strings.Contains(stdout, "up to date") {
		t.Fatalf("retrained adapter: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.samePublished(t, "alice/merged")

	// The base's sibling (other values, same shapes) written over it in place.
	sib := fixture.Llama(fixture.LlamaSpec{Hidden: spec.Hidden, Intermediate: spec.Intermediate, Layers: spec.Layers, Vocab: spec.Vocab, DType: spec.DType, Seed: spec.Seed + 1})
	sib.Split(2)
	if err := sib.Write(e.base); err != nil {
		t.Fatal(err)
	}
	e.localMerge(t, e.base)
	code, stdout, stderr = e.pushLocal(t, "alice/merged")
	if code != 0 || strings.Contains(stdout, "up to date") {
		t.Fatalf("base replaced: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.samePublished(t, "alice/merged")
	if n := e.h.Stats().Commits["alice/merged@main"]; n != 3 {
		t.Errorf("%d commits, want 3", n)
	}
}

// TestPushInterruptedThenRetrained: a push killed after 2 of 5 shards, the adapter
// changed, the push run again: every published shard is the new adapter's, and
// hfmerge.json lists each base shard's sha256.
func TestPushInterruptedThenRetrained(t *testing.T) {
	spec := fixture.LlamaSpec{Hidden: 256, Intermediate: 512, Layers: 5, Vocab: 1000, DType: safetensors.BF16, Seed: 11}
	e := newPushEnv(t, spec, 5, hubtest.WithMultipartChunkSize(128<<10))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 20 * time.Millisecond, Times: -1})
	e.killAfter(t, 2, "push", "--base", e.base, "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "plain", "--jobs", "1")
	e.h.WaitIdle(context.Background())
	e.retrain(t, spec, 99, e.base)
	if code, _, stderr := e.pushLocal(t, "alice/merged"); code != 0 {
		t.Fatal(stderr)
	}
	e.samePublished(t, "alice/merged")
	var prov hfmerge.Provenance
	b, _ := e.h.File("alice/merged", "main", hfmerge.ProvenanceFile)
	if err := json.Unmarshal(b, &prov); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		name := fixture.ShardName(i, 5)
		data, err := os.ReadFile(filepath.Join(e.base, name))
		if err != nil {
			t.Fatal(err)
		}
		if f := prov.BaseFiles[name]; f.SHA256 != sum(data) || f.Size != int64(len(data)) {
			t.Errorf("hfmerge.json records base shard %s as %+v, want %s", name, f, sum(data))
		}
	}
}

// TestPushOverMoreShards: a 2-shard model pushed over a repo holding a 5-shard one
// leaves exactly the 2 shards and the new index, in one commit.
func TestPushOverMoreShards(t *testing.T) {
	spec := smallSpec()
	e := newPushEnv(t, spec, 2)
	five := filepath.Join(t.TempDir(), "five")
	m := fixture.Llama(spec)
	m.Split(5)
	if err := m.Write(five); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := e.run(t, aliceWrite, "push", "--base", five, "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "plain"); code != 0 {
		t.Fatal(stderr)
	}
	if code, _, stderr := e.pushLocal(t, "alice/merged"); code != 0 {
		t.Fatal(stderr)
	}
	e.samePublished(t, "alice/merged")
	idx, err := e.h.File("alice/merged", "main", "model.safetensors.index.json")
	if err != nil || !bytes.Contains(idx, []byte(fixture.ShardName(1, 2))) || bytes.Contains(idx, []byte("of-00005")) {
		t.Errorf("index: %v\n%s", err, idx)
	}
}

// TestPushKeepsEditedCard: hfmerge replaces its own card, keeps one edited on the Hub
// (and says so), and replaces that one only with --card replace.
func TestPushKeepsEditedCard(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	if code, _, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatal(stderr)
	}
	// hfmerge's own card is replaced by a new push.
	code, _, stderr := e.push(t, aliceWrite, "--dtype", "fp32")
	if code != 0 || strings.Contains(stderr, "keeping the model card") {
		t.Fatalf("own card: exit %d\n%s", code, stderr)
	}
	mine := []byte("---\nlicense: mit\n---\n# My merged model\n\nWritten by hand.\n")
	if _, err := e.h.Seed("alice/merged", map[string][]byte{"README.md": mine}); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = e.push(t, aliceWrite, "--dtype", "fp16")
	if code != 0 || !strings.Contains(stderr, "keeping the model card on the Hub") {
		t.Fatalf("edited card: exit %d\n%s", code, stderr)
	}
	if got, _ := e.h.File("alice/merged", "main", "README.md"); !bytes.Equal(got, mine) {
		t.Errorf("the edited card was overwritten:\n%s", got)
	}
	if cfg, _ := e.h.File("alice/merged", "main", "config.json"); !bytes.Contains(cfg, []byte(`"float16"`)) {
		t.Errorf("the push did not publish the new model: %s", cfg)
	}
	code, _, stderr = e.push(t, aliceWrite, "--card", "replace")
	if code != 0 || !strings.Contains(stderr, "replacing the model card") {
		t.Fatalf("--card replace: exit %d\n%s", code, stderr)
	}
	if got, _ := e.h.File("alice/merged", "main", "README.md"); bytes.Equal(got, mine) || !bytes.Contains(got, []byte("hfmerge")) {
		t.Errorf("--card replace kept the card:\n%s", got)
	}
	if code, _, stderr := e.push(t, aliceWrite, "--card", "sometimes"); code != 2 || !strings.Contains(stderr, "--card") {
		t.Errorf("--card sometimes: exit %d\n%s", code, stderr)
	}
}

// TestPushJournalObjectGone: a journal that records shards as uploaded, then another
// Hub (another endpoint, or the repo deleted and recreated) that lacks them: the rerun
// asks the Hub, sends them again and commits.
func TestPushJournalObjectGone(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithMultipartChunkSize(128<<10))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 20 * time.Millisecond, Times: -1})
	e.killAfter(t, 2, "push", "--base", e.base, "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "plain", "--jobs", "1")
	journals, _ := filepath.Glob(filepath.Join(e.home, "hf", "hfmerge", "journal-*.json"))
	if len(journals) != 1 {
		t.Fatalf("journals: %v", journals)
	}
	if b, _ := os.ReadFile(journals[0]); !bytes.Contains(b, []byte(`"uploaded": true`)) {
		t.Fatalf("the journal records no upload:\n%s", b)
	}
	e.h = hubtest.New(hubtest.WithToken(aliceWrite, "alice", hubtest.ScopeWrite)).Start(t)
	code, stdout, stderr := e.pushLocal(t, "alice/merged")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.samePublished(t, "alice/merged")
	st := e.h.Stats()
	for name, b := range e.shards {
		if st.ObjectUploads[sum(b)] != int64(len(b)) {
			t.Errorf("%s: %d bytes sent to the new Hub, want %d", name, st.ObjectUploads[sum(b)], len(b))
		}
	}
}

// TestPushConcurrent: a second push of the same inputs to the same target while the
// first runs fails at once, saying another push holds it; the first one publishes the
// model as merged locally.
func TestPushConcurrent(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithMultipartChunkSize(128<<10))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 20 * time.Millisecond, Times: -1})
	// The first push's commit waits: it holds the work dir for at least that long after
	// its first shard, whatever the machine's speed, while the second one tries.
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, Delay: 3 * time.Second})
	first := e.cmd(aliceWrite, "push", "--base", e.base, "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "plain")
	stderr, _ := first.StderrPipe()
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var log []string
	second := false
	for sc.Scan() {
		log = append(log, sc.Text())
		if !second && strings.Contains(sc.Text(), "shard ") {
			second = true
			code, _, errOut := e.pushLocal(t, "alice/merged")
			if code != 1 || !strings.Contains(errOut, "another hfmerge is pushing") {
				t.Errorf("second push: exit %d\n%s", code, errOut)
			}
		}
	}
	if err := first.Wait(); err != nil || !second {
		t.Fatalf("first push: %v (second run: %v)\n%s", err, second, strings.Join(log, "\n"))
	}
	e.samePublished(t, "alice/merged")
	if n := e.h.Stats().Commits["alice/merged@main"]; n != 1 {
		t.Errorf("%d commits", n)
	}
}

// TestPushLinksOut: a file of a local base that is a link out of its directory is not
// published (a link inside it is), and the commit description names the local adapter
// by its directory's name only.
func TestPushLinksOut(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	secret := filepath.Join(t.TempDir(), "secret.txt")
	if err := os.WriteFile(secret, []byte("not for the Hub"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(e.base, "LICENSE")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.base, "gen.json"), []byte(`{"do_sample": true}`), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(e.base, "generation_config.json"))
	if err := os.Symlink("gen.json", filepath.Join(e.base, "generation_config.json")); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := e.pushLocal(t, "alice/merged")
	if code != 0 || !strings.Contains(stderr, "a link out of its directory") {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	if b, err := e.h.File("alice/merged", "main", "LICENSE"); err == nil {
		t.Errorf("LICENSE, a link out of the base, was published: %q", b)
	}
	if b, err := e.h.File("alice/merged", "main", "generation_config.json"); err != nil || !bytes.Contains(b, []byte("do_sample")) {
		t.Errorf("generation_config.json, a link inside the base: %v %q", err, b)
	}
	hist, err := e.h.History("alice/merged", "main")
	if err != nil || len(hist) == 0 {
		t.Fatal(err)
	}
	desc := hist[0].Title + "\n" + hist[0].Description
	if strings.Contains(desc, filepath.Dir(e.adapter)) || !strings.Contains(desc, "Adapter: adapter") {
		t.Errorf("commit message names the adapter's path:\n%s", desc)
	}
}

// TestPushNewBranch: --revision naming a missing branch creates it from the default
// branch, as `hf upload --revision` does, and commits there; main does not move.
func TestPushNewBranch(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	code, _, stderr := e.push(t, aliceWrite, "--revision", "dev")
	if code != 0 || !strings.Contains(stderr, "created the branch") {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	main, _ := e.h.Head("alice/merged", "main")
	hist, err := e.h.History("alice/merged", "dev")
	if err != nil || len(hist) < 2 || hist[1].ID != main {
		t.Errorf("dev's history %v does not start at main's head %s (%v)", hist, main, err)
	}
	e.checkPublished(t, "dev")
	if files, _ := e.h.Files("alice/merged", "main"); len(files) > 1 {
		t.Errorf("main moved: %v", files)
	}
}

// TestPushPRTwice: a second --pr run of the same inputs finds the open pull request
// hfmerge opened and opens no other; --private on an existing public repo warns.
func TestPushPRTwice(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	if code, _, stderr := e.push(t, aliceWrite); code != 0 {
		t.Fatal(stderr)
	}
	for i := range 2 {
		code, stdout, stderr := e.push(t, aliceWrite, "--pr", "--dtype", "fp32")
		if code != 0 || (i == 1 && !strings.Contains(stdout, "an open pull request already holds this merge")) {
			t.Fatalf("run %d: exit %d\n%s\n%s", i, code, stdout, stderr)
		}
	}
	if prs := e.h.PullRequests("alice/merged"); len(prs) != 1 {
		t.Errorf("pull requests: %v", prs)
	}
	code, _, stderr := e.push(t, aliceWrite, "--private", "--dtype", "fp16")
	if code != 0 || !strings.Contains(stderr, "the repo exists and is public") {
		t.Errorf("--private on a public repo: exit %d\n%s", code, stderr)
	}
}

// TestKilledRunCacheLeftovers: a merge of a Hub base killed with SIGKILL leaves the
// small files it fetched into the user's HF cache; the next run removes them (and what
// it fetched itself), leaving the cache as it was.
func TestKilledRunCacheLeftovers(t *testing.T) {
	spec := fixture.LlamaSpec{Hidden: 512, Intermediate: 1536, Layers: 8, Vocab: 4000, DType: safetensors.BF16, Seed: 12, Lazy: true}
	e := newPushEnv(t, spec, 8)
	e.h.Fault(hubtest.Fault{Route: hubtest.RouteCDNGet, Delay: 50 * time.Millisecond, Times: -1})
	hubCache := filepath.Join(e.home, "hf", "hub")
	repoDir := filepath.Join(hubCache, "models--alice--base")
	c := e.cmd(aliceWrite, "merge", "--base", "alice/base", "--adapter", e.adapter, "--out", filepath.Join(t.TempDir(), "a"), "--progress", "plain", "--jobs", "1")
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	killed := false
	for sc.Scan() {
		if !killed && strings.Contains(sc.Text(), "shard merged") {
			c.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	c.Wait()
	if !killed {
		t.Fatal("the merge ended before it could be killed")
	}
	left := filesUnder(repoDir)
	if len(left) == 0 {
		t.Fatal("the killed run left nothing in the cache: nothing to test")
	}
	t.Logf("left by the killed run: %v", left)
	code, _, errOut := e.run(t, aliceWrite, "merge", "--base", "alice/base", "--adapter", e.adapter, "--out", filepath.Join(t.TempDir(), "b"), "--progress", "none")
	if code != 0 {
		t.Fatal(errOut)
	}
	if now := filesUnder(repoDir); len(now) != 0 {
		t.Errorf("left in the cache after the rerun: %v", now)
	}
	if _, err := os.Stat(repoDir); err == nil {
		t.Errorf("%s is still there", repoDir)
	}
	if logs, _ := filepath.Glob(filepath.Join(hubCache, ".locks", "hfmerge", "*.log")); len(logs) != 0 {
		t.Errorf("intent logs left: %v", logs)
	}
}
