package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIHygiene, through the binary: an unknown command or flag is one error line and a
// hint on stderr, with "did you mean", and nothing on stdout; --version; completion
// scripts and the man page from the flag definitions; sizes that are not sizes.
func TestCLIHygiene(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 2)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"pussh"}, `"push"`},
		{[]string{"plan", "--bse", "x"}, "--base"},
		{[]string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/m", "--disk-budget", "NaN"}, "--disk-budget"},
		{[]string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/m", "--disk-budget", "Inf"}, "--disk-budget"},
		{[]string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/m", "--disk-budget", "1e30"}, "--disk-budget"},
		{[]string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/m", "--card", "never"}, "--card"},
		{[]string{"push", "--base", "alice/base", "--adapter", e.adapter}, "--repo is required"},
		{[]string{"push", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/m@dev"}, "give the branch with --revision"},
		{[]string{"commit", "--base", "alice/base", "--adapter", e.adapter, "--repo", "alice/m@dev"}, "give the branch with --revision"},
		{[]string{"verify", "--base", "alice/base", "--adapter", e.adapter}, "--merged is required"},
		{[]string{"verify", "--base", "alice/base", "--adapter", e.adapter, "--merged", "no-owner"}, "--merged: "},
	} {
		code, stdout, stderr := e.run(t, aliceWrite, c.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || stdout != "" || len(lines) > 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr:\n%s", c.args, code, stdout, stderr)
		}
	}
	// With --log-format json, a flag the parser refuses (before or after the format) is
	// the run's one JSON record, with its exit status.
	for _, args := range [][]string{
		{"plan", "--log-format", "json", "--bse", "x"},
		{"plan", "--bse", "x", "--log-format=json"},
	} {
		code, stdout, stderr := e.run(t, "", args...)
		var rec struct {
			Level      string `json:"level"`
			Error      string `json:"error"`
			ExitStatus int    `json:"exit_status"`
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || stdout != "" || len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &rec) != nil ||
			rec.Level != "ERROR" || rec.ExitStatus != 2 || !strings.Contains(rec.Error, "--base") {
			t.Errorf("%v: exit %d, stdout %q, stderr:\n%s", args, code, stdout, stderr)
		}
	}
	if code, stdout, _ := e.run(t, "", "--version"); code != 0 || !strings.HasPrefix(stdout, "hfmerge version ") {
		t.Errorf("--version: %d %q", code, stdout)
	}
	for _, shell := range []string{"bash", "zsh", "fish", "man"} {
		code, stdout, stderr := e.run(t, "", "completion", shell)
		if code != 0 || !strings.Contains(stdout, "hfmerge") || (shell != "bash" && shell != "zsh" && !strings.Contains(stdout, "disk-budget")) {
			t.Errorf("completion %s: exit %d, %d bytes\n%s", shell, code, len(stdout), stderr)
		}
	}
}

// TestMergeOutNotEmpty: merge refuses a --out that holds files unless --force, so that
// old and new shards never mix, and writes hfmerge.json beside the model.
func TestMergeOutNotEmpty(t *testing.T) {
	base, adapter := inputs(t, nil)
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "model-00001-of-00005.safetensors"), []byte("old"), 0o644)
	code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--progress", "none")
	if code != 2 || !strings.Contains(stderr, "--force") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--out", out, "--progress", "none", "--force"); code != 0 {
		t.Fatalf("--force: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "model-00001-of-00005.safetensors")); err == nil {
		t.Errorf("the earlier model's shard is still there beside the new ones")
	}
	for _, name := range []string{"model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Errorf("the new model lacks %s", name)
		}
	}
	if b, err := os.ReadFile(filepath.Join(out, "hfmerge.json")); err != nil || !strings.Contains(string(b), `"inputs"`) {
		t.Errorf("hfmerge.json: %v %s", err, b)
	}
}
