package main

import (
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/cheggaaa/pb/v3"
)

// newLogger writes log lines to w as text or JSON.
func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// meter shows progress: a bar on a terminal, or one log line per step.
type meter struct {
	mu   sync.Mutex
	bar  *pb.ProgressBar // nil unless drawing a bar
	log  *slog.Logger    // steps go here; nil for --progress none
	w    io.Writer
	mode string
}

// newMeter chooses how to show progress: "auto" draws a bar only when w is a terminal.
func newMeter(mode string, w io.Writer, log *slog.Logger) *meter {
	if mode == "auto" {
		mode = "plain"
		if isTerminal(w) {
			mode = "bar"
		}
	}
	m := &meter{w: w, mode: mode}
	if mode != "none" {
		m.log = log
	}
	return m
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// start begins a phase of total bytes.
func (m *meter) start(prefix string, total int64) {
	if m.mode != "bar" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bar = pb.New64(total).Set(pb.Bytes, true).Set("prefix", prefix).SetWriter(m.w).SetTemplate(pb.Full)
	m.bar.Start()
}

// add counts bytes done.
func (m *meter) add(n int64) {
	if m.bar != nil {
		m.bar.Add64(n)
	}
}

// step reports a finished step: a log line, unless a bar is drawn.
func (m *meter) step(msg string, attrs ...any) {
	if m.log != nil && m.bar == nil {
		m.log.Info(msg, attrs...)
	}
}

// finish ends the phase.
func (m *meter) finish() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bar != nil {
		m.bar.Finish()
		m.bar = nil
	}
}
