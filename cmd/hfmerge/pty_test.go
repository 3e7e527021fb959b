//go:build linux

package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/hfmerge/hfmerge/hub/hubtest"
)

// openPTY opens a pseudo-terminal of cols columns and returns its two ends.
func openPTY(t *testing.T, cols uint16) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err) // the container has no /dev/ptmx
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: cols}); err != nil {
		t.Fatal(err)
	}
	return m, s
}

// onTerminal runs c with stdout and stderr on a pseudo-terminal of cols columns and
// returns everything it wrote there.
func onTerminal(t *testing.T, c *exec.Cmd, cols uint16) string {
	t.Helper()
	m, s := openPTY(t, cols)
	defer m.Close()
	c.Stdout, c.Stderr = s, s
	// The terminal is the child's controlling one, as a shell's is: pb reads its modes
	// through /dev/tty.
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 1}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&out, m); close(done) }() // ends with EIO once the child is gone
	err := c.Wait()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	return out.String()
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;?]*[A-Za-z]")

// screenLines splits terminal output into what each carriage return or newline
// starts, without escape sequences.
func screenLines(out string) []string {
	return strings.FieldsFunc(ansi.ReplaceAllString(out, "\n"), func(r rune) bool { return r == '\n' || r == '\r' })
}

// TestProgressOnTerminal: on a terminal of 80 and of 160 columns push draws one bar per
// stage (hash, upload), each with its own total and a rate, in decimal units, never
// wider than the terminal, and ends with a short summary; HF_HUB_DISABLE_PROGRESS_BARS
// turns the bars into log lines.
func TestProgressOnTerminal(t *testing.T) {
	e := newPushEnv(t, smallSpec(), 4, hubtest.WithMultipartChunkSize(128<<10))
	e.h.Fault(hubtest.Fault{Route: hubtest.RoutePartPut, Delay: 30 * time.Millisecond, Times: -1})
	bar := regexp.MustCompile(`^(hash  |upload) +[0-9.]+ [kMG]?B / [0-9.]+ [kMG]?B \[[=> -]*\] .*/s`)
	for i, cols := range []uint16{80, 160} {
		out := onTerminal(t, e.cmd(aliceWrite, "push", "--base", e.base, "--adapter", e.adapter, "--repo", fmt.Sprintf("alice/tty%d", i), "--dtype", []string{"fp32", "fp16"}[i]), cols)
		stages := map[string]bool{}
		for _, line := range screenLines(out) {
			// Log lines are text that the terminal wraps; bars must fit.
			if bar.MatchString(line) {
				stages[line[:6]] = true
				if w := utf8.RuneCountInString(strings.TrimRight(line, " ")); w > int(cols) {
					t.Errorf("%d columns: a bar of %d: %q", cols, w, line)
				}
			}
			if strings.Contains(line, "MiB") || strings.Contains(line, "KiB") {
				t.Errorf("binary units: %q", line)
			}
		}
		if !stages["hash  "] || !stages["upload"] {
			t.Errorf("%d columns: bars drawn for %v, want hash and upload:\n%q", cols, stages, out)
		}
		if !strings.Contains(out, "committed: 4 shards,") {
			t.Errorf("%d columns: no summary at the end:\n%q", cols, out)
		}
		t.Logf("%d columns, last screen lines:\n%s", cols, strings.Join(last(screenLines(out), 4), "\n"))
	}
	c := e.cmd(aliceWrite, "push", "--base", e.base, "--adapter", e.adapter, "--repo", "alice/nobars")
	c.Env = append(c.Env, "HF_HUB_DISABLE_PROGRESS_BARS=1")
	out := onTerminal(t, c, 80)
	if strings.Contains(out, "[=") || !strings.Contains(out, "shard uploaded") {
		t.Errorf("HF_HUB_DISABLE_PROGRESS_BARS=1:\n%s", out)
	}
}

func last(s []string, n int) []string { return s[max(0, len(s)-n):] }
