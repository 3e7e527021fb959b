package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cheggaaa/pb/v3"

	"github.com/hfmerge/hfmerge"
)

// meter shows a run's progress: on a terminal one bar per stage, each with its own
// total, rate and ETA; otherwise one log line per shard and stage.
type meter struct {
	mu    sync.Mutex
	st    *state
	mode  string
	pool  *pb.Pool
	bars  map[hfmerge.Stage]*pb.ProgressBar
	begun map[hfmerge.Stage]time.Time
}

func (st *state) meter(mode string) *meter {
	if mode == "auto" {
		mode = "plain"
		if isTerminal(st.stderr) {
			mode = "bar"
		}
	}
	switch os.Getenv("HF_HUB_DISABLE_PROGRESS_BARS") {
	case "1", "ON", "YES", "TRUE", "true", "on", "yes":
		if mode == "bar" {
			mode = "plain"
		}
	}
	return &meter{st: st, mode: mode, bars: map[hfmerge.Stage]*pb.ProgressBar{}, begun: map[hfmerge.Stage]time.Time{}}
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// barTemplate fits 80 columns (pb narrows the bar to the terminal's width): stage,
// bytes done of total in decimal units (kB, MB, GB: 10³, 10⁶, 10⁹ bytes, as the Hub
// shows sizes, and as every size hfmerge prints), the bar, the rate and the time left;
// once finished, the average rate and the stage's duration.
const barTemplate = barDone + ` {{speed . "%s/s" "?/s"}} {{rtime . "%s left"}}`

// barDone is the part of a bar that stays when the stage ends.
const barDone = `{{string . "prefix"}} {{counters . }} {{bar . "[" "=" ">" " " "]"}}`

var stageLabel = map[hfmerge.Stage]string{
	hfmerge.StageMerge:  "merge ",
	hfmerge.StageHash:   "hash  ",
	hfmerge.StageUpload: "upload",
}

// event receives the library's progress.
func (m *meter) event(e hfmerge.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch e.Type {
	case hfmerge.Begin:
		if m.mode != "bar" {
			return
		}
		b := pb.New64(e.Bytes).Set(pb.Bytes, true).Set(pb.SIBytesPrefix, true).Set("prefix", stageLabel[e.Stage]).
			SetTemplateString(barTemplate).SetMaxWidth(120)
		m.bars[e.Stage] = b
		m.begun[e.Stage] = time.Now()
		m.add(b)
	case hfmerge.Advance:
		if b := m.bars[e.Stage]; b != nil {
			b.Add64(e.Bytes)
		}
	case hfmerge.End:
		if b := m.bars[e.Stage]; b != nil {
			// Finished, a bar shows the stage's average rate and how long it took,
			// not a rate decaying towards zero.
			// The pool draws every bar with the time it draws them at, so the finished
			// bar's rate and duration are written into its template once.
			took := time.Since(m.begun[e.Stage])
			rate := hfmerge.Human(int64(float64(b.Total()) / max(took.Seconds(), 1e-3)))
			b.SetTemplateString(barDone + fmt.Sprintf(" %s/s in %s", rate, roundSeconds(took)))
			b.SetCurrent(b.Total())
			b.Finish()
		}
	case hfmerge.ShardDone:
		if m.mode == "plain" {
			m.st.logger().Info("shard "+e.Note, "stage", string(e.Stage), "shard", e.Shard,
				"size", hfmerge.Human(e.Bytes), "seconds", seconds(e.Elapsed))
		}
	}
}

// add draws a bar below those of the stages begun before it.
func (m *meter) add(b *pb.ProgressBar) {
	if m.pool == nil {
		m.pool = &pb.Pool{Output: m.st.stderr, RefreshRate: 200 * time.Millisecond}
		if err := m.pool.Start(); err != nil {
			fmt.Fprintln(m.st.stderr, "hfmerge: cannot draw progress bars:", err)
			m.pool, m.mode = nil, "plain"
			return
		}
	}
	m.pool.Add(b)
}

// finish stops drawing.
func (m *meter) finish() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pool != nil {
		m.pool.Stop()
		m.pool = nil
	}
}
