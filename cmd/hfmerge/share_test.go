package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub"
	"github.com/hfmerge/hfmerge/hub/hubtest"
	"github.com/hfmerge/hfmerge/upload"
)

// worker is one machine of a sharded push: its own HOME, HF_HOME and TMPDIR, so
// nothing is shared but the Hub.
func (e *pushEnv) worker(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	for _, d := range []string{"home", "hf", "tmp"} {
		os.MkdirAll(filepath.Join(home, d), 0o755)
	}
	return home
}

// on is e.cmd run on the machine whose home is home.
func (e *pushEnv) on(home string, args ...string) *exec.Cmd {
	c := exec.Command(e.bin, args...)
	c.Env = append(os.Environ(), "HF_ENDPOINT="+e.h.URL(), "HF_TOKEN="+aliceWrite, "HF_HUB_OFFLINE=",
		"HOME="+filepath.Join(home, "home"), "HF_HOME="+filepath.Join(home, "hf"),
		"HF_HUB_CACHE="+filepath.Join(home, "hf", "hub"), "TMPDIR="+filepath.Join(home, "tmp"))
	return c
}

func (e *pushEnv) shareArgs(repo, share string) []string {
	return []string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", repo, "--progress", "plain", "--shards", share}
}

func (e *pushEnv) commitArgs(repo string, extra ...string) []string {
	return append([]string{"commit", "--base", "alice/base", "--adapter", e.adapter, "--repo", repo, "--progress", "plain"}, extra...)
}

// runOn runs a command on a machine and returns its exit status and output.
func runOn(t *testing.T, c *exec.Cmd) (int, string, string) {
	t.Helper()
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

// tree is a repo's files at a revision: path → (git oid, sha256, size, LFS).
func tree(t *testing.T, h *hubtest.Hub, repo, rev string) map[string]hubtest.FileInfo {
	t.Helper()
	files, err := h.Files(repo, rev)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]hubtest.FileInfo{}
	for _, f := range files {
		out[f.Path] = f
	}
	return out
}

// scratchBranch finds the one hfmerge/ branch a repo has, "" if none.
func scratchBranch(t *testing.T, h *hubtest.Hub, repo, run string) string {
	t.Helper()
	b := hfmerge.ScratchBranch(run)
	if _, ok := h.Head(repo, b); ok {
		return b
	}
	return ""
}

// runID reads the run id from a share's output ("recorded on alice/merged@hfmerge/<id>").
func runID(t *testing.T, stdout string) string {
	t.Helper()
	_, rest, ok := strings.Cut(stdout, "@hfmerge/")
	if !ok {
		t.Fatalf("no scratch branch in the share's output: %s", stdout)
	}
	return strings.TrimRight(strings.Fields(rest)[0], ";")
}

