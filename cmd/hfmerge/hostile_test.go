package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNotRegularFiles: a FIFO in the model directory (as a shard, and as config.json)
// and an adapter_config.json that is a link to /dev/zero fail at once, through the
// binary, with a message naming the file: nothing blocks and nothing is read without
// end.
func TestNotRegularFiles(t *testing.T) {
	bin := buildBinary(t)
	for _, c := range []struct {
		name, role, file string
		make             func(path string) error
	}{
		{"fifo shard", "base", "model-00001-of-00002.safetensors", func(p string) error { return syscall.Mkfifo(p, 0o644) }},
		{"fifo config", "base", "config.json", func(p string) error { return syscall.Mkfifo(p, 0o644) }},
		{"dev zero config", "adapter", "adapter_config.json", func(p string) error { return os.Symlink("/dev/zero", p) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			base, adapter := inputs(t, nil)
			dir := base
			if c.role == "adapter" {
				dir = adapter
			}
			p := filepath.Join(dir, c.file)
			os.Remove(p)
			if err := c.make(p); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for _, cmd := range []string{"plan", "merge"} {
				args := []string{cmd, "--base", base, "--adapter", adapter, "--progress", "none"}
				out := filepath.Join(t.TempDir(), "out")
				if cmd == "merge" {
					args = append(args, "--out", out)
				}
				b, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
				if ctx.Err() != nil {
					t.Fatalf("%s blocked on %s", cmd, c.file)
				}
				if err == nil || !strings.Contains(string(b), c.file) || !strings.Contains(string(b), "not a regular file") {
					t.Errorf("%s: %v\n%s", cmd, err, b)
				}
				noShards(t, out)
			}
		})
	}
}
