package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hfmerge/hfmerge"
	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// recordedSHA is the commit id in testdata/webhook/*.json that a test replaces with one
// of the fake Hub's.
const recordedSHA = "575db8b7a51b6f85eb06eee540738584589f131c"

// payload reads a recorded payload, naming commit instead of the recorded one.
func payload(t *testing.T, name, commit string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "webhook", name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), recordedSHA, commit)
}

// seedDir commits every file of dir to repo on the fake Hub.
func (e *pushEnv) seedDir(t *testing.T, repo, dir string) string {
	t.Helper()
	files := map[string][]byte{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if files[en.Name()], err = os.ReadFile(filepath.Join(dir, en.Name())); err != nil {
			t.Fatal(err)
		}
	}
	commit, err := e.h.Seed(repo, files)
	if err != nil {
		t.Fatal(err)
	}
	return commit
}

// webhookPush runs push --from-webhook as a Hub Job started by a webhook would: the
// payload and the repo in the environment, with a Job id and a delivery id.
func (e *pushEnv) webhookPush(t *testing.T, payload, job string, extra ...string) (int, string, string) {
	t.Helper()
	args := append([]string{"push", "--from-webhook", "--base", "alice/base", "--repo", "alice/merged", "--progress", "plain"}, extra...)
	c := e.cmd(aliceWrite, args...)
	c.Env = append(c.Env, "WEBHOOK_PAYLOAD="+payload, "WEBHOOK_REPO_ID=alice/lora", "WEBHOOK_REPO_TYPE=model",
		"WEBHOOK_SECRET=s3cret", "WEBHOOK_ID=delivery-1", "JOB_ID="+job)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	if code := exitCode(err); code >= 0 {
		return code, stdout.String(), stderr.String()
	}
	t.Fatal(err)
	return 0, "", ""
}

// exitCode is a finished command's exit status, or -1 when it did not run.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// TestPushFromWebhook: an adapter repo with two commits and the recorded event of the
// first. push --from-webhook publishes the merge of exactly that commit, not the
// branch head, and records the Job and the delivery; the same delivery again (a new
// Job) moves nothing; events that are not a new commit on main do nothing at all.
func TestPushFromWebhook(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	first := e.seedDir(t, "alice/lora", e.adapter)
	firstShards := e.shards
	e.retrain(t, smallSpec(), 77, e.base)
	second := e.seedDir(t, "alice/lora", e.adapter)
	if head, _ := e.h.Head("alice/lora", "main"); head != second || first == second {
		t.Fatalf("alice/lora: head %s, commits %s then %s", head, first, second)
	}
	for name, b := range e.shards {
		if bytes.Equal(b, firstShards[name]) && strings.Contains(name, "00001") {
			t.Fatalf("the retrained adapter merges to the same %s: the test could not tell the commits apart", name)
		}
	}

	event := payload(t, "commit.json", first)
	code, stdout, stderr := e.webhookPush(t, event, "job-1")
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	for name, want := range firstShards {
		if got, err := e.h.File("alice/merged", "main", name); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not the merge of alice/lora@%s (%v)", name, first[:8], err)
		}
	}
	var prov hfmerge.Provenance
	b, _ := e.h.File("alice/merged", "main", hfmerge.ProvenanceFile)
	if err := json.Unmarshal(b, &prov); err != nil {
		t.Fatal(err)
	}
	if prov.Adapter.Repo != "alice/lora" || prov.Adapter.Commit != first {
		t.Errorf("hfmerge.json's adapter is %+v, want alice/lora at %s (the event's commit; the head is %s)", prov.Adapter, first, second)
	}
	want := hfmerge.Run{Job: "job-1", Webhook: "6390e855e30d9209411de93b", Delivery: "delivery-1", Event: "repo.content update",
		Repo: "alice/lora", Ref: "refs/heads/main", Commit: first}
	if prov.Run == nil || *prov.Run != want {
		t.Errorf("hfmerge.json's run is %+v, want %+v", prov.Run, want)
	}
	if strings.Contains(string(b), "s3cret") {
		t.Error("hfmerge.json holds the webhook secret")
	}

	// The Hub retries the delivery: a new Job, the same payload.
	e.h.ResetStats()
	code, stdout, stderr = e.webhookPush(t, event, "job-2")
	if code != 0 || !strings.Contains(stdout, "up to date") {
		t.Fatalf("retried delivery: exit %d\n%s\n%s", code, stdout, stderr)
	}
	st := e.h.Stats()
	if len(st.Commits) != 0 || st.UploadedBytes != 0 || st.Requests[hubtest.RouteBatch] != 0 || st.Requests[hubtest.RouteCreateRepo] != 0 {
		t.Errorf("the retried delivery wrote to the Hub: commits %v, %d bytes uploaded, %d batch calls, %d repo creations",
			st.Commits, st.UploadedBytes, st.Requests[hubtest.RouteBatch], st.Requests[hubtest.RouteCreateRepo])
	}
	if b2, _ := e.h.File("alice/merged", "main", hfmerge.ProvenanceFile); !bytes.Equal(b, b2) {
		t.Error("hfmerge.json changed")
	}

	head, _ := e.h.Head("alice/merged", "main")
	for _, c := range []struct{ name, payload, why string }{
		{"pull request", payload(t, "discussion.json", second), "discussion create"},
		{"tag", payload(t, "tag.json", second), "moved refs/tags/v1"},
		{"own commit", strings.ReplaceAll(payload(t, "commit.json", second), "alice/lora", "alice/merged"), "the repo this push publishes to"},
	} {
		e.h.ResetStats()
		c2 := e.cmd(aliceWrite, "push", "--from-webhook", "--base", "alice/base", "--repo", "alice/merged", "--progress", "plain")
		c2.Env = append(c2.Env, "WEBHOOK_PAYLOAD="+c.payload)
		out, err := c2.Output()
		if err != nil {
			t.Errorf("%s: %v\n%s", c.name, err, out)
			continue
		}
		if !strings.Contains(string(out), "nothing to do") || !strings.Contains(string(out), c.why) {
			t.Errorf("%s: stdout does not say why nothing was done (%q): %s", c.name, c.why, out)
		}
		if n := len(e.h.Requests()); n != 0 {
			t.Errorf("%s: %d requests reached the Hub", c.name, n)
		}
	}
	if now, _ := e.h.Head("alice/merged", "main"); now != head {
		t.Error("alice/merged moved")
	}
}