// manifestOf reads a share's record from the scratch branch.
func manifestOf(t *testing.T, h *hubtest.Hub, repo, run, share string) (names []string) {
	t.Helper()
	b, err := h.File(repo, hfmerge.ScratchBranch(run), "shares/"+strings.Replace(share, "/", "-of-", 1)+".json")
	if err != nil {
		t.Fatalf("share %s's record: %v", share, err)
	}
	var m struct {
		Shards []struct{ Name string } `json:"shards"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Shards {
		names = append(names, s.Name)
	}
	return names
}

// TestShardsParallel: three `push --shards i/3` processes on three machines (no disk
// shared), started together, then `commit`: exactly one commit on main, whose tree is
// byte for byte that of a single-machine push of the same inputs (on another fake Hub
// with the same clock, so that the base's commit id, which hfmerge.json records, is
// the same); the scratch branch is gone; commit and a share again are no-ops.
func TestShardsParallel(t *testing.T) {
	frozen := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := hubtest.WithClock(func() time.Time { return frozen })
	e := newPushEnv(t, smallSpec(), 5, clock, hubtest.WithMultipartChunkSize(512<<10))
	if code, stdout, stderr := e.pushTo(t, "alice/merged"); code != 0 {
		t.Fatalf("single-machine push: exit %d\n%s\n%s", code, stdout, stderr)
	}
	single := e.h
	want := tree(t, single, "alice/merged", "main")
	baseHead, _ := single.Head("alice/base", "main")

	e.reseed(t, clock, hubtest.WithMultipartChunkSize(512<<10))
	if h, _ := e.h.Head("alice/base", "main"); h != baseHead {
		t.Fatalf("the two fake Hubs give alice/base two commit ids (%s, %s): the comparison below needs one", h, baseHead)
	}
	onHub := map[string]bool{} // the base's objects: a shard whose bytes are the base's is not sent
	for _, oid := range e.h.Objects() {
		onHub[oid] = true
	}
	var wg sync.WaitGroup
	outs := make([]string, 3)
	for i, share := range []string{"1/3", "2/3", "3/3"} {
		home := e.worker(t)
		wg.Go(func() {
			code, stdout, stderr := runOn(t, e.on(home, e.shareArgs("alice/merged", share)...))
			if code != 0 || !strings.Contains(stdout, "share "+share) {
				t.Errorf("share %s: exit %d\n%s\n%s", share, code, stdout, stderr)
			}
			outs[i] = stdout
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	run := runID(t, outs[0])
	st := e.h.Stats()
	if n := st.Commits["alice/merged@main"]; n != 0 {
		t.Fatalf("the shares made %d commits on main, want none", n)
	}
	if n := st.Commits["alice/merged@"+hfmerge.ScratchBranch(run)]; n != 3 {
		t.Errorf("%d commits on the scratch branch, want one per share (3): %v", n, st.Commits)
	}
	var all []string
	for _, share := range []string{"1/3", "2/3", "3/3"} {
		names := manifestOf(t, e.h, "alice/merged", run, share)
		if len(names) == 0 {
			t.Errorf("share %s recorded no shard (5 shards in 3 shares)", share)
		}
		all = append(all, names...)
	}
	slices.Sort(all)
	if len(all) != len(e.shards) || len(slices.Compact(slices.Clone(all))) != len(all) {
		t.Errorf("the shares recorded %v; want each of the %d shards once", all, len(e.shards))
	}
	// Each share uploaded its own shards only: every shard once.
	for name, data := range e.shards {
		want := int64(len(data))
		if onHub[sum(data)] {
			want = 0
		}
		if n := st.ObjectUploads[sum(data)]; n != want {
			t.Errorf("%s: the Hub received %d bytes of it, want %d", name, n, want)
		}
	}

	home := e.worker(t)
	code, stdout, stderr := runOn(t, e.on(home, e.commitArgs("alice/merged", "--run", run)...))
	if code != 0 || !strings.Contains(stdout, "committed") {
		t.Fatalf("commit: exit %d\n%s\n%s", code, stdout, stderr)
	}
	st = e.h.Stats()
	if n := st.Commits["alice/merged@main"]; n != 1 {
		t.Errorf("%d commits on main, want exactly 1", n)
	}
	if b := scratchBranch(t, e.h, "alice/merged", run); b != "" {
		t.Errorf("the scratch branch %s is still there", b)
	}
	got := tree(t, e.h, "alice/merged", "main")
	for path, w := range want {
		g, ok := got[path]
		switch {
		case !ok:
			t.Errorf("%s: missing after the sharded push", path)
		case g != w:
			t.Errorf("%s: %+v after the sharded push, %+v after the single-machine push", path, g, w)
		}
	}
	for path := range got {
		if _, ok := want[path]; !ok {
			t.Errorf("%s: only after the sharded push", path)
		}
	}
	a, _ := single.File("alice/merged", "main", hfmerge.ProvenanceFile)
	b, _ := e.h.File("alice/merged", "main", hfmerge.ProvenanceFile)
	if !bytes.Equal(a, b) {
		t.Errorf("hfmerge.json differs:\nsingle machine:\n%s\nsharded:\n%s", a, b)
	}
	e.checkPublishedTo(t, "alice/merged", "main")

	// Again: the target holds the merge; nothing is committed or sent.
	e.h.ResetStats()
	code, stdout, stderr = runOn(t, e.on(home, e.commitArgs("alice/merged")...))
	if code != 0 || !strings.Contains(stdout, "up to date") {
		t.Errorf("commit again: exit %d\n%s\n%s", code, stdout, stderr)
	}
	code, stdout, stderr = runOn(t, e.on(home, e.shareArgs("alice/merged", "2/3")...))
	if code != 0 || !strings.Contains(stdout, "up to date") {
		t.Errorf("share 2/3 again: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.h.WaitIdle(context.Background())
	if st := e.h.Stats(); len(st.Commits) != 0 || st.UploadedBytes != 0 {
		t.Errorf("the reruns made commits %v and sent %d bytes", st.Commits, st.UploadedBytes)
	}
}

// TestShardsMissingAndKilled: commit refuses while shares are missing, naming the
// shards and the shares that should upload them; a share killed (SIGKILL) after it
// uploaded a shard, rerun on its machine, sends nothing the Hub had; then the shares
// all up, commit publishes once.
func TestShardsMissingAndKilled(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 9, hubtest.WithMultipartChunkSize(256<<10))
	repo := "alice/merged"
	home := e.worker(t)
	code, stdout, stderr := runOn(t, e.on(home, e.commitArgs(repo)...))
	if code != 4 || !strings.Contains(stderr, "no share of this run is on the Hub") || !strings.Contains(stderr, "push --shards") {
		t.Errorf("commit before any share: exit %d\n%s\n%s", code, stdout, stderr)
	}

	code, stdout, stderr = runOn(t, e.on(e.worker(t), e.shareArgs(repo, "2/3")...))
	if code != 0 {
		t.Fatalf("share 2/3: exit %d\n%s\n%s", code, stdout, stderr)
	}
	run := runID(t, stdout)
	two := manifestOf(t, e.h, repo, run, "2/3")
	code, stdout, stderr = runOn(t, e.on(home, e.commitArgs(repo)...))
	if code != 4 || !strings.Contains(stderr, "missing") {
		t.Fatalf("commit with share 2/3 only: exit %d\n%s\n%s", code, stdout, stderr)
	}
	for name := range e.shards {
		named := strings.Contains(stderr, name)
		if slices.Contains(two, name) == named {
			t.Errorf("%s (in share 2/3: %v) named missing: %v\n%s", name, slices.Contains(two, name), named, stderr)
		}
	}
	for _, s := range []string{"push --shards 1/3 should upload", "push --shards 3/3 should upload"} {
		if !strings.Contains(stderr, s) {
			t.Errorf("the refusal does not say %q:\n%s", s, stderr)
		}
	}
	if strings.Contains(stderr, "--shards 2/3 should") {
		t.Errorf("the refusal asks share 2/3 again:\n%s", stderr)
	}
	if n := e.h.Stats().Commits[repo+"@main"]; n != 0 {
		t.Fatalf("%d commits on main before every share is up", n)
	}
	// Share 2/3 again, on another machine (no journal): its record is on the branch
	// and the Hub has its shards, so nothing is merged, sent or committed.
	e.h.ResetStats()
	code, stdout, stderr = runOn(t, e.on(e.worker(t), e.shareArgs(repo, "2/3")...))
	if code != 0 || !strings.Contains(stdout, "share 2/3 is recorded") {
		t.Errorf("share 2/3 again: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.h.WaitIdle(context.Background())
	st := e.h.Stats()
	if len(st.Commits) != 0 || st.UploadedBytes != 0 {
		t.Errorf("share 2/3 again made commits %v and sent %d bytes", st.Commits, st.UploadedBytes)
	}
	// The plan reads the base's headers by range; no base shard is read whole.
	baseTree := tree(t, e.h, "alice/base", "main")
	entries, _ := os.ReadDir(e.base)
	for _, en := range entries {
		if strings.HasSuffix(en.Name(), ".safetensors") && !baseTree[en.Name()].LFS {
			t.Fatalf("base %s is not in LFS on the fake Hub: FileBytes would not count it by sha256", en.Name())
		}
		if b, _ := os.ReadFile(filepath.Join(e.base, en.Name())); strings.HasSuffix(en.Name(), ".safetensors") && st.FileBytes[sum(b)] >= int64(len(b)) {
			t.Errorf("share 2/3 again downloaded the whole of base %s", en.Name())
		}
	}

	// Share 1/3, killed once its first shard is uploaded; given by its 0-based index
	// as a Kubernetes Indexed Job does, and rerun as --shards 1/3: the same share.
	one := e.worker(t)
	pre := map[string]bool{}
	for _, oid := range e.h.Objects() {
		pre[oid] = true
	}
	e.slow()
	c := e.on(one, "push", "--base", "alice/base", "--adapter", e.adapter, "--repo", repo, "--progress", "plain", "--shard-index", "0/3")
	pipe, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		if !killed && strings.Contains(sc.Text(), "shard uploaded") {
			c.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	c.Wait()
	if !killed {
		t.Fatal("share 1/3 ended before it uploaded a shard")
	}
	e.h.WaitIdle(context.Background())
	e.h.ClearFaults()
	had := map[string]bool{}
	for _, oid := range e.h.Objects() {
		had[oid] = true
	}
	e.h.ResetStats()
	code, stdout, stderr = runOn(t, e.on(one, e.shareArgs(repo, "1/3")...))
	if code != 0 {
		t.Fatalf("share 1/3 rerun: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.h.WaitIdle(context.Background())
	st = e.h.Stats()
	resumed := 0
	for _, name := range manifestOf(t, e.h, repo, run, "1/3") {
		oid := sum(e.shards[name])
		switch {
		case had[oid] && !pre[oid]:
			resumed++
			if n := st.ObjectUploads[oid]; n != 0 {
				t.Errorf("the rerun sent %s (%s) again, %d bytes: the killed run had uploaded it", name, oid[:12], n)
			}
		case !had[oid]:
			if n := st.ObjectUploads[oid]; n != int64(len(e.shards[name])) {
				t.Errorf("the rerun sent %d bytes of %s, which the Hub lacked; want its %d", n, name, len(e.shards[name]))
			}
		}
		t.Logf("share 1/3: %s: the base's bytes %v, uploaded by the killed run %v, bytes sent by the rerun %d", name, pre[oid], had[oid] && !pre[oid], st.ObjectUploads[oid])
	}
	if resumed == 0 {
		t.Error("the killed share had uploaded none of its shards: the rerun proves nothing")
	}
	for oid, n := range st.ObjectUploads {
		if had[oid] && n > 0 {
			t.Errorf("the rerun sent %s again (%d bytes)", oid[:12], n)
		}
	}

	if code, stdout, stderr = runOn(t, e.on(e.worker(t), e.shareArgs(repo, "3/3")...)); code != 0 {
		t.Fatalf("share 3/3: exit %d\n%s\n%s", code, stdout, stderr)
	}
	e.h.ResetStats()
	if code, stdout, stderr = runOn(t, e.on(home, e.commitArgs(repo)...)); code != 0 {
		t.Fatalf("commit: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if n := e.h.Stats().Commits[repo+"@main"]; n != 1 {
		t.Errorf("%d commits on main, want 1", n)
	}
	e.checkPublishedTo(t, repo, "main")
	if b := scratchBranch(t, e.h, repo, run); b != "" {
		t.Errorf("the scratch branch %s is still there", b)
	}
	t.Logf("killed share 1/3 after %d of its shards were on the Hub; the rerun sent %d bytes", resumed, st.UploadedBytes)
}

// TestShardsXet: shares uploaded through Xet storage are recorded by sha256 and size,
// which is all the final commit names; it publishes the local merge's bytes.
func TestShardsXet(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithXet())
	repo := "alice/merged"
	var wg sync.WaitGroup
	outs := make([]string, 2)
	for i, share := range []string{"1/2", "2/2"} {
		home := e.worker(t)
		wg.Go(func() {
			code, stdout, stderr := runOn(t, e.on(home, append(e.shareArgs(repo, share), "--xet", "on")...))
			if code != 0 {
				t.Errorf("share %s: exit %d\n%s\n%s", share, code, stdout, stderr)
			}
			outs[i] = stdout
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	run := runID(t, outs[0])
	if xs := e.h.XetStats(); xs.XorbBytes == 0 {
		t.Errorf("no xorb was posted: %+v", xs)
	}
	for _, share := range []string{"1/2", "2/2"} {
		b, err := e.h.File(repo, hfmerge.ScratchBranch(run), "shares/"+strings.Replace(share, "/", "-of-", 1)+".json")
		if err != nil || !bytes.Contains(b, []byte(`"transfer": "xet"`)) {
			t.Errorf("share %s's record (%v):\n%s", share, err, b)
		}
	}
	code, stdout, stderr := runOn(t, e.on(e.worker(t), e.commitArgs(repo)...))
	if code != 0 {
		t.Fatalf("commit: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if n := e.h.Stats().Commits[repo+"@main"]; n != 1 {
		t.Errorf("%d commits on main, want 1", n)
	}
	e.checkPublishedTo(t, repo, "main")
}

// TestShardsBadRecord: a share's commit overtaken by another's is made again; commit checks every share's record against the plan and the
// Hub, and refuses, naming the share and the shard, a record of the wrong size, one
// naming an object the Hub does not have, and two records that disagree.
func TestShardsBadRecord(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	repo := "alice/merged"
	// The share's commit is overtaken once (412, as when another share commits to the
	// branch first): it is made again on the new head.
	overtaken := e.h.Fault(hubtest.Fault{Route: hubtest.RouteCommit, Status: 412})
	code, stdout, stderr := runOn(t, e.on(e.worker(t), e.shareArgs(repo, "1/1")...))
	if code != 0 {
		t.Fatalf("share 1/1: exit %d\n%s\n%s", code, stdout, stderr)
	}
	run := runID(t, stdout)
	branch := hfmerge.ScratchBranch(run)
	if n := e.h.Stats().Commits[repo+"@"+branch]; overtaken.Fired() != 1 || n != 1 {
		t.Errorf("the 412 fired %d times; %d commits on the scratch branch, want 1", overtaken.Fired(), n)
	}
	good, err := e.h.File(repo, branch, "shares/1-of-1.json")
	if err != nil {
		t.Fatal(err)
	}
	c, err := hub.New(hub.Options{Endpoint: e.h.URL(), Token: aliceWrite})
	if err != nil {
		t.Fatal(err)
	}
	tg := &upload.Target{Client: c, Repo: hub.Repo{Type: "model", ID: repo}, Branch: branch}
	put := func(files map[string][]byte) {
		t.Helper()
		cm := upload.Commit{Summary: "tamper"}
		for p, b := range files {
			cm.Files = append(cm.Files, hub.CommitFile{Path: p, Content: b})
		}
		cm.Marker, cm.Files = cm.Files[0], cm.Files[1:]
		if _, err := tg.Commit(context.Background(), cm); err != nil {
			t.Fatal(err)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(good, &m); err != nil {
		t.Fatal(err)
	}
	shard := m["shards"].([]any)[0].(map[string]any)
	name, size := shard["name"].(string), shard["size"].(float64)
	edit := func(f func(s map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m["shards"].([]any)[0].(map[string]any))
		b, _ := json.Marshal(m)
		return b
	}
	other := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		what  string
		files map[string][]byte
		want  string
	}{
		{"wrong size", map[string][]byte{"shares/1-of-1.json": edit(func(s map[string]any) { s["size"] = size + 1 })},
			"share 1/1 recorded " + name + " as"},
		{"object not on the Hub", map[string][]byte{"shares/1-of-1.json": edit(func(s map[string]any) { s["sha256"] = other })},
			"the Hub does not have it: run push --shards 1/1 again"},
		{"two records disagree", map[string][]byte{"shares/1-of-1.json": good, "shares/1-of-2.json": edit(func(s map[string]any) { s["sha256"] = other })},
			"recorded " + name + " with two sha256s"},
	} {
		put(tc.files)
		code, stdout, stderr := runOn(t, e.on(e.worker(t), e.commitArgs(repo)...))
		if code == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, want a refusal saying %q\n%s\n%s", tc.what, code, tc.want, stdout, stderr)
		}
	}
	if n := e.h.Stats().Commits[repo+"@main"]; n != 0 {
		t.Errorf("%d commits on main from refused records", n)
	}
}
