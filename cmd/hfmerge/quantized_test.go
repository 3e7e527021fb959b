package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuantizedOnPlainBase: --quantized keep or mixed on a base without
// quantization_config is a usage error naming the flag, from merge and from plan, and
// writes nothing; --quantized bf16 (the default) merges it as usual.
func TestQuantizedOnPlainBase(t *testing.T) {
	base, adapter := inputs(t, nil)
	for _, mode := range []string{"keep", "mixed"} {
		for _, cmd := range []string{"merge", "plan"} {
			out := filepath.Join(t.TempDir(), "out")
			args := []string{cmd, "--base", base, "--adapter", adapter, "--quantized", mode}
			if cmd == "merge" {
				args = append(args, "--out", out, "--progress", "none")
			}
			code, stdout, stderr := runBin(t, args...)
			if code != exitUsage {
				t.Errorf("%s --quantized %s: exit status %d, want %d; stdout:\n%s\nstderr:\n%s", cmd, mode, code, exitUsage, stdout, stderr)
			}
			for _, w := range []string{"--quantized " + mode, "no quantization_config", base} {
				if !strings.Contains(stderr, w) {
					t.Errorf("%s --quantized %s: stderr does not mention %q:\n%s", cmd, mode, w, stderr)
				}
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("%s --quantized %s: %s exists", cmd, mode, out)
			}
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	if code, _, stderr := runBin(t, "merge", "--base", base, "--adapter", adapter, "--quantized", "bf16", "--out", out, "--progress", "none"); code != 0 {
		t.Fatalf("--quantized bf16 on a BF16 base: exit status %d:\n%s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "config.json")); err != nil {
		t.Errorf("--quantized bf16 wrote no model: %v", err)
	}
}
