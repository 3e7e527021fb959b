package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hfmerge/hfmerge/internal/fixture"
	"github.com/hfmerge/hfmerge/safetensors"
)

// buildBinary builds hfmerge into a temp dir, as users run it.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hfmerge")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestInterrupt sends SIGINT to a real hfmerge process after its first shard is merged:
// it must exit with status 130 and leave no merged shard and no staging directory.
func TestInterrupt(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	m := fixture.Llama(fixture.LlamaSpec{Hidden: 1024, Intermediate: 2816, Layers: 8, Vocab: 2048, DType: safetensors.BF16, Seed: 1, Lazy: true})
	m.Split(8)
	a := fixture.NewAdapter(64, 64, "q_proj", "gate_proj", "down_proj")
	r := fixture.NewRand(2)
	for l := 0; l < 8; l++ {
		for _, p := range []string{"self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"} {
			mod := fmt.Sprintf("model.layers.%d.%s", l, p)
			w := m.Tensor(mod + ".weight")
			a.Linear(mod, w.Shape[0], w.Shape[1], 64, safetensors.F32, r)
		}
	}
	base, adapter, out := filepath.Join(dir, "base"), filepath.Join(dir, "adapter"), filepath.Join(dir, "out")
	if err := m.Write(base); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(adapter); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "merge", "--base", base, "--adapter", adapter, "--out", out, "--progress", "plain", "--jobs", "1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stderr)
	sent := false
	var log []string
	for lines.Scan() {
		log = append(log, lines.Text())
		if !sent && strings.Contains(lines.Text(), "shard merged") {
			// Shards are staged; nothing is under its final name yet.
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			sent = true
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !sent || !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("signal sent: %v; exit: %v; log:\n%s", sent, err, strings.Join(log, "\n"))
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("%s left in --out after the interrupt", e.Name())
	}
	if !strings.Contains(strings.Join(log, "\n"), "interrupted") {
		t.Errorf("no message says the merge was interrupted:\n%s", strings.Join(log, "\n"))
	}
}