// TestPushFromWebhookFile: outside a Job the payload comes from a file or stdin, and
// the event's repo must be a source of the push or the push does nothing; a bad
// payload is a usage error naming the field.
func TestPushFromWebhookFile(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	first := e.seedDir(t, "alice/lora", e.adapter)
	file := filepath.Join(t.TempDir(), "event.json")
	if err := os.WriteFile(file, []byte(payload(t, "commit.json", first)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := e.run(t, aliceWrite, "push", "--webhook-payload", file, "--base", "alice/base", "--adapter", "alice/other", "--repo", "alice/merged")
	if code != 0 || !strings.Contains(stdout, "neither --base nor an --adapter") {
		t.Errorf("another adapter: exit %d\n%s\n%s", code, stdout, stderr)
	}
	c := e.cmd(aliceWrite, "push", "--webhook-payload", "-", "--base", "alice/base", "--adapter", "alice/lora", "--repo", "alice/merged", "--progress", "plain")
	c.Stdin = strings.NewReader(payload(t, "commit.json", first))
	if out, err := c.CombinedOutput(); err != nil || !strings.Contains(string(out), "committed") {
		t.Errorf("payload on stdin: %v\n%s", err, out)
	}
	if err := os.WriteFile(file, []byte(strings.Replace(payload(t, "commit.json", first), `"newSha": "`+first, `"newSha": "main`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = e.run(t, aliceWrite, "push", "--webhook-payload", file, "--base", "alice/base", "--repo", "alice/merged")
	if code != 2 || !strings.Contains(stderr, "updatedRefs[0].newSha") {
		t.Errorf("bad payload: exit %d\n%s", code, stderr)
	}
	c = e.cmd(aliceWrite, "push", "--from-webhook", "--base", "alice/base", "--repo", "alice/merged")
	c.Env = append(c.Env, "JOB_ID=", "WEBHOOK_PAYLOAD=")
	if out, err := c.CombinedOutput(); exitCode(err) != 2 || !strings.Contains(string(out), "WEBHOOK_PAYLOAD") {
		t.Errorf("no payload: %v\n%s", err, out)
	}
	// In a Job (JOB_ID set) with no event: the run by hand that a webhook's Job copies.
	c = e.cmd(aliceWrite, "push", "--from-webhook", "--base", "alice/base", "--repo", "alice/merged")
	c.Env = append(c.Env, "JOB_ID=job-0", "WEBHOOK_PAYLOAD=")
	if out, err := c.Output(); err != nil || !strings.Contains(string(out), "not started by a webhook") {
		t.Errorf("a Job with no event: %v\n%s", err, out)
	}
}

// TestShardsFromWebhook: a push split across machines for one webhook event (a CI
// matrix fed the payload): each share and the commit read the same event, so all merge
// the event's commit, not the adapter's head, and hfmerge.json records the event.
func TestShardsFromWebhook(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 3)
	first := e.seedDir(t, "alice/lora", e.adapter)
	firstShards := e.shards
	e.retrain(t, smallSpec(), 77, e.base)
	e.seedDir(t, "alice/lora", e.adapter)
	file := filepath.Join(t.TempDir(), "event.json")
	if err := os.WriteFile(file, []byte(payload(t, "commit.json", first)), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--webhook-payload", file, "--base", "alice/base", "--repo", "alice/merged", "--progress", "plain"}
	for _, share := range []string{"1/2", "2/2"} {
		if code, stdout, stderr := e.run(t, aliceWrite, append([]string{"push", "--shards", share}, args...)...); code != 0 {
			t.Fatalf("share %s: exit %d\n%s\n%s", share, code, stdout, stderr)
		}
	}
	code, stdout, stderr := e.run(t, aliceWrite, append([]string{"commit"}, args...)...)
	if code != 0 || !strings.Contains(stdout, "committed") {
		t.Fatalf("commit: exit %d\n%s\n%s", code, stdout, stderr)
	}
	for name, want := range firstShards {
		if got, err := e.h.File("alice/merged", "main", name); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not the merge of alice/lora@%s (%v)", name, first[:8], err)
		}
	}
	var prov hfmerge.Provenance
	b, _ := e.h.File("alice/merged", "main", hfmerge.ProvenanceFile)
	if err := json.Unmarshal(b, &prov); err != nil {
		t.Fatal(err)
	}
	if prov.Adapter.Commit != first || prov.Run == nil || prov.Run.Commit != first || prov.Run.Webhook == "" {
		t.Errorf("hfmerge.json: adapter %+v, run %+v; want the event's commit %s", prov.Adapter, prov.Run, first)
	}
	// An event that is not a new commit: commit does nothing either, and says why.
	tag := filepath.Join(t.TempDir(), "tag.json")
	os.WriteFile(tag, []byte(payload(t, "tag.json", first)), 0o644)
	code, stdout, _ = e.run(t, aliceWrite, "commit", "--webhook-payload", tag, "--base", "alice/base", "--repo", "alice/merged")
	if code != 0 || !strings.Contains(stdout, "nothing to do") {
		t.Errorf("commit for a tag event: exit %d\n%s", code, stdout)
	}
}

// TestPushFromWebhookOutOfOrder: the event of the adapter's second commit is handled
// first and publishes it; the event of the first commit, delivered after (a retry, a
// replay, or out of order), finds the branch moved on to a commit the target already
// holds the merge of, and does nothing, saying so: the older merge is not published
// over the newer.
func TestPushFromWebhookOutOfOrder(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	first := e.seedDir(t, "alice/lora", e.adapter)
	e.retrain(t, smallSpec(), 77, e.base)
	second := e.seedDir(t, "alice/lora", e.adapter)
	secondShards := e.shards
	if code, stdout, stderr := e.webhookPush(t, payload(t, "commit.json", second), "job-2"); code != 0 || !strings.Contains(stdout, "committed") {
		t.Fatalf("the second commit's event: exit %d\n%s\n%s", code, stdout, stderr)
	}
	head, _ := e.h.Head("alice/merged", "main")
	e.h.ResetStats()
	code, stdout, stderr := e.webhookPush(t, payload(t, "commit.json", first), "job-1")
	if code != 0 || !strings.Contains(stdout, "nothing to do") || !strings.Contains(stdout, "older than what is published") {
		t.Errorf("the first commit's event, late: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if now, _ := e.h.Head("alice/merged", "main"); now != head {
		t.Error("the late event moved alice/merged")
	}
	if st := e.h.Stats(); len(st.Commits) != 0 || st.UploadedBytes != 0 {
		t.Errorf("the late event made commits %v and sent %d bytes", st.Commits, st.UploadedBytes)
	}
	for name, want := range secondShards {
		if got, err := e.h.File("alice/merged", "main", name); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not the merge of the second commit (%v)", name, err)
		}
	}
}
