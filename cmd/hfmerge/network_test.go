package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// TestHubDownFallsBack: with the Hub out of reach, a base the HF cache holds whole is
// merged from the cache, and the run says so; a base the cache lacks fails with a
// message suggesting --offline.
func TestHubDownFallsBack(t *testing.T) {
	h, base, adapter, _ := hubBase(t)
	local := filepath.Join(t.TempDir(), "local")
	if code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", local, "--progress", "none"); code != 0 {
		t.Fatal(stderr)
	}
	if code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", filepath.Join(t.TempDir(), "first"), "--keep-base", "--progress", "none"); code != 0 {
		t.Fatal(stderr)
	}
	h.Close() // connections are refused from now on
	t.Setenv("HFMERGE_HUB_RETRIES", "1")
	out := filepath.Join(t.TempDir(), "fallback")
	code, _, stderr := runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", out, "--progress", "none")
	if code != 0 || !strings.Contains(stderr, "the Hub cannot be reached; using the HF cache's copy") {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	sameModel(t, local, out)

	t.Setenv("HF_HUB_CACHE", t.TempDir())
	code, _, stderr = runBin(t, "merge", "--base", "alice/base", "--adapter", adapter, "--out", filepath.Join(t.TempDir(), "x"), "--progress", "none")
	if code != 1 || !strings.Contains(stderr, "not in the HF cache") || !strings.Contains(stderr, "--offline") {
		t.Errorf("nothing cached: exit %d\n%s", code, stderr)
	}
}

// TestHubHangs: a Hub that accepts connections and never answers makes plan and push
// fail within the limits set (HF_HUB_ETAG_TIMEOUT=1, one retry: about 3 s; with the
// defaults about 83 s, as the README says), with a message naming the host.
func TestHubHangs(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	e.h.Fault(hubtest.Fault{Hang: true, Times: -1})
	host := strings.TrimPrefix(e.h.URL(), "http://")
	for _, args := range [][]string{
		{"plan", "--base", "alice/base", "--adapter", e.adapter},
		{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/merged", "--progress", "plain"},
	} {
		c := e.cmd(aliceWrite, args...)
		c.Env = append(c.Env, "HF_HUB_ETAG_TIMEOUT=1", "HFMERGE_HUB_RETRIES=1")
		start := time.Now()
		out, err := c.CombinedOutput()
		took := time.Since(start)
		if err == nil || !strings.Contains(string(out), host) {
			t.Errorf("%s: %v\n%s", args[0], err, out)
		}
		if took > 30*time.Second {
			t.Errorf("%s took %v to fail", args[0], took)
		}
		t.Logf("%s failed after %v: %s", args[0], took.Round(100*time.Millisecond), lastLine(string(out)))
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
