package main

import (
	"fmt"
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

// meter shows progress: on a terminal an overall bar (bytes, rate, ETA) whose suffix
// counts each stage (merged, uploaded); otherwise one log line per step.
type meter struct {
	mu     sync.Mutex
	bar    *pb.ProgressBar // nil unless drawing a bar
	log    *slog.Logger    // steps go here; nil for --progress none
	w      io.Writer
	mode   string
	stages []string
	done   map[string]int64
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

// barTemplate is pb's Full template with the rate in bytes per second.
const barTemplate = `{{with string . "prefix"}}{{.}} {{end}}{{counters . }} {{bar . }} {{percent . }} {{speed . "%s/s" "?/s"}} {{rtime . "ETA %s"}}{{with string . "suffix"}}{{.}}{{end}}`

// start begins a run of stages, each of total bytes.
func (m *meter) start(prefix string, total int64, stages ...string) {
	if m.mode != "bar" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(stages) == 0 {
		stages = []string{prefix}
	}
	m.stages, m.done = stages, map[string]int64{}
	m.bar = pb.New64(total*int64(len(stages))).Set(pb.Bytes, true).Set("prefix", prefix).SetWriter(m.w).SetTemplateString(barTemplate).SetMaxWidth(120)
	m.bar.Start()
}

// add counts bytes done in the first stage.
func (m *meter) add(n int64) { m.addTo("", n) }

// addTo counts bytes done in a stage; n may be negative when a failed attempt is taken
// back.
func (m *meter) addTo(stage string, n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bar == nil {
		return
	}
	if stage == "" {
		stage = m.stages[0]
	}
	m.done[stage] += n
	m.bar.Add64(n)
	if len(m.stages) > 1 {
		suffix := ""
		for _, s := range m.stages {
			suffix += fmt.Sprintf(" %s %s", s, human(m.done[s]))
		}
		m.bar.Set("suffix", suffix)
	}
}

// step reports a finished step: a log line, unless a bar is drawn.
func (m *meter) step(msg string, attrs ...any) {
	m.mu.Lock()
	bar := m.bar
	m.mu.Unlock()
	if m.log != nil && bar == nil {
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
